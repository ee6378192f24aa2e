"""Zarr v3 pools: one directory, one array per field stored as a single shard.

Each field array uses the sharding codec with the shard covering the whole ring and inner
chunks of ``chunk_rows`` rows, no compressors. Creation writes the shard file itself: the inner
chunks back to back, then the shard index (offset, nbytes per chunk) and its crc32c, exactly
as the Zarr v3 sharding spec lays it out, so plain zarr-python reads every field while the
store maps the chunk bytes as one contiguous array. The metadata is read straight from the
``zarr.json`` documents on open: importing and running zarr would cost more than the open.
"""

from __future__ import annotations

import json
import os

import google_crc32c
import numpy as np

from ..errors import CorruptStoreError, NotAPoolError
from ..schema import Schema
from .base import (
    NOT_A_POOL_FIX,
    SLOT_NBYTES,
    ArchiveForm,
    Extent,
    Layout,
    checksum_table_bytes,
    internal_arrays,
    internal_nbytes,
)
from .meta import check_meta
from .zarr_archive import ZarrArchive
from .zarr_checks import (
    array_document,
    document_findings,
    expected_documents,
    expected_sizes,
    fix_size,
    group_findings,
    size_findings,
    write_document,
)

_INDEX_ENTRY = np.dtype([("offset", "<u8"), ("nbytes", "<u8")])
_CRC_NBYTES = 4
_FIELD_FIX = "`expstore repair` rewrites a field's zarr.json from the pool's metadata when its data file fits it"


def _chunk_key(ndim: int) -> str:
    return os.path.join("c", *("0" * ndim))


