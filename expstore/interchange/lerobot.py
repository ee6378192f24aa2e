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

import io
import json
import logging
import os
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends import files
from ..errors import CorruptStoreError, InvalidArgumentError, SchemaError
from ..inspect.streaming import Progress, iter_slices, open_source, slice_rows
from ..maintenance.convert import make_parent
from ..maintenance.destination import SAVED_KEY, check_destination
from ..schema import Field, Schema
from .arrow_columns import arrow_type, check_fixed, from_arrow, pyarrow, to_arrow
from .base import ExportOption, ExportResult
from .building import ImportSlice, build_imported_pool, episode_ends
from .lerobot_meta import (
    DATA_PATH,
    EPISODES_PATH,
    FRAME_COLUMNS,
    INFO_PATH,
    TASKS_PATH,
    VIDEO_PATH,
    RunningStats,
    feature_field,
    feature_for_field,
    field_for_feature,
    read_episodes,
    read_info,
    read_tasks,
    tasks_table,
)
from .lerobot_video import FrameReader, VideoSettings, VideoWriter
from .parquet import EpisodeTagger

log = logging.getLogger(__name__)

CHUNKS_SIZE = 1000  # LeRobot's defaults
DATA_FILE_MB = 100
VIDEO_FILE_MB = 200
DEFAULT_FPS = 30
# Frame columns a pool field may hold (an imported dataset's task index or its own timestamps).
_OWN_COLUMNS = {"timestamp": np.dtype("float32"), "task_index": np.dtype("int64")}


@dataclass
class _Column:
    """One pool field as a LeRobot feature."""

    name: str
    key: str
    field: Field
    video: bool


# ---------------------------------------------------------------------------------------- export
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
        check_fixed(source.schema, source.path, "a LeRobot dataset")
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
                for first, rows in iter_slices(source, progress=progress):
                    writer.add(source, first, rows)
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


def _export_columns(schema: Schema, saved_names: dict) -> list[_Column]:
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
        columns.append(_Column(name, key, field, video=field.is_image and channels in (1, 3)))
    return columns


def _rgb(values: np.ndarray, field: Field) -> np.ndarray:
    """Rows of an image field as (N, H, W, 3) RGB frames for the encoder."""
    layout = field.image_layout
    if layout == "CHW":
        values = np.moveaxis(values, 1, -1)
    elif layout == "HW":
        values = values[..., None]
    return np.repeat(values, 3, axis=-1) if values.shape[-1] == 1 else values


def _from_rgb(frame: np.ndarray, field: Field) -> np.ndarray:
    """A decoded RGB frame in the layout of ``field``."""
    layout = field.image_layout or "HWC"
    channels = field.shape[layout.index("C")] if "C" in layout else 0
    if channels == 1 or layout == "HW":
        frame = frame[..., :1] if channels else frame[..., 0]
    return np.moveaxis(frame, -1, 0) if layout == "CHW" else frame


class _DatasetWriter:
    """The files of a LeRobot v3.0 dataset, written frame slice by frame slice."""

    def __init__(self, root: str, columns: list[_Column], fps: int, settings: VideoSettings, tasks: list[str]):
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
        self._tagger: EpisodeTagger | None = None

    # -------------------------------------------------------------- frames
    def add(self, source, first: int, rows: dict) -> None:
        n = len(next(iter(rows.values())))
        if self._tagger is None:
            self._tagger = EpisodeTagger(source)
        self._tagger.tags(first, rows, n)
        starts = self._tagger.starts_in_last().tolist()  # offsets where a new episode begins
        if self.rows == 0 and n and starts[:1] != [0]:
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
            height, width = _height_width(column.field)
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
                height, width = _height_width(column.field)
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


def _height_width(field: Field) -> tuple[int, int]:
    layout = field.image_layout or "HWC"
    return field.shape[layout.index("H")], field.shape[layout.index("W")]


# ---------------------------------------------------------------------------------------- import
def import_lerobot(src: str | os.PathLike, dst: str | os.PathLike, *, capacity: int | None = None,
                   backend: str | None = None, overwrite: bool = False, progress: Progress | None = None) -> int:
    """Create pool ``dst`` from the LeRobot dataset directory ``src``; return the frames imported.

    Raises:
        NotAPoolError: ``src`` has no meta/info.json.
        FormatVersionError: a codebase_version other than v3.0 and v2.1.
        SchemaError, CorruptStoreError: a data file disagrees with info.json, a video is
            missing, truncated or damaged; nothing is written then.
    """
    pyarrow("lerobot")
    src, dst = os.fspath(src), os.fspath(dst)
    check_destination(dst, overwrite)
    info = read_info(src)
    plan = _ImportPlan(src, info)
    build_imported_pool(dst, backend, plan.schema, capacity or max(1, plan.total), plan.attrs, plan.slices(progress),
                        overwrite=overwrite)
    return plan.total


