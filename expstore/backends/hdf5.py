"""HDF5 pools: one file, one early-allocated, unfiltered chunked dataset per field.

With ``ALLOC_TIME_EARLY`` and no filters every chunk exists at creation and never moves, and
HDF5 lays them back to back, so a field is one contiguous byte range that a memory map can
cover. That layout is observed, not promised by HDF5, so creation checks every chunk and open
re-checks the first and the last chunk against the offsets recorded at creation.

The file starts with an HDF5 user block (HDF5 and h5py skip it) that holds the layout record
(py): the metadata with every offset, the file size and a crc32c of HDF5's own
structures (every byte outside the user block and the arrays) as they were verified. Opening reads
that record and those bytes with plain ``pread`` calls instead of opening the file with h5py; a
record that is missing (a pool made before it existed), damaged or stale (another program changed
HDF5's structures) is passed over, the layout is read through h5py, and a writer's open then writes
the record again.
"""

from __future__ import annotations

import json
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
    array_nbytes,
    array_specs,
    checksum_table_bytes,
    expected_arrays,
    internal_arrays,
)
from .hdf5_archive import HDF5Archive
from .hdf5_heap import damaged_heap
from .layout_record import (
    HEADER_NBYTES,
    RecordUnusable,
    record_body_nbytes,
    record_check_version,
    record_decode,
    record_encode,
    record_fall_back,
    record_has_magic,
)
from .meta import check_meta, hdf5_offset_keys

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ALIGN = 4096
_MIN_USER_BLOCK = 4096
_MAX_USER_BLOCK = 1 << 20  # HDF5 looks for its signature at 0 and at each power of two from 512 on
_RECORD_SLACK_NBYTES = 1024  # beside the metadata: the offsets added after the estimate, the fingerprint


# expstore still reads such a pool (it maps the bytes where its metadata says), so its rows can be saved.
_CONTAINER_FIX = ("restore the pool from a copy, or copy it into a new pool with `expstore convert` "
                  "(which reads it the way expstore does)")


def _h5py():
    # h5py loads on first use: its import is slow, and a program on Zarr pools never needs it.
    import h5py

    return h5py


