"""Rows that convert and merge leave out: heap rows that can no longer be read as written.

A heap row whose bytes no longer decode, or whose index entry does not fit its heap, comes out
of ``Store.gather`` as zeros; a raw row whose bytes fail their crc32 (``checksums=True``) comes
out with the damaged bytes. Copied as they are, both would be rows of the copy that look
healthy: the copy records a fresh crc32 of what it was given. ``convert`` is the way out of a
damaged pool (it copies the rows that can still be read), so such rows are left out of the copy
and reported, never copied as zeros or under a fresh checksum. Fixed-shape rows have no check
of their own (their checksums cover whole chunks) and are copied as they are.

The copy first runs as if nothing were damaged, checking each slice it reads; the first damaged
row stops it. Each source is then scanned for all of its damaged rows and copied without them.
The rows left are no longer consecutive steps, so, as with ``--dedup``, the copy is tagged anew
by ``extend``: step ids count on from the first row kept, episodes are split at
terminated/truncated rows and priorities start at the maximum. A pool that derives its next
observations from the following row cannot lose a row without changing its predecessor's
transition: it is refused, naming the damaged steps and the ``--capacity`` that copies the rows
after them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CorruptStoreError
from ..inspect.duplicates import derived_fields
from ..inspect.streaming import SLICE_NBYTES, PoolSource, RowSource, slice_rows

LISTED_STEPS = 5  # the first damaged steps a report names


class DamagedRowsFound(Exception):
    """A copy read a damaged heap row of source ``path``: it starts again without such rows."""

    def __init__(self, path: str):
        super().__init__(f"{path} holds damaged heap rows")
        self.path = path


@dataclass
class Damage:
    """The damaged heap rows of one source: how many, and the step ids of the first of them."""

    path: str
    rows: int
    first_steps: list[int]


def damaged_in_slice(source: RowSource, first: int, count: int) -> bool:
    """Whether rows ``[first, first + count)`` of ``source``, just gathered, hold a damaged heap row
    (a row a writer overwrote meanwhile is not damage: it is left out as evicted)."""
    if not isinstance(source, PoolSource) or not source.schema.heap_fields() or not count:
        return False
    steps = np.arange(source.first_step_id + first, source.first_step_id + first + count, dtype=np.int64)
    damaged = source.store.damaged_heap_rows(steps)
    return bool((damaged & (steps >= source.store.first_step_id)).any())


def without_damaged_rows(sources: list[RowSource], slice_nbytes: int | None = None) -> list[RowSource]:
    """Each source, without its damaged heap rows where it has any (``WithoutDamagedRows``).

    Raises:
        CorruptStoreError: a source with damaged rows derives its next observations.
    """
    return [_scanned(source, slice_nbytes or SLICE_NBYTES) for source in sources]


def damage_of(sources: list[RowSource]) -> list[Damage]:
    """The damage each source of a copy was found with (none for sources without damaged rows)."""
    found = []
    for source in sources:
        inner: Any = source
        while inner is not None and not isinstance(inner, WithoutDamagedRows):
            inner = getattr(inner, "source", None)  # through the filters that wrap one (dedup)
        if inner is not None:
            found.append(inner.damage)
    return found


def _scanned(source: RowSource, slice_nbytes: int) -> RowSource:
    if not isinstance(source, PoolSource) or not source.schema.heap_fields():
        return source
    damaged = _damaged_rows(source, slice_nbytes)
    if not damaged.size:
        return source
    steps = (source.first_step_id + damaged[:LISTED_STEPS]).tolist()
    derived = derived_fields(source)
    if derived:
        after = len(source) - int(damaged[-1]) - 1
        newer = f"copy only the {after} newer rows with capacity={after} (CLI: --capacity {after}), or " \
            if after else ""
        raise CorruptStoreError(
            f"{source.path}: {damaged.size} rows have heap bytes that cannot be read (steps {_listed(steps)}), and "
            f"the pool derives {derived} from the following row, so a copy cannot leave them out; {newer}restore "
            "a copy")
    return WithoutDamagedRows(source, damaged, Damage(source.path, int(damaged.size), steps))


def _damaged_rows(source: PoolSource, slice_nbytes: int) -> np.ndarray:
    """The logical rows of ``source`` with a damaged heap row, in order."""
    step = slice_rows(source.schema, source.chunk_rows, slice_nbytes)
    store, found = source.store, []
    for first in range(0, len(source), step):
        steps = np.arange(source.first_step_id + first, source.first_step_id + min(len(source), first + step),
                          dtype=np.int64)
        store.gather(steps)
        damaged = store.damaged_heap_rows(steps) & (steps >= store.first_step_id)
        found.append(steps[damaged] - source.first_step_id)
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def _listed(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) + ("..." if len(steps) == LISTED_STEPS else "")


class WithoutDamagedRows:
    """A pool's rows less its damaged heap rows (``damaged``: their logical rows, in order).

    Its kind is not ``"pool"`` and it has no ``book``: the rows kept are not consecutive steps,
    so a copy made from it is tagged anew by ``extend`` (see the module docstring). It keeps the
    pool's ``meta`` (slack, chunk rows, checksums, heap sizes carry over).
    """

    kind = "pool without damaged rows"

    def __init__(self, source: PoolSource, damaged: np.ndarray, damage: Damage):
        self.source, self.damage = source, damage
        self.path, self.schema, self.attrs = source.path, source.schema, source.attrs
        self.capacity, self.chunk_rows = source.capacity, source.chunk_rows
        self.first_step_id, self.meta = source.first_step_id, source.meta
        self._length = len(source) - len(damaged)
        # The n-th kept row is source row n + (damaged rows at or before it): with each damaged
        # row's index less the damaged rows before it, a search finds that count.
        self._shifted = damaged - np.arange(len(damaged), dtype=np.int64)

    def __len__(self) -> int:
        return self._length

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        kept = np.arange(start, max(start, stop), dtype=np.int64)
        rows = kept + np.searchsorted(self._shifted, kept, side="right")
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        runs = [(int(run[0]), int(run[-1]) + 1) for run in np.split(rows, breaks) if run.size]
        pieces = [self.source.read(low, high) for low, high in runs] or [self.source.read(0, 0)]
        return {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}

    def close(self) -> None:
        self.source.close()
