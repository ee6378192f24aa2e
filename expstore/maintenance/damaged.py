"""Rows that convert and merge leave out: heap rows that can no longer be read as written.

A heap row whose bytes no longer decode, or whose index entry does not fit its heap, comes out
of ``Store.gather`` as zeros; a raw row whose bytes fail their crc32 (``checksums=True``) comes
out with the damaged bytes. Copied as they are, both would be rows of the copy that look
healthy: the copy records a fresh crc32 of what it was given. ``convert`` is the way out of a
damaged pool (it copies the rows that can still be read), so such rows are left out of the copy
and reported, never copied as zeros or under a fresh checksum. Fixed-shape rows have no check
of their own (their checksums cover whole chunks) and are copied as they are.

The copy first runs as if nothing were damaged, checking each slice it reads; the first damaged
row stops it. Each source is then scanned for all of its damaged rows and copied without them,
read as a pool is (``read_kept``): a writer appending to it meanwhile evicts its oldest rows, and
one that outruns the copy makes convert start it again further ahead, as from any pool.
The rows left are no longer consecutive steps, so, as with ``--dedup``, the copy is tagged anew
by ``extend``: step ids count on from the first row kept, episodes are split at
terminated/truncated rows and priorities start at the maximum. A pool that derives its next
observations from the following row cannot lose a row without changing its predecessor's
transition: it is refused, naming the damaged steps and the ``--capacity`` that copies the rows
after them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.heap_check import LISTED_STEPS, listed_steps
from ..core.ragged import join_batches
from ..errors import RESTORE_FROM_COPY_ADVICE, CorruptStoreError
from ..inspect.duplicates import derived_fields
from ..inspect.streaming import SLICE_NBYTES, KeptRows, PoolSource, RowSource, slice_rows, unwrapped


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
    return [inner.damage for inner in (unwrapped(source, WithoutDamagedRows) for source in sources)
            if inner is not None]


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
            f"{source.path}: {damaged.size} rows have heap bytes that cannot be read (steps "
            f"{listed_steps(steps, damaged.size)}), and the pool derives {derived} from the following row, so a "
            f"copy cannot leave them out; {newer}{RESTORE_FROM_COPY_ADVICE}")
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
        self._damaged = damaged
        # The n-th kept row is source row n + (damaged rows at or before it): with each damaged
        # row's index less the damaged rows before it, a search finds that count.
        self._shifted = damaged - np.arange(len(damaged), dtype=np.int64)

    def __len__(self) -> int:
        return self._length

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        pieces = [self.source.read(low, high) for _, low, high in self._runs(start, stop)]
        return _joined(pieces or [self.source.read(0, 0)])

    def read_kept(self, start: int, stop: int) -> KeptRows:
        """Rows ``[start, stop)`` less those that a writer appending to the pool evicted first
        (PoolSource.read_kept): convert retries a copy that a writer outran, as from a pool."""
        pieces: list[dict[str, np.ndarray]] = []
        first = start
        for kept, low, high in self._runs(start, stop):
            got = self.source.read_kept(low, high)
            if got.first > low:  # the writer took a prefix: every row before this run's first kept is gone
                pieces, first = [], kept + got.first - low
            pieces.append(got.rows)
        return KeptRows(first, _joined(pieces or [self.source.read_kept(0, 0).rows]))

    def evicted_now(self) -> int:
        """Rows of this order that a writer appending to the pool has evicted by now."""
        evicted = self.source.evicted_now()
        return evicted - int(np.searchsorted(self._damaged, evicted))

    def _runs(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """Rows ``[start, stop)`` as runs of consecutive pool rows: (first row of this order, the
        pool's rows [low, high))."""
        kept = np.arange(start, max(start, stop), dtype=np.int64)
        rows = kept + np.searchsorted(self._shifted, kept, side="right")
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        return [(int(first[0]), int(run[0]), int(run[-1]) + 1)
                for first, run in zip(np.split(kept, breaks), np.split(rows, breaks), strict=True) if run.size]

    def close(self) -> None:
        self.source.close()


def _joined(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Slices of rows read one by one, as one (a ragged field, padded to the longest row of each
    slice, is widened to the widest of them)."""
    return join_batches(pieces, list(pieces[0]))
