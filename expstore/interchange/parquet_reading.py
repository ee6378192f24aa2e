"""Reading a Parquet file into a pool, the parts every Parquet import shares (parquet.py, and
parquet_derived.py for files of pools that derive ``next_obs``): batches that fail cleanly on a
damaged file, the step ids checked, heaps sized from the file's own list lengths, and the env id
each episode goes on.

A file names each row's episode; a pool tracks episodes per env id. In an export of ours (the
``expstore`` metadata: each id names one episode), ``EpisodeSpans`` gives the episodes that run at
the same time (a vector env's, their rows interleaved) env ids of their own, the smallest free
when each begins, so that each row's next row in its episode is the same in the pool as in the
file; a file of one episode after another puts every row on env 0. Another tool's file ends an
episode where its id changes (parquet.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import CorruptStoreError, SchemaError
from ..schema import Field, Schema
from .arrow_columns import list_levels
from .episode_tags import EpisodeRows, episode_rows

OPEN_KEY = "open_episodes"  # the ``expstore`` metadata's list of the episodes open at the export


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


@dataclass(frozen=True)
class RowEpisodes:
    """Where rows of a file go in the pool: each row's env id, whether it is its episode's last
    row in the file, and whether that episode was open at the export."""

    env_ids: np.ndarray
    last: np.ndarray
    open: np.ndarray


class EpisodeSpans:
    """Each episode of a file (ids ascending): its last row, whether it was open at the export,
    and the env id it is written on. Episodes that run at the same time (a vector env's) take
    different env ids, so that each row's next row in its episode is the same as in the source."""

    def __init__(self, ids: np.ndarray, first: np.ndarray, last: np.ndarray, open_episodes: frozenset):
        self.ids, self.last = ids, last
        self.open = np.isin(ids, np.fromiter(open_episodes, np.int64, len(open_episodes)))
        self.ended = int((~self.open).sum())
        # An open episode keeps its env id to the end: no later episode may continue it.
        self.env_ids = _env_ids(first, np.where(self.open, np.iinfo(np.int64).max, last))
        self.one_env = not self.env_ids.any()

    @classmethod
    def read(cls, src: str, parquet, open_episodes: frozenset, column: str = "episode_id") -> EpisodeSpans:
        """The spans of the episodes in ``parquet``'s ``column`` (one pass over it)."""
        parts: list[EpisodeRows] = []
        start = 0
        batches = parquet.iter_batches(columns=[column])
        while (batch := next_batch(src, batches)) is not None:
            ids = episode_ids(src, batch.column(0), column)
            parts.append(episode_rows(ids, start))
            start += len(ids)
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), open_episodes)
        ids, first, last = (np.concatenate([getattr(part, name) for part in parts])
                            for name in ("ids", "first", "last"))
        order = np.argsort(ids, kind="stable")
        unique, starts = np.unique(ids[order], return_index=True)
        return cls(unique, np.minimum.reduceat(first[order], starts), np.maximum.reduceat(last[order], starts),
                   open_episodes)

    def at(self, ids: np.ndarray, first_row: int) -> RowEpisodes:
        """Where the rows ``first_row``, ``first_row + 1``, ... of episodes ``ids`` go."""
        where = np.searchsorted(self.ids, ids)
        last = self.last[where] == first_row + np.arange(len(ids))
        return RowEpisodes(self.env_ids[where], last, self.open[where])


def episode_ids(src: str, column, name: str) -> np.ndarray:
    """The values of an episode column (int64 where they are integers), refused with nulls."""
    if column.null_count:
        raise SchemaError(f"{src}: column {name!r} has {column.null_count} missing values; every row needs one")
    ids = column.to_numpy(zero_copy_only=False)
    return ids.astype(np.int64) if ids.dtype.kind in "iub" else ids


def _env_ids(first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """The env id of each episode (rows ``first``..``last``): the smallest no episode holds then."""
    order = np.argsort(first, kind="stable")
    env_ids = np.zeros(len(first), np.int64)
    if len(order) < 2 or (first[order][1:] > np.maximum.accumulate(last[order])[:-1]).all():
        return env_ids  # one episode after another (one env): all on env 0
    free: list[int] = []
    busy: list[tuple[int, int]] = []  # (last row, env id)
    count = 0
    for episode in order.tolist():
        while busy and busy[0][0] < first[episode]:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            env_id = heapq.heappop(free)
        else:
            env_id, count = count, count + 1
        env_ids[episode] = env_id
        heapq.heappush(busy, (int(last[episode]), env_id))
    return env_ids
