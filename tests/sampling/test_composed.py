"""Compositions of strategies against a slow reference, on random pools of both backends:
prioritized with recency (ERE or exponential), both within ``max_age``, and n-step returns and
sequences drawn with them.

The reference computes every row's probability from its priority and age (O(pool)); the draws
are checked with a chi-square test at a fixed seed, the weights exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import expstore
from expstore import ERE, AgeWindow, ExponentialRecency, Prioritized
from expstore.errors import InvalidArgumentError
from expstore.sampling.composed import PrioritizedRecency
from tests.sampling.test_recency import SCHEMA, chi_square_ok, make_pool
from tests.sampling.test_strategies import FixedSteps, _episode_pool

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
SUFFIX = {"hdf5": ".h5", "zarr": ".zarr"}
DRAWS = 20_000


def reference(priorities: np.ndarray, alpha: float, recency, max_age: int | None = None) -> np.ndarray:
    """P(row) over the window's rows (oldest first) for prioritized replay with ``recency``."""
    rows = len(priorities)
    ages = np.arange(rows)[::-1]
    weight = np.asarray(priorities, np.float64) ** alpha
    if max_age is not None:
        weight = np.where(ages <= max_age, weight, 0.0)
        rows = min(rows, max_age + 1)
    if isinstance(recency, ERE):
        weight = np.where(ages < recency.window_rows(rows), weight, 0.0)
    else:
        weight = weight * 0.5 ** (ages / recency.half_life)
    return weight / weight.sum()


def population(priorities: np.ndarray, recency, max_age: int | None = None) -> np.ndarray:
    """Which rows the priority correction counts: the rows the recency strategy draws from."""
    ages = np.arange(len(priorities))[::-1]
    inside = np.ones(len(priorities), bool) if max_age is None else ages <= max_age
    if isinstance(recency, ERE):
        inside &= ages < recency.window_rows(int(inside.sum()))
    return inside


def counts_fit(drawn: np.ndarray, probabilities: np.ndarray) -> bool:
    """A chi-square test over bins of at least 20 expected draws; no draw where P is 0."""
    observed = np.bincount(drawn, minlength=len(probabilities))
    if observed[probabilities == 0].any():
        return False
    expected = probabilities * len(drawn)
    order = np.flatnonzero(probabilities > 0)
    bins_observed, bins_expected, o, e = [], [], 0.0, 0.0
    for i in order:
        o, e = o + observed[i], e + expected[i]
        if e >= 20:
            bins_observed.append(o)
            bins_expected.append(e)
            o = e = 0.0
    if len(bins_observed) < 2:
        return True
    bins_observed[-1] += o
    bins_expected[-1] += e
    return chi_square_ok(np.array(bins_observed), np.array(bins_expected))


recencies = st.one_of(
    st.builds(ExponentialRecency, st.sampled_from([0.5, 1.0, 3.0, 17.5, 400.0])),
    st.builds(lambda k, K, c_min: ERE(min(k, K), K, c_min=c_min), st.integers(1, 6), st.integers(1, 6),
              st.integers(1, 60)),
)


@pytest.mark.parametrize("backend", sorted(SUFFIX))
@SETTINGS
@given(capacity=st.integers(20, 200), count=st.integers(1, 400), alpha=st.sampled_from([0.0, 0.6, 1.0]),
       recency=recencies, max_age=st.one_of(st.none(), st.integers(0, 80)), seed=st.integers(0, 2**16),
       zero_share=st.sampled_from([0.0, 0.5, 1.0]))
@example(capacity=20, count=3, alpha=0.6, recency=ExponentialRecency(0.5), max_age=0, seed=1, zero_share=0.5)
@example(capacity=50, count=40, alpha=1.0, recency=ExponentialRecency(3.0), max_age=4, seed=3, zero_share=1.0)
def test_prioritized_with_recency_draws_in_proportion_to_priority_times_recency(
        tmp_path_factory, backend, capacity, count, alpha, recency, max_age, seed, zero_share):
    path = make_pool(str(tmp_path_factory.mktemp("c") / ("pool" + SUFFIX[backend])), count, capacity)
    rng = np.random.default_rng(seed)
    with expstore.open(path, "a") as pool:
        low, high = pool.first_step_id, pool.next_step_id
        priorities = rng.uniform(0.1, 5.0, high - low) * (rng.random(high - low) >= zero_share)
        pool.update_priorities(np.arange(low, high), priorities)
    if not (priorities[population(priorities, recency, max_age)] > 0).any():
        # Every priority the strategy draws from is zero (all of them, or all the young rows that
        # max_age leaves): uniform among them, recency still counts.
        priorities = np.ones(high - low)
    expected = reference(priorities, alpha, recency, max_age)
    with expstore.open(path, "r") as pool:
        options = {} if max_age is None else {"max_age": max_age, "age_unit": "steps"}
        batch = pool.sample(DRAWS, rng=seed, prioritized=True, alpha=alpha, beta=0.5, recency=recency, **options)
    drawn = batch["step_id"] - low
    assert counts_fit(drawn, expected), (recency, max_age)
    inside = population(priorities, recency, max_age)
    correction = priorities ** alpha * inside
    p = correction[drawn] / correction.sum()
    weights = (inside.sum() * p) ** -0.5
    np.testing.assert_allclose(batch["weights"], weights / weights.max(), rtol=1e-5)


