"""Prioritized replay with recency: two weightings of one row, drawn exactly.

- With ``ERE(k, K)`` the draw is prioritized among the newest ``c_k`` rows: Emphasizing Recent
  Experience over prioritized replay, as Wang & Ross 2019 combine them (section 4.2).
- With ``ExponentialRecency(half_life)`` a row is drawn with probability proportional to
  ``priority ** alpha * 0.5 ** (age / half_life)``. The window is cut into bands of
  ``ceil(half_life)`` rows by age; a band is chosen by its priority mass times the recency
  weight of its newest row (O(bands) prefix sums of the sum tree), a row within it by
  priority, and the row is kept with probability ``0.5 ** (its age within the band /
  half_life)`` (at least 1/2), else drawn again: rejection sampling, so the draw is exact.
  Bands past ~1075 half-lives carry a weight below the smallest float64 and are left out.

Importance weights correct the priorities only, over the rows the recency strategy draws
from (ERE: the newest c_k rows; exponential: the whole window), as a recency strategy alone
is never corrected either: ``(N * P) ** -beta`` with ``P = priority ** alpha / mass``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError
from .base import WindowView
from .prioritized import Prioritized
from .recency import ERE, ExponentialRecency

MAX_BANDS = 1076  # 0.5 ** 1075 is below the smallest float64: older bands weigh exactly 0
_MAX_ROUNDS = 64  # rejection rounds; each keeps at least half of the rows it tries


@dataclass(frozen=True)
class PrioritizedRecency:
    """Prioritized replay weighted by recency too (see the module docstring).

    Args:
        prioritized: the priority exponents (``Prioritized(alpha, beta)``).
        recency: ``ERE(k, K)`` or ``ExponentialRecency(half_life)``.
    """

    prioritized: Prioritized
    recency: ERE | ExponentialRecency

    def __post_init__(self) -> None:
        if not isinstance(self.prioritized, Prioritized):
            raise InvalidArgumentError(f"prioritized={self.prioritized!r} must be expstore.Prioritized(alpha, beta)")
        if not isinstance(self.recency, (ERE, ExponentialRecency)):
            raise InvalidArgumentError(f"recency={self.recency!r} must be expstore.ERE(k, K) or "
                                       "expstore.ExponentialRecency(half_life) to combine with prioritized replay")

    def _population(self, view: WindowView) -> WindowView:
        """The rows the priorities are drawn (and corrected) among."""
        if isinstance(self.recency, ERE):
            return view.between(view.head - self.recency.window_rows(view.rows))
        return view

    def draw(self, rng: np.random.Generator, view: WindowView, count: int) -> np.ndarray:
        if isinstance(self.recency, ERE):
            return self.prioritized.draw(rng, self._population(view), count)
        index = self.prioritized.synced(view)
        half_life = float(self.recency.half_life)
        width = max(1, math.ceil(half_life))
        bands = min(-(-view.rows // width), MAX_BANDS)
        highs = view.head - width * np.arange(bands, dtype=np.int64)
        lows = np.maximum(highs - width, view.tail)
        first_start, first_mass, band_mass = index.masses(lows, highs)
        if not band_mass.sum() > 0:  # every priority is zero: recency alone decides
            return self.recency.draw(rng, view, count)
        band_weight = band_mass * 0.5 ** ((view.head - highs) / half_life)
        cumulative = np.cumsum(band_weight)
        out = np.empty(int(count), np.int64)
        todo = np.arange(int(count))
        for _ in range(_MAX_ROUNDS):
            chosen = np.minimum(np.searchsorted(cumulative, rng.random(len(todo)) * cumulative[-1], side="right"),
                                bands - 1)
            steps = index.draw_in_ranges(rng, lows[chosen], highs[chosen],
                                         (first_start[chosen], first_mass[chosen], band_mass[chosen]))
            age_in_band = highs[chosen] - 1 - steps
            kept = rng.random(len(todo)) < 0.5 ** (age_in_band / half_life)
            out[todo[kept]] = steps[kept]
            todo = todo[~kept]
            if not len(todo):
                return out
        out[todo] = steps[~kept]  # pragma: no cover - 2 ** -64 per row; accepted rather than looping on
        return out

    def weights(self, view: WindowView, steps: np.ndarray) -> np.ndarray:
        return self.prioritized.weights(self._population(view), steps)
