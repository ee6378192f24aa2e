"""``expstore report``: one self-contained HTML page about a pool, to read in any browser, offline.

The page holds the pool's info, schema and last commit, its health (a ``verify`` report, when
given), the episode table (click a column header to sort, type bounds to filter by return or
length), episode return over time, episode length and reward histograms, per-field statistics,
the age distribution, the duplicates summary and, for a pool with frames, a thumbnail strip and
a short video of a few chosen episodes.

Everything is inside the one file: plots and thumbnails as PNG data URIs, videos as MP4 data
URIs, the style and the sorting script inline, and a Content-Security-Policy that forbids the
page to fetch anything, so it opens the same from a laptop, a mail attachment or a CI artifact.

The pool streams through in bounded slices (streaming.py), a few passes in all, each reported
to ``progress_bar``; only the episode table (one row per episode) and the chosen frames are
held. Health is checked a layer above (maintenance/verify.py), so the caller passes its report:
``write_report(path, out, health=expstore.verify(path))``; the command does.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, closing, nullcontext
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from . import report_figures as figures
from .age import age_distribution
from .duplicates import duplicate_report
from .frames import Clip, choose_frame_field, episode_clip, frame_fields, frame_layout, to_frames
from .report_html import data_uri, render_page
from .streaming import Progress, RowSource, iter_slices, open_source
from .summary import FieldStats, episode_summary, episode_table, field_stats, source_info
from .video import write_clips

ProgressBar = Callable[[int, str], AbstractContextManager[Progress]]
THUMBNAILS = 12
VIDEO_EPISODES = 3
VIDEO_MAX_FRAMES = 300
MAX_TABLE_EPISODES = 10_000
_BINS = 50


def _no_bar(length: int, label: str) -> AbstractContextManager[Progress]:
    return nullcontext(lambda rows: None)


def report_path(out: str | os.PathLike) -> str:
    """``out``, checked before any work: an ``.html`` file in a directory that exists."""
    path = os.fspath(out)
    if not path.lower().endswith((".html", ".htm")):
        raise InvalidArgumentError(f"cannot write {path}: a report is an .html file; name it e.g. report.html")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InvalidArgumentError(f"cannot write {path}: the directory {directory} does not exist; create it first")
    return path


def write_report(pool: str | os.PathLike | RowSource, out: str | os.PathLike, *, health: Any = None,
                 episodes: Sequence[int] | None = None, field: str | None = None, fps: float = 30,
                 thumbnails: int = THUMBNAILS, video_max_frames: int = VIDEO_MAX_FRAMES,
                 max_table_episodes: int = MAX_TABLE_EPISODES, progress_bar: ProgressBar | None = None) -> dict:
    """Write the HTML report of a pool or archive.

    Args:
        pool: a path, or an open row source (streaming.open_source).
        out: the ``.html`` file; written through a temporary and renamed, so it appears whole.
        health: what ``expstore.verify(path)`` returned (or its ``to_json()``); None: the page
            says health was not checked.
        episodes: episode ids to show as videos (image pools); default: the best, the worst
            and the newest complete episode.
        field: the frame field for thumbnails and videos (default: ``obs`` or the first).
        fps: frames per second of the videos.
        thumbnails: frames in the thumbnail strip, evenly spaced over the window.
        video_max_frames: each video shows at most this many first frames of its episode
            (``expstore video`` writes whole episodes).
        max_table_episodes: the table lists at most the newest this many episodes.
        progress_bar: ``progress_bar(rows, label)`` gives a context manager yielding a
            ``progress(rows)`` callback, once per pass (cli/common.progress_bar).

    Returns:
        ``path``, ``nbytes``, ``rows``, ``episodes`` (in the table), ``videos`` and
        ``thumbnails`` (how many of each the page holds).

    Raises:
        InvalidArgumentError: a bad output path or option, an unknown episode id.
        SchemaError: ``field`` or ``episodes`` given for a pool without frames.
    """
    path = report_path(out)
    bar = progress_bar or _no_bar
    if thumbnails < 0 or video_max_frames < 1 or max_table_episodes < 1:
        raise InvalidArgumentError("thumbnails must not be negative; video_max_frames and max_table_episodes must "
                                   "be at least 1")
    opened = closing(open_source(pool)) if isinstance(pool, (str, os.PathLike)) else nullcontext(pool)
    with opened as source:
        sections = _gather(source, bar, health, episodes, field, fps, thumbnails, video_max_frames,
                           max_table_episodes)
    page = render_page(sections)
    _write_atomically(path, page.encode())
    return {"path": path, "nbytes": len(page.encode()), "rows": sections["info"]["length"],
            "episodes": len(sections["table"]["rows"]), "videos": len(sections["videos"]),
            "thumbnails": len(sections["thumbnails"])}


def _gather(source: RowSource, bar: ProgressBar, health, episodes, field, fps, thumbnails, video_max_frames,
            max_table_episodes) -> dict:
    frames_field = None
    if frame_fields(source.schema) or field is not None or episodes is not None:
        frames_field = choose_frame_field(source.schema, field, source.path)
    rows = len(source)
    with bar(rows, "fields") as progress:
        stats = field_stats(source, progress)
    with bar(rows, "episodes") as progress:
        table = episode_table(source, progress)
    clips = _video_clips(source, table, episodes, video_max_frames) if frames_field else []
    with bar(rows, "rewards") as progress:
        reward_plot = _reward_plot(source, stats, progress)
    with bar(rows, "age") as progress:
        age = age_distribution(source, progress)
    with bar(2 * rows, "duplicates") as progress:
        duplicates = duplicate_report(source, progress=progress)
    complete = ~(table["open"] | (table["evicted"] > 0))
    return {
        "info": source_info(source), "schema": source.schema, "health": _health_json(health),
        "stats": {name: s.to_json() for name, s in stats.items()},
        "summary": episode_summary(table),
        "table": _table_rows(table, max_table_episodes),
        "plots": [
            ("episode return over time", figures.return_over_time(table["first_step_id"][complete],
                                                                  table["return"][complete])),
            ("episode length", figures.value_histogram(table["length"][complete], _BINS, "episode length",
                                                       "steps", "episodes")),
            ("reward", reward_plot),
            *_age_plots(age),
        ],
        "age": age, "duplicates": duplicates, "frames_field": frames_field,
        "thumbnails": _thumbnails(source, frames_field, thumbnails) if frames_field else [],
        "videos": _videos(source, clips, frames_field, fps, bar) if frames_field else [],
    }


def _health_json(health) -> dict | None:
    if health is None:
        return None
    if hasattr(health, "to_json"):
        return dict(health.to_json())
    if isinstance(health, Mapping):
        return dict(health)
    raise InvalidArgumentError(f"health must be what expstore.verify() returns or its to_json(), not {health!r}")


def _table_rows(table: dict[str, np.ndarray], limit: int) -> dict:
    columns = list(table)
    total = len(table["episode_id"])
    first = max(0, total - limit)
    rows = [[table[name][index].item() for name in columns] for index in range(first, total)]
    return {"columns": columns, "rows": rows, "total": total}


def _reward_plot(source: RowSource, stats: dict[str, FieldStats], progress: Progress) -> bytes:
    """The reward histogram over the range the field statistics found (one more pass)."""
    if "reward" not in source.schema:
        return figures.histogram(np.zeros(0), np.zeros(1), "reward (the pool has no reward field)", "reward", "steps")
    reward = stats["reward"]
    low = 0.0 if reward.count == 0 else reward.min
    high = low + 1 if reward.count == 0 or reward.max <= reward.min else reward.max
    edges = np.linspace(low, high, _BINS + 1)
    counts = np.zeros(_BINS, np.int64)
    for _first, rows in iter_slices(source, fields=["reward"], progress=progress):
        values = rows["reward"].astype(np.float64).reshape(-1)
        counts += np.histogram(values[np.isfinite(values)], bins=edges)[0]
    return figures.histogram(counts, edges, "reward", "reward", "steps")


def _age_plots(age: dict) -> list[tuple[str, bytes]]:
    plots = []
    for unit, label in (("steps", "steps"), ("policy_versions", "policy versions")):
        summary = age.get(unit)
        if summary and summary.get("histogram"):
            histogram = summary["histogram"]
            plots.append((f"age in {label}", figures.histogram(np.asarray(histogram["counts"]),
                                                               np.asarray(histogram["edges"]),
                                                               f"age of the rows in {label} (0: newest)", label,
                                                               "rows")))
    return plots


def _thumbnails(source: RowSource, field: str, count: int) -> list[dict]:
    """``count`` frames evenly spaced over the window, oldest first, as PNG data URIs."""
    layout = frame_layout(source.schema[field])
    assert layout is not None  # field was chosen among the frame fields
    rows = len(source)
    picks = np.unique(np.linspace(0, max(0, rows - 1), min(count, rows)).round().astype(np.int64))
    shown = []
    for row in picks.tolist():
        frame = to_frames(source.read(row, row + 1)[field], layout)[0]
        shown.append({"step_id": source.first_step_id + row, "uri": data_uri("image/png", figures.frame_png(frame)),
                      "width": frame.shape[1], "height": frame.shape[0]})
    return shown


def _video_clips(source: RowSource, table: dict[str, np.ndarray], chosen: Sequence[int] | None,
                 max_frames: int) -> list[tuple[Clip, float]]:
    """The first ``max_frames`` rows of each chosen episode, with the episode's return."""
    ids = list(chosen) if chosen is not None else default_video_episodes(table)
    clips = [(episode_clip(source, int(episode_id), table), episode_id) for episode_id in ids]
    returns = dict(zip(table["episode_id"].tolist(), table["return"].tolist(), strict=True))
    return [(Clip(clip.label, clip.rows[:max_frames], clip.first_step_id), returns[int(episode_id)])
            for clip, episode_id in clips if len(clip.rows)]


