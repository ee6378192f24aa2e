"""The pool metadata: written once at creation, and validated whole on open.

Every value of the document is checked against what this version writes before any of it is
used: types, dtypes, every array's shape against the ring, and (for a one-file pool) every byte
offset against the file's size. A flipped bit or an edited value then surfaces at open as one
CorruptStoreError naming the key, never as a TypeError or an IndexError deep inside the store.
"""

from __future__ import annotations

import time
from typing import TypeGuard

from .._version import __version__
from ..errors import CorruptStoreError, FormatVersionError, SchemaError
from ..schema import SUPPORTED_DTYPES, Field, Schema, check_field_name
from .base import FORMAT_VERSION, array_nbytes, array_specs
from .internal import (
    EPISODE_COLUMNS,
    EPISODE_TABLE,
    FINAL_PREFIX,
    plan,
    planned_final_heap_nbytes,
    planned_final_rows,
    planned_heap_nbytes,
)

_REQUIRED = ("format_version", "capacity", "slots", "chunk_rows", "schema", "attrs", "checksums")
_DTYPE_NAMES = tuple(dtype.name for dtype in SUPPORTED_DTYPES)
# numpy 1.x allows 32 dimensions; no array this version writes comes near.
_MAX_NDIM = 32
# Keys a schema entry may carry besides shape and dtype (schema.Field.to_json writes them).
SCHEMA_FIELD_OPTIONS = frozenset({"image", "codec"})
_SHOWN_CHARS = 60


def build_meta(schema: Schema, capacity: int, slots: int, chunk_rows: int, attrs: dict,
               checksums: bool = False) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "expstore_version": __version__,
        "capacity": capacity,
        "slots": slots,
        "chunk_rows": chunk_rows,
        "schema": schema.to_json(),
        "attrs": attrs,
        "checksums": checksums,
        "created_unix": time.time(),
    }


def check_meta(path: str, meta: object, file_nbytes: int | None = None) -> dict:
    """``meta`` if this version could have written it, else CorruptStoreError naming the key.

    Args:
        path: the pool, for the messages.
        meta: the decoded metadata document.
        file_nbytes: for a one-file pool (HDF5), the file's size: the document then records
            the byte offset of every array, and each array must lie inside the file.

    Raises:
        FormatVersionError: a newer expstore wrote the pool.
        CorruptStoreError: any other value this version would not have written.
    """
    if not isinstance(meta, dict):
        raise _damaged(path, "the document", f"is a JSON {type(meta).__name__}, not an object")
    _check_version(path, meta)
    _check_ring(path, meta)
    schema = _check_schema(path, meta["schema"])
    _check_plain_values(path, meta)
    _check_internal(path, meta, schema)
    if file_nbytes is not None:
        _check_offsets(path, meta, schema, file_nbytes)
    return meta


def _damaged(path: str, key: str, problem: str) -> CorruptStoreError:
    return CorruptStoreError(f"{path}: the pool metadata is damaged: {key} {problem}; "
                             "restore the pool from a backup copy")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS - 3] + "..."


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_version(path: str, meta: dict) -> None:
    version = meta.get("format_version")
    if _is_int(version) and version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{path} has format_version {version}, this expstore {__version__} reads up to "
            f"{FORMAT_VERSION}; upgrade expstore (pip install -U expstore)"
        )
    missing = [key for key in _REQUIRED if key not in meta]
    if missing:
        raise CorruptStoreError(f"{path}: the pool metadata lacks {missing}; the pool is damaged: "
                                "restore it from a backup copy")
    if not _is_int(version) or version < 1:
        raise _damaged(path, "format_version", f"is {_shown(version)}, expected an int from 1 to {FORMAT_VERSION}")


