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

A ragged observation's rows have no fixed shape, so its table holds heap entries instead (the
columns of schema.HEAP_INDEX_COLUMNS), pointing into a byte heap of its own: a circular log
written in the order of the ring, as the field's own heap is in the order of steps (core/heap.py).
Its values are kept raw, whatever the field's codec: a reader then checks an entry's size
against its length before it copies a byte. Before the writer's bytes reach those of an older
final observation, it takes that observation's owner away (-1): the reader's owner check then
catches a row whose bytes were replaced under it, as it catches a row of the ring replaced.

Pools created before the table had a size of its own (no owner column, a four-column episode
table) keep their layout: row ``episode_id % episode rows``, owned by the episode table's entry.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from ..backends.internal import FINAL_HEAP_PREFIX, FINAL_OWNER, FINAL_PREFIX, final_fields
from ..errors import SchemaError
from ..schema import Field, Schema
from .heap import NBYTES, NO_CRC, POSITION, place_in_heap

FINAL_COLUMN = 4  # the episode table's column naming an episode's final observation (ring layout)


class FinalTable:
    """The final observations of one open pool (writer or reader)."""

    def __init__(self, views: Mapping[str, np.ndarray], episode_table: np.ndarray, written: int, schema: Schema,
                 checksums: bool = False):
        self.names = final_fields(views)
        self.owner = views.get(FINAL_OWNER)
        self.episode_table = episode_table
        self.rows = len(episode_table) if self.owner is None else len(self.owner)
        self.written = written  # final observations kept so far: the next one's number
        ragged = [name for name in self.names if FINAL_HEAP_PREFIX + name in views]
        self.values = {name: views[FINAL_PREFIX + name] for name in self.names if name not in ragged}
        self.ragged = {name: RaggedFinals(name, schema[name], views[FINAL_PREFIX + name],
                                          views[FINAL_HEAP_PREFIX + name], views[FINAL_OWNER], checksums)
                       for name in ragged}

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
        for name, heap in self.ragged.items():
            heap.write(numbers, [finals[name][i] for i in chosen.tolist()])
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
        readable = stored.copy()
        for name, heap in self.ragged.items():
            values[name], ok = heap.read(rows, stored)
            readable &= ok
        owners = self.episode_table[rows, 0] if self.owner is None else self.owner[rows]
        return values, readable & (owners == numbers)  # the owners read after the values

    def check(self) -> tuple[int, list[str]]:
        """``verify``'s check of the ragged observations' final heaps: (final observations whose
        bytes matched a recorded crc32, findings)."""
        checked = 0
        findings: list[str] = []
        for heap in self.ragged.values():
            crcs, found = heap.check()
            checked, findings = checked + crcs, findings + found
        return checked, findings

    def clear(self) -> None:
        if self.owner is not None:
            self.owner[:] = 0
        self.written = 0
        for heap in self.ragged.values():
            heap.forget_position()


