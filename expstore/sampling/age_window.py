"""Age of data: the ``max_age`` window that sampling draws within.

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

from dataclasses import dataclass, field

import numpy as np

from ..errors import EmptyStoreError, InvalidArgumentError, SchemaError
from .base import Sampler, WindowView
from .uniform import Uniform

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
        """Which gathered rows are young enough (checked on the values actually read; for
        sequences, [batch, length] arrays, on their start rows)."""
        if self.min_version is None:
            return _start_rows(batch["step_id"]) >= self.low
        return _start_rows(np.asarray(batch[VERSION_FIELD])) >= self.min_version


@dataclass(frozen=True)
class AgeWindow:
    """A sampler that draws only rows at most ``max_age`` old, with another strategy inside.

    The window starts where :func:`age_limit` finds it, for the view the store took at the
    start of the call (its ``head`` is the snapshot the age is counted from); ``within``
    (uniform by default; ``Prioritized`` or a recency strategy compose) draws inside it, and
    every gathered row is checked against the limit on the values read.

    Args:
        max_age: the largest age allowed, an int >= 0.
        age_unit: "policy_versions", "steps" or "auto" (see :func:`resolve_age_unit`).
        current_version: with policy versions, count age from this version.
        within: the strategy that draws inside the window.
    """

    max_age: int
    age_unit: str = "auto"
    current_version: int | None = None
    within: Sampler = field(default_factory=Uniform)
    _last: dict = field(default_factory=dict, compare=False, repr=False)  # the limit of the last view

    def __post_init__(self) -> None:
        if not _is_int(self.max_age) or self.max_age < 0:
            raise InvalidArgumentError(f"max_age={self.max_age!r} must be an int >= 0")
        if self.age_unit not in AGE_UNITS:
            raise InvalidArgumentError(f"age_unit={self.age_unit!r} is not one of {AGE_UNITS}")
        if not callable(getattr(self.within, "draw", None)):
            raise InvalidArgumentError(f"within={self.within!r} is not a sampler (it has no draw method)")

    def limit(self, view: WindowView) -> AgeLimit:
        """Where the window of young rows starts in ``view`` (computed once per view)."""
        key = (view.tail, view.head, view.commit_seq)
        entry = self._last.get("entry")  # one (key, limit) tuple: threads sharing it see a matching pair
        if entry is None or entry[0] != key:
            unit = resolve_age_unit(self.age_unit, view.fields)
            versions = view.versions if unit == "policy_versions" else None
            limit = age_limit(self.max_age, unit, view.tail, view.head, versions, view.slots, self.current_version)
            if limit.low >= view.head:
                raise EmptyStoreError(f"no committed row is at most {self.max_age} {unit} old "
                                      f"(policy_version >= {limit.min_version}); raise max_age")
            entry = self._last["entry"] = (key, limit)
        return entry[1]

    def young(self, view: WindowView) -> WindowView:
        """The view narrowed to the young rows."""
        return view.between(max(view.tail, self.limit(view).low))

    def draw(self, rng: np.random.Generator, view: WindowView, count: int) -> np.ndarray:
        return self.within.draw(rng, self.young(view), count)

    def weights(self, view: WindowView, steps: np.ndarray) -> np.ndarray | None:
        inner = getattr(self.within, "weights", None)
        return None if inner is None else inner(self.young(view), steps)

    def admits(self, view: WindowView, batch: dict[str, np.ndarray]) -> np.ndarray:
        ok = self.limit(view).admits(batch)
        inner = getattr(self.within, "admits", None)
        return ok if inner is None else ok & inner(self.young(view), batch)


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
    if versions is None:
        raise SchemaError(f"age_unit='policy_versions' needs the pool's {VERSION_FIELD!r} column")
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


def _start_rows(values: np.ndarray) -> np.ndarray:
    return values[:, 0] if values.ndim > 1 else values
