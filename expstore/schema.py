"""Field and Schema: what a pool stores per transition, and their JSON form on disk."""

from __future__ import annotations

import keyword
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import numpy as np
from numpy.typing import DTypeLike

from .codecs import normalise_codec
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
# A heap field's own array holds, per slot, where its row's bytes lie in the heap (core/heap.py):
# the row's heap position (its byte offset is position % heap size), its stored bytes, its
# length along the leading dimension (1 for a fixed-shape field) and the crc32 of its bytes.
HEAP_INDEX_COLUMNS = ("position", "nbytes", "length", "crc32")
HEAP_INDEX_DTYPE = np.dtype("int64")
# What a ragged field's raw row size is taken to be where a size is needed before any row exists:
# the default heap holds ``capacity`` rows of this many elements.
DEFAULT_RAGGED_LENGTH = 64


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
        shape: the shape of one row, ``()`` for a scalar such as a reward. ``None`` as the
            leading dimension makes the field ragged: each row has its own length along it
            (``(None,)`` for token ids, ``(None, 3)`` for a point cloud).
        dtype: any fixed-size numeric numpy dtype or its name (``"float32"``).
        image: whether the field holds pictures, so that the CLI, plots and videos show it as such.
            ``None`` (the default) detects it: uint8 fields shaped (H, W), (H, W, C) or (C, H, W)
            with 1, 3 or 4 channels are images. ``False`` says it is not; ``True`` requires the
            detected layout; ``"HW"``, ``"HWC"`` or ``"CHW"`` names it and checks the shape fits.
        codec: compress each row on its own: ``"zstd"`` (level 3), ``"zstd:N"``, ``"zstd:N+dict"``
            (with a zstd dictionary the pool trains on the field's first 2,000 rows and keeps:
            core/heap_dictionary.py), ``"lz4"``, or ``None``/``"raw"`` for none (see
            expstore.codecs). A field with a codec, and every ragged field, keeps its rows in a
            byte heap (see ``heap_bytes``); sampling returns them as plain arrays.
        heap_bytes: the size of this field's heap, for a ragged field or one with a codec;
            default the ``heap_bytes`` given to ``expstore.open``, else ``capacity`` raw rows
            (a ragged row counted as 64 elements). A creation setting: not part of the
            schema's equality, and the pool records the size it got.
    """

    shape: tuple[int, ...]  # a ragged field's leading entry is None (see ``ragged``)
    dtype: np.dtype
    image_layout: str | None
    codec: str | None = None
    heap_bytes: int | None = dataclass_field(default=None, compare=False)

    def __init__(self, shape: int | tuple[int | None, ...] | list[int | None], dtype: DTypeLike,
                 image: bool | str | None = None, codec: str | None = None, heap_bytes: int | None = None):
        shape_tuple = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        ragged = bool(shape_tuple) and shape_tuple[0] is None
        fixed = shape_tuple[1:] if ragged else shape_tuple
        if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in fixed):
            raise SchemaError(f"field shape {shape!r} must be a tuple of positive ints (() for a scalar); only "
                              "the leading dimension may be None, for a ragged field: (None,) or (None, 3)")
        sizes: list[int | None] = [None] if ragged else []
        sizes += [int(n) for n in fixed if n is not None]
        object.__setattr__(self, "shape", tuple(sizes))
        object.__setattr__(self, "dtype", _normalise_dtype(dtype, "field dtype"))
        object.__setattr__(self, "image_layout", None if ragged and image is None else self._image_layout(image))
        object.__setattr__(self, "codec", normalise_codec(codec))
        object.__setattr__(self, "heap_bytes", _check_heap_bytes(heap_bytes))
        if heap_bytes is not None and not self.uses_heap:
            raise SchemaError(f"heap_bytes={heap_bytes} is for a ragged field or one with a codec; a field of "
                              f"shape {self.shape} without a codec stores its rows in place")

    def _image_layout(self, image: bool | str | None) -> str | None:
        if self.ragged:
            raise SchemaError(f"a ragged field (shape {self.shape}) cannot be an image; image fields have a "
                              "fixed shape")
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
    def ragged(self) -> bool:
        """Whether each row has its own length along the leading dimension."""
        return bool(self.shape) and self.shape[0] is None

    @property
    def uses_heap(self) -> bool:
        """Whether the rows live in a byte heap (ragged, or compressed) rather than in place."""
        return self.ragged or self.codec is not None

    @property
    def item_shape(self) -> tuple[int, ...]:
        """The shape of one element along a ragged field's leading dimension; a fixed field's row shape."""
        return self.shape[1:] if self.ragged else self.shape

    @property
    def item_nbytes(self) -> int:
        return math.prod(self.item_shape) * self.dtype.itemsize

    @property
    def row_nbytes(self) -> int:
        """Bytes of one row raw (exact: an int64 product could wrap); a ragged row counted as
        ``DEFAULT_RAGGED_LENGTH`` elements."""
        return self.item_nbytes * (DEFAULT_RAGGED_LENGTH if self.ragged else 1)

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """The row shape of the field's own array: the row itself, or a heap field's index entry."""
        return (len(HEAP_INDEX_COLUMNS),) if self.uses_heap else self.shape

    @property
    def stored_dtype(self) -> np.dtype:
        return HEAP_INDEX_DTYPE if self.uses_heap else self.dtype

    @property
    def stored_row_nbytes(self) -> int:
        return math.prod(self.stored_shape) * self.stored_dtype.itemsize

    def to_json(self) -> dict:
        spec: dict = {"shape": list(self.shape), "dtype": self.dtype.name}
        # Only a choice that detection would not make is written, so the schema of every pool
        # whose images are detected stays as earlier versions wrote it.
        if not self.ragged and self.image_layout != detect_image_layout(self.shape, self.dtype):
            spec["image"] = self.image_layout or False
        if self.codec is not None:
            spec["codec"] = self.codec
        return spec

    @classmethod
    def from_json(cls, obj: Mapping) -> Field:
        return cls(tuple(obj["shape"]), obj["dtype"], image=obj.get("image"), codec=obj.get("codec"))


def _check_heap_bytes(heap_bytes: object) -> int | None:
    if heap_bytes is None:
        return None
    if not isinstance(heap_bytes, (int, np.integer)) or isinstance(heap_bytes, bool) or heap_bytes < 1:
        raise SchemaError(f"heap_bytes={heap_bytes!r} must be a positive int (bytes), e.g. heap_bytes=8 << 30")
    return int(heap_bytes)


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
        for name, spec in self._fields.items():
            if spec.ragged and f"{name}_length" in self._fields:
                raise SchemaError(f"field {name!r} is ragged, so batches carry its row lengths as "
                                  f"'{name}_length', which is also a field of the schema; rename one of them")

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

    def heap_fields(self) -> list[str]:
        """The fields whose rows live in a byte heap (ragged, or with a codec), in schema order."""
        return [name for name, spec in self._fields.items() if spec.uses_heap]

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
