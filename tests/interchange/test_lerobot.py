"""LeRobot v3.0 import and export, checked against LeRobot's own writer and loader; v2.1 import;
malformed datasets."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import expstore
from expstore.errors import CorruptStoreError, FormatVersionError, InvalidArgumentError, NotAPoolError, SchemaError
from expstore.interchange import detect_format, export_lerobot, import_lerobot
from expstore.interchange.lerobot_video import VideoSettings, VideoWriter
from tests.helpers.lerobot import gradient_frame, load_with_lerobot, loaded_columns, loaded_items, write_with_lerobot
from tests.helpers.pools import BACKENDS

pytest.importorskip("pyarrow")
pytest.importorskip("av")
pq = pytest.importorskip("pyarrow.parquet")


def _rl_pool(path: str, rows: int = 40, capacity: int = 40) -> str:
    """A pool with the fields RL records, plus a camera and a 2-D extra; episodes of 7, the last cut off."""
    rng = np.random.default_rng(1)
    schema = {"obs": ((3,), "float32"), "action": ((2,), "float32"), "reward": ((), "float32"),
              "next_obs": ((3,), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool"),
              "cam": ((32, 48, 3), "uint8"), "gray": ((32, 32), "uint8"), "cost": ((2, 2), "float64")}
    with expstore.open(path, "w", capacity=capacity, schema=schema, attrs={"env_id": "Reach-v0"}) as pool:
        pool.extend({"obs": rng.normal(size=(rows, 3)), "action": rng.normal(size=(rows, 2)),
                     "reward": rng.normal(size=rows), "next_obs": rng.normal(size=(rows, 3)),
                     "terminated": np.arange(rows) % 7 == 6, "truncated": np.zeros(rows, bool),
                     "cam": np.stack([gradient_frame(k) for k in range(rows)]),
                     "gray": np.stack([gradient_frame(k, 32, 32)[..., 0] for k in range(rows)]),
                     "cost": rng.normal(size=(rows, 2, 2))})
        pool.end_episodes()
    return path


def _json(path: str):
    with open(path) as fh:
        return json.load(fh)


def _all(path: str) -> dict:
    with expstore.open(path) as pool:
        return pool[:]


# ---------------------------------------------------------------------------- LeRobot's writer -> pool
def test_a_dataset_written_by_lerobot_imports_bit_for_bit(tmp_path, backend):
    root = str(tmp_path / "written")
    given = write_with_lerobot(root)
    assert detect_format(root) == "lerobot"
    pool = str(tmp_path / f"pool{BACKENDS[backend]}")
    assert import_lerobot(root, pool) == len(given["action"])
    rows = _all(pool)
    with expstore.open(pool) as opened:
        assert list(opened.schema) == ["obs", "action", "obs_environment_state", "top", "task_index"]
        assert opened.schema["top"].image_layout == "HWC"
        assert opened.episodes()["length"].tolist() == [6, 7, 8]
        attrs = opened.attrs["lerobot"]
    assert attrs["fps"] == 10 and attrs["tasks"] == ["task 0", "task 1"]
    assert attrs["features"]["obs_environment_state"] == "observation.environment_state"
    dataset = load_with_lerobot(root)
    loaded, columns = loaded_items(dataset), loaded_columns(dataset)  # what LeRobot's own loader gives back
    for name, key in (("obs", "observation.state"), ("action", "action"),
                      ("obs_environment_state", "observation.environment_state"), ("task_index", "task_index")):
        assert rows[name].dtype == columns[key].dtype, name
        np.testing.assert_array_equal(rows[name], columns[key], err_msg=name)
        np.testing.assert_array_equal(rows[name].astype(loaded[key].dtype), loaded[key], err_msg=name)
    np.testing.assert_array_equal(rows["obs"], given["observation.state"])
    np.testing.assert_array_equal(rows["top"], loaded["observation.images.top"])  # the frames LeRobot decodes
    error = np.abs(rows["top"].astype(int) - given["observation.images.top"]).mean()
    assert error < 8  # and the camera's frames, within the default codec's loss


# ---------------------------------------------------------------------------- pool -> LeRobot's loader
def test_an_export_loads_with_lerobot_and_gives_the_pool_values(tmp_path, backend):
    pool = _rl_pool(str(tmp_path / f"pool{BACKENDS[backend]}"))
    root = str(tmp_path / "exported")
    frames, episodes = export_lerobot(pool, root, fps=15, video_codec="lossless")
    assert (frames, episodes) == (40, 6)
    info = _json(os.path.join(root, "meta", "info.json"))
    assert info["codebase_version"] == "v3.0" and info["fps"] == 15 and info["total_frames"] == 40
    assert info["features"]["observation.images.cam"]["dtype"] == "video"
    dataset = load_with_lerobot(root)
    assert dataset.meta.total_episodes == 6 and len(dataset) == 40
    loaded, columns = loaded_items(dataset), loaded_columns(dataset)
    rows = _all(pool)
    for name, key in (("obs", "observation.state"), ("action", "action"), ("next_obs", "next.observation.state"),
                      ("reward", "next.reward"), ("terminated", "next.done"), ("truncated", "next.truncated")):
        assert columns[key].dtype == rows[name].dtype, key
        np.testing.assert_array_equal(columns[key], rows[name], err_msg=key)
        np.testing.assert_array_equal(loaded[key], rows[name].astype(loaded[key].dtype), err_msg=key)
    np.testing.assert_array_equal(columns["cost"], rows["cost"].reshape(40, 4))  # LeRobot features are 1-D
    np.testing.assert_array_equal(loaded["observation.images.cam"], rows["cam"])  # lossless: exact
    np.testing.assert_array_equal(loaded["observation.images.gray"][..., 0], rows["gray"])
    assert loaded["episode_index"].tolist() == np.repeat(np.arange(6), [7, 7, 7, 7, 7, 5]).tolist()
    np.testing.assert_allclose(loaded["timestamp"], loaded["frame_index"] / 15, atol=1e-6)


def test_the_default_codec_is_lerobots_and_stays_within_its_tolerance(tmp_path):
    pool = _rl_pool(str(tmp_path / "pool.h5"))
    root = str(tmp_path / "exported")
    export_lerobot(pool, root)
    info = _json(os.path.join(root, "meta", "info.json"))
    assert info["features"]["observation.images.cam"]["info"]["video.codec"] == "av1"
    loaded = loaded_items(load_with_lerobot(root))
    error = np.abs(loaded["observation.images.cam"].astype(int) - _all(pool)["cam"]).mean()
    assert 0 < error < 8
    stats = _json(os.path.join(root, "meta", "stats.json"))
    np.testing.assert_allclose(stats["observation.state"]["mean"], _all(pool)["obs"].mean(axis=0), rtol=1e-6)
    assert np.asarray(stats["observation.images.cam"]["mean"]).shape == (3, 1, 1)


def test_pool_to_lerobot_to_pool_is_bit_for_bit_when_lossless(tmp_path, backend):
    pool = _rl_pool(str(tmp_path / f"pool{BACKENDS[backend]}"))
    root = str(tmp_path / "exported")
    export_lerobot(pool, root, video_codec="lossless")
    back = str(tmp_path / f"back{BACKENDS[backend]}")
    assert import_lerobot(root, back) == 40
    left, right = _all(pool), _all(back)
    assert list(left) == list(right)
    for name in left:
        assert left[name].dtype == right[name].dtype and np.array_equal(left[name], right[name]), name
    with expstore.open(pool) as a, expstore.open(back) as b:
        assert a.schema == b.schema and a.attrs == b.attrs
        assert a.episodes()["length"].tolist() == b.episodes()["length"].tolist()


def test_lerobot_to_pool_to_lerobot_gives_the_same_files(tmp_path):
    root = str(tmp_path / "written")
    write_with_lerobot(root)
    pool = str(tmp_path / "pool.zarr")
    import_lerobot(root, pool)
    again = str(tmp_path / "again")
    export_lerobot(pool, again, video_codec="lossless")
    first, second = (pq.read_table(os.path.join(r, "data", "chunk-000", "file-000.parquet")) for r in (root, again))
    for column in ("observation.state", "action", "observation.environment_state", "timestamp", "frame_index",
                   "episode_index", "index", "task_index"):
        assert first.column(column).to_pylist() == second.column(column).to_pylist(), column
    info = _json(os.path.join(again, "meta", "info.json"))
    assert info["features"]["observation.state"]["names"] == ["x", "y", "z"] and info["total_tasks"] == 2
    loaded, reloaded = loaded_items(load_with_lerobot(root)), loaded_items(load_with_lerobot(again))
    np.testing.assert_array_equal(reloaded["observation.images.top"], loaded["observation.images.top"])
    assert reloaded["task"].tolist() == loaded["task"].tolist()


# ---------------------------------------------------------------------------- v2.1
def test_a_v21_dataset_imports(tmp_path, backend):
    pa = pytest.importorskip("pyarrow")
    root = tmp_path / "v21"
    (root / "meta").mkdir(parents=True)
    lengths, fps = [4, 5], 10
    frames = [np.stack([gradient_frame(10 * e + t) for t in range(n)]) for e, n in enumerate(lengths)]
    for episode, n in enumerate(lengths):
        data = root / "data" / "chunk-000" / f"episode_{episode:06d}.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"observation.state": pa.array(np.full((n, 2), episode, np.float32).tolist(),
                                                               pa.list_(pa.float32(), 2)),
                                 "next.reward": pa.array(np.arange(n, dtype=np.float32)),
                                 "next.done": pa.array(np.arange(n) == n - 1),
                                 "timestamp": pa.array((np.arange(n) / fps).astype(np.float32)),
                                 "frame_index": pa.array(np.arange(n)), "episode_index": pa.array(np.full(n, episode)),
                                 "index": pa.array(np.arange(n) + sum(lengths[:episode])),
                                 "task_index": pa.array(np.zeros(n, np.int64))}), data)
        video = root / "videos" / "chunk-000" / "observation.images.cam" / f"episode_{episode:06d}.mp4"
        writer = VideoWriter(str(video), fps, 32, 48, VideoSettings.named("lossless"))
        writer.add(frames[episode])
        writer.close()
    feature = {"dtype": "float32", "shape": [1], "names": None}
    info = {"codebase_version": "v2.1", "fps": fps, "total_frames": 9, "total_episodes": 2, "chunks_size": 1000,
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": {"observation.state": {"dtype": "float32", "shape": [2], "names": None},
                         "observation.images.cam": {"dtype": "video", "shape": [32, 48, 3],
                                                    "names": ["height", "width", "channels"]},
                         "next.reward": feature, "next.done": {**feature, "dtype": "bool"},
                         "timestamp": feature, "frame_index": {**feature, "dtype": "int64"},
                         "episode_index": {**feature, "dtype": "int64"}, "index": {**feature, "dtype": "int64"},
                         "task_index": {**feature, "dtype": "int64"}}}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    (root / "meta" / "episodes.jsonl").write_text("\n".join(json.dumps(
        {"episode_index": e, "tasks": ["reach"], "length": n}) for e, n in enumerate(lengths)))
    (root / "meta" / "tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "reach"}))
    pool = str(tmp_path / f"v21{BACKENDS[backend]}")
    assert import_lerobot(str(root), pool) == 9
    rows = _all(pool)
    np.testing.assert_array_equal(rows["cam"], np.concatenate(frames))
    assert rows["reward"].shape == (9,) and rows["terminated"].tolist() == [False] * 3 + [True] + [False] * 4 + [True]
    with expstore.open(pool) as opened:
        assert opened.episodes()["length"].tolist() == lengths and opened.attrs["lerobot"]["tasks"] == ["reach"]


# ---------------------------------------------------------------------------- malformed datasets
@pytest.fixture
def exported(tmp_path) -> str:
    root = str(tmp_path / "exported")
    export_lerobot(_rl_pool(str(tmp_path / "src.h5")), root, video_codec="h264")
    return root


def _edit_info(root: str, change) -> None:
    path = os.path.join(root, "meta", "info.json")
    info = _json(path)
    change(info)
    with open(path, "w") as fh:
        json.dump(info, fh)


def _fails(root: str, tmp_path, error, *words: str) -> None:
    pool = tmp_path / "out.h5"
    with pytest.raises(error) as raised:
        import_lerobot(root, pool)
    for word in words:
        assert word in str(raised.value), str(raised.value)
    assert not list(tmp_path.glob("out.h5*")), "a half-written pool was left"


def test_a_missing_info_json_is_named(exported, tmp_path):
    os.remove(os.path.join(exported, "meta", "info.json"))
    _fails(exported, tmp_path, NotAPoolError, os.path.join("meta", "info.json"), "is missing")


def test_an_unknown_codebase_version_is_named(exported, tmp_path):
    _edit_info(exported, lambda info: info.update(codebase_version="v9.0"))
    _fails(exported, tmp_path, FormatVersionError, "info.json", "'v9.0'", "v3.0")


def test_a_data_file_that_disagrees_with_info_json_is_named(exported, tmp_path):
    _edit_info(exported, lambda info: info["features"]["observation.state"].update(shape=[5]))
    _fails(exported, tmp_path, SchemaError, "file-000.parquet", "observation.state", "info.json")


def test_a_data_file_without_a_declared_column_is_named(exported, tmp_path):
    path = os.path.join(exported, "data", "chunk-000", "file-000.parquet")
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["action"]), path)
    _fails(exported, tmp_path, SchemaError, "file-000.parquet", "['action']", "info.json")


def test_a_truncated_video_is_named(exported, tmp_path):
    video = os.path.join(exported, "videos", "observation.images.cam", "chunk-000", "file-000.mp4")
    with open(video, "r+b") as fh:
        fh.truncate(os.path.getsize(video) // 3)
    _fails(exported, tmp_path, CorruptStoreError, "file-000.mp4")


def test_a_missing_video_is_named(exported, tmp_path):
    shutil.rmtree(os.path.join(exported, "videos", "observation.images.gray"))
    _fails(exported, tmp_path, expstore.errors.StoreNotFoundError, "observation.images.gray", "is missing")


def test_bad_export_options_are_errors(tmp_path):
    pool = _rl_pool(str(tmp_path / "pool.h5"))
    with pytest.raises(InvalidArgumentError, match="--fps"):
        export_lerobot(pool, tmp_path / "a", fps="ten")
    with pytest.raises(InvalidArgumentError, match="--video-codec"):
        export_lerobot(pool, tmp_path / "b", video_codec="mpeg1")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_ragged_field_is_refused_saying_why(tmp_path):
    pool = str(tmp_path / "ragged.h5")
    with expstore.open(pool, "w", capacity=10, schema={"tokens": ((None,), "int32"), "action": ((2,), "float32")}) \
            as opened:
        opened.extend({"tokens": [np.arange(3, dtype=np.int32), np.arange(5, dtype=np.int32)],
                       "action": np.zeros((2, 2), np.float32)})
    with pytest.raises(SchemaError, match=r"ragged fields \['tokens'\].*one shape in meta/info.json.*Parquet"):
        export_lerobot(pool, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_image_features_embedded_by_lerobot_import_exactly(tmp_path, backend):
    from tests.helpers.lerobot import import_lerobot_dataset

    module = import_lerobot_dataset()
    root = str(tmp_path / "images")
    features = {"observation.state": {"dtype": "float32", "shape": (2,), "names": None},
                "observation.image": {"dtype": "image", "shape": (32, 48, 3), "names": ["height", "width", "channels"]}}
    dataset = module.LeRobotDataset.create("tests/images", fps=10, root=root, features=features, use_videos=False)
    frames = [gradient_frame(k) for k in range(9)]
    for k, frame in enumerate(frames):
        dataset.add_frame({"observation.state": np.full(2, k, np.float32), "observation.image": frame, "task": "look"})
        if k in (3, 8):
            dataset.save_episode()
    dataset.finalize()
    pool = str(tmp_path / f"images{BACKENDS[backend]}")
    assert import_lerobot(root, pool) == 9
    rows = _all(pool)
    np.testing.assert_array_equal(rows["image"], np.stack(frames))  # PNG: lossless
    with expstore.open(pool) as opened:
        assert opened.episodes()["length"].tolist() == [4, 5]
