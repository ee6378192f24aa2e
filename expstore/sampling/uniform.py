"""Uniform sampling: every step id of the window equally likely, with replacement."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import WindowView


@dataclass(frozen=True)
class Uniform:
    """Draw step ids uniformly from the window: ``sample()``'s default strategy."""

    def draw(self, rng: np.random.Generator, view: WindowView, count: int) -> np.ndarray:
        return rng.integers(view.tail, view.head, size=int(count), dtype=np.int64)
