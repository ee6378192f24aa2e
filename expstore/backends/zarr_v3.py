"""Zarr v3 pools: one directory, one array per field stored as a single shard.

Each field array uses the sharding codec with the shard covering the whole ring and inner
chunks of ``chunk_rows`` rows, no compressors. Creation writes the shard file itself: the inner
chunks back to back, then the shard index (offset, nbytes per chunk) and its crc32c, exactly
as the Zarr v3 sharding spec lays it out, so plain zarr-python reads every field while the
store maps the chunk bytes as one contiguous array. The metadata is read straight from the
``zarr.json`` documents on open: importing and running zarr would cost more than the open.

The group also holds ``_commit/expstore.layout``, the layout record (py): the metadata
and the size and modification time of every ``zarr.json`` and the size of every data file, as
they were when the layout was checked. Opening reads that one file and ``stat``s the others
instead of reading and checking every document and shard index; a record that is missing,
damaged or stale is passed over, and a writer's open writes it again.
"""

from __future__ import annotations

import json
import logging
import math
import os

import google_crc32c
import numpy as np

from ..errors import CorruptStoreError, ExpstoreError, NotAPoolError
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
from .layout_record import RecordUnusable, record_check_version, record_decode, record_encode, record_fall_back
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

logger = logging.getLogger("expstore.backends.zarr_v3")

_INDEX_ENTRY = np.dtype([("offset", "<u8"), ("nbytes", "<u8")])
_CRC_NBYTES = 4
# Beside the commit record, inside its array's directory: a file at the group's top level would
# make zarr-python warn, on every listing of the group, that it is no Zarr node.
RECORD_DIR, RECORD_NAME = "_commit", "expstore.layout"
RECORD_FILE = os.path.join(RECORD_DIR, RECORD_NAME)
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
        return (parts in (["zarr.json"], [RECORD_DIR, RECORD_NAME], [parts[0], "zarr.json"])
                or (len(parts) == 2 and parts[0] == RECORD_DIR and parts[1].startswith(f".{RECORD_NAME}."))
                or (len(parts) >= 3 and parts[1] == "c"))

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
        # Last, once every document and file has its final size and time; creation laid it out itself.
        _write_record(path, _layout_of(path, meta, Schema.from_json(meta["schema"])))
        return files

    def read_layout(self, path: str) -> Layout:
        recorded = _recorded_layout(path)
        if recorded is not None:
            return recorded
        meta = _pool_meta(path)
        schema = Schema.from_json(meta["schema"])
        for name in schema:
            self._check_field(path, meta, schema, name)
        layout = _layout_of(path, meta, schema)
        # One whole slot is enough to open: a file cut mid-slot 1 falls back to slot 0 (core/mapping.py).
        _check_size(path, layout.commit.path, SLOT_NBYTES, "commit record")
        if layout.checksums is not None:
            _check_size(path, layout.checksums.path, layout.checksums.nbytes, "checksum table")
        for name, extent in layout.internal.items():
            _check_size(path, extent.path, extent.nbytes, f"bookkeeping array {name!r}")
        return layout

    def record_layout(self, path: str, layout: Layout) -> bool:
        """Write the layout record of a layout just read and checked from the documents; False
        when a document the record fingerprints is gone (a bookkeeping array's ``zarr.json``, which
        expstore itself does not read): the pool opens the slow way until it is restored."""
        try:
            _write_record(path, layout)
        except RecordUnusable as exc:
            logger.warning("%s: %s; no layout record written, so it opens the slow way (`expstore verify` names "
                           "what a plain zarr reader misses, `expstore repair` restores it)", path, exc)
            return False
        return True

    def _check_field(self, path, meta, schema, name) -> None:
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


