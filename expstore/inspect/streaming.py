"""Row sources read in bounded slices: a pool, or a compressed archive, in logical order.

Tools that walk a whole pool (convert, merge, export, stats) never hold a whole field in
memory: they read ``slice_rows`` rows at a time (about 64 MiB), so a pool far larger than RAM
streams through in constant anonymous memory. Pages read through a pool's memory maps are
file-backed and the kernel reclaims them under pressure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from ..backends import archive, backend_holding, has_known_suffix
from ..core.opening import open as open_store
from ..core.snapshot import SourceBook
from ..errors import InvalidArgumentError, StoreNotFoundError
from ..schema import Schema

SLICE_NBYTES = 64 << 20
Progress = Callable[[int], None]
_Source = TypeVar("_Source")


class RowSource(Protocol):
    """Rows in logical order (0 = oldest), readable by slices."""

    path: str
    kind: str  # "pool" or "archive"
    schema: Schema
    attrs: dict
    capacity: int
    chunk_rows: int
    first_step_id: int

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``[start, stop)`` of the logical order, without ``step_id``."""

    def close(self) -> None: ...


@runtime_checkable
class LiveSource(Protocol):
    """A row source that a writer appending to its pool may take rows from while it is read:
    the writer evicts the oldest rows, so what it takes is always a prefix."""

    def read_kept(self, start: int, stop: int) -> KeptRows:
        """Rows ``[start, stop)`` less those that the writer evicted first."""

    def evicted_now(self) -> int:
        """Rows of the source that the writer has evicted by now."""


class PoolSource:
    """A pool opened read-only, as a row source."""

    kind = "pool"

    def __init__(self, store):
        self.store = store
        self.path = store.path
        self.schema = store.schema
        self.attrs = store.attrs
        self.capacity = store.capacity
        self.chunk_rows = store.chunk_rows or 1
        self.meta = {} if store.layout is None else dict(store.layout.meta)
        self.snapshot()

    def snapshot(self) -> None:
        """Take the window to read, with the episodes and priorities at the same commit: a writer
        running meanwhile cannot shift the rows read. A copy takes it again at its first read."""
        self.first_step_id, head = self.store.window
        self._length = head - self.first_step_id
        self.book = SourceBook.of(self.store, self.first_step_id, head)
        # Ragged fields come padded to their longest row ever (with <name>_length), so that every
        # slice has the same width: a row then looks the same to duplicates and statistics
        # whichever slice it is read in.
        usage = self.store.heap_usage() if self.schema is not None and self.schema.heap_fields() else {}
        self._ragged_widths = {name: use["max_length"] for name, use in usage.items() if self.schema[name].ragged}

    def __len__(self) -> int:
        return self._length

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        rows = self.store.read(np.arange(self.first_step_id + start, self.first_step_id + stop, dtype=np.int64))
        rows.pop("step_id")
        for name, width in self._ragged_widths.items():
            values = rows[name]
            if values.shape[1] < width:
                rows[name] = np.pad(values, [(0, 0), (0, width - values.shape[1])] + [(0, 0)] * (values.ndim - 2))
        return rows

    def read_kept(self, start: int, stop: int) -> KeptRows:
        """Rows ``[start, stop)`` less those that a writer appending meanwhile evicted first.

        The writer evicts the oldest rows, so what it took is always a prefix. The rows and their
        bookkeeping are gathered, then the window is read again: a row still in it was not
        overwritten during the gather (the writer only writes slots of rows below its tail).
        """
        wanted = np.arange(self.first_step_id + start, self.first_step_id + stop, dtype=np.int64)
        gone = int(np.searchsorted(wanted, self.store.first_step_id))  # evicted before the read: not read
        steps = wanted[gone:]
        rows = self.store.gather(steps)
        rows.pop("step_id")
        book = None if self.book is None else self.book.rows(steps)
        stale = int(np.searchsorted(steps, self.store.first_step_id))  # evicted during it
        rows = {name: values[stale:] for name, values in rows.items()}
        book = None if book is None else {name: values[stale:] for name, values in book.items()}
        return KeptRows(start + gone + stale, rows, book)

    def evicted_now(self) -> int:
        """Rows of the snapshot that a writer appending to the pool has evicted by now."""
        return min(len(self), max(0, self.store.first_step_id - self.first_step_id))

    def close(self) -> None:
        self.store.close()


