"""What convert changes about heap fields: codecs (``--codec obs=zstd:3``, ``obs=raw``) and heap sizes.

A copy's schema is its source's with the codecs asked for; a field given ``raw`` loses its
codec (a fixed-shape field is then stored in place again; a ragged one stays in a heap,
uncompressed). Heap sizes default to the source's for heap fields whose codec and capacity stay
as they were, and otherwise to ``expstore.open``'s default (``capacity + slack`` raw rows);
rows are then written as ``extend`` takes them: ragged fields as lists of arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..backends.internal import planned_heap_nbytes
from ..core.heap import length_key
from ..errors import InvalidArgumentError
from ..schema import Field, Schema


def recoded_schema(schema: Schema, codecs: Mapping[str, str | None] | None) -> Schema:
    """``schema`` with the fields of ``codecs`` given those codecs (None or "raw": none)."""
    if not codecs:
        return schema
    unknown = sorted(set(codecs) - set(schema))
    if unknown:
        raise InvalidArgumentError(f"--codec names {unknown}, which the pool does not store; its fields are "
                                   f"{list(schema)}")
    fields = {}
    for name, field in schema.items():
        if name in codecs:
            image: bool | str | None = field.image_layout or (None if field.ragged else False)
            field = Field(field.shape, field.dtype, image=image, codec=codecs[name])
        fields[name] = field
    return Schema(fields)


def default_heap_bytes(source_meta: dict, source: Schema, copy: Schema, capacity: int,
                       heap_bytes: Any) -> Any:
    """The ``heap_bytes`` to create the copy with: as given, else the source's heap sizes for
    the heap fields whose codec and capacity do not change."""
    if heap_bytes is not None or not copy.heap_fields():
        return heap_bytes
    sizes = planned_heap_nbytes(source_meta.get("internal", {}))
    if source_meta.get("capacity") != capacity:
        return None
    kept = {name: sizes[name] for name in copy.heap_fields()
            if name in sizes and name in source and source[name].codec == copy[name].codec
            and source[name].ragged == copy[name].ragged}
    return kept or None


def as_extend_batch(batch: dict[str, Any], schema: Schema) -> dict[str, Any]:
    """Rows read from a pool (ragged fields padded, with ``<name>_length``) as ``extend`` takes
    them: ragged fields as lists of arrays, and only the schema's fields."""
    out = {}
    for name, field in schema.items():
        values = batch[name]
        if field.ragged:
            lengths = np.asarray(batch[length_key(name)])
            values = [np.asarray(values[row])[:int(n)] for row, n in enumerate(lengths)]
        out[name] = values
    return out


def parse_assignments(values: tuple[str, ...], what: str) -> dict[str, str]:
    """``("obs=zstd:3", ...)`` -> ``{"obs": "zstd:3"}``, for the CLI's repeated options."""
    parsed = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name or not setting:
            raise InvalidArgumentError(f"{what} {value!r} must be NAME=VALUE, e.g. obs=zstd:3")
        parsed[name] = setting
    return parsed


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_nbytes(text: str) -> int:
    """``"8G"`` -> 8 << 30; plain ints as they are."""
    number, unit = text.strip().rstrip("bB").lower(), ""
    if number and number[-1] in _UNITS:
        number, unit = number[:-1], number[-1]
    try:
        value = int(float(number) * _UNITS[unit])
    except ValueError:
        raise InvalidArgumentError(f"heap size {text!r} must be a number of bytes such as 1000000, 512M or 8G") \
            from None
    if value < 1:
        raise InvalidArgumentError(f"heap size {text!r} must be positive")
    return value
