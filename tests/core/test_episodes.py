"""Episode bookkeeping against the slow model (tests/helpers/episode_model.py), on both backends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import expstore
from tests.helpers.episode_model import SCHEMA, Model, ops, run_ops

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


def check_episodes(pool, model: Model) -> None:
    table = pool.episodes()
    expected = model.episodes()
    assert len(table) == len(expected)
    assert list(table["episode_id"]) == [e["episode_id"] for e in expected]
    for name in ("first_step_id", "length", "terminated", "truncated", "open", "cut_off", "evicted", "env_id"):
        assert list(table[name]) == [e[name] for e in expected], name
    np.testing.assert_allclose(table["return"], [e["return"] for e in expected], atol=1e-4)
    assert table["episode_id"].dtype == np.int64 and table["return"].dtype == np.float64
    assert table["open"].dtype == bool and table["evicted"].dtype == np.int64


def check_episode_rows(pool, model: Model) -> None:
    for episode in pool.episodes()["episode_id"]:
        rows = pool.episode(int(episode))
        expected = [r.step for r in model.episode_rows(int(episode)) if r.step >= model.tail]
        assert list(rows["step_id"]) == expected
        assert (rows["obs"][:, 0] == [1000 * episode + r.index for r in model.rows if r.step in expected]).all()


@SETTINGS
@given(capacity=st.integers(3, 30), operations=ops)
@example(capacity=3, operations=[("extend", [(0, 0, 0), (1, 0, 0), (1, 0, 0), (1, 0, 0)])])  # open, all evicted
# Env 0's episode stays open across a batch of short env-1 episodes, is cut off at the reopen and
# keeps one row in the window, while the episode after it takes its table row over.
@example(capacity=4, operations=[("extend", [(0, 0, 0), (1, 1, 0), (1, 1, 0), (1, 1, 0), (1, 1, 0), (2, 0, 0),
                                             (0, 0, 0), (1, 1, 0), (1, 0, 0)]), ("reopen",), ("append", (0, 0, 0))])
def test_episodes_match_the_model(tmp_path_factory, backend, capacity, operations):
    path = str(tmp_path_factory.mktemp("ep") / ("pool" + (".h5" if backend == "hdf5" else ".zarr")))
    expstore.open(path, "w", capacity=capacity, schema=SCHEMA, commit_every=5).close()
    model = Model(capacity)
    (pool,) = run_ops(model, lambda: [expstore.open(path, "a", commit_every=5)], operations)
    check_episodes(pool, model)  # the writer's view
    with expstore.open(path, "r") as reader:
        check_episodes(reader, model)
        check_episode_rows(reader, model)
    pool.close()


def test_episode_table_counts_episodes_and_names_its_columns(pool_path, monkeypatch):
    with expstore.open(pool_path, "w", capacity=100, schema=SCHEMA) as pool:
        model = Model(100)
        assert len(pool.episodes()) == 0
        for env, end in [(0, 0), (1, 0), (0, 2), (1, 0), (1, 1), (0, 0), (2, 1)]:
            pool.append(model.add(env, end, 1.0).values(), env_id=env)
        table = pool.episodes()
    assert isinstance(table, expstore.EpisodeTable)
    assert len(table) == 4 and len(table["episode_id"]) == 4
    assert table.columns[:2] == ("episode_id", "first_step_id") and len(table.columns) == 11
    assert list(table) == list(table.keys()) == list(table.columns)  # iterating yields column names, as pandas
    assert dict(table.items())["env_id"] is table["env_id"] and {**table}.keys() == set(table.columns)
    assert "open" in table and "nope" not in table
    with pytest.raises(KeyError, match="no column 'nope'.*episode_id"):
        table["nope"]
    assert "4 episodes" in repr(table)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        table.to_pandas()


def test_episode_table_to_pandas(pool_path):
    pandas = pytest.importorskip("pandas")
    with expstore.open(pool_path, "w", capacity=100, schema=SCHEMA) as pool:
        model = Model(100)
        for env, end in [(0, 0), (0, 1), (1, 0)]:
            pool.append(model.add(env, end, 1.0).values(), env_id=env)
        frame = pool.episodes().to_pandas()
    assert isinstance(frame, pandas.DataFrame) and len(frame) == 2 and list(frame["env_id"]) == [0, 1]


def test_episode_table_is_ordered_and_reports_truncation_apart(pool_path):
    with expstore.open(pool_path, "w", capacity=100, schema=SCHEMA) as pool:
        model = Model(100)
        for env, end in [(0, 0), (1, 0), (0, 2), (1, 0), (1, 1), (0, 0)]:
            pool.append(model.add(env, end, 1.0).values(), env_id=env)
        table = pool.episodes()
    assert list(table["episode_id"]) == [0, 1, 2]
    assert list(table["truncated"]) == [True, False, False] and list(table["terminated"]) == [False, True, False]
    assert list(table["open"]) == [False, False, True] and list(table["length"]) == [2, 3, 1]


def test_unknown_episode_is_a_clear_error(pool_path):
    with expstore.open(pool_path, "w", capacity=10, schema=SCHEMA) as pool:
        pool.append(Model(10).add(0, 1, 1.0).values())
        with pytest.raises(expstore.StepNotFoundError, match="episode 5 has no row"):
            pool.episode(5)


def test_bad_env_ids_write_nothing(pool_path):
    with expstore.open(pool_path, "w", capacity=10, schema=SCHEMA) as pool:
        model = Model(10)
        rows = [model.add(0, 0, 1.0).values() for _ in range(3)]
        batch = {name: np.stack([np.asarray(r[name]) for r in rows]) for name in SCHEMA}
        with pytest.raises(expstore.InvalidArgumentError, match="env_ids"):
            pool.extend(batch, env_ids=[0, 1])
        assert len(pool) == 0


_WRITER = textwrap.dedent("""
    import sys, numpy as np, expstore
    sys.path.insert(0, {tests!r})
    from tests.helpers.episode_model import SCHEMA, Model
    model = Model(1000)
    pool = expstore.open({path!r}, "w", capacity=1000, schema=SCHEMA, commit_every=10_000)
    for t in range(25):                     # episodes of 5 rows, then one open episode
        pool.append(model.add(0, 1 if t % 5 == 4 else 0, 1.0).values())
    for t in range(3):
        pool.append(model.add(0, 0, 1.0).values())
    pool.flush()
    print("COMMITTED", flush=True)
    for t in range(4):                      # uncommitted rows: lost with the process
        pool.append(model.add(0, 0, 1.0).values())
    sys.stdin.read()
