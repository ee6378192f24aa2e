"""Proportional prioritized replay (Schaul et al. 2016) as a strategy over the sum tree.

Rows are drawn in proportion to ``priority ** alpha`` (priorities.py keeps the tree in step
with the window) and carry importance weights ``(N * P) ** -beta`` divided by their batch
maximum. Within a narrower window (``max_age``: age_window.py) the draw is proportional among
that window's rows only, and N and P are those of the narrower window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError, SchemaError
from . import draws
from .base import WindowView
from .priorities import PriorityIndex


@dataclass(frozen=True)
class Prioritized:
    """Draw step ids in proportion to ``priority ** alpha``; weights with exponent ``beta``.

    Args:
        alpha: how strongly priorities count (0 is uniform).
        beta: the importance-weight exponent (1 corrects the bias fully).
    """

    alpha: float = 0.6
    beta: float = 0.4

    def __post_init__(self) -> None:
        if not float(self.alpha) >= 0 or not float(self.beta) >= 0:
            raise InvalidArgumentError(f"alpha={self.alpha!r} and beta={self.beta!r} must be >= 0")

    def draw(self, rng: np.random.Generator, view: WindowView, count: int) -> np.ndarray:
        index = self.synced(view)
        return index.draw_range(rng, view.tail, view.head, count)[0]

    def weights(self, view: WindowView, steps: np.ndarray) -> np.ndarray:
        """The weights of ``steps`` drawn from ``view`` (the tree is in step since that draw)."""
        if view.priorities is None:
            raise SchemaError("prioritized weights need the pool's priorities")
        probabilities = view.priorities.probabilities(steps, view.tail, view.head)
        return draws.importance_weights(probabilities, view.rows, self.beta)

    def synced(self, view: WindowView) -> PriorityIndex:
        """The view's priority tree, brought in step with its whole window and alpha."""
        if view.priorities is None:
            raise SchemaError("prioritized sampling needs the pool's episode bookkeeping and priorities; "
                              "copy the pool into a new one with `expstore convert`")
        view.priorities.sync(*view.whole_window, float(self.alpha), view.commit_seq)
        return view.priorities
