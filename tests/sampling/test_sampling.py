"""Sampling strategies against the slow model (tests/helpers/episode_model.py), on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import expstore
from expstore.sampling.priorities import SumTree
from tests.helpers.episode_model import DERIVED_SCHEMA, SCHEMA, Model, ops, run_ops

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
SUFFIX = {"hdf5": ".h5", "zarr": ".zarr"}


def _pool(tmp_path_factory, backend, capacity, schema=SCHEMA, **options):
    path = str(tmp_path_factory.mktemp("s") / ("pool" + SUFFIX[backend]))
    expstore.open(path, "w", capacity=capacity, schema=schema, commit_every=5, **options).close()
    return path


def check_n_step(batch, model: Model, n: int, gamma: float) -> None:
    for i, step in enumerate(batch["step_id"]):
        expected = model.n_step(int(step), n, gamma)
        assert batch["reward"][i] == pytest.approx(expected["reward"], abs=1e-4)
        assert batch["discount"][i] == pytest.approx(expected["discount"], rel=1e-6)
        assert batch["terminated"][i] == expected["terminated"] and batch["truncated"][i] == expected["truncated"]
        assert (batch["next_obs"][i] == expected["next_obs"]).all()
        assert batch["obs"][i][0] == model.rows[int(step)].values()["obs"][0]


# Env 1 idles for longer than the ring (8 slots) while env 0 fills it: env 1's next row must not
# relink the slot its old row left, which now holds env 0's row 8 (found by hypothesis).
IDLE_ENV_OUTLIVES_THE_RING = [("append", (1, 0, 0)), ("extend", [(0, 0, 0)] * 8)]
# Env 1's episode outlives eight one-row episodes of env 0 and ends last: its final observation
# must be kept although newer episodes ended before it (found by hypothesis).
LONG_EPISODE_ENDS_LAST = [("append", (1, 0, 0)), ("extend", [(0, 1, 0)] * 7 + [(0, 0, 0)])]
# Env 1's episode goes on six rows later in one extend that reaches a whole ring past its last
# row (slots 8): the link from that row was written into the slot a newer row of the same write
# had taken, so the newer row pointed six rows on and was never sampled (found by hypothesis).
LINK_INTO_A_REUSED_SLOT = [("append", (0, 0, 0))] * 8 + [("extend", [(0, 0, 0)] * 12)] * 2 + [
    ("extend", [(0, 0, 0), (0, 0, 0), (1, 0, 0)] + [(0, 0, 0)] * 5 + [(1, 0, 0)] * 4)]


@SETTINGS
@given(capacity=st.integers(3, 30), operations=ops, n=st.integers(1, 5), gamma=st.sampled_from([0.5, 0.9, 1.0]))
@example(capacity=3, operations=IDLE_ENV_OUTLIVES_THE_RING + [("append", (1, 1, 0))], n=2, gamma=0.9)
@example(capacity=4, operations=LINK_INTO_A_REUSED_SLOT, n=3, gamma=0.9)
def test_n_step_matches_the_model(tmp_path_factory, backend, capacity, operations, n, gamma):
    path = _pool(tmp_path_factory, backend, capacity)
    model = Model(capacity)
    (pool,) = run_ops(model, lambda: [expstore.open(path, "a", commit_every=5)], operations)
    with expstore.open(path, "r") as reader:
        for handle in (pool, reader):
            if not model.rows:
                with pytest.raises(expstore.EmptyStoreError):
                    handle.sample(4, rng=1, n_step=n, gamma=gamma)
                continue
            batch = handle.sample(64, rng=1, n_step=n, gamma=gamma)
            if n > 1:
                check_n_step(batch, model, n, gamma)
            assert (batch["step_id"] >= model.tail).all()
    pool.close()


@SETTINGS
@given(capacity=st.integers(3, 30), operations=ops, length=st.integers(1, 6), full_only=st.booleans())
def test_sequences_match_the_model(tmp_path_factory, backend, capacity, operations, length, full_only):
    path = _pool(tmp_path_factory, backend, capacity)
    model = Model(capacity)
    run_ops(model, lambda: [expstore.open(path, "a", commit_every=5)], operations)[0].close()
    with expstore.open(path, "r") as reader:
        possible = [s for s in range(model.tail, len(model.rows))
                    if len(model.following(s, length)) == length or not full_only]
        if not possible:
            with pytest.raises(expstore.EmptyStoreError):
                reader.sample_sequences(8, length, rng=0, full_only=True)
            return
        batch = reader.sample_sequences(16, length, rng=0, full_only=full_only)
    assert batch["obs"].shape == (16, length, 2) and batch["mask"].shape == (16, length)
    for i in range(16):
        expected = [r.step for r in model.following(int(batch["step_id"][i, 0]), length)]
        assert list(batch["step_id"][i][batch["mask"][i]]) == expected
        assert (batch["step_id"][i][~batch["mask"][i]] == -1).all()
        assert (batch["obs"][i][~batch["mask"][i]] == 0).all()
        if full_only:
            assert batch["mask"][i].all()


@SETTINGS
@given(capacity=st.integers(3, 30), operations=ops, n=st.integers(1, 4))
@example(capacity=3, operations=IDLE_ENV_OUTLIVES_THE_RING, n=1)
@example(capacity=3, operations=LONG_EPISODE_ENDS_LAST, n=1)
@example(capacity=4, operations=LINK_INTO_A_REUSED_SLOT, n=2)
def test_derived_next_obs_gives_identical_samples(tmp_path_factory, backend, capacity, operations, n):
    operations = [op for op in operations if op[0] != "reopen"] or [("append", (0, 0, 1))]
    stored = _pool(tmp_path_factory, backend, capacity)
    derived = _pool(tmp_path_factory, backend, capacity, schema=DERIVED_SCHEMA, derive_next_obs=True)
    model = Model(capacity)
    opener = lambda: [expstore.open(stored, "a", commit_every=5), expstore.open(derived, "a", commit_every=5)]  # noqa: E731
    for pool in run_ops(model, opener, operations, close_all=True):
        pool.close()
    with expstore.open(stored, "r") as a, expstore.open(derived, "r") as b:
        assert "next_obs" not in b.schema
        for options in ({}, {"n_step": n, "gamma": 0.9}):
            one, two = a.sample(32, rng=3, **options), b.sample(32, rng=3, **options)
            assert one.keys() == two.keys()
            for name in one:
                np.testing.assert_array_equal(one[name], two[name], err_msg=name)
        seq_one, seq_two = a.sample_sequences(8, 3, rng=4), b.sample_sequences(8, 3, rng=4)
        for name in seq_one:
            np.testing.assert_array_equal(seq_one[name], seq_two[name], err_msg=name)


@SETTINGS
@given(capacity=st.integers(3, 30), operations=ops, final_rows=st.integers(1, 4))
@example(capacity=4, operations=LINK_INTO_A_REUSED_SLOT, final_rows=1)
def test_a_small_final_table_keeps_the_newest_ends(tmp_path_factory, backend, capacity, operations, final_rows):
    """max_final_obs below the episodes in the pool: the final observations of the newest ends
    are kept (a ring in the order episodes end), an older end's row is not sampled, and every
    row sampled is exactly the model's."""
    path = _pool(tmp_path_factory, backend, capacity, schema=DERIVED_SCHEMA, derive_next_obs=True,
                 max_final_obs=final_rows)
    model = Model(capacity)
    run_ops(model, lambda: [expstore.open(path, "a", commit_every=5)], operations)[0].close()
    with expstore.open(path, "r") as reader:
        usable = {s for s in range(model.tail, len(model.rows)) if model.next_obs_known(s, final_rows)}
        batches = list(reader.iter_epoch(7, rng=0)) if model.rows else []
    seen = np.concatenate([b["step_id"] for b in batches]) if batches else np.zeros(0, np.int64)
    assert sorted(seen.tolist()) == sorted(usable)
    for batch in batches:
        for i, step in enumerate(batch["step_id"]):
            assert (batch["next_obs"][i] == model.rows[int(step)].values()["next_obs"]).all()


