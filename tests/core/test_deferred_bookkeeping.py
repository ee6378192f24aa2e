"""One-env extends leave their episode bookkeeping for later (Store._defer_bookkeeping): it runs
once for all of them before anything reads or changes it. Every way of looking at the rows then
sees what a pool written row by row shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import expstore
from tests.helpers.pools import BACKENDS

SCHEMA = {"obs": ((2,), "float32"), "reward": ((), "float32"), "terminated": ((), "bool"),
          "truncated": ((), "bool")}


def rows(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"obs": rng.standard_normal((n, 2)).astype(np.float32),
            "reward": rng.standard_normal(n).astype(np.float32),
            "terminated": rng.random(n) < 0.04, "truncated": rng.random(n) < 0.02}


def reference(path: str, batches: list[dict], capacity: int) -> None:
    """The same rows, each batch extended with its env ids given: that bookkeeping runs at once."""
    with expstore.open(path, "w", capacity=capacity, schema=SCHEMA) as pool:
        for batch in batches:
            pool.extend(batch, env_ids=np.zeros(len(batch["reward"]), np.int64))


def one_row(batch: dict, i: int) -> dict:
    return {name: (column[i] if column.ndim > 1 else column[i].item()) for name, column in batch.items()}


def same_view(got: expstore.Store, want: expstore.Store) -> None:
    assert len(got) == len(want) and got.next_step_id == want.next_step_id
    for name, values in want.episodes().items():
        np.testing.assert_array_equal(got.episodes()[name], values, err_msg=name)
    steps = np.arange(want.next_step_id - len(want), want.next_step_id)
    for name, values in want.read(steps).items():
        np.testing.assert_array_equal(got.read(steps)[name], values, err_msg=name)
    for name, values in want.sample(64, rng=1, n_step=3, gamma=0.9).items():
        np.testing.assert_array_equal(got.sample(64, rng=1, n_step=3, gamma=0.9)[name], values, err_msg=name)


@pytest.mark.parametrize("capacity, sizes", [
    (5000, [300, 1, 700, 250, 999, 64, 400, 333]),
    (1300, [300, 1, 700, 250, 999, 64, 400, 333]),
    (1000, [300] * 12),  # 2,000 slots: the extend from step 1,800 is deferred across the ring's end
])
def test_extends_between_reads_and_commits_match_extends_whose_bookkeeping_runs_at_once(tmp_path, backend,
                                                                                         capacity, sizes):
    suffix = BACKENDS[backend]
    batches = [rows(n, seed) for seed, n in enumerate(sizes)]
    reference(str(tmp_path / f"want{suffix}"), batches, capacity)
    with expstore.open(str(tmp_path / f"got{suffix}"), "w", capacity=capacity, schema=SCHEMA) as pool:
        for i, batch in enumerate(batches):
            pool.extend(batch)
            if i == 3:
                assert len(pool.episodes()["episode_id"])  # a read runs the deferred rows' bookkeeping
        with expstore.open(str(tmp_path / f"want{suffix}"), "r") as want:
            same_view(pool, want)  # the writer's own view, before any commit of the last extends
    with expstore.open(str(tmp_path / f"got{suffix}"), "r") as got, \
            expstore.open(str(tmp_path / f"want{suffix}"), "r") as want:
        same_view(got, want)  # what the commits recorded


@pytest.mark.parametrize("capacity", [5000, 2100])  # 2,100: the staged rows wrap the ring
def test_appends_through_full_stages_match_extends_whose_bookkeeping_runs_at_once(tmp_path, backend, capacity):
    """Full stages (1,024 rows) drained by append leave their bookkeeping for later too."""
    suffix = BACKENDS[backend]
    batch = rows(4000, 7)
    reference(str(tmp_path / f"want{suffix}"), [batch], capacity)
    with expstore.open(str(tmp_path / f"got{suffix}"), "w", capacity=capacity, schema=SCHEMA) as pool:
        for i in range(4000):
            pool.append(one_row(batch, i))
            if i in (1500, 3900):
                pool.episodes()  # a read in between runs the deferred bookkeeping
                assert len(pool) == min(i + 1, capacity)
        with expstore.open(str(tmp_path / f"want{suffix}"), "r") as want:
            same_view(pool, want)
    with expstore.open(str(tmp_path / f"got{suffix}"), "r") as got, \
            expstore.open(str(tmp_path / f"want{suffix}"), "r") as want:
        same_view(got, want)


def test_appends_vector_env_extends_and_ended_episodes_keep_the_step_order(tmp_path, backend):
    suffix = BACKENDS[backend]
    first, second, third = rows(120, 1), rows(80, 2), rows(50, 3)
    with expstore.open(str(tmp_path / f"mixed{suffix}"), "w", capacity=1000, schema=SCHEMA) as pool:
        pool.extend(first)  # deferred
        pool.append(one_row(second, 0))
        pool.extend(second, env_ids=np.arange(80) % 2)  # env 0 goes on, env 1 starts
        pool.extend(third)  # deferred again
        pool.end_episodes()
        table = pool.episodes()
    with expstore.open(str(tmp_path / f"plain{suffix}"), "w", capacity=1000, schema=SCHEMA) as pool:
        pool.extend(first)
        pool.flush()  # the bookkeeping of each call ran before the next, as it did before deferral
        pool.append(one_row(second, 0))
        pool.flush()
        pool.extend(second, env_ids=np.arange(80) % 2)
        pool.flush()
        pool.extend(third)
        pool.flush()
        pool.end_episodes()
        for name, values in pool.episodes().items():
            np.testing.assert_array_equal(table[name], values, err_msg=name)


def test_a_reader_sees_the_deferred_rows_episodes_at_the_commit(tmp_path, backend):
    path = str(tmp_path / f"pool{BACKENDS[backend]}")
    batch = rows(500, 4)
    batch["terminated"][:] = False
    batch["truncated"][:] = False
    batch["terminated"][[99, 299]] = True
    with expstore.open(path, "w", capacity=2000, schema=SCHEMA) as pool:
        pool.extend(batch)
        pool.flush()
        with expstore.open(path, "r") as reader:
            table = reader.episodes()
            assert table["first_step_id"].tolist() == [0, 100, 300]
            assert table["length"].tolist() == [100, 200, 200]
            assert table["open"].tolist() == [False, False, True]


KILLED = r"""
import sys, os, numpy as np, expstore
sys.path.insert(0, {root!r})
from tests.core.test_deferred_bookkeeping import SCHEMA, rows
pool = expstore.open(sys.argv[1], "w", capacity=4000, schema=SCHEMA)
for seed in range(3):
    pool.extend(rows(500, seed))
pool.flush()
for seed in range(3, 6):
    pool.extend(rows(500, seed))  # written, bookkeeping deferred, never committed
os.kill(os.getpid(), 9)
"""


def test_a_writer_killed_with_deferred_rows_loses_only_them(tmp_path, backend):
    path = str(tmp_path / f"pool{BACKENDS[backend]}")
    code = KILLED.format(root=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run([sys.executable, "-c", code, path], check=False, capture_output=True)
    assert done.returncode == -9, done.stderr
    want_path = str(tmp_path / f"want{BACKENDS[backend]}")
    reference(want_path, [rows(500, seed) for seed in range(3)], 4000)
    with expstore.open(path, "r") as got, expstore.open(want_path, "r") as want:
        same_view(got, want)
    with expstore.open(path, "a") as pool:
        pool.extend(rows(500, 9))  # and the pool goes on from there
        assert len(pool) == 2000
