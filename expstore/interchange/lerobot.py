"""LeRobot datasets (codebase v3.0; v2.1 read too), the de-facto format of robot-learning data.

Layout (v3.0): ``meta/info.json`` (features with dtype, shape and names, fps, chunk and file
sizes, path templates), ``meta/stats.json``, ``meta/tasks.parquet``,
``meta/episodes/chunk-*/file-*.parquet`` (one row per episode: its length, data file, and for
each camera its video file and start time in it), ``data/chunk-*/file-*.parquet`` (one row per
frame: ``index``, ``episode_index``, ``frame_index``, ``timestamp``, ``task_index`` and the
features) and ``videos/<key>/chunk-*/file-*.mp4`` (lerobot_video.py). A file holds whole
episodes, several of them until it reaches the size info.json names.

Export writes what ``LeRobotDataset(repo_id, root=DST)`` loads: pool rows become frames in
episode order, the pool's image fields become videos, every other field a feature
(lerobot_meta.py has the name table); the pool's schema, attrs and field names ride in
info.json under ``expstore``, so that an import gives back the same pool (video frames within
the codec's tolerance, exact with ``--video-codec lossless``). Import maps the features to
fields, episodes from ``episode_index`` (an episode ends at its last frame, with ``next.done``
as ``terminated``), decodes each video once, in order, and checks every data file against
info.json. v2.1 (one data and one video file per episode, ``meta/*.jsonl``) reads the same way:
it costs only the other file listing. Both directions stream in bounded slices.
"""

from __future__ import annotations

import os

from ..inspect.streaming import Progress
from .base import ExportOption, ExportResult
from .lerobot_export import DATA_FILE_MB, DEFAULT_FPS, VIDEO_FILE_MB, export_lerobot
from .lerobot_import import import_lerobot
from .lerobot_meta import CHUNKS_SIZE, INFO_PATH

__all__ = ["CHUNKS_SIZE", "DATA_FILE_MB", "DEFAULT_FPS", "VIDEO_FILE_MB", "LeRobotFormat", "export_lerobot",
           "import_lerobot"]


class LeRobotFormat:
    """LeRobot datasets as a registered interchange format (base.Format)."""

    name: str = "lerobot"
    description: str = "LeRobot dataset"
    suffixes: tuple[str, ...] = ()  # a dataset is a directory
    export_passes: int = 1
    export_options: tuple[ExportOption, ...] = (
        ExportOption("fps", f"frames per second (default: the imported dataset's, else {DEFAULT_FPS})."),
        ExportOption("video_codec", "camera videos: libsvtav1 (LeRobot's default), h264, hevc or lossless."),
    )

    def recognises(self, path: str) -> bool:
        return os.path.isfile(os.path.join(path, INFO_PATH))

    def export_pool(self, src: str, dst: str, *, overwrite: bool = False, progress: Progress | None = None,
                    **options) -> ExportResult:
        rows, episodes = export_lerobot(src, dst, overwrite=overwrite, progress=progress, **options)
        return ExportResult(rows, episodes)

    def import_pool(self, src: str, dst: str, *, capacity: int | None = None, backend: str | None = None,
                    overwrite: bool = False, progress: Progress | None = None) -> int:
        return import_lerobot(src, dst, capacity=capacity, backend=backend, overwrite=overwrite, progress=progress)

