"""Recency-weighted sampling: Emphasizing Recent Experience (ERE) and exponential recency.

Both weight rows by their age in steps (the newest committed row has age 0), both draw a
batch in O(batch) from a seeded generator, and both are pure: functions of integers and
arrays, no files. Both are samplers (base.py): ``Store.sample(..., recency=...)`` or
``sampler=`` applies them within the rows that can be sampled (all committed rows, or those
within ``max_age``: see age_window.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError
from .base import WindowView

ERE_ETA = 0.996  # Wang & Ross 2019, the value used for all MuJoCo tasks
ERE_C_MIN = 5_000


@dataclass(frozen=True)
class ERE:
    """Emphasizing Recent Experience (Wang & Ross 2019) for the k-th minibatch of a phase.

    Within an update phase of K minibatch updates, the k-th (1-based) draws uniformly from the
    newest ``c_k = max(N * eta ** (k * 1000 / K), c_min)`` rows, N being the rows that can be
    sampled (all committed rows, or those within ``max_age``); c_k never exceeds N.

    Args:
        k: which minibatch of the phase, 1..K.
        K: minibatch updates in the phase (the paper: the length of the episode just ended).
        eta: how strongly recent data is emphasized (1.0 is uniform sampling).
        c_min: the smallest window, in rows.
    """

    k: int
    K: int
    eta: float = ERE_ETA
    c_min: int = ERE_C_MIN

    def __post_init__(self) -> None:
        if not (_is_int(self.K) and self.K >= 1 and _is_int(self.k) and 1 <= self.k <= self.K):
            raise InvalidArgumentError(f"ERE needs 1 <= k <= K (ints), got k={self.k!r}, K={self.K!r}; "
                                       "k counts the minibatches of the current update phase")
        if not 0.0 < float(self.eta) <= 1.0:
            raise InvalidArgumentError(f"ERE eta={self.eta!r} must lie in (0, 1]; the paper uses 0.996")
        if not _is_int(self.c_min) or self.c_min < 1:
            raise InvalidArgumentError(f"ERE c_min={self.c_min!r} must be a positive int (rows)")

    def window_rows(self, pool_rows: int) -> int:
        """c_k for a pool of ``pool_rows`` sampleable rows."""
        c_k = max(int(pool_rows * float(self.eta) ** (self.k * 1000.0 / self.K)), int(self.c_min))
        return max(1, min(int(pool_rows), c_k))

    def draw(self, rng: np.random.Generator, view: WindowView, count: int) -> np.ndarray:
        """``count`` step ids uniform over the newest c_k rows of the view's window."""
        high = view.head
        return rng.integers(high - self.window_rows(view.rows), high, size=int(count), dtype=np.int64)


class ERESchedule:
    """Tracks k for ERE: each ``next()`` is the next minibatch of the phase.

    Example::

        schedule = ERESchedule(K=1000)
        for k in range(1000):
            batch = pool.sample(256, recency=schedule.next())
        schedule.start_phase(K=episode_length)  # optional: a phase of another length

    After K minibatches a new phase starts by itself (k goes back to 1).
    """

    def __init__(self, K: int, eta: float = ERE_ETA, c_min: int = ERE_C_MIN):
        ERE(1, K, eta, c_min)  # validates
        self.K, self.eta, self.c_min = int(K), float(eta), int(c_min)
        self.k = 0  # minibatches drawn in the current phase

    def start_phase(self, K: int | None = None) -> None:
        """Begin a new phase (of ``K`` minibatches, or the same number as before)."""
        if K is not None:
            ERE(1, K, self.eta, self.c_min)
            self.K = int(K)
        self.k = 0

    def next(self) -> ERE:
        """The ERE of the next minibatch."""
        if self.k >= self.K:
            self.k = 0
        self.k += 1
        return ERE(self.k, self.K, self.eta, self.c_min)

    def state_dict(self) -> dict:
        return {"K": self.K, "eta": self.eta, "c_min": self.c_min, "k": self.k}

    def load_state_dict(self, state: dict) -> None:
        self.K, self.eta = int(state["K"]), float(state["eta"])
        self.c_min, self.k = int(state["c_min"]), int(state["k"])


@dataclass(frozen=True)
class ExponentialRecency:
    """Weight each row by ``0.5 ** (age / half_life)``, age in steps (the newest row has age 0).

    Drawn exactly, by inverting the truncated geometric distribution: O(batch).
    """

    half_life: float

    def __post_init__(self) -> None:
        if not (isinstance(self.half_life, (int, float, np.number)) and math.isfinite(self.half_life)
                and self.half_life > 0):
            raise InvalidArgumentError(f"half_life={self.half_life!r} must be a positive number of steps")

    def probabilities(self, pool_rows: int) -> np.ndarray:
        """P(age = a) for a = 0..pool_rows-1 (for tests and plots; O(pool))."""
        weights = 0.5 ** (np.arange(int(pool_rows)) / float(self.half_life))
        return weights / weights.sum()

    def draw(self, rng: np.random.Generator, view: WindowView, count: int) -> np.ndarray:
        """``count`` step ids of the view's window, each weighted by its age."""
        rows, high = view.rows, view.head
        log_decay = -math.log(2.0) / float(self.half_life)  # log of the per-step weight ratio
        # CDF(a) = (1 - decay**(a+1)) / (1 - decay**rows); solve CDF(a) >= u for the smallest a.
        mass = -math.expm1(rows * log_decay)
        ages = np.floor(np.log1p(-rng.random(int(count)) * mass) / log_decay).astype(np.int64)
        return high - 1 - np.clip(ages, 0, rows - 1)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
