"""What an output path may hold before expstore replaces it: only what expstore wrote there.

``--overwrite`` (convert, merge, export, import) must never delete a user's other files because
of a mistyped path. So an existing destination is replaced only when it is a pool or an archive
(for an export: a D4RL file or Minari dataset that expstore exported), recognised by the
metadata expstore writes, and, for a directory, holding no file expstore does not write.
"""

from __future__ import annotations

import json
import os

from ..backends import archive
from ..core import lock
from ..errors import InvalidArgumentError, StoreExistsError

# The source pool's schema and attrs ride along in exported files so that an import restores
# field order, dtypes and attrs exactly.
SAVED_KEY = "expstore"

# What each kind of output replaces when overwriting: only what expstore itself wrote there.
REPLACEABLE = {"pool": ("pool", "archive"), "d4rl": ("d4rl",), "minari": ("minari",)}
_KIND_NAMES = {"pool": "a pool", "archive": "an archive", "d4rl": "a D4RL file", "minari": "a Minari dataset"}


def check_destination(dst: str, overwrite: bool, output: str = "pool") -> None:
    """Refuse a destination that exists, unless ``overwrite`` and it holds what expstore wrote.

    ``output`` is the kind being written (``pool`` also covers archives, ``d4rl``, ``minari``);
    overwriting replaces only a destination of the kinds in ``REPLACEABLE[output]``, so that a
    mistyped path never deletes a user's other files.

    Raises:
        StoreExistsError: ``dst`` exists, and ``overwrite`` is false or it holds something else.
        InvalidArgumentError: a writer is running on the pool at ``dst``.
    """
    if not os.path.lexists(dst):
        return
    if not overwrite:
        raise StoreExistsError(f"{dst} already exists; choose another path or pass overwrite=True to replace it")
    kind, description = what_is_at(dst)
    allowed = REPLACEABLE[output]
    if kind not in allowed:
        names = " or ".join(_KIND_NAMES[k] for k in allowed)
        raise StoreExistsError(f"{dst} is {description}; overwriting replaces only {names} that expstore wrote, "
                               "so move it away yourself or choose another path")
    if lock.holder(dst):
        raise InvalidArgumentError(f"{dst} is being written by a running writer ({lock.holder(dst)}); stop it first")


def what_is_at(path: str) -> tuple[str | None, str]:
    """What an existing path holds: (``pool``, ``archive``, ``d4rl``, ``minari`` or None for
    anything else, a description naming what is there)."""
    target = os.path.realpath(path)
    if os.path.isdir(target):
        return _directory_kind(target)
    if not os.path.isfile(target):
        return None, "not a regular file or directory"
    return _file_kind(target)


def _file_kind(path: str) -> tuple[str | None, str]:
    # h5py loads on first use: its import is slow, and a program on Zarr pools never needs it.
    import h5py

    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89HDF\r\n\x1a\n":
            return None, f"a file of {size} bytes that is not HDF5"
    try:
        with h5py.File(path, "r", locking=False) as f:
            attrs, names = dict(f.attrs), sorted(f.keys())
        marker = json.loads(attrs["expstore"]) if "expstore" in attrs else None
    except Exception as exc:  # h5py reports damaged headers as KeyError, OSError, RuntimeError...
        return None, f"an HDF5 file that cannot be read ({type(exc).__name__}), so not known to be expstore's"
    if archive.ATTR in attrs:
        return "archive", "an archive"
    if isinstance(marker, dict) and "slots" in marker:
        return "pool", "a pool"
    if isinstance(marker, dict) and "observations" in names:
        return "d4rl", "a D4RL file"
    return None, f"an HDF5 file that expstore did not write (it holds {_listed(names)})"


def _directory_kind(path: str) -> tuple[str | None, str]:
    files_in = sorted(os.path.relpath(os.path.join(root, name), path)
                      for root, _dirs, names in os.walk(path) for name in names)
    if not files_in:
        return None, "an empty directory" if not os.listdir(path) else "a directory that holds only empty directories"
    kind = _zarr_kind(path) or _minari_kind(path, files_in)
    if kind is None:
        return None, f"a directory that holds {_listed(files_in)}"
    foreign = [name for name in files_in if not _written_by_expstore(kind, name)]
    if foreign:
        return None, f"{_KIND_NAMES[kind]} directory that also holds files expstore does not write: {_listed(foreign)}"
    return kind, _KIND_NAMES[kind]


def _zarr_kind(path: str) -> str | None:
    try:
        with open(os.path.join(path, "zarr.json"), "rb") as fh:
            attributes = json.loads(fh.read()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(attributes, dict):
        return None
    return "archive" if archive.ATTR in attributes else "pool" if "expstore" in attributes else None


def _minari_kind(path: str, files_in: list[str]) -> str | None:

    try:
        with open(os.path.join(path, "data", "metadata.json"), "rb") as fh:
            metadata = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return "minari" if isinstance(metadata, dict) and SAVED_KEY in metadata else None


def _written_by_expstore(kind: str, name: str) -> bool:
    """Whether ``name`` (relative to the directory) is a file expstore writes in that kind of directory:
    a Zarr group's and its arrays' zarr.json and the arrays' chunks, or a Minari dataset's two files."""
    parts = name.split(os.sep)
    if kind == "minari":
        return name in (os.path.join("data", "metadata.json"), os.path.join("data", "main_data.hdf5"))
    return parts in (["zarr.json"], [parts[0], "zarr.json"]) or (len(parts) >= 3 and parts[1] == "c")


def _listed(names: list[str], most: int = 5) -> str:
    if not names:
        return "nothing"
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"