class _ImportPlan:
    """Which feature becomes which field, where each episode's rows and frames are."""

    def __init__(self, root: str, info: dict):
        self.root, self.info, self.version = root, info, info["codebase_version"]
        self.info_path = os.path.join(root, INFO_PATH)
        self.total = int(info["total_frames"])
        self.tasks = read_tasks(root, self.version)
        saved = info.get(SAVED_KEY) if isinstance(info.get(SAVED_KEY), dict) else None
        saved_names = {key: name for name, key in (saved or {}).get("features", {}).items()}
        taken: set[str] = set()
        self.columns: list[_Column] = []
        self.declared: dict[str, Field] = {}  # each feature as info.json declares it
        for key, feature in info["features"].items():
            if key in FRAME_COLUMNS or (saved is not None and key not in saved_names):
                continue  # bookkeeping the pool holds, or a column our export added (timestamp, task_index)
            if key == "timestamp" and saved is None:
                continue  # frame_index / fps: an export writes it again
            if key == "task_index" and saved is None and len(self.tasks) <= 1:
                continue  # one task: attrs hold it
            if isinstance(feature, dict) and feature.get("dtype") == "string":
                continue
            field = feature_field(self.info_path, key, feature)
            self.declared[key] = field
            name = saved_names.get(key) or field_for_feature(key, taken)
            self.columns.append(_Column(name, key, field, video=feature.get("dtype") == "video"))
        schema = Schema({column.name: column.field for column in self.columns})
        if saved is not None and set(Schema.from_json(saved["schema"])) == set(schema):
            schema = Schema.from_json(saved["schema"])
            self.columns = [_Column(c.name, c.key, schema[c.name], c.video) for c in self.columns]
            self.attrs = dict(saved.get("attrs", {}))
        else:
            self.attrs = {"lerobot": {
                "fps": int(info["fps"]), "robot_type": info.get("robot_type"), "tasks": self.tasks,
                "codebase_version": self.version, "features": {c.name: c.key for c in self.columns},
                "names": {c.name: info["features"][c.key].get("names") for c in self.columns if not c.video}}}
        self.schema = schema
        self.episodes = {int(episode["episode_index"]): episode for episode in read_episodes(root, self.version)}

    # -------------------------------------------------------------- files
    def data_files(self) -> list[str]:
        if self.version == "v2.1":
            template, size = self.info.get("data_path", ""), int(self.info.get("chunks_size", CHUNKS_SIZE))
            return [os.path.join(self.root, template.format(episode_chunk=index // size, episode_index=index))
                    for index in sorted(self.episodes)]
        folder = os.path.join(self.root, "data")
        found = []
        for chunk in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if chunk.startswith("chunk-"):
                found += [os.path.join(folder, chunk, name) for name in sorted(os.listdir(os.path.join(folder, chunk)))
                          if name.startswith("file-") and name.endswith(".parquet")]
        if not found and self.total:
            raise CorruptStoreError(f"{folder} holds no chunk-*/file-*.parquet, but {self.info_path} counts "
                                    f"{self.total} frames")
        return found

    def video_at(self, key: str, episode_index: int) -> tuple[str, float]:
        """The video file of camera ``key`` holding an episode's frames, and the episode's start time in it."""
        episode = self.episodes.get(episode_index)
        if episode is None:
            raise CorruptStoreError(f"{self.root}: episode {episode_index} is in the data files but not in the "
                                    "episode metadata")
        template = self.info.get("video_path") or ""
        if self.version == "v2.1":
            size = int(self.info.get("chunks_size", CHUNKS_SIZE))
            path = template.format(episode_chunk=episode_index // size, video_key=key, episode_index=episode_index)
            return os.path.join(self.root, path), 0.0
        try:
            chunk, index = episode[f"videos/{key}/chunk_index"], episode[f"videos/{key}/file_index"]
            start = float(episode[f"videos/{key}/from_timestamp"])
        except KeyError:
            raise CorruptStoreError(f"{self.root}: the episode metadata names no video file of {key} for episode "
                                    f"{episode_index}") from None
        return os.path.join(self.root, template.format(video_key=key, chunk_index=chunk, file_index=index)), start

    # -------------------------------------------------------------- rows
    def slices(self, progress):
        readers = {c.key: FrameReader(c.key, _hwc_of(self.info["features"][c.key])) for c in self.columns if c.video}
        done = 0
        try:
            batches = self._batches()
            current = next(batches, None)
            while current is not None:
                path, batch = current
                following = next(batches, None)
                rows = self._rows(path, batch, readers)
                ids = batch.column("episode_index").to_numpy(zero_copy_only=False)
                next_id = None if following is None else following[1].column("episode_index")[0].as_py()
                done_flags = rows.get("terminated") if self._is_done_flag("terminated") else None
                yield ImportSlice(rows, episode_ends(ids, next_id, done_flags))
                done += batch.num_rows
                if progress is not None:
                    progress(batch.num_rows)
                current = following
        finally:
            for reader in readers.values():
                reader.close()
        if done != self.total:
            raise CorruptStoreError(f"the data files of {self.root} hold {done} frames, but {self.info_path} counts "
                                    f"{self.total}; the dataset is incomplete")

    def _is_done_flag(self, name: str) -> bool:
        return name in self.schema and self.schema[name].shape == ()

    def _batches(self):
        import pyarrow.parquet as pq  # beside pyarrow: the optional dependency

        wanted = [c.key for c in self.columns if not c.video]
        needed = list(dict.fromkeys([*wanted, "episode_index", "timestamp"]))
        for path in self.data_files():
            if not os.path.isfile(path):
                raise CorruptStoreError(f"{path} is missing; {self.info_path} lists its episodes")
            try:
                parquet = pq.ParquetFile(path)
            except Exception as exc:  # pyarrow: ArrowInvalid / OSError
                raise CorruptStoreError(f"{path} is not a readable Parquet file ({exc}); the dataset is damaged") \
                    from None
            with parquet:
                missing = [key for key in needed if key not in parquet.schema_arrow.names]
                if missing:
                    raise SchemaError(f"{path} lacks the columns {missing} that {self.info_path} declares; the data "
                                      "file disagrees with info.json")
                try:
                    yield from ((path, batch) for batch in
                                parquet.iter_batches(batch_size=slice_rows(self.schema), columns=needed))
                except OSError as exc:
                    raise CorruptStoreError(f"{path} cannot be read to the end ({exc}); the file is damaged") from None

    def _rows(self, path: str, batch, readers: dict) -> dict:
        rows = {}
        for column in self.columns:
            if column.video:
                continue
            stored = self.declared[column.key]  # shape (1,): a scalar column, as LeRobot writes it
            arrow = batch.column(column.key)
            if self.info["features"][column.key].get("dtype") == "image":
                rows[column.name] = _images(arrow, column.field, f"{path}: column {column.key!r}")
                continue
            try:
                values = from_arrow(arrow, stored, f"{path}: column {column.key!r}")
            except SchemaError as exc:
                raise SchemaError(f"{exc}; {self.info_path} declares {column.key} as "
                                  f"{self.info['features'][column.key].get('dtype')} of shape "
                                  f"{self.info['features'][column.key].get('shape')}") from None
            if len(values) and values[0].size != int(np.prod(column.field.shape)):
                raise SchemaError(f"{path}: column {column.key!r} holds rows of {values[0].size} values; the pool "
                                  f"field {column.name} it was exported from has shape {column.field.shape}")
            rows[column.name] = values.reshape(len(values), *column.field.shape).astype(column.field.dtype,
                                                                                         copy=False)
        if readers:
            episodes = batch.column("episode_index").to_numpy(zero_copy_only=False)
            times = batch.column("timestamp").to_numpy(zero_copy_only=False).astype(np.float64)
            for column in self.columns:
                if column.video:
                    rows[column.name] = self._frames(column, readers[column.key], episodes, times)
        return rows

    def _frames(self, column: _Column, reader: FrameReader, episodes: np.ndarray, times: np.ndarray) -> np.ndarray:
        out = np.empty((len(episodes), *column.field.shape), np.uint8)
        location: tuple[int, str, float] | None = None
        for row, (episode, time_s) in enumerate(zip(episodes.tolist(), times.tolist(), strict=True)):
            if location is None or location[0] != episode:
                location = (episode, *self.video_at(column.key, episode))
            out[row] = _from_rgb(reader.frame_at(location[1], location[2] + time_s), column.field)
        return out


def _images(column, field: Field, where: str) -> np.ndarray:
    """LeRobot ``image`` features: PNG (or JPEG) bytes in a struct column (``bytes``, ``path``)."""
    try:
        # Pillow loads only here: LeRobot image features are PNG files embedded in the data files.
        from PIL import Image
    except ImportError as exc:
        raise ImportError("LeRobot image features need Pillow: pip install 'expstore[lerobot]' "
                          "(or pip install pillow)") from exc
    pa = pyarrow("lerobot")
    if not pa.types.is_struct(column.type) or column.type.get_field_index("bytes") < 0:
        raise SchemaError(f"{where} holds {column.type}; LeRobot stores an image feature as a struct of bytes and "
                          "path")
    encoded = column.field("bytes").to_pylist()
    out = np.empty((len(encoded), *field.shape), np.uint8)
    for row, data in enumerate(encoded):
        try:
            with Image.open(io.BytesIO(data)) as image:
                frame = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (OSError, TypeError, ValueError) as exc:  # UnidentifiedImageError is an OSError; None bytes
            raise CorruptStoreError(f"{where}: row {row} is not a readable image ({exc})") from None
        if frame.shape[:2] != _height_width(field):
            raise SchemaError(f"{where}: row {row} is a {frame.shape[1]}x{frame.shape[0]} image; info.json declares "
                              f"{_height_width(field)[1]}x{_height_width(field)[0]}")
        out[row] = _from_rgb(frame, field)
    return out


def _hwc_of(feature: dict) -> tuple[int, int, int]:
    field = feature_field("", "video", feature)
    return field.shape[0], field.shape[1], field.shape[2]


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

