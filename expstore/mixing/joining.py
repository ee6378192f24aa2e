"""Batches drawn apart, joined into one: the sources of a mix, the shards of a sharded pool.

Each part is a finished batch (core/ragged.py): a ragged field comes padded to the longest row
of that part, beside its ``<name>_length`` column, or with ``ragged="list"`` as a list of
arrays. Joined, a padded field is cut or widened to the longest row of the whole batch, the new
positions holding the pad value the part was finished with, so the batch looks as one
``sample`` of all its rows would; lists are joined; every other column is concatenated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..core.heap import length_key
from ..core.ragged import PadValue, pad_for
from ..errors import SchemaError


def join_batches(parts: Sequence[Mapping[str, Any]], names: Sequence[str],
                 pad_values: Sequence[PadValue] | None = None, what: str = "parts", copy: bool = False
                 ) -> dict[str, Any]:
    """The columns ``names`` of ``parts``, one part after the other.

    Args:
        parts: finished batches, each holding every one of ``names``.
        names: the columns to join.
        pad_values: the ``pad_value`` each part was sampled with (default 0 for all).
        what: what the parts are, for the error message (``"sources"``, ``"shards"``).
        copy: copy the arrays of a single part too (several parts are always joined into new
            arrays); without it a single part's columns are returned as they are.

    Raises:
        SchemaError: a column whose parts differ in shape beyond a ragged field's row length,
            or that is a list in some parts and an array in others.
    """
    pads = list(pad_values) if pad_values is not None else [0] * len(parts)
    joined = {}
    for name in names:
        columns = [part[name] for part in parts]
        key = length_key(name)
        lengths = [part[key] for part in parts] if all(key in part for part in parts) else None
        joined[name] = _join_column(name, columns, lengths, [pad_for(pad, name) for pad in pads], what, copy)
    return joined


def _join_column(name: str, columns: list, lengths: list[np.ndarray] | None, pads: list[float], what: str,
                 copy: bool) -> Any:
    listed = [isinstance(column, list) for column in columns]
    if any(listed):
        if not all(listed):
            raise SchemaError(f"the {what}' {name!r} columns are lists in some and arrays in others (sampled "
                              "with different ragged= options)")
        return [_copied(row) if copy else row for column in columns for row in column]
    if lengths is not None and all(_is_padded(column, n) for column, n in zip(columns, lengths, strict=True)):
        axis = lengths[0].ndim  # the rows' own axis: 1 in a batch, 2 in [batch, length] windows
        longest = max((int(n.max()) for n in lengths if n.size), default=0)
        columns = [_to_width(column, axis, longest, pad) for column, pad in zip(columns, pads, strict=True)]
    shapes = {np.shape(column)[1:] for column in columns}
    if len(shapes) > 1:
        raise SchemaError(f"the {what}' {name!r} columns have different shapes {sorted(shapes)}")
    if len(columns) == 1:
        return np.array(columns[0]) if copy else columns[0]
    return np.concatenate(columns)


def _copied(row: Any) -> Any:
    """A listed row's own arrays (a sequence window's row is a list of them)."""
    return [_copied(item) for item in row] if isinstance(row, list) else np.array(row)


def _is_padded(values: Any, lengths: np.ndarray) -> bool:
    """Whether ``values`` is a ragged column padded along the axis after the shape of ``lengths``."""
    shape = np.shape(values)
    return len(shape) > lengths.ndim and shape[:lengths.ndim] == lengths.shape


def _to_width(values: np.ndarray, axis: int, width: int, pad: float) -> np.ndarray:
    if values.shape[axis] >= width:
        return values[(slice(None),) * axis + (slice(0, width),)]
    widths = [(0, 0)] * values.ndim
    widths[axis] = (0, width - values.shape[axis])
    return np.pad(values, widths, constant_values=np.asarray(pad).astype(values.dtype))


def take_rows(values: Any, rows: np.ndarray | slice) -> Any:
    """Rows of one column: an array indexed, a list (``ragged="list"``) picked row by row."""
    if not isinstance(values, list):
        return values[rows]
    if isinstance(rows, slice):
        return values[rows]
    return [values[int(row)] for row in rows]
