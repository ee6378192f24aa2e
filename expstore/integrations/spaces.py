"""Gymnasium spaces as flat pool fields: Box, Discrete, MultiDiscrete, MultiBinary, and
Dict/Tuple spaces flattened into named fields (``obs_<key>``, ``obs_<i>``, nested likewise)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

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
    raise SchemaError(f"{prefix}: gymnasium space {space} is not supported; use Box, Discrete, MultiDiscrete, "
                      "MultiBinary, or Dict/Tuple of them")


def flatten(prefix: str, space, value: Any) -> dict[str, Any]:
    """The values of ``space_fields(prefix, space)`` taken from one value (or a batch of them)."""
    # gymnasium is optional (the train extra): loaded only when a space is described.
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        return {name: v for key, sub in space.spaces.items()
                for name, v in flatten(f"{prefix}_{_identifier(key)}", sub, value[key]).items()}
    if isinstance(space, spaces.Tuple):
        return {name: v for i, sub in enumerate(space.spaces)
                for name, v in flatten(f"{prefix}_{i}", sub, value[i]).items()}
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)):
        return {prefix: np.asarray(value, dtype=np.int64)}
    return {prefix: np.asarray(value, dtype=space.dtype)}


def _identifier(key: Any) -> str:
    name = re.sub(r"\W", "_", str(key))
    return name if name and not name[0].isdigit() else f"k{name}"
