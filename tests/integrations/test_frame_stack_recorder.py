"""RecordEpisodes around FrameStackObservation stores one frame per row, and sampling with the
same k and padding returns what the env returned, bit for bit (real ALE frames)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ale_py", reason='needs ale-py: pip install -e ".[atari]"')

import gymnasium as gym
from gymnasium.wrappers import FrameStackObservation

import expstore
from expstore.integrations.recorder import RecordEpisodes
from tools.atari_frames import make_env

SUFFIX = {"hdf5": ".h5", "zarr": ".zarr"}


def stacked_breakout(seed: int, padding: str = "reset", k: int = 4):
    # Lives end episodes (terminations every ~30 steps) and a time limit truncates others.
    env = make_env("Breakout", seed=seed, max_episode_steps=40, terminal_on_life_loss=True)
    return FrameStackObservation(env, k, padding_type=padding)


def check_against(pool, options, expected_obs, expected_next):
    steps = np.arange(len(expected_obs))
    rows = pool.read(steps, **options)
    assert np.array_equal(rows["obs"], np.stack(expected_obs))
    assert np.array_equal(rows["next_obs"], np.stack(expected_next))
    batch = pool.sample(64, rng=0, **options)
    for i, step in enumerate(batch["step_id"]):
        assert np.array_equal(batch["obs"][i], expected_obs[step])
        assert np.array_equal(batch["next_obs"][i], expected_next[step])


@pytest.mark.parametrize("padding", ["reset", "zero"])
@pytest.mark.parametrize("derived", [False, True])
def test_stacked_env_round_trips_bit_for_bit(tmp_path, backend, padding, derived):
    path = str(tmp_path / ("pool" + SUFFIX[backend]))
    pool = expstore.open(path, "w", capacity=1000, derive_next_obs=derived)
    recorder = RecordEpisodes(stacked_breakout(1, padding), pool)
    assert recorder.sample_options == {"frame_stack": 4, "stack_axis": 0, "stack_padding": padding}
    rng = np.random.default_rng(0)
    expected_obs, expected_next, ends = [], [], []
    obs, _ = recorder.reset(seed=1)
    for _ in range(200):
        next_obs, _, terminated, truncated, _ = recorder.step(int(rng.integers(4)))
        expected_obs.append(obs)
        expected_next.append(next_obs)
        ends.append((terminated, truncated))
        obs = next_obs
        if terminated or truncated:
            obs, _ = recorder.reset()
    recorder.reset()  # ends the running episode, keeping its final observation
    pool.flush()
    assert pool.schema["obs"].shape == (84, 84) and pool.schema["obs"].is_image
    assert any(t for t, _ in ends) and any(t for _, t in ends)  # final obs of both kinds are checked
    check_against(pool, recorder.sample_options, expected_obs, expected_next)
    pool.close()


@pytest.mark.parametrize("mode", ["NextStep", "SameStep"])
def test_vector_env_autoreset_round_trips_bit_for_bit(tmp_path, mode):
    path = str(tmp_path / "pool.h5")
    vector = gym.vector.SyncVectorEnv([lambda i=i: stacked_breakout(10 + i) for i in range(3)],
                                      autoreset_mode=gym.vector.AutoresetMode(mode))
    pool = expstore.open(path, "w", capacity=2000, derive_next_obs=True)
    recorder = RecordEpisodes(vector, pool)
    assert recorder.sample_options["frame_stack"] == 4
    rng = np.random.default_rng(1)
    expected_obs, expected_next = [], []
    obs, _ = recorder.reset(seed=10)
    resetting = np.zeros(3, bool)
    for _ in range(70):
        next_obs, _, terminated, truncated, info = recorder.step(rng.integers(4, size=3))
        for i in np.flatnonzero(~resetting):  # rows in the order the recorder appends them
            expected_obs.append(obs[i])
            final = info["final_obs"][i] if mode == "SameStep" and info.get("_final_obs", np.zeros(3))[i] else None
            expected_next.append(next_obs[i] if final is None else final)
        done = terminated | truncated
        resetting = done if mode == "NextStep" else np.zeros(3, bool)
        obs = next_obs
    pool.flush()
    episodes = pool.episodes()
    assert set(episodes["env_id"].tolist()) == {0, 1, 2} and len(episodes) > 6
    known = [s for s in range(len(expected_obs)) if s < pool.next_step_id]
    last_rows = set(int(s) for s in episodes["last_step_id"][episodes["open"]])
    steps = [s for s in known if s not in last_rows]  # a running episode's newest next obs is not known yet
    rows = pool.read(steps, **recorder.sample_options)
    assert np.array_equal(rows["obs"], np.stack([expected_obs[s] for s in steps]))
    assert np.array_equal(rows["next_obs"], np.stack([expected_next[s] for s in steps]))
    pool.close()


def test_declared_and_refused_stacks(tmp_path):
    frames_only = expstore.open(str(tmp_path / "declared.h5"), "w", capacity=100)
    recorder = RecordEpisodes(stacked_breakout(2, "zero"), frames_only, frame_stack=4)
    assert recorder.sample_options["stack_padding"] == "zero"
    with pytest.raises(expstore.InvalidArgumentError, match="stacks 4 frames"):
        RecordEpisodes(stacked_breakout(2), frames_only, frame_stack=3)
    with pytest.raises(expstore.InvalidArgumentError, match="pads with 'reset'"):
        RecordEpisodes(stacked_breakout(2), frames_only, stack_padding="zero")
    custom = FrameStackObservation(make_env("Breakout"), 4, padding_type=np.full((84, 84), 7, np.uint8))
    with pytest.raises(expstore.InvalidArgumentError, match="custom value"):
        RecordEpisodes(custom, frames_only)
    frames_only.close()

    stacks = expstore.open(str(tmp_path / "stacks.h5"), "w", capacity=100,
                           schema={"obs": ((4, 84, 84), "uint8"), "action": ((), "int64"), "reward": ((), "float32"),
                                   "next_obs": ((4, 84, 84), "uint8"), "terminated": ((), "bool"),
                                   "truncated": ((), "bool")})
    with pytest.raises(expstore.SchemaError, match="stores whole frame stacks"):
        RecordEpisodes(stacked_breakout(3), stacks)
    as_they_are = RecordEpisodes(stacked_breakout(3), stacks, frame_stack=False)
    as_they_are.reset(seed=3)
    as_they_are.step(0)
    assert as_they_are.sample_options == {} and stacks.read([0])["obs"].shape == (1, 4, 84, 84)
    stacks.close()


def test_async_vector_env_is_detected(tmp_path):
    vector = gym.vector.AsyncVectorEnv([lambda i=i: stacked_breakout(20 + i, "zero", k=3) for i in range(2)])
    with expstore.open(str(tmp_path / "pool.h5"), "w", capacity=100) as pool:
        recorder = RecordEpisodes(vector, pool)
        assert recorder.sample_options == {"frame_stack": 3, "stack_axis": 0, "stack_padding": "zero"}
        obs, _ = recorder.reset(seed=20)
        next_obs, *_ = recorder.step(np.array([1, 2]))
        pool.flush()
        rows = pool.read([0, 1], **recorder.sample_options)
        assert np.array_equal(rows["obs"], obs) and np.array_equal(rows["next_obs"], next_obs)
        recorder.close()
