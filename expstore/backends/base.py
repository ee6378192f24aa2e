"""The small interface a container format implements.

A backend only builds the container once and, on open, says where each field's bytes lie.
Everything after creation (row writes, commits, reads) goes through memory maps in the store,
so a backend never holds a file open for writing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..schema import Schema

FORMAT_VERSION = 1
# Bytes of each of the commit record's two slots (core/commit.py encodes them).
SLOT_NBYTES = 4096
# What to do about a file that is not a pool, appended to every NotAPoolError.
NOT_A_POOL_FIX = ("; pick another path for a new pool, or use mode='w' to replace it "
                  "(`expstore import` reads D4RL and Minari datasets)")


@dataclass(frozen=True)
class Extent:
    """A contiguous byte range inside one file."""

    path: str
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Layout:
    """Where a pool's bytes are: each field's (slots, *shape) array and the commit slots."""

    meta: dict
    schema: Schema
    fields: dict[str, Extent]
    commit: Extent
    checksums: Extent | None = None  # (chunks, 2) int64 table, only in pools created with checksums=True
    internal: dict[str, Extent] = field(default_factory=dict)  # bookkeeping arrays, see internal_arrays
    # Read from the pool's layout record (layout_record.py) rather than from the container itself.
    from_record: bool = field(default=False, compare=False)

    @property
    def files(self) -> list[str]:
        paths = [extent.path for extent in [*self.fields.values(), *self.internal.values()]] + [self.commit.path]
        if self.checksums is not None:
            paths.append(self.checksums.path)
        return list(dict.fromkeys(paths))


def checksum_table_bytes(meta: dict) -> bytes:
    """A new checksum table: one (first step id, crc32) row per chunk, -1 meaning none yet."""
    n_chunks = meta["slots"] // meta["chunk_rows"]
    return b"\xff" * (n_chunks * 16)


def internal_arrays(meta: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """The pool's bookkeeping arrays (names start with ``_``): name -> (full shape, dtype).

    They are stored contiguously and uncompressed beside the fields and start zeroed; which
    ones exist is decided at creation (see expstore/backends/internal.py) and recorded in the metadata.
    """
    return {name: (tuple(spec["shape"]), spec["dtype"]) for name, spec in meta.get("internal", {}).items()}


def internal_nbytes(meta: dict) -> int:
    return sum(array_nbytes(internal_arrays(meta)).values())


def array_specs(meta: dict, schema: Schema) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every array of the container, name -> (shape, dtype name), fields and bookkeeping alike."""
    slots = meta["slots"]
    # A heap field's own array is its index (schema.HEAP_INDEX_COLUMNS); its bytes are an internal array.
    arrays = {name: ((slots, *field.stored_shape), field.stored_dtype.name) for name, field in schema.items()}
    arrays["_commit"] = ((2, SLOT_NBYTES), "uint8")
    if meta.get("checksums"):
        arrays["_checksums"] = ((slots // meta["chunk_rows"], 2), "int64")
    arrays.update({name: (shape, np.dtype(dtype).name) for name, (shape, dtype) in internal_arrays(meta).items()})
    return arrays


def array_nbytes(specs: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, int]:
    """Bytes of each array of ``specs`` (exact: Python ints never wrap, whatever the shape)."""
    return {name: math.prod(shape) * np.dtype(dtype).itemsize for name, (shape, dtype) in specs.items()}


def expected_arrays(layout: Layout) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every array the container of an open layout holds (see array_specs)."""
    return array_specs(layout.meta, layout.schema)


class ArchiveForm(Protocol):
    """How a backend writes and reads a compressed archive (see archive.py): a pool's rows in
    logical order, one compressed array per field, and the archive's metadata at the top."""

    codecs: tuple[str, ...]  # the compressors it offers; the first is the default

    def read_marker(self, path: str) -> Any:
        """The raw archive metadata (JSON text or a dict), or None when ``path`` is not an archive
        of this form; cheap, and may raise on damaged bytes (archive.is_archive catches that)."""

    def write(self, temp: str, codec: str, schema: Schema, final_meta: Callable[[int], dict], rows: int,
              chunk_rows: int, slices: Iterable[tuple[int, dict[str, np.ndarray]]]) -> None:
        """Write at most ``rows`` rows from ``slices`` at ``temp``, cut to the rows written, then
        ``final_meta(rows written)`` as the marker."""

    def open_arrays(self, path: str, schema: Schema) -> tuple[dict[str, Any], Callable[[], None] | None]:
        """Each field's array (sliceable along rows) and a function that closes them, or None."""


class Backend(Protocol):
    """A container format: registered with backends.register_backend under ``name``."""

    name: str
    suffixes: tuple[str, ...]  # path suffixes a new pool of this backend ends with; the first is the usual one
    label: str  # what its container is, for messages: "an HDF5 file"
    archive: ArchiveForm

    def holds(self, path: str) -> bool:
        """Whether the existing ``path`` has this backend's container form (a file, a directory):
        how a pool whose suffix says nothing (``backup.pool``) finds its backend. Never raises."""

    def top_level(self, path: str) -> tuple[dict, list[str]] | None:
        """The container's top-level attributes and member names, or None when ``path`` is not
        a container of this format; raises when it is one that cannot be read. This is how
        ``--overwrite`` tells a pool or archive expstore wrote (maintenance/destination.py)."""

    def writes(self, relative: str) -> bool:
        """Whether a file at ``relative`` inside a directory container is one this backend writes
        (``--overwrite`` never deletes a directory holding anything else)."""

    def create(self, path: str, meta: dict, schema: Schema, slots: int, chunk_rows: int,
               commit_slots: bytes) -> list[str]:
        """Build a new container at ``path``; return the files to preallocate and fsync."""

    def read_layout(self, path: str) -> Layout:
        """Read the metadata and the byte extents, without scanning the data: from the pool's
        layout record when it has a usable one (``Layout.from_record``), else from the container."""

    def record_layout(self, path: str, layout: Layout) -> bool:
        """Write the layout record of ``layout``, just read from the container (not from a record),
        so that later opens skip the container library; False where the pool has no room for one.
        Called by a writer's open (it holds the pool's lock); optional for a backend."""

    def container_findings(self, path: str, layout: Layout) -> list[str]:
        """What a plain reader of the format would trip on: arrays missing or unreadable."""

    def repair_container(self, path: str) -> list[str]:
        """Restore what a plain reader needs and the metadata defines; one sentence per action."""

    def disk_nbytes(self, schema: Schema, slots: int) -> int:
        """About how many bytes a container of this size takes on disk."""
