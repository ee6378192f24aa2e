"""expstore.HER against a slow model of the pool's episodes, on random vector-env layouts of
both backends (interleaved sub-envs, ring wrap, reopen): every new goal is an achieved goal of
the same episode (``future``: from the row on; ``final``: the last; ``episode``: any row still
in the pool), never below the ring's tail or past the newest row, rewards recomputed; with
``n_step``, every reward of the n-step return recomputed along the rows the model sums."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

import expstore
from expstore.errors import InvalidArgumentError, SchemaError
from tests.helpers.episode_model import Model, Row, ops
from tests.sampling.test_recency import chi_square_ok

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.reuse, Phase.generate])  # pool files make shrinking slow
SUFFIX = {"hdf5": ".h5", "zarr": ".zarr"}
GOAL_SCHEMA = {"obs_observation": ((2,), "float32"), "obs_achieved_goal": ((1,), "float32"),
               "obs_desired_goal": ((1,), "float32"), "action": ((), "int64"), "reward": ((), "float32"),
               "next_obs_observation": ((2,), "float32"), "next_obs_achieved_goal": ((1,), "float32"),
               "next_obs_desired_goal": ((1,), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}
NO_GOAL = -1.0


def goal_row(row: Row) -> dict:
    """The achieved goal names (episode, index): 1000 * episode + index; the next one index + 1."""
    code = np.float32(1000 * row.episode + row.index)
    return {"obs_observation": np.array([code, row.env], np.float32), "obs_achieved_goal": np.array([code]),
            "obs_desired_goal": np.array([NO_GOAL], np.float32), "action": row.step, "reward": row.reward,
            "next_obs_observation": np.array([code + 1, row.env], np.float32),
            "next_obs_achieved_goal": np.array([code + 1], np.float32),
            "next_obs_desired_goal": np.array([NO_GOAL], np.float32),
            "terminated": row.terminated, "truncated": row.truncated}


def compute_reward(achieved, desired, info):
    """A goal env's reward: 0 when the goals match, -1 otherwise (vectorised)."""
    return -(np.abs(np.asarray(achieved) - np.asarray(desired)).sum(axis=-1) > 0.5).astype(np.float32)


def build(path: str, capacity: int, operations) -> Model:
    model = Model(capacity)
    pool = expstore.open(path, "w", capacity=capacity, schema=GOAL_SCHEMA, commit_every=7)
    for op in operations:
        if op[0] == "append":
            env, end, reward = op[1]
            pool.append(goal_row(model.add(env, end, float(reward))), env_id=env)
        elif op[0] == "extend":
            rows = [model.add(env, end, float(reward)) for env, end, reward in op[1]]
            batch = {name: np.stack([np.asarray(goal_row(r)[name]) for r in rows]) for name in GOAL_SCHEMA}
            pool.extend(batch, env_ids=[r.env for r in rows])
        else:
            pool.close()
            model.reopen()
            pool = expstore.open(path, "a")
    pool.close()
    return model


def check_goals(batch: dict, model: Model, strategy: str, ratio: float, n_step: int = 1, gamma: float = 1.0) -> None:
    n = len(batch["step_id"])
    assert batch["relabeled"].sum() == round(ratio * n)
    tail = model.tail
    for i, step in enumerate(batch["step_id"]):
        row = model.rows[int(step)]
        chain = model.following(int(step), n_step)  # the rows the n-step return sums, in the slow model
        if not batch["relabeled"][i]:
            assert batch["obs_desired_goal"][i, 0] == NO_GOAL
            assert batch["reward"][i] == pytest.approx(sum(gamma ** k * r.reward for k, r in enumerate(chain)))
            continue
        goal = float(batch["obs_desired_goal"][i, 0])
        assert batch["next_obs_desired_goal"][i, 0] == goal
        episode, index = int(goal) // 1000, int(goal) % 1000 - 1  # the goal row's next achieved goal
        assert episode == row.episode, (step, goal)
        present = [r.index for r in model.episode_rows(row.episode) if r.step >= tail]
        assert index in present  # never evicted, never past the newest row
        if strategy == "future":
            assert index >= row.index
        elif strategy == "final":
            assert index == present[-1]
        # each reward recomputed for the new goal from its row's next achieved goal (1000 * episode + index + 1)
        relabelled = [compute_reward([[1000 * r.episode + r.index + 1]], [[goal]], {})[0] for r in chain]
        assert batch["reward"][i] == pytest.approx(sum(gamma ** k * value for k, value in enumerate(relabelled)))
        assert batch["next_obs_achieved_goal"][i, 0] == 1000 * chain[-1].episode + chain[-1].index + 1
        if n_step > 1:
            assert batch["discount"][i] == pytest.approx(gamma ** len(chain))


@pytest.mark.parametrize("backend", sorted(SUFFIX))
@SETTINGS
@given(capacity=st.integers(4, 40), operations=ops, strategy=st.sampled_from(["future", "final", "episode"]),
       ratio=st.sampled_from([0.0, 0.5, 0.8, 1.0]), seed=st.integers(0, 2**16))