@dataclass
class KeptRows:
    """What ``read_kept`` got: the rows from logical index ``first`` on, and their bookkeeping
    (SourceBook.rows; None for a source without it)."""

    first: int
    rows: dict[str, np.ndarray]
    book: dict[str, np.ndarray] | None = None


def evicted_now(source: RowSource) -> int:
    """Rows of the source's snapshot that a writer appending to it has evicted by now."""
    return source.evicted_now() if isinstance(source, LiveSource) else 0


def read_kept(source: RowSource, start: int, stop: int) -> KeptRows:
    """``source.read_kept`` where the source can lose rows while it is read (LiveSource), else all rows."""
    if isinstance(source, LiveSource):
        return source.read_kept(start, stop)
    return KeptRows(start, source.read(start, stop))


def unwrapped(source: Any, kind: type[_Source]) -> _Source | None:
    """The ``kind`` of row source inside ``source``, through the filters that wrap one (each
    holds the one it filters as ``source``: dedup, damaged rows left out), or None."""
    while source is not None and not isinstance(source, kind):
        source = getattr(source, "source", None)
    return source


def pool_store(source: RowSource) -> Any:
    """The open pool behind a row source (through the filters that wrap one), None for an archive."""
    pool = unwrapped(source, PoolSource)
    return None if pool is None else pool.store


def open_source(path: str | os.PathLike) -> RowSource:
    """Open a pool or a compressed archive read-only.

    Raises:
        StoreNotFoundError: nothing at ``path``.
        NotAPoolError, CorruptStoreError: ``path`` is neither a pool nor an archive.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise StoreNotFoundError(f"no pool at {path}; check the path")
    if archive.is_archive(path):
        return archive.ArchiveSource(path)
    return PoolSource(open_store(path, "r", backend=read_backend(path)))


def read_backend(path: str | os.PathLike) -> str | None:
    """The backend of an existing pool whose name does not tell it (``backup.pool``): the one
    whose container form it has (Zarr: a directory, HDF5: a file; backends.backend_holding).
    None where the suffix tells it, or nothing is there: the suffix
    then decides, as it does for a pool being created."""
    path = os.fspath(path)
    if has_known_suffix(path) or not os.path.exists(path):
        return None
    holder = backend_holding(path)
    return None if holder is None else holder.name


def slice_rows(schema: Schema, chunk_rows: int = 1, target_nbytes: int = SLICE_NBYTES) -> int:
    """Rows per slice: about ``target_nbytes`` of rows, a whole number of chunks when possible."""
    rows = max(1, target_nbytes // max(1, schema.row_nbytes))
    if rows >= chunk_rows:
        rows -= rows % chunk_rows
    return rows


def iter_slices(source: RowSource, start: int = 0, stop: int | None = None, *,
                fields: list[str] | None = None, slice_nbytes: int = SLICE_NBYTES,
                progress: Progress | None = None) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yield ``(first_index, rows)`` for consecutive slices of ``[start, stop)``.

    Args:
        fields: keep only these fields of each slice (all by default).
        progress: called with the number of rows after each slice.
    """
    stop = len(source) if stop is None else stop
    if not 0 <= start <= stop <= len(source):
        raise InvalidArgumentError(f"rows {start}..{stop} are outside the {len(source)} rows of {source.path}")
    step = slice_rows(source.schema, source.chunk_rows, slice_nbytes)
    for first in range(start, stop, step):
        last = min(stop, first + step)
        rows = source.read(first, last)
        if fields is not None:
            rows = {name: rows[name] for name in fields}
        yield first, rows
        if progress is not None:
            progress(last - first)
