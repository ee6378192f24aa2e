"""LeRobot v3.0 export: pool rows as the data, video and metadata files of lerobot.py's layout.

Rows become frames in episode order (episodes from the pool's bookkeeping, or counted from the
terminated/truncated flags of an archive; a vector env's interleaved episodes one after another,
each its own frames in step order: episode_tags.py's EpisodeOrder); image fields with 1 or 3 channels become videos
(lerobot_video.py), every other fixed-size field a feature, a row shape of more than one axis
flattened to a vector as LeRobot's loader reads them. Ragged fields are refused: LeRobot's
features have one fixed shape in info.json, and its loader stacks the frames of a batch.
Data and video files rotate together at LeRobot's sizes, each holding whole episodes.
"""

from __future__ import annotations

import json
import os
from contextlib import closing
from typing import Any

import numpy as np

from ..backends import files
from ..errors import InvalidArgumentError
from ..inspect.streaming import Progress, open_source
from ..maintenance.destination import SAVED_KEY, check_destination
from ..maintenance.writing import make_parent
from ..schema import Field, Schema
from .arrow_columns import arrow_type, pyarrow, to_arrow
from .common import check_fixed
from .episode_tags import EpisodeOrder
from .lerobot_meta import (
    CHUNKS_SIZE,
    DATA_PATH,
    EPISODES_PATH,
    FRAME_COLUMNS,
    INFO_PATH,
    TASKS_PATH,
    VIDEO_PATH,
    LeRobotColumn,
    RunningStats,
    feature_for_field,
    height_width,
    tasks_table,
)
from .lerobot_video import VideoSettings, VideoWriter

DATA_FILE_MB = 100  # LeRobot's defaults
VIDEO_FILE_MB = 200
DEFAULT_FPS = 30
# Frame columns a pool field may hold (an imported dataset's task index or its own timestamps).
_OWN_COLUMNS = {"timestamp": np.dtype("float32"), "task_index": np.dtype("int64")}


def export_lerobot(src: str | os.PathLike, dst: str | os.PathLike, *, fps: int | str | None = None,
                   video_codec: str | None = None, overwrite: bool = False,
                   progress: Progress | None = None) -> tuple[int, int]:
    """Write pool ``src`` as the LeRobot v3.0 dataset directory ``dst``; return (frames, episodes).

    Args:
        fps: frames per second (default: the fps of the dataset the pool was imported from, else 30).
        video_codec: ``libsvtav1`` (LeRobot's default), ``h264``, ``hevc`` or ``lossless``.
    """
    pyarrow("lerobot")
    dst = os.fspath(dst)
    settings = VideoSettings.named(video_codec)
    check_destination(dst, overwrite, "lerobot")
    with closing(open_source(src)) as source:
        check_fixed(source.schema, source.path, "a LeRobot dataset",
                    "each feature has one shape in meta/info.json and LeRobot's loader stacks frames")
        saved = dict(source.attrs.get("lerobot", {}))
        rate = _fps(fps if fps is not None else saved.get("fps", DEFAULT_FPS))
        columns = _export_columns(source.schema, saved.get("features", {}))
        tasks = list(saved.get("tasks") or [str(source.attrs.get("env_id", "default"))])
        result = {}

        def build(temp: str) -> list[str]:
            writer = _DatasetWriter(temp, columns, rate, settings, tasks)
            writer.own = {name for name in source.schema if name in _OWN_COLUMNS and name not in
                          {column.name for column in columns}}
            try:
                for _, rows, episode_ids in EpisodeOrder(source).slices(progress=progress):
                    writer.add(rows, episode_ids)
            finally:
                writer.close()
            writer.write_meta(source, saved)
            result["episodes"] = len(writer.episodes)
            return []

        make_parent(dst)
        files.build_aside(dst, build, replace=overwrite)
        return len(source), result["episodes"]


def _fps(value) -> int:
    try:
        fps = int(value)
    except (TypeError, ValueError):
        fps = 0
    if fps < 1 or str(value).strip() not in (str(fps), f"{fps}.0"):
        raise InvalidArgumentError(f"--fps {value} must be a positive whole number of frames per second")
    return fps


def _export_columns(schema: Schema, saved_names: dict) -> list[LeRobotColumn]:
    columns, keys = [], set()
    for name, field in schema.items():
        key = feature_for_field(name, field, saved_names)
        if key in _OWN_COLUMNS and field.shape in ((), (1,)) and field.dtype == _OWN_COLUMNS[key]:
            continue  # the frame's own timestamp / task_index column holds it
        if key in keys or key in FRAME_COLUMNS:
            key = f"expstore.{name}"
        keys.add(key)
        layout = field.image_layout or ""
        channels = field.shape[layout.index("C")] if "C" in layout else 1
        columns.append(LeRobotColumn(name, key, field, video=field.is_image and channels in (1, 3)))
    return columns


