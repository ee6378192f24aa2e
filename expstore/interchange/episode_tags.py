"""Episode ids and steps for the rows of an export (Parquet's and LeRobot's per-row columns), and
which episodes were still open at the export."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..inspect.streaming import RowSource


def open_episode_ids(source: RowSource) -> list[int] | None:
    """The ids of the episodes of ``source`` still open at its snapshot, ascending; None for a
    source that keeps no episodes (an archive: the tagger counts them from the flags, so whether
    its last one was still running is not known)."""
    book: Any = getattr(source, "book", None)
    if book is None:
        return None
    return sorted({int(episode_id) for episode_id, _ in book.open_episodes.values()})


class EpisodeTagger:
    """Episode id and step within it for each row of a source, read from the pool's bookkeeping
    (a pool recorded by expstore) or counted from the terminated/truncated flags (an archive)."""

    def __init__(self, source: RowSource) -> None:
        self.source = source
        self.book: Any = getattr(source, "book", None)
        self._next_id = 0
        self._step = 0
        self._starts = np.zeros(0, np.int64)
        self._last_id: int | None = None
        self._begun = 0  # episodes whose first row was tagged
        self._first_begun: int | None = None  # the id of the first of them
        self._cut: set[int] = set()  # episodes begun before the source's oldest row (the ring evicted it)

    def tags(self, first: int, rows: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self.book is not None:
            steps = np.arange(self.source.first_step_id + first, self.source.first_step_id + first + n)
            tagged = self.book.rows(steps)
            ids, positions = tagged["_episode_id"].astype(np.int64), tagged["_episode_step"].astype(np.int64)
        else:
            ids, positions = self._counted(rows, n)
        before = np.concatenate([[ids[0] if self._last_id is None else self._last_id], ids[:-1]]) if n else ids
        self._starts = np.flatnonzero(ids != before)  # offsets where a new episode begins
        self._last_id = int(ids[-1]) if n else self._last_id
        self._count(ids, positions)
        return ids, positions

    @property
    def episodes(self) -> int:
        """The episodes with a row tagged so far (a vector env's interleaved ones counted once)."""
        return self._begun + len(self._cut)

    def _count(self, ids: np.ndarray, positions: np.ndarray) -> None:
        """Count each episode once, however its rows interleave with others': at its first row,
        or, for one whose first rows are gone, by its id. Episodes take ids in the order they
        begin, so those (at most one per env) have ids below every episode begun in the source."""
        begins = positions == 0
        if self._first_begun is None and begins.any():
            self._first_begun = int(ids[np.argmax(begins)])
        self._begun += int(begins.sum())
        cut = ~begins if self._first_begun is None else ~begins & (ids < self._first_begun)
        if cut.any():
            self._cut.update(np.unique(ids[cut]).tolist())

    def starts_in_last(self) -> np.ndarray:
        """Offsets in the slice tagged last where a new episode begins (0: at its first row)."""
        return self._starts

    def _counted(self, rows: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
        done = np.zeros(n, bool)
        for name in ("terminated", "truncated"):
            if name in rows:
                done |= np.asarray(rows[name]).astype(bool).reshape(n, -1).any(axis=1)
        if not n:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        ids = self._next_id + np.concatenate([[0], np.cumsum(done[:-1])])
        starts = np.flatnonzero(np.concatenate([[True], done[:-1]]))  # the rows that begin a run
        positions = np.arange(n) - starts[np.searchsorted(starts, np.arange(n), side="right") - 1]
        positions[ids == self._next_id] += self._step  # the first run goes on with the last slice's episode
        self._step = 0 if done[-1] else int(positions[-1]) + 1
        self._next_id = int(ids[-1]) + int(done[-1])
        return ids.astype(np.int64), positions.astype(np.int64)
