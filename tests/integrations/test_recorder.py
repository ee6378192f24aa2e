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
        for episode in table["episode_id"]:
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
                following.update(zip(rows["step_id"][:-1].tolist(), rows["obs"][1:], strict=True))
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

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"<!-- episodes -->\s*```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README episodes", "exec"), namespace)
    assert namespace["batch"]["discount"].shape == (256,) and namespace["windows"]["mask"].shape == (32, 8)
    assert len(namespace["table"]["episode_id"]) > 0


# ---------------------------------------------------------------------- reset before an episode ends
SUFFIX = {"hdf5": ".h5", "zarr": ".zarr"}


def _all_rows(pool) -> dict[str, np.ndarray]:
    """Every committed row with its next_obs (derived ones too), in step order."""
    batches = list(pool.iter_epoch(64, rng=0))
    rows = {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}
    order = np.argsort(rows["step_id"])
    return {name: values[order] for name, values in rows.items()}


def _record_cartpole_reset_at_19(path: str, derive: bool) -> list[np.ndarray]:
    """CartPole-v1 reset at step 19 of its first episode, then run until the second one ends;
    returns the observations the env returned, in order (the reset's included)."""
    actions = np.random.default_rng(0).integers(0, 2, 600)
    seen = []
    with expstore.open(path, "w", capacity=1_000, derive_next_obs=derive) as pool:
        env = expstore.RecordEpisodes(gym.make("CartPole-v1"), pool)
        seen.append(env.reset(seed=3)[0])
        for t in range(19):
            obs, _, terminated, truncated, _ = env.step(int(actions[t]))
            assert not (terminated or truncated)
            seen.append(obs)
        seen.append(env.reset()[0])
        for t in range(19, 600):
            obs, _, terminated, truncated, _ = env.step(int(actions[t]))
            seen.append(obs)
            if terminated or truncated:
                break
        env.close()
    return seen