def _layout_of(path: str, meta: dict, schema: Schema, from_record: bool = False) -> Layout:
    """Where the arrays of a pool with this metadata lie: each array's one chunk file, from byte 0.
    (Joined as strings: os.path.join, called per file here, cost a fast open a third of its time.)"""
    path = _root(path)
    slots = meta["slots"]
    fields = {name: Extent(f"{path}{os.sep}{name}{os.sep}{_chunk_key(1 + len(field.stored_shape))}", 0,
                           slots * field.stored_row_nbytes) for name, field in schema.items()}
    commit = Extent(f"{path}{os.sep}_commit{os.sep}{_chunk_key(2)}", 0, 2 * SLOT_NBYTES)
    checksums = None
    if meta.get("checksums"):
        checksums = Extent(f"{path}{os.sep}_checksums{os.sep}{_chunk_key(2)}", 0, len(checksum_table_bytes(meta)))
    internal = {}
    for name, (shape, dtype) in internal_arrays(meta).items():
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        internal[name] = Extent(f"{path}{os.sep}{name}{os.sep}{_chunk_key(len(shape))}", 0, nbytes)
    return Layout(meta, schema, fields, commit, checksums, internal, from_record=from_record)


# ---------------------------------------------------------------------- the layout record
def _fingerprint(path: str, layout: Layout) -> dict:
    """Size and modification time of every ``zarr.json`` (never rewritten by expstore after
    creation, so any change is another program's) and the size of every data file."""
    path = _root(path)
    prefix = len(path) + 1
    data = [file[prefix:] for file in layout.files]  # every array's one data file, under its own directory
    documents = ["zarr.json"] + [f"{relative.split(os.sep, 1)[0]}{os.sep}zarr.json" for relative in data]
    try:
        stats = {relative: os.stat(f"{path}{os.sep}{relative}") for relative in documents}
        sizes = {relative: os.stat(f"{path}{os.sep}{relative}").st_size for relative in data}
    except OSError as exc:
        raise RecordUnusable(f"the layout record is stale ({exc.strerror}: {exc.filename})") from None
    return {"documents": {relative: [stat.st_size, stat.st_mtime_ns] for relative, stat in stats.items()},
            "data": sizes}


def _check_indexes(path: str, layout: Layout) -> None:
    """Each field's shard index, after its data: damaged, plain zarr-python cannot read the field."""
    chunk_rows, n_chunks = layout.meta["chunk_rows"], layout.meta["slots"] // layout.meta["chunk_rows"]
    for name, extent in layout.fields.items():
        row_nbytes = extent.nbytes // layout.meta["slots"]
        _check_index(path, name, extent.path, extent.nbytes, n_chunks, chunk_rows * row_nbytes)


def _root(path: str) -> str:
    """The group's path without a trailing separator, so that joined names stay canonical."""
    return path.rstrip(os.sep) or os.sep


def _write_record(path: str, layout: Layout) -> None:
    """Write the record aside and rename it into place, so that a reader sees the old or the new."""
    record = record_encode(layout.meta, _fingerprint(path, layout))
    temp = os.path.join(path, RECORD_DIR, f".{RECORD_NAME}.{os.getpid()}")  # a record left half-written
    with open(temp, "wb") as fh:
        fh.write(record)
    os.replace(temp, os.path.join(path, RECORD_FILE))


def _recorded_layout(path: str) -> Layout | None:
    """The layout from the group's record, or None when it has no usable one (see module doc)."""
    try:
        with open(os.path.join(path, RECORD_FILE), "rb") as fh:
            raw = fh.read()
    except OSError:
        return None  # none (a pool made before the record existed), or the slow path says what is wrong
    try:
        meta, fingerprint = record_decode(raw)
        record_check_version(meta)
        layout = _layout_of(path, meta, Schema.from_json(meta["schema"]), from_record=True)
        if fingerprint != _fingerprint(path, layout):
            raise RecordUnusable("the layout record is stale (a zarr.json or a data file changed since it was "
                                 "written)")
        _check_indexes(path, layout)  # what plain zarr readers need of the shards, as the slow path checks
    except RecordUnusable as exc:
        record_fall_back(path, exc)
        return None
    except (KeyError, TypeError, ValueError, ExpstoreError) as exc:  # a checksummed record this version cannot use
        record_fall_back(path, RecordUnusable(f"the layout record cannot be used ({exc})"))
        return None
    return layout


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
