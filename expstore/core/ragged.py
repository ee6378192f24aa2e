"""Ragged fields in batches: padded arrays plus ``<name>_length``, or lists of arrays.

Inside the Store a ragged field's column is an array padded with zeros to the longest row
gathered, beside an int64 ``<name>_length`` column of the same leading shape, so that the
batch builders (n-step, sequence windows, the redraw loop) treat it as any other column. The
public calls finish a batch here: cut to the longest row it holds, the padding set to the
caller's ``pad_value``, or with ``ragged="list"`` one array per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from .heap import length_key

RAGGED_MODES = ("pad", "list")


def check_ragged(ragged: object, pad_value: object) -> None:
    if ragged not in RAGGED_MODES:
        raise InvalidArgumentError(f"ragged={ragged!r} must be 'pad' (arrays padded to the longest row, with "
                                   "'<name>_length') or 'list' (one array per row)")
    if isinstance(pad_value, bool) or not isinstance(pad_value, (int, float, np.number)):
        raise InvalidArgumentError(f"pad_value={pad_value!r} must be a number (what padded positions hold)")


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


def _widen(values: np.ndarray, axis: int, width: int) -> np.ndarray:
    if values.shape[axis] >= width:
        return values
    pad = [(0, 0)] * values.ndim
    pad[axis] = (0, width - values.shape[axis])
    return np.pad(values, pad)


def finish(batch: dict[str, Any], ragged_names: Sequence[str], ragged: str = "pad",
           pad_value: float = 0) -> dict[str, Any]:
    """The batch as a caller gets it (see the module docstring); ``batch`` may be changed."""
    for name in ragged_names:
        if name not in batch:
            continue
        values, lengths = batch[name], batch[length_key(name)]
        lead = lengths.ndim  # 1 for a plain batch, 2 for [batch, length] windows
        longest = int(lengths.max()) if lengths.size else 0
        values = values[(slice(None),) * lead + (slice(0, longest),)]
        if ragged == "list":
            batch[name] = _as_lists(values, lengths)
            continue
        if pad_value != 0:
            values = values.copy()
            padding = np.arange(longest) >= lengths[..., None]
            values[padding] = pad_value
        batch[name] = values
    return batch


def _as_lists(values: np.ndarray, lengths: np.ndarray) -> list:
    if lengths.ndim == 1:
        return [values[row, :int(n)] for row, n in enumerate(lengths)]
    return [_as_lists(values[row], lengths[row]) for row in range(len(lengths))]
