"""Chain arithmetic for the strategies: pure functions of integers and arrays that return step ids.

They never touch files: the store hands them its window (``low``/``high`` step ids, ``high``
exclusive: the committed head for readers, the writer's own head for the writer) and the
bookkeeping arrays (see backends/internal.py), indexed by slot = step id % slots. Every cost is
O(batch * steps followed), never O(pool).
"""

from __future__ import annotations

import numpy as np


def uniform(rng: np.random.Generator, low: int, high: int, count: int) -> np.ndarray:
    """``count`` step ids drawn uniformly, with replacement, from [low, high)."""
    return rng.integers(low, high, size=int(count), dtype=np.int64)


def next_in_episode(steps: np.ndarray, high: int, slots: int, next_delta: np.ndarray,
                    episode_id: np.ndarray) -> np.ndarray:
    """The step id of the next row of each step's episode, or -1 where there is none in reach.

    A link counts only when its target lies below ``high`` (uncommitted rows are out of reach)
    and carries the same episode id: after a crash a committed row may still point at a row
    the crash discarded and a later episode reused.
    """
    slot = steps % slots
    delta = next_delta[slot]
    target = steps + delta
    reachable = (steps >= 0) & (delta > 0) & (target < high)
    safe = np.where(reachable, target, 0)
    reachable &= episode_id[safe % slots] == episode_id[slot]
    return np.where(reachable, target, -1)


def chains(steps: np.ndarray, length: int, high: int, slots: int, next_delta: np.ndarray,
           episode_id: np.ndarray) -> np.ndarray:
    """[batch, length] step ids: each start step and the rows that follow it in its episode.

    Entries past the episode's last reachable row are -1; valid entries form a prefix.
    """
    out = np.full((len(steps), int(length)), -1, dtype=np.int64)
    out[:, 0] = steps
    for k in range(1, int(length)):
        out[:, k] = next_in_episode(out[:, k - 1], high, slots, next_delta, episode_id)
    return out


def n_step_returns(chain: np.ndarray, rewards: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Discounted reward sums along chains, and the number of rows each one summed.

    Args:
        chain: [batch, n] step ids, -1 past the end (as returned by ``chains``).
        rewards: [batch, n] the reward of each entry (any value where chain is -1).
        gamma: discount factor.
    """
    valid = chain >= 0
    discounts = np.float64(gamma) ** np.arange(chain.shape[1])
    total = np.where(valid, rewards.astype(np.float64), 0.0) @ discounts
    return total, valid.sum(axis=1)


def last_valid(chain: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The last valid step id of each chain (counts: valid entries per row, at least 1)."""
    return chain[np.arange(len(chain)), counts - 1]


def stratified_targets(rng: np.random.Generator, total: float, count: int) -> np.ndarray:
    """One uniform point in each of ``count`` equal slices of [0, total): proportional replay."""
    return (np.arange(count) + rng.random(count)) * (total / count)


def importance_weights(probabilities: np.ndarray, population: int, beta: float) -> np.ndarray:
    """(N * P(i)) ** -beta, normalised by the batch maximum so that weights only scale down."""
    weights = (population * probabilities) ** (-float(beta))
    return (weights / weights.max()).astype(np.float32)


def steps_of_slots(slots_drawn: np.ndarray, low: int | np.ndarray, slots: int) -> np.ndarray:
    """The step id in [low, low + slots) stored in each slot."""
    return low + (slots_drawn - low) % slots


def epoch_order(rng: np.random.Generator, low: int, high: int) -> np.ndarray:
    """Every step id of [low, high) once, shuffled."""
    return low + rng.permutation(high - low).astype(np.int64)