@pytest.mark.parametrize("recency", [ExponentialRecency(40), ERE(2, 5, c_min=50)])
def test_the_keywords_build_the_composed_strategy_and_the_object_gives_the_same_batch(pool_path, recency):
    make_pool(pool_path, 900, 600)
    with expstore.open(pool_path, "a") as pool:
        steps = np.arange(pool.first_step_id, pool.next_step_id)
        pool.update_priorities(steps, 1.0 + steps % 5)
        by_keywords = pool.sample(300, rng=4, prioritized=True, alpha=0.7, beta=0.3, recency=recency, max_age=200,
                                  age_unit="steps")
        inner = PrioritizedRecency(Prioritized(0.7, 0.3), recency)
        by_object = pool.sample(300, rng=4, sampler=AgeWindow(200, "steps", within=inner))
    for name in by_keywords:
        np.testing.assert_array_equal(by_keywords[name], by_object[name], err_msg=name)


@pytest.mark.parametrize("options", [
    {"prioritized": True},
    {"prioritized": True, "recency": ExponentialRecency(20)},
    {"prioritized": True, "recency": ERE(1, 3, c_min=30), "max_age": 100, "age_unit": "steps"},
    {"recency": ExponentialRecency(10)},
    {"prioritized": True, "recency": ExponentialRecency(20), "max_age": 150, "age_unit": "steps", "frame_stack": 3},
])
def test_n_step_with_prioritized_and_recency_gives_the_n_step_values_of_the_drawn_rows(pool_path, options):
    pool, _model = _episode_pool(pool_path)
    with pool:
        steps = np.arange(pool.first_step_id, pool.next_step_id)
        pool.update_priorities(steps, 1.0 + steps % 3)
        batch = pool.sample(200, rng=9, n_step=3, gamma=0.9, **options)
        stacking = {"frame_stack": options["frame_stack"]} if "frame_stack" in options else {}
        same_rows = pool.sample(200, rng=0, n_step=3, gamma=0.9, sampler=FixedSteps(batch["step_id"]), **stacking)
    for name in same_rows:
        np.testing.assert_array_equal(batch[name], same_rows[name], err_msg=name)
    assert ("weights" in batch) == bool(options.get("prioritized"))


@pytest.mark.parametrize("options", [
    {"prioritized": True},
    {"recency": ExponentialRecency(15)},
    {"prioritized": True, "recency": ExponentialRecency(15), "max_age": 120, "age_unit": "steps"},
    {"sampler": AgeWindow(50, "steps", within=PrioritizedRecency(Prioritized(), ERE(1, 2, c_min=10)))},
    {"prioritized": True, "recency": ERE(1, 2, c_min=10), "frame_stack": 2},
])
def test_sequences_start_where_the_strategy_draws(pool_path, options):
    pool, _model = _episode_pool(pool_path)
    with pool:
        steps = np.arange(pool.first_step_id, pool.next_step_id)
        pool.update_priorities(steps, 0.5 + steps % 4)
        sequences = pool.sample_sequences(150, 4, rng=3, **options)
        rows = pool.sample(150, rng=3, **options)
        stacking = {"frame_stack": options["frame_stack"]} if "frame_stack" in options else {}
        uniform_windows = pool.sample_sequences(150, 4, rng=0, sampler=FixedSteps(sequences["step_id"][:, 0]),
                                                **stacking)
    np.testing.assert_array_equal(sequences["step_id"][:, 0], rows["step_id"])
    for name in uniform_windows:
        np.testing.assert_array_equal(sequences[name], uniform_windows[name], err_msg=name)
    if "weights" in rows:
        np.testing.assert_array_equal(sequences["weights"], rows["weights"])
    else:
        assert "weights" not in sequences


def test_combinations_without_meaning_say_why(pool_path):
    make_pool(pool_path, 50, 50, schema=SCHEMA)
    with expstore.open(pool_path, "r") as pool:
        with pytest.raises(InvalidArgumentError, match="combine with prioritized"):
            pool.sample(4, prioritized=True, recency=FixedSteps([1, 2, 3, 4]))
        with pytest.raises(InvalidArgumentError, match="sampler= replaces"):
            pool.sample_sequences(4, 2, sampler=expstore.Uniform(), prioritized=True)
    with pytest.raises(InvalidArgumentError, match="Prioritized"):
        PrioritizedRecency("yes", ExponentialRecency(3))  # type: ignore[arg-type]