class ZarrBackend:
    name: str = "zarr"
    suffixes: tuple[str, ...] = (".zarr",)
    label: str = "a Zarr v3 group"
    archive: ArchiveForm = ZarrArchive()

    def holds(self, path: str) -> bool:
        return os.path.isdir(path)  # one directory; a directory that is not Zarr is then reported by read_layout

    def top_level(self, path: str) -> tuple[dict, list[str]] | None:
        if not os.path.isfile(os.path.join(path, "zarr.json")):
            return None
        attributes = _read_json(path, os.path.join(path, "zarr.json"), CorruptStoreError).get("attributes")
        members = sorted(name for name in os.listdir(path) if os.path.isfile(os.path.join(path, name, "zarr.json")))
        return (attributes if isinstance(attributes, dict) else {}), members

    def writes(self, relative: str) -> bool:
        """The group's zarr.json, each array's zarr.json, and the arrays' chunk files (``<array>/c/...``)."""
        parts = relative.split(os.sep)
        return parts in (["zarr.json"], [parts[0], "zarr.json"]) or (len(parts) >= 3 and parts[1] == "c")

    def create(self, path, meta, schema, slots, chunk_rows, commit_slots):
        # zarr loads on first use: its import is slow, and a program on HDF5 pools never needs it.
        import zarr
        from zarr.storage import LocalStore

        group = zarr.create_group(store=LocalStore(path), zarr_format=3, attributes={"expstore": meta})
        files = []
        for name, field in schema.items():
            group.create_array(
                name, shape=(slots, *field.stored_shape), chunks=(chunk_rows, *field.stored_shape),
                shards=(slots, *field.stored_shape), dtype=field.stored_dtype, compressors=None,
                fill_value=False if field.stored_dtype.kind == "b" else 0, config={"write_empty_chunks": True},
            )
            files.append(_write_shard(os.path.join(path, name), 1 + len(field.stored_shape),
                                      slots, chunk_rows, field.stored_row_nbytes))
        files.append(_write_raw_array(group, path, "_commit", (2, SLOT_NBYTES), "u1", commit_slots))
        if meta.get("checksums"):
            files.append(_write_raw_array(group, path, "_checksums", (slots // chunk_rows, 2), "<i8",
                                          checksum_table_bytes(meta)))
        for name, (shape, dtype) in internal_arrays(meta).items():
            files.append(_write_raw_array(group, path, name, shape, dtype, b""))
            os.truncate(files[-1], internal_nbytes({"internal": {name: meta["internal"][name]}}))
        return files

    def read_layout(self, path: str) -> Layout:
        meta = _pool_meta(path)
        schema = Schema.from_json(meta["schema"])
        fields = {name: self._field_extent(path, meta, schema, name) for name in schema}
        commit_file = os.path.join(path, "_commit", _chunk_key(2))
        # One whole slot is enough to open: a file cut mid-slot 1 falls back to slot 0 (core/mapping.py).
        _check_size(path, commit_file, SLOT_NBYTES, "commit record")
        checksums = None
        if meta.get("checksums"):
            table_file = os.path.join(path, "_checksums", _chunk_key(2))
            table_nbytes = len(checksum_table_bytes(meta))
            _check_size(path, table_file, table_nbytes, "checksum table")
            checksums = Extent(table_file, 0, table_nbytes)
        internal = {}
        for name, (shape, dtype) in internal_arrays(meta).items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            internal[name] = Extent(os.path.join(path, name, _chunk_key(len(shape))), 0, nbytes)
            _check_size(path, internal[name].path, nbytes, f"bookkeeping array {name!r}")
        return Layout(meta, schema, fields, Extent(commit_file, 0, 2 * SLOT_NBYTES), checksums, internal)

    def _field_extent(self, path, meta, schema, name) -> Extent:
        field = schema[name]
        slots, chunk_rows = meta["slots"], meta["chunk_rows"]
        try:
            array_meta = _read_json(path, os.path.join(path, name, "zarr.json"), missing=CorruptStoreError)
        except CorruptStoreError as exc:
            raise CorruptStoreError(f"{exc} ({_FIELD_FIX})") from None
        shape, dtype = [slots, *field.stored_shape], field.stored_dtype.name
        if array_meta.get("shape") != shape or array_meta.get("data_type") != dtype:
            raise CorruptStoreError(
                f"{path}: array {name!r} is {array_meta.get('shape')} {array_meta.get('data_type')}, the "
                f"pool's metadata says {shape} {dtype}; the pool is damaged ({_FIELD_FIX})"
            )
        shard = os.path.join(path, name, _chunk_key(1 + len(field.stored_shape)))
        data_nbytes = slots * field.stored_row_nbytes
        n_chunks = slots // chunk_rows
        _check_size(path, shard, data_nbytes + n_chunks * _INDEX_ENTRY.itemsize + _CRC_NBYTES, f"field {name!r}")
        _check_index(path, name, shard, data_nbytes, n_chunks, chunk_rows * field.stored_row_nbytes)
        return Extent(shard, 0, data_nbytes)

    def container_findings(self, path: str, layout: Layout) -> list[str]:
        findings = group_findings(_read_json(path, os.path.join(path, "zarr.json"), CorruptStoreError))
        for name, document, expected in _array_documents(path, layout, findings):
            if document is not None:
                findings += document_findings(name, document, expected)
            file, expected_size = _chunk_file(path, name, expected), expected_sizes(layout)[name]
            findings += size_findings(path, name, file, os.path.getsize(file), expected_size,
                                                  shard=name in layout.schema)
        return findings

    def repair_container(self, path: str) -> list[str]:
        """Restore what plain zarr-python needs and the pool's metadata defines (zarr_checks.py):
        first what opening checks of the fields; the rest once the pool opens, so that the data
        files agree with that metadata."""
        actions = _repair_fields(path)
        layout = self.read_layout(path)
        group_file = os.path.join(path, "zarr.json")
        group = _read_json(path, group_file, CorruptStoreError)
        if group_findings(group):
            write_document(group_file, {**group, "zarr_format": 3, "node_type": "group"})
            actions.append("set zarr_format 3 and node_type 'group' in zarr.json")
        sizes = expected_sizes(layout)
        for name, document, expected in _array_documents(path, layout, []):
            if document is None or document_findings(name, document, expected):
                write_document(os.path.join(path, name, "zarr.json"), expected)
                actions.append(f"rewrote {name}/zarr.json from the pool's metadata")
            file = _chunk_file(path, name, expected)
            size = os.path.getsize(file)
            if size > sizes[name] or (size < sizes[name] and name == "_commit"):  # a cut data file fails to open
                fix_size(file, sizes[name])
                cut = size - sizes[name]
                done = f"cut {cut} bytes past the data" if size > sizes[name] else "zero-filled its cut end"
                actions.append(f"{os.path.relpath(file, path)}: {done}, so that plain zarr-python reads it")
        return actions

    def disk_nbytes(self, schema: Schema, slots: int) -> int:
        rows = sum(field.stored_row_nbytes for field in schema.values())
        return slots * rows + 2 * SLOT_NBYTES + len(schema) * (1 << 16)


def _pool_meta(path: str) -> dict:
    group = _read_json(path, os.path.join(path, "zarr.json"), missing=NotAPoolError)
    attributes = group.get("attributes")
    meta = attributes.get("expstore") if isinstance(attributes, dict) else None
    if not isinstance(meta, dict):
        raise NotAPoolError(f"{path} is a Zarr group but not an expstore pool (no 'expstore' attribute)"
                           f"{NOT_A_POOL_FIX}")
    return check_meta(path, meta)


def _repair_fields(path: str) -> list[str]:
    """What keeps a field from opening that its metadata alone defines, in a shard file of the
    exact size (a file cut or grown lost more than that): a shard index that fails its crc32c
    (a valid index that differs is another program's layout, left to read_layout to report),
    and a zarr.json that is missing, unreadable or not the one expstore writes."""
    meta, actions = _pool_meta(path), []
    for name, field in Schema.from_json(meta["schema"]).items():
        shard = os.path.join(path, name, _chunk_key(1 + len(field.stored_shape)))
        data_nbytes = meta["slots"] * field.stored_row_nbytes
        index = _shard_index(meta["slots"], meta["chunk_rows"], field.stored_row_nbytes)
        if not os.path.isfile(shard) or os.path.getsize(shard) != data_nbytes + len(index):
            continue
        with open(shard, "r+b") as fh:
            stored = os.pread(fh.fileno(), len(index), data_nbytes)
            if stored != index and _crc32c(stored[:-_CRC_NBYTES]) != stored[-_CRC_NBYTES:]:
                os.pwrite(fh.fileno(), index, data_nbytes)
                os.fsync(fh.fileno())
                actions.append(f"rewrote the shard index of {name!r}, which failed its checksum, from the pool's "
                               "metadata")
        expected = array_document((meta["slots"], *field.stored_shape), field.stored_dtype.name, meta["chunk_rows"])
        try:
            broken = bool(document_findings(name, _read_json(path, os.path.join(path, name, "zarr.json"),
                                                                         CorruptStoreError), expected))
        except CorruptStoreError:
            broken = True
        if broken:
            write_document(os.path.join(path, name, "zarr.json"), expected)
            actions.append(f"rewrote {name}/zarr.json from the pool's metadata")
    return actions


def _array_documents(path: str, layout: Layout, findings: list[str]):
    """(name, its zarr.json document or None when unreadable, the expected one) per array; an
    unreadable one is added to ``findings``."""
    for name, expected in expected_documents(layout).items():
        try:
            document = _read_json(path, os.path.join(path, name, "zarr.json"), CorruptStoreError)
        except CorruptStoreError as exc:
            findings.append(f"{exc}; plain zarr readers of this array will fail; `expstore repair` rewrites it")
            document = None
        yield name, document, expected


def _chunk_file(path: str, name: str, document: dict) -> str:
    return os.path.join(path, name, _chunk_key(len(document["shape"])))


def _write_raw_array(group, path, name, shape, dtype, content: bytes) -> str:
    """An internal array stored as one uncompressed chunk: its file is the raw C-order bytes."""
    group.create_array(name, shape=shape, chunks=shape, dtype=dtype, compressors=None, fill_value=0)
    file = os.path.join(path, name, _chunk_key(len(shape)))
    os.makedirs(os.path.dirname(file), exist_ok=True)
    with open(file, "wb") as fh:
        fh.write(content)
    return file


def _write_shard(array_dir, ndim, slots, chunk_rows, row_nbytes) -> str:
    shard = os.path.join(array_dir, _chunk_key(ndim))
    os.makedirs(os.path.dirname(shard), exist_ok=True)
    with open(shard, "wb") as fh:
        os.pwrite(fh.fileno(), _shard_index(slots, chunk_rows, row_nbytes), slots * row_nbytes)
    return shard


def _shard_index(slots: int, chunk_rows: int, row_nbytes: int) -> bytes:
    """A shard's index, chunks back to back in order, and its crc32c: the bytes after its data."""
    n_chunks = slots // chunk_rows
    chunk_nbytes = chunk_rows * row_nbytes
    index = np.empty(n_chunks, dtype=_INDEX_ENTRY)
    index["offset"] = np.arange(n_chunks, dtype=np.uint64) * np.uint64(chunk_nbytes)
    index["nbytes"] = chunk_nbytes
    index_bytes = index.tobytes()
    return index_bytes + _crc32c(index_bytes)


def _check_index(path, name, shard, data_nbytes, n_chunks, chunk_nbytes) -> None:
    index_nbytes = n_chunks * _INDEX_ENTRY.itemsize
    with open(shard, "rb") as fh:
        raw = os.pread(fh.fileno(), index_nbytes + _CRC_NBYTES, data_nbytes)
    if _crc32c(raw[:index_nbytes]) != raw[index_nbytes:]:
        raise CorruptStoreError(f"{path}: the shard index of {name!r} fails its checksum; the pool is damaged "
                                "(`expstore repair` rewrites the index of a shard file of the right size)")
    index = np.frombuffer(raw[:index_nbytes], dtype=_INDEX_ENTRY)
    expected = np.arange(n_chunks, dtype=np.uint64) * np.uint64(chunk_nbytes)
    if not (np.array_equal(index["offset"], expected) and (index["nbytes"] == chunk_nbytes).all()):
        raise CorruptStoreError(f"{path}: the chunks of {name!r} are not laid out back to back; "
                                "the shard was rewritten by another program")


def _crc32c(data: bytes) -> bytes:
    return google_crc32c.value(data).to_bytes(_CRC_NBYTES, "little")


def _read_json(path: str, file: str, missing) -> dict:
    try:
        with open(file, "rb") as fh:
            value = json.loads(fh.read())
    except FileNotFoundError:
        what = "not a Zarr v3 group" if missing is NotAPoolError else "damaged"
        raise missing(f"{path}: {os.path.relpath(file, path)} is missing, the pool is {what}") from None
    except IsADirectoryError:
        raise CorruptStoreError(f"{path}: {os.path.relpath(file, path)} is a directory, not a JSON file; "
                                "the pool is damaged") from None
    except NotADirectoryError:
        raise missing(f"{path}: {os.path.dirname(file)} is a file, not a directory; a Zarr pool is a "
                      "directory (a one-file pool needs the .h5 suffix or backend='hdf5')") from None
    except ValueError:
        name = os.path.relpath(file, path)
        raise CorruptStoreError(f"{path}: {name} is not valid JSON; the pool is damaged") from None
    if not isinstance(value, dict):
        raise CorruptStoreError(f"{path}: {os.path.relpath(file, path)} is not a JSON object; the pool is damaged")
    return value


def _check_size(path: str, file: str, nbytes: int, what: str) -> None:
    try:
        size = os.path.getsize(file)
    except FileNotFoundError:
        raise CorruptStoreError(f"{path}: the {what} file {os.path.relpath(file, path)} is missing; "
                                "the pool is damaged") from None
    if not os.path.isfile(file):  # a directory in its place: mapping it would be a bare OSError
        raise CorruptStoreError(f"{path}: the {what} file {os.path.relpath(file, path)} is not a regular file; "
                                "the pool is damaged")
    if size < nbytes:
        raise CorruptStoreError(f"{path}: the {what} file is {size} bytes, expected {nbytes}; it was truncated and "
                                "its rows are lost: restore the pool from a copy")
