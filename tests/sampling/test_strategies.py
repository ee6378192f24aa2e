"""Sampling strategies as objects: ``sample(sampler=...)`` with each strategy, the compositions
the keywords now allow (prioritized within ``max_age``, n-step with recency), and the
``Sampler`` protocol with a strategy written by a user.

Distributions are checked with a chi-square test at a fixed seed against a slow reference;
n-step values against the episode model of tests/helpers/episode_model.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import expstore
from expstore import ERE, AgeWindow, ExponentialRecency, Prioritized, Uniform, WindowView
from expstore.errors import InvalidArgumentError
from expstore.sampling.priorities import PriorityIndex
from tests.helpers.episode_model import SCHEMA, Model
from tests.sampling.test_recency import chi_square_ok, make_pool
from tests.sampling.test_sampling import check_n_step


class EvenSteps:
    """A user's strategy: only even step ids, uniformly."""

    def draw(self, rng, view, count):
        first = view.tail + view.tail % 2
        return first + 2 * rng.integers(0, (view.head - first + 1) // 2, size=count, dtype=np.int64)


class FixedSteps:
    """Returns the given step ids (a reference: the same rows without any weighting)."""

    def __init__(self, steps):
        self.steps = np.asarray(steps, np.int64)

    def draw(self, rng, view, count):
        assert count == len(self.steps)
        return self.steps.copy()


def _episode_pool(path: str, capacity: int = 300, rows: int = 500):
    """A writer on a wrapped ring of episodes 1 to 9 rows long, and its model."""
    model = Model(capacity)
    pool = expstore.open(path, "w", capacity=capacity, schema=SCHEMA)
    for t in range(rows):
        pool.append(model.add(0, 1 if t % 9 in (4, 8) else 0, float(t % 5)).values())
    pool.flush()
    return pool, model


@pytest.mark.parametrize("keywords, sampler", [
    ({}, Uniform()),
    ({"prioritized": True, "alpha": 0.7, "beta": 0.5}, Prioritized(0.7, 0.5)),
    ({"recency": ERE(2, 4, c_min=40)}, ERE(2, 4, c_min=40)),
    ({"recency": ExponentialRecency(30)}, ExponentialRecency(30)),
    ({"max_age": 3}, AgeWindow(3)),
    ({"max_age": 50, "age_unit": "steps", "prioritized": True}, AgeWindow(50, "steps", within=Prioritized())),
    ({"max_age": 60, "age_unit": "steps", "recency": ERE(1, 3, c_min=20)},
     AgeWindow(60, "steps", within=ERE(1, 3, c_min=20))),
])
def test_a_sampler_object_gives_the_batch_its_keywords_give(pool_path, keywords, sampler):
    make_pool(pool_path, 1500, 1000)
    with expstore.open(pool_path, "a") as pool:
        steps = np.arange(pool.first_step_id, pool.next_step_id)
        pool.update_priorities(steps, 1.0 + steps % 7)
        by_keywords = pool.sample(512, rng=11, **keywords)
        by_object = pool.sample(512, rng=11, sampler=sampler)
        assert isinstance(sampler, expstore.Sampler)
    assert by_keywords.keys() == by_object.keys()
    for name in by_keywords:
        np.testing.assert_array_equal(by_keywords[name], by_object[name], err_msg=name)
    assert ("weights" in by_object) == isinstance(getattr(sampler, "within", sampler), Prioritized)


def test_prioritized_within_max_age_is_proportional_among_the_young_rows(pool_path):
    make_pool(pool_path, 1500, 1000)  # newest version 214
    with expstore.open(pool_path, "a") as pool:
        low, high = pool.first_step_id, pool.next_step_id
        steps = np.arange(low, high)
        priorities = np.random.default_rng(0).uniform(0.5, 4.0, len(steps))
        pool.update_priorities(steps, priorities)
        batch = pool.sample(40_000, rng=1, max_age=4, prioritized=True, alpha=1.0, beta=1.0)
    young = steps >= 210 * 7  # versions 210..214
    drawn = batch["step_id"]
    assert batch["policy_version"].min() >= 210 and drawn.min() >= 210 * 7
    # The slow reference: P(i) = p_i / sum of the young rows' p, nothing for the older ones.
    reference = priorities[young] / priorities[young].sum()
    observed = np.bincount(drawn - 210 * 7, minlength=young.sum())
    assert chi_square_ok(observed, reference * len(drawn))
    expected_weights = (young.sum() * reference[drawn - 210 * 7]) ** -1.0
    np.testing.assert_allclose(batch["weights"], expected_weights / expected_weights.max(), rtol=1e-5)


@pytest.mark.parametrize("low, high", [(20, 26), (13, 19), (10, 26), (15, 17)])
def test_a_prioritized_draw_over_part_of_the_window_across_the_ring_edge(low, high):
    slots = 16
    priorities = np.random.default_rng(3).uniform(0.1, 2.0, slots).astype(np.float32)
    index = PriorityIndex(priorities, slots)
    index.sync(10, 26, 1.0)  # the whole window: steps 10..25 fill every slot once
    steps, probabilities = index.draw_range(np.random.default_rng(4), low, high, 30_000)
    assert steps.min() >= low and steps.max() < high
    weights = priorities[np.arange(low, high) % slots].astype(np.float64)
    reference = weights / weights.sum()
    assert chi_square_ok(np.bincount(steps - low, minlength=high - low), reference * len(steps))
    np.testing.assert_allclose(probabilities, reference[steps - low], rtol=1e-6)
    np.testing.assert_allclose(index.probabilities(steps, low, high), probabilities, rtol=1e-12)


@pytest.mark.parametrize("recency", [ExponentialRecency(40), ERE(3, 5, c_min=60)])
def test_n_step_with_recency_gives_the_n_step_values_of_the_same_rows(pool_path, recency):
    pool, model = _episode_pool(pool_path)
    recent = pool.sample(400, rng=2, n_step=3, gamma=0.9, recency=recency)
    plain = pool.sample(400, n_step=3, gamma=0.9, sampler=FixedSteps(recent["step_id"]))
    for name in plain:
        np.testing.assert_array_equal(recent[name], plain[name], err_msg=name)
    check_n_step(recent, model, 3, 0.9)
    assert np.median(pool.next_step_id - recent["step_id"]) < 60  # the recent rows, indeed
    pool.close()


def test_a_user_sampler_that_draws_even_step_ids(pool_path):
    pool, model = _episode_pool(pool_path)
    assert isinstance(EvenSteps(), expstore.Sampler)
    batch = pool.sample(6000, rng=5, sampler=EvenSteps())
    low, high = pool.first_step_id, pool.next_step_id
    assert (batch["step_id"] % 2 == 0).all()
    assert set(np.unique(batch["step_id"])) == set(range(low + low % 2, high, 2))
    n_step = pool.sample(300, rng=5, sampler=EvenSteps(), n_step=2, gamma=0.5)
    assert (n_step["step_id"] % 2 == 0).all()
    check_n_step(n_step, model, 2, 0.5)
    pool.close()
    with expstore.open(pool_path, "r") as reader:  # a reader draws from its committed window too
        assert (reader.sample(500, rng=6, sampler=AgeWindow(40, "steps", within=EvenSteps()))["step_id"] % 2
                == 0).all()


def test_a_user_sampler_sees_a_read_only_view_of_the_window(pool_path):
    pool, _ = _episode_pool(pool_path)
    seen = []

    class Newest:
        def draw(self, rng, view, count):
            seen.append(view)
            return np.full(count, view.head - 1, np.int64)

    batch = pool.sample(8, sampler=Newest())
    view = seen[0]
    assert isinstance(view, WindowView) and (view.tail, view.head) == (pool.first_step_id, pool.next_step_id)
    assert view.episode_id is not None and view.next_delta is not None and view.priorities is not None
    assert (batch["step_id"] == pool.next_step_id - 1).all()
    with pytest.raises(AttributeError):
        view.tail = 0  # frozen
    pool.close()


def test_refused_combinations_and_objects_that_are_not_samplers(pool_path):
    make_pool(pool_path, 100, 100)
    with expstore.open(pool_path, "r") as pool:
        with pytest.raises(InvalidArgumentError, match="sampler= replaces"):
            pool.sample(4, sampler=Uniform(), max_age=3)
        with pytest.raises(InvalidArgumentError, match="not a sampler"):
            pool.sample(4, sampler="uniform")
        with pytest.raises(InvalidArgumentError, match="combine with prioritized"):
            pool.sample(4, prioritized=True, recency=EvenSteps())
        with pytest.raises(InvalidArgumentError):
            AgeWindow(-1)
        with pytest.raises(InvalidArgumentError):
            Prioritized(alpha=-1.0)
