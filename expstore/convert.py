"""Convert and merge pools: stream rows into a new pool or archive built aside, then rename.

The destination is built at a temporary sibling (see files.build_aside) and renamed into
place only when complete and fsynced, so a killed convert leaves the old destination (or
nothing) plus a temporary that ``expstore repair`` removes, never a half-written pool.
Rows keep their order (oldest first) and attrs are copied unchanged. A converted pool keeps
its source's step ids, episodes (vector-env sub-envs included) and priorities; a merged one
renumbers them, the sources following each other (see carry.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from . import archive, files, lock
from .backends import resolve_backend
from .carry import Carry
from .destination import check_destination
from .errors import InvalidArgumentError, SchemaError
from .streaming import Progress, RowSource, iter_slices, open_source

logger = logging.getLogger(__name__)

_DEFAULT_SLACK = 10_000


@dataclass
class CopyResult:
    """What a convert or merge wrote."""

    path: str
    rows: int
    capacity: int
    dropped_rows: int
    compressed: bool
    duplicate_rows: int = 0  # exact duplicates left out (dedup)


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, capacity: int | None = None,
            backend: str | None = None, compress: str | None = None, overwrite: bool = False,
            progress: Progress | None = None, slice_nbytes: int | None = None, dedup: bool = False) -> CopyResult:
    """Copy the pool (or archive) ``src`` into a new pool or compressed archive ``dst``.

    Args:
        capacity: the new pool's capacity (default: the source's); smaller than the source's
            length keeps the newest rows.
        backend: ``hdf5`` or ``zarr``; by default from ``dst``'s suffix.
        compress: write a compressed archive with this codec (``auto``, ``gzip`` for HDF5,
            ``zstd``/``blosc`` for Zarr) instead of a pool.
        overwrite: replace an existing ``dst``.
        progress: called with the number of rows copied after each slice.
        dedup: leave out rows equal to an older row (exact duplicates, see duplicates.py),
            keeping the order; the copy's bookkeeping is rebuilt from the rows' flags.
    """
    return merge([src], dst, capacity=capacity, backend=backend, compress=compress,
                 overwrite=overwrite, progress=progress, slice_nbytes=slice_nbytes, dedup=dedup)


def merge(srcs: Sequence[str | os.PathLike], dst: str | os.PathLike, *, capacity: int | None = None,
          backend: str | None = None, compress: str | None = None, overwrite: bool = False,
          progress: Progress | None = None, slice_nbytes: int | None = None, dedup: bool = False) -> CopyResult:
    """Concatenate pools with the same schema into ``dst``, in the order given.

    Args:
        capacity: the new capacity (default: the sum of the sources' lengths, at least 1);
            when smaller than the rows given, the oldest rows are dropped.
        Others as in :func:`convert` (``dedup`` drops duplicates within each source). Attrs
        come from the first source.

    Raises:
        SchemaError: the sources' schemas differ.
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
        if dedup:
            sources = deduplicated(sources)
        _check_same_schema(sources)
        result = _copy(sources, dst, chosen.name, capacity, codec, overwrite, progress, slice_nbytes)
        result.duplicate_rows = sum(getattr(source, "dropped_rows", 0) for source in sources)
        return result
    finally:
        for source in sources:
            source.close()


def deduplicated(sources: list[RowSource]) -> list[RowSource]:
    """Each source without its exact duplicates (closing one closes its source)."""
    from .duplicates import DedupSource

    return [DedupSource(source) for source in sources]


def make_parent(dst: str) -> None:
    """Create the directory that will hold ``dst`` (the temporary is built beside it)."""
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)


def _check_destination(dst: str, srcs: list[str], overwrite: bool) -> None:
    if any(os.path.realpath(dst) == os.path.realpath(s) for s in srcs):
        raise InvalidArgumentError(f"the destination {dst} is also a source; write to a new path")
    check_destination(dst, overwrite)