class HDF5Backend:
    name: str = "hdf5"
    suffixes: tuple[str, ...] = (".h5", ".hdf5")
    label: str = "an HDF5 file"
    archive: ArchiveForm = HDF5Archive()

    def holds(self, path: str) -> bool:
        return os.path.isfile(path)  # one file; a file that is not HDF5 is then reported by read_layout

    def top_level(self, path: str) -> tuple[dict, list[str]] | None:
        with open(path, "rb") as fh:
            if _superblock_offset(fh.fileno()) is None:
                return None
        with _h5py().File(path, "r", locking=False) as f:
            return dict(f.attrs), sorted(f.keys())

    def writes(self, relative: str) -> bool:
        return False  # one file: nothing inside a directory is an HDF5 pool's

    def create(self, path, meta, schema, slots, chunk_rows, commit_slots):
        h5py = _h5py()
        offsets = {}
        user_block = _user_block_nbytes(meta, schema)
        with h5py.File(path, "w", libver="latest", alignment_threshold=_ALIGN, alignment_interval=_ALIGN,
                       userblock_size=user_block, locking=False) as f:
            for name, field in schema.items():
                dataset = f.create_dataset(
                    name, shape=(slots, *field.stored_shape), dtype=field.stored_dtype,
                    chunks=(chunk_rows, *field.stored_shape), dcpl=_early_dcpl(h5py),
                )
                offsets[name] = _contiguous_chunks_offset(dataset, chunk_rows * field.stored_row_nbytes)
            commit = f.create_dataset("_commit", shape=(2, SLOT_NBYTES), dtype="u1", dcpl=_early_dcpl(h5py))
            commit_offset = commit.id.get_offset()
            extra = {"offsets": offsets, "commit_offset": commit_offset}
            if meta.get("checksums"):
                table = f.create_dataset("_checksums", shape=(slots // chunk_rows, 2), dtype="<i8",
                                         dcpl=_early_dcpl(h5py))
                extra["checksums_offset"] = table.id.get_offset()
            extra["internal_offsets"] = {
                name: f.create_dataset(name, shape=shape, dtype=dtype, dcpl=_early_dcpl(h5py)).id.get_offset()
                for name, (shape, dtype) in internal_arrays(meta).items()
            }
            full_meta = {**meta, **extra}
            _write_meta(h5py, f, full_meta)
        with open(path, "r+b") as fh:
            os.pwrite(fh.fileno(), commit_slots, commit_offset)
            if meta.get("checksums"):
                os.pwrite(fh.fileno(), checksum_table_bytes(meta), extra["checksums_offset"])
            _write_record(fh.fileno(), full_meta)  # creation checked every chunk: the layout is verified
        return [path]

    def read_layout(self, path: str) -> Layout:
        recorded = _recorded_layout(path)
        if recorded is not None:
            return recorded
        h5py = _h5py()
        _check_signature(path)
        try:
            f = h5py.File(path, "r", locking=False)
        except OSError as exc:
            raise CorruptStoreError(f"{path}: HDF5 cannot read the file ({exc}); it may be truncated") from None
        with f:
            try:
                meta, schema, fields = self._read_objects(path, f)
            except ExpstoreError:
                raise
            except (KeyError, RuntimeError, OSError, ValueError, TypeError) as exc:
                # Damaged object headers surface as any of these from inside h5py.
                raise CorruptStoreError(f"{path}: HDF5 cannot read the pool's metadata ({type(exc).__name__}: "
                                        f"{exc}); the file is damaged: run `expstore verify {path}`") from None
        return _layout_of(path, meta, schema, fields)

    def record_layout(self, path: str, layout: Layout) -> bool:
        """Write the layout record of a layout just read through h5py (so checked against the
        container) into the file's user block; False for a pool made without one."""
        with open(path, "r+b") as fh:
            return _write_record(fh.fileno(), layout.meta)

    def _read_objects(self, path: str, f) -> tuple[dict, Schema, dict[str, Extent]]:
        if "expstore" not in f.attrs:
            raise NotAPoolError(f"{path} is an HDF5 file but not an expstore pool (no 'expstore' attribute)"
                                f"{NOT_A_POOL_FIX}")
        file_nbytes = os.path.getsize(path)
        _check_meta_heap(path, file_nbytes)
        meta = check_meta(path, _loads(path, f.attrs["expstore"]), file_nbytes=file_nbytes)
        schema = Schema.from_json(meta["schema"])
        fields = {name: self._field_extent(path, f, meta, schema, name) for name in schema}
        _check_bookkeeping_datasets(path, f, meta, schema)
        return meta, schema, fields

    def _field_extent(self, path: str, f, meta: dict, schema: Schema, name: str) -> Extent:
        field = schema[name]
        try:
            dataset = _h5py().h5d.open(f.id, name.encode())  # the low-level call: a third of f[name]'s cost
        except KeyError:
            raise CorruptStoreError(f"{path}: the field dataset {name!r} is missing; the pool is damaged: "
                                    "restore it from a backup copy") from None
        slots, chunk_rows = meta["slots"], meta["chunk_rows"]
        filtered = dataset.get_create_plist().get_nfilters() > 0  # compressed chunks cannot be mapped
        shape, dtype = (slots, *field.stored_shape), field.stored_dtype
        if dataset.shape != shape or dataset.dtype != dtype or filtered:
            raise CorruptStoreError(
                f"{path}: dataset {name!r} is {dataset.shape} {dataset.dtype}{' filtered' if filtered else ''}, "
                f"the pool's metadata says {shape} {dtype}; the pool is damaged: "
                "restore it from a backup copy"
            )
        offset = meta["offsets"][name]
        chunk_nbytes = chunk_rows * field.stored_row_nbytes
        zeros = (0,) * len(field.stored_shape)
        first = dataset.get_chunk_info_by_coord((0, *zeros)).byte_offset
        last = dataset.get_chunk_info_by_coord((slots - chunk_rows, *zeros)).byte_offset
        if first != offset or last != offset + (slots // chunk_rows - 1) * chunk_nbytes:
            raise CorruptStoreError(f"{path}: the chunks of {name!r} moved since creation; the pool is damaged: "
                                    "restore it from a backup copy")
        return Extent(path, offset, slots * field.stored_row_nbytes)

    def container_findings(self, path: str, layout: Layout) -> list[str]:
        findings = []
        with _h5py().File(path, "r", locking=False) as f:
            for name, (shape, dtype) in expected_arrays(layout).items():
                try:
                    dataset = f[name]
                    found = (dataset.shape, dataset.dtype.name)
                except (KeyError, RuntimeError, OSError, ValueError) as exc:
                    findings.append(f"HDF5 dataset {name!r} is missing or unreadable ({exc}); "
                                    f"plain h5py readers of this pool will fail; {_CONTAINER_FIX}")
                    continue
                if found != (tuple(shape), dtype):
                    findings.append(f"HDF5 dataset {name!r} is {found[0]} {found[1]}, expected {tuple(shape)} {dtype}; "
                                    f"{_CONTAINER_FIX}")
        return findings

    def repair_container(self, path: str) -> list[str]:
        return []  # rewriting HDF5's own structures in place could lose the pool: see _CONTAINER_FIX

    def disk_nbytes(self, schema: Schema, slots: int) -> int:
        rows = sum(field.stored_row_nbytes for field in schema.values())
        return slots * rows + (len(schema) + 2) * _ALIGN + 2 * SLOT_NBYTES + (1 << 16)


def _layout_of(path: str, meta: dict, schema: Schema, fields: dict[str, Extent], from_record: bool = False) -> Layout:
    commit = Extent(path, meta["commit_offset"], 2 * SLOT_NBYTES)
    checksums = None
    if meta["checksums"]:
        checksums = Extent(path, meta["checksums_offset"], len(checksum_table_bytes(meta)))
    return Layout(meta, schema, fields, commit, checksums, _internal_extents(path, meta), from_record=from_record)


# ---------------------------------------------------------------------- the layout record
def _user_block_nbytes(meta: dict, schema: Schema) -> int:
    """Room for the layout record: the metadata, the offsets added at creation, the fingerprint."""
    arrays = len(schema) + len(meta.get("internal", {})) + 2
    wanted = len(json.dumps(meta)) + 32 * arrays + _RECORD_SLACK_NBYTES
    size = _MIN_USER_BLOCK
    while size < wanted and size < _MAX_USER_BLOCK:
        size *= 2
    return size


def _superblock_offset(fd: int) -> int | None:
    """Where HDF5 finds its superblock: byte 0, or the end of a user block (a power of two)."""
    offset = 0
    while offset <= _MAX_USER_BLOCK:
        head = os.pread(fd, len(_HDF5_SIGNATURE), offset)
        if head == _HDF5_SIGNATURE:
            return offset
        if len(head) < len(_HDF5_SIGNATURE):
            return None
        offset = 512 if offset == 0 else offset * 2
    return None


def _fingerprint(fd: int, user_block: int, layout: Layout) -> dict:
    """What must not change for a record to stay true: the file size (fixed at creation) and a
    crc32c of every byte outside the user block and the arrays, that is of HDF5's own structures
    (superblock, object headers, link and chunk indexes), which expstore never writes after
    creation. Any change by another program (an unlinked or added dataset, a rewritten
    attribute, a repack) changes them."""
    file_nbytes = os.fstat(fd).st_size
    extents = sorted((extent.offset, extent.nbytes) for extent in _extents(layout))
    crc, position = 0, user_block
    for offset, nbytes in [*extents, (file_nbytes, 0)]:
        if offset > position:
            crc = google_crc32c.extend(crc, os.pread(fd, offset - position, position))
        position = max(position, offset + nbytes)
    return {"user_block": user_block, "file_nbytes": file_nbytes, "structure_crc32c": crc}


def _extents(layout: Layout) -> list[Extent]:
    extents = [*layout.fields.values(), *layout.internal.values(), layout.commit]
    return extents if layout.checksums is None else [*extents, layout.checksums]


def _write_record(fd: int, meta: dict) -> bool:
    user_block = _superblock_offset(fd)
    if not user_block:
        return False  # made before the record existed: no room before the superblock
    record = record_encode(meta, _fingerprint(fd, user_block, _meta_layout("", meta)))
    if len(record) > user_block:
        return False  # never expected (the user block was sized for it): the pool opens through h5py
    os.pwrite(fd, record, 0)
    return True


def _meta_layout(path: str, meta: dict, from_record: bool = False) -> Layout:
    """The layout the metadata describes: every array at its recorded offset."""
    schema = Schema.from_json(meta["schema"])
    fields = {name: Extent(path, meta["offsets"][name], meta["slots"] * field.stored_row_nbytes)
              for name, field in schema.items()}
    return _layout_of(path, meta, schema, fields, from_record=from_record)


def _recorded_layout(path: str) -> Layout | None:
    """The layout from the file's record, or None when it has no usable one (see module doc)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None  # the slow path says what is wrong with the path
    try:
        head = os.pread(fd, _MIN_USER_BLOCK, 0)
        if not record_has_magic(head):
            return None
        return _checked_record(path, fd, head)
    except RecordUnusable as exc:
        record_fall_back(path, exc)
        return None
    except (KeyError, TypeError, ValueError, ExpstoreError) as exc:  # a checksummed record this version cannot use
        record_fall_back(path, RecordUnusable(f"the layout record cannot be used ({exc})"))
        return None
    except OSError:
        return None  # a directory, an unreadable file: the slow path says what is wrong
    finally:
        os.close(fd)


def _checked_record(path: str, fd: int, head: bytes) -> Layout:
    """The layout of a record that passes every check. Its metadata is not validated again as the
    slow path validates the container's (check_meta, a third of a millisecond): the checksum shows
    these are the bytes an open that validated them wrote."""
    nbytes = HEADER_NBYTES + record_body_nbytes(head)
    if nbytes > _MAX_USER_BLOCK:
        raise RecordUnusable("the layout record's length is damaged")
    raw = head if nbytes <= len(head) else os.pread(fd, nbytes, 0)
    meta, fingerprint = record_decode(raw)
    record_check_version(meta)
    user_block = fingerprint.get("user_block")
    if not isinstance(user_block, int) or not 0 < user_block <= _MAX_USER_BLOCK or nbytes > user_block:
        raise RecordUnusable("the layout record's fingerprint is damaged")
    layout = _meta_layout(path, meta, from_record=True)
    if fingerprint != _fingerprint(fd, user_block, layout):
        raise RecordUnusable("the layout record is stale (HDF5's structures in the file changed since it was "
                             "written)")
    return layout


def _early_dcpl(h5py):
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    # No fill: the file starts sparse and is preallocated with posix_fallocate afterwards.
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


def _contiguous_chunks_offset(dataset, chunk_nbytes: int) -> int:
    starts = []
    dataset.id.chunk_iter(lambda info: starts.append((info.chunk_offset[0], info.byte_offset)))
    starts.sort()
    offsets = np.array([byte_offset for _, byte_offset in starts], dtype=np.int64)
    if offsets.size == 0 or (np.diff(offsets) != chunk_nbytes).any():
        raise CorruptStoreError(
            f"HDF5 did not lay out the chunks of {dataset.name!r} back to back; "
            "this HDF5 build is not supported, please report it"
        )
    return int(offsets[0])


def _internal_extents(path: str, meta: dict) -> dict[str, Extent]:
    sizes = array_nbytes(internal_arrays(meta))
    return {name: Extent(path, meta["internal_offsets"][name], nbytes) for name, nbytes in sizes.items()}


def _check_bookkeeping_datasets(path: str, f, meta: dict, schema: Schema) -> None:
    """The commit slots, checksum table and bookkeeping arrays are the datasets the metadata
    says, at the offsets it records: a damaged offset would map the wrong bytes."""
    h5d = _h5py().h5d
    specs = array_specs(meta, schema)
    for name, key in hdf5_offset_keys(meta, schema).items():
        if name in schema:
            continue  # their chunks are checked against the offsets in _field_extent
        try:
            dataset = h5d.open(f.id, name.encode())  # the low-level call: a third of f[name]'s cost
        except KeyError:
            continue  # unlinked: its bytes stay where the metadata points, so it opens; verify reports it
        shape, dtype = specs[name]
        if dataset.shape != shape or dataset.dtype != np.dtype(dtype):
            raise CorruptStoreError(f"{path}: dataset {name!r} is {dataset.shape} {dataset.dtype}, the pool's "
                                    f"metadata says {shape} {dtype}; the pool is damaged: "
                                    "restore it from a backup copy")
        recorded = meta[key[0]] if len(key) == 1 else meta[key[0]][key[1]]
        if dataset.get_offset() != recorded:
            raise CorruptStoreError(f"{path}: dataset {name!r} lies at byte {dataset.get_offset()}, the pool's "
                                    f"metadata says {recorded} ({'.'.join(key)}); the pool is damaged: "
                                    "restore it from a backup copy")


def _check_signature(path: str) -> None:
    if os.path.isdir(path):
        raise NotAPoolError(f"{path} is a directory, not an HDF5 file; an HDF5 pool is one file "
                            "(a directory pool needs the .zarr suffix or backend='zarr')")
    with open(path, "rb") as fh:
        found = _superblock_offset(fh.fileno())
        recorded = record_has_magic(os.pread(fh.fileno(), HEADER_NBYTES, 0))
    if found is None and recorded:
        raise CorruptStoreError(f"{path} starts with an expstore layout record but holds no HDF5 superblock after "
                                f"it: the file was truncated ({os.path.getsize(path)} bytes) or overwritten; "
                                "restore the pool from a backup copy")
    if found is None:
        raise NotAPoolError(f"{path} is not an HDF5 file (no HDF5 signature), so not an expstore pool"
                        f"{NOT_A_POOL_FIX}")


def _write_meta(h5py, f, meta: dict) -> None:
    """The metadata JSON as a fixed-length string: it then lives in the root group's object
    header, under its checksum, so damage is an HDF5 error. (Pools made before stored it as a
    variable-length string, in an unchecked global heap; see hdf5_heap.py. Both read the same.)"""
    raw = json.dumps(meta).encode()
    f.attrs.create("expstore", np.array(raw, dtype=h5py.string_dtype("utf-8", len(raw))))


def _check_meta_heap(path: str, file_nbytes: int) -> None:
    with open(path, "rb") as fh:
        problem = damaged_heap(fh.fileno(), file_nbytes, b"expstore", _superblock_offset(fh.fileno()) or 0)
    if problem is not None:
        raise CorruptStoreError(f"{path}: the pool metadata is damaged: {problem}; restore the pool from a backup copy")


def _loads(path: str, text) -> dict:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, dict):
        raise CorruptStoreError(f"{path}: the pool metadata is not valid JSON; the pool is damaged: "
                                "restore it from a backup copy")
    return value