def default_video_episodes(table: dict[str, np.ndarray], count: int = VIDEO_EPISODES) -> list[int]:
    """The best, the worst and the newest complete episode (or the newest, when none is complete)."""
    complete = np.flatnonzero(~(table["open"] | (table["evicted"] > 0)))
    if not complete.size:
        return [int(table["episode_id"][-1])] if len(table["episode_id"]) else []
    returns = table["return"][complete]
    picks = [complete[int(np.argmax(returns))], complete[int(np.argmin(returns))], complete[-1]]
    ids = [int(table["episode_id"][index]) for index in picks]
    return list(dict.fromkeys(ids))[:count]


def _videos(source: RowSource, chosen: list[tuple[Clip, float]], field: str, fps: float,
            bar: ProgressBar) -> list[dict]:
    """Each clip as an MP4 data URI (H.264 yuv420p: what browsers play), with its episode's return."""
    videos = []
    with tempfile.TemporaryDirectory(prefix="expstore-report-") as scratch, \
            bar(sum(len(clip.rows) for clip, _return in chosen), "videos") as progress:
        for number, (clip, episode_return) in enumerate(chosen):
            written = write_clips(source, [clip], os.path.join(scratch, f"{number}.mp4"), field=field, fps=fps,
                                  progress=progress)
            with open(written["path"], "rb") as video:
                uri = data_uri("video/mp4", video.read())
            videos.append({"label": clip.label, "frames": written["frames"], "uri": uri, "return": episode_return,
                           "width": written["width"], "height": written["height"],
                           "first_step_id": int(clip.step_ids[0])})
    return videos


def _write_atomically(path: str, payload: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    handle, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-{os.getpid()}-", dir=directory)
    try:
        with os.fdopen(handle, "wb") as temp_file:
            temp_file.write(payload)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:  # Ctrl-C included: no temporary is left behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
