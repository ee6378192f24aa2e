"""The sampling seam: a strategy draws step ids from a read-only view of the committed window.

A strategy (a :class:`Sampler`) never touches files. ``Store.sample`` takes one
:class:`WindowView` of its window and bookkeeping, asks the strategy for step ids, gathers the
rows once, and runs the one redraw loop for rows a writer overwrote or that cannot be used
(core/store.py): a strategy only answers "which step ids", again whenever it is asked.

Two optional abilities, each a method a strategy may add:

- ``weights(view, steps)``: importance weights of drawn steps (prioritized replay); the batch
  gets a ``weights`` column.
- ``admits(view, batch)``: which gathered rows the strategy accepts, checked on the values
  actually read (the age window: an older row is never returned); the others are drawn again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np

from .priorities import PriorityIndex


@dataclass(frozen=True)
class WindowView:
    """What a strategy may read: the window being sampled and the bookkeeping arrays.

    Arrays are indexed by slot (``slot = step_id % slots``) and are the pool's own memory maps:
    read them, never write them.

    Attributes:
        tail: the oldest step id that can be drawn.
        head: one past the newest step id that can be drawn (the committed head for a reader,
            the writer's own head for the writer), taken when the sample call began.
        slots: ring slots.
        next_delta: step id distance to the next row of the same episode (0: none), or None in
            a pool without episode bookkeeping.
        episode_id: the episode of each slot, or None.
        priorities: the handle's priority tree over the raw priorities, or None.
        versions: the ``policy_version`` column, or None when the pool has none.
        commit_seq: the commit a reader's view belongs to (None for the writer); the priority
            tree is rebuilt when it changes.
        fields: the pool's field names.
        window: the whole committed window ``(tail, head)`` this view was narrowed from (None:
            the view is the whole window); the priority tree always covers the whole window.
    """

    tail: int
    head: int
    slots: int
    next_delta: np.ndarray | None = None
    episode_id: np.ndarray | None = None
    priorities: PriorityIndex | None = None
    versions: np.ndarray | None = None
    commit_seq: int | None = None
    fields: tuple[str, ...] = ()
    window: tuple[int, int] | None = None

    @property
    def rows(self) -> int:
        return self.head - self.tail

    def between(self, tail: int, head: int | None = None) -> WindowView:
        """The same view over a narrower window."""
        return replace(self, tail=tail, head=self.head if head is None else head, window=self.whole_window)

    @property
    def whole_window(self) -> tuple[int, int]:
        return self.window or (self.tail, self.head)


@runtime_checkable
class Sampler(Protocol):
    """A sampling strategy: ``count`` step ids in ``[view.tail, view.head)``.

    Example (every even step id, uniformly)::

        class EvenSteps:
            def draw(self, rng, view, count):
                first = view.tail + view.tail % 2
                return first + 2 * rng.integers(0, (view.head - first + 1) // 2, size=count)

        pool.sample(256, sampler=EvenSteps())
    """

    def draw(self, rng: np.random.Generator, view: WindowView, count: int) -> np.ndarray:
        """``count`` int64 step ids inside the view's window (with replacement)."""
        ...
