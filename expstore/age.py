"""Age of data: ``max_age`` windows for sampling, and the age distribution of a pool.

Age is measured from the newest committed row at the moment of the call (a snapshot), in one
of two units:

- ``"policy_versions"``: ``newest row's policy_version - row's policy_version`` (or
  ``current_version - row's`` when the caller names the current version). Writers stamp the
  version in a ``policy_version`` int field (``RecordEpisodes(policy_version=...)``; the
  reference trainer stamps its SAC update count).
- ``"steps"``: ``newest step id - row's step id``, i.e. how many transitions were appended
  after it. The newest row has age 0.

``"auto"`` counts policy versions when the pool has a ``policy_version`` field, else steps.

Finding where a version window starts is a binary search over step ids (O(log pool) element
reads) that relies on versions not decreasing along step ids, as one trainer writes them.
Whatever the search finds, every drawn row is checked against the limit on the values
actually read, so an older row is never returned, even with versions out of order or a writer
appending meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidArgumentError, SchemaError
from .streaming import Progress, RowSource, iter_slices

VERSION_FIELD = "policy_version"
AGE_UNITS = ("auto", "policy_versions", "steps")


@dataclass(frozen=True)
class AgeLimit:
    """Where a ``max_age`` window starts, for one sample call.

    Attributes:
        low: the oldest step id worth drawing (rows below it are too old, or evicted).
        min_version: rows need ``policy_version >= min_version`` (None: counting steps).
    """

    low: int
    min_version: int | None = None

    def admits(self, batch: dict) -> np.ndarray:
        """Which gathered rows are young enough (checked on the values actually read)."""
        if self.min_version is None:
            return batch["step_id"] >= self.low
        return np.asarray(batch[VERSION_FIELD]) >= self.min_version


def resolve_age_unit(age_unit: str, field_names) -> str:
    """``"auto"`` -> ``"policy_versions"`` when the pool stamps versions, else ``"steps"``."""
    if age_unit not in AGE_UNITS:
        raise InvalidArgumentError(f"age_unit={age_unit!r} is not one of {AGE_UNITS}")
    if age_unit == "auto":
        return "policy_versions" if VERSION_FIELD in field_names else "steps"
    if age_unit == "policy_versions" and VERSION_FIELD not in field_names:
        raise SchemaError(f"age_unit='policy_versions' needs a {VERSION_FIELD!r} field, the pool stores "
                          f"{list(field_names)}; record with RecordEpisodes(policy_version=...) or use "
                          "age_unit='steps'")
    return age_unit


def age_limit(max_age: int, unit: str, low: int, high: int, versions: np.ndarray | None, slots: int,
              current_version: int | None = None) -> AgeLimit:
    """The window of rows at most ``max_age`` old in the committed window [low, high).

    Args:
        max_age: the largest age allowed (0: only the newest row, or the newest version).
        unit: "policy_versions" or "steps" (see :func:`resolve_age_unit`).
        low, high: the committed window (high exclusive, high > low).
        versions: the ``policy_version`` column indexed by slot (policy_versions only).
        slots: ring slots (slot = step id % slots).
        current_version: age is counted from this version instead of the newest row's.
    """
    if not _is_int(max_age) or max_age < 0:
        raise InvalidArgumentError(f"max_age={max_age!r} must be an int >= 0")
    if unit == "steps":
        return AgeLimit(max(low, high - 1 - int(max_age)))
    newest = int(versions[(high - 1) % slots]) if current_version is None else int(current_version)
    min_version = newest - int(max_age)
    return AgeLimit(first_version_at_least(versions, slots, low, high, min_version), min_version)


def first_version_at_least(versions: np.ndarray, slots: int, low: int, high: int, min_version: int) -> int:
    """The first step id in [low, high) whose version is >= min_version (high if none).

    A binary search: it assumes versions do not decrease along step ids.
    """
    lo, hi = low, high
    while lo < hi:
        middle = (lo + hi) // 2
        if int(versions[middle % slots]) >= min_version:
            hi = middle
        else:
            lo = middle + 1
    return lo


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


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
    from .streaming import PoolSource

    if store.schema is None:  # created without a schema and never written
        return {"rows": 0, "first_step_id": 0, "next_step_id": 0, "age": {"steps": {"rows": 0}, "policy_versions": None}}
    source = PoolSource(store)
    stats = {"rows": len(source), "first_step_id": source.first_step_id,
             "next_step_id": source.first_step_id + len(source), "age": age_distribution(source)}
    if duplicates:
        from .duplicates import duplicate_report

        stats["duplicates"] = duplicate_report(source)
    return stats
