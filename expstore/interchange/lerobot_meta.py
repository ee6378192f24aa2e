"""The metadata of a LeRobot dataset: meta/info.json, meta/tasks.parquet, meta/stats.json and
the episode tables, and how LeRobot's feature names map to pool fields.

| LeRobot feature            | pool field        | notes                                            |
|----------------------------|-------------------|--------------------------------------------------|
| ``observation.state``      | ``obs``           |                                                  |
| ``observation.images.<k>`` | ``<k>``           | a ``video`` (or ``image``) feature: uint8 HxWxC  |
| ``observation.<k>``        | ``obs_<k>``       | e.g. ``observation.environment_state``          |
| ``next.observation.state`` | ``next_obs``      | written by expstore for pools that store it      |
| ``action``                 | ``action``        |                                                  |
| ``next.reward``            | ``reward``        | shape (1,) becomes a scalar field                |
| ``next.done``              | ``terminated``    |                                                  |
| ``next.truncated``         | ``truncated``     | written by expstore                              |
| ``timestamp``              | ``timestamp``     | kept, so an export writes the same times         |
| ``task_index``             | ``task_index``    | the task strings go to ``attrs["lerobot"]``      |
| ``index``, ``frame_index``, ``episode_index`` | - | the pool's step ids and episodes hold them  |
| anything else              | its name, ``.`` -> ``_`` |                                           |

Every feature of shape (1,) is a scalar column in LeRobot's data files, and a scalar field in
the pool. The names a dataset used ride in ``attrs["lerobot"]["features"]``, so an export gives
them back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from ..errors import CorruptStoreError, FormatVersionError, NotAPoolError, SchemaError, StoreNotFoundError
from ..schema import Field, check_field_name
from .arrow_columns import pyarrow
from .common import field_name

VERSIONS = ("v3.0", "v2.1")
INFO_PATH = os.path.join("meta", "info.json")
TASKS_PATH = os.path.join("meta", "tasks.parquet")
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
# LeRobot's bookkeeping columns of every frame: the pool's step ids and episodes hold them.
FRAME_COLUMNS = ("index", "frame_index", "episode_index")
CHUNKS_SIZE = 1000  # LeRobot's default: files per chunk folder
_FIXED = {"observation.state": "obs", "next.observation.state": "next_obs", "action": "action",
          "next.reward": "reward", "next.done": "terminated", "next.truncated": "truncated",
          "timestamp": "timestamp", "task_index": "task_index"}
_FIXED_BACK = {field: key for key, field in _FIXED.items()}
VISUAL = ("video", "image")


@dataclass
class LeRobotColumn:
    """One pool field as a LeRobot feature."""

    name: str
    key: str
    field: Field
    video: bool


def height_width(field: Field) -> tuple[int, int]:
    """The frame size of an image field, whatever its layout."""
    layout = field.image_layout or "HWC"
    return field.shape[layout.index("H")], field.shape[layout.index("W")]


def field_for_feature(key: str, taken: set[str]) -> str:
    """The pool field name of LeRobot feature ``key`` (the table in the module docstring)."""
    if key in _FIXED:
        name = _FIXED[key]
    elif key.startswith("observation.images.") or key.startswith("observation.image."):
        name = field_name(key.split(".", 2)[2]) or "image"
    elif key in ("observation.image", "observation.images"):
        name = "image"
    elif key.startswith("observation."):
        name = "obs_" + (field_name(key[len("observation."):]) or "x")
    else:
        name = field_name(key) or "feature"
    name = _free(name, taken)
    taken.add(name)
    return name


def _free(name: str, taken: set[str]) -> str:
    try:
        check_field_name(name)
    except SchemaError:
        name = f"f_{name}"
    candidate, k = name, 2
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    return candidate


def feature_for_field(name: str, field: Field, saved: dict[str, str]) -> str:
    """The LeRobot feature key a pool field is written as: the dataset's own name when it came
    from one (``saved``), else the table's, with image fields as ``observation.images.<name>``."""
    if name in saved:
        return saved[name]
    if name in _FIXED_BACK:
        return _FIXED_BACK[name]
    if field.is_image:
        return f"observation.images.{name}"
    return name