def _check_same_schema(sources: list[RowSource]) -> None:
    first = sources[0]
    for other in sources[1:]:
        if other.schema != first.schema:
            raise SchemaError(f"cannot merge {other.path} into {first.path}: it stores {other.schema}, "
                              f"not {first.schema}; merge pools with the same schema only")


def _copy(sources, dst, backend, capacity, codec, overwrite, progress, slice_nbytes) -> CopyResult:
    total = sum(len(s) for s in sources)
    if capacity is None:
        capacity = sources[0].capacity if len(sources) == 1 else max(1, total)
    if not isinstance(capacity, int) or capacity < 1:
        raise InvalidArgumentError(f"capacity={capacity!r} must be a positive int (transitions)")
    dropped = max(0, total - capacity)
    rows = total - dropped
    first = sources[0]
    attrs = dict(first.attrs)
    if len(sources) > 1:
        attrs["merged_from"] = [s.path for s in sources]
    kwargs = {"slice_nbytes": slice_nbytes} if slice_nbytes else {}
    carry = Carry(sources, dropped, renumber=len(sources) > 1)
    slices = _renumbered(sources, dropped, progress, kwargs)
    make_parent(dst)
    if codec is not None:
        meta = {"attrs": attrs, "capacity": capacity, "first_step_id": carry.first_step_id}
        files.build_aside(dst, lambda temp: archive.write_archive(temp, backend, codec, first.schema, meta,
                                                                  rows, slices) or [], replace=overwrite)
    else:
        build_pool(dst, backend, first.schema, capacity, attrs, slices, overwrite=overwrite,
                   meta=first.meta if first.kind == "pool" else {}, carry=carry)
    logger.info("wrote %d rows to %s (%d oldest dropped)", rows, dst, dropped)
    return CopyResult(dst, rows, capacity, dropped, codec is not None)


def _renumbered(sources, skip: int, progress, kwargs) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Slices of all sources in order, skipping the first ``skip`` rows, indexed from 0."""
    written = 0
    for source in sources:
        start = min(len(source), skip)
        skip -= start
        for _first, batch in iter_slices(source, start, progress=progress, **kwargs):
            yield written, batch
            written += len(next(iter(batch.values())))


def build_pool(dst: str, backend: str, schema, capacity: int, attrs: dict, slices, *, overwrite: bool = False,
               meta: dict | None = None, carry: Carry | None = None) -> None:
    """Build a pool at ``dst`` aside from ``slices`` (iterator of (first_row, batch)), then rename.

    ``meta`` of a source pool carries over its slack, chunk_rows and checksums setting;
    ``carry`` the sources' step ids, episodes and priorities.
    """
    make_parent(dst)
    files.build_aside(dst, lambda temp: _write_pool(temp, backend, schema, capacity, attrs, slices, meta or {},
                                                    carry) or [], replace=overwrite)


def _write_pool(temp: str, backend: str, schema, capacity: int, attrs: dict, slices, meta: dict,
                carry: Carry | None) -> None:
    from .opening import open as open_store

    slack = _slack(meta, capacity)
    store = open_store(temp, "w", capacity=capacity, schema=schema, backend=backend, attrs=attrs,
                       chunk_rows=_chunk_rows(meta, capacity + slack), slack=slack,
                       commit_every=slack, fsync=False, checksums=bool(meta.get("checksums", False)),
                       **(carry.create_options() if carry else {}))
    try:
        for first, batch in slices:
            store.extend(batch)
            if carry:
                carry.after_rows(store, first, len(next(iter(batch.values()))))
        if carry:
            carry.finish(store)
        store.flush(fsync=True)
    finally:
        store.close()
        files.remove_path(lock.lock_path(temp))


def _slack(meta: dict, capacity: int) -> int:
    if "slots" in meta and "capacity" in meta:
        return max(1, min(meta["slots"] - meta["capacity"], capacity))
    return min(_DEFAULT_SLACK, capacity)


def _chunk_rows(meta: dict, rows: int) -> int | None:
    if "chunk_rows" not in meta:
        return None  # an archive: let the pool pick its default
    return max(1, min(int(meta["chunk_rows"]), rows))
