"""Writing a copy: a pool built aside from slices of rows, then renamed into place.

``convert``, ``merge`` and the D4RL import hand ``build_pool`` the destination's schema and the
rows, slice by slice; the pool is created at a temporary sibling (files.build_aside), filled
with ``fsync=False`` extends, flushed durably once, and renamed only when complete. Step ids,
episodes and priorities of the sources come across through a ``Carry`` (carry.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..backends import files
from ..core import commit, lock
from ..core.heap_dictionary import store_dictionaries
from ..core.opening import open as open_store
from .carry import Carry
from .recode import as_extend_batch

_DEFAULT_SLACK = 10_000


def make_parent(dst: str) -> None:
    """Create the directory that will hold ``dst`` (the temporary is built beside it)."""
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)



@dataclass
class Written:
    """The window of a pool just built, and what bounds it (``Store.window_bound``)."""

    first_step_id: int
    next_step_id: int
    window_bound: str | None


def build_pool(dst: str, backend: str, schema, capacity: int, attrs: dict, slices, *, overwrite: bool = False,
               meta: dict | None = None, carry: Carry | None = None, heap_bytes: Any = None,
               dictionaries: dict[str, bytes] | None = None) -> Written:
    """Build a pool at ``dst`` aside from ``slices`` (iterator of (first_row, batch), or of
    (first_row, batch, bookkeeping) from CopyRows), then rename; returns its window.

    ``meta`` of a source pool carries over its slack, chunk_rows and checksums setting;
    ``carry`` the sources' step ids, episodes and priorities; ``dictionaries`` the trained zstd
    dictionaries of ``+dict`` fields (recode.source_dictionaries).
    """
    make_parent(dst)
    written: list[Written] = []

    def build(temp: str) -> list[str]:
        written.append(_write_pool(temp, backend, schema, capacity, attrs, slices, meta or {}, carry, heap_bytes,
                                   dictionaries or {}))
        return []  # nothing more to preallocate: creating the pool allocated its files (open() builds aside too)

    files.build_aside(dst, build, replace=overwrite)
    return written[0]


def _write_pool(temp: str, backend: str, schema, capacity: int, attrs: dict, slices, meta: dict,
                carry: Carry | None, heap_bytes: Any, dictionaries: dict[str, bytes]) -> Written:
    slack = copy_slack(meta, capacity)
    writing: dict[str, Any] = {"backend": backend, "commit_every": slack, "fsync": False}
    store = open_store(temp, "w", capacity=capacity, schema=schema, attrs=attrs,
                       chunk_rows=_chunk_rows(meta, capacity + slack), slack=slack,
                       checksums=bool(meta.get("checksums", False)), **writing, heap_bytes=heap_bytes,
                       **(carry.create_options() if carry else {}))
    if dictionaries:  # before any row: opened again, the pool compresses every row with them
        store_dictionaries(store, dictionaries)
        store.close()
        store = open_store(temp, "r+", **writing)
    schema = store.schema
    try:
        for first, batch, *bookkeeping in slices:
            store = _starting_at(store, carry, writing)
            store.extend(as_extend_batch(batch, schema) if schema.heap_fields() else batch)
            if carry:
                carry.after_rows(store, first, *bookkeeping)
        store = _starting_at(store, carry, writing)
        if carry:
            carry.finish(store)
        store.flush(fsync=True)
        first_step_id, next_step_id = store.window
        return Written(first_step_id, next_step_id, store.window_bound)
    finally:
        store.close()
        files.remove_path(lock.lock_path(temp))


def _starting_at(store, carry: Carry | None, writing: dict):
    """The new, still empty pool ``store``, whose first step id is the copy's (``carry``).

    It was created before the first rows were read, at the planned first step id: building a
    large pool takes a while, and a writer appending to the source meanwhile would evict more.
    When the copy then starts later, the empty pool's commit record is rewritten as a creation at
    that step id would have written it, and the pool is opened again.
    """
    if carry is None or len(store) or store.next_step_id == carry.first_step_id:
        return store
    path, extent = store.path, store.layout.commit
    store.close()
    fd = os.open(extent.path, os.O_RDWR)
    try:
        os.pwrite(fd, commit.initial_slots(carry.first_step_id), extent.offset)
    finally:
        os.close(fd)
    return open_store(path, "r+", **writing)


def copy_slack(meta: dict, capacity: int) -> int:
    """The copy's slack: its source pool's (``meta``), else one interval of ``open``'s default
    ``commit_every`` (the slack ``open`` gives a pool that commits in place; one whose commits
    pipeline gets twice that there, see opening.default_slack)."""
    if "slots" in meta and "capacity" in meta:
        return max(1, min(meta["slots"] - meta["capacity"], capacity))
    return min(_DEFAULT_SLACK, capacity)


def _chunk_rows(meta: dict, rows: int) -> int | None:
    if "chunk_rows" not in meta:
        return None  # an archive: let the pool pick its default
    return max(1, min(int(meta["chunk_rows"]), rows))
