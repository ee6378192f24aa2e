"""Heap fields: rows of their own size (ragged, or compressed by a codec) in a byte heap.

Each heap field has a preallocated uint8 array, ``_heap_<name>``, used as a circular log, and
its own field array holds one index entry per slot (schema.HEAP_INDEX_COLUMNS): the row's heap
*position*, its stored bytes, its length along the leading dimension and a crc32 of its bytes
(-1 in pools without checksums). Positions only grow, like step ids: a row's bytes lie at
``position % heap_nbytes`` and never wrap past the heap's end (a row that would is placed at
the heap's start instead), so each row is one contiguous byte range a plain reader can slice.

Crash safety is the ring's slack rule applied to bytes (DESIGN.md section 10): the writer only
writes bytes that no committed row uses. Before a row's bytes would reach the bytes of the
oldest committed row, the Store commits first with a tail past the rows those bytes belong to
(``floors``), evicting a sixteenth of the heap more than needed so that such commits stay rare.
The window is therefore bounded by both ``capacity`` and the heaps. Each commit record carries
every heap's positions (``PAYLOAD_KEY``: tail position, head position, longest row), and
readers check each index entry against them: a row the writer overwrote during a gather is
either caught by the re-read of the window, or fails these checks and is then proven stale by
it; one that fails them while still in the window is damage (CorruptStoreError). The checks of
commit positions and index entries, and ``verify``'s scan of the rows, are in heap_check.py.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codecs import BatchDecoder, Codec, batch_decoder, get_codec
from ..codecs.registry import uses_dictionary, with_dictionary
from ..errors import CorruptStoreError, SchemaError
from ..schema import Field
from .allocator import keeps_large_blocks
from .casting import as_rows, cast_to, to_numpy
from .coldread import prefetch_byte_ranges
from .heap_check import (
    LENGTH,
    NBYTES,
    NO_CRC,
    POSITION,
    check_rows,
    parse_positions,
)
from .heap_dictionary import HeapDictionary
from .workers import WORKERS, in_parts

BOUND_KEY = "heap_bound"  # the heap field whose eviction set the tail last, null when the capacity did
_SLACK_FRACTION = 16  # a forced commit evicts this fraction of the heap beyond what the row needs
# A batch is coded on several threads only when it is this large: each row costs some Python
# besides the codec's GIL-free call, and threads that contend for the GIL over small rows lose
# more to its switch interval than they gain.
_PARALLEL_ROWS = 32
_PARALLEL_NBYTES = 1 << 19
# Decoding, the rows themselves must be large too: a thread back from a short GIL-free decode waits
# for the one running Python. Measured on 2 cores, sample(256) of zstd rows on two threads against
# one: 0.6x at 21 KB rows (84x84x3), 1.1x at 85 KB, 1.65x at 190 KB; Atari's 7 KB frames 0.5-0.7x.
_PARALLEL_DECODE_ROW_NBYTES = 1 << 16
# A codec that decodes whole batches (BatchDecoder) gets them from this many rows: below it, a call
# per row costs no more. Its threads start per call and split the batch's output buffer, so they
# are asked for only from a batch large enough to gain. Measured on 2 cores, zstd Atari frames, two
# threads against the calling one: 0.6x at 64 rows, 0.8x at 256, 1.0-2.7x at 1,024. The gain is the
# page faults of the output's fresh pages, split over the threads (see core/allocator.py): in a
# process whose allocator keeps those pages, two threads decoded 1,024-1,280 frames at 0.76-0.84x
# one, and sample(256, frame_stack=4) ran 1.1x faster on one.
_BATCH_DECODE_ROWS = 8
_BATCH_DECODE_THREAD_ROWS = 512


def length_key(name: str) -> str:
    """The batch column holding a ragged field's row lengths."""
    return f"{name}_length"


def place_in_heap(position: int, nbytes: int, heap_nbytes: int) -> int:
    """Where ``nbytes`` written at log ``position`` of a heap of ``heap_nbytes`` start: there, or
    at the heap's start when they would run past the heap's end."""
    offset = position % heap_nbytes
    return position if offset + nbytes <= heap_nbytes else position + heap_nbytes - offset


@dataclass
class EncodedRows:
    """One heap field's rows of an append or extend, encoded and checked, not written yet."""

    data: list[bytes]
    lengths: np.ndarray  # int64, one per row
    crcs: np.ndarray  # int64, NO_CRC without checksums


