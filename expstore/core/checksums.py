"""Checksums of committed rows, recorded at commit time for pools created with ``checksums=True``.

Two records cover every committed row:

- The table, one row per chunk: the first step id of the chunk's content (-1: none) and a
  crc32 over the chunk's bytes of every field, fields in schema order (int64 array (chunks, 2)).
  The commit that completes a chunk writes it. Rows of a chunk inside the committed window are
  never written again (the writer only writes slots that hold evicted steps), so it stays
  valid until the ring evicts the chunk.
- The commit payload (``PAYLOAD_KEY``), for the two chunks the window covers only in part: per
  field, the crc32 of the committed rows of the head's chunk, and of the rows of the tail's
  chunk the window has already dropped. Each commit extends them by the rows it adds or evicts
  while those are still intact: the writer overwrites an evicted row only after the commit that
  evicts it, since at most ``slack`` rows are pending. Being part of the commit record, they are
  atomic with the window they describe, and a crash can tear neither.

``verify`` checks the head's chunk against its running crcs, and the tail's chunk against its
table crc, with the crc32 of its dropped rows joined to that of the rows still in the window
(crc32_combine: a crc of two byte strings from the crc of each). Each row is hashed once as it
is committed and once as it is evicted from a partly evicted chunk; a whole chunk's table crc
is joined from the running crcs, so rows never get hashed again at the chunk's completion.

Pools written before the payload held these crcs open as before; their writer starts them at
its first commit (the tail's chunk is then covered once the tail reaches the next chunk).
"""

from __future__ import annotations

import functools
import json
import logging
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .commit import MAX_PAYLOAD_NBYTES, CommitRecord
from .ring import Ring

logger = logging.getLogger("expstore.checksums")  # its name before the layered layout

PAYLOAD_KEY = "rows_crc"
# Each field adds 16 bytes (two crcs in hex) to every commit record's payload: a schema wider
# than this keeps whole-chunk checksums only, and leaves the payload room for the episodes.
MAX_FIELDS = 64
_NO_CHECKSUM = (-1, -1)
_ENTRY_OVERHEAD_NBYTES = 120  # the entry's keys, brackets and four step ids, at most
_STALE_RETRIES = 3

# ------------------------------------------------------------------ crc32 arithmetic
_POLY = 0xEDB88320  # zlib's crc32 polynomial, bit-reflected


def _multmodp(a: int, b: int) -> int:
    """a times b modulo the crc32 polynomial, as zlib's multmodp (crc32.c, zlib 1.2.12)."""
    product, bit = 0, 1 << 31
    while a and bit:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


def _x_powers() -> list[int]:
    """x ** (2 ** k) modulo the polynomial, k = 0..31 (zlib's x2n_table)."""
    powers = [1 << 30]
    while len(powers) < 32:
        powers.append(_multmodp(powers[-1], powers[-1]))
    return powers


_X_POWERS = _x_powers()


@functools.lru_cache(maxsize=4096)
def _shift_of(nbytes: int) -> int:
    """x ** (8 * nbytes) modulo the polynomial: what appending ``nbytes`` bytes does to a crc."""
    product, k = 1 << 31, 3
    while nbytes:
        if nbytes & 1:
            product = _multmodp(_X_POWERS[k & 31], product)
        nbytes >>= 1
        k += 1
    return product


def crc32_combine(crc_a: int, crc_b: int, nbytes_b: int) -> int:
    """zlib.crc32(a + b) from zlib.crc32(a), zlib.crc32(b) and len(b)."""
    return _multmodp(_shift_of(nbytes_b), crc_a) ^ crc_b


# ------------------------------------------------------------------ crcs of rows
def chunk_crc(views: Sequence[np.ndarray], first_slot: int, chunk_rows: int) -> int:
    """crc32 over every field's bytes of one chunk, fields in schema order."""
    crc = 0
    for view in views:
        crc = zlib.crc32(view[first_slot:first_slot + chunk_rows].data, crc)
    return crc


def field_crcs(views: Sequence[np.ndarray], first_slot: int, n_rows: int,
               start: Sequence[int] | None = None) -> list[int]:
    """Per field, the crc32 of ``n_rows`` rows from ``first_slot`` on, continuing ``start``."""
    start = start or (0,) * len(views)
    return [zlib.crc32(view[first_slot:first_slot + n_rows].data, crc)
            for view, crc in zip(views, start, strict=True)]


