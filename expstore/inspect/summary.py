"""Streaming summaries of a pool: per-field statistics and the episode table.

Both walk the rows once in bounded slices (see streaming.py). Field moments are merged per
slice with Chan's parallel formula, which stays accurate where a running sum of squares
would cancel catastrophically on large float32 pools.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import numpy as np

from ..backends.archive import ArchiveSource
from ..backends.files import is_sparse
from ..core import lock
from ..core.heap_dictionary import TRAIN_ROWS
from .streaming import PoolSource, Progress, RowSource, iter_slices

EPISODE_KEYS = ("episode_id", "first_step_id", "length", "return", "terminated", "truncated", "open", "evicted")


@dataclass
class FieldStats:
    """Moments and counts of every element of one field."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")
    nan: int = 0
    inf: int = 0

    def add(self, values: np.ndarray) -> None:
        flat = np.asarray(values).reshape(-1)
        if flat.dtype.kind == "f":
            finite_mask = np.isfinite(flat)
            self.nan += int(np.isnan(flat).sum())
            self.inf += int(np.isinf(flat).sum())
            flat = flat[finite_mask]
        if flat.size == 0:
            return
        flat = flat.astype(np.float64)
        n, mean = flat.size, float(flat.mean())
        m2 = float(((flat - mean) ** 2).sum())
        delta = mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.min = min(self.min, float(flat.min()))
        self.max = max(self.max, float(flat.max()))

    def to_json(self) -> dict:
        empty = self.count == 0
        return {"count": self.count, "min": None if empty else self.min, "max": None if empty else self.max,
                "mean": None if empty else self.mean,
                "std": None if empty else float(np.sqrt(self.m2 / self.count)),
                "nan": self.nan, "inf": self.inf}


@dataclass
class _EpisodeScan:
    """Running state of the episode table while slices stream by."""

    first_step_id: int
    evicted_start: bool
    starts: list = field(default_factory=list)
    lengths: list = field(default_factory=list)
    returns: list = field(default_factory=list)
    terminated: list = field(default_factory=list)
    truncated: list = field(default_factory=list)
    current_start: int = 0
    current_return: float = 0.0

    def add(self, first_index: int, reward: np.ndarray, term: np.ndarray, trunc: np.ndarray) -> None:
        ends = np.flatnonzero(term | trunc)
        cumulative = np.concatenate([[0.0], np.cumsum(reward, dtype=np.float64)])
        previous = 0
        for end in ends.tolist():
            self._close(first_index + end + 1, self.current_return + cumulative[end + 1] - cumulative[previous],
                        bool(term[end]), bool(trunc[end]))
            previous = end + 1
        self.current_return += cumulative[-1] - cumulative[previous]

    def _close(self, stop: int, episode_return: float, term: bool, trunc: bool) -> None:
        self.starts.append(self.current_start)
        self.lengths.append(stop - self.current_start)
        self.returns.append(episode_return)
        self.terminated.append(term)
        self.truncated.append(trunc)
        self.current_start, self.current_return = stop, 0.0

    def table(self, rows: int) -> dict[str, np.ndarray]:
        is_open = [False] * len(self.starts)
        if rows > self.current_start:
            self._close(rows, self.current_return, False, False)
            is_open.append(True)
        n = len(self.starts)
        evicted = np.zeros(n, dtype=bool)
        if n and self.evicted_start:
            evicted[0] = True
        return {
            "episode_id": np.arange(n, dtype=np.int64),
            "first_step_id": self.first_step_id + np.asarray(self.starts, dtype=np.int64),
            "length": np.asarray(self.lengths, dtype=np.int64),
            "return": np.asarray(self.returns, dtype=np.float64),
            "terminated": np.asarray(self.terminated, dtype=bool),
            "truncated": np.asarray(self.truncated, dtype=bool),
            "open": np.asarray(is_open, dtype=bool),
            "evicted": evicted,
        }


def has_episode_fields(source: RowSource) -> bool:
    return all(name in source.schema for name in ("reward", "terminated", "truncated"))


def scan_episodes(source: RowSource, progress: Progress | None = None) -> dict[str, np.ndarray]:
    """The episode table from the rows' ``terminated``/``truncated`` flags, in one pass.

    An episode ends at a row whose ``terminated`` or ``truncated`` is set; a last episode
    without such a row is ``open``. When the ring already evicted rows, the first episode
    may have lost its start and is marked ``evicted``. Episode ids count from 0 in the window.
    Without ``reward``/``terminated``/``truncated`` fields the table is empty.
    """
    scan = _EpisodeScan(source.first_step_id, evicted_start=source.first_step_id > 0)
    if not has_episode_fields(source):
        return scan.table(0)
    for first, rows in iter_slices(source, fields=["reward", "terminated", "truncated"], progress=progress):
        scan.add(first, rows["reward"].astype(np.float64).reshape(len(rows["reward"]), -1).sum(axis=1),
                 rows["terminated"].astype(bool).reshape(-1), rows["truncated"].astype(bool).reshape(-1))
    return scan.table(len(source))


def episode_table(source: RowSource, progress: Progress | None = None) -> dict[str, np.ndarray]:
    """The pool's own episode index when it keeps one, else :func:`scan_episodes`."""
    store = getattr(source, "store", None)
    if store is not None and hasattr(store, "episodes"):
        table = store.episodes()
        if table is not None and all(key in table for key in EPISODE_KEYS):
            return _typed(table)
    return scan_episodes(source, progress)


