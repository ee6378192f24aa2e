"""Compressed archives: a pool's rows in logical order, compressed, for storage and transfer.

An archive is not a pool. Compressed chunks cannot be written in place through a memory
map, and measured here they cost 2x-30x per random gather, so a pool's hot ring is never
compressed. An archive holds the committed rows oldest first, one compressed dataset (HDF5,
gzip + shuffle) or array (Zarr v3, zstd or blosc) per field, plus the pool's schema, attrs
and capacity; the read-only tools (info, head, stats, episodes, export) read it slowly
through h5py/zarr, and ``expstore convert ARCHIVE POOL`` turns it back into a pool to sample.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..errors import CorruptStoreError, ExpstoreError, InvalidArgumentError
from ..schema import Schema

ATTR = "expstore_archive"
ARCHIVE_FORMAT = 1
CODECS = {"hdf5": ("gzip",), "zarr": ("zstd", "blosc")}


def default_codec(backend: str) -> str:
    return CODECS[backend][0]


def check_codec(backend: str, codec: str) -> str:
    codec = default_codec(backend) if codec in (None, "auto") else codec
    if codec not in CODECS[backend]:
        raise InvalidArgumentError(f"codec {codec!r} is not available for {backend} archives; "
                                   f"choose one of {', '.join(CODECS[backend])}")
    return codec


def is_archive(path: str) -> bool:
    """Whether ``path`` holds an expstore archive (cheap: reads the archive marker only).

    A probe never raises: whatever it cannot read is not a readable archive, and the pool
    opener that runs next reports what is wrong with the path as an ExpstoreError. A raw
    exception here would bypass that, and the CLI's one place that turns errors into one line.
    """
    try:
        return _read_marker(path) is not None
    except Exception:  # noqa: BLE001 - h5py reports damaged headers as KeyError, RuntimeError, OSError, ...
        return False


def _read_marker(path: str):
    """The raw archive metadata (JSON text, or a dict in a Zarr group), or None when absent."""
    if os.path.isdir(path):
        doc = os.path.join(path, "zarr.json")
        if not os.path.exists(doc):
            return None
        with open(doc, "rb") as fh:
            group = json.loads(fh.read())
        attributes = group.get("attributes") if isinstance(group, dict) else None
        return attributes.get(ATTR) if isinstance(attributes, dict) else None
    # h5py loads on first use: its import is slow, and a program on Zarr pools never needs it.
    import h5py

    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89HDF\r\n\x1a\n":
            return None
    with h5py.File(path, "r", locking=False) as f:
        return f.attrs.get(ATTR)


def _read_meta(path: str) -> dict:
    """The archive's metadata, checked enough to open it; CorruptStoreError when damaged."""
    try:
        marker = _read_marker(path)
        meta = json.loads(marker) if isinstance(marker, (str, bytes)) else marker
    except Exception as exc:  # noqa: BLE001 - see is_archive
        raise _damaged(path, "its metadata", exc) from None
    if not isinstance(meta, dict):
        raise CorruptStoreError(f"{path} is not an expstore archive (no readable {ATTR!r} metadata)")
    return meta


def _damaged(path: str, what: str, exc: BaseException) -> CorruptStoreError:
    return CorruptStoreError(f"{path}: the archive is damaged: {what} cannot be read ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())}); convert it again from its pool, or restore a copy")


