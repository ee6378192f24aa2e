"""Building an imported pool aside and renaming it into place, with the dataset's episodes.

``Store.extend`` ends an episode only at a ``terminated`` or ``truncated`` row. Formats that
number their episodes (Parquet's ``episode_id``, LeRobot's ``episode_index``) also end episodes
with neither flag: a teleoperated demonstration that simply stopped, an episode cut off when its
recorder stopped. Each slice therefore says where such episodes end, and the builder closes them
there with ``Store.end_episodes``, so that ``store.episodes()`` lists the dataset's episodes. A
slice may name each row's env id, so that episodes that ran at the same time (a vector env's,
their rows interleaved) stay apart; without, every row goes on env 0.

An error part-way (a damaged file found late) removes the temporary: the destination is never
half-written (files.build_aside, the rule every convert and import follows).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends import files, resolve_backend
from ..core import lock
from ..core.opening import open as open_store
from ..maintenance.convert import make_parent
from ..schema import Schema


@dataclass
class ImportSlice:
    """Consecutive rows of an import, and the offsets (exclusive ends, within the slice) where
    an episode ends without a terminated or truncated flag on its last row; ``env_ids``: each
    row's env id (None: all on env 0)."""

    rows: dict[str, np.ndarray]
    episode_ends: list[int] = field(default_factory=list)
    env_ids: np.ndarray | None = None


def episode_ends(episode_ids: np.ndarray, next_id: int | None, done: np.ndarray | None) -> list[int]:
    """Ends of the episodes in a slice of rows tagged with ``episode_ids`` whose last row
    carries no flag (``done``: terminated | truncated). ``next_id``: the first row's episode id
    after the slice (None at the end of the data: the last episode ends there)."""
    ids = np.asarray(episode_ids)
    if not len(ids):
        return []
    ends = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    if next_id is None or next_id != ids[-1]:
        ends = np.append(ends, len(ids))
    if done is not None:
        ends = ends[~np.asarray(done, bool)[ends - 1]]
    return ends.tolist()


def backend_for(dst: str, backend: str | None) -> str:
    return resolve_backend(dst, backend).name


def build_imported_pool(dst: str, backend: str | None, schema: Schema, capacity: int, attrs: dict,
                        slices: Iterable[ImportSlice], *, overwrite: bool = False, first_step_id: int = 0,
                        heap_bytes: dict[str, int] | None = None) -> None:
    """Create pool ``dst`` from ``slices`` at a temporary sibling, then rename it into place
    (``heap_bytes``: the heap sizes of its ragged fields, as ``expstore.open`` takes them)."""

    def fill(store) -> None:
        for part in slices:
            _append(store, part)

    build_filled_pool(dst, backend, fill, overwrite=overwrite, capacity=capacity, schema=schema, attrs=attrs,
                      first_step_id=first_step_id, heap_bytes=heap_bytes)


def build_filled_pool(dst: str | os.PathLike, backend: str | None, fill: Callable[[Any], None], *,
                      overwrite: bool = False, **create: Any) -> None:
    """Create pool ``dst`` at a temporary sibling with ``expstore.open``'s ``create`` options,
    let ``fill`` write (and check) it through the open store (unlike maintenance/writing.py's
    build_pool, which takes the rows), commit it durably, then rename it into place; an error
    in ``fill`` leaves nothing behind."""
    dst = os.fspath(dst)
    chosen = backend_for(dst, backend)
    make_parent(dst)

    def build(temp: str) -> list[str]:
        store = open_store(temp, "w", backend=chosen, fsync=False, **create)
        try:
            fill(store)
            store.flush(fsync=True)
        finally:
            store.close()
            files.remove_path(lock.lock_path(temp))
        return []  # creating the pool allocated its files

    files.build_aside(dst, build, replace=overwrite)


def _append(store, part: ImportSlice) -> None:
    """Extend the pool by the slice, ending each episode that ends without a flag right after
    its last row (on its own env: the other envs' episodes run on)."""
    start = 0
    n_rows = len(next(iter(part.rows.values()))) if part.rows else 0
    for end in [*part.episode_ends, None]:
        stop = n_rows if end is None else end
        if stop > start:
            store.extend({name: values[start:stop] for name, values in part.rows.items()},
                         env_ids=None if part.env_ids is None else part.env_ids[start:stop])
        if end is not None:
            store.end_episodes(None if part.env_ids is None else int(part.env_ids[end - 1]))
        start = stop
