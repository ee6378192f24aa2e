"""How heap fields are checked: a commit record's heap positions, and the scan of the rows.

Readers check each commit record's heap positions when they take it up (``parse_positions``).
``verify`` scans every row of the window (``check_rows``): each index entry on its own and
against its neighbours, then the row's bytes against its crc32 and, for a codec field, decoded
to its length. ``repair`` rebuilds a commit record's positions from the same scan of the index
entries alone (``positions_from_index``): one reading of which rows lie one after the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..codecs import BatchDecoder, Codec
from ..errors import COPY_THE_REST_ADVICE, REBUILD_POSITIONS_ADVICE, RESTORE_LENGTH_ADVICE, CorruptStoreError
from ..schema import Field

PAYLOAD_KEY = "heap"
POSITION, NBYTES, LENGTH, CRC = range(4)  # the index columns (schema.HEAP_INDEX_COLUMNS)
NO_CRC = -1
# Commit positions and lengths stay below this, so that the checks' sums of them fit int64.
_POSITION_LIMIT = 1 << 62
_BLOCK_ROWS = 1 << 12  # rows scanned at a time: their entries, and a codec field's rows decoded, are held at once
# verify decodes at most this many bytes of rows in one call (they are held at once).
_VERIFY_DECODE_NBYTES = 32 << 20
LISTED_STEPS = 5  # a finding or report names this many of the steps it is about


def listed_steps(first: Sequence[int], count: int) -> str:
    """The ``first`` few of ``count`` steps, as a finding lists them: ``7, 9, 12, ...``."""
    return ", ".join(map(str, first)) + (", ..." if count > len(first) else "")


def clipped(value: Any) -> str:
    """``repr(value)``, cut short where a damaged record holds something long."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_positions(name: str, entry: Any, heap_nbytes: int) -> tuple[int, int, int]:
    """A heap field's entry of a commit record's payload, checked: its tail position, head
    position and longest row. A missing entry (None) is that of a pool with no rows yet.
    Raises CorruptStoreError naming the field for anything a commit never writes."""
    if entry is None:
        return 0, 0, 0
    if isinstance(entry, (list, tuple)) and len(entry) == 3 \
            and all(type(n) is int and 0 <= n < _POSITION_LIMIT for n in entry):
        tail_position, head_position, max_length = entry
        if tail_position <= head_position <= tail_position + heap_nbytes:
            return tail_position, head_position, max_length
    raise CorruptStoreError(
        f"field {name!r}: the commit record's heap positions are {clipped(entry)}, not [tail position, head "
        f"position, longest row] with 0 <= tail <= head <= tail + {heap_nbytes} (the heap's size); the record is "
        f"damaged: {REBUILD_POSITIONS_ADVICE}")


def parse_payload_positions(payload: Mapping, heap_nbytes: Mapping[str, int]) -> dict[str, tuple[int, int, int]]:
    """Every heap field's checked entry (``parse_positions``) of a commit ``payload``; entries of
    fields the schema does not hold are ignored."""
    entries = payload.get(PAYLOAD_KEY, {})
    if not isinstance(entries, Mapping):
        raise CorruptStoreError(f"the commit record's heap positions are {clipped(entries)}, not a mapping of "
                                f"field names; the record is damaged: {REBUILD_POSITIONS_ADVICE}")
    return {name: parse_positions(name, entries.get(name), nbytes) for name, nbytes in heap_nbytes.items()}


def follows(previous_end: np.ndarray, nbytes: np.ndarray, heap_nbytes: int) -> np.ndarray:
    """Where rows of ``nbytes`` start when written right after rows ending at ``previous_end``
    (heap.place_in_heap of whole arrays): the writer leaves no gap but at the heap's end."""
    offset = previous_end % heap_nbytes
    return np.where(offset + nbytes <= heap_nbytes, previous_end, previous_end + heap_nbytes - offset)


def entries_bad(field: Field, heap_nbytes: int, start: np.ndarray, nbytes: np.ndarray, lengths: np.ndarray
                ) -> np.ndarray:
    """Which index entries of a heap field no row could have, whatever their neighbours."""
    bad = (start < 0) | (start >= _POSITION_LIMIT) | (nbytes < 0) | (nbytes > heap_nbytes)
    bad |= start % heap_nbytes + np.clip(nbytes, 0, heap_nbytes) > heap_nbytes
    bad |= (lengths < 0) | (lengths >= _POSITION_LIMIT) if field.ragged else lengths != 1
    if field.codec is None:
        bad |= nbytes != lengths * field.item_nbytes
    return bad


