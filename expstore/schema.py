"""Field and Schema: what a pool stores per transition, and their JSON form on disk."""

from __future__ import annotations

import keyword
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike

from .errors import SchemaError

# Fixed-size numeric types only: rows are written in place through memory maps,
# so every row of a field must have the same byte size and a raw, portable layout.
SUPPORTED_DTYPES = tuple(
    np.dtype(name)
    for name in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64",
    )
)
RESERVED_NAMES = frozenset({"step_id"})


def _normalise_dtype(dtype: DTypeLike, where: str) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError as exc:
        raise SchemaError(f"{where}: {dtype!r} is not a numpy dtype ({exc})") from None
    resolved = resolved.newbyteorder("<") if resolved.byteorder == ">" else resolved
    if resolved not in SUPPORTED_DTYPES:
        names = ", ".join(str(d) for d in SUPPORTED_DTYPES)
        raise SchemaError(f"{where}: dtype {resolved} is not supported; use one of {names}")
    return np.dtype(resolved.name)


@dataclass(frozen=True)
class Field:
    """One named column of a pool: the shape of a single row and its dtype.

    Args:
        shape: the shape of one row, ``()`` for a scalar such as a reward.
        dtype: any fixed-size numeric numpy dtype or its name (``"float32"``).
    """

    shape: tuple[int, ...]
    dtype: np.dtype

    def __init__(self, shape: int | tuple[int, ...] | list[int], dtype: DTypeLike):
        shape_tuple = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        if not all(isinstance(n, (int, np.integer)) and n >= 1 for n in shape_tuple):
            raise SchemaError(f"field shape {shape!r} must be a tuple of positive ints (() for a scalar)")
        object.__setattr__(self, "shape", tuple(int(n) for n in shape_tuple))
        object.__setattr__(self, "dtype", _normalise_dtype(dtype, "field dtype"))

    @property
    def row_nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # exact: an int64 product could wrap

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype.name}

    @classmethod
    def from_json(cls, obj: Mapping) -> Field:
        return cls(tuple(obj["shape"]), obj["dtype"])


def check_field_name(name: object) -> str:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise SchemaError(f"field name {name!r} is not a Python identifier; use names like 'obs'")
    if name in RESERVED_NAMES or name.startswith("_"):
        raise SchemaError(
            f"field name {name!r} is reserved (step_id and names starting with '_' are "
            "expstore's own); rename the field"
        )
    return name


class Schema(Mapping[str, Field]):
    """An ordered, immutable mapping of field name -> Field."""

    def __init__(self, fields: Mapping[str, object]):
        if not isinstance(fields, Mapping) or not fields:
            raise SchemaError("a schema is a non-empty mapping of field name -> Field(shape, dtype)")
        self._fields: dict[str, Field] = {}
        for name, spec in fields.items():
            self._fields[check_field_name(name)] = _as_field(name, spec)

    def __getitem__(self, name: str) -> Field:
        return self._fields[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            try:
                return self._fields == Schema(other)._fields
            except SchemaError:
                return False
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}: {f.shape} {f.dtype}" for n, f in self._fields.items())
        return f"Schema({inner})"

    @property
    def row_nbytes(self) -> int:
        return sum(f.row_nbytes for f in self._fields.values())

    def to_json(self) -> dict:
        return {name: field.to_json() for name, field in self._fields.items()}

    @classmethod
    def from_json(cls, obj: Mapping) -> Schema:
        return cls({name: Field.from_json(spec) for name, spec in obj.items()})


def _as_field(name: str, spec: object) -> Field:
    if isinstance(spec, Field):
        return spec
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        try:
            return Field(spec[0], spec[1])
        except SchemaError as exc:
            raise SchemaError(f"field {name!r}: {exc}") from None
    raise SchemaError(
        f"field {name!r}: {spec!r} is not a Field; write expstore.Field(shape, dtype) "
        "or a (shape, dtype) tuple such as ((3,), 'float32')"
    )