""")


def test_kill_mid_episode_cuts_the_open_episode_off(pool_path):
    tests = os.path.dirname(os.path.abspath(__file__))
    child = subprocess.Popen([sys.executable, "-c", _WRITER.format(tests=tests, path=pool_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "COMMITTED"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with expstore.open(pool_path, "r") as reader:  # before any writer: the episode looks open
        assert list(reader.episodes()["open"]) == [False] * 5 + [True]
    with expstore.open(pool_path, "a") as pool:
        table = pool.episodes()
        assert list(table["length"]) == [5] * 5 + [3]
        assert list(table["cut_off"]) == [False] * 5 + [True] and not table["open"].any()
        assert table["terminated"][:5].all() and not table["terminated"][5]
        pool.append({**Model(1).add(0, 0, 1.0).values()})  # resuming starts a new episode
        table = pool.episodes()
        assert table["episode_id"][-1] == 6 and table["first_step_id"][-1] == 28 and table["open"][-1]
        pool.flush()
        three_step = pool.sample(256, rng=0, n_step=3, gamma=1.0)
        in_cut = (three_step["step_id"] >= 25) & (three_step["step_id"] <= 27)
        assert in_cut.any()
        assert (three_step["reward"][in_cut] == 28 - three_step["step_id"][in_cut]).all()  # stops at 27
        assert not three_step["terminated"][in_cut].any()
        rows = pool.episode(5)
        assert list(rows["step_id"]) == [25, 26, 27]
    with expstore.open(pool_path, "r") as reader:
        assert list(reader.episodes()["cut_off"]) == [False] * 5 + [True, False]


@pytest.mark.parametrize("env_ids", [None, "interleaved"])
def test_a_small_episode_table_keeps_the_newest_episodes_intact(tmp_path, backend, env_ids):
    """max_episodes below the episodes of one batch: the table forgets the oldest, and a finished
    old episode never overwrites the entry a newer one took over."""
    suffix = ".h5" if backend == "hdf5" else ".zarr"
    n_rows, ends = 60, np.zeros(60, bool)
    ends[[4, 9, 14, 19, 29, 44]] = True  # more episodes than the table holds
    batch = {"obs": np.arange(n_rows, dtype=np.float32)[:, None], "reward": np.ones(n_rows, np.float32),
             "terminated": ends, "truncated": np.zeros(n_rows, bool)}
    schema = {"obs": ((1,), "float32"), "reward": ((), "float32"),
              "terminated": ((), "bool"), "truncated": ((), "bool")}
    ids = None if env_ids is None else np.arange(n_rows) % 2
    tables = {}
    for name, max_episodes in (("small", 3), ("full", None)):
        with expstore.open(str(tmp_path / f"{name}{suffix}"), "w", capacity=100, schema=schema,
                           max_episodes=max_episodes) as pool:
            pool.extend(batch, env_ids=ids)
            tables[name] = pool.episodes()
    small, full = tables["small"], tables["full"]
    assert 0 < len(small["episode_id"]) <= 3
    for position, episode_id in enumerate(small["episode_id"]):
        match = int(np.flatnonzero(full["episode_id"] == episode_id)[0])
        for key in ("first_step_id", "length", "return", "terminated", "open", "last_step_id"):
            assert small[key][position] == full[key][match], (key, int(episode_id))


def test_kept_entries_never_overflow_the_commit_payload(tmp_path, backend, caplog):
    """150 sub-envs whose open episodes outlive a ring of one-row episodes of another env: their
    entries cannot all be kept in the payload beside the open episodes; the commit still
    succeeds, keeping what fits and saying what is forgotten."""
    path = str(tmp_path / ("pool" + (".h5" if backend == "hdf5" else ".zarr")))
    model = Model(8)
    with expstore.open(path, "w", capacity=8, schema=SCHEMA, commit_every=8) as pool:
        for env in range(1, 151):
            pool.append(model.add(env, 0, 1.0).values(), env_id=env)
        for _ in range(40):
            pool.append(model.add(0, 1, 1.0).values(), env_id=0)
        with caplog.at_level("WARNING", logger="expstore.episodes"):
            pool.flush()
        assert "forgotten by episodes()" in caplog.text
        pool.append(model.add(1, 0, 1.0).values(), env_id=1)  # env 1's episode is running: it was kept
        table = pool.episodes()
        position = int(np.flatnonzero(table["episode_id"] == 0)[0])
        assert table["first_step_id"][position] == 0 and table["length"][position] == 2


_LAPPING_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import expstore
    from tests.helpers.episode_model import SCHEMA, Model
    model = Model(8)
    pool = expstore.open({path!r}, "w", capacity=8, schema=SCHEMA, commit_every=4, commit_interval_s=1000)
    pool.append(model.add(1, 0, 1.0).values(), env_id=1)          # episode 0 (env 1) stays open
    for _ in range(28):
        pool.append(model.add(0, 1, 1.0).values(), env_id=0)      # one-row episodes 1..28
    pool.append(model.add(1, 0, 1.0).values(), env_id=1)          # episode 0's second row, step 29
    pool.append(model.add(0, 1, 1.0).values(), env_id=0)
    pool.flush()
    print("COMMITTED", flush=True)
    for _ in range(3):                                            # uncommitted: they reuse table rows
        pool.append(model.add(0, 1, 1.0).values(), env_id=0)
    sys.stdin.read()
""")


