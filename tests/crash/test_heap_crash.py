"""Heap fields under kill -9 and under readers racing the writer.

The writer child (helpers/crash_writer.py, ``--schema heap``) appends rows of a codec field and
two ragged fields derived from their step ids into heaps small enough that the heap, not the
capacity, bounds the window most of the time, so every commit evicts rows and the writer's
heap bytes run right behind the oldest committed row. After each SIGKILL the whole window is
checked byte for byte; readers in other processes check every row they get while it writes.
The derived variant (``derived=True``) also derives ``next_obs`` and the ragged ``next_obs_tokens``,
with final observations large enough that their own heap evicts them within the window; its
checks sample the derived next observations as well.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

import expstore
from tests.helpers.crash_writer import WriterProcess
from tests.helpers.heap_rows import (
    assert_derived_rows_match,
    assert_rows_match,
    heap_batch,
    heap_derived_batch,
    heap_derived_schema,
    heap_schema,
)

CAPACITY = 600
HEAP_BYTES = 60_000  # shared by the three heap fields: a window of a few hundred rows
MAX_FINAL_OBS = 400  # more than the final heap holds (15 KB of 1.6 KB finals): the heap bounds them
TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class HeapWriterConfig:
    commit_every: int
    batch: int
    seed: int = -1
    fsync: bool = False

    @property
    def max_commit_gap(self) -> int:
        return self.commit_every - 1 + self.batch


CONFIGS = [
    HeapWriterConfig(commit_every=1, batch=1),
    HeapWriterConfig(commit_every=53, batch=1, fsync=True),
    HeapWriterConfig(commit_every=400, batch=64),  # heap commits forced mid-extend
    HeapWriterConfig(commit_every=100, batch=900),  # one extend larger than the heap holds
    HeapWriterConfig(commit_every=300, batch=200, seed=5),
]


def make_pool(path: str, derived: bool = False) -> None:
    options = {"derive_next_obs": True, "max_final_obs": MAX_FINAL_OBS} if derived else {}
    with expstore.open(path, "w", capacity=CAPACITY, schema=heap_derived_schema() if derived else heap_schema(),
                       heap_bytes=HEAP_BYTES, slack=100, **options):
        pass


def check_rows(batch, derived: bool, with_next: bool = False) -> None:
    if derived:
        assert_derived_rows_match(batch, with_next)
    else:
        assert_rows_match(batch)


def check_window(path: str, derived: bool = False) -> tuple[int, int, str | None]:
    """Reopen read-only and check every committed row, and the derived next observations of a
    sample; (first, head, window bound)."""
    with expstore.open(path, "r") as pool:
        first, head = pool.window
        assert 0 < head - first <= CAPACITY or head == 0
        if head > first:
            check_rows(pool[:], derived)
        if derived and head - first > 20:
            check_rows(pool.sample(256, rng=head), derived, with_next=True)
        with pytest.raises(expstore.StepNotFoundError):
            pool.read([head])
        return first, head, pool.window_bound


def resume_appending(path: str, head: int, derived: bool = False) -> int:
    with expstore.open(path, "a") as pool:
        assert pool.next_step_id == head
        pool.extend((heap_derived_batch if derived else heap_batch)(range(head, head + 3)))
    with expstore.open(path, "r") as pool:
        assert pool.next_step_id == head + 3
        check_rows(pool[-3:], derived)
    return head + 3


def torture(path: str, backend: str, kills: int, seed: int, derived: bool = False) -> dict:
    make_pool(path, derived)
    rng = random.Random(seed)
    floor, verified, bounds = 0, 0, set()
    for round_number in range(kills):
        config = CONFIGS[round_number % len(CONFIGS)]
        writer = WriterProcess(path, backend, CAPACITY, config.commit_every, config.batch, config.seed,
                               config.fsync, schema="heap-derived" if derived else "heap")
        if rng.random() < 0.15:
            writer.run_for(rng.uniform(0.0, 0.4))
        else:
            writer.wait_committed()
            writer.run_for(rng.uniform(0.0, 0.3))
        must_survive = max(floor, writer.kill() or 0)
        first, head, bound = check_window(path, derived)
        assert must_survive <= head <= must_survive + config.max_commit_gap, (must_survive, head)
        bounds.add(bound)
        verified += head - first
        floor = resume_appending(path, head, derived)
    return {"kills": kills, "rows_verified": verified, "steps_written": floor, "bounds": sorted(map(str, bounds))}


def test_kill9_torture_heap_fast(pool_path, backend):
    summary = torture(pool_path, backend, kills=6, seed=3)
    print(f"\nkill -9 torture, heap fields, {backend}: {summary}")
    assert "heap 'obs'" in summary["bounds"] or "heap 'tokens'" in summary["bounds"], summary
    window = summary["rows_verified"] / summary["kills"]
    assert summary["steps_written"] > 3 * window, "the writer did not go round the heaps several times"


@pytest.mark.slow
def test_kill9_torture_heap_full(pool_path, backend):
    summary = torture(pool_path, backend, kills=80, seed=4)
    print(f"\nkill -9 torture (full), heap fields, {backend}: {summary}")
    assert summary["steps_written"] > 40 * CAPACITY


def test_kill9_torture_heap_derived_fast(pool_path, backend):
    summary = torture(pool_path, backend, kills=5, seed=6, derived=True)
    print(f"\nkill -9 torture, heap fields with derived next_obs, {backend}: {summary}")
    window = summary["rows_verified"] / summary["kills"]
    assert summary["steps_written"] > 3 * window, "the writer did not go round the heaps several times"


@pytest.mark.slow
def test_kill9_torture_heap_derived_full(pool_path, backend):
    summary = torture(pool_path, backend, kills=60, seed=7, derived=True)
    print(f"\nkill -9 torture (full), heap fields with derived next_obs, {backend}: {summary}")
    assert summary["steps_written"] > 30 * CAPACITY


READER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import expstore
    from tests.helpers.heap_rows import heap_derived_row, heap_row

    path, seconds, seed, derived = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    rng = np.random.default_rng(seed)
    stats = {"rows": 0, "mismatched_rows": 0, "refused_reads": 0, "gave_up": 0, "batches": 0}
    row_names = ["obs", "obs_tokens" if derived else "tokens", "points"]

    def check(batch, names):
        for k, step in enumerate(batch["step_id"]):
            expected = heap_derived_row(int(step)) if derived else heap_row(int(step))
            ok = True
            for name in names:
                if name + "_length" in batch:
                    length = int(batch[name + "_length"][k])
                    ok &= length == len(expected[name]) and np.array_equal(batch[name][k][:length], expected[name])
                else:
                    ok &= np.array_equal(batch[name][k], expected[name])
            stats["rows"] += 1
            stats["mismatched_rows"] += int(not ok)

    with expstore.open(path, "r") as pool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:  # a sample of a deriving pool holds the next observations too
                check(pool.sample(128, rng=rng), row_names + (["next_obs", "next_obs_tokens"] if derived else []))
            except expstore.ExpstoreError as exc:
                if "kept overwriting" not in str(exc):
                    raise
                stats["gave_up"] += 1
            try:  # the oldest rows: the writer overwrites their bytes next
                first = pool.first_step_id
                check(pool.read(np.arange(first, first + 16)), row_names)
            except expstore.StepNotFoundError:
                stats["refused_reads"] += 1
            stats["batches"] += 1
    print(json.dumps(stats), flush=True)
""")


