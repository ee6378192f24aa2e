"""expstore.mix against a slow reference on random pools of both backends: the exact split of
every batch, the multinomial split, per-source options (n-step, prioritized, max_age, frame
stacks), annealed weights, read-only sources, the torch feed and bad inputs."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import expstore
from expstore import ExponentialRecency
from expstore.errors import EmptyStoreError, InvalidArgumentError, ReadOnlyError
from expstore.mixing.mix import largest_remainders
from tests.helpers.episode_model import SCHEMA, Model
from tests.sampling.test_recency import chi_square_ok

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
SUFFIX = {"hdf5": ".h5", "zarr": ".zarr"}


def episode_pool(path: str, rows: int, capacity: int, seed: int = 0) -> str:
    """A pool of episodes 1 to 9 rows long (values from tests/helpers/episode_model.py)."""
    model = Model(capacity)
    rng = np.random.default_rng(seed)
    with expstore.open(path, "w", capacity=capacity, schema=SCHEMA) as pool:
        for _ in range(rows):
            pool.append(model.add(0, int(rng.choice([0, 0, 0, 1, 2])), float(rng.integers(-3, 4))).values())
    return path


def reference_split(total: int, weights: list[float]) -> list[int]:
    """Largest remainders in exact rational arithmetic (ties to the earlier source)."""
    p = [Fraction(w).limit_denominator(10**9) / sum(Fraction(v).limit_denominator(10**9) for v in weights)
         for w in weights]
    quotas = [total * x for x in p]
    counts = [int(q) for q in quotas]
    order = sorted(range(len(p)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:total - sum(counts)]:
        counts[i] += 1
    return counts


@pytest.mark.parametrize("backend", sorted(SUFFIX))
@SETTINGS
@given(sizes=st.lists(st.tuples(st.integers(5, 120), st.integers(5, 80)), min_size=1, max_size=3),
       weights=st.lists(st.sampled_from([0.0, 0.1, 0.25, 1 / 3, 0.5, 1.0, 2.0, 7.0]), min_size=3, max_size=3),
       batch_size=st.integers(1, 300), seed=st.integers(0, 2**16),
       options=st.sampled_from([{}, {"n_step": 3, "gamma": 0.9}, {"max_age": 10, "age_unit": "steps"},
                                {"prioritized": True}, {"recency": ExponentialRecency(5.0)},
                                {"frame_stack": 3}]))
def test_every_batch_is_split_exactly_and_each_source_samples_with_the_options(
        tmp_path_factory, backend, sizes, weights, batch_size, seed, options):
    weights = weights[:len(sizes)]
    if sum(weights) == 0:
        weights[0] = 1.0
    folder = tmp_path_factory.mktemp("m")
    paths = [episode_pool(str(folder / f"p{i}{SUFFIX[backend]}"), rows, capacity, seed=i)
             for i, (rows, capacity) in enumerate(sizes)]
    pools = [expstore.open(path, "r") for path in paths]
    try:
        mixed = expstore.mix(dict(zip(pools, weights, strict=True)))
        batch = mixed.sample(batch_size, rng=seed, **options)
        counts = reference_split(batch_size, weights)
        assert np.bincount(batch["source"], minlength=len(pools)).tolist() == counts
        generator = np.random.default_rng(seed)  # the reference: each pool's own sample, in order
        start = 0
        for index, (pool, count) in enumerate(zip(pools, counts, strict=True)):
            if not count:
                continue
            expected = pool.sample(count, rng=generator, **options)
            rows = slice(start, start + count)
            assert (batch["source"][rows] == index).all()
            for name, values in expected.items():
                np.testing.assert_array_equal(batch[name][rows], values, err_msg=name)
            start += count
        assert mixed.batches == 1
    finally:
        for pool in pools:
            pool.close()


def test_largest_remainders_always_sums_to_the_batch():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.dirichlet(np.ones(int(rng.integers(1, 6))))
        total = int(rng.integers(0, 1000))
        counts = largest_remainders(total, p)
        assert counts.sum() == total and (np.abs(counts - total * p) < 1).all()


def test_largest_remainders_agrees_with_rational_arithmetic_on_ties():
    # 94 rows at 1/3 : 1 : 2 are quotas 9.4, 28.2, 56.4 exactly: the tie goes to the earlier
    # source, though normalising in floats makes the third remainder a few ulps larger.
    for weights in ([1 / 3, 1.0, 2.0], [0.1, 0.25, 7.0], [1 / 3, 1 / 3, 1 / 3], [0.1, 0.1, 0.1, 0.7]):
        for total in range(0, 301):
            p = np.array(weights) / np.sum(weights)
            assert largest_remainders(total, p).tolist() == reference_split(total, weights), (weights, total)


def test_multinomial_split_matches_the_weights_over_many_batches(tmp_path, backend):
    a = episode_pool(str(tmp_path / f"a{SUFFIX[backend]}"), 50, 50)
    b = episode_pool(str(tmp_path / f"b{SUFFIX[backend]}"), 50, 50, seed=1)
    with expstore.open(a, "r") as pool_a, expstore.open(b, "r") as pool_b:
        mixed = expstore.mix({pool_a: 0.3, pool_b: 0.7}, exact=False)
        rng = np.random.default_rng(5)
        counts = np.array([np.bincount(mixed.sample(10, rng=rng)["source"], minlength=2)[0] for _ in range(400)])
        assert len(set(counts.tolist())) > 3  # not the exact split
        observed = np.bincount(counts, minlength=11)
        from math import comb
        expected = np.array([comb(10, k) * 0.3 ** k * 0.7 ** (10 - k) for k in range(11)]) * 400
        keep = expected >= 5
        assert chi_square_ok(np.append(observed[keep], observed[~keep].sum()),
                             np.append(expected[keep], expected[~keep].sum()))


def test_per_source_options_and_the_filled_columns(tmp_path):
    offline = episode_pool(str(tmp_path / "offline.h5"), 200, 200)
    online = episode_pool(str(tmp_path / "online.zarr"), 90, 60, seed=2)
    with expstore.open(offline, "r") as old, expstore.open(online, "a") as new:
        steps = np.arange(new.first_step_id, new.next_step_id)
        new.update_priorities(steps, 1.0 + steps % 4)
        mixed = expstore.mix({old: 1, new: 3})
        batch = mixed.sample(64, rng=1, n_step=2, per_source={new: {"prioritized": True, "max_age": 30,
                                                                    "age_unit": "steps"}})
        generator = np.random.default_rng(1)
        first = old.sample(16, rng=generator, n_step=2)
        second = new.sample(48, rng=generator, n_step=2, prioritized=True, max_age=30, age_unit="steps")
        for name in first:
            np.testing.assert_array_equal(batch[name][:16], first[name], err_msg=name)
            np.testing.assert_array_equal(batch[name][16:], second[name], err_msg=name)
        assert (batch["weights"][:16] == 1.0).all()
        np.testing.assert_array_equal(batch["weights"][16:], second["weights"])
        assert (batch["step_id"][16:] >= new.next_step_id - 31).all()
        by_index = mixed.sample(64, rng=1, n_step=2, per_source={1: {"prioritized": True, "max_age": 30,
                                                                     "age_unit": "steps"}})
        assert by_index["source"].tolist() == batch["source"].tolist()


def test_annealed_weights_follow_the_batch_count_and_resume(tmp_path):
    a = episode_pool(str(tmp_path / "a.h5"), 40, 40)
    b = episode_pool(str(tmp_path / "b.h5"), 40, 40, seed=3)
    with expstore.open(a, "r") as offline, expstore.open(b, "r") as online:
        schedule = {offline: lambda batches: max(0.0, 1.0 - batches / 4), online: lambda batches: min(1.0, batches / 4)}
        mixed = expstore.mix(schedule)
        shares = [np.bincount(mixed.sample(8, rng=i)["source"], minlength=2).tolist() for i in range(6)]
        assert shares == [[8, 0], [6, 2], [4, 4], [2, 6], [0, 8], [0, 8]]
        resumed = expstore.mix(schedule)
        resumed.load_state_dict({"batches": 2})
        assert np.bincount(resumed.sample(8, rng=0)["source"], minlength=2).tolist() == [4, 4]
        assert mixed.state_dict() == {"batches": 6}


def test_read_only_sources_stay_read_only(tmp_path):
    offline = episode_pool(str(tmp_path / "offline.h5"), 100, 100)
    online = episode_pool(str(tmp_path / "online.h5"), 100, 100, seed=4)
    before = {name: os.stat(os.path.join(tmp_path, name)).st_mtime_ns for name in os.listdir(tmp_path)}
    with expstore.open(offline, "r") as old, expstore.open(online, "a") as new:
        mixed = expstore.mix({old: 0.5, new: 0.5})
        batch = mixed.sample(32, rng=0, prioritized=True)
        assert mixed.update_priorities(batch, np.full(32, 2.0)) == 16  # only the online rows
        with pytest.raises(ReadOnlyError):
            old.update_priorities(batch["step_id"][:1], [1.0])
    after = {name: os.stat(os.path.join(tmp_path, name)).st_mtime_ns for name in os.listdir(tmp_path)}
    assert {k: v for k, v in after.items() if k.startswith("offline")} == \
        {k: v for k, v in before.items() if k.startswith("offline")}


def test_the_torch_feed_prefetches_mixed_batches(tmp_path):
    torch_feed = pytest.importorskip("expstore.integrations.torch_feed")
    a = episode_pool(str(tmp_path / "a.h5"), 60, 60)
    b = episode_pool(str(tmp_path / "b.zarr"), 60, 60, seed=5)
    with expstore.open(a, "r") as offline, expstore.open(b, "r") as online:
        mixed = expstore.mix({offline: 0.5, online: 0.5})
        rng = np.random.default_rng(0)
        with torch_feed.Prefetcher(lambda: mixed.sample(32, rng=rng), depth=2) as batches:
            batch = next(batches)
        assert batch["source"].tolist() == [0] * 16 + [1] * 16 and batch["obs"].shape == (32, 2)


def test_bad_mixes_say_what_is_wrong(tmp_path):
    a = episode_pool(str(tmp_path / "a.h5"), 20, 20)
    with expstore.open(a, "r") as pool, expstore.open(str(tmp_path / "empty.h5"), "w", capacity=5,
                                                        schema=SCHEMA) as empty:
        for bad, match in [({}, "at least one pool"), ({"a.h5": 1.0}, "not an open pool"),
                           ({pool: -1.0}, "numbers >= 0"), ({pool: "half"}, "numbers >= 0"),
                           ({pool: float("nan")}, "numbers >= 0"), ({pool: 0.0}, "every weight is 0")]:
            with pytest.raises(InvalidArgumentError, match=match):
                expstore.mix(bad).sample(4)
        with pytest.raises(InvalidArgumentError, match="exact"):
            expstore.mix({pool: 1.0}, exact="yes")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="positive int"):
            expstore.mix({pool: 1.0}).sample(0)
        with pytest.raises(InvalidArgumentError, match="per_source key"):
            expstore.mix({pool: 1.0}).sample(4, per_source={3: {}})
        with pytest.raises(InvalidArgumentError, match="cannot set rng"):
            expstore.mix({pool: 1.0}).sample(4, per_source={0: {"rng": 1}})
        with pytest.raises(InvalidArgumentError, match="callables"):
            expstore.mix({pool: lambda batches: -1}).sample(4)
        with pytest.raises(EmptyStoreError, match="mix source 1"):
            expstore.mix({pool: 1.0, empty: 1.0}).sample(4)