def test_max_final_obs_sizes_the_table_and_needs_derive_next_obs(tmp_path, backend):
    suffix = SUFFIX[backend]
    with expstore.open(tmp_path / f"a{suffix}", "w", capacity=10_000, schema=DERIVED_SCHEMA,
                       derive_next_obs=True) as pool:
        assert pool.bookkeeping.book.final_table.rows == 20_000 // 16 + 64  # capacity + slack (commit_every) rows
        assert len(pool.bookkeeping.book.table) == pool._ring.slots  # the episode table keeps one row per slot
    with expstore.open(tmp_path / f"b{suffix}", "w", capacity=100, schema=DERIVED_SCHEMA, derive_next_obs=True,
                       max_final_obs=10**6) as pool:
        assert pool.bookkeeping.book.final_table.rows == pool._ring.slots  # never more rows than episode entries
    for bad in (0, -1, 2.5, True):
        with pytest.raises(expstore.InvalidArgumentError, match="max_final_obs"):
            expstore.open(tmp_path / f"c{suffix}", "w", capacity=10, schema=DERIVED_SCHEMA, derive_next_obs=True,
                          max_final_obs=bad)
    with pytest.raises(expstore.InvalidArgumentError, match="derive_next_obs=True"):
        expstore.open(tmp_path / f"d{suffix}", "w", capacity=10, schema=SCHEMA, max_final_obs=5)
    assert not (tmp_path / f"c{suffix}").exists() and not (tmp_path / f"d{suffix}").exists()


