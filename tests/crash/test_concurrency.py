"""Readers in other processes while a writer wraps the ring at full speed (both backends).

The writer child (helpers/crash_writer.py) appends rows derived from their step ids; two reader
children sample and read slices for a while through one read-only handle each, and check
every returned row against its step id. A row the writer overwrote during a gather must be
drawn again (``sample``) or refused (``read``), never returned.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import expstore
from tests.helpers.crash_writer import WriterProcess
from tests.helpers.pools import pendulum_schema

# Children run in the tests directory: they import conftest from it, and expstore as we do.
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

CAPACITY = 2000
SLACK = 50  # small: the writer's in-flight rows run 50 rows behind the committed tail

READER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import expstore
    from tests.helpers.pools import rows_for

    path, seconds, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(seed)
    stats = {"rows": 0, "mismatched_rows": 0, "refused_reads": 0, "gave_up": 0, "batches": 0, "heads": []}

    def check(batch):
        expected = rows_for(batch["step_id"])
        bad = np.zeros(len(batch["step_id"]), bool)
        for name, values in expected.items():
            bad |= (batch[name] != values).reshape(len(bad), -1).any(axis=1)
        stats["rows"] += len(bad)
        stats["mismatched_rows"] += int(bad.sum())

    with expstore.open(path, "r") as pool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:  # a long gather (with replacement), for the writer to race
                check(pool.sample(4096, rng=rng))
            except expstore.ExpstoreError as exc:
                if "kept overwriting" not in str(exc):
                    raise
                stats["gave_up"] += 1  # every redraw was overwritten again: allowed, and counted
            first, head = pool.first_step_id, pool.next_step_id
            stats["heads"].append(head)
            try:  # the oldest rows: the writer overwrites them next
                check(pool.read(np.arange(first, first + 64)))
            except expstore.StepNotFoundError:
                stats["refused_reads"] += 1
            try:  # the newest rows: refused only if the reader lagged a whole ring behind
                check(pool[-64:])
            except expstore.StepNotFoundError:
                stats["refused_reads"] += 1
            stats["batches"] += 1
    heads = stats.pop("heads")
    stats.update(first_head=heads[0], last_head=heads[-1], distinct_heads=len(set(heads)),
                 heads_never_decrease=all(a <= b for a, b in zip(heads, heads[1:])))
    print(json.dumps(stats), flush=True)
""")


def start_reader(path: str, seconds: float, seed: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", READER, path, str(seconds), str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=TESTS_DIR)


def run_readers_against_writer(path: str, backend: str, seconds: float, capacity: int = CAPACITY,
                               slack: int = SLACK, chunk_rows: int = SLACK, seeds: tuple[int, ...] = (1, 2),
                               **writer_options) -> tuple[list[dict], int]:
    """Two readers sample for ``seconds`` while the writer appends; their stats and the writer's head.
    ``writer_options``: WriterProcess's (default: a commit every 100 rows, batches of 64)."""
    with expstore.open(path, "w", capacity=capacity, schema=pendulum_schema(), slack=slack, chunk_rows=chunk_rows):
        pass
    writer = WriterProcess(path, backend, capacity, **({"commit_every": 100, "batch": 64} | writer_options))
    try:
        writer.wait_committed()
        readers = [start_reader(path, seconds, seed) for seed in seeds]
        while any(reader.poll() is None for reader in readers):
            writer.run_for(0.1)  # keep reading the writer's pipe so that it never blocks
    finally:
        last_committed = writer.kill()
    outputs = [reader.communicate(timeout=60) for reader in readers]
    for reader, (_stdout, stderr) in zip(readers, outputs, strict=True):
        assert reader.returncode == 0, stderr
    return [json.loads(stdout) for stdout, _stderr in outputs], last_committed


def check_concurrent_run(pool_path: str, backend: str, seconds: float) -> dict:
    stats, writer_head = run_readers_against_writer(pool_path, backend, seconds)
    for reader in stats:
        assert reader["mismatched_rows"] == 0, f"a reader got rows that do not match their step ids: {reader}"
        assert reader["rows"] > 10_000 and reader["batches"] > 20, reader
        assert reader["refused_reads"] < reader["batches"] and reader["gave_up"] < reader["batches"] // 10, reader
        assert reader["heads_never_decrease"], reader
        # Readers see new commits on the handle they opened, without reopening.
        assert reader["last_head"] > reader["first_head"] + 3 * (CAPACITY + SLACK), "fewer than 3 wraps: " + str(reader)
        assert reader["distinct_heads"] > 10, reader
    assert writer_head > 5 * (CAPACITY + SLACK), "the writer did not wrap around the ring many times"
    summary = {"rows_checked": sum(r["rows"] for r in stats), "mismatches": sum(r["mismatched_rows"] for r in stats),
               "refused_reads": sum(r["refused_reads"] for r in stats), "gave_up": sum(r["gave_up"] for r in stats),
               "writer_head": writer_head,
               "wraps": writer_head // (CAPACITY + SLACK)}
    print(f"\nconcurrent readers {backend} ({seconds} s): {summary}")
    return summary


def test_readers_during_full_speed_writes(pool_path, backend):
    check_concurrent_run(pool_path, backend, seconds=2.0)


@pytest.mark.slow
def test_readers_during_full_speed_writes_soak(pool_path, backend):
    check_concurrent_run(pool_path, backend, seconds=35.0)
