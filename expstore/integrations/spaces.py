"""Gymnasium spaces as flat pool fields: Box, Discrete, MultiDiscrete, MultiBinary, and
Dict/Tuple spaces flattened into named fields (``obs_<key>``, ``obs_<i>``, nested likewise).

A ``Sequence`` of one of the four plain spaces is a ragged field (``(None, *element shape)``):
each row holds its own number of elements. A vector env's batch of them is a tuple with one
sequence per sub-env; flattened, it is a list of arrays, one per row (as ``Store.extend``
takes a ragged field), so ``masked_rows`` and ``with_masked_rows_replaced`` pick and replace
the rows of a vector env's batch in either form.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..core.ragged import take_rows
from ..errors import SchemaError
from ..schema import Field


def space_fields(prefix: str, space) -> dict[str, Field]:
    """Field name -> Field for one space (one row, no batch dimension)."""
    # gymnasium is optional (the train extra): loaded only when a space is described.
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        return {name: field for key, sub in space.spaces.items()
                for name, field in space_fields(f"{prefix}_{_identifier(key)}", sub).items()}
    if isinstance(space, spaces.Tuple):
        return {name: field for i, sub in enumerate(space.spaces)
                for name, field in space_fields(f"{prefix}_{i}", sub).items()}
    if isinstance(space, spaces.Discrete):
        return {prefix: Field((), "int64")}
    if isinstance(space, spaces.MultiDiscrete):
        return {prefix: Field(space.nvec.shape, "int64")}
    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        return {prefix: Field(space.shape, space.dtype)}
    if isinstance(space, spaces.Sequence) and _is_plain(space.feature_space):
        element = space_fields(prefix, space.feature_space)[prefix]
        return {prefix: Field((None, *element.shape), element.dtype)}
    raise SchemaError(f"{prefix}: gymnasium space {space} is not supported; use Box, Discrete, MultiDiscrete, "
                      "MultiBinary, a Sequence of one of them, or Dict/Tuple of them")


def _is_plain(space) -> bool:
    # gymnasium is optional (the train extra): loaded only when a space is described.
    from gymnasium import spaces

    return isinstance(space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary))


def flatten(prefix: str, space, value: Any, batched: bool = False) -> dict[str, Any]:
    """The values of ``space_fields(prefix, space)`` taken from one value (or, ``batched``, a
    vector env's batch of them: a ragged field's rows then come as a list of arrays)."""
    # gymnasium is optional (the train extra): loaded only when a space is described.
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        return {name: v for key, sub in space.spaces.items()
                for name, v in flatten(f"{prefix}_{_identifier(key)}", sub, value[key], batched).items()}
    if isinstance(space, spaces.Tuple):
        return {name: v for i, sub in enumerate(space.spaces)
                for name, v in flatten(f"{prefix}_{i}", sub, value[i], batched).items()}
    if isinstance(space, spaces.Sequence):
        element = space_fields(prefix, space)[prefix]
        if batched:
            return {prefix: [_sequence(element, one) for one in value]}
        return {prefix: _sequence(element, value)}
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)):
        return {prefix: np.asarray(value, dtype=np.int64)}
    return {prefix: np.asarray(value, dtype=space.dtype)}


def _sequence(field: Field, value: Any) -> np.ndarray:
    # A Sequence with stack=False gives a tuple of elements: () for an empty one, which has
    # no element shape of its own.
    return np.asarray(value, dtype=field.dtype).reshape(-1, *field.item_shape)


def masked_rows(values: Any, mask: np.ndarray) -> Any:
    """The rows of a flattened batch where ``mask`` is set (a list of ragged rows stays a list)."""
    return take_rows(values if isinstance(values, list) else np.asarray(values), np.flatnonzero(np.asarray(mask, bool)))


def with_masked_rows_replaced(values: Any, mask: np.ndarray, rows: Any) -> Any:
    """A copy of ``values`` with its rows where ``mask`` is set replaced by ``rows``, one per set entry."""
    positions = np.flatnonzero(np.asarray(mask, bool))
    if isinstance(values, list):
        listed = list(values)
        for position, row in zip(positions, rows, strict=True):
            listed[position] = row
        return listed
    replaced = np.array(values)
    replaced[positions] = rows
    return replaced


def _identifier(key: Any) -> str:
    name = re.sub(r"\W", "_", str(key))
    return name if name and not name[0].isdigit() else f"k{name}"
