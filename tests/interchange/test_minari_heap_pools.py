"""Minari and D4RL exports of pools with heap fields: ragged fields refused, derived next_obs exported."""

from __future__ import annotations

import os

import numpy as np
import pytest

import expstore
from expstore.interchange import export_d4rl, export_minari, import_minari
from tests.helpers import minari_datasets
from tests.helpers.cli import assert_error, run

STORAGES = ["hdf5", "arrow", "parquet"]
FRAMES = np.random.default_rng(0).integers(0, 255, (40, 8, 8), np.uint8)
# (first frame, rows, terminated, truncated): a terminated, a truncated and an open episode.
EPISODES = [(0, 10, True, False), (11, 12, False, True), (24, 5, False, False)]
minari_root = minari_datasets.minari_root  # a fixture: the tests take it by this name


def _ragged_pool(path: str) -> str:
    schema = {"obs": ((3,), "float32"), "action": ((), "int64"), "reward": ((), "float32"),
              "next_obs": ((3,), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool"),
              "tokens": expstore.Field((None,), "int32", codec="lz4"), "points": expstore.Field((None, 2), "float32")}
    with expstore.open(path, "w", capacity=32, schema=schema, heap_bytes=1 << 16) as pool:
        pool.extend({"obs": np.zeros((6, 3), np.float32), "next_obs": np.ones((6, 3), np.float32),
                     "action": np.arange(6), "reward": np.zeros(6, np.float32), "terminated": np.arange(6) == 5,
                     "truncated": np.zeros(6, bool), "tokens": [np.arange(i, dtype=np.int32) for i in range(6)],
                     "points": [np.zeros((i % 3, 2), np.float32) for i in range(6)]})
    return path


def _derived_pool(path: str) -> str:
    schema = {"obs": expstore.Field((8, 8), "uint8", codec="zstd"), "action": ((), "int64"),
              "reward": ((), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}
    with expstore.open(path, "w", capacity=64, schema=schema, derive_next_obs=True) as pool:
        for first, n, terminated, truncated in EPISODES:
            last = np.arange(n) == n - 1
            pool.extend({"obs": FRAMES[first:first + n], "next_obs": FRAMES[first + 1:first + n + 1],
                         "action": np.arange(n), "reward": np.full(n, first, np.float32),
                         "terminated": last & terminated, "truncated": last & truncated})
    return path


def _exported_steps() -> list[tuple[np.ndarray, np.ndarray]]:
    """(observations, next observations) of each episode the export holds: the open episode's
    newest row has no known next observation, so it is left out."""
    out = []
    for first, n, terminated, truncated in EPISODES:
        n = n if terminated or truncated else n - 1
        out.append((FRAMES[first:first + n], FRAMES[first + 1:first + n + 1]))
    return out


@pytest.mark.parametrize("storage", STORAGES)
def test_ragged_fields_are_one_error_before_anything_is_written(tmp_path, pool_path, minari_root, storage):
    src = _ragged_pool(pool_path)
    dst = minari_root / f"ragged-{storage}-v0"
    result = run("export", src, dst, "--format", "minari", "--data-format", storage, ok=False)
    assert_error(result, "ragged fields ['tokens', 'points']", "Minari", "Parquet")
    with pytest.raises(expstore.SchemaError, match="ragged fields"):
        export_minari(src, dst, data_format=storage)
    assert not dst.exists() and not [name for name in os.listdir(tmp_path) if "ragged" in name]


def test_ragged_fields_are_refused_by_the_d4rl_export(tmp_path, pool_path):
    src = _ragged_pool(pool_path)
    dst = tmp_path / "out.hdf5"
    assert_error(run("export", src, dst, "--format", "d4rl", ok=False), "ragged fields ['tokens', 'points']",
                 "D4RL", "Parquet")
    with pytest.raises(expstore.SchemaError, match="ragged fields"):
        export_d4rl(src, dst)
    assert not [name for name in os.listdir(tmp_path) if name.startswith("out")]


@pytest.mark.parametrize("storage", STORAGES)
def test_a_pool_deriving_next_obs_exports_its_next_observations(tmp_path, pool_path, minari_root, storage):
    src = _derived_pool(pool_path)
    out = run("export", src, minari_root / f"derived-{storage}-v0", "--format", "minari",
              "--data-format", storage).output
    assert "wrote 26 rows in 3 episodes" in out
    back = str(tmp_path / ("back" + os.path.splitext(pool_path)[1]))
    import_minari(f"derived-{storage}-v0", back)
    expected = _exported_steps()
    with expstore.open(back) as pool:
        assert pool.schema["obs"] == pool.schema["next_obs"] == expstore.Field((8, 8), "uint8", codec="zstd")
        assert pool.episodes()["length"].tolist() == [len(obs) for obs, _ in expected]
        rows = pool[:]
    np.testing.assert_array_equal(rows["obs"], np.concatenate([obs for obs, _ in expected]))
    np.testing.assert_array_equal(rows["next_obs"], np.concatenate([following for _, following in expected]))
    assert rows["terminated"].sum() == 1 and rows["truncated"].sum() == 1
    minari = pytest.importorskip("minari")
    pytest.importorskip("pyarrow")
    dataset = minari.load_dataset(f"derived-{storage}-v0")  # Minari's own reader
    for episode, (obs, following) in zip(dataset.iterate_episodes(), expected, strict=True):
        np.testing.assert_array_equal(episode.observations[:-1], obs)
        np.testing.assert_array_equal(episode.observations[-1], following[-1])


def test_a_pool_without_next_obs_says_what_to_export(tmp_path, pool_path, minari_root):
    schema = {"obs": ((3,), "float32"), "action": ((), "int64"), "reward": ((), "float32"),
              "terminated": ((), "bool"), "truncated": ((), "bool")}
    with expstore.open(pool_path, "w", capacity=8, schema=schema) as pool:
        pool.append({"obs": np.zeros(3, np.float32), "action": 0, "reward": 0.0, "terminated": True,
                     "truncated": False})
    assert_error(run("export", pool_path, minari_root / "plain-v0", "--format", "minari", ok=False),
                 "neither stores nor derives next_obs", "derive_next_obs=True")