class HeapField:
    """One heap field of an open pool: its index and heap arrays, codec and write position."""

    def __init__(self, name: str, field: Field, index: np.ndarray, heap: np.ndarray, slots: int,
                 checksums: bool, positions: Any, dictionary: np.ndarray | None = None):
        self.name = name
        self.field = field
        self.index = index
        self.heap = heap
        self.heap_nbytes = int(heap.shape[0])
        self.slots = slots
        self.checksums = checksums
        self.codec: Codec | None = None
        self._batch_decoder: BatchDecoder | None = None
        self._use_codec(None if field.codec is None else get_codec(field.codec))
        # A zstd:N+dict field's dictionary (core/heap_dictionary.py); None once it is in use.
        self._dictionary = None if dictionary is None else HeapDictionary(name, dictionary)
        self.dictionary_nbytes: int | None = None  # the size of the dictionary in use, once there is one
        self._load_dictionary()
        # ``positions``: the field's entry of the commit payload, as read (parse_positions checks it).
        tail_position, self.head_position, self.max_length = parse_positions(name, positions, self.heap_nbytes)
        # The start of the oldest row the writer must not overwrite (None: no row to protect): the
        # committed tail's row, or while the window is empty, the first row written since.
        self.protected: int | None = tail_position if tail_position < self.head_position else None

    def _use_codec(self, codec: Codec | None) -> None:
        self.codec = codec
        # Fixed-shape rows only: a whole batch decodes into one buffer the shape of the batch.
        self._batch_decoder = None if codec is None or self.field.ragged else batch_decoder(codec)

    def _load_dictionary(self) -> None:
        """Take up the field's dictionary once it is stored (a reader: once its writer trained it)."""
        if self._dictionary is not None and self.codec is not None:
            data = self._dictionary.load()
            if data is not None:
                self._use_codec(with_dictionary(self.codec, data))
                self._dictionary, self.dictionary_nbytes = None, len(data)

    # ------------------------------------------------------------------ writing
    def encode(self, values: Sequence[np.ndarray]) -> EncodedRows:
        """Encode rows already checked by ``check_rows``."""
        raws = [np.ascontiguousarray(value) for value in values]
        if self._dictionary is not None:  # until it has one: collect rows, and train once there are enough
            self._dictionary.collect(raws)
            if self._dictionary.train() is not None:
                self._load_dictionary()
        if self.codec is None:
            data = [raw.tobytes() for raw in raws]
        else:
            codec = self.codec
            # An empty row stores no bytes: codecs disagree on what an empty frame is.
            large = sum(raw.nbytes for raw in raws) >= _PARALLEL_NBYTES
            data = in_parts(lambda part: [codec.encode(_byte_view(raw)) if raw.size else b"" for raw in part],
                            raws, parallel=large, min_items=_PARALLEL_ROWS)
        for row, encoded in enumerate(data):
            if len(encoded) > self.heap_nbytes:
                raise SchemaError(f"field {self.name!r}: a row of {len(encoded)} bytes (row {row} of the batch, "
                                  f"{raws[row].shape} {self.field.dtype}) is larger than the field's heap of "
                                  f"{self.heap_nbytes} bytes; create the pool with a larger heap_bytes")
        lengths = np.array([len(raw) if self.field.ragged else 1 for raw in raws], np.int64)
        crcs = np.array([zlib.crc32(d) if self.checksums else NO_CRC for d in data], np.int64)
        return EncodedRows(data, lengths, crcs)

    def check_rows(self, value: Any, n_rows: int | None, name: str | None = None) -> list[np.ndarray]:
        """The rows of one append (``n_rows`` None) or extend, checked and cast to the field;
        ``name``: the key they came as, when not the field's own (a ``next_<obs>``)."""
        name = self.name if name is None else name
        if not self.field.ragged:
            rows = as_rows(name, self.field, value, n_rows)
            return [rows] if n_rows is None else list(rows)
        if n_rows is None:
            return [self._ragged_row(name, value, None)]
        if isinstance(value, np.ndarray) and value.dtype != object:
            if value.ndim != 1 + len(self.field.shape) or len(value) != n_rows:
                raise SchemaError(f"field {name!r}: a batch array of shape {value.shape} does not hold "
                                  f"{n_rows} rows of shape {self.field.shape}; pass a list of {n_rows} arrays")
            return [self._ragged_row(name, row, i) for i, row in enumerate(value)]
        try:
            items = list(value)
        except TypeError:
            raise SchemaError(f"field {name!r} is ragged: extend takes a list of {n_rows} arrays (one per "
                              f"row), not {type(value).__name__}") from None
        if len(items) != n_rows:
            raise SchemaError(f"field {name!r} has {len(items)} rows, the batch has {n_rows}; pass one array "
                              "per row")
        return [self._ragged_row(name, item, i) for i, item in enumerate(items)]

    def _ragged_row(self, name: str, value: Any, row: int | None) -> np.ndarray:
        arr = to_numpy(name, value)
        if arr.size == 0 and arr.ndim == 1 and self.field.item_shape:  # [] for a row of no (n, 3) items
            arr = arr.reshape(0, *self.field.item_shape)
        where = f"field {name!r}" + ("" if row is None else f" row {row}")
        if arr.ndim != len(self.field.shape) or arr.shape[1:] != self.field.item_shape:
            raise SchemaError(f"{where} has shape {arr.shape}; the ragged field takes arrays of shape "
                              f"{_shape_text(self.field.shape)} (any length along the first axis)")
        return cast_to(name, arr, self.field.dtype)

    def place(self, position: int, nbytes: int) -> int:
        return place_in_heap(position, nbytes, self.heap_nbytes)

    def rows_that_fit(self, rows: EncodedRows, first: int, count: int) -> tuple[int, int | None]:
        """How many of ``count`` rows from row ``first`` can be written before a commit, and if
        not all, the heap floor the commit needs for the next row (core/store.py ``_commit``)."""
        position = self.head_position
        protected = None if self.protected is None else self.protected + self.heap_nbytes
        for done in range(count):
            nbytes = len(rows.data[first + done])
            start = self.place(position, nbytes)
            if protected is None:
                protected = start + self.heap_nbytes  # the first row written protects itself from the next
            elif start + nbytes > protected:
                return done, start + nbytes - self.heap_nbytes + self.heap_nbytes // _SLACK_FRACTION
            position = start + nbytes
        return count, None

    def write(self, rows: EncodedRows, first: int, count: int, first_step: int) -> None:
        """Write rows ``first..first+count`` of ``rows`` as steps from ``first_step``: bytes, then index."""
        position = self.head_position
        for done in range(count):
            data = rows.data[first + done]
            start = self.place(position, len(data))
            offset = start % self.heap_nbytes
            self.heap[offset:offset + len(data)] = np.frombuffer(data, np.uint8)
            self.index[(first_step + done) % self.slots] = (start, len(data), rows.lengths[first + done],
                                                            rows.crcs[first + done])
            if self.protected is None:
                self.protected = start
            position = start + len(data)
        self.head_position = position
        if count:
            self.max_length = max(self.max_length, int(rows.lengths[first:first + count].max()))

    # ------------------------------------------------------------------ commits
    def first_kept(self, tail: int, head: int, floor: int) -> int:
        """The oldest step in ``[tail, head)`` whose row starts at or after heap position ``floor``
        (positions grow with step ids: a binary search), ``head`` when none does."""
        low, high = tail, head
        while low < high:
            middle = (low + high) // 2
            if int(self.index[middle % self.slots, POSITION]) >= floor:
                high = middle
            else:
                low = middle + 1
        return low

    def committed(self, tail: int, head: int) -> list[int]:
        """This field's entry of a commit of window ``[tail, head)``; the writer protects it from now on."""
        self.protected = int(self.index[tail % self.slots, POSITION]) if tail < head else None
        tail_position = self.head_position if self.protected is None else self.protected
        return [tail_position, self.head_position, self.max_length]

    # ------------------------------------------------------------------ reading
    def read(self, steps: np.ndarray, entries: np.ndarray, positions: Sequence[int], prefetch: bool = False
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Decode the rows of ``steps`` from their index ``entries``, checked against the commit
        entry ``positions`` the reader holds. Returns the values (ragged: padded with zeros),
        the lengths (ragged fields) and which rows failed the checks (values zero)."""
        if self._dictionary is not None:  # rows compressed with it may be among these
            self._load_dictionary()
        offsets, nbytes, lengths, bad = self._checked(entries, positions)
        width = int(lengths.max()) if self.field.ragged and len(lengths) else 0
        shape = (len(steps), width, *self.field.item_shape) if self.field.ragged else (len(steps), *self.field.shape)
        rows = np.flatnonzero(~bad)
        if prefetch:  # a cold pool: every row's pages requested at once, not faulted in one by one
            prefetch_byte_ranges(self.heap, offsets[rows], nbytes[rows])
        decoded = self._decode_batch(rows, offsets, nbytes)
        if decoded is not None and len(rows) == len(steps):  # the common case: the batch as decoded, no copy
            return decoded, None, bad
        out = np.zeros(shape, self.field.dtype)
        if decoded is not None:
            out[rows] = decoded
            return out, None, bad
        if self.codec is None and self.field.ragged:  # raw rows: one copy of all their bytes, no per-row calls
            self._copy_raw(out, rows, offsets, nbytes, lengths)
            return out, lengths, bad
        parallel = (self.codec is not None and out.nbytes >= _PARALLEL_NBYTES
                    and out.nbytes >= _PARALLEL_DECODE_ROW_NBYTES * len(out))
        failed = in_parts(lambda part: self._decode_into(out, part, offsets, nbytes, lengths), rows.tolist(),
                          parallel=parallel, min_items=_PARALLEL_ROWS)
        if failed:
            bad[np.asarray(failed, np.int64)] = True
            lengths[bad] = 0
            out[bad] = 0
        return out, (lengths if self.field.ragged else None), bad

    def _checked(self, entries: np.ndarray, positions: Sequence[int]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Heap offsets, stored bytes and lengths (0 where bad) of index ``entries``, and which
        fail the checks against the commit entry ``positions``."""
        tail_position, head_position, max_length = (int(n) for n in positions)
        start, nbytes, lengths = entries[:, POSITION], entries[:, NBYTES], entries[:, LENGTH]
        offsets = start % self.heap_nbytes
        bad = ((start < tail_position) | (start + nbytes > head_position) | (nbytes < 0)
               | (offsets + nbytes > self.heap_nbytes))
        if self.field.ragged:
            bad |= (lengths < 0) | (lengths > max_length)
        else:
            bad |= lengths != 1
        if self.codec is None:
            bad |= nbytes != lengths * self.field.item_nbytes
        return offsets, nbytes, np.where(bad, 0, lengths), bad

    def prefetch(self, entries: np.ndarray, positions: Sequence[int]) -> None:
        """Ask for the heap pages of the rows of index ``entries`` that pass the checks."""
        offsets, nbytes, _, bad = self._checked(entries, positions)
        good = ~bad
        prefetch_byte_ranges(self.heap, offsets[good], nbytes[good])

    def prefetch_index(self, slots: np.ndarray) -> None:
        """Ask for the index pages of ``slots`` (a gather outside the Store's own, prefetched one)."""
        if self.index.flags.c_contiguous:  # advice only: an index view of another layout goes without
            entry_nbytes = self.index.strides[0]
            prefetch_byte_ranges(self.index.reshape(-1).view(np.uint8), slots * entry_nbytes,
                                 np.full(len(slots), entry_nbytes, np.int64))

    def _copy_raw(self, out: np.ndarray, rows: np.ndarray, offsets: np.ndarray, nbytes: np.ndarray,
                  lengths: np.ndarray) -> None:
        """The checked rows of a raw ragged field into ``out`` (padded [rows, width, ...]): views of
        the heap's bytes copied row by row, without a call per row besides the copy."""
        heap, dtype, item_shape = self.heap, self.field.dtype, self.field.item_shape
        for row, offset, size, length in zip(rows.tolist(), offsets[rows].tolist(), nbytes[rows].tolist(),
                                             lengths[rows].tolist(), strict=True):
            out[row, :length] = heap[offset:offset + size].view(dtype).reshape(length, *item_shape)

    def _decode_batch(self, rows: np.ndarray, offsets: np.ndarray, nbytes: np.ndarray) -> np.ndarray | None:
        """The checked ``rows`` of a fixed-shape field decoded in one call of its BatchDecoder, as a
        writable array of their own. None where the codec has none, the batch is too small, or any
        row failed: the rows are then decoded one by one, which finds the failed ones."""
        if self._batch_decoder is None or len(rows) < _BATCH_DECODE_ROWS:
            return None
        threads = WORKERS if len(rows) >= _BATCH_DECODE_THREAD_ROWS and not keeps_large_blocks() else 0
        try:
            raw = self._batch_decoder.decode_rows(self.heap, offsets[rows], nbytes[rows], self.field.item_nbytes,
                                                  threads)
        except ValueError:  # bytes a writer replaced mid-read, or damage
            return None
        return np.frombuffer(raw, self.field.dtype).reshape(len(rows), *self.field.shape)

    def _decode_into(self, out: np.ndarray, rows: Sequence[int], offsets: np.ndarray, nbytes: np.ndarray,
                     lengths: np.ndarray) -> list[int]:
        # The loop below is the per-row cost of every codec batch (a batch of stacked frames decodes
        # about a thousand rows), so everything that does not change per row is looked up once.
        failed = []
        heap, dtype, item_shape = self.heap, self.field.dtype, self.field.item_shape
        decode = None if self.codec is None else self.codec.decode
        item, ragged = self.field.item_nbytes, self.field.ragged
        # A fixed row: its values in one flat row, no reshape per row (-1 fails for a read of no rows).
        flat = None if ragged else out.reshape(len(out), math.prod(self.field.shape))
        for row, offset, size, length in zip(rows, offsets[rows].tolist(), nbytes[rows].tolist(),
                                             lengths[rows].tolist(), strict=True):
            if length * item == 0:
                if size:
                    failed.append(row)
                continue
            stored = heap[offset:offset + size].data
            try:
                raw = stored if decode is None else decode(stored, length * item)
                values = np.frombuffer(raw, dtype)
                if flat is not None:
                    flat[row] = values
                else:
                    out[row, :length] = values.reshape(length, *item_shape)
            except Exception:  # bytes a writer replaced mid-read, or damage: the caller decides which
                failed.append(row)
        return failed

    def usage(self, tail: int, head: int, positions: Sequence[int]) -> dict:
        """What ``info`` shows of this heap for the window [tail, head) of a commit with entry
        ``positions``: its size, the bytes the window spans, the ratio its codec achieved, and a
        ``+dict`` codec's dictionary size (0 while not trained; None for other codecs)."""
        entries = self.index[np.arange(tail, head, dtype=np.int64) % self.slots] if head > tail \
            else np.zeros((0, 4), np.int64)
        stored = int(entries[:, NBYTES].sum())
        raw = int(entries[:, LENGTH].sum()) * self.field.item_nbytes
        span = int(positions[1]) - int(positions[0]) if head > tail else 0
        dictionary = (self.dictionary_nbytes or 0) if uses_dictionary(self.field.codec) else None
        return {"codec": self.field.codec or "raw", "dictionary": dictionary, "heap_nbytes": self.heap_nbytes,
                "used_nbytes": span, "used_fraction": span / self.heap_nbytes, "stored_nbytes": stored,
                "raw_nbytes": raw, "ratio": raw / stored if stored else None, "rows": head - tail,
                "max_length": self.max_length}

    def check(self, tail: int, head: int, positions: Sequence[int], progress: Callable[[int], None] | None = None
              ) -> tuple[int, list[str]]:
        """``verify``'s check of the rows of [tail, head) against the commit's heap ``positions``
        (core/heap_check.py ``check_rows``): (rows whose bytes were checked against a crc, findings)."""
        try:
            if self._dictionary is not None:  # trained since this reader opened the pool
                self._load_dictionary()
        except CorruptStoreError as exc:
            return 0, [str(exc)]
        return check_rows(self, tail, head, positions, progress)

    @property
    def batch_decoder(self) -> BatchDecoder | None:
        """The codec as a BatchDecoder, for fixed-shape rows of a codec that has one."""
        return self._batch_decoder

    def dictionary_length_lost(self) -> bool:
        """Whether the field's zstd dictionary was stored and its length lost (HeapDictionary.length_lost)."""
        return self._dictionary is not None and self._dictionary.length_lost()

    def check_crcs(self, slots: np.ndarray) -> np.ndarray:
        """Which of the rows at ``slots`` have bytes that no longer match their recorded crc32."""
        entries = self.index[slots]
        mismatch = np.zeros(len(slots), bool)
        for row, (start, nbytes, _, crc) in enumerate(entries):
            if crc != NO_CRC:
                offset = int(start) % self.heap_nbytes
                mismatch[row] = zlib.crc32(self.heap[offset:offset + int(nbytes)].data) != int(crc)
        return mismatch


def _byte_view(raw: np.ndarray) -> memoryview:
    return raw.reshape(-1).view(np.uint8).data


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join("N" if n is None else str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"