def read_info(root: str) -> dict:
    """meta/info.json of the dataset at ``root``, checked enough to read the dataset.

    Raises:
        StoreNotFoundError, NotAPoolError: no dataset at ``root``, or no meta/info.json in it.
        CorruptStoreError: info.json is not JSON or lacks what a reader needs.
        FormatVersionError: a ``codebase_version`` this reader does not know.
    """
    path = os.path.join(root, INFO_PATH)
    if not os.path.exists(root):
        raise StoreNotFoundError(f"no LeRobot dataset at {root}; check the path")
    if not os.path.isfile(path):
        raise NotAPoolError(f"{path} is missing, so {root} is not a LeRobot dataset (every LeRobot dataset has "
                            "meta/info.json)")
    try:
        with open(path, "rb") as fh:
            info = json.loads(fh.read())
    except ValueError as exc:
        raise CorruptStoreError(f"{path} is not JSON ({exc}); the dataset's metadata is damaged") from None
    if not isinstance(info, dict):
        raise CorruptStoreError(f"{path} holds {type(info).__name__}, not a JSON object")
    version = info.get("codebase_version")
    if version not in VERSIONS:
        raise FormatVersionError(f"{path} has codebase_version {version!r}; this reader knows "
                                 f"{' and '.join(VERSIONS)} (convert older datasets with LeRobot's converter)")
    missing = [key for key in ("features", "fps", "total_frames", "total_episodes") if key not in info]
    if missing or not isinstance(info.get("features"), dict):
        raise CorruptStoreError(f"{path} lacks {missing or ['features']}; LeRobot's info.json names them")
    return info


def feature_field(path: str, key: str, feature: dict) -> Field:
    """The pool field that holds LeRobot feature ``key`` (a video or image: uint8 HxWxC)."""
    try:
        shape = tuple(int(n) for n in feature["shape"])
        dtype = feature["dtype"]
    except (KeyError, TypeError, ValueError):
        raise CorruptStoreError(f"{path}: feature {key!r} lacks a dtype and shape") from None
    if dtype in VISUAL:
        if len(shape) != 3:
            raise SchemaError(f"{path}: {dtype} feature {key!r} has shape {shape}; LeRobot's frames are (H, W, C)")
        return Field(_hwc(shape, feature), "uint8", image="HWC")
    if dtype in ("string",):
        raise SchemaError(f"{path}: feature {key!r} holds strings; only numbers, videos and images can be fields")
    return Field(() if shape == (1,) else shape, dtype)


def _hwc(shape: tuple[int, ...], feature: dict) -> tuple[int, int, int]:
    names = feature.get("names") or []
    if list(names)[:1] == ["channels"] or (shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4)):
        return (shape[1], shape[2], shape[0])
    return (shape[0], shape[1], shape[2])


def read_tasks(root: str, version: str) -> list[str]:
    """The task strings, by task index."""
    if version == "v2.1":
        path = os.path.join(root, "meta", "tasks.jsonl")
        rows = _jsonl(path)
        return [row["task"] for row in sorted(rows, key=lambda row: row["task_index"])]
    pa = pyarrow("lerobot")
    import pyarrow.parquet as pq  # beside pyarrow: the optional dependency

    path = os.path.join(root, TASKS_PATH)
    if not os.path.isfile(path):
        return []
    table = _read_table(pq, path)
    names = [name for name in table.column_names if name != "task_index"]
    if "task_index" not in table.column_names or not names:
        raise CorruptStoreError(f"{path} lacks the task and task_index columns LeRobot writes")
    indices = table.column("task_index").to_numpy(zero_copy_only=False)
    texts = table.column("task" if "task" in names else names[0]).to_pylist()
    tasks = [""] * (int(indices.max()) + 1 if len(indices) else 0)
    for index, text in zip(indices.tolist(), texts, strict=True):
        tasks[index] = text
    del pa
    return tasks


