"""The pictures of ``expstore report``, as PNG bytes: plots (matplotlib) and frame thumbnails.

Each plot is its own small figure, so the page lays them out and each has its own title and
alt text. Drawn with the Agg backend, which needs no display.
"""

from __future__ import annotations

import io

import numpy as np

_FIGURE_SIZE = (5.2, 3.2)
_DPI = 100


def _pyplot():
    try:
        # matplotlib (the video and train extras) is optional and slow to import: loaded only to draw.
        import matplotlib
    except ImportError:
        raise ModuleNotFoundError("the report's plots need matplotlib; install it: pip install 'expstore[video]'") \
            from None

    matplotlib.use("Agg")
    # pyplot after choosing the Agg backend above, which draws without a display.
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=_DPI)
    _pyplot().close(figure)
    return buffer.getvalue()


def return_over_time(first_step_ids: np.ndarray, returns: np.ndarray) -> bytes:
    """Episode return against the step id the episode started at."""
    figure, axes = _pyplot().subplots(figsize=_FIGURE_SIZE)
    axes.plot(first_step_ids, returns, ".-", markersize=3)
    axes.set(title="episode return over time", xlabel="first step id", ylabel="return")
    if not len(returns):
        axes.text(0.5, 0.5, "no complete episode", ha="center", transform=axes.transAxes)
    return _png(figure)


def histogram(counts: np.ndarray, edges: np.ndarray, title: str, xlabel: str, ylabel: str) -> bytes:
    """Counts over bins given by their edges (len(edges) == len(counts) + 1)."""
    figure, axes = _pyplot().subplots(figsize=_FIGURE_SIZE)
    if len(counts):
        axes.stairs(counts, edges, fill=True)
    else:
        axes.text(0.5, 0.5, "nothing to count", ha="center", transform=axes.transAxes)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _png(figure)


def value_histogram(values: np.ndarray, bins: int, title: str, xlabel: str, ylabel: str) -> bytes:
    """A histogram of a small array of values (episode lengths)."""
    values = np.asarray(values, np.float64)
    if not values.size:
        return histogram(np.zeros(0), np.zeros(1), title, xlabel, ylabel)
    low, high = float(values.min()), float(values.max())
    span = (low, high) if high > low else (low - 0.5, low + 0.5)  # one value: one bar centred on it
    counts, edges = np.histogram(values, bins=bins if high > low else 1, range=span)
    return histogram(counts, edges, title, xlabel, ylabel)


def frame_png(frame: np.ndarray) -> bytes:
    """One [H, W, 1 or 3] uint8 frame as a PNG at its own size."""
    # Pillow comes with matplotlib; only image pools need it.
    from PIL import Image

    picture = Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame, "L" if frame.shape[-1] == 1 else "RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="png")
    return buffer.getvalue()