def run_readers(path: str, backend: str, seconds: float, derived: bool = False) -> list[dict]:
    make_pool(path, derived)
    writer = WriterProcess(path, backend, CAPACITY, commit_every=50, batch=16,
                           schema="heap-derived" if derived else "heap")
    try:
        writer.wait_committed()
        readers = [subprocess.Popen([sys.executable, "-c", READER, path, str(seconds), str(seed), str(int(derived))],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=TESTS_DIR)
                   for seed in (1, 2)]
        while any(reader.poll() is None for reader in readers):
            writer.run_for(0.1)
    finally:
        head = writer.kill()
    outputs = [reader.communicate(timeout=60) for reader in readers]
    for reader, (_stdout, stderr) in zip(readers, outputs, strict=True):
        assert reader.returncode == 0, stderr
    stats = [json.loads(stdout) for stdout, _ in outputs]
    for reader in stats:
        assert reader["mismatched_rows"] == 0, reader
        assert reader["rows"] > 300 and reader["batches"] > 2, reader
    with expstore.open(path) as pool:
        window = len(pool)
    assert head is not None and head > 5 * window, "the writer did not go round the heaps several times"
    print(f"\nreaders against a heap writer {backend} ({seconds} s): {stats}, writer head {head}")
    return stats


def test_readers_during_heap_writes(pool_path, backend):
    run_readers(pool_path, backend, seconds=3.0)


@pytest.mark.slow
def test_readers_during_heap_writes_soak(pool_path, backend):
    run_readers(pool_path, backend, seconds=30.0)


def test_readers_during_heap_writes_with_derived_next_obs(pool_path, backend):
    run_readers(pool_path, backend, seconds=3.0, derived=True)


@pytest.mark.slow
def test_readers_during_heap_writes_with_derived_next_obs_soak(pool_path, backend):
    run_readers(pool_path, backend, seconds=30.0, derived=True)