def test_pools_made_before_the_final_table_had_its_own_size_keep_working(tmp_path_factory, backend, monkeypatch):
    """Their layout (final rows = episode rows, by episode id, no owner column, four-column
    table) is what creation plans without a final_rows; they keep opening, sampling and growing."""
    from expstore.core import opening
    monkeypatch.setattr(opening, "_final_rows", lambda *args: None)
    derived = _pool(tmp_path_factory, backend, 20, schema=DERIVED_SCHEMA, derive_next_obs=True)
    monkeypatch.undo()
    stored = _pool(tmp_path_factory, backend, 20)
    operations = [("extend", [(0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 0, 2), (2, 0, 0), (1, 2, 1)]),
                  ("append", (2, 1, 1)), ("reopen",), ("extend", [(0, 1, 1), (1, 0, 0), (1, 1, 0)] * 4)]
    model = Model(20)
    def pools():
        return [expstore.open(stored, "a", commit_every=5), expstore.open(derived, "a", commit_every=5)]

    for pool in run_ops(model, pools, operations, close_all=True):
        pool.close()
    with expstore.open(stored, "r") as a, expstore.open(derived, "r") as b:
        assert b.bookkeeping.book.table.shape[1] == 4 and not b.bookkeeping.book.final_table.is_ring
        for options in ({}, {"n_step": 3, "gamma": 0.9}):
            one, two = a.sample(32, rng=3, **options), b.sample(32, rng=3, **options)
            for name in one:
                np.testing.assert_array_equal(one[name], two[name], err_msg=name)
        np.testing.assert_array_equal(a.episodes()["episode_id"], b.episodes()["episode_id"])
    assert expstore.verify(derived).ok


