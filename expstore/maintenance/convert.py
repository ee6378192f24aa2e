"""Convert and merge pools: stream rows into a new pool or archive built aside, then rename.

The destination is built at a temporary sibling (see files.build_aside) and renamed into
place only when complete and fsynced, so a killed convert leaves the old destination (or
nothing) plus a temporary that ``expstore repair`` removes, never a half-written pool.
Rows keep their order (oldest first) and attrs are copied unchanged. A converted pool keeps
its source's step ids, episodes (vector-env sub-envs included) and priorities; a merged one
renumbers them, the sources following each other (see carry.py). Heap rows that can no longer
be read are left out and reported (damaged.py); the rows a copy reports are the rows it holds.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends import archive, files, resolve_backend
from ..errors import DamagedRowsError, InvalidArgumentError, SchemaError, WriterOutranError
from ..inspect.duplicates import DedupSource
from ..inspect.streaming import (
    SLICE_NBYTES,
    PoolSource,
    Progress,
    RowSource,
    evicted_now,
    open_source,
    read_kept,
    slice_rows,
)
from ..schema import Schema
from .carry import Carry
from .damaged import WithoutDamagedRows, damage_of, damaged_in_slice, without_damaged_rows
from .destination import check_destination
from .recode import default_heap_bytes, recoded_schema, source_dictionaries
from .writing import Written, build_pool, copy_slack, make_parent

logger = logging.getLogger("expstore.convert")  # its name before the layered layout

# Sources whose ``meta`` is a pool's: the copy takes slack, chunk rows, checksums and heap sizes from it.
_POOL_KINDS = ("pool", WithoutDamagedRows.kind)
_ATTEMPTS = 3  # copies of a pool whose writer outran the copy, each starting further ahead
_OUTRUN_FIX = "pause the writer, or copy only the newest rows with a smaller capacity=N (CLI: --capacity N)"


@dataclass
class CopyResult:
    """What a convert or merge wrote: ``rows`` rows, steps [first_step_id, next_step_id) of the copy."""

    path: str
    rows: int
    capacity: int
    dropped_rows: int  # the oldest rows left out for a smaller capacity
    compressed: bool
    duplicate_rows: int = 0  # exact duplicates left out (dedup)
    first_step_id: int = 0
    next_step_id: int = 0
    evicted_rows: int = 0  # rows of the sources' snapshots that a writer evicted before they were copied
    heap_evicted_rows: int = 0  # rows copied that a heap of the copy too small for them evicted
    window_bound: str | None = None  # what bounds the copy's window (Store.window_bound)
    damaged_rows: int = 0  # heap rows left out because they can no longer be read (damaged.py)
    damaged_steps: dict[str, list[int]] = field(default_factory=dict)  # source -> its first damaged steps


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, capacity: int | None = None,
            backend: str | None = None, compress: str | None = None, overwrite: bool = False,
            progress: Progress | None = None, slice_nbytes: int | None = None, dedup: bool = False,
            codecs: dict[str, str | None] | None = None, heap_bytes: Any = None) -> CopyResult:
    """Copy the pool (or archive) ``src`` into a new pool or compressed archive ``dst``.

    Args:
        capacity: the new pool's capacity (default: the source's); smaller than the source's
            length keeps the newest rows.
        backend: ``hdf5`` or ``zarr``; by default from ``dst``'s suffix.
        compress: write a compressed archive with this codec (``auto``, ``gzip`` for HDF5,
            ``zstd``/``blosc`` for Zarr) instead of a pool.
        overwrite: replace an existing ``dst``.
        progress: called with the number of rows copied after each slice.
        dedup: leave out rows equal to an older row (exact duplicates, see inspect/duplicates.py),
            keeping the order; the copy's bookkeeping is rebuilt from the rows' flags.
        codecs: field name -> codec of the copy (``{"obs": "zstd:3"}``; None or ``"raw"``
            for none), see recode.py.
        heap_bytes: the copy's heap sizes, as ``expstore.open`` takes them; a field a dict does
            not name keeps the source's size where codec and capacity stay, else gets a heap
            sized for the copy's rows (see recode.py). A heap too small for the rows copied
            evicts the oldest: ``heap_evicted_rows`` counts them.

    Heap rows that can no longer be read (damaged bytes, or a crc32 that fails) are left out,
    counted in ``damaged_rows`` with their first steps in ``damaged_steps``; the copy is then
    tagged anew, as with ``dedup`` (see damaged.py).
    """
    return merge([src], dst, capacity=capacity, backend=backend, compress=compress,
                 overwrite=overwrite, progress=progress, slice_nbytes=slice_nbytes, dedup=dedup,
                 codecs=codecs, heap_bytes=heap_bytes)


def merge(srcs: Sequence[str | os.PathLike], dst: str | os.PathLike, *, capacity: int | None = None,
          backend: str | None = None, compress: str | None = None, overwrite: bool = False,
          progress: Progress | None = None, slice_nbytes: int | None = None, dedup: bool = False,
          codecs: dict[str, str | None] | None = None, heap_bytes: Any = None) -> CopyResult:
    """Concatenate pools with the same schema into ``dst``, in the order given.

    Args:
        capacity: the new capacity (default: the sum of the sources' lengths, at least 1);
            when smaller than the rows given, the oldest rows are dropped.
        Others as in :func:`convert` (``dedup`` drops duplicates within each source). Attrs
        come from the first source, and so do codecs not named in ``codecs``: the sources may
        differ in their fields' codecs (rows are copied decoded).

    Raises:
        SchemaError: the sources' fields differ in more than their codecs.
        StoreExistsError: ``dst`` exists and ``overwrite`` is false.
    """
    dst = os.fspath(dst)
    if not srcs:
        raise InvalidArgumentError("merge needs at least one source pool")
    chosen = resolve_backend(dst, backend)
    codec = None if compress is None else archive.check_codec(chosen.name, compress)
    _check_destination(dst, [os.fspath(s) for s in srcs], overwrite)
    sources = [open_source(s) for s in srcs]
    try:
        _check_same_schema(sources)
        recoding = {"schema": recoded_schema(sources[0].schema, codecs), "heap_bytes": heap_bytes}
        heap_fields = recoding["schema"].heap_fields()
        if codec is not None and heap_fields:
            raise InvalidArgumentError(f"an archive holds fixed-shape fields only, and {heap_fields} are ragged or "
                                       "compressed already; copy into a pool, or give fixed fields --codec NAME=raw")
        if dedup:  # its scan reads every row: damaged ones are left out first
            sources = deduplicated(without_damaged_rows(sources, slice_nbytes))
        copying = (dst, chosen.name, capacity, codec, overwrite, progress, slice_nbytes, recoding)
        try:
            result = _copy(sources, *copying)
        except DamagedRowsError as found:
            logger.info("%s; copying again without them", found)
            sources = without_damaged_rows(sources, slice_nbytes)
            result = _copy(sources, *copying)
        result.duplicate_rows = sum(getattr(source, "dropped_rows", 0) for source in sources)
        _record_damage(result, sources)
        return result
    finally:
        for source in sources:
            source.close()


def _record_damage(result: CopyResult, sources: list[RowSource]) -> None:
    for damage in damage_of(sources):
        result.damaged_rows += damage.rows
        result.damaged_steps[damage.path] = damage.first_steps
        logger.info("%s: left out %d rows whose heap bytes cannot be read (first steps %s); `expstore verify "
                    "%s` lists the damage", damage.path, damage.rows, damage.first_steps, damage.path)


def deduplicated(sources: list[RowSource]) -> list[RowSource]:
    """Each source without its exact duplicates (closing one closes its source)."""
    return [DedupSource(source) for source in sources]


def _check_destination(dst: str, srcs: list[str], overwrite: bool) -> None:
    if any(os.path.realpath(dst) == os.path.realpath(s) for s in srcs):
        raise InvalidArgumentError(f"the destination {dst} is also a source; write to a new path")
    check_destination(dst, overwrite)


def _check_same_schema(sources: list[RowSource]) -> None:
    first = sources[0]
    for other in sources[1:]:
        if _without_codecs(other.schema) != _without_codecs(first.schema):
            raise SchemaError(f"cannot merge {other.path} into {first.path}: it stores {other.schema}, "
                              f"not {first.schema}; merge pools with the same schema only (their codecs may differ)")


def _without_codecs(schema: Schema) -> list:
    """What must agree between merged pools: field names, shapes, dtypes and image layouts, in
    order. Codecs may differ: rows are copied decoded and coded again with the copy's codec."""
    return [(name, {key: value for key, value in spec.to_json().items() if key != "codec"})
            for name, spec in schema.items()]


def _copy(sources, dst, backend, capacity, codec, overwrite, progress, slice_nbytes, recoding) -> CopyResult:
    total = sum(len(s) for s in sources)
    if capacity is None:
        capacity = sources[0].capacity if len(sources) == 1 else max(1, total)
    if not isinstance(capacity, int) or capacity < 1:
        raise InvalidArgumentError(f"capacity={capacity!r} must be a positive int (transitions)")
    dropped = max(0, total - capacity)
    first = sources[0]
    attrs = dict(first.attrs)
    if len(sources) > 1:
        attrs["merged_from"] = [s.path for s in sources]
    make_parent(dst)
    meta = first.meta if first.kind in _POOL_KINDS else {}
    if codec is None:
        heap_bytes = default_heap_bytes(sources, recoding["schema"], capacity, copy_slack(meta, capacity),
                                        recoding["heap_bytes"])
        dictionaries = source_dictionaries(first, recoding["schema"])
    rates: dict[int, tuple[float, float]] = {}
    for attempt in range(1, _ATTEMPTS + 1):
        carry = Carry(sources, _planned_first_step(sources, dropped), renumber=len(sources) > 1)
        rows = CopyRows(sources, carry, dropped, progress, slice_nbytes, rates)
        try:
            if codec is not None:
                _build_archive(dst, backend, codec, first.schema, capacity, attrs, total - dropped, rows, carry,
                               overwrite)
                written = Written(carry.first_step_id, carry.first_step_id + rows.copied, None)
            else:
                written = build_pool(dst, backend, recoding["schema"], capacity, attrs, rows, overwrite=overwrite,
                                     meta=meta, carry=carry, heap_bytes=heap_bytes, dictionaries=dictionaries)
            break
        except WriterOutranError as exc:
            if attempt == _ATTEMPTS or rows.outran is None:
                raise _outran_error(exc, rows, attempt) from None
            rates[rows.outran] = rows.rates()
            logger.info("%s; copying again from a later row (attempt %d)", exc, attempt + 1)
    kept = written.next_step_id - written.first_step_id
    heap_evicted = rows.copied - kept
    if heap_evicted:
        logger.info("%s: its %s evicted the %d oldest of the %d rows copied; pass a larger heap_bytes",
                    dst, written.window_bound, heap_evicted, rows.copied)
    logger.info("wrote %d rows to %s (%d oldest dropped, %d evicted by a writer before they were copied)",
                kept, dst, dropped, rows.evicted)
    return CopyResult(dst, kept, capacity, dropped, codec is not None, first_step_id=written.first_step_id,
                      next_step_id=written.next_step_id, evicted_rows=rows.evicted, heap_evicted_rows=heap_evicted,
                      window_bound=written.window_bound)


def _build_archive(dst, backend, codec, schema, capacity, attrs, rows, copy_rows, carry, overwrite) -> None:
    def meta() -> dict:  # once the rows are written: the copy's first step id is known then
        return {"attrs": attrs, "capacity": capacity, "first_step_id": carry.first_step_id}

    slices = ((row, batch) for row, batch, _bookkeeping in copy_rows)

    def build(temp: str) -> list[str]:
        archive.write_archive(temp, backend, codec, schema, meta, rows, slices)
        return []  # nothing to preallocate: compressed arrays have no fixed size (build_aside fsyncs the tree)

    files.build_aside(dst, build, replace=overwrite)


def _fresh_snapshot(source, start: int) -> int:
    """Take a pool's snapshot again right before its first rows are read, and where to start in it.

    Building the destination takes a while (a large pool, the first import of a backend), and a
    writer appending meanwhile evicts the first snapshot's oldest rows, on a fast writer all of them.
    The new snapshot holds as many rows as were planned from the first one: its newest ones.
    """
    if not isinstance(source, PoolSource):
        return start
    planned = len(source) - start
    source.snapshot()
    return max(0, len(source) - planned)


def _planned_first_step(sources, skip: int) -> int:
    return sources[0].first_step_id + min(skip, len(sources[0])) if sources else 0


def _outran_error(exc: WriterOutranError, rows: CopyRows, attempts: int) -> WriterOutranError:
    copy_rate, writer_rate = rows.rates() if rows.outran is not None else (0.0, 0.0)
    speeds = f"; it wrote {writer_rate:,.0f} rows/s, the copy read {copy_rate:,.0f}" if writer_rate else ""
    return WriterOutranError(f"{exc} (attempts: {attempts}{speeds}); {_OUTRUN_FIX}")


class CopyRows:
    """The rows of one attempt at a copy, source after source, as (copy row, rows, bookkeeping).

    The oldest ``skip`` rows are left out (a capacity smaller than the rows). A writer appending
    to a source meanwhile evicts its oldest rows, maybe before they are read: those are left out
    too. At a source's start that is where its copy begins (``Carry.begin``); later it means the
    writer outran the copy, and reading stops with WriterOutranError. On a retry, ``rates`` holds
    (copy, writer) rows per second of each source that outran the copy: its copy then starts far
    enough ahead of the writer to end before the writer catches up (see _ahead_of_writer).
    """

    def __init__(self, sources, carry: Carry, skip: int, progress: Progress | None, slice_nbytes: int | None,
                 rates: dict[int, tuple[float, float]]):
        self.sources, self.carry, self.skip, self.progress = sources, carry, skip, progress
        self.slice_nbytes = slice_nbytes or SLICE_NBYTES
        self.known_rates = rates
        self.copied = self.evicted = 0
        self.outran: int | None = None  # the source whose writer outran the copy
        self._started = (0.0, 0, 0)  # monotonic time, live first index and copied rows at the source's start

    def __iter__(self) -> Iterator[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray] | None]]:
        skip = self.skip
        for position, source in enumerate(self.sources):
            start = min(len(source), skip)
            skip -= start
            yield from self._source_rows(position, source, start)
        if self.evicted and not self.copied:  # before the copy replaces anything: no empty copy
            self.outran = None
            raise WriterOutranError(f"{', '.join(s.path for s in self.sources)}: the writer evicted all "
                                    f"{self.evicted} rows of the snapshot before they were copied")

    def _source_rows(self, position: int, source, start: int):
        step = slice_rows(source.schema, source.chunk_rows, self.slice_nbytes)
        planned = start = _fresh_snapshot(source, start)
        first, began = max(start, evicted_now(source), self._ahead_of_writer(position, source)), False
        while first < len(source):
            stop = min(len(source), first + step)
            kept = read_kept(source, first, stop)
            if not began and kept.first == stop:  # all evicted during the read: on from the writer's tail
                first = max(stop, evicted_now(source))
                continue
            if not began:
                self._begin(position, source, planned, kept.first)
                began = True
            elif kept.first != first:
                self.outran = position
                raise WriterOutranError(f"{source.path}: its writer evicted step {source.first_step_id + first} "
                                        "before the copy read it")
            if damaged_in_slice(source, kept.first, stop - kept.first):
                raise DamagedRowsError(source.path)
            yield self.copied, kept.rows, kept.book
            self.copied += stop - kept.first
            if self.progress is not None:
                self.progress(stop - kept.first)
            first = stop
        if not began:
            self._begin(position, source, planned, len(source))

    def _begin(self, position: int, source, planned: int, first_kept: int) -> None:
        self.evicted += first_kept - planned
        self._started = (time.monotonic(), first_kept, self.copied)
        self.carry.begin(position, source.first_step_id + first_kept, len(source) - first_kept)

    def _ahead_of_writer(self, position: int, source) -> int:
        """Where a retry starts copying a source whose writer outran the last attempt: far enough
        ahead of the writer's tail that copying up to the snapshot's head ends before the writer
        gets there, with a quarter to spare (a copy at least that much faster starts at the tail)."""
        if position not in self.known_rates:
            return 0
        copy_rate, writer_rate = self.known_rates[position]
        live = evicted_now(source)
        ahead = len(source) - (len(source) - live) * copy_rate / (1.25 * max(writer_rate, 1e-9))
        return int(min(len(source), max(live, ahead)))

    def rates(self) -> tuple[float, float]:
        """(copy, writer) rows per second on the source that outran the copy, since its start."""
        began, live_then, copied_then = self._started
        seconds = max(time.monotonic() - began, 1e-6)
        source = self.sources[self.outran]
        return (self.copied - copied_then) / seconds, max(0, evicted_now(source) - live_then) / seconds
