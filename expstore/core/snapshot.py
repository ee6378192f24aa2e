"""One source pool's bookkeeping at the snapshot its rows are read from: episodes, links and
priorities, as convert and merge carry them into a copy (maintenance/carry.py).

It reads the Store's bookkeeping views, so it lives beside them in the core; a row source
(inspect/streaming.py) builds it right after taking its window.
"""

from __future__ import annotations

import numpy as np

from ..backends.internal import ROW_ARRAYS, EpisodeStatus, episode_info, info_status
from .bookkeeping import PRIORITY_KEY
from .episodes import decode

_SCAN_ROWS = 1 << 20


class SourceBook:
    """One source pool's bookkeeping at the snapshot [tail, head) its rows are read from.

    Build it right after the reader took its window, so that the payload matches it.
    """

    def __init__(self, store, tail: int, head: int):
        book = store.bookkeeping.book
        record = store.commit_record  # the one the caller's window came from
        payload = record.payload
        state = decode(payload, record.head)
        self.store, self.book, self.tail, self.head = store, book, tail, head
        self.next_id, self.low_id = state["next"], state["low"]
        self.open_episodes: dict[int, tuple[int, int]] = state["open"]  # env id -> (episode id, last step)
        self.kept = state["kept"]  # entries a newer episode took over (core/episodes.py)
        self.max_priority = float(payload.get(PRIORITY_KEY, {}).get("max", 1.0))
        self.slots = book.slots
        self.views = {name: store.mapped.views[name] for name in ROW_ARRAYS}
        self.rewards = store.mapped.views[book.reward] if book.reward else None
        # The entries now: a writer appending while the rows are copied reuses old episodes' table rows.
        self._entries = book.entries_of(np.arange(self.low_id, self.next_id, dtype=np.int64), self.kept)

    @classmethod
    def of(cls, store, tail: int, head: int) -> SourceBook | None:
        return None if store.bookkeeping is None else cls(store, tail, head)

    def rows(self, steps: np.ndarray) -> dict[str, np.ndarray]:
        """The per-row bookkeeping of ``steps``; links past the snapshot cut. Read together with
        the rows themselves, which the caller then checks against the window (read_kept)."""
        values = {name: np.asarray(view[steps % self.slots]) for name, view in self.views.items()}
        delta = values["_next_delta"]
        delta[steps + delta >= self.head] = 0  # rows appended after the snapshot are not copied
        return values

    def still_holds(self, step_id: int) -> bool:
        """Whether the pool's window still holds ``step_id``: its writer did not evict it meanwhile."""
        return self.store.first_step_id <= step_id

    def entries(self, first_kept: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Episode ids, table entries and an open flag of the episodes with a row from
        ``first_kept`` on; an open episode's entry holds its last step id in column 2."""
        ids = np.arange(self.low_id, self.next_id, dtype=np.int64)
        table = self._entries.copy()
        is_open = np.zeros(len(ids), bool)
        for env_id, (episode_id, last_step) in self.open_episodes.items():
            position = episode_id - self.low_id
            if 0 <= position < len(ids):
                table[position, 2:4] = (last_step, episode_info(env_id))
                is_open[position] = True
        closed = info_status(table[:, 3]) != EpisodeStatus.OPEN
        keep = (table[:, 0] == ids) & (is_open | closed) & (table[:, 2] >= first_kept)
        return ids[keep], table[keep], is_open[keep]

    def min_episode_id(self, start: int) -> int:
        """The smallest episode id of rows [start, head) (rows of forgotten episodes included)."""
        smallest = self.low_id
        for first in range(start, self.head, _SCAN_ROWS):
            steps = np.arange(first, min(self.head, first + _SCAN_ROWS), dtype=np.int64)
            smallest = min(smallest, int(self.views["_episode_id"][steps % self.slots].min()))
        return smallest

    def starts_at(self, first_kept: int, ids: np.ndarray, firsts: np.ndarray) -> dict[int, tuple[int, int, float]]:
        """Episodes that began before ``first_kept``: id -> (oldest kept step, rows, return before it)."""
        early = ids[firsts < first_kept]
        oldest = self.book.oldest_rows(early, first_kept, self.head)
        found = {}
        for episode_id, step_id in zip(early, oldest, strict=True):
            if step_id < 0:
                continue
            slot = step_id % self.slots
            reward = 0.0 if self.rewards is None else float(self.rewards[slot])
            found[int(episode_id)] = (step_id, int(self.views["_episode_step"][slot]),
                                      float(self.views["_episode_return"][slot]) - reward)
        return found
