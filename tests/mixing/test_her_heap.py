"""expstore.HER on goal fields kept in a byte heap (a codec, or ragged): goals and rewards read
decoded, so that a compressed pool relabels exactly as the same pool stored raw; ragged goals
are refused with a SchemaError."""

from __future__ import annotations

import numpy as np
import pytest

import expstore
from expstore.errors import SchemaError

ROWS = 240
EPISODE = 20
GOAL_NAMES = ("observation", "achieved_goal", "desired_goal")


def compute_reward(achieved, desired, info):
    reward = -np.linalg.norm(np.asarray(achieved) - np.asarray(desired), axis=-1)
    return reward + info.get("bonus", 0.0)


def goal_schema(codec: str | None, goal_dim: int, derive: bool) -> dict:
    schema = {f"obs_{name}": expstore.Field((goal_dim,), "float32", codec=codec) for name in GOAL_NAMES}
    if not derive:
        schema |= {f"next_obs_{name}": expstore.Field((goal_dim,), "float32", codec=codec) for name in GOAL_NAMES}
    return schema | {"bonus": expstore.Field((), "float32", codec=codec), "action": ((), "int64"),
                     "reward": ((), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}


def goal_rows(goal_dim: int) -> dict:
    rng = np.random.default_rng(7)
    achieved = rng.normal(size=(ROWS + 1, goal_dim)).astype(np.float32)
    desired = np.repeat(rng.normal(size=(ROWS // EPISODE, goal_dim)).astype(np.float32), EPISODE, axis=0)
    observation = rng.normal(size=(ROWS + 1, goal_dim)).astype(np.float32)
    rows = {"obs_observation": observation[:-1], "obs_achieved_goal": achieved[:-1], "obs_desired_goal": desired,
            "next_obs_observation": observation[1:], "next_obs_achieved_goal": achieved[1:],
            "next_obs_desired_goal": desired, "bonus": rng.random(ROWS).astype(np.float32),
            "action": np.arange(ROWS), "reward": np.zeros(ROWS, np.float32), "terminated": np.zeros(ROWS, bool),
            "truncated": np.arange(ROWS) % EPISODE == EPISODE - 1}
    return rows


def make_pool(path: str, codec: str | None, goal_dim: int, derive: bool) -> None:
    schema = goal_schema(codec, goal_dim, derive)
    rows = goal_rows(goal_dim)
    with expstore.open(path, "w", capacity=1000, schema=schema, derive_next_obs=derive) as pool:
        if not derive:
            pool.extend({name: rows[name] for name in schema})
            return
        # Each episode's final observation given as it ends, so that every row's next one is known.
        rows["truncated"][:] = False
        for start in range(0, ROWS, EPISODE):
            pool.extend({name: rows[name][start:start + EPISODE] for name in schema})
            last = start + EPISODE - 1
            pool.end_episodes(next_obs={f"next_obs_{name}": rows[f"next_obs_{name}"][last:last + 1]
                                        for name in GOAL_NAMES})


def codec_twin(pool_path: str) -> str:
    stem, dot, suffix = pool_path.rpartition(".")
    return f"{stem}_zstd{dot}{suffix}"


@pytest.mark.parametrize("derive", [False, True])
@pytest.mark.parametrize("goal_dim", [2, 4])
@pytest.mark.parametrize("n_step", [1, 3])
def test_codec_goals_relabel_as_raw_goals(pool_path, derive, goal_dim, n_step):
    make_pool(pool_path, None, goal_dim, derive)
    make_pool(codec_twin(pool_path), "zstd", goal_dim, derive)
    her = expstore.HER(compute_reward, relabel_ratio=0.8, info_fields=("bonus",))
    with expstore.open(pool_path) as raw, expstore.open(codec_twin(pool_path)) as compressed:
        want = raw.sample(96, rng=3, her=her, n_step=n_step, gamma=0.5)
        got = compressed.sample(96, rng=3, her=her, n_step=n_step, gamma=0.5)
    assert want["relabeled"].sum() > 50
    assert sorted(got) == sorted(want)
    for name, values in want.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)


def test_codec_goals_are_achieved_goals_of_the_episode(pool_path):
    make_pool(pool_path, "zstd", 4, derive=False)
    rows = goal_rows(4)
    her = expstore.HER(compute_reward, relabel_ratio=1.0, strategy="final")
    with expstore.open(pool_path) as pool:
        batch = pool.sample(64, rng=0, her=her)
    last = (batch["step_id"] // EPISODE + 1) * EPISODE - 1
    np.testing.assert_array_equal(batch["obs_desired_goal"], rows["next_obs_achieved_goal"][last])
    want = compute_reward(rows["next_obs_achieved_goal"][batch["step_id"]], batch["obs_desired_goal"], {})
    np.testing.assert_allclose(batch["reward"], want, rtol=1e-6)


@pytest.mark.parametrize("n_step", [1, 2])
def test_ragged_goals_are_refused(pool_path, n_step):
    schema = {"obs_achieved_goal": ((None,), "float32"), "obs_desired_goal": ((None,), "float32"),
              "next_obs_achieved_goal": ((None,), "float32"), "reward": ((), "float32"),
              "terminated": ((), "bool"), "truncated": ((), "bool")}
    with expstore.open(pool_path, "w", capacity=100, schema=schema) as pool:
        for step in range(30):
            goal = np.full(1 + step % 3, step, np.float32)
            pool.append({"obs_achieved_goal": goal, "obs_desired_goal": goal, "next_obs_achieved_goal": goal + 1,
                         "reward": 0.0, "terminated": False, "truncated": step % 10 == 9})
        with pytest.raises(SchemaError, match=r"ragged.*Field\(\(3,\)"):
            pool.sample(8, rng=0, her=expstore.HER(compute_reward), n_step=n_step)
