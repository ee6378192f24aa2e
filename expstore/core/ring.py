"""Step-id and slot arithmetic of the ring. Pure: integers and arrays in, no I/O.

A step id is global and only grows; the slot of step ``s`` is ``s % slots``. The ring has
``slots = capacity + slack`` rows so that a writer can fill up to ``slack`` rows past the
committed head without touching a committed row (those slots hold steps older than the tail).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ring:
    capacity: int
    slots: int

    @property
    def slack(self) -> int:
        return self.slots - self.capacity

    def slots_of(self, step_ids: np.ndarray) -> np.ndarray:
        return np.remainder(step_ids, self.slots)

    def runs(self, first_step: int, count: int) -> list[tuple[int, int, int]]:
        """Split ``count`` consecutive steps into (offset, slot, length) runs that do not wrap."""
        runs = []
        offset = 0
        while offset < count:
            slot = (first_step + offset) % self.slots
            length = min(count - offset, self.slots - slot)
            runs.append((offset, slot, length))
            offset += length
        return runs

    def tail_for(self, head: int, previous_tail: int = 0) -> int:
        """The oldest step still in the window once ``head`` steps were appended."""
        return max(previous_tail, head - self.capacity)


def plan_slots(capacity: int, slack: int, chunk_rows: int) -> int:
    """Row count of the on-disk arrays: capacity + slack, rounded up to whole chunks."""
    rows = capacity + slack
    return -(-rows // chunk_rows) * chunk_rows


def default_chunk_rows(max_row_nbytes: int, rows: int, target_nbytes: int = 1 << 20) -> int:
    """A power of two near ``target_nbytes`` per chunk for the widest field, at most ``rows``."""
    by_size = max(1, target_nbytes // max(1, max_row_nbytes))
    limit = max(1, min(by_size, rows))
    return 1 << (limit.bit_length() - 1)
