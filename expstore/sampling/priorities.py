"""Proportional prioritized replay: a vectorised sum tree over the pool's slots.

Raw priorities live in the pool (the ``_priority`` array, written in place and committed with
the rows); the tree holds ``priority ** alpha`` per slot, 0 outside the window, and is rebuilt
from the array when a handle first samples with priorities (O(slots), once), then kept in step
with the window incrementally. Updates and draws cost O(batch * log slots), all in numpy.
"""

from __future__ import annotations

import numpy as np

from . import draws as sampling


class SumTree:
    """A complete binary tree of float64 sums over ``leaves`` values (leaf i at size + i)."""

    def __init__(self, leaves: int):
        self.size = 1 << max(0, int(leaves - 1).bit_length())
        self.tree = np.zeros(2 * self.size, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def leaf_values(self, leaves: np.ndarray) -> np.ndarray:
        return self.tree[self.size + leaves]

    def build(self, values: np.ndarray) -> None:
        """Set every leaf at once (values shorter than the tree are padded with zeros)."""
        self.tree[:] = 0.0
        self.tree[self.size:self.size + len(values)] = values
        level = self.size
        while level > 1:
            self.tree[level // 2:level] = self.tree[level:2 * level:2] + self.tree[level + 1:2 * level:2]
            level //= 2

    def update(self, leaves: np.ndarray, values: np.ndarray) -> None:
        """Set some leaves and refresh their ancestors, one vectorised pass per level."""
        if len(leaves) == 0:
            return
        nodes = self.size + np.asarray(leaves, dtype=np.int64)
        self.tree[nodes] = values
        nodes = np.unique(nodes // 2)
        while nodes[0] >= 1:
            self.tree[nodes] = self.tree[2 * nodes] + self.tree[2 * nodes + 1]
            if nodes[0] == 1:
                break
            nodes = np.unique(nodes // 2)

    def prefix(self, leaves: np.ndarray) -> np.ndarray:
        """For each leaf index in [0, size]: the sum of the leaves before it."""
        nodes = self.size + np.asarray(leaves, dtype=np.int64)
        sums = np.zeros(len(nodes), dtype=np.float64)
        ends = nodes == 2 * self.size  # "every leaf": one past the last
        sums[ends] = self.total
        nodes = np.where(ends, self.size, nodes)
        while nodes[0] > 1:  # every node sits on the same level, so one test serves them all
            right = (nodes & 1) == 1
            sums += np.where(right, self.tree[nodes - 1], 0.0)
            nodes //= 2
        return sums

    def find(self, targets: np.ndarray) -> np.ndarray:
        """For each target in [0, total): the leaf whose cumulative range holds it."""
        nodes = np.ones(len(targets), dtype=np.int64)
        remaining = np.asarray(targets, dtype=np.float64).copy()
        while nodes[0] < self.size:
            left = 2 * nodes
            left_sum = self.tree[left]
            go_right = (remaining >= left_sum) & (self.tree[left + 1] > 0)
            remaining = np.where(go_right, remaining - left_sum, remaining)
            nodes = np.where(go_right, left + 1, left)
        return nodes - self.size


class PriorityIndex:
    """The sum tree of one store handle, kept in step with the window it last saw."""

    def __init__(self, priorities: np.ndarray, slots: int):
        self.priorities = priorities
        self.slots = slots
        self.tree: SumTree | None = None
        self.alpha: float | None = None
        self.low = self.high = 0
        self.version = None

    def sync(self, low: int, high: int, alpha: float, version=None) -> None:
        """Bring the tree to the window [low, high); rebuild when alpha or ``version`` changed."""
        rebuild = (self.tree is None or alpha != self.alpha or version != self.version
                   or low >= self.high or high - self.high > self.slots)
        if not rebuild and (low, high) == (self.low, self.high):
            return  # in step already: the common case of a learner sampling between appends
        if rebuild:
            self.tree = self.tree or SumTree(self.slots)
            values = np.zeros(self.slots)
            steps = np.arange(low, high, dtype=np.int64)
            values[steps % self.slots] = self._scaled(steps % self.slots, alpha)
            self.tree.build(values)
        else:
            gone = np.arange(self.low, min(low, self.high), dtype=np.int64) % self.slots
            self._built.update(gone, np.zeros(len(gone)))
            new = np.arange(max(self.high, low), high, dtype=np.int64) % self.slots
            self._built.update(new, self._scaled(new, alpha))
        self.low, self.high, self.alpha, self.version = low, high, alpha, version

    @property
    def _built(self) -> SumTree:
        """The tree, once a sync built it (draws always follow a sync)."""
        if self.tree is None:
            raise RuntimeError("the priority tree is used before its first sync")
        return self.tree

    def _scaled(self, slots: np.ndarray, alpha: float) -> np.ndarray:
        return np.asarray(self.priorities[slots], dtype=np.float64) ** alpha

    def set(self, steps: np.ndarray, values: np.ndarray) -> None:
        """New priorities of steps already written to the array; only those in the tree's window."""
        if self.tree is None or self.alpha is None:
            return
        inside = (steps >= self.low) & (steps < self.high)
        self._built.update(steps[inside] % self.slots, np.asarray(values, np.float64)[inside] ** self.alpha)

    def draw(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Step ids drawn in proportion to priority ** alpha, and each one's probability."""
        total = self._built.total
        population = self.high - self.low
        if not total > 0:
            # every priority is zero: proportional replay is undefined, fall back to uniform
            return sampling.uniform(rng, self.low, self.high, count), np.full(count, 1.0 / population)
        slots = self._built.find(sampling.stratified_targets(rng, total, count))
        return sampling.steps_of_slots(slots, self.low, self.slots), self._built.leaf_values(slots) / total

    def draw_range(self, rng: np.random.Generator, low: int, high: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`draw`, among the steps of [low, high) only (inside the tree's window)."""
        if (low, high) == (self.low, self.high):
            return self.draw(rng, count)
        pieces, mass = self._pieces(low, high)
        if not mass > 0:
            return sampling.uniform(rng, low, high, count), np.full(count, 1.0 / (high - low))
        targets = sampling.stratified_targets(rng, mass, count)
        first_start, first_mass, second_start = pieces
        targets = np.where(targets < first_mass, first_start + targets, second_start + targets - first_mass)
        slots = self._built.find(targets)
        # Rounding can land a target on a neighbour outside the range: keep every step inside it.
        steps = np.clip(sampling.steps_of_slots(slots, low, self.slots), low, high - 1)
        return steps, self._built.leaf_values(steps % self.slots) / mass

    def probabilities(self, steps: np.ndarray, low: int, high: int) -> np.ndarray:
        """The probability each step had in a draw over [low, high)."""
        if (low, high) == (self.low, self.high):
            total, population = self._built.total, self.high - self.low
        else:
            total, population = self._pieces(low, high)[1], high - low
        if not total > 0:
            return np.full(len(steps), 1.0 / population)
        return self._built.leaf_values(np.asarray(steps) % self.slots) / total

    def _pieces(self, low: int, high: int) -> tuple[tuple[float, float, float], float]:
        """[low, high) as at most two runs of slots (the ring wraps): the prefix sum where the
        first run starts, its mass, the prefix sum where the second starts (0), and the mass."""
        start = low % self.slots
        first_end = min(start + (high - low), self.slots)
        second_end = high - low - (first_end - start)
        prefix = self._built.prefix(np.array([start, first_end, second_end]))
        first_mass = float(prefix[1] - prefix[0])
        return (float(prefix[0]), first_mass, 0.0), first_mass + float(prefix[2])

    def masses(self, lows: np.ndarray, highs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For step ranges [lows[i], highs[i]) inside the tree's window (each at most ``slots``
        long): the prefix sum where each range's first run of slots starts, that run's mass, and
        the range's whole mass (a range over the ring's edge is two runs; the second starts at 0)."""
        tree = self._built
        lows, highs = np.asarray(lows, np.int64), np.asarray(highs, np.int64)
        starts = lows % self.slots
        first_ends = np.minimum(starts + (highs - lows), self.slots)
        second_ends = highs - lows - (first_ends - starts)
        prefix = tree.prefix(np.concatenate([starts, first_ends, second_ends])).reshape(3, -1)
        first_mass = prefix[1] - prefix[0]
        return prefix[0], first_mass, first_mass + prefix[2]

    def draw_in_ranges(self, rng: np.random.Generator, lows: np.ndarray, highs: np.ndarray,
                       pieces: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """One step id per range [lows[i], highs[i]), in proportion to priority ** alpha within it
        (uniform within a range whose priorities are all zero); ``pieces``: the ranges'
        ``masses`` when the caller has them already."""
        first_start, first_mass, mass = self.masses(lows, highs) if pieces is None else pieces
        targets = rng.random(len(lows)) * mass
        targets = np.where(targets < first_mass, first_start + targets, targets - first_mass)
        steps = sampling.steps_of_slots(self._built.find(targets), lows, self.slots)
        empty = ~(mass > 0)
        if empty.any():
            steps[empty] = lows[empty] + (rng.random(int(empty.sum())) * (highs - lows)[empty]).astype(np.int64)
        # Rounding can land a target on a neighbour outside the range: keep every step inside it.
        return np.clip(steps, lows, highs - 1)
