"""What convert changes about heap fields: codecs (``--codec obs=zstd:3``, ``obs=raw``) and heap sizes.

A copy's schema is its source's with the codecs asked for; a field given ``raw`` loses its
codec (a fixed-shape field is then stored in place again; a ragged one stays in a heap,
uncompressed). Heap sizes default to the source's for heap fields whose codec and capacity stay
as they were; otherwise each heap is sized for the copy's ``capacity + slack`` rows at the bytes
the sources' rows take, so that the rows copied are never evicted by a heap too small for them
(``expstore.open``'s default counts a ragged row as 64 elements, far too few for long rows).
A ``zstd:N+dict`` field whose codec stays keeps its source's dictionary. Rows are written as
``extend`` takes them: ragged fields as lists of arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..backends.internal import planned_heap_nbytes
from ..codecs.registry import uses_dictionary
from ..core.heap import length_key
from ..core.heap_dictionary import stored_dictionaries
from ..errors import InvalidArgumentError
from ..inspect.streaming import pool_store
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


# A copy's heap is sized with room beyond the rows' bytes: a full heap evicts a sixteenth more
# than it needs (core/heap.py), a row never wraps past the heap's end, and newer rows may be larger.
_HEAP_MARGIN = 1.25
# Bytes a codec may add to a row it cannot shrink (a frame header), as expstore.open counts them.
_CODEC_OVERHEAD_NBYTES = 32


def default_heap_bytes(sources: Sequence, copy: Schema, capacity: int, slack: int, heap_bytes: Any) -> Any:
    """The ``heap_bytes`` to create the copy with.

    A total (an int) stays as given. Otherwise each heap field takes its size from the dict
    ``heap_bytes`` where it is named there; else one source copied with the field's codec and
    the capacity unchanged gives its own size; else the heap is sized for ``capacity + slack``
    rows as large as the sources' rows (their stored bytes where the codec stays, their raw
    bytes where it changes). A field no source holds rows of gets ``expstore.open``'s default.
    """
    if not copy.heap_fields() or (heap_bytes is not None and not isinstance(heap_bytes, Mapping)):
        return heap_bytes
    sizes = dict(heap_bytes or {})
    for name in copy.heap_fields():
        if name not in sizes:
            size = _source_size(sources, copy, name, capacity) or _size_for_rows(sources, copy, name,
                                                                                 capacity + slack)
            if size:
                sizes[name] = size
    return sizes or None


def _source_size(sources: Sequence, copy: Schema, name: str, capacity: int) -> int | None:
    """The heap size of the one source's field ``name``, where neither its codec nor the capacity changes."""
    if len(sources) != 1:
        return None
    meta = getattr(sources[0], "meta", None) or {}
    if meta.get("capacity") != capacity or not _same_coding(sources[0].schema, copy, name):
        return None
    return planned_heap_nbytes(meta.get("internal", {})).get(name)


def _size_for_rows(sources: Sequence, copy: Schema, name: str, rows: int) -> int | None:
    """Heap bytes for ``rows`` rows of field ``name`` as large as the sources' rows, with a margin."""
    nbytes = counted = largest = 0
    field = copy[name]
    for source in sources:
        store = pool_store(source)
        usage = {} if store is None else store.heap_usage().get(name)
        if not usage or not usage["rows"]:
            continue
        same = _same_coding(source.schema, copy, name)
        overhead = 0 if same or field.codec is None else _CODEC_OVERHEAD_NBYTES
        nbytes += (usage["stored_nbytes"] if same else usage["raw_nbytes"]) + overhead * usage["rows"]
        counted += usage["rows"]
        largest = max(largest, usage["max_length"] * field.item_nbytes + overhead)
    if not counted:
        return None
    return int(nbytes / counted * rows * _HEAP_MARGIN) + 2 * largest


def _same_coding(source: Schema, copy: Schema, name: str) -> bool:
    return name in source and source[name].codec == copy[name].codec and source[name].ragged == copy[name].ragged


def source_dictionaries(source, copy: Schema) -> dict[str, bytes]:
    """The trained zstd dictionaries of ``source`` for the copy's ``+dict`` fields whose codec stays:
    the copy compresses with them from its first row, as the source's later rows were."""
    store = pool_store(source)
    if store is None or store.mapped is None:
        return {}
    kept = [name for name in copy.heap_fields()
            if uses_dictionary(copy[name].codec) and _same_coding(source.schema, copy, name)]
    return stored_dictionaries(store, kept)


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


def parse_assignments(values: tuple[str, ...], what: str, example: str) -> dict[str, str]:
    """``("obs=zstd:3", ...)`` -> ``{"obs": "zstd:3"}``, for the CLI's repeated options
    (``what``: the option, ``example``: a value of it to show in the error)."""
    parsed: dict[str, str] = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name or not setting:
            raise InvalidArgumentError(f"{what} {value!r} must be NAME=VALUE, e.g. {what} {example}")
        if name in parsed:
            raise InvalidArgumentError(f"{what} names field {name!r} twice ({parsed[name]} and {setting}); "
                                       "give each field once")
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
