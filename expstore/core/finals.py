"""The final-observation table of a pool that derives ``next_obs`` from the following row.

The observation after an episode's last row is the only one no row holds, so it is kept here.
The table is a ring in the order episodes end: the ``k``-th final observation kept goes to row
``k % rows``, and the owner column records ``k`` there; an episode's entry in the episode table
names its ``k`` (column 4). So the final observations of the newest ``rows`` episode ends are
kept, and an older episode that lost its row keeps its rows and entry but not its final
observation (its last row is then not sampled). A default of one row per 16 slots keeps every
final observation the window needs while episodes average 16 rows or more.

Readers check the owner after reading an observation, and the writer sets the owner before it
writes one: a row being rewritten never passes for the observation of its previous episode.

Pools created before the table had a size of its own (no owner column, a four-column episode
table) keep their layout: row ``episode_id % episode rows``, owned by the episode table's entry.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..backends.internal import FINAL_OWNER, FINAL_PREFIX, final_fields

FINAL_COLUMN = 4  # the episode table's column naming an episode's final observation (ring layout)


class FinalTable:
    """The final observations of one open pool (writer or reader)."""

    def __init__(self, views: Mapping[str, np.ndarray], episode_table: np.ndarray, written: int):
        self.names = final_fields(views)
        self.values = {name: views[FINAL_PREFIX + name] for name in self.names}
        self.owner = views.get(FINAL_OWNER)
        self.episode_table = episode_table
        self.rows = len(episode_table) if self.owner is None else len(self.owner)
        self.written = written  # final observations kept so far: the next one's number

    @property
    def is_ring(self) -> bool:
        return self.owner is not None

    def keep(self, ids: np.ndarray, last_steps: np.ndarray, finals: Mapping[str, np.ndarray],
             known: np.ndarray) -> np.ndarray:
        """Keep the final observations of the episodes ``ids`` that ended at ``last_steps``
        (``known``: the episode's entry is there to name it). Returns, per episode, the number
        its entry records (its final column in the ring layout), or -1 where none was kept."""
        owner = self.owner
        if owner is None:
            return self._keep_by_id(ids, finals, known)
        order = np.argsort(last_steps, kind="stable")  # the ring follows the order of the ends
        chosen = order[known[order]][-self.rows:]  # more ends than rows: only the newest fit
        numbers = self.written + np.arange(len(chosen), dtype=np.int64)
        self.written += len(chosen)
        rows = numbers % self.rows
        owner[rows] = numbers  # first: see the module docstring
        for name, table in self.values.items():
            table[rows] = finals[name][chosen]
        kept = np.full(len(ids), -1, np.int64)
        kept[chosen] = numbers
        return kept

    def _keep_by_id(self, ids: np.ndarray, finals: Mapping[str, np.ndarray], known: np.ndarray) -> np.ndarray:
        """The layout without an owner column: row ``id % rows``, owned by the table's entry."""
        rows = ids % self.rows
        keep = known & _newest_per_row(ids, rows) & (self.episode_table[rows, 0] == ids)
        for name, table in self.values.items():
            table[rows[keep]] = finals[name][keep]
        return np.where(keep, ids, -1)

    def read(self, ids: np.ndarray, entries: np.ndarray, stored: np.ndarray) -> tuple[dict, np.ndarray]:
        """The final observations of episodes ``ids`` (name -> values) and where they are held;
        ``entries``: their episode entries, ``stored``: whose entry says one was kept."""
        numbers = ids if self.owner is None else entries[:, FINAL_COLUMN]
        rows = numbers % self.rows
        values = {name: table[rows] for name, table in self.values.items()}
        owners = self.episode_table[rows, 0] if self.owner is None else self.owner[rows]
        return values, stored & (owners == numbers)  # the owners read after the values

    def clear(self) -> None:
        if self.owner is not None:
            self.owner[:] = 0
        self.written = 0


def _newest_per_row(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Which of ``ids`` is the newest of those that share its row."""
    if len(ids) <= 1:
        return np.ones(len(ids), bool)
    order = np.lexsort((ids, rows))
    last_of_row = np.append(rows[order][1:] != rows[order][:-1], True)
    newest = np.zeros(len(ids), bool)
    newest[order[last_of_row]] = True
    return newest
