"""The age distribution of a pool, for ``expstore stats`` and ``Store.stats()``.

What age is, and its two units, is said in sampling/age_window.py.
"""

from __future__ import annotations

import numpy as np

from ..sampling.age_window import VERSION_FIELD
from .duplicates import duplicate_report
from .streaming import PoolSource, Progress, RowSource, iter_slices


class _AgeCounts:
    """Exact counts per age, grown as slices stream by (memory: one int per distinct age)."""

    def __init__(self):
        self.lowest = 0
        self.counts = np.zeros(0, np.int64)

    def add(self, ages: np.ndarray) -> None:
        if not ages.size:
            return
        low = int(ages.min()) if not self.counts.size else min(self.lowest, int(ages.min()))
        high = max(int(ages.max()), self.lowest + len(self.counts) - 1)
        grown = np.zeros(high - low + 1, np.int64)
        grown[self.lowest - low:self.lowest - low + len(self.counts)] = self.counts
        self.lowest, self.counts = low, grown
        self.counts += np.bincount(ages - low, minlength=len(grown))

    def summary(self, bins: int = 10) -> dict:
        total = int(self.counts.sum())
        if not total:
            return {"rows": 0}
        ages = self.lowest + np.arange(len(self.counts))
        cumulative = np.cumsum(self.counts)
        quantile = {name: int(ages[np.searchsorted(cumulative, q * total, side="left")])
                    for name, q in (("p10", 0.1), ("median", 0.5), ("p90", 0.9))}
        edges = np.linspace(ages[0], ages[-1] + 1, min(bins, len(ages)) + 1)
        counts = np.histogram(ages, bins=edges, weights=self.counts)[0].astype(np.int64)
        return {"rows": total, "mean": float((ages * self.counts).sum() / total), "min": int(ages[0]),
                **quantile, "max": int(ages[-1]),
                "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}


def _uniform_ages(rows: int, bins: int = 10) -> dict:
    """The summary of ages 0..rows-1, each once (ages in steps), without materialising them."""
    if not rows:
        return {"rows": 0}
    edges = np.linspace(0, rows, min(bins, rows) + 1)
    whole = np.ceil(edges).astype(np.int64)
    return {"rows": rows, "mean": (rows - 1) / 2, "min": 0,
            **{name: int(np.ceil(q * rows)) - 1 if q * rows >= 1 else 0
               for name, q in (("p10", 0.1), ("median", 0.5), ("p90", 0.9))},
            "max": rows - 1, "histogram": {"edges": edges.tolist(), "counts": np.diff(whole).tolist()}}


def age_distribution(source: RowSource, progress: Progress | None = None) -> dict:
    """The pool's age distribution in steps, and in policy versions when it stamps them.

    Versions are read in one bounded-memory pass; ages in steps need no pass (they are
    0..rows-1). Returns ``{"steps": {...}, "policy_versions": {...} or None}``, each with
    rows, mean, min, p10, median, p90, max and an equal-width histogram.
    """
    rows = len(source)
    result = {"steps": _uniform_ages(rows), "policy_versions": None}
    if VERSION_FIELD not in source.schema or not rows:
        return result
    newest = int(np.asarray(source.read(rows - 1, rows)[VERSION_FIELD])[0])
    versions = _AgeCounts()
    for _first, sliced in iter_slices(source, fields=[VERSION_FIELD], progress=progress):
        versions.add(newest - np.asarray(sliced[VERSION_FIELD], np.int64).reshape(-1))
    result["policy_versions"] = {"newest_version": newest, **versions.summary()}
    return result


def store_stats(store, duplicates: bool = False) -> dict:
    """What ``Store.stats()`` returns: the window, the age distribution, and optionally the
    duplicate report (see duplicates.py)."""
    if store.schema is None:  # created without a schema and never written
        return {"rows": 0, "first_step_id": 0, "next_step_id": 0,
                "age": {"steps": {"rows": 0}, "policy_versions": None}}
    source = PoolSource(store)
    stats = {"rows": len(source), "first_step_id": source.first_step_id,
             "next_step_id": source.first_step_id + len(source), "window_bound": store.window_bound,
             "age": age_distribution(source)}
    if duplicates:
        stats["duplicates"] = duplicate_report(source)
    return stats