def tasks_table(tasks: list[str]):
    """meta/tasks.parquet as pandas writes it: the task string is the index, task_index a column."""
    pa = pyarrow("lerobot")
    pandas_meta = {"index_columns": ["task"], "column_indexes": [],
                   "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                "numpy_type": "int64", "metadata": None},
                               {"name": "task", "field_name": "task", "pandas_type": "unicode",
                                "numpy_type": "object", "metadata": None}],
                   "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.0"}
    return pa.table({"task_index": pa.array(np.arange(len(tasks), dtype=np.int64)), "task": pa.array(tasks)},
                    metadata={"pandas": json.dumps(pandas_meta)})


def read_episodes(root: str, version: str) -> list[dict]:
    """One dict per episode (its index, length, data file and each camera's video file and start time)."""
    if version == "v2.1":
        return _v21_episodes(root)
    pyarrow("lerobot")
    import pyarrow.parquet as pq  # beside pyarrow: the optional dependency

    folder = os.path.join(root, "meta", "episodes")
    paths = _chunk_files(folder, ".parquet")
    if not paths:
        raise CorruptStoreError(f"{folder} holds no chunk-*/file-*.parquet; the dataset lists no episodes")
    episodes = []
    for path in paths:
        table = _read_table(pq, path)
        keep = [name for name in table.column_names if not name.startswith("stats/")]
        episodes += table.select(keep).to_pylist()
    return sorted(episodes, key=lambda episode: episode.get("episode_index", 0))


def _v21_episodes(root: str) -> list[dict]:
    rows = _jsonl(os.path.join(root, "meta", "episodes.jsonl"))
    return sorted(rows, key=lambda row: row.get("episode_index", 0))


def _jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise CorruptStoreError(f"{path} is missing; a LeRobot v2.1 dataset has it")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise CorruptStoreError(f"{path}: line {number} is not JSON ({exc})") from None
    return rows


def _chunk_files(folder: str, suffix: str) -> list[str]:
    found = []
    for chunk in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        for name in sorted(os.listdir(os.path.join(folder, chunk))):
            if chunk.startswith("chunk-") and name.startswith("file-") and name.endswith(suffix):
                found.append(os.path.join(folder, chunk, name))
    return found


def _read_table(pq, path: str):
    try:
        return pq.read_table(path)
    except Exception as exc:  # pyarrow: ArrowInvalid / OSError for a damaged or non-Parquet file
        raise CorruptStoreError(f"{path} is not a readable Parquet file ({exc}); the dataset is damaged") from None


class RunningStats:
    """min, max, mean, std and count of one feature, accumulated slice by slice (LeRobot's
    stats.json; camera frames per channel, scaled to [0, 1], as LeRobot computes them)."""

    def __init__(self, visual: bool):
        self.visual, self.count, self.elements = visual, 0, 0  # rows; values per channel
        self.low = self.high = self.total = self.squares = None

    def add(self, values: np.ndarray) -> None:
        if not len(values):
            return
        data = values.astype(np.float64)
        # camera frames (N, H, W, C): per channel, in [0, 1]; other features per element
        data = data.reshape(-1, data.shape[-1]) / 255.0 if self.visual else data.reshape(len(data), -1)
        low, high = data.min(axis=0), data.max(axis=0)
        total, squares = data.sum(axis=0), np.square(data).sum(axis=0)
        if self.low is None:
            self.low, self.high, self.total, self.squares = low, high, total, squares
        else:
            self.low, self.high = np.minimum(self.low, low), np.maximum(self.high, high)
            self.total, self.squares = self.total + total, self.squares + squares
        self.count += len(values)
        self.elements += len(data)

    def as_json(self) -> dict:
        if self.low is None:
            return {}
        mean = self.total / self.elements
        std = np.sqrt(np.maximum(0.0, self.squares / self.elements - np.square(mean)))
        shape = (-1, 1, 1) if self.visual else (-1,)
        out = {name: np.asarray(value).reshape(shape).tolist() for name, value in
               (("min", self.low), ("max", self.high), ("mean", mean), ("std", std))}
        out["count"] = [self.count]
        return out