def test_derived_pool_skips_rows_whose_next_obs_is_unknown(tmp_path_factory, backend):
    path = _pool(tmp_path_factory, backend, 50, schema=DERIVED_SCHEMA, derive_next_obs=True)
    model = Model(50)
    operations = [("append", (0, 0, 1)), ("append", (0, 0, 1)), ("append", (1, 0, 1)), ("reopen",),
                  ("append", (0, 0, 1)), ("append", (0, 1, 1)), ("append", (1, 0, 1))]
    run_ops(model, lambda: [expstore.open(path, "a", commit_every=5)], operations)[0].close()
    with expstore.open(path, "r") as reader:
        batch = reader.sample(200, rng=0)
        usable = {s for s in range(len(model.rows)) if model.next_obs_known(s) and s not in (1, 2)}
        assert set(batch["step_id"].tolist()) == usable == {0, 3, 4}
        for i, step in enumerate(batch["step_id"]):
            assert (batch["next_obs"][i] == model.rows[int(step)].values()["next_obs"]).all()


def test_derive_next_obs_needs_an_observation_field(tmp_path):
    with pytest.raises(expstore.SchemaError, match="derive_next_obs"):
        expstore.open(tmp_path / "p.h5", "w", capacity=5, schema=SCHEMA, derive_next_obs=True)


@SETTINGS
@given(capacity=st.integers(3, 30), operations=ops, batch_size=st.integers(1, 7))
def test_epoch_visits_every_committed_row_once(tmp_path_factory, backend, capacity, operations, batch_size):
    path = _pool(tmp_path_factory, backend, capacity)
    model = Model(capacity)
    run_ops(model, lambda: [expstore.open(path, "a", commit_every=5)], operations)[0].close()
    with expstore.open(path, "r") as reader:
        if not model.rows:
            with pytest.raises(expstore.EmptyStoreError):
                list(reader.iter_epoch(batch_size, rng=0))
            return
        batches = list(reader.iter_epoch(batch_size, rng=0))
        seen = np.concatenate([b["step_id"] for b in batches])
        assert sorted(seen.tolist()) == list(range(model.tail, len(model.rows)))
        assert all(len(b["step_id"]) == batch_size for b in batches[:-1])
        two = list(reader.epochs(batch_size, num_epochs=2, rng=1))
        assert sum(len(b["step_id"]) for b in two) == 2 * len(seen)


def test_epoch_is_shuffled_and_drop_last(pool_path):
    model = Model(100)
    with expstore.open(pool_path, "w", capacity=100, schema=SCHEMA) as pool:
        for _ in range(100):
            pool.append(model.add(0, 0, 1.0).values())
        batches = list(pool.iter_epoch(30, rng=0, drop_last=True))
    seen = np.concatenate([b["step_id"] for b in batches])
    assert len(batches) == 3 and len(set(seen.tolist())) == 90
    assert not np.array_equal(seen, np.sort(seen))


# ---------------------------------------------------------------------- prioritized
def test_sum_tree_finds_what_a_cumsum_search_finds():
    rng = np.random.default_rng(0)
    for leaves in (1, 2, 5, 64, 100):
        tree = SumTree(leaves)
        values = rng.random(leaves) * (rng.random(leaves) > 0.3)
        tree.build(values)
        changed = rng.integers(0, leaves, size=7)
        values[changed] = rng.random(7)
        tree.update(changed, values[changed])
        assert tree.total == pytest.approx(values.sum())
        targets = rng.random(200) * values.sum()
        expected = np.searchsorted(np.cumsum(values), targets, side="right")
        found = tree.find(targets)
        assert (values[found] > 0).all()
        np.testing.assert_array_equal(found, expected)


def _filled(pool_path, capacity=40, rows=60, **options):
    model = Model(capacity)
    pool = expstore.open(pool_path, "w", capacity=capacity, schema=SCHEMA, **options)
    for t in range(rows):
        pool.append(model.add(0, 1 if t % 6 == 5 else 0, 1.0).values())
    return pool, model