def _check_ring(path: str, meta: dict) -> None:
    for key in ("capacity", "slots", "chunk_rows"):
        if not _is_int(meta[key]) or meta[key] < 1:
            raise _damaged(path, key, f"is {_shown(meta[key])}, expected a positive int")
    capacity, slots, chunk_rows = meta["capacity"], meta["slots"], meta["chunk_rows"]
    # slots = capacity + slack (at least one row) rounded up to whole chunks: see ring.plan_slots.
    if slots <= capacity:
        raise _damaged(path, "slots", f"is {slots}, not above capacity {capacity} (the ring needs spare rows)")
    if slots % chunk_rows:
        raise _damaged(path, "chunk_rows", f"is {chunk_rows}, which does not divide slots {slots}")


def _check_schema(path: str, value: object) -> Schema:
    if not isinstance(value, dict) or not value:
        raise _damaged(path, "schema", f"is {_shown(value)}, expected an object of field name -> shape and dtype")
    for name, spec in value.items():
        try:
            check_field_name(name)
        except SchemaError as exc:
            raise _damaged(path, f"schema field {_shown(name)}", f"has a name this version never writes ({exc})") \
                from None
        _check_array_spec(path, f"schema.{name}", spec, optional=SCHEMA_FIELD_OPTIONS, ragged=True)
        try:
            Field.from_json(spec)
        except SchemaError as exc:
            raise _damaged(path, f"schema.{name}", f"is {_shown(spec)}, which this version cannot read ({exc})") \
                from None
    return Schema.from_json(value)


def _check_array_spec(path: str, key: str, spec: object, optional: frozenset[str] = frozenset(),
                      ragged: bool = False) -> None:
    """One ``{"shape": [...], "dtype": "..."}`` entry, as this version writes them, with any of the
    ``optional`` keys besides; with ``ragged``, the shape may start with null (a ragged field)."""
    if not isinstance(spec, dict) or not {"dtype", "shape"} <= set(spec) <= {"dtype", "shape"} | optional:
        raise _damaged(path, key, f"is {_shown(spec)}, expected {{'shape': [...], 'dtype': ...}}")
    shape, dtype = spec["shape"], spec["dtype"]
    fixed = shape[1:] if ragged and isinstance(shape, list) and shape and shape[0] is None else shape
    if not isinstance(shape, list) or len(shape) >= _MAX_NDIM or not all(_is_int(n) and n >= 1 for n in fixed):
        raise _damaged(path, f"{key}.shape", f"is {_shown(shape)}, expected a list of positive ints")
    if not isinstance(dtype, str) or dtype not in _DTYPE_NAMES:
        raise _damaged(path, f"{key}.dtype", f"is {_shown(dtype)}, expected one of {', '.join(_DTYPE_NAMES)}")


def _check_plain_values(path: str, meta: dict) -> None:
    """The values that are not arrays: user attributes, the checksum flag, provenance."""
    if not isinstance(meta["attrs"], dict):
        raise _damaged(path, "attrs", f"is {_shown(meta['attrs'])}, expected a JSON object")
    if not isinstance(meta["checksums"], bool):
        raise _damaged(path, "checksums", f"is {_shown(meta['checksums'])}, expected true or false")
    # Provenance only: never used to read the pool, so a pool without them still opens.
    version = meta.get("expstore_version", "")
    if not isinstance(version, str):
        raise _damaged(path, "expstore_version", f"is {_shown(version)}, expected a string")
    created = meta.get("created_unix", 0.0)
    if not isinstance(created, (int, float)) or isinstance(created, bool):
        raise _damaged(path, "created_unix", f"is {_shown(created)}, expected a number (unix seconds)")


