"""What an output path may hold before expstore replaces it: only what expstore wrote there.

``--overwrite`` (convert, merge, export, import) must never delete a user's other files because
of a mistyped path. So an existing destination is replaced only when it is a pool or an archive
(for an export: a D4RL file or Minari dataset that expstore exported), recognised by the
metadata expstore writes, and, for a directory, holding no file expstore does not write.
"""

from __future__ import annotations

import json
import os
import re

from ..backends import Backend, archive, backend_holding
from ..core import lock
from ..errors import ExpstoreError, InvalidArgumentError, StoreExistsError

# The source pool's schema and attrs ride along in exported files so that an import restores
# field order, dtypes and attrs exactly.
SAVED_KEY = "expstore"

# What each kind of output replaces when overwriting: only what expstore itself wrote there.
REPLACEABLE = {"pool": ("pool", "archive"), "d4rl": ("d4rl",), "minari": ("minari",), "parquet": ("parquet",),
               "lerobot": ("lerobot",)}
_KIND_NAMES = {"pool": "a pool", "archive": "an archive", "d4rl": "a D4RL file", "minari": "a Minari dataset",
               "parquet": "a Parquet file", "lerobot": "a LeRobot dataset"}
_PARQUET_MAGIC = b"PAR1"
# The episode files of Minari's arrow and parquet storages (interchange/minari_arrow.py).
_MINARI_EPISODE_FILE = re.compile(r"data/\d+/(metadata\.json|part-0\.(arrow|parquet))")
# The files of a LeRobot v3.0 dataset that expstore exports (interchange/lerobot.py).
_LEROBOT_FILE = re.compile(r"meta/(info|stats)\.json|meta/tasks\.parquet|meta/episodes/chunk-\d+/file-\d+\.parquet"
                           r"|data/chunk-\d+/file-\d+\.parquet|videos/[^/]+/chunk-\d+/file-\d+\.mp4")


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
    """What a file holds, read through the backend whose container form is a file (HDF5)."""
    size = os.path.getsize(path)
    if _is_parquet(path):
        return _parquet_kind(path)
    backend = backend_holding(path)
    if backend is None:
        return None, f"a file of {size} bytes, and no backend keeps a pool in one file"
    try:
        top = backend.top_level(path)
        if top is None:
            return None, f"a file of {size} bytes that is not {backend.label}"
        attrs, names = top
        marker = json.loads(attrs["expstore"]) if "expstore" in attrs else None
    except Exception as exc:  # h5py reports damaged headers as KeyError, OSError, RuntimeError...
        return None, f"{backend.label} that cannot be read ({type(exc).__name__}), so not known to be expstore's"
    if archive.ATTR in attrs:
        return "archive", "an archive"
    if isinstance(marker, dict) and "slots" in marker:
        return "pool", "a pool"
    if isinstance(marker, dict) and "observations" in names:
        return "d4rl", "a D4RL file"
    return None, f"{backend.label} that expstore did not write (it holds {_listed(names)})"


def _directory_kind(path: str) -> tuple[str | None, str]:
    files_in = sorted(os.path.relpath(os.path.join(root, name), path)
                      for root, _dirs, names in os.walk(path) for name in names)
    if not files_in:
        return None, "an empty directory" if not os.listdir(path) else "a directory that holds only empty directories"
    backend = backend_holding(path)
    kind = (None if backend is None else _container_kind(backend, path)) or _minari_kind(path, files_in) \
        or _lerobot_kind(path)
    if kind is None:
        return None, f"a directory that holds {_listed(files_in)}"
    foreign = [name for name in files_in if not _written_by_expstore(kind, name, backend)]
    if foreign:
        return None, f"{_KIND_NAMES[kind]} directory that also holds files expstore does not write: {_listed(foreign)}"
    return kind, _KIND_NAMES[kind]


def _container_kind(backend: Backend, path: str) -> str | None:
    """``pool`` or ``archive`` for a directory container (a Zarr group) expstore wrote, else None."""
    try:
        top = backend.top_level(path)
    except (ExpstoreError, OSError, ValueError):  # unreadable: not known to be expstore's
        return None
    attributes = {} if top is None else top[0]
    return "archive" if archive.ATTR in attributes else "pool" if "expstore" in attributes else None


def _is_parquet(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == _PARQUET_MAGIC


def _parquet_kind(path: str) -> tuple[str | None, str]:
    try:
        # pyarrow loads only here: it is the optional dependency of the Parquet format.
        import pyarrow.parquet as pq

        metadata = pq.read_schema(path).metadata or {}
    except Exception as exc:  # not installed, or a damaged footer: not known to be expstore's
        return None, f"a Parquet file that cannot be read ({type(exc).__name__}), so not known to be expstore's"
    if SAVED_KEY.encode() in metadata:
        return "parquet", "a Parquet file"
    return None, "a Parquet file that expstore did not write"


def _lerobot_kind(path: str) -> str | None:
    try:
        with open(os.path.join(path, "meta", "info.json"), "rb") as fh:
            info = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return "lerobot" if isinstance(info, dict) and SAVED_KEY in info else None


def _minari_kind(path: str, files_in: list[str]) -> str | None:

    try:
        with open(os.path.join(path, "data", "metadata.json"), "rb") as fh:
            metadata = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return "minari" if isinstance(metadata, dict) and SAVED_KEY in metadata else None


def _written_by_expstore(kind: str, name: str, backend: Backend | None) -> bool:
    """Whether ``name`` (relative to the directory) is a file expstore writes in that kind of directory:
    one the pool's backend writes (Backend.writes), or a Minari dataset's two files."""
    if kind == "minari":
        return name in (os.path.join("data", "metadata.json"), os.path.join("data", "main_data.hdf5")) or \
            _MINARI_EPISODE_FILE.fullmatch(name.replace(os.sep, "/")) is not None
    if kind == "lerobot":
        return _LEROBOT_FILE.fullmatch(name.replace(os.sep, "/")) is not None
    return backend is not None and backend.writes(name)


def _listed(names: list[str], most: int = 5) -> str:
    if not names:
        return "nothing"
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"
