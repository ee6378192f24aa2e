"""Episode ids and steps for the rows of an export (Parquet's and LeRobot's per-row columns),
which episodes were still open at the export, and the rows in episode order for the formats that
store each episode's rows together (Minari's episodes, LeRobot's frame ranges).

A source's step ids are ``first_step_id + row`` unless it says otherwise with ``step_ids(start,
stop)`` (a source that leaves rows out: minari_derived.py); its ``book``, when it has one, names
each row's episode.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..inspect.streaming import Progress, RowSource, iter_slices

_SCAN_ROWS = 1 << 20  # rows whose episode ids are looked at per pass of the pre-pass


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
            tagged = self.book.rows(step_ids(self.source, first, first + n))
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


@dataclass(frozen=True)
class EpisodeRows:
    """The episode ids in a run of rows, ascending, with the index of each one's first and last row."""

    ids: np.ndarray
    first: np.ndarray
    last: np.ndarray


def episode_rows(ids: np.ndarray, start: int = 0) -> EpisodeRows:
    """Where each episode of ``ids`` (the episode id of rows ``start``, ``start + 1``, ...) begins
    and ends within them."""
    unique, first = np.unique(ids, return_index=True)
    _, from_end = np.unique(ids[::-1], return_index=True)
    return EpisodeRows(unique, start + first, start + len(ids) - 1 - from_end)


def step_ids(source: RowSource, start: int, stop: int) -> np.ndarray:
    """The step ids of rows ``[start, stop)`` of ``source``."""
    own = getattr(source, "step_ids", None)
    if own is not None:
        return own(start, stop)
    return np.arange(source.first_step_id + start, source.first_step_id + stop, dtype=np.int64)


class EpisodeOrder:
    """The rows of a source with each episode's rows together, in step order, episodes in the order
    they begin (a vector env's interleaved episodes one after another).

    A source whose episodes run one after another (one env, or an archive: it keeps no episodes)
    is read as it is. One whose episodes interleave is read once ahead for each episode's last
    row; then the rows of the oldest episode not yet written go out as they are read, and those of
    later episodes wait in memory until it ends: at most the rows read since the oldest episode
    still running began. Fixed-shape fields only (ragged rows are padded to each slice's width).
    """

    def __init__(self, source: RowSource) -> None:
        self.source = source
        self.book: Any = getattr(source, "book", None)
        self._order: list[int] = []  # episode ids by first row
        self._last: dict[int, int] = {}  # episode id -> its last row
        if self.book is not None and len(source):
            self._spans()
        self.interleaved = bool(self._order)

    def _ids(self, start: int, stop: int) -> np.ndarray:
        return self.book.rows(step_ids(self.source, start, stop))["_episode_id"].astype(np.int64)

    def _spans(self) -> None:
        firsts: dict[int, int] = {}
        for start in range(0, len(self.source), _SCAN_ROWS):
            spans = episode_rows(self._ids(start, min(len(self.source), start + _SCAN_ROWS)), start)
            for episode_id, lo, hi in zip(spans.ids.tolist(), spans.first.tolist(), spans.last.tolist(), strict=True):
                firsts.setdefault(episode_id, lo)
                self._last[episode_id] = hi
        order = sorted(firsts, key=firsts.__getitem__)
        lasts = np.maximum.accumulate([self._last[episode_id] for episode_id in order])
        if all(firsts[episode_id] > lasts[k] for k, episode_id in enumerate(order[1:])):
            self._last.clear()  # one episode after another: read as it is
        else:
            self._order = order

    def slices(self, fields: list[str] | None = None,
               progress: Progress | None = None) -> Iterator[tuple[int, dict[str, np.ndarray], np.ndarray]]:
        """Yield ``(first, rows, episode_ids)``: consecutive slices of the episode order, ``first``
        the index of their first row in it; ``progress`` counts the source's rows as read."""
        if not self.interleaved:
            tagger = EpisodeTagger(self.source)
            for first, rows in iter_slices(self.source, fields=fields, progress=progress):
                yield first, rows, tagger.tags(first, rows, len(next(iter(rows.values()))) if rows else 0)[0]
            return
        written, current = 0, 0
        waiting: dict[int, list[dict[str, np.ndarray]]] = {}
        for first, rows in iter_slices(self.source, fields=fields, progress=progress):
            ids = self._ids(first, first + len(next(iter(rows.values()))))
            for episode_id, part in _by_episode(ids, rows):
                waiting.setdefault(episode_id, []).append(part)
            stop = first + len(ids)
            while current < len(self._order):
                episode_id = self._order[current]
                for part in waiting.pop(episode_id, []):
                    count = len(next(iter(part.values())))
                    yield written, part, np.full(count, episode_id, np.int64)
                    written += count
                if self._last[episode_id] >= stop:
                    break  # it goes on in a later slice
                current += 1


def _by_episode(ids: np.ndarray, rows: dict[str, np.ndarray]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """The rows of each episode of ``ids`` (in the order their first rows come, each one's rows in
    order): one stable sort and one take of each field, however many episodes the slice holds."""
    if not len(ids):
        return
    order = np.argsort(ids, kind="stable")
    grouped = ids[order]
    starts = np.flatnonzero(np.concatenate([[True], grouped[1:] != grouped[:-1]]))
    stops = np.append(starts[1:], len(ids))
    # The parts are views of one copy of the slice: one that waits keeps its slice in memory,
    # within the rows read since the oldest episode still running began (the class docstring).
    taken = {name: values[order] for name, values in rows.items()}
    for k in np.argsort(order[starts], kind="stable").tolist():  # by each episode's first row
        lo, hi = int(starts[k]), int(stops[k])
        yield int(grouped[lo]), {name: values[lo:hi] for name, values in taken.items()}
