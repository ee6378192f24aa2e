"""``expstore plot``: episode return over time, episode length and reward histograms."""

from __future__ import annotations

import os

import numpy as np

from .errors import InvalidArgumentError
from .streaming import Progress, RowSource, iter_slices
from .summary import FieldStats, episode_table

_BINS = 50


def reward_histogram(source: RowSource, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin edges of the reward field, streamed (min/max from a first pass)."""
    stats = field_stats_of(source, "reward")
    low, high = (0.0, 1.0) if stats.count == 0 else (stats.min, stats.max if stats.max > stats.min else stats.min + 1)
    edges = np.linspace(low, high, _BINS + 1)
    counts = np.zeros(_BINS, dtype=np.int64)
    for _first, rows in iter_slices(source, fields=["reward"], progress=progress):
        values = rows["reward"].astype(np.float64).reshape(-1)
        counts += np.histogram(values[np.isfinite(values)], bins=edges)[0]
    return counts, edges


def field_stats_of(source: RowSource, name: str) -> FieldStats:
    stats = FieldStats()
    for _first, rows in iter_slices(source, fields=[name]):
        stats.add(rows[name])
    return stats


def plot_pool(source: RowSource, out: str | os.PathLike, progress: Progress | None = None) -> dict:
    """Write a PNG (or any format matplotlib infers from ``out``) with three panels; return counts."""
    if "reward" not in source.schema:
        raise InvalidArgumentError(f"{source.path} has no 'reward' field to plot; it stores {list(source.schema)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = episode_table(source, progress)
    counts, edges = reward_histogram(source, progress)
    complete = ~(table["open"] | (table["evicted"] > 0))
    fig, (ax_return, ax_length, ax_reward) = plt.subplots(1, 3, figsize=(15, 4))
    ax_return.plot(table["first_step_id"][complete], table["return"][complete], ".-", markersize=3)
    ax_return.set(title="episode return", xlabel="first step id", ylabel="return")
    ax_length.hist(table["length"][complete], bins=_BINS)
    ax_length.set(title="episode length", xlabel="steps", ylabel="episodes")
    ax_reward.stairs(counts, edges, fill=True)
    ax_reward.set(title="reward", xlabel="reward", ylabel="steps")
    fig.suptitle(os.path.basename(os.path.normpath(source.path)))
    fig.tight_layout()
    fig.savefig(os.fspath(out), dpi=100)
    plt.close(fig)
    return {"episodes": int(complete.sum()), "rows": len(source)}
