"""Age of data and recency-weighted sampling: max_age windows, ERE, exponential recency, stats.

Distributions are checked with a chi-square test at a fixed seed against the formulas of
expstore/sampling/recency.py (both backends); max_age is checked never to return an older row, also
while a writer process appends and wraps the ring.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import expstore
from expstore.errors import EmptyStoreError, InvalidArgumentError, SchemaError
from expstore.sampling.recency import ERE, ERESchedule, ExponentialRecency
from expstore.sampling.uniform import Uniform
from tests.helpers.cli import run, run_json

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
VERSION_EVERY = 7  # rows per policy version in the test pools
SCHEMA = {"obs": ((2,), "float32"), "reward": ((), "float32"), "policy_version": ((), "int64")}


def rows(step_ids) -> dict[str, np.ndarray]:
    steps = np.asarray(step_ids, dtype=np.int64)
    return {"obs": np.stack([steps, -steps], axis=1).astype(np.float32), "reward": steps.astype(np.float32),
            "policy_version": steps // VERSION_EVERY}


def make_pool(path: str, count: int, capacity: int, schema: dict = SCHEMA) -> str:
    with expstore.open(path, "w", capacity=capacity, schema=schema) as pool:
        batch = rows(np.arange(count))
        pool.extend({name: batch[name] for name in schema})
    return path


def chi_square_ok(observed: np.ndarray, expected: np.ndarray) -> bool:
    """True unless the counts reject ``expected`` at p = 0.001 (Wilson-Hilferty critical value)."""
    statistic = float(((observed - expected) ** 2 / expected).sum())
    df = len(observed) - 1
    critical = df * (1 - 2 / (9 * df) + 3.09 * math.sqrt(2 / (9 * df))) ** 3
    return statistic < critical


def binned(ages: np.ndarray, probabilities: np.ndarray, draws: int, min_expected: float = 20.0):
    """Observed and expected counts in consecutive age bins of at least ``min_expected``."""
    expected_per_age = probabilities * draws
    edges, total = [0], 0.0
    for age, value in enumerate(expected_per_age):
        total += value
        if total >= min_expected:
            edges.append(age + 1)
            total = 0.0
    edges[-1] = len(probabilities)
    observed = np.add.reduceat(np.bincount(ages, minlength=len(probabilities)), edges[:-1])
    return observed, np.add.reduceat(expected_per_age, edges[:-1])


# ---------------------------------------------------------------------- formulas
def test_ere_window_follows_the_paper_formula():
    for k, big_k, rows_now in [(1, 1000, 1_000_000), (500, 1000, 1_000_000), (1000, 1000, 1_000_000),
                               (100, 200, 20_000), (200, 200, 3_000)]:
        expected = max(rows_now * 0.996 ** (k * 1000 / big_k), 5000)
        assert ERE(k, big_k).window_rows(rows_now) == min(rows_now, int(expected))
    assert ERE(1, 1, eta=1.0, c_min=1).window_rows(777) == 777  # eta = 1: uniform


def test_ere_schedule_counts_k_through_phases():
    schedule = ERESchedule(K=3, eta=0.9, c_min=2)
    assert [schedule.next().k for _ in range(7)] == [1, 2, 3, 1, 2, 3, 1]
    schedule.start_phase(K=2)
    assert [(e.k, e.K) for e in (schedule.next(), schedule.next(), schedule.next())] == [(1, 2), (2, 2), (1, 2)]
    copy = ERESchedule(K=5)
    copy.load_state_dict(schedule.state_dict())
    assert copy.next() == schedule.next()


@pytest.mark.parametrize("bad", [{"k": 0, "K": 5}, {"k": 6, "K": 5}, {"k": 1, "K": 0}, {"k": 1, "K": 5, "eta": 1.5},
                                 {"k": 1, "K": 5, "c_min": 0}, {"k": 1.5, "K": 5}])
def test_ere_rejects_bad_arguments(bad):
    with pytest.raises(InvalidArgumentError):
        ERE(**bad)


def test_exponential_probabilities_halve_every_half_life():
    p = ExponentialRecency(10).probabilities(100)
    assert p.sum() == pytest.approx(1.0)
    assert p[10] / p[0] == pytest.approx(0.5)
    with pytest.raises(InvalidArgumentError):
        ExponentialRecency(0)


# ---------------------------------------------------------------------- distributions, both backends
def test_ere_draws_uniformly_from_the_newest_c_k_rows(pool_path):
    make_pool(pool_path, 3000, 2500)  # the ring evicted the oldest 500
    ere = ERE(k=150, K=200, eta=0.996, c_min=100)
    window = ere.window_rows(2500)
    assert window == int(2500 * 0.996 ** 750)
    with expstore.open(pool_path, "r") as pool:
        steps = pool.sample(20_000, rng=1, recency=ere)["step_id"]
    assert steps.min() >= 3000 - window and steps.max() == 2999
    observed = np.bincount(steps - (3000 - window), minlength=window)
    starts = np.arange(0, window, 10)  # 10-row bins, the last one shorter
    sizes = np.diff(np.append(starts, window))
    assert chi_square_ok(np.add.reduceat(observed, starts), 20_000 * sizes / window)


def test_exponential_recency_matches_its_weights(pool_path):
    make_pool(pool_path, 2000, 2000)
    how = ExponentialRecency(half_life=40)
    with expstore.open(pool_path, "r") as pool:
        ages = 1999 - pool.sample(30_000, rng=2, recency=how)["step_id"]
    observed, expected = binned(ages, how.probabilities(2000), 30_000)
    assert chi_square_ok(observed, expected)
    assert observed.sum() == 30_000


def test_max_age_in_steps_is_uniform_over_the_newest_rows(pool_path):
    make_pool(pool_path, 1500, 1000)
    with expstore.open(pool_path, "r") as pool:
        steps = pool.sample(12_000, rng=3, max_age=59, age_unit="steps")["step_id"]
    assert steps.min() >= 1440 and steps.max() <= 1499
    assert chi_square_ok(np.bincount(steps - 1440, minlength=60), np.full(60, 200.0))


def test_max_age_in_policy_versions(pool_path):
    make_pool(pool_path, 1500, 1000)  # newest version 1499 // 7 = 214
    with expstore.open(pool_path, "a") as pool:
        batch = pool.sample(5000, rng=4, max_age=3)  # "auto": the pool stamps versions
        assert batch["policy_version"].min() == 211 and batch["policy_version"].max() == 214
        assert set(np.unique(batch["step_id"])) == set(range(211 * 7, 1500))
        older = pool.sample(2000, rng=4, max_age=2, current_version=216)["policy_version"]
        assert older.min() == 214
        with pytest.raises(EmptyStoreError, match="raise max_age"):
            pool.sample(8, max_age=2, current_version=300)


def test_recency_within_max_age_and_with_n_step(pool_path):
    make_pool(pool_path, 1500, 1000)
    with expstore.open(pool_path, "r") as pool:
        batch = pool.sample(4000, rng=5, max_age=100, age_unit="steps", recency=ERE(10, 10, c_min=30))
        assert batch["step_id"].min() == 1470  # ERE's window (30 rows) within the 101 allowed
        n_step = pool.sample(500, rng=5, max_age=20, age_unit="steps", n_step=3, gamma=0.5)
        assert n_step["step_id"].min() >= 1479 and "discount" in n_step
        last_full = n_step["step_id"] <= 1497  # three rows to sum (no episode ends in this pool)
        expected = n_step["step_id"] * 1.75 + 1.0  # r + 0.5 (r + 1) + 0.25 (r + 2), r = step id
        assert np.allclose(n_step["reward"][last_full], expected[last_full])
        assert set(np.unique(pool.sample(3000, rng=5, recency=ExponentialRecency(2), max_age=4,
                                         age_unit="steps")["step_id"])) <= set(range(1495, 1500))


def test_same_seed_same_batch(pool_path):
    make_pool(pool_path, 800, 800)
    with expstore.open(pool_path, "r") as pool:
        for options in ({"recency": ERE(3, 9, c_min=50)}, {"recency": ExponentialRecency(30)}, {"max_age": 5}):
            first, again = pool.sample(64, rng=9, **options), pool.sample(64, rng=9, **options)
            assert np.array_equal(first["step_id"], again["step_id"]), options
            assert not np.array_equal(first["step_id"], pool.sample(64, rng=10, **options)["step_id"])


def test_versions_out_of_order_are_never_returned_older(pool_path):
    versions = np.array([5, 0, 6, 1, 7, 2, 8, 3, 9, 4] * 20, np.int64)  # not monotone
    with expstore.open(pool_path, "w", capacity=500, schema={"policy_version": ((), "int64")}) as pool:
        pool.extend({"policy_version": versions})
        got = pool.sample(3000, rng=0, max_age=2)["policy_version"]
    assert got.min() >= 2 and got.size == 3000  # newest row's version is 4


def test_bad_age_arguments(pool_path):
    make_pool(pool_path, 100, 100, schema={"obs": ((2,), "float32")})
    with expstore.open(pool_path, "r") as pool:
        assert pool.sample(500, rng=0, max_age=9)["step_id"].min() >= 90  # auto: steps without versions
        with pytest.raises(SchemaError, match="policy_version"):
            pool.sample(4, max_age=3, age_unit="policy_versions")
        with pytest.raises(InvalidArgumentError):
            pool.sample(4, max_age=3, age_unit="hours")
        with pytest.raises(InvalidArgumentError):
            pool.sample(4, max_age=-1)
        with pytest.raises(InvalidArgumentError):
            pool.sample(4, recency="newest")
        with pytest.raises(InvalidArgumentError, match="combine with prioritized"):  # a user's recency object
            pool.sample(4, recency=Uniform(), prioritized=True)


# ---------------------------------------------------------------------- concurrent writes
WRITER = textwrap.dedent("""
    import os
    import sys
    import numpy as np
    import expstore
    from test_recency import rows

    path, stop = sys.argv[1], sys.argv[2]
    with expstore.open(path, "a", commit_every=64, commit_interval_s=0.01, fsync=False) as pool:
        step = pool.next_step_id
        print("READY", flush=True)
        while not os.path.exists(stop):  # until the reader has seen enough, however slow it was
            pool.extend(rows(np.arange(step, step + 16)))
            step += 16
    print("DONE", flush=True)