def _typed(table) -> dict[str, np.ndarray]:
    """The pool's own table: the common keys first, then what only a pool's index knows
    (``evicted`` as a row count, ``cut_off``, ``env_id``, ``last_step_id``)."""
    flags = ("terminated", "truncated", "open", "cut_off")
    keys = [*EPISODE_KEYS, *(key for key in table if key not in EPISODE_KEYS)]
    return {key: np.asarray(table[key], dtype=bool if key in flags else None) for key in keys}


def field_stats(source: RowSource, progress: Progress | None = None) -> dict[str, FieldStats]:
    """Min, max, mean, std and NaN/inf counts of every field, in one pass."""
    stats = {name: FieldStats() for name in source.schema}
    for _first, rows in iter_slices(source, progress=progress):
        for name in source.schema:
            values, lengths = rows[name], rows.get(f"{name}_length")
            if source.schema[name].ragged and lengths is not None:  # the rows' own elements, not the padding
                values = values[np.arange(values.shape[1]) < np.asarray(lengths)[:, None]]
            stats[name].add(values)
    return stats


def describe(values: np.ndarray) -> dict:
    """count/mean/std/min/max of a 1-D array (None when empty), for returns and lengths."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
            "min": float(values.min()), "max": float(values.max())}


def episode_summary(table: dict[str, np.ndarray]) -> dict:
    """Return and length summaries over the complete episodes (not open, not evicted)."""
    complete = ~(table["open"] | (table["evicted"] > 0))
    return {"episodes": int(table["length"].size), "complete": int(complete.sum()),
            "return": describe(table["return"][complete]), "length": describe(table["length"][complete])}


def disk_usage(path: str) -> tuple[int, int, bool]:
    """The file's, or the directory's files', size in bytes (apparent), the bytes of disk blocks
    they occupy (allocated), and whether a file is sparse (see files.is_sparse). A sparse copy
    (git checkout, `cp --sparse`, rsync -S) allocates less than its size until a writer opens it."""
    names = [path] if not os.path.isdir(path) else \
        [os.path.join(root, name) for root, _dirs, found in os.walk(path) for name in found]
    stats = [os.stat(name) for name in names]
    return (sum(s.st_size for s in stats), sum(s.st_blocks * 512 for s in stats),
            any(is_sparse(name) for name in names))


def source_info(source: RowSource) -> dict:
    """What ``expstore info`` shows: format, schema, window, episodes, size, commit, writer, attrs."""
    info = {"path": source.path, "kind": source.kind, "schema": source.schema.to_json(),
            "capacity": source.capacity, "length": len(source), "first_step_id": source.first_step_id,
            "next_step_id": source.first_step_id + len(source)}
    info["apparent_nbytes"], info["disk_nbytes"], info["sparse"] = disk_usage(source.path)
    if isinstance(source, PoolSource):
        store = source.store
        commit_unix = store.last_commit_time
        info.update(backend=store.backend, format_version=store.format_version, chunk_rows=store.chunk_rows,
                    slots=source.meta.get("slots"), checksums=bool(source.meta.get("checksums", False)),
                    last_commit_unix=commit_unix,
                    last_commit=None if commit_unix is None else
                    datetime.datetime.fromtimestamp(commit_unix, datetime.UTC).isoformat(timespec="seconds"),
                    writer=lock.holder(source.path))
        info["episodes"] = _indexed_episodes(store)
        heaps = store.heap_usage()
        if heaps:
            info["heaps"] = heaps
            info["window_bound"] = store.window_bound
    elif isinstance(source, ArchiveSource):
        info.update(backend=source.backend, codec=source.codec, format_version=source.meta.get("archive_format"))
    info["attrs"] = source.attrs
    return info


def heap_line(heap: dict) -> str:
    """One heap field's entry of ``source_info(...)["heaps"]`` in words: codec, ratio, heap size
    and use, dictionary (``expstore info`` and the report show it)."""
    ratio = "no rows" if heap["ratio"] is None else \
        f"{heap['ratio']:.2f}x ({nbytes_text(heap['raw_nbytes'])} raw in {nbytes_text(heap['stored_nbytes'])})"
    dictionary = heap.get("dictionary")
    trained = "" if dictionary is None else (f"; dictionary {nbytes_text(dictionary)}" if dictionary else
                                             f"; dictionary not trained yet (on the first {TRAIN_ROWS:,} rows)")
    return (f"{heap['codec']}, ratio {ratio}; heap {nbytes_text(heap['used_nbytes'])} of "
            f"{nbytes_text(heap['heap_nbytes'])} used ({100 * heap['used_fraction']:.0f}%) by {heap['rows']} rows"
            f"{trained}")


def nbytes_text(n: int) -> str:
    """A byte count in the largest binary unit it reaches: ``1.5 MiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _indexed_episodes(store) -> dict | None:
    """Episode counts from the pool's episode index (None when the pool keeps none)."""
    if not hasattr(store, "episodes"):
        return None
    table = _typed(store.episodes())
    return {"count": len(table["length"]), "open": int(table["open"].sum()),
            "complete": int((~(table["open"] | (table["evicted"] > 0))).sum())}
