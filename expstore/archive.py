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

import numpy as np

from .errors import CorruptStoreError, InvalidArgumentError
from .schema import Schema

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
    """Whether ``path`` holds an expstore archive (cheap: reads metadata only)."""
    try:
        return _read_meta(path) is not None
    except (OSError, ValueError):
        return False


def _read_meta(path: str) -> dict | None:
    if os.path.isdir(path):
        doc = os.path.join(path, "zarr.json")
        if not os.path.exists(doc):
            return None
        with open(doc, "rb") as fh:
            meta = json.loads(fh.read()).get("attributes", {}).get(ATTR)
        return meta if isinstance(meta, dict) else None
    import h5py

    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89HDF\r\n\x1a\n":
            return None
    with h5py.File(path, "r", locking=False) as f:
        text = f.attrs.get(ATTR)
    return None if text is None else json.loads(text)


class ArchiveSource:
    """An archive, read as a row source."""

    kind = "archive"

    def __init__(self, path: str):
        meta = _read_meta(path)
        if meta is None:
            raise CorruptStoreError(f"{path} is not an expstore archive")
        self.path = path
        self.meta = meta
        self.schema = Schema.from_json(meta["schema"])
        self.attrs = dict(meta.get("attrs", {}))
        self.capacity = int(meta["capacity"])
        self.first_step_id = int(meta.get("first_step_id", 0))
        self.codec = meta.get("codec")
        self.backend = "zarr" if os.path.isdir(path) else "hdf5"
        self._length = int(meta["length"])
        self._arrays, self._file = _open_arrays(path, self.schema, self.backend)
        self.chunk_rows = int(meta.get("chunk_rows", 1))

    def __len__(self) -> int:
        return self._length

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {name: np.asarray(self._arrays[name][start:stop]) for name in self.schema}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _open_arrays(path: str, schema: Schema, backend: str):
    if backend == "zarr":
        import zarr

        group = zarr.open_group(path, mode="r")
        return {name: group[name] for name in schema}, None
    import h5py

    f = h5py.File(path, "r", locking=False)
    return {name: f[name] for name in schema}, f


def write_archive(temp: str, backend: str, codec: str, schema: Schema, meta: dict, rows: int,
                  slices) -> None:
    """Write an archive at ``temp`` from ``slices`` (an iterator of (first_row, batch))."""
    chunk_rows = max(1, min(rows, (1 << 20) // max(1, max(f.row_nbytes for f in schema.values()))))
    meta = {**meta, "archive_format": ARCHIVE_FORMAT, "codec": codec, "length": rows,
            "chunk_rows": chunk_rows, "schema": schema.to_json()}
    if backend == "zarr":
        _write_zarr(temp, codec, schema, meta, rows, chunk_rows, slices)
    else:
        _write_hdf5(temp, schema, meta, rows, chunk_rows, slices)


def _write_hdf5(temp, schema, meta, rows, chunk_rows, slices) -> None:
    import h5py

    with h5py.File(temp, "w", locking=False) as f:
        datasets = {
            name: f.create_dataset(name, shape=(rows, *field.shape), dtype=field.dtype,
                                   chunks=(chunk_rows, *field.shape) if rows else None,
                                   compression="gzip" if rows else None, compression_opts=4,
                                   shuffle=bool(rows))
            for name, field in schema.items()
        }
        for first, batch in slices:
            for name, values in batch.items():
                datasets[name][first:first + len(values)] = values
        f.attrs[ATTR] = json.dumps(meta)


def _write_zarr(temp, codec, schema, meta, rows, chunk_rows, slices) -> None:
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    compressor = ZstdCodec(level=3) if codec == "zstd" else BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")
    group = zarr.create_group(store=temp, zarr_format=3, attributes={ATTR: meta})
    arrays = {
        name: group.create_array(name, shape=(rows, *field.shape), chunks=(max(chunk_rows, 1), *field.shape),
                                 dtype=field.dtype, compressors=compressor)
        for name, field in schema.items()
    }
    for first, batch in slices:
        for name, values in batch.items():
            arrays[name][first:first + len(values)] = values