def test_goals_come_from_the_same_episode_and_rewards_are_recomputed(
        tmp_path_factory, backend, capacity, operations, strategy, ratio, seed):
    path = str(tmp_path_factory.mktemp("her") / ("pool" + SUFFIX[backend]))
    model = build(path, capacity, operations)
    assume(model.rows)
    her = expstore.HER(compute_reward, strategy=strategy, relabel_ratio=ratio)
    with expstore.open(path, "r") as pool:  # a reopened pool: goals from its own episode table
        batch = pool.sample(200, rng=seed, her=her)
        again = pool.sample(200, rng=seed, her=her)
        prioritized = pool.sample(50, rng=seed, her=her, max_age=5, age_unit="steps")
    check_goals(batch, model, strategy, ratio)
    check_goals(prioritized, model, strategy, ratio)
    for name in batch:
        np.testing.assert_array_equal(batch[name], again[name], err_msg=name)


@pytest.mark.parametrize("backend", sorted(SUFFIX))
@SETTINGS
@given(capacity=st.integers(4, 40), operations=ops, strategy=st.sampled_from(["future", "final", "episode"]),
       ratio=st.sampled_from([0.5, 1.0]), n_step=st.integers(2, 4), seed=st.integers(0, 2**16))
def test_n_step_returns_are_relabelled_reward_by_reward(
        tmp_path_factory, backend, capacity, operations, strategy, ratio, n_step, seed):
    path = str(tmp_path_factory.mktemp("her") / ("pool" + SUFFIX[backend]))
    model = build(path, capacity, operations)
    assume(model.rows)
    her = expstore.HER(compute_reward, strategy=strategy, relabel_ratio=ratio)
    with expstore.open(path, "r") as pool:
        batch = pool.sample(200, rng=seed, her=her, n_step=n_step, gamma=0.9)
        prioritized = pool.sample(50, rng=seed, her=her, n_step=n_step, gamma=0.5, prioritized=True)
    check_goals(batch, model, strategy, ratio, n_step, 0.9)
    check_goals(prioritized, model, strategy, ratio, n_step, 0.5)
    assert "_chain" not in batch


def test_n_step_relabelling_is_the_same_on_a_derived_next_obs_pool(tmp_path):
    stored, derived = str(tmp_path / "stored.h5"), str(tmp_path / "derived.zarr")
    schema = {name: spec for name, spec in GOAL_SCHEMA.items() if not name.startswith("next_obs")}
    model = Model(100)
    rows = [model.add(t % 2, 1 if t % 9 == 8 or t >= 58 else 2 if t % 13 == 12 else 0, float(t % 3 - 1))
            for t in range(60)]  # the last row of each sub-env ends its episode: every row can be drawn
    batch = {name: np.stack([np.asarray(goal_row(r)[name]) for r in rows]) for name in GOAL_SCHEMA}
    with expstore.open(stored, "w", capacity=100, schema=GOAL_SCHEMA) as pool:
        pool.extend(batch, env_ids=[r.env for r in rows])
    with expstore.open(derived, "w", capacity=100, schema=schema, derive_next_obs=True) as pool:
        pool.extend(batch, env_ids=[r.env for r in rows])  # every episode closed: its final next obs kept
    her = expstore.HER(compute_reward, relabel_ratio=0.75)
    with expstore.open(stored, "r") as a, expstore.open(derived, "r") as b:
        one = a.sample(300, rng=4, her=her, n_step=3, gamma=0.8)
        two = b.sample(300, rng=4, her=her, n_step=3, gamma=0.8)
    check_goals(one, model, "future", 0.75, 3, 0.8)
    for name in one:
        np.testing.assert_array_equal(one[name], two[name], err_msg=name)


def test_info_fields_are_read_along_the_chain(pool_path):
    def reward_from_info(achieved, desired, info):  # the reward of a row is its own action (its step id)
        return np.asarray(info["action"], np.float32)

    model = Model(50)
    with expstore.open(pool_path, "w", capacity=50, schema=GOAL_SCHEMA) as pool:
        for t in range(30):
            pool.append(goal_row(model.add(0, 1 if t % 10 == 9 else 0, 0.0)))
        her = expstore.HER(reward_from_info, relabel_ratio=1.0, info_fields=("action",))
        batch = pool.sample(100, rng=3, her=her, n_step=3, gamma=0.5)
    for step, reward in zip(batch["step_id"], batch["reward"], strict=True):
        chain = model.following(int(step), 3)
        assert reward == sum(0.5 ** k * r.step for k, r in enumerate(chain))


