"""Minari's arrow and parquet storages: Minari's own DataCollector and load_dataset against ours."""

from __future__ import annotations

import json

import numpy as np
import pytest

import expstore
from expstore.errors import CorruptStoreError, InvalidArgumentError
from expstore.interchange import export_minari, import_minari
from tests.helpers import minari_datasets
from tests.helpers.cli import all_rows, assert_error, assert_same_rows, run
from tests.helpers.pools import BACKENDS

minari = pytest.importorskip("minari")
gym = pytest.importorskip("gymnasium")
pytest.importorskip("pyarrow")

STORAGES = ["arrow", "parquet"]
minari_root = minari_datasets.minari_root  # a fixture: the tests take it by this name


def _pool(path: str) -> str:
    rng = np.random.default_rng(0)
    observations = rng.normal(size=(61, 3)).astype(np.float32)
    schema = {"obs": ((3,), "float32"), "action": ((2,), "float32"), "reward": ((), "float64"),
              "next_obs": ((3,), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool"),
              "log_prob": ((2, 2), "float32")}
    with expstore.open(path, "w", capacity=60, schema=schema, attrs={"env_id": "Toy-v0"}) as pool:
        pool.extend({"obs": observations[:-1], "next_obs": observations[1:], "action": rng.normal(size=(60, 2)),
                     "reward": rng.normal(size=60), "terminated": np.arange(60) % 13 == 12,
                     "truncated": np.arange(60) % 20 == 19, "log_prob": rng.normal(size=(60, 2, 2))})
    return path


@pytest.mark.parametrize("storage", STORAGES)
def test_a_data_collector_dataset_imports_row_for_row(tmp_path, backend, minari_root, storage):
    env = minari.DataCollector(gym.make("Pendulum-v1", max_episode_steps=25), data_format=storage)
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(60):
        *_, terminated, truncated, _info = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    dataset = env.create_dataset(f"pendulum/{storage}-v0", algorithm_name="random", author="tests",
                                 author_email="tests@example.org", code_permalink="none", description="tests",
                                 eval_env="Pendulum-v1")
    metadata = json.loads((minari_root / "pendulum" / f"{storage}-v0" / "data" / "metadata.json").read_text())
    assert metadata["data_format"] == storage
    pool = str(tmp_path / f"pool{BACKENDS[backend]}")
    run("import", minari_root / "pendulum" / f"{storage}-v0", pool)
    rows = all_rows(pool)
    steps = 0
    for episode in dataset.iterate_episodes():  # Minari's own reader
        n = len(episode.rewards)
        np.testing.assert_array_equal(rows["obs"][steps:steps + n], episode.observations[:-1])
        np.testing.assert_array_equal(rows["next_obs"][steps:steps + n], episode.observations[1:])
        np.testing.assert_array_equal(rows["action"][steps:steps + n], episode.actions)
        np.testing.assert_array_equal(rows["reward"][steps:steps + n], episode.rewards)
        np.testing.assert_array_equal(rows["truncated"][steps:steps + n], episode.truncations)
        steps += n
    assert steps == len(rows["reward"]) == dataset.total_steps == 60
    with expstore.open(pool) as opened:
        assert opened.attrs["minari"]["dataset_id"] == f"pendulum/{storage}-v0"


@pytest.mark.parametrize("storage", STORAGES)
def test_an_export_is_read_by_minari_and_imports_bit_for_bit(tmp_path, backend, minari_root, storage):
    src = _pool(str(tmp_path / f"src{BACKENDS[backend]}"))
    rows, episodes = export_minari(src, minari_root / "toy" / f"{storage}-v0", dataset_id=f"toy/{storage}-v0",
                                   data_format=storage)
    dataset = minari.load_dataset(f"toy/{storage}-v0")
    assert dataset.total_steps == rows == 60 and dataset.total_episodes == episodes
    pool = all_rows(src)
    steps = 0
    for episode in dataset.iterate_episodes():
        n = len(episode.rewards)
        np.testing.assert_array_equal(episode.observations[:-1], pool["obs"][steps:steps + n])
        np.testing.assert_array_equal(episode.observations[-1], pool["next_obs"][steps + n - 1])
        np.testing.assert_array_equal(episode.actions, pool["action"][steps:steps + n])
        np.testing.assert_array_equal(episode.terminations, pool["terminated"][steps:steps + n])
        steps += n
    assert steps == 60
    back = str(tmp_path / f"back{BACKENDS[backend]}")
    import_minari(f"toy/{storage}-v0", back)
    assert_same_rows(all_rows(back), pool)
    with expstore.open(back) as a, expstore.open(src) as b:
        assert a.schema == b.schema and a.attrs == b.attrs


def test_the_cli_takes_the_storage_and_refuses_others(tmp_path, minari_root):
    src = _pool(str(tmp_path / "src.h5"))
    out = run("export", src, minari_root / "cli-v0", "--format", "minari", "--data-format", "arrow").output
    assert "wrote 60 rows" in out
    assert (minari_root / "cli-v0" / "data" / "0" / "part-0.arrow").exists()
    run("export", src, minari_root / "cli-v0", "--data-format", "parquet", "--overwrite")  # replaces our own export
    assert (minari_root / "cli-v0" / "data" / "0" / "part-0.parquet").exists()
    assert_error(run("export", src, minari_root / "x-v0", "--data-format", "csv", ok=False), "--data-format csv")
    with pytest.raises(InvalidArgumentError):
        export_minari(src, minari_root / "y-v0", data_format="zip")


def test_a_damaged_episode_file_is_named_and_writes_nothing(tmp_path, minari_root):
    src = _pool(str(tmp_path / "src.h5"))
    export_minari(src, minari_root / "bad-v0", data_format="arrow")
    part = minari_root / "bad-v0" / "data" / "2" / "part-0.arrow"
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(CorruptStoreError, match="2"):
        import_minari(minari_root / "bad-v0", tmp_path / "out.zarr")
    assert not list(tmp_path.glob("out.zarr*"))
