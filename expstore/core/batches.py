"""Batches built from drawn step ids: plain transitions, n-step returns and sequence windows.

The Store draws step ids with a sampling strategy (sampling/) and hands them here; everything
here is one vectorised gather per field plus the chain arithmetic of sampling/draws.py. Each
builder returns the batch and which rows are usable (a derived next observation not known yet
makes a row unusable), so that the Store's one redraw loop can replace those rows.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Protocol

import numpy as np

from ..errors import SchemaError
from ..sampling import draws
from ..schema import Schema
from .bookkeeping import Bookkeeping
from .commit import CommitRecord
from .stacking import FrameStacker


class Gather(Protocol):
    """The Store's ``_gather``: every field's rows at step ids, the heap fields named in
    ``undecoded`` left as their index entries (a frame stacker decodes those itself)."""

    def __call__(self, steps: np.ndarray, undecoded: Collection[str] = ..., /) -> dict: ...


CHAIN = "_chain"  # the [batch, n] rows an n-step return summed, kept for hindsight relabelling
HeapRows = Callable[[list[str], np.ndarray], dict]  # heap fields' rows at step ids (core/heap.py)


class Batches:
    """Builds the batches of one Store handle from step ids."""

    def __init__(self, views: Mapping[str, np.ndarray], schema: Schema, slots: int, keeping: Bookkeeping | None,
                 gather: Gather, committed: Callable[[], CommitRecord], path: str, heap_rows: HeapRows | None = None):
        self.views = views
        self.schema = schema
        self.slots = slots
        self.keeping = keeping
        self.gather = gather
        self.committed = committed  # the handle's current commit record (a reader's moves on)
        self.path = path
        self.heap_rows = heap_rows

    def transitions(self, steps: np.ndarray, n_step: int, gamma: float, high: int,
                    stacker: FrameStacker | None = None, keep_chain: bool = False) -> tuple[dict, np.ndarray]:
        """The batch for start rows ``steps``, and which rows are usable (next obs known, and
        with ``stacker`` their frame stacks still in the window). With ``keep_chain`` and
        n > 1, the rows each return summed are in the batch as ``CHAIN`` (-1 past the end)."""
        # The stacker gathers and decodes each stacked row's own frame with its stack, so the
        # batch's gather leaves compressed stacked fields undecoded (a sixth of a 4-stack's decodes).
        batch = self.gather(steps, stacker.request.fields) if stacker is not None else self.gather(steps)
        last = steps
        if n_step > 1:
            last = self._n_step(batch, steps, n_step, gamma, high, keep_chain)
        ok = np.ones(len(steps), bool)
        if self.keeping is not None and self.keeping.derived:
            values, ok = self.keeping.next_values(last, high, self.keeping.kept_now(self.committed()))
            batch.update(values)
        if stacker is not None:
            ok &= stacker.apply(batch, steps, last)
        return batch, ok

    def stacked_rows(self, batch: dict, steps: np.ndarray, high: int, stacker: FrameStacker) -> np.ndarray:
        """``read``/``episode`` with a frame stack: stack the rows of ``batch`` in place, adding the
        derived ``next_<obs>`` stacks when every row's next observation is known. Returns which
        rows could be stacked."""
        if self.keeping is not None and self.keeping.derived:
            values, known = self.keeping.next_values(steps, high, self.keeping.kept_now(self.committed()))
            if known.all():
                batch.update(values)
        return stacker.apply(batch, steps, steps)

    def _n_step(self, batch: dict, steps: np.ndarray, n_step: int, gamma: float, high: int,
                keep_chain: bool = False) -> np.ndarray:
        """Sum up to ``n_step`` rewards of each row's episode into ``batch``; the last rows summed."""
        if "reward" not in self.schema:
            raise SchemaError(f"n-step sampling needs a 'reward' field; {self.path} stores {list(self.schema)}")
        chain = self._keeping().chains(steps, n_step, high)
        rewards = self.views["reward"][chain % self.slots]
        total, counts = draws.n_step_returns(chain, rewards, gamma)
        last = draws.last_valid(chain, counts)
        batch["reward"] = total.astype(self.schema["reward"].dtype)
        ends = [name for name in self.schema if name in ("terminated", "truncated") or name.startswith("next_")]
        in_heap = [name for name in ends if self.schema[name].uses_heap]
        for name in ends:
            if name not in in_heap:
                batch[name] = self.views[name][last % self.slots]
        if in_heap and self.heap_rows is not None:
            batch.update(self.heap_rows(in_heap, last))
        batch["discount"] = (np.float64(gamma) ** counts).astype(np.float32)
        if keep_chain:
            batch[CHAIN] = chain
        return last

    def windows(self, steps: np.ndarray, length: int, high: int, full_only: bool,
                stacker: FrameStacker | None = None) -> tuple[dict, np.ndarray]:
        """Windows of ``length`` rows of one episode from each start row: arrays [batch, length, ...]."""
        chain = self._keeping().chains(steps, length, high)
        mask = chain >= 0
        flat = np.where(mask, chain, chain[:, :1]).reshape(-1)
        batch, ok = self.transitions(flat, 1, 1.0, high, stacker)
        mask &= ok.reshape(mask.shape)
        out = {}
        for name, values in batch.items():
            values = values.reshape(*mask.shape, *values.shape[1:])
            keep = mask.reshape(*mask.shape, *[1] * (values.ndim - 2))
            out[name] = np.where(keep, values, np.zeros((), values.dtype))
        out["step_id"] = np.where(mask, chain, -1)
        out["mask"] = mask
        usable = np.asarray(mask.all(axis=1) if full_only else mask[:, 0], bool).copy()
        return out, usable

    def _keeping(self) -> Bookkeeping:
        if self.keeping is None:  # the Store checks first; this keeps the types honest
            raise SchemaError(f"{self.path} has no episode bookkeeping")
        return self.keeping
