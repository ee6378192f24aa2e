"""Compressed archives: a pool's rows in logical order, compressed, for storage and transfer.

An archive is not a pool. Compressed chunks cannot be written in place through a memory
map, and measured here they cost 2x-30x per random gather, so a pool's hot ring is never
compressed. An archive holds the committed rows oldest first, one compressed array per field
in its backend's archive form (``Backend.archive``: HDF5 gzip + shuffle in hdf5_archive.py,
Zarr v3 zstd or blosc in zarr_archive.py), plus the pool's schema, attrs and capacity; the
read-only tools (info, head, stats, episodes, export) read it slowly
through h5py/zarr, and ``expstore convert ARCHIVE POOL`` turns it back into a pool to sample.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..errors import CorruptStoreError, ExpstoreError, InvalidArgumentError
from ..schema import Schema
from .base import Backend
from .registry import BACKENDS, backend_holding, get_backend

ATTR = "expstore_archive"
ARCHIVE_FORMAT = 1


def codecs(backend: str) -> tuple[str, ...]:
    """The compressors the archive form of ``backend`` offers, the default first."""
    return get_backend(backend).archive.codecs


def all_codecs() -> list[str]:
    """Every registered backend's codecs, once each (the CLI's ``--compress`` choices)."""
    return list(dict.fromkeys(codec for backend in BACKENDS.values() for codec in backend.archive.codecs))


def default_codec(backend: str) -> str:
    return codecs(backend)[0]


def check_codec(backend: str, codec: str | None) -> str:
    codec = default_codec(backend) if codec in (None, "auto") else codec
    if codec not in codecs(backend):
        raise InvalidArgumentError(f"codec {codec!r} is not available for {backend} archives; "
                                   f"choose one of {', '.join(codecs(backend))}")
    return codec


def is_archive(path: str) -> bool:
    """Whether ``path`` holds an expstore archive (cheap: reads the archive marker only).

    A probe never raises: whatever it cannot read is not a readable archive, and the pool
    opener that runs next reports what is wrong with the path as an ExpstoreError. A raw
    exception here would bypass that, and the CLI's one place that turns errors into one line.
    """
    try:
        return _read_marker(path)[1] is not None
    except Exception:  # h5py reports damaged headers as KeyError, RuntimeError, OSError, ...
        return False


def _read_marker(path: str) -> tuple[Backend | None, Any]:
    """The backend whose archive form ``path`` has and its raw archive metadata, or (None, None)."""
    backend = backend_holding(path)
    return (None, None) if backend is None else (backend, backend.archive.read_marker(path))


def _read_meta(path: str) -> tuple[Backend, dict]:
    """The archive's backend and metadata, checked enough to open it; CorruptStoreError when damaged."""
    try:
        backend, marker = _read_marker(path)
        meta = json.loads(marker) if isinstance(marker, (str, bytes)) else marker
    except Exception as exc:  # see is_archive
        raise damaged(path, "its metadata", exc) from None
    if backend is None or not isinstance(meta, dict):
        raise CorruptStoreError(f"{path} is not an expstore archive (no readable {ATTR!r} metadata)")
    return backend, meta


def damaged(path: str, what: str, exc: BaseException) -> CorruptStoreError:
    return CorruptStoreError(f"{path}: the archive is damaged: {what} cannot be read ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())}); convert it again from its pool, or restore a copy")


class ArchiveSource:
    """An archive, read as a row source."""

    kind = "archive"

    def __init__(self, path: str):
        backend, meta = _read_meta(path)
        self.path = path
        self.meta = meta
        self.backend = backend.name
        try:
            self.schema = Schema.from_json(meta["schema"])
            self.attrs = dict(meta.get("attrs", {}))
            self.capacity = int(meta["capacity"])
            self.first_step_id = int(meta.get("first_step_id", 0))
            self._length = int(meta["length"])
            self.chunk_rows = int(meta.get("chunk_rows", 1))
        except ExpstoreError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise damaged(path, "its metadata", exc) from None
        self.codec = meta.get("codec")
        self._arrays, self._close = backend.archive.open_arrays(path, self.schema)
        try:
            _check_lengths(path, self._arrays, self._length)
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return self._length

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        try:
            return {name: np.asarray(self._arrays[name][start:stop]) for name in self.schema}
        except Exception as exc:  # a damaged compressed chunk surfaces as any of several
            raise damaged(self.path, f"rows {start}..{stop}", exc) from None

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None


def check_array_types(path: str, arrays: dict[str, Any], array_type: type[Any]) -> None:
    """Each of ``arrays`` is an ``array_type`` (a group of that name is a damaged archive)."""
    for name, array in arrays.items():
        if not isinstance(array, array_type):
            raise CorruptStoreError(f"{path}: the archive is damaged: {name!r} is a {type(array).__name__}, not an "
                                    "array; convert it again from its pool, or restore a copy")


def _check_lengths(path: str, arrays: dict[str, Any], length: int) -> None:
    for name, array in arrays.items():
        shape = tuple(array.shape)
        if not shape or shape[0] != length:
            raise CorruptStoreError(f"{path}: the archive is damaged: {name!r} has shape {shape}, its metadata says "
                                    f"{length} rows; convert it again from its pool, or restore a copy")


def write_archive(temp: str, backend: str, codec: str, schema: Schema, meta, rows: int, slices) -> None:
    """Write an archive at ``temp`` from ``slices`` (an iterator of (first_row, batch)).

    At most ``rows`` rows: where fewer come (a copy of a pool whose writer evicted rows before
    they were read), the arrays are cut to the rows written. ``meta`` is the metadata, or a
    callable that gives it once the rows are written (such a copy's first step id is known then).
    """
    chunk_rows = max(1, min(rows, (1 << 20) // max(1, max(f.row_nbytes for f in schema.values()))))
    fixed = {"archive_format": ARCHIVE_FORMAT, "codec": codec, "chunk_rows": chunk_rows, "schema": schema.to_json()}

    def final_meta(written: int) -> dict:
        return {**(meta() if callable(meta) else meta), **fixed, "length": written}

    get_backend(backend).archive.write(temp, codec, schema, final_meta, rows, chunk_rows, slices)


def write_slices(arrays: dict, slices) -> int:
    """Write each (first_row, batch) into the arrays; the rows written (one past the last)."""
    written = 0
    for first, batch in slices:
        for name, values in batch.items():
            arrays[name][first:first + len(values)] = values
            written = max(written, first + len(values))
    return written