def _join_fields(views: Sequence[np.ndarray], crcs: Sequence[int], n_rows: int) -> int:
    """The crc32 of the fields' bytes of ``n_rows`` rows one after another, from each field's crc."""
    joined = crcs[0]
    for view, crc in zip(views[1:], crcs[1:], strict=True):
        joined = crc32_combine(joined, crc, n_rows * view.strides[0])
    return joined


def _join_rows(views: Sequence[np.ndarray], before: Sequence[int], after: Sequence[int], n_rows_after: int
               ) -> list[int]:
    """Per field, the crc32 of two runs of rows, one after the other, from the crc of each."""
    return [crc32_combine(a, b, n_rows_after * view.strides[0])
            for view, a, b in zip(views, before, after, strict=True)]


# ------------------------------------------------------------------ the payload's running crcs
@dataclass(frozen=True)
class Segment:
    """Per field, the crc32 of the rows from ``first_step`` up to the step a commit names."""

    first_step: int
    crcs: tuple[int, ...]

    def encode(self, end_step: int) -> list:
        return [end_step, self.first_step, struct.pack(f">{len(self.crcs)}I", *self.crcs).hex()]


def _decode_segment(value, end_step: int, chunk_rows: int, n_fields: int) -> Segment | None:
    """The segment of a payload entry that ends at ``end_step`` and lies in its chunk, or None."""
    try:
        at, first_step, hex_crcs = value
        raw = bytes.fromhex(hex_crcs)
    except (TypeError, ValueError):
        return None
    chunk_first = end_step - end_step % chunk_rows
    if type(at) is not int or at != end_step or type(first_step) is not int \
            or not chunk_first <= first_step <= end_step or len(raw) != 4 * n_fields:
        return None  # e.g. copied unchanged by an expstore that does not keep it: not this window's
    return Segment(first_step, struct.unpack(f">{n_fields}I", raw))


class _Entry(dict):
    """The payload entry as this process wrote it, its segments still at hand: the writer's next
    commit takes them from the record it committed last, without decoding them again."""

    __slots__ = ("segments",)
    segments: tuple[Segment | None, Segment | None]


def decode(payload: dict, record: CommitRecord, chunk_rows: int, n_fields: int
           ) -> tuple[Segment | None, Segment | None]:
    """The head's and the tail's segments of a commit record, None where it holds none."""
    entry = payload.get(PAYLOAD_KEY)
    if isinstance(entry, _Entry):
        return entry.segments
    if not isinstance(entry, dict):
        return None, None
    return (_decode_segment(entry.get("head"), record.head, chunk_rows, n_fields),
            _decode_segment(entry.get("tail"), record.tail, chunk_rows, n_fields))


# ------------------------------------------------------------------ at commit
def record_commit(table: np.ndarray, views: Sequence[np.ndarray], ring: Ring, chunk_rows: int,
                  previous: CommitRecord, head: int, tail: int, payload: dict) -> dict:
    """Checksum what a commit from ``previous`` to the window [tail, head) adds.

    Writes the table crc of every chunk it completes and returns ``payload`` with the running
    crcs of the new head's and tail's chunks. Call it before the commit record is written.
    """
    if len(views) > MAX_FIELDS or not _fits(payload, len(views)):
        record_completed(table, views, ring, chunk_rows, previous.head, head)
        return {key: value for key, value in payload.items() if key != PAYLOAD_KEY}
    head_segment, tail_segment = decode(previous.payload, previous, chunk_rows, len(views))
    # Rows from this step on hold the bytes they were committed with (or were never written):
    # every writer stays within `slack` rows of its last commit, and overwrites step s - slots.
    intact_from = max(head, previous.head + ring.slack) - ring.slots
    if head_segment is None:
        head_segment = _restart(views, ring, chunk_rows, previous.head, intact_from)
    if tail_segment is None:
        tail_segment = _restart(views, ring, chunk_rows, previous.tail, intact_from)
    head_segment = _advance_head(table, views, ring, chunk_rows, head_segment, previous.head, head)
    if head - previous.head > ring.slack:  # not a commit any writer makes; rows it evicts may be gone
        tail_segment = Segment(tail, (0,) * len(views))
    else:
        tail_segment = _advance_tail(views, ring, chunk_rows, tail_segment, previous.tail, tail)
    entry = _Entry(head=head_segment.encode(head), tail=tail_segment.encode(tail))
    entry.segments = (head_segment, tail_segment)
    return {**payload, PAYLOAD_KEY: entry}


