"""What a run reports: a progress line every few seconds, a JSONL metrics file, a PNG curve."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from typing import Any

import numpy as np

from ..inspect.plotting import save_atomically

logger = logging.getLogger("expstore.train")

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "learning_curve.png"
CONFIG_NAME = "config.json"
SUMMARY_NAME = "summary.json"


def mean_last_eval_return(metrics_path: str, episodes: int = 10) -> float | None:
    """Mean return over the last ``episodes`` evaluation episodes of a run (None before any)."""
    returns = [x for r in read_metrics(metrics_path) if r["kind"] == "eval" for x in r["returns"]][-episodes:]
    return float(np.mean(returns)) if returns else None


def write_run_json(run_dir: str, name: str, values: dict) -> None:
    """One of a run directory's JSON files (``CONFIG_NAME``, ``SUMMARY_NAME``), replaced whole:
    a kill while writing leaves the previous file, never a torn one."""
    path = os.path.join(run_dir, name)
    temp = os.path.join(run_dir, f".{name}.tmp-{os.getpid()}")
    with open(temp, "w", encoding="utf-8") as stream:
        json.dump(values, stream, indent=2)
    os.replace(temp, path)


class MetricsFile:
    """Append-only JSON lines; every record carries ``kind`` and ``step``.

    A resumed run appends to the same file. Records written between the last checkpoint and a
    kill stay: they describe episodes and evaluations that really happened.
    """

    def __init__(self, path: str):
        self.path = path
        self._stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, kind: str, step: int, **values: Any) -> None:
        self._stream.write(json.dumps({"kind": kind, "step": int(step), "time_unix": round(time.time(), 3),
                                       **values}) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics file; a line torn by a kill is skipped."""
    records = []
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class Progress:
    """Counts steps and updates and logs one compact line every ``interval_s`` seconds."""

    def __init__(self, total_steps: int, batch_size: int, interval_s: float = 5.0, step: int = 0, updates: int = 0):
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.recent_returns: deque[float] = deque(maxlen=10)
        self.last_eval: float | None = None
        self.episodes = 0
        self.restart(step, updates)

    def restart(self, step: int, updates: int) -> None:
        """Measure rates from here (a resumed run starts at its restored counters)."""
        self._mark_time = time.monotonic()
        self._mark_step, self._mark_updates = step, updates

    def maybe_log(self, step: int, updates: int, label: str = "step") -> None:
        elapsed = time.monotonic() - self._mark_time
        if elapsed < self.interval_s:
            return
        steps_per_s = (step - self._mark_step) / elapsed
        updates_per_s = (updates - self._mark_updates) / elapsed
        logger.info("%s %d/%d | episodes %d | return(last %d) %s | eval %s | %.0f steps/s | %.0f updates/s"
                    " | %.0f samples/s", label, step, self.total_steps, self.episodes, len(self.recent_returns),
                    _fmt(float(np.mean(self.recent_returns)) if self.recent_returns else None), _fmt(self.last_eval),
                    steps_per_s, updates_per_s, updates_per_s * self.batch_size)
        self._mark_time, self._mark_step, self._mark_updates = time.monotonic(), step, updates


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def plot_learning_curve(metrics_path: str, png_path: str, title: str, x_label: str) -> bool:
    """Training episode returns and evaluation means against the run's counter (``x_label``:
    environment steps online, gradient updates offline). A run with neither an ended episode
    nor an evaluation gets no image (an empty plot would say nothing); returns whether one
    was written."""
    records = read_metrics(metrics_path)
    episodes = sorted((r["step"], r["return"]) for r in records if r["kind"] == "episode")
    evals = sorted((r["step"], r["mean_return"]) for r in records if r["kind"] == "eval")
    if not episodes and not evals:
        logger.info("no episode ended and no evaluation ran: no learning curve written")
        return False
    # matplotlib (the train extra) is optional and slow to import: loaded only to draw.
    import matplotlib

    matplotlib.use("Agg")
    # pyplot after choosing the Agg backend above, which draws without a display.
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    if episodes:
        axes.plot(*zip(*episodes, strict=True), ".", alpha=0.35, label="training episode return")
    if evals:
        axes.plot(*zip(*evals, strict=True), "-o", label="evaluation mean return")
    axes.set(xlabel=x_label, ylabel="return", title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    save_atomically(figure, png_path)
    plt.close(figure)
    return True