class ArchiveSource:
    """An archive, read as a row source."""

    kind = "archive"

    def __init__(self, path: str):
        meta = _read_meta(path)
        self.path = path
        self.meta = meta
        self.backend = "zarr" if os.path.isdir(path) else "hdf5"
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
            raise _damaged(path, "its metadata", exc) from None
        self.codec = meta.get("codec")
        self._arrays, self._file = _open_arrays(path, self.schema, self.backend, self._length)

    def __len__(self) -> int:
        return self._length

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        try:
            return {name: np.asarray(self._arrays[name][start:stop]) for name in self.schema}
        except Exception as exc:  # noqa: BLE001 - a damaged compressed chunk surfaces as any of several
            raise _damaged(self.path, f"rows {start}..{stop}", exc) from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _open_arrays(path: str, schema: Schema, backend: str, length: int):
    """Every field's array (and the open HDF5 file), each checked to hold ``length`` rows."""
    if backend == "zarr":
        # zarr loads on first use: its import is slow, and a program on HDF5 pools never needs it.
        import zarr

        try:
            group = zarr.open_group(path, mode="r")
            arrays = {name: group[name] for name in schema}
        except Exception as exc:  # noqa: BLE001 - see is_archive
            raise _damaged(path, "the arrays", exc) from None
        _check_arrays(path, arrays, length, zarr.Array)
        return arrays, None
    # h5py loads on first use: its import is slow, and a program on Zarr pools never needs it.
    import h5py

    f = h5py.File(path, "r", locking=False)
    try:
        try:
            arrays = {name: f[name] for name in schema}
        except Exception as exc:  # noqa: BLE001 - see is_archive
            raise _damaged(path, "the arrays", exc) from None
        _check_arrays(path, arrays, length, h5py.Dataset)
    except BaseException:
        # An HDF5 file left open would be reused, damaged state and all, by the next open of this path.
        f.close()
        raise
    return arrays, f


def _check_arrays(path: str, arrays: dict[str, Any], length: int, array_type: type[Any]) -> None:
    for name, array in arrays.items():
        shape = array.shape if isinstance(array, array_type) else None
        if not shape or shape[0] != length:
            found = f"has shape {shape}" if shape is not None else f"is a {type(array).__name__}, not an array"
            raise CorruptStoreError(f"{path}: the archive is damaged: {name!r} {found}, its metadata says "
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

    if backend == "zarr":
        _write_zarr(temp, codec, schema, final_meta, rows, chunk_rows, slices)
    else:
        _write_hdf5(temp, schema, final_meta, rows, chunk_rows, slices)


def _write_hdf5(temp, schema, final_meta, rows, chunk_rows, slices) -> None:
    # h5py loads on first use: its import is slow, and a program on Zarr pools never needs it.
    import h5py

    with h5py.File(temp, "w", locking=False) as f:
        datasets = {
            name: f.create_dataset(name, shape=(rows, *field.shape), dtype=field.dtype,
                                   chunks=(chunk_rows, *field.shape) if rows else None,
                                   maxshape=(None, *field.shape) if rows else None,
                                   compression="gzip" if rows else None, compression_opts=4,
                                   shuffle=bool(rows))
            for name, field in schema.items()
        }
        written = _write_slices(datasets, slices)
        if written < rows:
            for name, dataset in datasets.items():
                dataset.resize((written, *schema[name].shape))
        f.attrs[ATTR] = json.dumps(final_meta(written))


def _write_zarr(temp, codec, schema, final_meta, rows, chunk_rows, slices) -> None:
    # zarr loads on first use: its import is slow, and a program on HDF5 pools never needs it.
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    compressor = ZstdCodec(level=3) if codec == "zstd" else BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")
    group = zarr.create_group(store=temp, zarr_format=3)
    arrays = {
        name: group.create_array(name, shape=(rows, *field.shape), chunks=(max(chunk_rows, 1), *field.shape),
                                 dtype=field.dtype, compressors=compressor)
        for name, field in schema.items()
    }
    written = _write_slices(arrays, slices)
    if written < rows:
        for name, array in arrays.items():
            array.resize((written, *schema[name].shape))
    group.update_attributes({ATTR: final_meta(written)})


def _write_slices(arrays: dict, slices) -> int:
    """Write each (first_row, batch) into the arrays; the rows written (one past the last)."""
    written = 0
    for first, batch in slices:
        for name, values in batch.items():
            arrays[name][first:first + len(values)] = values
            written = max(written, first + len(values))
    return written
