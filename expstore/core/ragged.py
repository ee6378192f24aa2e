"""Ragged fields in batches: padded arrays plus ``<name>_length``, or lists of arrays.

Inside the Store a ragged field's column is an array padded with zeros to the longest row
gathered, beside an int64 ``<name>_length`` column of the same leading shape, so that the
batch builders (n-step, sequence windows, the redraw loop) treat it as any other column. The
public calls finish a batch here: cut to the longest row it holds, the padding set to the
caller's ``pad_value``, or with ``ragged="list"`` one array per row.

Batches drawn apart (the sources of a mix, the shards of a sharded pool) are joined here too
(``join_batches``): a padded field is cut or widened to the longest row of the whole batch, the
new positions holding the pad value its part was finished with, so the batch looks as one
``sample`` of all its rows would; lists are joined; every other column is concatenated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, SchemaError
from .heap import length_key

RAGGED_MODES = ("pad", "list")
# One number for every ragged field, or one per field: token ids padded with -1 beside a bool
# mask padded with False. A derived next_<obs> pads as its observation unless named itself.
PadValue = float | Mapping[str, float]


def check_ragged(ragged: object, pad_value: object, dtypes: Mapping[str, np.dtype] | None = None) -> None:
    """Refuse a bad ``ragged`` mode or ``pad_value``; with the ragged fields' ``dtypes``, also a
    pad value that their dtype cannot hold (-1 for uint8 token ids would silently become 255)."""
    if ragged not in RAGGED_MODES:
        raise InvalidArgumentError(f"ragged={ragged!r} must be 'pad' (arrays padded to the longest row, with "
                                   "'<name>_length') or 'list' (one array per row)")
    values = dict(pad_value) if isinstance(pad_value, Mapping) else None
    for name, value in (values or {"": pad_value}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            label = f"pad_value[{name!r}]" if values is not None else "pad_value"
            raise InvalidArgumentError(f"{label}={value!r} must be a number (what padded positions hold)")
    if dtypes is None:
        return
    if values is not None:
        unknown = sorted(set(values) - set(dtypes))
        if unknown:
            raise InvalidArgumentError(f"pad_value names {unknown}, which are not ragged fields of this pool; "
                                       f"its ragged fields are {sorted(dtypes) or 'none'}")
    for name, dtype in dtypes.items():
        value = pad_for(pad_value, name)  # type: ignore[arg-type]
        if not _holds(dtype, value):
            raise InvalidArgumentError(f"pad_value {value!r} does not fit ragged field {name!r} ({dtype}); pass a "
                                       f"value its dtype holds, or one per field (pad_value={{{name!r}: 0, ...}})")


def pad_for(pad_value: PadValue, name: str) -> float:
    """The pad value of the ragged column ``name``."""
    if not isinstance(pad_value, Mapping):
        return pad_value
    if name in pad_value:
        return pad_value[name]
    return pad_value.get(name[len("next_"):], 0) if name.startswith("next_") else 0


def _holds(dtype: np.dtype, value: float) -> bool:
    """Whether ``dtype`` stores ``value`` exactly (NaN only in floats, whole numbers in range in integers)."""
    if dtype.kind == "b":
        return value in (0, 1)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return bool(np.isfinite(value)) and float(value).is_integer() and info.min <= value <= info.max
    if dtype.kind in "fc":
        return bool(np.isnan(value)) or bool(np.isinf(value)) or abs(value) <= np.finfo(dtype).max
    return value == 0


def merge_rows(batch: dict[str, np.ndarray], rows: np.ndarray, new_batch: dict[str, np.ndarray],
               usable: np.ndarray) -> None:
    """``batch[name][rows] = new_batch[name][usable]`` for every column; a ragged column that is
    narrower than the rows replacing it is widened first."""
    for name, values in new_batch.items():
        target = batch[name]
        incoming = values[usable]
        lengths = batch.get(length_key(name))
        if lengths is not None and incoming.shape[1:] != target.shape[1:]:
            axis = lengths.ndim  # the rows' own axis: 1 in a batch, 2 in [batch, length] windows
            width = max(target.shape[axis], incoming.shape[axis])
            target = batch[name] = _widen(target, axis, width)
            incoming = _widen(incoming, axis, width)
        target[rows] = incoming


def put_rows(values: np.ndarray, lengths: np.ndarray, positions: np.ndarray, rows: Sequence[np.ndarray]
             ) -> np.ndarray:
    """Rows of their own lengths into a ragged column at ``positions`` (zeros past each row's end,
    ``lengths`` set); returns the column, widened first when a row is longer than it is wide."""
    values = _widen(values, 1, max((len(row) for row in rows), default=0))
    for position, row in zip(positions.tolist(), rows, strict=True):
        values[position, :len(row)] = row
        values[position, len(row):] = 0
        lengths[position] = len(row)
    return values


def _widen(values: np.ndarray, axis: int, width: int, pad: float = 0) -> np.ndarray:
    """``values`` padded with ``pad`` along ``axis`` to ``width`` (as they are when that wide)."""
    if values.shape[axis] >= width:
        return values
    widths = [(0, 0)] * values.ndim
    widths[axis] = (0, width - values.shape[axis])
    return np.pad(values, widths, constant_values=np.asarray(pad).astype(values.dtype))


def _cut(values: np.ndarray, axis: int, width: int) -> np.ndarray:
    """``values`` cut to at most ``width`` along ``axis``."""
    return values[(slice(None),) * axis + (slice(0, width),)]


def finish(batch: dict[str, Any], ragged_names: Sequence[str], ragged: str = "pad",
           pad_value: PadValue = 0) -> dict[str, Any]:
    """The batch as a caller gets it (see the module docstring); ``batch`` may be changed."""
    for name in ragged_names:
        if name not in batch:
            continue
        values, lengths = batch[name], batch[length_key(name)]
        lead = lengths.ndim  # 1 for a plain batch, 2 for [batch, length] windows
        longest = int(lengths.max()) if lengths.size else 0
        values = _cut(values, lead, longest)
        if ragged == "list":
            batch[name] = _as_lists(values, lengths)
            continue
        pad = pad_for(pad_value, name)
        if pad != 0:
            values = values.copy()
            padding = np.arange(longest) >= lengths[..., None]
            values[padding] = pad
        batch[name] = values
    return batch


def _as_lists(values: np.ndarray, lengths: np.ndarray) -> list:
    if lengths.ndim == 1:
        return [values[row, :int(n)] for row, n in enumerate(lengths)]
    return [_as_lists(values[row], lengths[row]) for row in range(len(lengths))]


def join_batches(parts: Sequence[Mapping[str, Any]], names: Sequence[str],
                 pad_values: Sequence[PadValue] | None = None, what: str = "parts", copy: bool = False
                 ) -> dict[str, Any]:
    """The columns ``names`` of finished batches ``parts``, one part after the other (see the
    module docstring).

    Args:
        parts: finished batches, each holding every one of ``names``.
        names: the columns to join.
        pad_values: the ``pad_value`` each part was finished with (default 0 for all).
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
        columns = [_widen(_cut(column, axis, longest), axis, longest, pad)
                   for column, pad in zip(columns, pads, strict=True)]
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


def take_rows(values: Any, rows: np.ndarray | slice) -> Any:
    """Rows of one column of a finished batch at indices ``rows``: an array indexed, a list
    (``ragged="list"``) picked row by row."""
    if not isinstance(values, list):
        return values[rows]
    if isinstance(rows, slice):
        return values[rows]
    return [values[int(row)] for row in rows]