def _rgb(values: np.ndarray, field: Field) -> np.ndarray:
    """Rows of an image field as (N, H, W, 3) RGB frames for the encoder."""
    layout = field.image_layout
    if layout == "CHW":
        values = np.moveaxis(values, 1, -1)
    elif layout == "HW":
        values = values[..., None]
    return np.repeat(values, 3, axis=-1) if values.shape[-1] == 1 else values



class _DatasetWriter:
    """The files of a LeRobot v3.0 dataset, written frame slice by frame slice."""

    def __init__(self, root: str, columns: list[LeRobotColumn], fps: int, settings: VideoSettings, tasks: list[str]):
        self.root, self.columns, self.fps, self.settings, self.tasks = root, columns, fps, settings, tasks
        self.videos = [column for column in columns if column.video]
        self.own: set[str] = set()  # pool fields that are the frames' timestamp / task_index columns
        self.episodes: list[dict] = []
        self.stats = {column.key: RunningStats(column.video) for column in columns}
        self.stats.update({name: RunningStats(False) for name in ("timestamp", *FRAME_COLUMNS, "task_index")})
        self.file_index, self.file_start = -1, 0  # data and video files rotate together
        self._parquet: Any = None
        self._video_writers: dict[str, VideoWriter] = {}
        self.rows = 0
        self._episode_start = 0
        self._last_id: int | None = None  # the episode of the last frame written

    # -------------------------------------------------------------- frames
    def add(self, rows: dict, episode_ids: np.ndarray) -> None:
        """Frames of consecutive rows in episode order, each row's episode in ``episode_ids``."""
        n = len(episode_ids)
        if not n:
            return
        before = np.concatenate([[episode_ids[0] if self._last_id is None else self._last_id], episode_ids[:-1]])
        starts = np.flatnonzero(episode_ids != before).tolist()  # offsets where a new episode begins
        self._last_id = int(episode_ids[-1])
        if self.rows == 0 and starts[:1] != [0]:
            starts.insert(0, 0)
        position = 0
        for start in starts:
            self._write(rows, position, start)  # the rest of the episode begun before
            self._begin_episode()
            position = start
        self._write(rows, position, n)

    def _begin_episode(self) -> None:
        if self.episodes:
            self._end_episode()
        if self._parquet is None or self._too_big():
            self._rotate()
        self.episodes.append({"episode_index": len(self.episodes), "dataset_from_index": self.rows,
                              "data/chunk_index": self.file_index // CHUNKS_SIZE,
                              "data/file_index": self.file_index % CHUNKS_SIZE, "tasks": set()})
        for column in self.videos:
            self.episodes[-1][f"videos/{column.key}/chunk_index"] = self.file_index // CHUNKS_SIZE
            self.episodes[-1][f"videos/{column.key}/file_index"] = self.file_index % CHUNKS_SIZE
            self.episodes[-1][f"videos/{column.key}/from_timestamp"] = (self.rows - self.file_start) / self.fps
        self._episode_start = self.rows

    def _end_episode(self) -> None:
        episode = self.episodes[-1]
        episode["dataset_to_index"] = self.rows
        episode["length"] = self.rows - episode["dataset_from_index"]
        for column in self.videos:
            episode[f"videos/{column.key}/to_timestamp"] = (self.rows - self.file_start) / self.fps

    def _too_big(self) -> bool:
        data = os.path.getsize(self._data_path()) if os.path.exists(self._data_path()) else 0
        return data >= DATA_FILE_MB << 20 or any(writer.nbytes() >= VIDEO_FILE_MB << 20
                                                 for writer in self._video_writers.values())

    def _rotate(self) -> None:
        self._close_files()
        self.file_index += 1
        self.file_start = self.rows
        import pyarrow.parquet as pq  # beside pyarrow: the optional dependency

        path = self._data_path()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._parquet = pq.ParquetWriter(path, self._data_schema())
        for column in self.videos:
            height, width = height_width(column.field)
            self._video_writers[column.key] = VideoWriter(self._video_path(column.key), self.fps, height, width,
                                                          self.settings)

    def _data_path(self) -> str:
        return os.path.join(self.root, DATA_PATH.format(chunk_index=self.file_index // CHUNKS_SIZE,
                                                        file_index=self.file_index % CHUNKS_SIZE))

    def _video_path(self, key: str) -> str:
        return os.path.join(self.root, VIDEO_PATH.format(video_key=key, chunk_index=self.file_index // CHUNKS_SIZE,
                                                         file_index=self.file_index % CHUNKS_SIZE))

    def _data_schema(self):
        pa = pyarrow("lerobot")
        fields = [pa.field(column.key, arrow_type(_stored_field(column.field))) for column in self.columns
                  if not column.video]
        fields += [pa.field("timestamp", pa.float32()), pa.field("frame_index", pa.int64()),
                   pa.field("episode_index", pa.int64()), pa.field("index", pa.int64()),
                   pa.field("task_index", pa.int64())]
        return pa.schema(fields)

    def _write(self, rows: dict, lo: int, hi: int) -> None:
        if hi <= lo:
            return
        pa = pyarrow("lerobot")
        n = hi - lo
        frame_index = np.arange(self.rows - self._episode_start, self.rows - self._episode_start + n, dtype=np.int64)
        index = np.arange(self.rows, self.rows + n, dtype=np.int64)
        episode = np.full(n, len(self.episodes) - 1, np.int64)
        timestamp = rows["timestamp"][lo:hi].reshape(n).astype(np.float32) if "timestamp" in self.own else \
            (frame_index / self.fps).astype(np.float32)
        task = rows["task_index"][lo:hi].reshape(n).astype(np.int64) if "task_index" in self.own else \
            np.zeros(n, np.int64)
        self.episodes[-1]["tasks"].update(int(t) for t in np.unique(task))
        arrays = []
        for column in self.columns:
            values = rows[column.name][lo:hi]
            self.stats[column.key].add(_rgb(values, column.field) if column.video else values)
            if column.video:
                self._video_writers[column.key].add(_rgb(values, column.field))
            else:
                arrays.append(to_arrow(values.reshape(n, *_stored_field(column.field).shape)))
        for name, values in (("timestamp", timestamp), ("frame_index", frame_index), ("episode_index", episode),
                             ("index", index), ("task_index", task)):
            arrays.append(pa.array(values))
            self.stats[name].add(values)
        self._parquet.write_table(pa.Table.from_arrays(arrays, schema=self._parquet.schema))
        self.rows += n

    def _close_files(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        for writer in self._video_writers.values():
            writer.close()
        self._video_writers.clear()

    def close(self) -> None:
        if self.episodes:
            self._end_episode()
        self._close_files()

    # -------------------------------------------------------------- metadata
    def write_meta(self, source, saved: dict) -> None:
        pa = pyarrow("lerobot")
        import pyarrow.parquet as pq  # beside pyarrow: the optional dependency

        meta = os.path.join(self.root, "meta")
        os.makedirs(meta, exist_ok=True)
        for episode in self.episodes:
            episode["tasks"] = [self.tasks[t] if t < len(self.tasks) else str(t) for t in sorted(episode["tasks"])]
            episode["meta/episodes/chunk_index"], episode["meta/episodes/file_index"] = 0, 0
        path = os.path.join(self.root, EPISODES_PATH.format(chunk_index=0, file_index=0))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episodes) if self.episodes else pa.table({"episode_index": []}), path)
        pq.write_table(tasks_table(self.tasks), os.path.join(self.root, TASKS_PATH))
        stats = {key: value.as_json() for key, value in self.stats.items() if value.count}
        with open(os.path.join(self.root, "meta", "stats.json"), "w") as fh:
            json.dump(stats, fh, indent=2)
        with open(os.path.join(self.root, INFO_PATH), "w") as fh:
            json.dump(self._info(source, saved), fh, indent=2)

    def _info(self, source, saved: dict) -> dict:
        features: dict[str, dict[str, Any]] = {}
        for column in self.columns:
            if column.video:
                height, width = height_width(column.field)
                features[column.key] = {
                    "dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"],
                    "info": {"video.height": height, "video.width": width, "video.codec": self.settings.codec_name,
                             "video.pix_fmt": self.settings.pix_fmt, "video.is_depth_map": False,
                             "video.fps": self.fps, "video.channels": 3, "has_audio": False}}
            else:
                names = saved.get("names", {}).get(column.name)
                features[column.key] = {"dtype": column.field.dtype.name,
                                        "shape": list(_stored_field(column.field).shape) or [1], "names": names}
        for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                            ("index", "int64"), ("task_index", "int64")):
            features[name] = {"dtype": dtype, "shape": [1], "names": None}
        return {
            "codebase_version": "v3.0", "robot_type": saved.get("robot_type"),
            "total_episodes": len(self.episodes), "total_frames": self.rows, "total_tasks": len(self.tasks),
            "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": DATA_FILE_MB,
            "video_files_size_in_mb": VIDEO_FILE_MB, "fps": self.fps,
            "splits": {"train": f"0:{len(self.episodes)}"}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.videos else None, "features": features,
            SAVED_KEY: {"schema": source.schema.to_json(), "attrs": source.attrs,
                        "features": {**{name: name for name in self.own},
                                     **{column.name: column.key for column in self.columns}}},
        }


def _stored_field(field: Field) -> Field:
    """How a non-video field sits in LeRobot's data files: scalars as they are, vectors as
    lists, larger row shapes flattened to a vector (LeRobot's loader reads 1-D features)."""
    if len(field.shape) <= 1:
        return Field(field.shape, field.dtype, image=False)
    return Field((int(np.prod(field.shape)),), field.dtype, image=False)

