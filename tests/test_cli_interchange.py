"""expstore export/import: D4RL and Minari, round trips, and Minari's own reader and writer."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from cli_helpers import all_rows, assert_error, assert_same_rows, make_pool, run
from conftest import BACKENDS

import expstore


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def test_d4rl_round_trip_gives_identical_rows(tmp_path, pool_path, backend):
    make_pool(pool_path, rows=300, capacity=200, attrs={"env_id": "Pendulum-v1"})
    file = tmp_path / "d4rl.hdf5"
    run("export", pool_path, file)
    with h5py.File(file, "r") as f:
        assert {"observations", "actions", "rewards", "next_observations", "terminals", "timeouts"} <= set(f)
        np.testing.assert_array_equal(f["rewards"][:3], [-100, -101, -102])
    back = str(tmp_path / f"back{BACKENDS[backend]}")
    run("import", file, back)
    assert_same_rows(all_rows(back), all_rows(pool_path))
    assert expstore.open(back).attrs == {"env_id": "Pendulum-v1"}


def test_d4rl_import_of_a_foreign_file(tmp_path):
    """A D4RL file as D4RL ships it: float terminals, no timeouts, per-step infos."""
    file = tmp_path / "hopper.hdf5"
    with h5py.File(file, "w") as f:
        f["observations"] = np.arange(20, dtype=np.float32).reshape(10, 2)
        f["actions"] = np.ones((10, 1), np.float32)
        f["rewards"] = np.arange(10, dtype=np.float32)
        f["terminals"] = (np.arange(10) == 9).astype(np.float32)
        f["infos/qpos"] = np.zeros((10, 3))
        f["infos/note"] = np.zeros(4)  # not one row per step: skipped
    run("import", file, tmp_path / "hopper.zarr", "--capacity", "100")
    rows = all_rows(str(tmp_path / "hopper.zarr"))
    assert list(rows) == ["obs", "action", "reward", "terminated", "qpos", "truncated"]
    assert rows["terminated"].dtype == np.float32 and rows["truncated"].sum() == 0
    assert expstore.open(str(tmp_path / "hopper.zarr")).capacity == 100


def test_minari_export_is_read_by_minari(tmp_path, pool_path, minari_root):
    minari = pytest.importorskip("minari")
    make_pool(pool_path, rows=300, capacity=200)
    out = run("export", pool_path, minari_root / "pendulum" / "demo-v0", "--format", "minari",
              "--dataset-id", "pendulum/demo-v0").output
    dataset = minari.load_dataset("pendulum/demo-v0")
    rows = all_rows(pool_path)
    assert dataset.total_steps == 200 and f"in {dataset.total_episodes} episodes" in out
    steps = 0
    for episode in dataset.iterate_episodes():
        n = len(episode.rewards)
        np.testing.assert_array_equal(episode.observations[:-1], rows["obs"][steps:steps + n])
        np.testing.assert_array_equal(episode.observations[1:], rows["next_obs"][steps:steps + n])
        np.testing.assert_array_equal(episode.actions, rows["action"][steps:steps + n])
        np.testing.assert_array_equal(episode.terminations, rows["terminated"][steps:steps + n])
        steps += n
    assert steps == 200


def test_minari_round_trip_splits_at_gaps_and_gives_identical_rows(tmp_path, backend, minari_root):
    """Rows whose next_obs is not the next obs (no flag either) still come back bit for bit."""
    src = str(tmp_path / f"src{BACKENDS[backend]}")
    rng = np.random.default_rng(0)
    with expstore.open(src, "w", capacity=50, schema={
        "obs": ((2,), "float32"), "action": ((), "int64"), "reward": ((), "float64"), "next_obs": ((2,), "float32"),
        "terminated": ((), "bool"), "truncated": ((), "bool"), "log_prob": ((), "float32")}) as pool:
        pool.extend({"obs": rng.normal(size=(40, 2)), "action": rng.integers(0, 4, 40), "reward": rng.normal(size=40),
                     "next_obs": rng.normal(size=(40, 2)), "terminated": np.arange(40) % 9 == 8,
                     "truncated": np.zeros(40, bool), "log_prob": rng.normal(size=40)})
    run("export", src, minari_root / "gaps-v1")
    metadata = json.loads((minari_root / "gaps-v1" / "data" / "metadata.json").read_text())
    assert metadata["total_episodes"] == 40 and json.loads(metadata["action_space"])["type"] == "Discrete"
    back = str(tmp_path / f"back{BACKENDS[backend]}")
    run("import", "gaps-v1", back)  # a dataset id under MINARI_DATASETS_PATH
    assert_same_rows(all_rows(back), all_rows(src))


def test_minari_data_collector_dataset_imports_row_for_row(tmp_path, backend, minari_root):
    minari = pytest.importorskip("minari")
    gym = pytest.importorskip("gymnasium")
    env = minari.DataCollector(gym.make("Pendulum-v1", max_episode_steps=30))
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(75):
        _obs, _reward, terminated, truncated, _info = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    dataset = env.create_dataset("pendulum/collected-v0", algorithm_name="random", author="tests",
                                 author_email="tests@example.org", code_permalink="none", description="tests",
                                 eval_env="Pendulum-v1")
    pool = str(tmp_path / f"collected{BACKENDS[backend]}")
    run("import", minari_root / "pendulum" / "collected-v0", pool)
    rows = all_rows(pool)
    assert len(rows["reward"]) == dataset.total_steps
    steps = 0
    for episode in dataset.iterate_episodes():
        n = len(episode.rewards)
        np.testing.assert_array_equal(rows["obs"][steps:steps + n], episode.observations[:-1])
        np.testing.assert_array_equal(rows["next_obs"][steps:steps + n], episode.observations[1:])
        np.testing.assert_array_equal(rows["action"][steps:steps + n], episode.actions)
        np.testing.assert_array_equal(rows["reward"][steps:steps + n], episode.rewards)
        np.testing.assert_array_equal(rows["truncated"][steps:steps + n], episode.truncations)
        steps += n
    assert steps == len(rows["reward"]) and rows["truncated"].sum() >= 2
    attrs = expstore.open(pool).attrs
    assert attrs["minari"]["dataset_id"] == "pendulum/collected-v0"
    run("export", pool, tmp_path / "again-v0")  # the spaces and env spec go back out
    again = json.loads((tmp_path / "again-v0" / "data" / "metadata.json").read_text())
    assert again["observation_space"] == attrs["minari"]["observation_space"] and "env_spec" in again


def test_interchange_errors_are_one_line(tmp_path, pool_path, minari_root):
    make_pool(pool_path)
    assert_error(run("export", pool_path, tmp_path / "bad name", "--format", "minari", ok=False), "name-v0")
    run("export", pool_path, tmp_path / "x.hdf5")
    assert_error(run("export", pool_path, tmp_path / "x.hdf5", ok=False), "already exists")
    assert_error(run("import", tmp_path / "x.hdf5", pool_path, ok=False), "already exists")
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f["something"] = np.zeros(3)
    assert_error(run("import", tmp_path / "other.hdf5", tmp_path / "o.h5", ok=False), "not a D4RL file")
    (tmp_path / "dir").mkdir()
    assert_error(run("import", tmp_path / "dir", tmp_path / "o.h5", ok=False), "not a Minari dataset")
    assert_error(run("import", "nobody/none-v0", tmp_path / "o.h5", ok=False), "no Minari dataset")
    with expstore.open(str(tmp_path / "few.h5"), "w", capacity=5, schema={"obs": ((2,), "float32")}):
        pass
    assert_error(run("export", tmp_path / "few.h5", tmp_path / "few.hdf5", ok=False), "lacks the fields")
