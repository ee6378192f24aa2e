"""Pool fields as Arrow columns and back, bit for bit, for the Arrow-based formats (Parquet,
LeRobot's data files, Minari's Arrow storage).

A field of row shape ``()`` is a plain column; a field of shape ``(d0, d1, ...)`` is a nested
``fixed_size_list`` (d0 lists of d1 lists of ...), the type Hugging Face ``datasets`` reads as
``Sequence(length=...)`` and pandas as arrays. A ragged field (shape ``(None, d1, ...)``, rows of
their own length) is a variable-length ``list`` of those: ``Sequence()`` to ``datasets``. Converting
either way works on the flat values buffer, so it costs one copy, never a Python loop over rows
(a ragged column read back is split into one view per row, as ``Store.extend`` takes it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SchemaError
from ..schema import SUPPORTED_DTYPES, Field


def pyarrow(extra: str = "parquet") -> Any:
    """The pyarrow module, or ImportError with the command that installs it."""
    try:
        import pyarrow as pa  # the optional dependency of the Arrow-based formats
    except ImportError as exc:
        raise ImportError(f"this format needs pyarrow: pip install 'expstore[{extra}]' (or pip install pyarrow)") \
            from exc
    return pa


def arrow_type(field: Field):
    """The Arrow type that holds rows of ``field``."""
    pa = pyarrow()
    element = pa.from_numpy_dtype(field.dtype)
    for size in reversed(field.item_shape):
        element = pa.list_(element, size)
    return pa.list_(element) if field.ragged else element


def to_arrow(values: np.ndarray, lengths: np.ndarray | None = None):
    """``values`` (rows of a field: a leading row axis, then the row shape) as an Arrow array.

    ``lengths``: for a ragged field, each row's length; ``values`` is then padded along axis 1
    (as a pool reads it, with ``<name>_length``) and only each row's first ``length`` elements
    are kept, in a variable-length list.
    """
    pa = pyarrow()
    values = np.ascontiguousarray(values)
    if lengths is not None:
        lengths = np.asarray(lengths, np.int64)
        kept = np.arange(values.shape[1]) < lengths[:, None]  # the elements that are not padding
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        if offsets[-1] > np.iinfo(np.int32).max:
            raise SchemaError(f"a slice of {len(lengths)} ragged rows holds {offsets[-1]} elements, more than an "
                              "Arrow list column's 32-bit offsets hold")
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), to_arrow(values[kept]))
    array = pa.array(values.reshape(-1))
    for size in reversed(values.shape[1:]):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    return array


def from_arrow(column, field: Field, where: str) -> Any:
    """The rows of an Arrow column (Array or ChunkedArray) as an array of ``field``'s shape and dtype
    (a ragged field: a list of one array per row, views of one buffer).

    Fixed-size lists, and variable-length lists whose every row has the field's length (what
    ``datasets`` and pandas write for vectors), both hold a field of that shape.

    Raises:
        SchemaError: the column's type does not hold that field, or it has missing values.
    """
    pa = pyarrow()
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    rows = len(column)
    if column.null_count:
        raise SchemaError(f"{where} has {column.null_count} missing values; every row needs one")
    if field.ragged:
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
            raise _mismatch(where, column, field, 0)
        lengths = column.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
        flat = from_arrow(column.flatten(), Field(field.item_shape, field.dtype), where)
        return np.split(flat, np.cumsum(lengths)[:-1]) if rows else []
    for depth, size in enumerate(field.shape):
        if not _is_list(pa, column.type) or not _has_length(pa, column, size):
            raise _mismatch(where, column, field, depth)
        column = column.flatten()  # the child values of this slice of the list array
        if column.null_count:
            raise SchemaError(f"{where} has missing values inside its lists; every element needs one")
    if _is_list(pa, column.type) or _numpy_dtype(column.type) != field.dtype:
        raise _mismatch(where, column, field, len(field.shape))
    flat = column.to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=field.dtype).reshape(rows, *field.shape)


def _is_list(pa, type_) -> bool:
    return pa.types.is_fixed_size_list(type_) or pa.types.is_list(type_) or pa.types.is_large_list(type_)


def _has_length(pa, column, size: int) -> bool:
    if pa.types.is_fixed_size_list(column.type):
        return column.type.list_size == size
    lengths = column.value_lengths().to_numpy(zero_copy_only=False)
    return bool((lengths == size).all())


def _mismatch(where: str, column, field: Field, depth: int) -> SchemaError:
    level = "" if depth == 0 else f" at list level {depth}"
    return SchemaError(f"{where} holds {column.type}{level}, expected rows of {field.dtype} with shape {field.shape} "
                       f"({arrow_type(field)}); the file does not match its schema")


def _numpy_dtype(type_) -> np.dtype | None:
    try:
        return np.dtype(type_.to_pandas_dtype())
    except (NotImplementedError, TypeError):
        return None


def field_of_type(arrow_type_) -> Field | None:
    """The pool field an Arrow column type can be (numbers and bools, in fixed-size lists), else None."""
    pa = pyarrow()
    shape: list[int] = []
    while pa.types.is_fixed_size_list(arrow_type_):
        shape.append(arrow_type_.list_size)
        arrow_type_ = arrow_type_.value_type
    dtype = _numpy_dtype(arrow_type_)
    if dtype is None or dtype not in SUPPORTED_DTYPES:
        return None
    return Field(tuple(shape), dtype)


def list_levels(arrow_type_) -> int | None:
    """How many levels of variable-length lists hold numbers in a column of this type, or None
    when it holds something else (strings, structs)."""
    pa = pyarrow()
    levels = 0
    while _is_list(pa, arrow_type_):
        levels += 1
        arrow_type_ = arrow_type_.value_type
    dtype = _numpy_dtype(arrow_type_)
    return levels if levels and dtype is not None and dtype in SUPPORTED_DTYPES else None


def probed_field(arrow_type_, batches) -> Field | None:
    """The field a column of (variable-length) lists of numbers holds when every row has the
    same length at each level, read from its ``batches`` (Arrow arrays); None otherwise."""
    pa = pyarrow()
    levels = list_levels(arrow_type_)
    if levels is None:
        return None
    found: list[set[int]] = [set() for _level in range(levels)]  # the row lengths seen at each level
    ragged = False  # rows of their own length at the first level: a ragged field
    for batch in batches:
        column = batch
        for level in range(levels):
            if column.null_count:
                return None
            if pa.types.is_fixed_size_list(column.type):
                found[level].add(column.type.list_size)
            else:
                found[level].update(np.unique(column.value_lengths().to_numpy(zero_copy_only=False)).tolist())
            if len(found[level]) > 1:
                if level > 0:
                    return None  # only the first axis of a ragged field has rows of their own length
                ragged = True
            column = column.flatten()
    leaf = arrow_type_
    while _is_list(pa, leaf):
        leaf = leaf.value_type
    dtype = _numpy_dtype(leaf)
    inner = found[1:] if levels > 1 else []
    if dtype is None or any(len(lengths) != 1 for lengths in inner) or (not ragged and len(found[0]) != 1):
        return None
    if ragged:
        return Field((None, *(int(next(iter(lengths))) for lengths in inner)), dtype)
    return Field(tuple(int(next(iter(lengths))) for lengths in found), dtype)
