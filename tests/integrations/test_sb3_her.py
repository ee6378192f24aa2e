"""expstore.sb3.DiskHerReplayBuffer samples the batches SB3's HerReplayBuffer samples with the
same seeds: on SB3's bit-flipping goal env, buffer against buffer over a wrapping ring (one and
two envs, every goal strategy, after reopening the pool) and DQN trained with each."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
from stable_baselines3 import DQN, HerReplayBuffer
from stable_baselines3.common.envs import BitFlippingEnv
from stable_baselines3.common.vec_env import DummyVecEnv

import expstore
from expstore.errors import InvalidArgumentError
from expstore.sb3 import DiskHerReplayBuffer

N_BITS = 5


def vec_env(n_envs: int) -> DummyVecEnv:
    return DummyVecEnv([lambda: BitFlippingEnv(n_bits=N_BITS, continuous=False, max_steps=N_BITS)] * n_envs)


def fill(buffers, env: DummyVecEnv, steps: int, seed: int) -> None:
    """The same random-action rollouts into every buffer."""
    rng = np.random.default_rng(seed)
    env.seed(seed)
    obs = env.reset()
    for _ in range(steps):
        actions = rng.integers(0, N_BITS, size=env.num_envs)
        next_obs, rewards, dones, infos = env.step(actions)
        stored_next = {key: value.copy() for key, value in next_obs.items()}
        for i, done in enumerate(dones):
            if done:  # the VecEnv already reset: the transition's next obs is the terminal one
                for key in stored_next:
                    stored_next[key][i] = infos[i]["terminal_observation"][key]
        for buffer in buffers:
            buffer.add(obs, stored_next, actions.reshape(-1, 1), rewards, dones, infos)
        obs = next_obs


def assert_same_batches(ours, theirs, seeds=range(5), batch_size=64) -> None:
    for seed in seeds:
        np.random.seed(seed)
        expected = theirs.sample(batch_size)
        np.random.seed(seed)
        got = ours.sample(batch_size)
        for key in expected.observations:
            torch.testing.assert_close(got.observations[key], expected.observations[key], rtol=0, atol=0)
            torch.testing.assert_close(got.next_observations[key], expected.next_observations[key], rtol=0, atol=0)
        for name in ("actions", "dones", "rewards"):
            torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=0, atol=0,
                                       check_dtype=False, msg=name)


@pytest.mark.parametrize("strategy, n_envs", [("future", 1), ("future", 2), ("final", 2), ("episode", 1)])
def test_the_same_seeds_sample_the_same_batches_as_sb3(tmp_path, backend, strategy, n_envs):
    env = vec_env(n_envs)
    kwargs = {"buffer_size": 60 * n_envs, "observation_space": env.observation_space,
              "action_space": env.action_space, "env": env, "n_envs": n_envs, "n_sampled_goal": 4,
              "goal_selection_strategy": strategy, "device": "cpu"}
    theirs = HerReplayBuffer(**kwargs)
    path = str(tmp_path / ("pool" + (".h5" if backend == "hdf5" else ".zarr")))
    ours = DiskHerReplayBuffer(**kwargs, path=path, commit_every=7)
    fill([ours, theirs], env, 47, seed=1)  # some episodes complete, none overwritten yet
    assert_same_batches(ours, theirs)
    fill([ours, theirs], env, 150, seed=2)  # the ring wraps: overwritten episodes drop out
    np.testing.assert_array_equal(ours.ep_length, theirs.ep_length)
    assert_same_batches(ours, theirs)
    ours.close()
    reopened = DiskHerReplayBuffer(**kwargs, path=path, mode="a")  # the index rebuilt from the pool's episodes
    open_envs = np.flatnonzero(theirs._current_ep_start != theirs.pos)
    for env_idx in open_envs:  # the episodes running at the reopen are cut off in the pool: SB3 never finished them
        assert not reopened.ep_length[theirs.pos - 1, env_idx]
    np.testing.assert_array_equal(reopened.ep_length > 0, theirs.ep_length > 0)
    assert_same_batches(reopened, theirs)
    reopened.close()


@pytest.mark.parametrize("codec", ["zstd", {"obs_achieved_goal": "lz4", "obs_desired_goal": "zstd:9"}])
def test_a_compressed_pool_samples_the_same_batches_as_sb3(tmp_path, backend, codec):
    env = vec_env(2)
    kwargs = {"buffer_size": 120, "observation_space": env.observation_space, "action_space": env.action_space,
              "env": env, "n_envs": 2, "n_sampled_goal": 4, "goal_selection_strategy": "future", "device": "cpu"}
    theirs = HerReplayBuffer(**kwargs)
    path = str(tmp_path / ("pool" + (".h5" if backend == "hdf5" else ".zarr")))
    ours = DiskHerReplayBuffer(**kwargs, path=path, commit_every=7, codec=codec)
    fill([ours, theirs], env, 150, seed=3)  # the ring wraps
    assert_same_batches(ours, theirs)
    ours.close()
    with expstore.open(path, "r") as pool:
        compressed = {name for name in pool.schema if pool.schema[name].codec is not None}
    chosen = {"obs_observation", "obs_achieved_goal", "obs_desired_goal"} if codec == "zstd" else set(codec)
    assert compressed == chosen | {f"next_{name}" for name in chosen}  # next observations follow their fields


@pytest.mark.slow  # two short DQN runs: minutes on a busy 2-core machine
def test_dqn_with_the_disk_buffer_learns_what_it_learns_with_sb3s(tmp_path):
    parameters = []
    for buffer_class, extra in ((HerReplayBuffer, {}), (DiskHerReplayBuffer, {"path": str(tmp_path / "her.h5")})):
        env = vec_env(1)
        model = DQN("MultiInputPolicy", env, buffer_size=2_000, learning_starts=64, batch_size=32,
                    train_freq=1, gradient_steps=1, seed=3, device="cpu", policy_kwargs={"net_arch": [32]},
                    replay_buffer_class=buffer_class,
                    replay_buffer_kwargs={"n_sampled_goal": 4, "goal_selection_strategy": "future", **extra})
        model.learn(300)
        parameters.append([p.detach().clone() for p in model.policy.parameters()])
        if extra:
            model.replay_buffer.close()
            with expstore.open(extra["path"], "r") as pool:
                assert len(pool) == 300
    for ours, theirs in zip(parameters[1], parameters[0], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_settings_the_disk_buffer_cannot_honour(tmp_path):
    env = vec_env(1)
    base = {"buffer_size": 20, "observation_space": env.observation_space, "action_space": env.action_space,
            "env": env, "path": str(tmp_path / "p.h5")}
    with pytest.raises(InvalidArgumentError, match="optimize_memory_usage"):
        DiskHerReplayBuffer(**base, optimize_memory_usage=True, handle_timeout_termination=False)
    with pytest.raises(InvalidArgumentError, match="info dicts"):
        DiskHerReplayBuffer(**base, copy_info_dict=True)
    with pytest.raises(InvalidArgumentError, match="goal_selection_strategy"):
        DiskHerReplayBuffer(**base, goal_selection_strategy="random")
    with pytest.raises(InvalidArgumentError, match="achieved_goal"):
        DiskHerReplayBuffer(**{**base, "observation_space": env.observation_space["observation"]})
