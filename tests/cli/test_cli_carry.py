"""convert and merge carry step ids, episodes (vector-env sub-envs), env ids and priorities."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import expstore
from expstore.maintenance import convert as converting
from tests.helpers.cli import run, run_json
from tests.helpers.pools import BACKENDS


def other(backend: str) -> str:
    return "zarr" if backend == "hdf5" else "hdf5"


def record_vector(path: str, seed: int, capacity: int, steps: int, **options) -> str:
    """A 3-env CartPole recording that wraps the ring, with some priorities updated."""
    venv = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
    venv.action_space.seed(seed)
    with expstore.open(path, "w", capacity=capacity, commit_every=64, fsync=False, **options) as pool:
        env = expstore.RecordEpisodes(venv, pool)
        env.reset(seed=seed)
        for _ in range(steps):
            env.step(venv.action_space.sample())
        pool.flush()
        sampled = pool.sample(64, rng=seed)["step_id"]
        pool.update_priorities(sampled, np.linspace(0.1, 7.5, 64))
    venv.close()
    return path


def replay_view(path: str) -> dict:
    """Everything a trainer sees of a pool: step ids, episodes, seeded samples of each kind."""
    with expstore.open(path) as pool:
        return {
            "window": np.array([pool.first_step_id, pool.next_step_id]),
            **{f"episodes.{k}": v for k, v in pool.episodes().items()},
            **{f"n_step.{k}": v for k, v in pool.sample(64, rng=3, n_step=3, gamma=0.9).items()},
            **{f"sequences.{k}": v for k, v in pool.sample_sequences(16, 6, rng=4).items()},
            **{f"full.{k}": v for k, v in pool.sample_sequences(8, 4, rng=5, full_only=True).items()},
            **{f"prioritized.{k}": v for k, v in pool.sample(64, rng=6, prioritized=True).items()},
            "priority": np.asarray(pool.bookkeeping.priority_view[np.arange(*pool._window()) % pool._ring.slots]),
        }


def assert_same_view(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for name, values in left.items():
        assert values.dtype == right[name].dtype, name
        np.testing.assert_array_equal(values, right[name], err_msg=name)


def test_vector_recording_survives_a_round_trip_through_the_other_backend(tmp_path, backend):
    src = record_vector(str(tmp_path / f"src{BACKENDS[backend]}"), seed=1, capacity=300, steps=200)
    middle = str(tmp_path / f"middle{BACKENDS[other(backend)]}")
    back = str(tmp_path / f"back{BACKENDS[backend]}")
    run("convert", src, middle)
    run("convert", middle, back)
    original = replay_view(src)
    first, head = original["window"].tolist()
    assert first > 0 and head - first == 300  # the ring wrapped: step ids do not start at 0
    assert original["episodes.evicted"][0] > 0 and original["episodes.open"].sum() == 3
    assert set(original["episodes.env_id"].tolist()) == {0, 1, 2}
    assert_same_view(replay_view(middle), original)
    assert_same_view(replay_view(back), original)
    facts = run_json("info", back)
    assert (facts["first_step_id"], facts["next_step_id"]) == (first, head)
    with expstore.open(src) as source, expstore.open(back) as copy:
        steps = np.array([first, first + 151, head - 1])
        np.testing.assert_array_equal(copy.read(steps)["obs"], source.read(steps)["obs"])
        assert copy._committed.payload == source._committed.payload  # episodes and max priority


def test_a_converted_recording_keeps_recording(tmp_path, backend):
    src = record_vector(str(tmp_path / f"src{BACKENDS[backend]}"), seed=2, capacity=500, steps=60)
    dst = str(tmp_path / f"dst{BACKENDS[other(backend)]}")
    run("convert", src, dst)
    with expstore.open(dst, "a") as pool:  # the episodes open in the source end there, cut off
        pool.extend({name: values[:2] for name, values in pool[:2].items() if name != "step_id"}, env_ids=[0, 1])
        head = pool.next_step_id - 2
        table = pool.episodes()
        assert head == run_json("info", src)["next_step_id"] and table["cut_off"].sum() == 3
        assert table["first_step_id"][table["open"]].tolist() == [head, head + 1]
    again = str(tmp_path / f"again{BACKENDS[backend]}")
    run("convert", dst, again)  # episodes cut off by a reopen stay cut off, not joined to the next
    assert_same_view(replay_view(again), replay_view(dst))


def test_shrinking_keeps_the_newest_rows_under_their_step_ids(tmp_path, backend):
    src = record_vector(str(tmp_path / f"src{BACKENDS[backend]}"), seed=3, capacity=600, steps=150)
    dst = str(tmp_path / "small.h5")
    run("convert", src, dst, "--capacity", 100)
    with expstore.open(src) as source, expstore.open(dst) as copy:
        head = source.next_step_id
        assert (copy.first_step_id, copy.next_step_id) == (head - 100, head)
        kept = source.episodes()
        kept = {name: values[kept["last_step_id"] >= head - 100] for name, values in kept.items()}
        table = copy.episodes()
        for name in ("episode_id", "first_step_id", "length", "return", "env_id", "last_step_id", "open"):
            np.testing.assert_array_equal(table[name], kept[name], err_msg=name)
        assert table["evicted"][0] > 0  # the dropped rows read as evicted by the ring
        np.testing.assert_array_equal(copy.read([head - 100, head - 1])["obs"],
                                      source.read([head - 100, head - 1])["obs"])


def test_pools_without_next_obs_and_with_a_small_episode_table(tmp_path, backend):
    src = record_vector(str(tmp_path / f"src{BACKENDS[backend]}"), seed=4, capacity=200, steps=120,
                        derive_next_obs=True, max_episodes=16)
    dst = str(tmp_path / f"dst{BACKENDS[other(backend)]}")
    converting.convert(src, dst)
    with expstore.open(dst) as copy:
        assert "next_obs" not in copy.schema and len(copy.bookkeeping.book.table) == 16
    assert_same_view(replay_view(dst), replay_view(src))


def test_merge_renumbers_and_keeps_each_sources_episodes(tmp_path, backend):
    a = record_vector(str(tmp_path / f"a{BACKENDS[backend]}"), seed=5, capacity=150, steps=80)
    b = record_vector(str(tmp_path / f"b{BACKENDS[other(backend)]}"), seed=6, capacity=120, steps=70)
    out = str(tmp_path / f"all{BACKENDS[backend]}")
    run("merge", a, b, "-o", out)
    with expstore.open(a) as first, expstore.open(b) as second, expstore.open(out) as merged:
        assert (merged.first_step_id, merged.next_step_id) == (first.first_step_id, first.next_step_id + len(second))
        table, table_a, table_b = merged.episodes(), first.episodes(), second.episodes()
        from_a = table["first_step_id"] < first.next_step_id
        np.testing.assert_array_equal(table["episode_id"][from_a], table_a["episode_id"])
        np.testing.assert_array_equal(table["cut_off"][from_a], table_a["open"])  # open at the end of a
        assert table["open"].sum() == 3 and table["open"][~from_a].sum() == 3
        shift = first.next_step_id - second.first_step_id
        rebased = 0
        for episode_id, start in zip(table_b["episode_id"], table_b["first_step_id"], strict=True):
            rows = second.episode(int(episode_id))
            first_row = int(rows["step_id"][0]) + shift
            merged_id = int(merged.bookkeeping.book.episode_id[first_row % merged._ring.slots])
            copied = merged.episode(merged_id)  # the same sub-env episode, under new step ids
            np.testing.assert_array_equal(copied["step_id"], rows["step_id"] + shift)
            np.testing.assert_array_equal(copied["obs"], rows["obs"])
            if start < second.first_step_id:  # began before b's oldest row: starts there once merged
                entry = table["episode_id"] == merged_id
                assert (table["first_step_id"][entry], table["evicted"][entry]) == ([first_row], [0])
                rebased += 1
        assert rebased >= 1
        priorities = merged.bookkeeping.priority_view[np.arange(*merged._window()) % merged._ring.slots]
        assert priorities.max() == 7.5 and (priorities == 7.5).sum() >= 2
        assert merged._committed.payload["priorities"]["max"] == 7.5
    assert run("verify", out).exit_code == 0


def test_archives_keep_step_ids(tmp_path, backend):
    src = record_vector(str(tmp_path / f"src{BACKENDS[backend]}"), seed=7, capacity=100, steps=50)
    archive = str(tmp_path / f"archive{BACKENDS[backend]}")
    back = str(tmp_path / f"back{BACKENDS[other(backend)]}")
    run("convert", src, archive, "--compress")
    window = run_json("info", src)["first_step_id"], run_json("info", src)["next_step_id"]
    assert window[0] > 0 and run_json("info", archive)["first_step_id"] == window[0]
    run("convert", archive, back)
    with expstore.open(back) as pool:
        assert (pool.first_step_id, pool.next_step_id) == window


def test_first_step_id_is_checked(tmp_path):
    with pytest.raises(expstore.InvalidArgumentError, match="first_step_id"):
        expstore.open(str(tmp_path / "p.h5"), "w", capacity=10, schema={"x": ((), "float32")}, first_step_id=-1)
    with expstore.open(str(tmp_path / "p.h5"), "w", capacity=10, schema={"x": ((), "float32")},
                       first_step_id=7) as pool:
        pool.extend({"x": np.arange(12, dtype=np.float32)})
        assert (pool.first_step_id, pool.next_step_id) == (9, 19) and pool.read([18])["x"][0] == 11
