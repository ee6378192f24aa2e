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


# Image layouts a field can have: HxW grayscale, HxWxC channels-last, CxHxW channels-first.
IMAGE_LAYOUTS = ("HW", "HWC", "CHW")
_CHANNEL_COUNTS = (1, 3, 4)
_MIN_IMAGE_SIDE = 8  # below this a uint8 matrix is more likely a small table than a picture


def detect_image_layout(shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    """The layout a uint8 field of this shape has when it holds pictures, or None.

    (84, 84) is "HW"; (84, 84, 3) is "HWC"; (3, 84, 84) is "CHW". No shape is both: a channel
    count is below the smallest side an image has.
    """
    if dtype != np.uint8:
        return None
    if len(shape) == 2 and min(shape) >= _MIN_IMAGE_SIDE:
        return "HW"
    if len(shape) == 3:
        if shape[2] in _CHANNEL_COUNTS and min(shape[:2]) >= _MIN_IMAGE_SIDE:
            return "HWC"
        if shape[0] in _CHANNEL_COUNTS and min(shape[1:]) >= _MIN_IMAGE_SIDE:
            return "CHW"
    return None


def _check_image_layout(layout: str, shape: tuple[int, ...], dtype: np.dtype) -> str:
    if layout not in IMAGE_LAYOUTS:
        raise SchemaError(f"image layout {layout!r} is not one of {', '.join(IMAGE_LAYOUTS)}")
    if dtype != np.uint8 or len(shape) != len(layout):
        raise SchemaError(
            f"a field of shape {shape} and dtype {dtype} cannot hold {layout} images; image fields are uint8 "
            f"with {len(layout)} dimensions ({', '.join(IMAGE_LAYOUTS)})"
        )
    if layout != "HW" and shape[layout.index("C")] not in _CHANNEL_COUNTS:
        raise SchemaError(f"a {layout} image field has 1, 3 or 4 channels, not {shape[layout.index('C')]}")
    return layout


@dataclass(frozen=True)
class Field:
    """One named column of a pool: the shape of a single row and its dtype.

    Args:
        shape: the shape of one row, ``()`` for a scalar such as a reward.
        dtype: any fixed-size numeric numpy dtype or its name (``"float32"``).
        image: whether the field holds pictures, so that the CLI, plots and videos show it as such.
            ``None`` (the default) detects it: uint8 fields shaped (H, W), (H, W, C) or (C, H, W)
            with 1, 3 or 4 channels are images. ``False`` says it is not; ``True`` requires the
            detected layout; ``"HW"``, ``"HWC"`` or ``"CHW"`` names it and checks the shape fits.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    image_layout: str | None

    def __init__(self, shape: int | tuple[int, ...] | list[int], dtype: DTypeLike,
                 image: bool | str | None = None):
        shape_tuple = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        if not all(isinstance(n, (int, np.integer)) and n >= 1 for n in shape_tuple):
            raise SchemaError(f"field shape {shape!r} must be a tuple of positive ints (() for a scalar)")
        object.__setattr__(self, "shape", tuple(int(n) for n in shape_tuple))
        object.__setattr__(self, "dtype", _normalise_dtype(dtype, "field dtype"))
        object.__setattr__(self, "image_layout", self._image_layout(image))

    def _image_layout(self, image: bool | str | None) -> str | None:
        detected = detect_image_layout(self.shape, self.dtype)
        if image is None or image is False:
            return detected if image is None else None
        if image is True:
            if detected is None:
                raise SchemaError(
                    f"a field of shape {self.shape} and dtype {self.dtype} is not an image; image fields are "
                    "uint8 (H, W), (H, W, C) or (C, H, W) with 1, 3 or 4 channels, or name the layout: image='HWC'"
                )
            return detected
        if isinstance(image, str):
            return _check_image_layout(image, self.shape, self.dtype)
        raise SchemaError(f"image={image!r} must be None, True, False or one of {', '.join(IMAGE_LAYOUTS)}")

    @property
    def is_image(self) -> bool:
        return self.image_layout is not None

    @property
    def row_nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # exact: an int64 product could wrap

    def to_json(self) -> dict:
        spec: dict = {"shape": list(self.shape), "dtype": self.dtype.name}
        # Only a choice that detection would not make is written, so the schema of every pool
        # whose images are detected stays as earlier versions wrote it.
        if self.image_layout != detect_image_layout(self.shape, self.dtype):
            spec["image"] = self.image_layout or False
        return spec

    @classmethod
    def from_json(cls, obj: Mapping) -> Field:
        return cls(tuple(obj["shape"]), obj["dtype"], image=obj.get("image"))


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
