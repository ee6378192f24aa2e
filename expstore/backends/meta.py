"""The pool metadata written once at creation, and its checks on open."""

from __future__ import annotations

import time

from ..errors import CorruptStoreError, FormatVersionError, SchemaError
from ..schema import Schema
from .base import FORMAT_VERSION

_REQUIRED = ("format_version", "capacity", "slots", "chunk_rows", "schema", "attrs")


def build_meta(schema: Schema, capacity: int, slots: int, chunk_rows: int, attrs: dict,
               checksums: bool = False) -> dict:
    from .. import __version__

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


def check_meta(path: str, meta: dict) -> dict:
    version = meta.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        from .. import __version__

        raise FormatVersionError(
            f"{path} has format_version {version}, this expstore {__version__} reads up to "
            f"{FORMAT_VERSION}; upgrade expstore (pip install -U expstore)"
        )
    missing = [key for key in _REQUIRED if key not in meta]
    if missing or not isinstance(version, int):
        raise CorruptStoreError(f"{path}: the pool metadata lacks {missing or ['format_version']}; the pool is damaged")
    ints = (meta["capacity"], meta["slots"], meta["chunk_rows"])
    if not all(isinstance(n, int) and n > 0 for n in ints) or meta["slots"] < meta["capacity"] \
            or meta["slots"] % meta["chunk_rows"]:
        raise CorruptStoreError(f"{path}: capacity/slots/chunk_rows {ints} are inconsistent; the pool is damaged")
    try:
        Schema.from_json(meta["schema"])
    except (SchemaError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptStoreError(f"{path}: the stored schema is invalid ({exc}); the pool is damaged") from None
    return meta