def test_future_goals_are_uniform_over_the_rest_of_the_episode(pool_path):
    model = Model(100)
    with expstore.open(pool_path, "w", capacity=100, schema=GOAL_SCHEMA) as pool:
        for t in range(20):
            pool.append(goal_row(model.add(0, 1 if t == 19 else 0, 0.0)))
        batch = pool.sample(40_000, rng=1, her=expstore.HER(compute_reward, relabel_ratio=1.0))
    index = batch["obs_desired_goal"][:, 0].astype(int) % 1000 - 1
    expected = np.array([sum(1 / (20 - t) for t in range(j + 1)) / 20 for j in range(20)]) * len(index)
    assert chi_square_ok(np.bincount(index, minlength=20), expected)
    assert (index >= batch["step_id"]).all()


def test_a_derived_next_obs_pool_and_a_running_episode(tmp_path):
    path = str(tmp_path / "derived.h5")
    schema = {name: spec for name, spec in GOAL_SCHEMA.items() if not name.startswith("next_obs")}
    model = Model(50)
    with expstore.open(path, "w", capacity=50, schema=schema, derive_next_obs=True) as pool:
        for t in range(30):
            pool.append(goal_row(model.add(0, 1 if t % 10 == 9 else 0, 0.0)))  # keeps the final next obs
        for _ in range(5):  # a running episode: its newest row is its last so far
            pool.append(goal_row(model.add(0, 0, 0.0)))
        pool.flush()
    with expstore.open(path, "r") as pool:
        batch = pool.sample(300, rng=2, her=expstore.HER(compute_reward, strategy="final", relabel_ratio=1.0))
    assert batch["relabeled"].all()
    goal = batch["obs_desired_goal"][:, 0].astype(int)
    # The running episode's newest row (index 4) has no next observation yet: sample never draws
    # it, and its final goal is the next achieved goal of row 3, the last one known.
    assert (batch["step_id"] < 34).all()
    np.testing.assert_array_equal(goal % 1000 - 1, np.where(batch["step_id"] < 30, 9, 3))


def test_mix_relabels_per_source(tmp_path):
    a, b = str(tmp_path / "a.h5"), str(tmp_path / "b.zarr")
    build(a, 30, [("extend", [(0, 0, 0), (0, 0, 0), (0, 1, 0)] * 5)])
    build(b, 30, [("extend", [(1, 0, 0), (0, 0, 0), (1, 2, 1), (0, 1, 1)] * 5)])
    with expstore.open(a, "r") as offline, expstore.open(b, "r") as online:
        mixed = expstore.mix({offline: 0.5, online: 0.5})
        batch = mixed.sample(40, rng=0, her=expstore.HER(compute_reward, relabel_ratio=0.5))
        assert batch["relabeled"].sum() == 20 and batch["relabeled"][:20].sum() == 10


def test_bad_her_arguments_say_what_is_wrong(tmp_path):
    path = str(tmp_path / "plain.h5")
    with expstore.open(path, "w", capacity=10, schema={"obs": ((2,), "float32"), "reward": ((), "float32")}) as pool:
        pool.extend({"obs": np.zeros((4, 2), np.float32), "reward": np.zeros(4, np.float32)})
        with pytest.raises(SchemaError, match="obs_achieved_goal"):
            pool.sample(4, her=expstore.HER(compute_reward))
        with pytest.raises(InvalidArgumentError, match="not a relabelling"):
            pool.sample(4, her="future")
    for bad, match in [({"compute_reward": 3}, "not callable"), ({"strategy": "random"}, "strategy"),
                       ({"relabel_ratio": 1.5}, "relabel_ratio")]:
        with pytest.raises(InvalidArgumentError, match=match):
            expstore.HER(**{"compute_reward": compute_reward, **bad})


def test_her_with_frame_stack_says_why_and_unstacked_goal_fields_work(tmp_path):
    path = str(tmp_path / "goals.h5")
    model = Model(50)
    with expstore.open(path, "w", capacity=50, schema=GOAL_SCHEMA) as pool:
        for t in range(20):
            pool.append(goal_row(model.add(0, 1 if t % 10 == 9 else 0, 0.0)))
        with pytest.raises(InvalidArgumentError, match="frame_stack stacks every observation field"):
            pool.sample(8, rng=0, her=expstore.HER(compute_reward), frame_stack=2)
    # The goals under names frame_stack does not stack: the observation is stacked, the goals relabelled.
    renamed = {name.replace("obs_achieved", "achieved").replace("obs_desired", "desired"): spec
               for name, spec in GOAL_SCHEMA.items()}
    other = str(tmp_path / "renamed.h5")
    with expstore.open(other, "w", capacity=50, schema=renamed) as pool:
        for row in model.rows:
            values = goal_row(row)
            pool.append({name.replace("obs_achieved", "achieved").replace("obs_desired", "desired"): value
                         for name, value in values.items()})
        her = expstore.HER(compute_reward, relabel_ratio=1.0, achieved_goal="achieved_goal",
                           desired_goal="desired_goal")
        batch = pool.sample(64, rng=0, her=her, frame_stack=2)
    assert batch["obs_observation"].shape == (64, 2, 2) and batch["relabeled"].all()
    index = batch["desired_goal"][:, 0].astype(int) % 1000 - 1
    assert (index >= batch["step_id"] % 10).all() and (index <= 9).all()