def test_a_kept_entry_survives_a_crash_after_newer_episodes_took_its_row(pool_path):
    """Episode 0 began long before the tail and still has a row in the pool; after the commit the
    writer's newer episodes take its table row, then it is killed: the entry comes back from
    the commit payload, and the reopening writer cuts the episode off with its true first step."""
    tests = os.path.dirname(os.path.abspath(__file__))
    child = subprocess.Popen([sys.executable, "-c", _LAPPING_WRITER.format(tests=tests, path=pool_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "COMMITTED"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with expstore.open(pool_path, "r") as reader:
        table = reader.episodes()
        assert table["episode_id"][0] == 0 and table["open"][0] and table["first_step_id"][0] == 0
    with expstore.open(pool_path, "a") as pool:
        table = pool.episodes()
        assert table["episode_id"][0] == 0 and table["cut_off"][0] and table["length"][0] == 2
        assert list(pool.episode(0)["step_id"]) == [29]
        pool.append(Model(8).add(1, 0, 1.0).values(), env_id=1)
        assert pool.episodes()["episode_id"][-1] == 30  # the ids the crash discarded are given again


@pytest.mark.parametrize("how", ["append", "extend"])
def test_too_many_open_episodes_are_refused_when_added_and_write_nothing(pool_path, how):
    n_envs = 400  # their state overflows the commit record's 4 KB slot past about 310 envs
    with expstore.open(pool_path, "w", capacity=2000, schema=SCHEMA, commit_every=10_000) as pool:
        model = Model(2000)
        rows = [model.add(env, 0, 1.0).values() for env in range(n_envs)]
        batch = {name: np.stack([np.asarray(row[name]) for row in rows]) for name in SCHEMA}
        with pytest.raises(expstore.InvalidArgumentError, match=r"at most \d+ envs can have an open episode at once"):
            if how == "append":
                for env, row in enumerate(rows):
                    pool.append(row, env_id=env)
            else:
                pool.extend(batch, env_ids=np.arange(n_envs))
        written = pool.next_step_id
        assert 280 < written < 320 if how == "append" else written == 0  # the refused write added nothing
        if how == "extend":
            written = 250
            pool.extend({name: batch[name][:written] for name in SCHEMA}, env_ids=np.arange(written))
        assert len(pool.episodes()) == written and pool.episodes()["open"].all()
        pool.flush()  # what was accepted commits
        ended = {**{name: batch[name][:written] for name in SCHEMA}, "truncated": np.ones(written, bool)}
        pool.extend(ended, env_ids=np.arange(written))  # room again once their episodes end
        pool.extend({name: batch[name][written:] for name in SCHEMA}, env_ids=np.arange(written, n_envs))
        pool.flush()
    with expstore.open(pool_path, "r") as reader:
        table = reader.episodes()
        assert len(table) == n_envs and table["open"].sum() == n_envs - written
        assert table["truncated"].sum() == written


def test_open_episodes_that_outgrow_the_commit_record_fail_the_commit_clearly(pool_path):
    """Accepted open episodes whose numbers grow (one env appends many rows meanwhile) get a
    clear error at the commit, and commit again once some end."""
    n_envs = 270
    with expstore.open(pool_path, "w", capacity=50_000, schema=SCHEMA, commit_every=10**9) as pool:
        model = Model(50_000)
        rows = [model.add(env, 0, 1.0).values() for env in range(n_envs)]
        pool.extend({name: np.stack([np.asarray(row[name]) for row in rows]) for name in SCHEMA},
                    env_ids=np.arange(n_envs))
        pool.flush()
        busy = [model.add(n_envs - 1, 0, 1.0).values() for _ in range(20_000)]  # an env already open
        batch = {name: np.stack([np.asarray(row[name]) for row in busy]) for name in SCHEMA}
        with pytest.raises(expstore.InvalidArgumentError, match="open episodes no longer fit the commit record"):
            pool.extend(batch, env_ids=n_envs - 1)
            pool.flush()
        pool.end_episodes(np.arange(n_envs // 2))
        pool.flush()
    with expstore.open(pool_path, "r") as reader:
        assert reader.next_step_id == n_envs + 20_000
        assert len(reader.episodes()) == n_envs and reader.episodes()["open"].sum() == n_envs - n_envs // 2
