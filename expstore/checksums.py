"""Per-chunk checksums, recorded at commit time for pools created with ``checksums=True``.

A chunk's checksum is written when its last row is committed, together with the step id of
its first row. Rows of a chunk that lies wholly inside the committed window are never
written again (the writer only writes slots that hold evicted steps), so such a checksum stays
valid until the ring evicts the chunk; one whose chunk is not wholly inside the window (older
than the tail, or completed by a commit a crash cut short) is simply not checked.

Table layout: int64 array (chunks, 2): first step id of the chunk's content (-1: none), crc32.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np

from .ring import Ring


def chunk_crc(views: Sequence[np.ndarray], first_slot: int, chunk_rows: int) -> int:
    """crc32 over every field's bytes of one chunk, fields in schema order."""
    crc = 0
    for view in views:
        crc = zlib.crc32(view[first_slot:first_slot + chunk_rows], crc)
    return crc


def record_completed(table: np.ndarray, views: Sequence[np.ndarray], ring: Ring, chunk_rows: int,
                     previous_head: int, head: int) -> None:
    """Write the checksum of every chunk whose last row lies in (previous_head, head]."""
    oldest = max(previous_head // chunk_rows, (head - ring.capacity) // chunk_rows)
    for first_step in range(max(oldest, 0) * chunk_rows, head - chunk_rows + 1, chunk_rows):
        first_slot = first_step % ring.slots
        table[first_slot // chunk_rows] = (first_step, chunk_crc(views, first_slot, chunk_rows))


def verify_table(table: np.ndarray, views: Sequence[np.ndarray], ring: Ring, chunk_rows: int,
                 window: Callable[[], tuple[int, int]], progress: Callable[[int], None] | None = None,
                 ) -> tuple[int, list[str]]:
    """Check every recorded chunk that lies wholly in the committed window.

    ``window`` is asked again after each mismatch, so a chunk the writer evicted meanwhile is
    not reported. Returns the number of chunks checked and the findings.
    """
    checked, findings = 0, []
    for chunk, (first_step, crc) in enumerate(np.array(table)):
        if progress is not None:
            progress(1)
        tail, head = window()
        if first_step < tail or first_step + chunk_rows > head:
            continue
        first_slot = int(first_step) % ring.slots
        if first_slot // chunk_rows != chunk:
            findings.append(f"checksum row {chunk} names step {first_step}, which belongs to another chunk")
            continue
        checked += 1
        if chunk_crc(views, first_slot, chunk_rows) != crc and window()[0] <= first_step:
            findings.append(f"chunk {chunk} (steps {first_step}..{first_step + chunk_rows - 1}) fails its checksum: "
                            "its rows changed after they were committed")
    return checked, findings
