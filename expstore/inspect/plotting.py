"""``expstore plot``: episode return over time, episode length and reward histograms."""

from __future__ import annotations

import os

import numpy as np

from ..errors import InvalidArgumentError
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


def image_path(out: str | os.PathLike) -> str:
    """The file an image for ``out`` goes to: ``out`` itself, with ``.png`` added when it has no
    extension (matplotlib's own rule, so the message names the file really written).

    Raises InvalidArgumentError, before any work is done, when the extension is not an image
    format matplotlib writes or the directory does not exist.
    """
    # matplotlib (the train extra) is optional and slow to import: loaded only to draw.
    from matplotlib.backend_bases import FigureCanvasBase

    path = os.fspath(out)
    extension = os.path.splitext(os.path.basename(path))[1].lower()
    if not extension:
        path, extension = path + ".png", ".png"
    supported = FigureCanvasBase.get_supported_filetypes()
    if extension[1:] not in supported:
        raise InvalidArgumentError(f"cannot write {path}: '{extension}' is not an image format matplotlib writes; "
                                   f"use one of {', '.join('.' + name for name in sorted(supported))}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InvalidArgumentError(f"cannot write {path}: the directory {directory} does not exist; create it first")
    return path


def plot_pool(source: RowSource, out: str | os.PathLike, progress: Progress | None = None) -> dict:
    """Write a PNG (or the format of ``out``'s extension) with three panels.

    Returns the counts plotted and ``path``, the file written (``out``, plus ``.png`` when it
    has no extension). The image appears complete or not at all: it is drawn into a temporary
    beside ``out`` and renamed into place, so a Ctrl-C leaves no half-written file.
    """
    if "reward" not in source.schema:
        raise InvalidArgumentError(f"{source.path} has no 'reward' field to plot; it stores {list(source.schema)}")
    path = image_path(out)
    # matplotlib (the train extra) is optional and slow to import: loaded only to draw.
    import matplotlib

    matplotlib.use("Agg")
    # pyplot after choosing the Agg backend above, which draws without a display.
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
    save_atomically(fig, path)
    plt.close(fig)
    return {"episodes": int(complete.sum()), "rows": len(source), "path": path}


def save_atomically(figure, path: str) -> None:
    """``figure.savefig(path)`` through a temporary in the same directory and a rename."""
    root, extension = os.path.splitext(path)
    temp_name = f".{os.path.basename(root)}.tmp-{os.getpid()}{extension}"
    temp = os.path.join(os.path.dirname(os.path.abspath(path)), temp_name)
    try:
        figure.savefig(temp, dpi=100)
        os.replace(temp, path)
    except BaseException:  # Ctrl-C included: no temporary is left behind
        if os.path.exists(temp):
            os.unlink(temp)
        raise
