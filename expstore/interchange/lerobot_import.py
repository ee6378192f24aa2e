"""LeRobot import (codebase v3.0 and v2.1): a dataset directory of lerobot.py's layout as a pool.

Features map to fields by lerobot_meta.py's table (a dataset that expstore exported gets its
own schema, attrs and field names back), episodes come from ``episode_index`` (an episode ends at
its last frame, with ``next.done`` as ``terminated``), each camera's videos are decoded once, in
order, and every data file is checked against info.json. v2.1 differs only in its file listing
(one data and one video file per episode). The pool is built aside and renamed into place.
"""

from __future__ import annotations

import io
import os

import numpy as np

from ..errors import CorruptStoreError, SchemaError
from ..inspect.streaming import Progress, slice_rows
from ..maintenance.destination import SAVED_KEY, check_destination
from ..schema import Field, Schema
from .arrow_columns import from_arrow, pyarrow
from .building import ImportSlice, build_imported_pool, episode_ends
from .lerobot_meta import (
    CHUNKS_SIZE,
    FRAME_COLUMNS,
    INFO_PATH,
    LeRobotColumn,
    feature_field,
    field_for_feature,
    height_width,
    read_episodes,
    read_info,
    read_tasks,
)
from .lerobot_video import FrameReader


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
        self.columns: list[LeRobotColumn] = []
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
            self.columns.append(LeRobotColumn(name, key, field, video=feature.get("dtype") == "video"))
        schema = Schema({column.name: column.field for column in self.columns})
        if saved is not None and set(Schema.from_json(saved["schema"])) == set(schema):
            schema = Schema.from_json(saved["schema"])
            self.columns = [LeRobotColumn(c.name, c.key, schema[c.name], c.video) for c in self.columns]
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

    def _frames(self, column: LeRobotColumn, reader: FrameReader, episodes: np.ndarray,
                times: np.ndarray) -> np.ndarray:
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
        if frame.shape[:2] != height_width(field):
            raise SchemaError(f"{where}: row {row} is a {frame.shape[1]}x{frame.shape[0]} image; info.json declares "
                              f"{height_width(field)[1]}x{height_width(field)[0]}")
        out[row] = _from_rgb(frame, field)
    return out


def _hwc_of(feature: dict) -> tuple[int, int, int]:
    field = feature_field("", "video", feature)
    return field.shape[0], field.shape[1], field.shape[2]



def _from_rgb(frame: np.ndarray, field: Field) -> np.ndarray:
    """A decoded RGB frame in the layout of ``field``."""
    layout = field.image_layout or "HWC"
    channels = field.shape[layout.index("C")] if "C" in layout else 0
    if channels == 1 or layout == "HW":
        frame = frame[..., :1] if channels else frame[..., 0]
    return np.moveaxis(frame, -1, 0) if layout == "CHW" else frame

