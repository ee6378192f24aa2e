"""Minari episodes that end without a terminated or truncated flag: each dataset episode (its own
group or directory) comes back as one pool episode, as ``Store.end_episodes`` ends one."""

from __future__ import annotations

import numpy as np
import pytest

import expstore
from expstore.interchange import export_minari, import_minari
from tests.helpers import minari_datasets
from tests.helpers.cli import all_rows, assert_same_rows, run
from tests.helpers.pools import BACKENDS
from tests.interchange.test_vector_env_exports import LENGTHS as VECTOR_LENGTHS
from tests.interchange.test_vector_env_exports import _vector_pool

STORAGES = ["hdf5", "arrow", "parquet"]
SCHEMA = {"obs": ((3,), "float32"), "action": ((2,), "float32"), "reward": ((), "float64"),
          "next_obs": ((3,), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}
# How each of the nine episodes ends: a flag, end_episodes without one, or still open (the last).
ENDINGS = ["terminated", "unflagged", "truncated", "unflagged", "unflagged", "terminated", "truncated",
           "unflagged", "open"]
LENGTHS = [4, 7, 3, 5, 6, 2, 8, 5, 4]
minari_root = minari_datasets.minari_root  # a fixture: the tests take it by this name


def _pool(path: str, *, continuous: bool) -> str:
    """Nine episodes on env 0. ``continuous``: each episode's first obs is the last one's final
    next_obs, so only the pool's bookkeeping says where an unflagged one ended."""
    rng = np.random.default_rng(1)
    with expstore.open(path, "w", capacity=100, schema=SCHEMA) as pool:
        observations = rng.normal(size=(1, 3)).astype(np.float32)
        for length, ending in zip(LENGTHS, ENDINGS, strict=True):
            start = observations[-1:] if continuous else rng.normal(size=(1, 3)).astype(np.float32)
            observations = np.concatenate([start, rng.normal(size=(length, 3)).astype(np.float32)])
            flags = {name: np.arange(length) == length - 1 if ending == name else np.zeros(length, bool)
                     for name in ("terminated", "truncated")}
            pool.extend({"obs": observations[:-1], "next_obs": observations[1:], **flags,
                         "action": rng.normal(size=(length, 2)), "reward": rng.normal(size=length)})
            if ending == "unflagged":
                pool.end_episodes([0])
    return path


def _episodes(path: str) -> dict[str, np.ndarray]:
    with expstore.open(path) as pool:
        table = pool.episodes()
        return {name: np.asarray(table[name]) for name in ("length", "terminated", "truncated", "open")}


@pytest.mark.parametrize("continuous", [False, True], ids=["jump", "continuous"])
@pytest.mark.parametrize("storage", STORAGES)
def test_each_exported_episode_comes_back_as_one(tmp_path, backend, storage, continuous):
    src = _pool(str(tmp_path / f"src{BACKENDS[backend]}"), continuous=continuous)
    assert export_minari(src, tmp_path / "toy-v0", data_format=storage) == (sum(LENGTHS), len(LENGTHS))
    back = str(tmp_path / f"back{BACKENDS[backend]}")
    run("import", tmp_path / "toy-v0", back)
    assert_same_rows(all_rows(back), all_rows(src))
    want, got = _episodes(src), _episodes(back)
    np.testing.assert_array_equal(got["length"], LENGTHS)
    np.testing.assert_array_equal(got["terminated"], want["terminated"])
    # Minari cannot say an episode was still open: it comes back ended, as end_episodes ends one.
    assert want["open"][-1] and not got["open"].any()
    np.testing.assert_array_equal(got["truncated"], want["truncated"] | want["open"])
    with expstore.open(back) as pool:  # the rows keep their flags: end_episodes sets none
        assert int(pool[:]["terminated"].sum()) == ENDINGS.count("terminated")
        assert int(pool[:]["truncated"].sum()) == ENDINGS.count("truncated")


@pytest.mark.filterwarnings("ignore:.*(eval_env|env_spec).*:UserWarning")  # buffers of no environment
@pytest.mark.parametrize("storage", STORAGES)
def test_minari_episodes_without_flags_stay_apart(tmp_path, backend, minari_root, storage):
    minari = pytest.importorskip("minari")
    gym = pytest.importorskip("gymnasium")
    from minari.data_collector import EpisodeBuffer

    rng = np.random.default_rng(2)
    lengths, flagged = [5, 3, 6, 4], [False, True, False, False]
    buffers = []
    for k, (length, flag) in enumerate(zip(lengths, flagged, strict=True)):
        ends = np.arange(length) == length - 1
        buffers.append(EpisodeBuffer(id=k, observations=rng.normal(size=(length + 1, 3)).astype(np.float32),
                                     actions=rng.normal(size=(length, 2)).astype(np.float32),
                                     rewards=rng.normal(size=length), terminations=ends & flag,
                                     truncations=np.zeros(length, bool)))
    box = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    dataset = minari.create_dataset_from_buffers(f"toy/{storage}-v0", buffers, observation_space=box,
                                                 action_space=gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
                                                 algorithm_name="random", description="tests", author="tests",
                                                 author_email="tests@example.org", code_permalink="none",
                                                 data_format=storage)
    assert not any(episode.truncations[-1] for episode in dataset.iterate_episodes())
    back = str(tmp_path / f"back{BACKENDS[backend]}")
    assert import_minari(f"toy/{storage}-v0", back) == sum(lengths)
    got = _episodes(back)
    np.testing.assert_array_equal(got["length"], lengths)
    np.testing.assert_array_equal(got["terminated"], flagged)
    np.testing.assert_array_equal(got["truncated"], np.logical_not(flagged))  # ended as end_episodes ends one
    rows = all_rows(back)
    np.testing.assert_array_equal(rows["terminated"], np.concatenate([b.terminations for b in buffers]))
    assert not rows["truncated"].any()
    np.testing.assert_array_equal(rows["obs"], np.concatenate([b.observations[:-1] for b in buffers]))
    np.testing.assert_array_equal(rows["next_obs"], np.concatenate([b.observations[1:] for b in buffers]))


@pytest.mark.parametrize("storage", STORAGES)
def test_the_open_episodes_of_a_vector_env_pool_stay_apart(tmp_path, backend, storage):
    """Each env's last episode is open at the export, so written without a flag; every one is
    followed by another env's episode but the last one written."""
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"))
    export_minari(src, tmp_path / "vec-v0", data_format=storage)
    back = str(tmp_path / f"back{BACKENDS[backend]}")
    import_minari(tmp_path / "vec-v0", back)
    want, got = _episodes(src), _episodes(back)
    assert len(got["length"]) == sum(len(lengths) for lengths in VECTOR_LENGTHS.values()) == 9
    np.testing.assert_array_equal(np.sort(got["length"]), np.sort(want["length"]))
    assert int(got["terminated"].sum()) == int(want["terminated"].sum())
    assert int(got["truncated"].sum()) == int((want["truncated"] | want["open"]).sum())