def _check_internal(path: str, meta: dict, schema: Schema) -> None:
    """The bookkeeping arrays are exactly those creation plans for this ring and episode table."""
    arrays = meta.get("internal")
    if arrays is None:
        return  # a pool made before episode bookkeeping existed
    if not isinstance(arrays, dict):
        raise _damaged(path, "internal", f"is {_shown(arrays)}, expected an object of array name -> shape and dtype")
    for name, spec in arrays.items():
        _check_array_spec(path, f"internal.{name}", spec)
    finals = sorted(name for name in arrays if name.startswith(FINAL_PREFIX))
    try:
        expected = plan(schema, meta["slots"], _episode_rows(path, arrays, meta["slots"]),
                                 derive_next_obs=bool(finals), final_rows=planned_final_rows(arrays),
                                 heap_nbytes=planned_heap_nbytes(arrays),
                                 final_heap_nbytes=planned_final_heap_nbytes(arrays))
    except SchemaError:
        raise _damaged(path, "internal", f"holds final-observation tables {finals}, but the schema stores "
                                         "next_ for every observation") from None
    for name in sorted(arrays.keys() | expected.keys()):
        if name not in arrays:
            raise _damaged(path, "internal", f"lacks the bookkeeping array {name!r}")
        if name not in expected:
            raise _damaged(path, f"internal.{name}", "is an array this version never writes for this schema")
        for part in ("shape", "dtype"):
            if arrays[name][part] != expected[name][part]:
                raise _damaged(path, f"internal.{name}.{part}", f"is {_shown(arrays[name][part])}, expected "
                                                              f"{_shown(expected[name][part])} for a ring of "
                                                              f"{meta['slots']} slots")


def _episode_rows(path: str, arrays: dict, slots: int) -> int:
    """Rows of the episode table: chosen at creation, between one and one per slot."""
    table = arrays.get(EPISODE_TABLE)
    if table is None:
        raise _damaged(path, "internal", f"lacks the episode table {EPISODE_TABLE!r}")
    shape = table["shape"]
    columns = (EPISODE_COLUMNS, EPISODE_COLUMNS + 1)  # the fifth: see backends/internal.py
    if len(shape) != 2 or shape[0] > slots or shape[1] not in columns:
        raise _damaged(path, f"internal.{EPISODE_TABLE}.shape",
                       f"is {shape}, expected [rows, {columns[0]} or {columns[1]}] with at most "
                       f"{slots} rows (the ring's slots)")
    return shape[0]


def hdf5_offset_keys(meta: dict, schema: Schema) -> dict[str, tuple[str, ...]]:
    """Where a one-file pool's document records each array's byte offset: name -> key path."""
    keys: dict[str, tuple[str, ...]] = {name: ("offsets", name) for name in schema}
    keys["_commit"] = ("commit_offset",)
    if meta["checksums"]:
        keys["_checksums"] = ("checksums_offset",)
    keys.update({name: ("internal_offsets", name) for name in meta.get("internal", {})})
    return keys


def _check_offsets(path: str, meta: dict, schema: Schema, file_nbytes: int) -> None:
    """Every array's recorded byte offset: an int, and the array inside the file."""
    sizes = array_nbytes(array_specs(meta, schema))
    keys = hdf5_offset_keys(meta, schema)
    for name, key in keys.items():
        offset = _lookup(path, meta, key, f"the byte offset of {name!r}")
        where = ".".join(key)
        if not _is_int(offset) or offset < 0:
            raise _damaged(path, where, f"is {_shown(offset)}, expected a byte offset (a non-negative int)")
        if offset + sizes[name] > file_nbytes:
            raise CorruptStoreError(f"{path} is {file_nbytes} bytes but {name!r} ({sizes[name]} bytes from byte "
                                    f"{offset}, {where}) reaches byte {offset + sizes[name]}: the file was "
                                    "truncated, or the offset is damaged; restore the pool from a backup copy")
    for table in ("offsets", "internal_offsets"):
        recorded = meta.get(table, {})
        unknown = sorted(set(recorded) - {key[1] for key in keys.values() if key[0] == table}) \
            if isinstance(recorded, dict) else []
        if unknown:
            raise _damaged(path, table, f"names arrays the pool does not have: {unknown}")


def _lookup(path: str, meta: dict, key: tuple[str, ...], what: str) -> object:
    value: object = meta
    for depth, part in enumerate(key):
        if not isinstance(value, dict):
            raise _damaged(path, ".".join(key[:depth]), f"is {_shown(value)}, expected an object")
        if part not in value:
            raise _damaged(path, ".".join(key[:depth]) or "the document", f"lacks {part!r} ({what})")
        value = value[part]
    return value
