"""RecordEpisodes: schemas from spaces, single and vector envs (both autoreset modes)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import expstore


class _Toy(gym.Env):
    """Dict/Tuple/MultiDiscrete/MultiBinary observations; episodes of 3 steps, truncated."""

    observation_space = spaces.Dict({
        "pos": spaces.Box(-10, 10, (2,), np.float32),
        "parts": spaces.Tuple((spaces.Discrete(5), spaces.MultiBinary(3))),
    })
    action_space = spaces.MultiDiscrete([3, 4])

    def _obs(self):
        return {"pos": np.full(2, self.t, np.float32), "parts": (self.t % 5, np.array([1, 0, self.t % 2], np.int8))}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {"score": 0.0}

    def step(self, action):
        self.t += 1
        return self._obs(), float(self.t), False, self.t == 3, {"score": self.t * 0.5}


def test_dict_tuple_spaces_are_flattened_into_named_fields(pool_path):
    with expstore.open(pool_path, "w", capacity=100) as pool:
        env = expstore.RecordEpisodes(_Toy(), pool, info_fields=("score",), policy_version=7)
        env.reset(seed=0)
        for _ in range(2):
            for _ in range(3):
                env.step(env.action_space.sample())
            env.reset()
        env.policy_version = 8
        env.step(env.action_space.sample())
        schema = pool.schema
        assert list(schema) == ["obs_parts_0", "obs_parts_1", "obs_pos", "action", "reward", "next_obs_parts_0",
                                "next_obs_parts_1", "next_obs_pos", "terminated", "truncated", "score",
                                "policy_version"]  # gymnasium orders Dict keys
        assert schema["action"].shape == (2,) and schema["obs_parts_1"].dtype == np.int8
        rows = pool[:]
        assert list(rows["obs_pos"][:, 0]) == [0, 1, 2, 0, 1, 2, 0]
        assert list(rows["next_obs_pos"][:, 0]) == [1, 2, 3, 1, 2, 3, 1]
        assert list(rows["score"]) == [0.5, 1.0, 1.5] * 2 + [0.5]
        assert list(rows["policy_version"]) == [7] * 6 + [8]
        table = pool.episodes()
        assert list(table["length"]) == [3, 3, 1] and list(table["truncated"]) == [True, True, False]
        assert list(table["return"]) == [6.0, 6.0, 1.0]


def test_step_before_reset_is_a_clear_error(pool_path):
    with expstore.open(pool_path, "w", capacity=10) as pool:
        env = expstore.RecordEpisodes(_Toy(), pool)
        with pytest.raises(gym.error.ResetNeeded):
            env.step(env.action_space.sample())


def test_missing_info_field_is_a_clear_error(pool_path):
    with expstore.open(pool_path, "w", capacity=10) as pool:
        env = expstore.RecordEpisodes(_Toy(), pool, info_fields=("nope",))
        env.reset()
        with pytest.raises(expstore.SchemaError, match="info field 'nope'"):
            env.step(env.action_space.sample())


@pytest.mark.parametrize("mode", ["NextStep", "SameStep"])
def test_vector_env_keeps_each_sub_env_episodes_intact(pool_path, mode):
    venv = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode(mode)})
    with expstore.open(pool_path, "w", capacity=5_000) as pool:
        env = expstore.RecordEpisodes(venv, pool)
        env.reset(seed=1)
        finished = just_finished = 0
        for _ in range(150):
            _, _, terminated, truncated, _ = env.step(venv.action_space.sample())
            just_finished = int((terminated | truncated).sum())
            finished += just_finished
        # NEXT_STEP: the step that resets a finished sub-env is not a transition
        resets = finished - just_finished if mode == "NextStep" else 0
        assert len(pool) == 450 - resets
        table = pool.episodes()
        assert (~table["open"]).sum() == finished and set(table["env_id"].tolist()) == {0, 1, 2}
        for episode, env_id in zip(table["episode_id"], table["env_id"]):
            rows = pool.episode(int(episode))
            assert np.array_equal(rows["obs"][1:], rows["next_obs"][:-1])  # consecutive steps
            assert np.abs(rows["obs"][0]).max() <= 0.05  # starts at a reset observation
            assert not (rows["terminated"][:-1] | rows["truncated"][:-1]).any()
        batch = pool.sample_sequences(16, 4, rng=0)
        chained = batch["mask"][:, 1:]
        assert np.array_equal(batch["obs"][:, 1:][chained], batch["next_obs"][:, :-1][chained])
    venv.close()


def test_async_vector_env_and_derived_next_obs(pool_path):
    venv = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="async")
    try:
        with expstore.open(pool_path, "w", capacity=1_000, derive_next_obs=True) as pool:
            env = expstore.RecordEpisodes(venv, pool)
            env.reset(seed=2)
            for _ in range(60):
                env.step(venv.action_space.sample())
            assert "next_obs" not in pool.schema
            batch = pool.sample(64, rng=0)
            following = {}  # step id -> obs of the next row of its episode
            for episode in pool.episodes()["episode_id"]:
                rows = pool.episode(int(episode))
                following.update(zip(rows["step_id"][:-1].tolist(), rows["obs"][1:]))
            checked = 0
            for i, step in enumerate(batch["step_id"].tolist()):
                if step in following:
                    assert np.array_equal(batch["next_obs"][i], following[step])
                    checked += 1
            assert checked > 32
    finally:
        venv.close()


def test_readme_episodes_example_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"<!-- episodes -->\s*```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README episodes", "exec"), namespace)
    assert namespace["batch"]["discount"].shape == (256,) and namespace["windows"]["mask"].shape == (32, 8)
    assert len(namespace["table"]["episode_id"]) > 0