""")


@pytest.mark.parametrize("unit", ["policy_versions", "steps"])
def test_max_age_never_older_while_a_writer_appends(pool_path, unit):
    make_pool(pool_path, 300, 1000)
    stop = pool_path + ".stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, pool_path, stop], cwd=TESTS_DIR,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "READY"
        checked, heads = 0, set()
        deadline = time.monotonic() + 60
        with expstore.open(pool_path, "r") as pool:
            while (checked < 20 or len(heads) <= 3) and time.monotonic() < deadline:
                head = pool.next_step_id  # the sample's snapshot is at least this new
                batch = pool.sample(256, rng=checked, max_age=10, age_unit=unit)
                newest = head - 1
                limit = newest // VERSION_EVERY - 10 if unit == "policy_versions" else None
                expected = rows(batch["step_id"])
                assert np.array_equal(batch["obs"], expected["obs"])  # no torn or overwritten row
                if unit == "policy_versions":
                    assert batch["policy_version"].min() >= limit
                else:
                    assert batch["step_id"].min() >= newest - 10
                checked += 1
                heads.add(head)
        assert len(heads) > 3  # the writer really moved while the reader sampled
        assert writer.poll() is None  # it wrote the whole time: the stop below ends it
    finally:
        open(stop, "w").close()
        try:
            writer.wait(timeout=30)
        finally:
            writer.kill()


# ---------------------------------------------------------------------- stats
def test_stats_age_distribution(pool_path):
    make_pool(pool_path, 1400, 1000)  # rows 400..1399, versions 57..199
    with expstore.open(pool_path, "r") as pool:
        stats = pool.stats()
    assert stats["rows"] == 1000 and stats["first_step_id"] == 400
    steps, versions = stats["age"]["steps"], stats["age"]["policy_versions"]
    assert (steps["min"], steps["median"], steps["max"], steps["mean"]) == (0, 499, 999, 499.5)
    assert sum(steps["histogram"]["counts"]) == 1000
    ages = 199 - np.arange(400, 1400) // VERSION_EVERY
    assert versions["newest_version"] == 199
    assert (versions["min"], versions["max"]) == (0, int(ages.max()))
    assert versions["mean"] == pytest.approx(ages.mean())
    assert versions["median"] == int(np.sort(ages)[499])
    assert sum(versions["histogram"]["counts"]) == 1000


def test_cli_stats_reports_age(pool_path):
    make_pool(pool_path, 300, 300)
    result = run_json("stats", pool_path)
    assert result["age"]["policy_versions"]["max"] == 299 // VERSION_EVERY
    assert result["age"]["steps"]["max"] == 299


# ---------------------------------------------------------------------- the reference trainer
def test_trainer_ere_flag_samples_with_the_schedule(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("gymnasium")
    import json

    from expstore.core.store import Store
    from expstore.training.main import main

    seen = []
    original = Store.sample

    def recording_sample(self, *args, **kwargs):
        seen.append(kwargs.get("recency"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Store, "sample", recording_sample)
    run_dir = tmp_path / "ere"
    assert main(["--run-dir", str(run_dir), "--total-steps", "140", "--learning-starts", "100", "--ere",
                 "--ere-c-min", "50", "--hidden-units", "16", "--batch-size", "16", "--eval-every", "1000",
                 "--eval-episodes", "1"]) == 0
    with open(run_dir / "config.json", encoding="utf-8") as stream:
        config = json.load(stream)
    assert config["ere"] is True and config["ere_c_min"] == 50
    assert len(seen) >= 40 and all(isinstance(e, ERE) for e in seen)
    assert [e.k for e in seen[:3]] == [1, 2, 3] and seen[0].K == 200  # K: one Pendulum episode of updates
    with expstore.open(run_dir / "pool.h5", "r") as pool:
        assert pool.stats()["age"]["policy_versions"]["newest_version"] >= 39


def test_readme_recency_example_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    match = re.search(r"<!-- recency -->\s*```python\n(.*?)```", text, re.DOTALL)
    assert match, "README.md lost its code block marked with <!-- recency -->"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(match.group(1), "README recency", "exec"), namespace)  # the README's own code
    assert namespace["fresh"]["policy_version"].min() >= 94
    assert namespace["newest"]["step_id"].min() >= 4000
    assert namespace["schedule"].k == 1
    assert namespace["ere"]["step_id"].min() >= 5000 - ERE(1, 1000, 0.996, 500).window_rows(5000)
    stats = namespace["stats"]
    assert stats["age"]["policy_versions"]["max"] == 99
    assert stats["duplicates"]["observation_clusters"]["distinct"] == 16


def test_cli_sample_max_age(pool_path):
    make_pool(pool_path, 300, 300)
    batch = run_json("sample", pool_path, "-n", "64", "--seed", "0", "--max-age", "2")
    assert min(batch["policy_version"]) >= 299 // VERSION_EVERY - 2
    batch = run_json("sample", pool_path, "-n", "64", "--max-age", "4", "--age-unit", "steps")
    assert min(batch["step_id"]) >= 295
    schema = {"obs": ((2,), "float32")}
    other = make_pool(pool_path.replace("pool", "plain"), 10, 10, schema=schema)
    failed = run("sample", other, "--max-age", "2", "--age-unit", "policy_versions", ok=False)
    assert failed.exit_code == 1 and "policy_version" in failed.output and "Traceback" not in failed.output


def test_max_age_draws_exactly_the_young_rows_of_random_pools(tmp_path, backend):
    """Random capacities, lengths and non-decreasing versions: the rows drawn are exactly those
    at most max_age old (every eligible row shows up in a large batch, no other does)."""
    rng = np.random.default_rng(7)
    suffix = ".h5" if backend == "hdf5" else ".zarr"
    for case in range(6):
        capacity, count = int(rng.integers(20, 200)), int(rng.integers(1, 400))
        versions = np.cumsum(rng.integers(0, 3, size=count)).astype(np.int64)
        path = str(tmp_path / f"p{case}{suffix}")
        with expstore.open(path, "w", capacity=capacity, schema={"policy_version": ((), "int64")}) as pool:
            pool.extend({"policy_version": versions})
        kept = versions[max(0, count - capacity):]
        with expstore.open(path, "r") as pool:
            for max_age in (0, 1, 5):
                drawn = pool.sample(3000, rng=case, max_age=max_age)
                eligible = np.flatnonzero(kept >= kept[-1] - max_age) + max(0, count - capacity)
                assert set(drawn["step_id"].tolist()) == set(eligible.tolist()), (case, max_age)