class RaggedFinals:
    """The final observations of one ragged observation field (see the module docstring)."""

    def __init__(self, name: str, field: Field, index: np.ndarray, heap: np.ndarray, owner: np.ndarray,
                 checksums: bool):
        self.name = name
        self.field = field
        self.index = index  # one heap entry per row of the ring
        self.heap = heap
        self.heap_nbytes = int(heap.shape[0])
        self.owner = owner
        self.checksums = checksums
        self._head: int | None = None  # the log position past the newest bytes: found at the first write
        self._oldest: int | None = None  # no older final observation keeps its bytes (the eviction's cursor)

    def check_fits(self, key: str, values: Sequence[np.ndarray]) -> None:
        """Refuse, before anything is written, a row no final observation of this heap could hold."""
        for row, value in enumerate(values):
            if value.nbytes > self.heap_nbytes:
                raise SchemaError(f"{key} row {row} holds {value.nbytes} bytes ({value.shape} {value.dtype}), more "
                                  f"than the {self.heap_nbytes}-byte heap that keeps the final observations of "
                                  f"{self.name!r}; create the pool with a larger heap_bytes or max_final_obs")

    def forget_position(self) -> None:
        self._head = self._oldest = None

    def write(self, numbers: np.ndarray, values: Sequence[np.ndarray]) -> None:
        """Write final observations ``values`` as ``numbers`` (ascending; their owners set already)."""
        if self._head is None:  # past every byte ever written, a crashed writer's uncommitted ones too
            self._head = int((self.index[:, POSITION] + self.index[:, NBYTES]).max(initial=0))
        for number, value in zip(numbers.tolist(), values, strict=True):
            data = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
            start = place_in_heap(self._head, len(data), self.heap_nbytes)
            self._evict(number, start + len(data) - self.heap_nbytes)
            offset = start % self.heap_nbytes
            self.heap[offset:offset + len(data)] = data
            crc = zlib.crc32(data.data) if self.checksums else NO_CRC
            self.index[number % len(self.index)] = (start, len(data), len(value), crc)
            self._head = start + len(data)

    def _evict(self, number: int, floor: int) -> None:
        """Take the owner from every final observation older than ``number`` whose bytes start
        below log position ``floor``: they are about to be written over."""
        rows = len(self.index)
        if self._oldest is None:  # the oldest that may still own its row, found once per writer
            candidates = np.arange(max(0, number - rows), number, dtype=np.int64)
            owned = np.flatnonzero(self.owner[candidates % rows] == candidates)
            self._oldest = int(candidates[owned[0]]) if len(owned) else number
        while self._oldest < number:
            row = self._oldest % rows
            if self.owner[row] == self._oldest:
                if self.index[row, POSITION] >= floor:
                    return
                self.owner[row] = -1
            self._oldest += 1

    def check(self) -> tuple[int, list[str]]:
        """Every owned final observation's entry against the heap, and its bytes against a
        recorded crc32: (crcs checked, findings). A row whose owner changes meanwhile (a writer
        replacing it) is not reported."""
        rows = np.arange(len(self.index), dtype=np.int64)
        owners = self.owner.copy()
        entries = self.index.copy()
        start, nbytes, length, crc = entries.T
        owned = (owners >= 0) & (owners % len(rows) == rows)
        offsets = start % self.heap_nbytes
        bad = owned & ((start < 0) | (length < 0) | (nbytes != length * self.field.item_nbytes)
                       | (offsets + nbytes > self.heap_nbytes))
        recorded = owned & ~bad & (crc != NO_CRC)
        for row in np.flatnonzero(recorded).tolist():
            if zlib.crc32(self.heap[offsets[row]:offsets[row] + nbytes[row]].data) != crc[row]:
                bad[row] = True
        bad &= self.owner == owners  # read again: a final observation replaced meanwhile is no damage
        findings = [] if not bad.any() else [
            f"field {self.name!r}: {int(bad.sum())} final observation(s) do not match their heap entry or crc32 "
            f"(the first: final observation {int(owners[bad][0])}); the last rows of their episodes are not "
            "sampled"]
        return int((recorded & ~bad).sum()), findings

    def read(self, rows: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The observations in ring ``rows`` where ``wanted`` (an object array of arrays, empty
        elsewhere), and which passed the checks of their entries; the caller checks the owners."""
        item_shape, dtype, item = self.field.item_shape, self.field.dtype, self.field.item_nbytes
        values = np.empty(len(rows), object)
        ok = np.zeros(len(rows), bool)
        empty = np.zeros((0, *item_shape), dtype)
        for position, (start, nbytes, length, _) in enumerate(self.index[rows].tolist()):
            offset = start % self.heap_nbytes
            values[position] = empty
            if (not wanted[position] or start < 0 or length < 0 or nbytes != length * item
                    or offset + nbytes > self.heap_nbytes):
                continue
            raw = self.heap[offset:offset + nbytes].tobytes()  # a copy: the writer may replace them later
            values[position] = np.frombuffer(raw, dtype).reshape(length, *item_shape)
            ok[position] = True
        return values, ok



def _newest_per_row(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Which of ``ids`` is the newest of those that share its row."""
    if len(ids) <= 1:
        return np.ones(len(ids), bool)
    order = np.lexsort((ids, rows))
    last_of_row = np.append(rows[order][1:] != rows[order][:-1], True)
    newest = np.zeros(len(ids), bool)
    newest[order[last_of_row]] = True
    return newest
