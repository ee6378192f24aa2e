"""DiskReplayBuffer(frame_stack=4) under VecFrameStack: one frame per row, and DQN samples the
same batches, bit for bit, and learns the same weights as with SB3's own buffer (real ALE frames)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ale_py", reason='needs ale-py: pip install -e ".[atari]"')
pytest.importorskip("stable_baselines3", reason='needs Stable-Baselines3: pip install -e ".[sb3]"')

import torch
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.vec_env import VecFrameStack

import expstore
from expstore.sb3 import DiskReplayBuffer


def run_dqn(steps: int, n_envs: int, buffer_class=None, buffer_kwargs=None):
    """DQN on Breakout with SB3's Atari preprocessing; every batch the buffer hands out, and the weights."""
    env = VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=n_envs, seed=0), n_stack=4)
    # A small MLP over the frames keeps the test fast; the batches are the buffer's either way.
    model = DQN("MlpPolicy", env, buffer_size=700, learning_starts=300, batch_size=32, train_freq=4,
                target_update_interval=250, seed=0, device="cpu", replay_buffer_class=buffer_class,
                replay_buffer_kwargs=buffer_kwargs, policy_kwargs={"net_arch": [16]})
    batches = []
    sample = model.replay_buffer.sample

    def recording_sample(batch_size, env=None):
        batch = sample(batch_size, env)
        batches.append(batch)
        return batch

    model.replay_buffer.sample = recording_sample
    model.learn(steps)
    weights = [p.detach().clone() for p in model.policy.parameters()]
    buffer = model.replay_buffer
    env.close()
    return batches, weights, buffer


@pytest.mark.parametrize("n_envs", [1, 2])
def test_dqn_samples_and_learns_exactly_as_with_sb3s_buffer(tmp_path, n_envs):
    steps = 1200  # the 700-step ring wraps; lives end episodes every ~40 steps
    expected, expected_weights, _ = run_dqn(steps, n_envs)
    got, got_weights, buffer = run_dqn(steps, n_envs, DiskReplayBuffer,
                                       {"path": str(tmp_path / "pool.h5"), "frame_stack": 4})
    assert buffer.pool.schema["obs"].shape == (84, 84)  # the newest frame only: (4, 84, 84) stacks rebuilt
    assert len(got) == len(expected) > 100
    for mine, theirs in zip(got, expected, strict=True):
        for name in ("observations", "actions", "next_observations", "dones", "rewards"):
            assert torch.equal(getattr(mine, name), getattr(theirs, name)), name
    assert sum(bool(batch.dones.any()) for batch in expected) > 20  # final observations were sampled
    assert all(torch.equal(a, b) for a, b in zip(got_weights, expected_weights, strict=True))
    buffer.close()


def test_frame_layouts_and_bad_arguments(tmp_path):
    channels_last = spaces.Box(0, 255, (84, 84, 4), np.uint8)
    action = spaces.Discrete(4)
    buffer = DiskReplayBuffer(50, channels_last, action, path=str(tmp_path / "last.h5"), frame_stack=4)
    assert buffer.pool.schema["obs"].shape == (84, 84, 1)
    stacks = np.zeros((1, 84, 84, 4), np.uint8)
    for step in range(6):  # frames numbered by step; VecFrameStack's roll, zero padding at the start
        next_stacks = np.concatenate([stacks[..., 1:], np.full((1, 84, 84, 1), step + 1, np.uint8)], axis=-1)
        buffer.add(stacks, next_stacks, np.array([0]), np.array([0.0]), np.array([False]), [{}])
        stacks = next_stacks
    rows = buffer.pool.read([0, 1, 5], **{"frame_stack": 4, "stack_axis": -1, "stack_padding": "zero"})
    assert rows["obs"][:, 0, 0].tolist() == [[0, 0, 0, 0], [0, 0, 0, 1], [2, 3, 4, 5]]
    batch = buffer.sample(16)  # the newest step's next frame comes from add(), not the pool
    assert np.array_equal(batch.next_observations.numpy()[..., :-1], batch.observations.numpy()[..., 1:])
    buffer.close()
    with pytest.raises(expstore.InvalidArgumentError, match="optimize_memory_usage=False"):
        DiskReplayBuffer(50, channels_last, action, path=str(tmp_path / "a.h5"), frame_stack=4,
                         optimize_memory_usage=True, handle_timeout_termination=False)
    with pytest.raises(expstore.InvalidArgumentError, match="does not split into 3"):
        DiskReplayBuffer(50, channels_last, action, path=str(tmp_path / "b.h5"), frame_stack=3)
    rgb_first = spaces.Box(0, 255, (12, 84, 84), np.uint8)
    with pytest.raises(expstore.InvalidArgumentError, match="grayscale frames only"):
        DiskReplayBuffer(50, rgb_first, action, path=str(tmp_path / "c.h5"), frame_stack=4)
    with pytest.raises(expstore.InvalidArgumentError, match="n_stack"):
        DiskReplayBuffer(50, channels_last, action, path=str(tmp_path / "d.h5"), frame_stack=0)


