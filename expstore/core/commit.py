"""The commit record: which steps are committed, double-buffered with a checksum.

Two fixed-size slots live inside the pool (the LMDB meta-page pattern). A commit writes the
older slot, so a write torn by a crash or a power cut damages only that slot: its checksum
fails and readers take the other one. Record ``seq`` goes to slot ``seq % 2``.

Slot layout (little-endian): magic ``EXPC``, format u32, seq u64, head u64, tail u64,
commit time f64 (unix seconds), payload length u32, payload (JSON), crc32 of all before it.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field

from ..backends.base import SLOT_NBYTES
from ..errors import CorruptStoreError

MAGIC = b"EXPC"
RECORD_FORMAT = 1
_HEADER = struct.Struct("<4sIQQQdI")
_CRC = struct.Struct("<I")
MAX_PAYLOAD_NBYTES = SLOT_NBYTES - _HEADER.size - _CRC.size
SEQ_OFFSET = 8  # byte offset of seq inside a slot, for cheap "anything new?" polls


@dataclass(frozen=True)
class CommitRecord:
    seq: int
    head: int
    tail: int
    time_unix: float
    payload: dict = field(default_factory=dict)

    @property
    def slot_index(self) -> int:
        return self.seq % 2

    def encode(self) -> bytes:
        body = json.dumps(self.payload, separators=(",", ":"), sort_keys=True).encode()
        if len(body) > MAX_PAYLOAD_NBYTES:
            raise ValueError(f"commit payload of {len(body)} bytes exceeds {MAX_PAYLOAD_NBYTES}")
        header = _HEADER.pack(MAGIC, RECORD_FORMAT, self.seq, self.head, self.tail, self.time_unix, len(body))
        record = header + body
        return (record + _CRC.pack(zlib.crc32(record))).ljust(SLOT_NBYTES, b"\0")



def decode(slot: bytes) -> CommitRecord | None:
    """The record in one slot, or None when the slot is torn, zeroed or garbage."""
    if len(slot) < _HEADER.size + _CRC.size:
        return None
    magic, fmt, seq, head, tail, time_unix, payload_len = _HEADER.unpack_from(slot)
    if magic != MAGIC or fmt != RECORD_FORMAT or payload_len > MAX_PAYLOAD_NBYTES:
        return None
    end = _HEADER.size + payload_len
    if len(slot) < end + _CRC.size:
        return None
    (crc,) = _CRC.unpack_from(slot, end)
    if crc != zlib.crc32(slot[:end]) or tail > head:
        return None
    try:
        payload = json.loads(slot[_HEADER.size:end])
    except ValueError:
        return None
    return CommitRecord(seq, head, tail, time_unix, payload)


def newest(slots: bytes) -> tuple[CommitRecord, bool]:
    """The newest valid record of the two slots, and whether one slot was damaged.

    A healthy pool always has two valid slots (creation writes both), so a damaged one means
    a commit was torn by a crash, or is being written right now by another process.
    Raises CorruptStoreError when neither slot holds a valid record.
    """
    records = [decode(slots[:SLOT_NBYTES]), decode(slots[SLOT_NBYTES:2 * SLOT_NBYTES])]
    valid = [r for r in records if r is not None]
    if not valid:
        raise CorruptStoreError(
            "both commit slots are damaged, so the committed window is unknown; "
            "run `expstore verify PATH` for details and `expstore repair PATH` to recover"
        )
    return max(valid, key=lambda r: r.seq), len(valid) == 1


def initial_slots(first_step_id: int = 0) -> bytes:
    """Both slots of a new, empty pool: seq 0 and seq 1, each with an empty window that
    starts at ``first_step_id`` (0, except for a copy that keeps its source's step ids)."""
    empty = (first_step_id, first_step_id, 0.0)
    return CommitRecord(0, *empty).encode() + CommitRecord(1, *empty).encode()