def _fits(payload: dict, n_fields: int) -> bool:
    """Whether the running crcs fit in the commit record beside the rest of its payload (the
    episodes of many envs can fill it): if not, this commit checksums whole chunks only, and the
    running crcs start again at the first commit with room."""
    rest = {key: value for key, value in payload.items() if key != PAYLOAD_KEY}
    if len(json.dumps(rest, separators=(",", ":"))) + 16 * n_fields + _ENTRY_OVERHEAD_NBYTES <= MAX_PAYLOAD_NBYTES:
        return True
    _warn_payload_full(n_fields)
    return False


@functools.cache
def _warn_payload_full(n_fields: int) -> None:
    """Logged once per process and schema width, not at every commit."""
    logger.warning("the commit record's payload is too full for the running checksums of %d fields; until it "
                   "has room, the rows of the chunks the window covers in part have no checksum", n_fields)


def _restart(views, ring: Ring, chunk_rows: int, end_step: int, intact_from: int) -> Segment:
    """Running crcs for a commit record that holds none (a pool written by an older expstore, a
    new pool): from the first row of ``end_step``'s chunk whose bytes are still intact."""
    first_step = min(max(end_step - end_step % chunk_rows, intact_from), end_step)
    return Segment(first_step, tuple(field_crcs(views, first_step % ring.slots, end_step - first_step)))


def _advance_head(table, views, ring: Ring, chunk_rows: int, segment: Segment, previous_head: int,
                  head: int) -> Segment:
    """Extend the head's running crcs by the rows [previous_head, head), chunk by chunk; a
    chunk they complete gets its table row (none when its running crcs started late)."""
    step, first_step, crcs = previous_head, segment.first_step, list(segment.crcs)
    while step < head:
        chunk_end = step - step % chunk_rows + chunk_rows
        end = min(head, chunk_end)
        crcs = field_crcs(views, step % ring.slots, end - step, crcs)
        step = end
        if step == chunk_end:
            chunk_first = chunk_end - chunk_rows
            covered = first_step == chunk_first
            table[(chunk_first % ring.slots) // chunk_rows] = (
                (chunk_first, _join_fields(views, crcs, chunk_rows)) if covered else _NO_CHECKSUM)
            first_step, crcs = step, [0] * len(views)
    return Segment(first_step, tuple(crcs))


def _advance_tail(views, ring: Ring, chunk_rows: int, segment: Segment, previous_tail: int, tail: int) -> Segment:
    """Extend the crcs of the tail chunk's dropped rows by the rows this commit evicts; they
    are intact until a later commit (see the module docstring)."""
    if tail == previous_tail:
        return segment
    chunk_first = tail - tail % chunk_rows
    if chunk_first <= previous_tail:  # still the same chunk
        crcs = field_crcs(views, previous_tail % ring.slots, tail - previous_tail, segment.crcs)
        return Segment(segment.first_step, tuple(crcs))
    return Segment(chunk_first, tuple(field_crcs(views, chunk_first % ring.slots, tail - chunk_first)))


