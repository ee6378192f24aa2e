"""The next observations a Minari export needs, from a pool that derives them.

A Minari episode stores T+1 observations: the reset one, then one per step, the last being the
observation after the final step. A pool created with ``derive_next_obs=True`` (the layout for
compressed frames) stores no ``next_obs`` field: a row's next observation is the next row's of
its episode, and each episode's final one is kept aside (core/finals.py). ``with_next_obs``
presents such a pool as a row source that has a ``next_obs`` field, read the way sampling reads
it, so the export writes every episode whole.

A row whose next observation the pool does not know (the newest row of an open episode, a row
cut off by a writer that died, an episode whose final observation was evicted) is not a whole
transition: sampling never returns it, and the export leaves it out, with a warning. The reading
itself is derived_next.py's, which the Parquet export shares.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import SchemaError, StepNotFoundError
from ..inspect.streaming import PoolSource, RowSource
from ..schema import Schema
from .derived_next import NextObservations, derived_names

logger = logging.getLogger(__name__)


def with_next_obs(source: RowSource, what: str) -> RowSource:
    """``source`` itself when it stores ``next_obs``; else a source that adds the derived one.

    Raises:
        SchemaError: the pool neither stores nor derives ``next_obs``.
    """
    if "next_obs" in source.schema:
        return source
    if not isinstance(source, PoolSource) or "obs" not in derived_names(source):
        raise SchemaError(f"{source.path} neither stores nor derives next_obs (it stores {list(source.schema)}); "
                          f"{what} holds each episode's observation after its last step: export a pool with a "
                          "next_obs field, or one created with derive_next_obs=True")
    return DerivedNextObs(source)


class DerivedNextObs:
    """A pool that derives ``next_obs``, as a row source with a ``next_obs`` field (same field
    as ``obs``, codec included), less the rows whose next observation is not known."""

    # Not "pool": a "pool" source has a pool's ``meta`` (convert copies its layout from it) and
    # rows that are consecutive steps; this one has no ``meta`` and may leave rows out.
    kind = "pool with derived next_obs"

    def __init__(self, source: PoolSource):
        self._source = source
        self._next = NextObservations(source)
        self.path, self.attrs, self.capacity = source.path, source.attrs, source.capacity
        self.chunk_rows, self.first_step_id = source.chunk_rows, source.first_step_id
        self.book = source.book  # with step_ids: each row's episode (episode_tags.py)
        fields = dict(source.schema.items())
        self.schema = Schema({**fields, "next_obs": fields["obs"]})
        unknown = self._next.unknown_rows()
        self._rows = None if not unknown.size else np.setdiff1d(np.arange(len(source), dtype=np.int64), unknown)
        if unknown.size:
            logger.warning("%s: %d rows whose next observation the pool does not know (the newest row of an open "
                           "or cut-off episode, or one whose final observation was evicted) are left out of the "
                           "export, as sampling leaves them out", self.path, unknown.size)

    def __len__(self) -> int:
        return len(self._source) if self._rows is None else len(self._rows)

    def step_ids(self, start: int, stop: int) -> np.ndarray:
        """The step ids of rows ``[start, stop)`` of this source's order."""
        indices = np.arange(start, stop, dtype=np.int64) if self._rows is None else self._rows[start:stop]
        return self.first_step_id + indices

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``[start, stop)`` of this source's order, with ``next_obs``."""
        if self._rows is None:
            indices = np.arange(start, stop, dtype=np.int64)
            rows = self._source.read(start, stop)
        else:
            indices = self._rows[start:stop]
            lo = int(indices[0]) if indices.size else 0
            rows = self._source.read(lo, int(indices[-1]) + 1 if indices.size else 0)
            if len(indices) != len(rows["obs"]):
                rows = {name: values[indices - lo] for name, values in rows.items()}
        steps = self.first_step_id + indices
        values, known = self._next.of(steps, rows, ("obs",))
        if not known.all():
            raise StepNotFoundError(f"{self.path}: the final observation of step {int(steps[~known][0])} was evicted "
                                    "by a writer during the export; export again, or copy the pool (expstore "
                                    "convert) and export the copy")
        rows["next_obs"] = values["next_obs"]
        return rows

    def close(self) -> None:
        self._source.close()