@dataclass
class Steps:
    """Steps a finding is about: how many, and the first few."""

    count: int = 0
    first: list[int] = dataclasses.field(default_factory=list)

    def add(self, steps: np.ndarray) -> None:
        self.count += len(steps)
        self.first += steps[:LISTED_STEPS - len(self.first)].tolist()

    def describe(self) -> str:
        listed = listed_steps(self.first, self.count)
        return f"1 row (step {listed})" if self.count == 1 else f"{self.count} rows (steps {listed})"


@dataclass
class IndexScan:
    """What the scan of a heap field's index entries found so far, block by block (``add``).

    The writer starts each row where the one before it ends, so an entry that fits neither
    neighbour is the damaged one, and a copied entry is found at the step it was copied to.
    The oldest row is held against the commit's tail position and the newest against its head
    position where they are known (``verify``); ``repair`` scans without them, to rebuild them.
    """

    field: Field
    heap_nbytes: int
    previous_end: int | None = None  # where the row before the next block ends: at first, the commit's tail position
    head_position: int | None = None  # the commit's: where the newest row ends
    max_length: int | None = None  # the commit's longest row
    at_oldest: bool = True
    previous_alone_bad: bool = False
    previous_damaged: bool = False
    damaged: Steps = dataclasses.field(default_factory=Steps)
    unmatched_pairs: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # the first LISTED_STEPS of them
    unmatched_count: int = 0
    commit_mismatch: bool = False
    # The heap positions the intact index entries span: the oldest's start, the newest's end.
    tail_position_seen: int | None = None
    head_position_seen: int = 0
    max_length_seen: int = 0

    def add(self, steps: np.ndarray, entries: np.ndarray, rows: int) -> np.ndarray:
        """Scan the index ``entries`` of ``steps``: the block's first ``rows``, and the entry of
        the step after them where the window holds one (whether the last row fits the next).
        Returns which of the block's rows have intact entries."""
        start, nbytes, lengths = entries[:, POSITION], entries[:, NBYTES], entries[:, LENGTH]
        alone_bad = entries_bad(self.field, self.heap_nbytes, start, nbytes, lengths)
        start, nbytes = np.where(alone_bad, 0, start), np.where(alone_bad, 0, nbytes)  # no overflow below
        ends = start + nbytes
        previous = int(start[0]) if self.previous_end is None else self.previous_end
        previous_ends = np.concatenate([[previous], ends[:-1]])
        # Whether each row starts where the writer would have put it after the row before.
        joint_bad = (start != follows(previous_ends, nbytes, self.heap_nbytes)) | alone_bad \
            | np.concatenate([[self.previous_alone_bad], alone_bad[:-1]])
        newest = len(steps) == rows  # the block ends the window
        after_bad = joint_bad[1:] if not newest else \
            np.append(joint_bad[1:], self.head_position is not None and ends[-1] != self.head_position)
        damaged = alone_bad[:rows] | (joint_bad[:rows] & after_bad)
        before_damaged = np.concatenate([[self.previous_damaged], damaged[:-1]])
        unmatched = joint_bad[:rows] & ~damaged & ~before_damaged  # two intact-looking neighbours that do not fit
        if self.at_oldest and unmatched[0]:  # the oldest row against the commit's tail position
            self.commit_mismatch = True
            unmatched[0] = False
        if newest and after_bad[-1] and not damaged[-1]:  # the newest row against its head position
            self.commit_mismatch = True
        self.damaged.add(steps[:rows][damaged])
        room = LISTED_STEPS - len(self.unmatched_pairs)
        self.unmatched_pairs += [(step - 1, step) for step in steps[:rows][unmatched][:room].tolist()]
        self.unmatched_count += int(unmatched.sum())
        intact = ~damaged
        self._observe(intact, start[:rows], ends[:rows], lengths[:rows])
        self.previous_end, self.previous_alone_bad = int(ends[rows - 1]), bool(alone_bad[rows - 1])
        self.previous_damaged, self.at_oldest = bool(damaged[-1]), False
        return intact

    def _observe(self, intact: np.ndarray, start: np.ndarray, ends: np.ndarray, lengths: np.ndarray) -> None:
        if not intact.any():
            return
        longest = int(lengths[intact].max())
        if self.field.ragged and self.max_length is not None and longest > self.max_length:
            self.commit_mismatch = True
        if self.tail_position_seen is None:
            self.tail_position_seen = int(start[intact][0])
        self.head_position_seen = int(ends[intact][-1])
        self.max_length_seen = max(self.max_length_seen, longest)