def test_reset_mid_episode_ends_it_truncated(tmp_path, backend):
    paths = {derive: str(tmp_path / f"{'derived' if derive else 'stored'}{SUFFIX[backend]}")
             for derive in (False, True)}
    seen = {derive: _record_cartpole_reset_at_19(path, derive) for derive, path in paths.items()}
    with expstore.open(paths[False]) as stored, expstore.open(paths[True]) as derived:
        assert "next_obs" in stored.schema and "next_obs" not in derived.schema
        for pool in (stored, derived):
            table = pool.episodes()
            assert list(table["episode_id"]) == [0, 1] and table["length"][0] == 19
            assert table["truncated"][0] and not table["terminated"][0] and not table["open"].any()
            assert list(table["first_step_id"]) == [0, 19]
            rows = _all_rows(pool)
            assert len(rows["step_id"]) == len(pool)  # every row's next observation is known
            # the last row before the reset gets the env's observation after step 19, not the reset's
            np.testing.assert_array_equal(rows["next_obs"][18], seen[True][19])
            assert not rows["truncated"][18] and not rows["terminated"][18]  # the rows keep the env's flags
            five = pool.sample(256, rng=1, n_step=5, gamma=1.0)
            left = np.where(five["step_id"] < 19, 19 - five["step_id"], len(pool) - five["step_id"])
            np.testing.assert_array_equal(five["reward"], np.minimum(5, left))  # stops at the reset
            windows = pool.sample_sequences(64, 4, rng=2)
            ids = pool.episode(0)["step_id"]
            starts_in_zero = np.isin(windows["step_id"][:, :1], ids)
            assert not (starts_in_zero & ~np.isin(windows["step_id"], ids) & windows["mask"]).any()  # stays in 0
        one, two = _all_rows(stored), _all_rows(derived)
        assert one.keys() == two.keys()
        for name in one:
            np.testing.assert_array_equal(one[name], two[name], err_msg=name)
        for options in ({}, {"n_step": 3, "gamma": 0.9}):
            a, b = stored.sample(64, rng=5, **options), derived.sample(64, rng=5, **options)
            for name in a:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _record_vector_reset_at_10(path: str, derive: bool, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Three CartPole sub-envs, a whole-vector reset after 10 steps, 12 more steps and a final
    reset (which ends the episodes still running); returns the observations after step 10 and
    which sub-envs were running then."""
    venv = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode(mode)})
    actions = np.random.default_rng(1).integers(0, 2, (22, 3))
    with expstore.open(path, "w", capacity=1_000, derive_next_obs=derive) as pool:
        env = expstore.RecordEpisodes(venv, pool)
        env.reset(seed=7)
        running = np.ones(3, bool)
        for t in range(10):
            obs, _, terminated, truncated, _ = env.step(actions[t])
            running = ~(terminated | truncated) & (running | (mode == "SameStep"))
        env.reset()
        for t in range(10, 22):
            env.step(actions[t])
        env.reset()
    venv.close()
    return obs, running


@pytest.mark.parametrize("mode", ["NextStep", "SameStep"])
def test_vector_reset_mid_episode_ends_every_running_episode(tmp_path, backend, mode):
    paths = {derive: str(tmp_path / f"{'derived' if derive else 'stored'}{SUFFIX[backend]}")
             for derive in (False, True)}
    recorded = {derive: _record_vector_reset_at_10(path, derive, mode) for derive, path in paths.items()}
    after_ten, running = recorded[True]
    assert running.all()  # CartPole's random episodes outlast ten steps with this seed
    with expstore.open(paths[False]) as stored, expstore.open(paths[True]) as derived:
        for pool in (stored, derived):
            table = pool.episodes()
            assert not table["open"].any() and (table["truncated"] | table["terminated"]).all()
            rows = _all_rows(pool)
            assert len(rows["step_id"]) == len(pool)
            for env_id in range(3):
                first = int(np.flatnonzero(table["env_id"] == env_id)[0])  # the episode the reset cut
                assert table["truncated"][first] and table["length"][first] == 10
                last = table["last_step_id"][first]
                np.testing.assert_array_equal(rows["next_obs"][last], after_ten[env_id])
            for episode in table["episode_id"]:  # no episode crosses a reset
                episode_rows = pool.episode(int(episode))
                assert np.abs(episode_rows["obs"][0]).max() <= 0.05
        one, two = _all_rows(stored), _all_rows(derived)
        for name in one:
            np.testing.assert_array_equal(one[name], two[name], err_msg=name)
        for options in ({"n_step": 4, "gamma": 1.0},):
            a, b = stored.sample(64, rng=3, **options), derived.sample(64, rng=3, **options)
            for name in a:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_end_episodes_checks_what_it_is_given(pool_path):
    schema = {"obs": ((2,), "float32"), "reward": ((), "float32"), "terminated": ((), "bool"),
              "truncated": ((), "bool")}
    with expstore.open(pool_path, "w", capacity=10, schema=schema, derive_next_obs=True) as pool:
        for _ in range(3):
            pool.append({"obs": np.zeros(2, np.float32), "reward": 1.0, "terminated": False, "truncated": False,
                         "next_obs": np.ones(2, np.float32)}, env_id=1)
        with pytest.raises(expstore.InvalidArgumentError, match="next_obs must map"):
            pool.end_episodes([1], next_obs={"next_x": np.ones((1, 2))})
        with pytest.raises(expstore.SchemaError):
            pool.end_episodes([1], next_obs={"next_obs": np.ones((1, 3))})
        assert pool.episodes()["open"].all()  # a bad call ends nothing
        assert list(pool.end_episodes([0, 1], next_obs={"next_obs": np.ones((2, 2))})) == [0]  # env 0 has none
        assert list(pool.end_episodes()) == []
        table = pool.episodes()
        assert table["truncated"][0] and table["length"][0] == 3
        pool.flush()
        assert len(next(pool.iter_epoch(10))["step_id"]) == 3  # the last row's next_obs is kept
    with expstore.open(pool_path, "r") as reader, pytest.raises(expstore.ReadOnlyError):
        reader.end_episodes()


def test_vector_reset_with_a_mask_ends_only_the_masked_sub_envs_episodes(pool_path):
    venv = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.DISABLED})
    with expstore.open(pool_path, "w", capacity=100) as pool:
        env = expstore.RecordEpisodes(venv, pool)
        env.reset(seed=0)
        for _ in range(5):
            env.step(np.zeros(3, int))
        env.reset(options={"reset_mask": np.array([True, False, False])})
        for _ in range(3):
            env.step(np.zeros(3, int))
        table = pool.episodes()
    venv.close()
    assert list(table["env_id"]) == [0, 1, 2, 0] and list(table["length"]) == [5, 8, 8, 3]
    assert list(table["truncated"]) == [True, False, False, False] and list(table["open"]) == [False, True, True, True]


class _Tokens(gym.Env):
    """A Sequence observation: rows of 0 to 4 tokens that tell the sub-env and step apart; each
    step is logged as (obs, next_obs), what the pool must give back."""

    observation_space = spaces.Sequence(spaces.Box(0, 10**6, (), np.int32), stack=True)
    action_space = spaces.Discrete(2)

    def __init__(self, index: int):
        self.index, self.episode, self.log = index, -1, []

    def _obs(self):
        return np.arange((self.t * 3 + self.index) % 5, dtype=np.int32) + 1000 * self.index + 100 * self.episode \
            + self.t

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.episode = 0, self.episode + 1
        self.last = self._obs()
        return self.last, {}

    def step(self, action):
        self.t += 1
        obs = self._obs()
        self.log.append((self.last, obs))
        self.last = obs
        return obs, 1.0, False, self.t == 4 + self.index, {}


def _check_rows_match_the_logs(pool, subenvs) -> int:
    expected = {}  # step id -> (obs, next_obs) its sub-env logged
    table = pool.episodes()
    for env_id, sub in enumerate(subenvs):
        steps = [pool.episode(int(k))["step_id"] for k in table["episode_id"][table["env_id"] == env_id]]
        steps = np.concatenate(steps).tolist()
        assert len(steps) == len(sub.log)
        expected.update(zip(steps, sub.log, strict=True))
    batch = pool.sample(200, rng=0, ragged="list")
    for step, obs, next_obs in zip(batch["step_id"].tolist(), batch["obs"], batch["next_obs"], strict=True):
        assert np.array_equal(obs, expected[step][0]) and np.array_equal(next_obs, expected[step][1])
    padded = pool.sample(8, rng=1)
    assert padded["obs"].shape[1] == padded["obs_length"].max()
    return len(expected)


@pytest.mark.parametrize("mode", ["NextStep", "SameStep"])
@pytest.mark.parametrize("derive", [False, True])
def test_vector_env_with_sequence_observations_records_rows_of_their_own_lengths(pool_path, mode, derive):
    subenvs = [_Tokens(i) for i in range(3)]
    venv = gym.vector.SyncVectorEnv([lambda sub=sub: sub for sub in subenvs],
                                    autoreset_mode=gym.vector.AutoresetMode(mode))
    schema = {"obs": expstore.Field((None,), "int32", codec="zstd"), "action": ((), "int64"),
              "reward": ((), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}
    if not derive:
        schema["next_obs"] = expstore.Field((None,), "int32", codec="zstd")
    with expstore.open(pool_path, "w", capacity=500, schema=schema, derive_next_obs=derive,
                       heap_bytes=1 << 18) as pool:
        env = expstore.RecordEpisodes(venv, pool)
        env.reset(seed=0)
        for _ in range(20):
            env.step(np.zeros(3, int))
        env.reset()  # interrupts the running episodes: they end truncated, their last next_obs kept
        pool.flush()
        assert not pool.episodes()["open"].any()
        rows = _check_rows_match_the_logs(pool, subenvs)
        assert rows == len(pool) == sum(len(sub.log) for sub in subenvs)
    venv.close()


def test_vector_env_sequence_schema_from_the_spaces_and_a_masked_reset(pool_path):
    subenvs = [_Tokens(i) for i in range(2)]
    venv = gym.vector.SyncVectorEnv([lambda sub=sub: sub for sub in subenvs],
                                    autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    with expstore.open(pool_path, "w", capacity=100, heap_bytes=1 << 16) as pool:
        env = expstore.RecordEpisodes(venv, pool)
        env.reset(seed=0)
        for _ in range(3):
            env.step(np.zeros(2, int))
        env.reset(options={"reset_mask": np.array([True, False])})
        for _ in range(2):
            env.step(np.zeros(2, int))
        assert pool.schema["obs"] == pool.schema["next_obs"] == expstore.Field((None,), "int32")
        table = pool.episodes()
        assert list(table["env_id"]) == [0, 1, 0] and list(table["length"]) == [3, 5, 2]
        pool.end_episodes()
        _check_rows_match_the_logs(pool, subenvs)
    venv.close()


def test_single_env_sequence_reset_mid_episode_keeps_its_ragged_final_obs(pool_path):
    sub = _Tokens(1)
    with expstore.open(pool_path, "w", capacity=50, heap_bytes=1 << 16) as pool:  # schema from the spaces
        env = expstore.RecordEpisodes(sub, pool)
        env.reset(seed=0)
        for _ in range(2):
            env.step(0)
        env.reset()  # ends the episode truncated, keeping its last next_obs (a ragged row)
        env.step(0)
        table = pool.episodes()
        assert list(table["length"]) == [2, 1] and list(table["truncated"]) == [True, False]
        rows = pool.read([0, 1, 2], ragged="list")
        for i, (obs, next_obs) in enumerate(sub.log):
            assert np.array_equal(rows["obs"][i], obs) and np.array_equal(rows["next_obs"][i], next_obs)