def record_completed(table: np.ndarray, views: Sequence[np.ndarray], ring: Ring, chunk_rows: int,
                     previous_head: int, head: int) -> None:
    """Whole chunks only (schemas wider than MAX_FIELDS): the table crc of every chunk whose
    last row lies in (previous_head, head], hashed now."""
    oldest = max(previous_head // chunk_rows, (head - ring.capacity) // chunk_rows)
    for first_step in range(max(oldest, 0) * chunk_rows, head - chunk_rows + 1, chunk_rows):
        first_slot = first_step % ring.slots
        table[first_slot // chunk_rows] = (first_step, chunk_crc(views, first_slot, chunk_rows))


# ------------------------------------------------------------------ verify
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


@dataclass
class PartialCheck:
    """What ``verify_partial`` found: partial chunks checked, findings, committed rows that no
    checksum covers (whole chunks included; 0 in a pool this version wrote)."""

    checked: int = 0
    findings: list[str] = field(default_factory=list)
    rows_unchecked: int = 0


def verify_partial(table: np.ndarray, views: Sequence[np.ndarray], ring: Ring, chunk_rows: int,
                   names: Sequence[str], committed: Callable[[], CommitRecord]) -> PartialCheck:
    """Check the committed rows of the chunks that hold the head and the tail of the window.

    ``committed`` gives the current commit record; a mismatch found while a writer committed
    meanwhile is checked again against the newer record (the writer may have evicted the rows).
    """
    for _ in range(_STALE_RETRIES):
        record = committed()
        result = _check_partial(table, views, ring, chunk_rows, names, record)
        if not result.findings or committed().seq == record.seq:
            return result
    return result


def _check_partial(table, views, ring: Ring, chunk_rows: int, names, record: CommitRecord) -> PartialCheck:
    tail, head = record.tail, record.head
    head_segment, tail_segment = decode(record.payload, record, chunk_rows, len(views))
    if len(views) > MAX_FIELDS:
        head_segment = tail_segment = None
    result = PartialCheck(rows_unchecked=_unrecorded_chunk_rows(table, ring, chunk_rows, tail, head))
    head_first, tail_first = head - head % chunk_rows, tail - tail % chunk_rows
    if tail == head:
        return result
    if head_first == tail_first:  # the window lies inside one chunk
        _check_one_chunk(views, ring, names, head_segment, tail_segment, record, result)
        return result
    if head % chunk_rows:
        _check_head(views, ring, names, head_segment, head_first, head, result)
    if tail % chunk_rows:
        _check_tail(table, views, ring, chunk_rows, tail_segment, tail, result)
    return result


def _unrecorded_chunk_rows(table, ring: Ring, chunk_rows: int, tail: int, head: int) -> int:
    """Rows of the chunks wholly inside [tail, head) whose table row does not name them."""
    firsts = np.arange(-(-tail // chunk_rows) * chunk_rows, head - chunk_rows + 1, chunk_rows, dtype=np.int64)
    recorded = np.asarray(table)[(firsts % ring.slots) // chunk_rows, 0]
    return int(np.count_nonzero(recorded != firsts)) * chunk_rows


def _check_head(views, ring: Ring, names, segment: Segment | None, head_first: int, head: int,
                result: PartialCheck) -> None:
    if segment is None:
        result.rows_unchecked += head - head_first
        return
    result.rows_unchecked += segment.first_step - head_first
    result.checked += 1
    found = field_crcs(views, segment.first_step % ring.slots, head - segment.first_step)
    for name, crc, recorded in zip(names, found, segment.crcs, strict=True):
        if crc != recorded:
            result.findings.append(f"field {name!r} of steps {segment.first_step}..{head - 1} (the head's chunk) "
                                   "fails its checksum: its rows changed after they were committed")


def _check_tail(table, views, ring: Ring, chunk_rows: int, segment: Segment | None, tail: int,
                result: PartialCheck) -> None:
    chunk_first = tail - tail % chunk_rows
    chunk_end = chunk_first + chunk_rows
    recorded_first, recorded_crc = (int(v) for v in table[(chunk_first % ring.slots) // chunk_rows])
    if segment is None or segment.first_step != chunk_first or recorded_first != chunk_first:
        result.rows_unchecked += chunk_end - tail
        return
    result.checked += 1
    live = field_crcs(views, tail % ring.slots, chunk_end - tail)
    if _join_fields(views, _join_rows(views, segment.crcs, live, chunk_end - tail), chunk_rows) != recorded_crc:
        result.findings.append(f"steps {tail}..{chunk_end - 1} (the tail's chunk) fail their chunk's checksum: "
                               "their rows changed after they were committed")


def _check_one_chunk(views, ring: Ring, names, head_segment: Segment | None, tail_segment: Segment | None,
                     record: CommitRecord, result: PartialCheck) -> None:
    """A window inside one chunk: the head's running crcs cover the rows the tail's dropped and
    the rows still in the window, one after the other."""
    tail, head = record.tail, record.head
    if head_segment is None or tail_segment is None or head_segment.first_step != tail_segment.first_step:
        result.rows_unchecked += head - tail
        return
    result.checked += 1
    live = field_crcs(views, tail % ring.slots, head - tail)
    joined = _join_rows(views, tail_segment.crcs, live, head - tail)
    for name, crc, recorded in zip(names, joined, head_segment.crcs, strict=True):
        if crc != recorded:
            result.findings.append(f"field {name!r} of steps {tail}..{head - 1} (a window inside one chunk) "
                                   "fails its checksum: its rows changed after they were committed")