def index_blocks(index: np.ndarray, slots: int, tail: int, head: int, block_rows: int = _BLOCK_ROWS
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """The window [tail, head) in blocks for ``IndexScan.add``: (steps, their index entries,
    rows of the block), each with the entry of the step after the block where there is one."""
    for first in range(tail, head, block_rows):
        stop = min(head, first + block_rows)
        steps = np.arange(first, min(head, stop + 1), dtype=np.int64)
        yield steps, np.asarray(index[steps % slots]), stop - first


def positions_from_index(field: Field, index: np.ndarray, slots: int, tail: int, head: int, heap_nbytes: int
                         ) -> list[int] | None:
    """The heap entry a commit of window [tail, head) holds, rebuilt from the window's index
    entries (``repair``): the oldest row's start, the newest row's end, the longest row. None
    when the entries do not lie one after the other as the writer places rows: then they are
    damaged, and nothing trustworthy is left to rebuild from."""
    if head <= tail:
        return [0, 0, 0]
    scan = IndexScan(field, heap_nbytes)
    for steps, entries, rows in index_blocks(index, slots, tail, head):
        scan.add(steps, entries, rows)
    if scan.damaged.count or scan.unmatched_count or scan.tail_position_seen is None \
            or scan.head_position_seen - scan.tail_position_seen > heap_nbytes:
        return None
    return [scan.tail_position_seen, scan.head_position_seen, scan.max_length_seen]


class CheckedHeap(Protocol):
    """What ``check_rows`` reads of a heap field (core/heap.py HeapField)."""

    @property
    def name(self) -> str: ...
    @property
    def field(self) -> Field: ...
    @property
    def index(self) -> np.ndarray: ...
    @property
    def heap(self) -> np.ndarray: ...
    @property
    def heap_nbytes(self) -> int: ...
    @property
    def slots(self) -> int: ...
    @property
    def codec(self) -> Codec | None: ...
    @property
    def batch_decoder(self) -> BatchDecoder | None: ...

    def check_crcs(self, slots: np.ndarray) -> np.ndarray: ...

    def dictionary_length_lost(self) -> bool: ...


@dataclass
class _BytesFound:
    """What the check of the rows' bytes found so far."""

    crc_checked: int = 0
    crc_failed: Steps = dataclasses.field(default_factory=Steps)
    undecodable: Steps = dataclasses.field(default_factory=Steps)


def check_rows(heap: CheckedHeap, tail: int, head: int, positions: Sequence[int],
               progress: Callable[[int], None] | None = None) -> tuple[int, list[str]]:
    """Verify the rows of [tail, head) (``verify``) against the commit's heap ``positions``
    (checked: parse_positions): each index entry (``IndexScan``), every row of a codec field
    decoded to its length, and rows with a recorded crc32 against it. Returns (rows whose
    bytes were checked against a crc, findings). ``progress`` is called with 1 per block."""
    tail_position, head_position, max_length = (int(n) for n in positions)
    scan = IndexScan(heap.field, heap.heap_nbytes, tail_position, head_position, max_length)
    found = _BytesFound()
    for steps, entries, rows in index_blocks(heap.index, heap.slots, tail, head):
        intact = scan.add(steps, entries, rows)
        _check_bytes(heap, found, steps[:rows], entries[:rows], intact)
        if progress is not None:
            progress(1)
    return found.crc_checked, _findings(heap, scan, found, tail, head, positions)


def _check_bytes(heap: CheckedHeap, found: _BytesFound, steps: np.ndarray, entries: np.ndarray,
                 intact: np.ndarray) -> None:
    """The bytes of the rows with ``intact`` index entries: against a recorded crc32, and decoded."""
    recorded = intact & (entries[:, CRC] != NO_CRC)
    mismatch = heap.check_crcs(steps[recorded] % heap.slots)
    found.crc_checked += int(recorded.sum())
    found.crc_failed.add(steps[recorded][mismatch])
    if heap.codec is not None:  # rows whose crc32 failed are reported as such, not decoded
        decodable = intact.copy()
        decodable[np.flatnonzero(recorded)[mismatch]] = False
        offsets = entries[:, POSITION] % heap.heap_nbytes
        found.undecodable.add(steps[_undecodable(heap, np.flatnonzero(decodable), offsets, entries[:, NBYTES],
                                                 entries[:, LENGTH])])


def _undecodable(heap: CheckedHeap, rows: np.ndarray, offsets: np.ndarray, nbytes: np.ndarray,
                 lengths: np.ndarray) -> np.ndarray:
    """Which of ``rows`` do not decode to their length. Where the codec decodes batches: in
    calls of up to _VERIFY_DECODE_NBYTES of rows, and row by row only within a call that fails."""
    if heap.batch_decoder is None:
        return _undecodable_one_by_one(heap, rows, offsets, nbytes, lengths)
    item_nbytes = heap.field.item_nbytes
    per_call = max(1, _VERIFY_DECODE_NBYTES // max(1, item_nbytes))
    failed = []
    for first in range(0, len(rows), per_call):
        part = rows[first:first + per_call]
        try:
            heap.batch_decoder.decode_rows(heap.heap, offsets[part], nbytes[part], item_nbytes, 0)
        except ValueError:  # some row fails: find which
            failed.append(_undecodable_one_by_one(heap, part, offsets, nbytes, lengths))
    return np.concatenate(failed) if failed else np.zeros(0, np.int64)


def _undecodable_one_by_one(heap: CheckedHeap, rows: np.ndarray, offsets: np.ndarray, nbytes: np.ndarray,
                            lengths: np.ndarray) -> np.ndarray:
    if heap.codec is None:
        return np.zeros(0, np.int64)
    failed = []
    decode, item, data = heap.codec.decode, heap.field.item_nbytes, heap.heap
    for row, offset, size, length in zip(rows.tolist(), offsets[rows].tolist(), nbytes[rows].tolist(),
                                         lengths[rows].tolist(), strict=True):
        expected = length * item
        # An empty row stores no bytes; a length of more than 512 MiB is damage (no allocation for it).
        if expected == 0 or expected > _VERIFY_DECODE_NBYTES << 4:
            if size or expected:
                failed.append(row)
            continue
        try:
            raw = decode(data[offset:offset + size].data, expected)
        except Exception:  # any codec's error: the bytes do not decode
            failed.append(row)
            continue
        if memoryview(raw).nbytes != expected:
            failed.append(row)
    return np.asarray(failed, np.int64)


def _findings(heap: CheckedHeap, scan: IndexScan, found: _BytesFound, tail: int, head: int,
              positions: Sequence[int]) -> list[str]:
    where = f"field {heap.name!r}"
    findings = []
    if scan.damaged.count:
        findings.append(f"{where}: the heap index entries of {scan.damaged.describe()} are damaged: those rows "
                        f"cannot be read, or read as another step's row; {COPY_THE_REST_ADVICE}, leaving them out")
    if scan.unmatched_count:
        pairs = ", ".join(f"{a} and {b}" for a, b in scan.unmatched_pairs)
        more = ", ..." if scan.unmatched_count > len(scan.unmatched_pairs) else ""
        findings.append(f"{where}: {scan.unmatched_count} pair(s) of neighbouring heap index entries do not "
                        f"fit together (steps {pairs}{more}): one entry of each pair is damaged; "
                        f"{COPY_THE_REST_ADVICE}, leaving out the rows that do not read")
    if scan.commit_mismatch and scan.tail_position_seen is not None:
        seen = (scan.tail_position_seen, scan.head_position_seen, scan.max_length_seen)
        findings.append(f"{where}: the commit record's heap positions (tail {positions[0]}, head {positions[1]}, "
                        f"longest row {positions[2]}) do not match the index entries of steps {tail}..{head - 1} "
                        f"(tail {seen[0]}, head {seen[1]}, longest row {seen[2]}), so reads of its rows fail; "
                        f"{REBUILD_POSITIONS_ADVICE}")
    if found.crc_failed.count:
        findings.append(f"{where}: the heap bytes of {found.crc_failed.describe()} changed since their commit "
                        f"(they fail their crc32); {COPY_THE_REST_ADVICE}, leaving them out")
    if found.undecodable.count and heap.dictionary_length_lost():
        findings.append(f"{where}: the zstd dictionary's length is 0 beside a recorded crc32, and the heap bytes "
                        f"of {found.undecodable.describe()} do not decode without it: its length was lost; "
                        f"{RESTORE_LENGTH_ADVICE}")
    elif found.undecodable.count:
        findings.append(f"{where}: the heap bytes of {found.undecodable.describe()} do not decode "
                        f"({heap.field.codec}) to their length: those rows are damaged and cannot be read; "
                        f"{COPY_THE_REST_ADVICE}, leaving them out")
    return findings
