"""The bookkeeping a Store holds beside the rows: the episode book, the priorities, and the
next observations a pool without ``next_obs`` derives from the following row.

``Bookkeeping`` is an object the Store composes (one per open handle of a pool created with
bookkeeping); it owns the per-row tags written on append, the part of the commit payload they
need, a reader's decoded commit state, and the read-only :class:`WindowView` the sampling
strategies draw from (sampling/base.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends.internal import has_bookkeeping
from ..sampling import draws
from ..sampling.age_window import VERSION_FIELD
from ..sampling.base import WindowView
from ..sampling.priorities import PriorityIndex
from ..schema import Schema
from .commit import CommitRecord
from .episodes import EpisodeBook, decode
from .heap import length_key
from .ragged import put_rows

PRIORITY_KEY = "priorities"


@dataclass(frozen=True)
class EpisodeState:
    """The episode bookkeeping as one handle sees it: the writer's own, or a reader's commit."""

    tail: int
    head: int
    open_now: Mapping[int, tuple[int, int]]  # env id -> (episode id, last step)
    next_id: int
    low_id: int
    kept: Mapping[int, np.ndarray]  # episode id -> entry that a newer episode may have taken over


class Bookkeeping:
    """Episode book and priorities of one Store handle, over the pool's memory maps."""

    def __init__(self, views: dict[str, np.ndarray], schema: Schema, slots: int, capacity: int,
                 committed: CommitRecord, writable: bool, checksums: bool = False):
        self.views = views
        self.slots = slots
        self.writable = writable
        self.book = EpisodeBook(views, schema, slots, capacity, committed.payload, committed.head, checksums)
        if writable:
            self.book.cut_off_committed_open()
        self.derived: tuple[str, ...] = tuple(self.book.derived)
        self.priority_view: np.ndarray = views["_priority"]
        self.max_priority = float(committed.payload.get(PRIORITY_KEY, {}).get("max", 1.0))
        self.priority_index = PriorityIndex(self.priority_view, slots)
        self.versions = views.get(VERSION_FIELD)
        self.fields = tuple(schema)
        self._decoded: tuple[int, dict] | None = None  # a reader's decoded commit payload, by seq
        self._view: WindowView | None = None  # the last view handed out: immutable, so reused while it fits
        # The Store's reader of heap fields' rows by step id (core/heap.py), in pools with heap fields.
        self.heap_rows: Callable[[list[str], np.ndarray], dict] | None = None
        self._in_heap = [name for name in schema.heap_fields() if name in self.derived]
        # The derived fields stored raw, one list kept so that the Store's cold-read plan for
        # them is built once; and the Store's gather of their rows (prefetched when the batch's
        # own gather was, core/coldread.py), in place of a plain fancy index.
        self._derived_raw = [name for name in self.derived if name not in self._in_heap]
        self._derived_views = [views[name] for name in self._derived_raw]
        self.gather_more: Callable[[list[np.ndarray], np.ndarray], list[np.ndarray]] | None = None

    @classmethod
    def of(cls, views: dict[str, np.ndarray], schema: Schema, slots: int, capacity: int,
           committed: CommitRecord, writable: bool, checksums: bool = False) -> Bookkeeping | None:
        """The bookkeeping of a pool created with it, else None."""
        if not has_bookkeeping(views):
            return None
        return cls(views, schema, slots, capacity, committed, writable, checksums)

    # ------------------------------------------------------------------ writing and commits
    def payload(self, previous_payload: Mapping, tail: int, head: int) -> dict:
        """The payload of the next commit: the episode state and the max priority."""
        return {**previous_payload, **self.book.payload(tail, head), PRIORITY_KEY: {"max": self.max_priority}}

    def on_append(self, step_id: int, slot: int, transition: Mapping, derived: Mapping | None, env_id: int) -> None:
        self.book.on_append(step_id, slot, transition, derived, env_id)
        self.priority_view[slot] = self.max_priority

    def on_extend(self, first_step: int, columns: Mapping, derived: Mapping | None, env_ids,
                  n_rows: int | None = None) -> None:
        self.book.on_extend(first_step, columns, derived, env_ids, n_rows)
        count = len(next(iter(columns.values()))) if n_rows is None else n_rows
        start = first_step % self.slots
        head = min(count, self.slots - start)
        self.priority_view[start:start + head] = self.max_priority  # new rows get the max, filled in place
        if head < count:
            self.priority_view[:count - head] = self.max_priority

    def set_priorities(self, steps: np.ndarray, values: np.ndarray) -> None:
        """Write priorities of steps inside the window (checked by the caller)."""
        self.priority_view[steps % self.slots] = values
        if values.size:
            self.max_priority = max(self.max_priority, float(values.max()))
        self.priority_index.set(steps, values)

    # ------------------------------------------------------------------ episode state
    def episode_state(self, low: int, high: int, committed: CommitRecord) -> EpisodeState:
        if self.writable:
            open_now = {env: (state.episode_id, state.last_step) for env, state in self.book.open.items()}
            return EpisodeState(low, high, open_now, self.book.next_id, self.book.low_id, self.book.kept)
        state = self.committed_state(committed)
        return EpisodeState(low, high, state["open"], state["next"], state["low"], state["kept"])

    def committed_state(self, committed: CommitRecord) -> dict:
        """A reader's decoded episode payload of its current commit (decoded once per commit)."""
        if self._decoded is None or self._decoded[0] != committed.seq:
            self._decoded = (committed.seq, decode(committed.payload, committed.head))
        return self._decoded[1]

    def kept_now(self, committed: CommitRecord) -> Mapping[int, np.ndarray]:
        return self.book.kept if self.writable else self.committed_state(committed)["kept"]

    def table(self, state: EpisodeState) -> dict[str, np.ndarray]:
        return self.book.table_view(state.tail, state.head, state.open_now, state.next_id, state.low_id, state.kept)

    # ------------------------------------------------------------------ sampling
    def window_view(self, tail: int, head: int, commit_seq: int | None) -> WindowView:
        """What a sampling strategy reads, for the window [tail, head)."""
        view = self._view
        if view is None or (view.tail, view.head, view.commit_seq) != (tail, head, commit_seq):
            view = self._view = WindowView(tail, head, self.slots, self.book.next_delta, self.book.episode_id,
                                           self.priority_index, self.versions, commit_seq, self.fields)
        return view

    def chains(self, steps: np.ndarray, length: int, high: int) -> np.ndarray:
        """[batch, length] step ids following each step in its episode (-1 past its end)."""
        return draws.chains(steps, length, high, self.slots, self.book.next_delta, self.book.episode_id)

    def next_values(self, last: np.ndarray, high: int, kept: Mapping[int, np.ndarray],
                    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """next_<obs> of rows ``last`` in a pool that derives them; and where they are known."""
        following = draws.next_in_episode(last, high, self.slots, self.book.next_delta, self.book.episode_id)
        rows = np.where(following >= 0, following, last)
        slots = rows % self.slots
        columns = (self.gather_more(self._derived_views, slots) if self.gather_more is not None
                   else [view[slots] for view in self._derived_views])
        values = {f"next_{name}": column for name, column in zip(self._derived_raw, columns, strict=True)}
        if self._in_heap and self.heap_rows is not None:  # compressed observations: decoded
            values.update({f"next_{name}": value for name, value in self.heap_rows(self._in_heap, rows).items()})
        known = following >= 0
        ends = np.flatnonzero(~known)  # an episode's last row, or the newest row of an open one
        if ends.size:
            finals, found = self.book.finals_at(last[ends], kept)
            for name, final in finals.items():
                key = f"next_{name}"
                if final.dtype == object:  # a ragged observation: rows of their own lengths
                    values[key] = put_rows(values[key], values[length_key(key)], ends, final)
                else:
                    values[key][ends] = final
            known[ends] = found
        return values, known


def check_env_ids(keeping: Bookkeeping | None, env_ids: Any, n_rows: int, head: int | None = None) -> np.ndarray | None:
    """The env id of each row of an extend from step id ``head`` on, checked (None: every row of env 0)."""
    if env_ids is None or keeping is None:
        return None
    return keeping.book.check_env_ids(env_ids, n_rows, head)
