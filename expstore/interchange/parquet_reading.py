"""Reading a Parquet file into a pool, the parts every Parquet import shares (parquet.py, and
parquet_derived.py for files of pools that derive ``next_obs``): batches that fail cleanly on a
damaged file, the step ids checked, and heaps sized from the file's own list lengths."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import CorruptStoreError, SchemaError
from ..schema import Field, Schema
from .arrow_columns import list_levels


def ragged_heap_bytes(parquet, schema: Schema, columns: Mapping[str, str], capacity: int) -> dict[str, int] | None:
    """Heap sizes for the ragged fields that hold every row of the file: the default
    (``capacity`` rows of 64 elements) sized up to the rows' bytes, with room for the heap's
    tail slack (a sixteenth) and a row that does not fit before the heap's end."""
    ragged = [name for name, field in schema.items() if field.ragged]
    if not ragged:
        return None
    sizes = {}
    for name in ragged:
        field, column = schema[name], columns[name]
        if not list_levels(parquet.schema_arrow.field(column).type):
            continue  # not a list column: reading it says so (from_arrow)
        total = longest = 0
        for batch in parquet.iter_batches(columns=[column]):
            lengths = list_lengths(batch.column(0))
            total += int(lengths.sum())
            longest = max(longest, int(lengths.max(initial=0)))
        sizes[name] = max(capacity * field.row_nbytes, heap_room(field, total, longest), 1)
    return sizes or None


def list_lengths(column) -> np.ndarray:
    """The length of each row of a list column (0 for a missing row: from_arrow says so)."""
    lengths = column.value_lengths().to_numpy(zero_copy_only=False)
    return np.nan_to_num(lengths.astype(np.float64)).astype(np.int64)


def heap_room(field: Field, total: int, longest: int) -> int:
    """The heap bytes that hold rows of ``field`` of ``total`` elements, the longest ``longest``:
    their bytes, an eighth more for the heap's tail slack, and room for a row that does not fit
    before the heap's end."""
    element_nbytes = field.dtype.itemsize * int(np.prod(field.item_shape, dtype=np.int64))
    needed = total * element_nbytes
    return needed + needed // 8 + 2 * longest * element_nbytes


def first_step_id(parquet) -> int:
    if parquet.metadata.num_rows == 0:
        return 0
    first = parquet.read_row_group(0, columns=["step_id"]).column(0)
    return int(first[0].as_py()) if len(first) else 0


def next_batch(src: str, batches):
    try:
        return next(batches)
    except StopIteration:
        return None
    except OSError as exc:  # a truncated or damaged page: pyarrow raises OSError / ArrowInvalid
        raise CorruptStoreError(f"{src} cannot be read to the end ({exc}); the file is damaged") from None


def check_steps(src: str, column, expected: int | None) -> int:
    steps = column.to_numpy(zero_copy_only=False)
    if not len(steps):
        return expected or 0
    start = int(steps[0]) if expected is None else expected
    if not np.array_equal(steps, np.arange(start, start + len(steps))):
        raise SchemaError(f"{src}: step_id is not consecutive from {start}; rows were removed or reordered after "
                          "export, so the pool's step ids cannot be restored")
    return start + len(steps)


def done_flags(rows: Mapping) -> np.ndarray | None:
    """``terminated | truncated`` of each row (None without either flag as a 1-d field)."""
    flags = [rows[name].astype(bool) for name in ("terminated", "truncated")
             if isinstance(rows.get(name), np.ndarray) and rows[name].ndim == 1]
    if not flags:
        return None
    return np.logical_or.reduce(flags)
