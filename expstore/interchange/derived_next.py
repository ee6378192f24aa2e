"""The next observations of a pool that derives them, read beside its rows for an export.

A pool created with ``derive_next_obs=True`` (the layout for compressed frames) stores ``obs``
(and ``obs_*``) without their ``next_`` fields: a row's next observation is the next row's of its
episode, and each episode's final one is kept aside (core/finals.py). The exports that write next
observations (Minari's episodes, minari_derived.py; Parquet's ``next_<obs>`` columns,
parquet_derived.py) read them here, the way sampling reads them.

A row whose next observation the pool does not know (the newest row of an open episode, a row
cut off by a writer that died, an episode whose final observation was evicted) is not a whole
transition: sampling never returns it, and ``NextObservations.of`` says so in its mask.
"""

from __future__ import annotations

import numpy as np

from ..core.heap import length_key
from ..inspect.streaming import PoolSource, RowSource

_STEP_SLICE = 1 << 20  # step ids looked at per pass of the search for unknown next observations


def derived_names(source: RowSource) -> tuple[str, ...]:
    """The observation fields whose ``next_`` the pool behind ``source`` derives (none for an
    archive or a pool that stores them)."""
    keeping = source.store.bookkeeping if isinstance(source, PoolSource) else None
    return () if keeping is None else tuple(keeping.derived)


class NextObservations:
    """The derived ``next_<obs>`` of the rows of one pool source, at the source's snapshot."""

    def __init__(self, source: PoolSource):
        store = source.store
        self.path = source.path
        self.keeping = store.bookkeeping
        self.names: tuple[str, ...] = tuple(self.keeping.derived)
        self.first_step_id = source.first_step_id
        self.rows = len(source)
        self.high = source.first_step_id + len(source)
        self.kept = self.keeping.kept_now(store.commit_record)

    def unknown_rows(self) -> np.ndarray:
        """Logical indices of the rows whose next observation is not known: some episode ends."""
        unknown = []
        for first in range(0, self.rows, _STEP_SLICE):
            steps = self.first_step_id + np.arange(first, min(self.rows, first + _STEP_SLICE), dtype=np.int64)
            ends = steps[self.keeping.chains(steps, 2, self.high)[:, 1] < 0]
            if ends.size:
                _, known = self.keeping.next_values(ends, self.high, self.kept)
                unknown.append(ends[~known] - self.first_step_id)
        return np.concatenate(unknown) if unknown else np.zeros(0, np.int64)

    def of(self, steps: np.ndarray, rows: dict[str, np.ndarray],
           names: tuple[str, ...] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``next_<name>`` of rows ``steps`` (ascending; ``rows``: their rows, read already), and
        which are known; an unknown one is zeros (a ragged one: length 0).

        A row followed in its episode by the next row of ``steps`` takes that row's observation,
        already read and decoded; only the others (episode ends, the last row) are asked of the
        bookkeeping.
        """
        following = self.keeping.chains(steps, 2, self.high)[:, 1]
        inside = np.zeros(len(steps), bool)
        inside[:-1] = following[:-1] == steps[1:]
        rest = np.flatnonzero(~inside)
        known = np.ones(len(steps), bool)
        asked: dict[str, np.ndarray] = {}
        if rest.size:
            asked, known[rest] = self.keeping.next_values(steps[rest], self.high, self.kept)
        values: dict[str, np.ndarray] = {}
        for name in self.names if names is None else names:
            key = f"next_{name}"
            if length_key(name) in rows:  # ragged: rows padded to a width, with their lengths
                width = max(rows[name].shape[1], asked[key].shape[1] if key in asked else 0)
                values[key] = _shifted(_padded(rows[name], width), inside, rest,
                                       _padded(asked[key], width) if key in asked else None, known)
                values[length_key(key)] = _shifted(rows[length_key(name)], inside, rest, asked.get(length_key(key)),
                                                   known)
            else:
                values[key] = _shifted(rows[name], inside, rest, asked.get(key), known)
        return values, known


def _shifted(column: np.ndarray, inside: np.ndarray, rest: np.ndarray, asked: np.ndarray | None,
             known: np.ndarray) -> np.ndarray:
    """Each row's next value: the next row's where ``inside``, ``asked`` at ``rest``, zeros where unknown."""
    out = np.zeros_like(column)
    out[:-1][inside[:-1]] = column[1:][inside[:-1]]
    if asked is not None:
        out[rest] = asked
    out[~known] = 0
    return out


def _padded(values: np.ndarray, width: int) -> np.ndarray:
    """Ragged rows padded along axis 1 to ``width`` (they are never wider)."""
    if values.shape[1] >= width:
        return values
    return np.pad(values, [(0, 0), (0, width - values.shape[1])] + [(0, 0)] * (values.ndim - 2))