def test_prioritized_draws_in_proportion_and_weights(pool_path):
    pool, model = _filled(pool_path)
    low = pool.first_step_id
    steps = np.arange(low, pool.next_step_id)
    priorities = np.where(steps % 2 == 0, 3.0, 1.0)
    assert pool.update_priorities(steps, priorities) == len(steps)
    batch = pool.sample(20_000, rng=0, prioritized=True, alpha=1.0, beta=1.0)
    even = (batch["step_id"] % 2 == 0).mean()
    assert even == pytest.approx(0.75, abs=0.02)
    weights = batch["weights"]
    assert weights.max() == pytest.approx(1.0)
    assert weights[batch["step_id"] % 2 == 0].max() == pytest.approx(1 / 3, rel=1e-5)
    uniform = pool.sample(20_000, rng=0, prioritized=True, alpha=0.0)
    assert (uniform["step_id"] % 2 == 0).mean() == pytest.approx(0.5, abs=0.02)
    assert (uniform["weights"] == 1).all()
    pool.close()


def test_priorities_survive_reopen_new_rows_get_the_max_and_evicted_ids_are_ignored(pool_path):
    pool, model = _filled(pool_path)
    low, high = pool.first_step_id, pool.next_step_id
    assert pool.update_priorities([0, 1, low, high - 1], [9.0, 9.0, 0.0, 5.0]) == 2  # 0, 1 evicted
    pool.sample(4, rng=0, prioritized=True)  # builds the tree before the next appends
    pool.append(model.add(0, 0, 1.0).values())
    pool.close()
    with expstore.open(pool_path, "a") as pool:
        pool.append(model.add(0, 0, 1.0).values())
        batch = pool.sample(20_000, rng=1, prioritized=True, alpha=1.0)
    counts = {int(s): int((batch["step_id"] == s).sum()) for s in (low, high - 1, high, high + 1)}
    assert counts[low] == 0  # priority 0 is never drawn
    # the last updated row and both new rows (max priority 5) share one proportion
    assert counts[high - 1] == pytest.approx(counts[high], rel=0.25)
    assert counts[high + 1] == pytest.approx(counts[high], rel=0.25)
    with expstore.open(pool_path, "r") as reader:
        again = reader.sample(20_000, rng=1, prioritized=True, alpha=1.0)
        assert (again["step_id"] == low).sum() == 0


def test_prioritized_with_n_step(pool_path):
    pool, model = _filled(pool_path)
    batch = pool.sample(64, rng=0, prioritized=True, n_step=3, gamma=0.5)
    check_n_step(batch, model, 3, 0.5)
    assert batch["weights"].shape == (64,)
    pool.close()


def test_update_priorities_rejects_bad_values(pool_path):
    pool, _ = _filled(pool_path)
    with pytest.raises(expstore.InvalidArgumentError, match="finite"):
        pool.update_priorities([pool.first_step_id], [np.nan])
    with pytest.raises(expstore.InvalidArgumentError, match="one priority per step id"):
        pool.update_priorities([pool.first_step_id], [1.0, 2.0])
    pool.close()
    with expstore.open(pool_path, "r") as reader, pytest.raises(expstore.ReadOnlyError):
        reader.update_priorities([reader.first_step_id], [1.0])


@pytest.mark.parametrize("call", [
    lambda p: p.sample(4, n_step=0), lambda p: p.sample(4, n_step=2, gamma=1.5),
    lambda p: p.sample_sequences(4, 0), lambda p: list(p.iter_epoch(0)),
])
def test_bad_sampling_arguments(pool_path, call):
    pool, _ = _filled(pool_path)
    with pytest.raises(expstore.InvalidArgumentError):
        call(pool)
    pool.close()


def test_strategies_on_an_empty_pool_are_a_clear_error(pool_path):
    with expstore.open(pool_path, "w", capacity=5, schema=SCHEMA) as pool:
        for call in (lambda: pool.sample(2, n_step=2), lambda: pool.sample_sequences(2, 2),
                     lambda: pool.sample(2, prioritized=True)):
            with pytest.raises(expstore.EmptyStoreError, match="no committed transition"):
                call()