@pytest.mark.parametrize("n_envs", [1, 2])
def test_an_episode_running_at_close_keeps_its_next_frame_across_a_restart(tmp_path, n_envs):
    """A training run stops mid-episode and a new one reopens the pool: the last rows of the cut
    episodes still sample the next frame add() was given (close() keeps it as the final frame)."""
    space, action = spaces.Box(0, 255, (4, 8, 8), np.uint8), spaces.Discrete(2)
    path = str(tmp_path / "pool.h5")

    def run(buffer, first_frame, steps):
        stacks = np.zeros((n_envs, 4, 8, 8), np.uint8)
        for step in range(steps):  # frame values: first_frame + step (+ 100 for env 1)
            frames = (first_frame + step + 1 + 100 * np.arange(n_envs)).astype(np.uint8)[:, None, None, None]
            next_stacks = np.concatenate([stacks[:, 1:], np.broadcast_to(frames, (n_envs, 1, 8, 8))], axis=1)
            buffer.add(stacks, next_stacks, np.zeros(n_envs), np.zeros(n_envs), np.zeros(n_envs, bool),
                       [{} for _ in range(n_envs)])
            stacks = next_stacks

    first = DiskReplayBuffer(100, space, action, n_envs=n_envs, path=path, frame_stack=4)
    run(first, 0, 6)
    first.close()
    second = DiskReplayBuffer(100, space, action, n_envs=n_envs, path=path, frame_stack=4, mode="a")
    run(second, 50, 3)  # the env was reset: a new episode
    positions = np.full(8, 5)  # the last env step of the first run
    batch = second._get_samples(positions)
    envs = (batch.observations.numpy()[:, -1, 0, 0] // 100).astype(int)  # which env each row came from
    newest = batch.next_observations.numpy()[:, -1, 0, 0]
    assert newest.tolist() == (6 + 100 * envs).tolist()  # the frame after the cut step, not a repeat
    assert np.array_equal(batch.next_observations.numpy()[:, :-1], batch.observations.numpy()[:, 1:])
    assert batch.dones.sum() == 0  # the cut episodes still bootstrap
    episodes = second.pool.episodes()
    assert episodes["truncated"].sum() == n_envs and not episodes["cut_off"].any()
    second.close()


def test_an_episode_cut_off_without_close_samples_its_own_newest_frame_as_next(tmp_path, caplog):
    """Documented limit: a writer that stopped without close() (a crash) never gave the pool the
    frame after its last step; those rows sample their own newest frame as the next one."""
    space, action = spaces.Box(0, 255, (4, 8, 8), np.uint8), spaces.Discrete(2)
    path = str(tmp_path / "pool.h5")
    first = DiskReplayBuffer(100, space, action, path=path, frame_stack=4)
    stacks = np.zeros((1, 4, 8, 8), np.uint8)
    for step in range(6):
        next_stacks = np.concatenate([stacks[:, 1:], np.full((1, 1, 8, 8), step + 1, np.uint8)], axis=1)
        first.add(stacks, next_stacks, np.zeros(1), np.zeros(1), np.zeros(1, bool), [{}])
        stacks = next_stacks
    first.pool.close()  # the rows are committed; the buffer itself never closes
    second = DiskReplayBuffer(100, space, action, path=path, frame_stack=4, mode="a")
    batch = second._get_samples(np.array([5]))
    assert batch.observations.numpy()[0, :, 0, 0].tolist() == [2, 3, 4, 5]
    assert batch.next_observations.numpy()[0, :, 0, 0].tolist() == [3, 4, 5, 5]
    assert "cut off by a restart" in caplog.text
    assert second.pool.episodes()["cut_off"].all()
    second.close()
