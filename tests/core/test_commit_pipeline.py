"""The commit pipeline (core/commit_pipeline.py): automatic commits made durable on a thread of
their own, as crash safe as commits made in place (both backends).

A slow disk is played by a ``sync_data`` that sleeps on the pipeline's thread before it syncs: the
writer appends meanwhile, and the test checks, while the record before it is still the newest on
disk, that every row that record calls committed still holds its own bytes.
"""

from __future__ import annotations

import errno
import gc
import os
import random
import signal
import subprocess
import sys
import threading
import time
import weakref

import numpy as np
import pytest

import expstore
from expstore.core import commit
from tests.crash.test_concurrency import run_readers_against_writer
from tests.crash.test_crash import CAPACITY as CRASH_CAPACITY
from tests.crash.test_crash import SLACK as CRASH_SLACK
from tests.crash.test_crash import check_window, make_pool, resume_appending
from tests.helpers.crash_writer import WriterProcess
from tests.helpers.heap_rows import heap_row, heap_schema
from tests.helpers.pools import pendulum_schema, rows_for

CAPACITY = 40
SLACK = 12  # room for 4 rows past a pending commit: rows 5..8 of the next interval must wait
EVERY = 8
CHUNK_ROWS = 4  # slots = capacity + slack exactly


def new_pool(path, **options):
    settings = {"capacity": CAPACITY, "schema": pendulum_schema(), "slack": SLACK, "chunk_rows": CHUNK_ROWS,
                "commit_every": EVERY, "commit_interval_s": 3600.0} | options
    return expstore.open(path, "w", **settings)


def newest_on_disk(maps) -> commit.CommitRecord:
    return commit.newest(maps.commit_slots())[0]


def damaged_steps(maps, slots: int, expected=rows_for) -> list[int]:
    """The steps of the newest record on disk whose rows no longer hold their own values."""
    record = newest_on_disk(maps)
    steps = np.arange(record.tail, record.head)
    if not len(steps):
        return []
    bad = np.zeros(len(steps), bool)
    for name, values in expected(steps).items():
        bad |= (maps.views[name][steps % slots] != values).reshape(len(steps), -1).any(axis=1)
    return steps[bad].tolist()


class SlowDisk:
    """Replaces a pool's ``sync_data``: on the pipeline's thread it first waits ``delay_s`` (or until
    ``gate`` opens), then checks the window of the record on disk, then syncs. Records what it saw."""

    def __init__(self, pool, delay_s: float = 0.005, gate: threading.Event | None = None, fail_on: int = 0,
                 expected=rows_for):
        # A weak reference: the maps keep this object, and it must not keep the store alive.
        self.pool = weakref.ref(pool)
        self.maps, self.slots, self.expected = pool.mapped, pool.ring.slots, expected
        self.original = self.maps.sync_data
        self.delay_s, self.gate, self.fail_on = delay_s, gate, fail_on
        self.background_syncs = 0
        self.rows_past_the_pending_head = 0  # rows the writer had appended past a record while it synced
        self._head_seen: int | None = None
        self.damaged: list[int] = []
        self.events: list[tuple[str, int]] = []
        self.maps.sync_data = self
        self._original_write = self.maps.write_commit
        self.maps.write_commit = self._write_commit
        original_sync_commit = self.maps.sync_commit
        self.maps.sync_commit = lambda: (self.events.append(("sync commit", -1)), original_sync_commit())

    def __call__(self, parallel: bool = True) -> None:
        self.events.append(("sync data", -1))
        if threading.current_thread() is threading.main_thread():
            return self.original(parallel=parallel)
        self.background_syncs += 1
        if self.background_syncs == self.fail_on:
            raise OSError(errno.EIO, "injected: the disk failed the write-back")
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        else:
            time.sleep(self.delay_s)  # the disk is slow; the writer goes on appending
        pool = self.pool()
        self._head_seen = None if pool is None else pool.next_step_id
        del pool
        self.damaged += damaged_steps(self.maps, self.slots, self.expected)
        return self.original(parallel=parallel)

    def _write_commit(self, record: commit.CommitRecord) -> None:
        self.events.append(("write", record.seq))
        if self._head_seen is not None and threading.current_thread() is not threading.main_thread():
            self.rows_past_the_pending_head += max(0, self._head_seen - record.head)
        self._original_write(record)


def write_rows(pool, how: str, n_rows: int) -> None:
    rows = rows_for(np.arange(n_rows))
    if how == "direct":  # episodes that never end, one per env: 70 open envs leave the stage no room
        rows["terminated"][:] = rows["truncated"][:] = False
    names = list(pool.schema)
    step = 0
    while step < n_rows:
        if how == "extend":
            count = min(3, n_rows - step)
            pool.extend({name: rows[name][step:step + count] for name in names})
            step += count
            continue
        pool.append({name: rows[name][step] for name in names}, env_id=step % 70 if how == "direct" else 0)
        step += 1


def expected_rows(how: str, steps) -> dict[str, np.ndarray]:
    rows = rows_for(steps)
    if how == "direct":
        rows["terminated"][:] = rows["truncated"][:] = False
    return rows


@pytest.mark.parametrize("how", ["append", "extend", "direct"])
def test_rows_past_a_pending_commit_never_overwrite_the_durable_window(pool_path, how):
    """A ring of 52 slots wrapped about 25 times: while each commit syncs slowly, the writer writes
    on (4 rows of room), but never a row over the window of the record on disk."""
    with new_pool(pool_path) as pool:
        slow = SlowDisk(pool, expected=lambda steps: expected_rows(how, steps))
        n_rows = 25 * (CAPACITY + SLACK)
        write_rows(pool, how, n_rows)
        assert len(pool) == CAPACITY and pool.next_step_id == n_rows
        got = pool[:]  # the writer's own reads see every row, committed or not
    for name, values in expected_rows(how, got["step_id"]).items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)
    assert slow.background_syncs > n_rows // EVERY // 2, "the automatic commits were not made in the background"
    assert slow.rows_past_the_pending_head > 0, "the writer never appended while a commit was syncing"
    assert slow.damaged == [], f"rows of the durable window were overwritten: steps {slow.damaged[:10]}"
    with expstore.open(pool_path, "r") as reader:
        assert (reader.first_step_id, reader.next_step_id) == (n_rows - CAPACITY, n_rows)
        window = reader[:]
    for name, values in expected_rows(how, window["step_id"]).items():
        np.testing.assert_array_equal(window[name], values, err_msg=name)


def one_row(step: int) -> dict:
    return {name: values[0] for name, values in rows_for([step]).items()}


def test_a_pending_commit_is_not_what_commit_record_says_and_flush_makes_it_durable(pool_path):
    gate = threading.Event()
    with new_pool(pool_path) as pool, expstore.open(pool_path, "r") as reader:
        slow = SlowDisk(pool, gate=gate)
        pool.extend(rows_for(np.arange(EVERY)))  # the first commit: on its way, held at its sync
        pool.extend(rows_for(np.arange(EVERY, EVERY + 4)))  # waits for nothing: 4 rows of room
        assert pool.next_step_id == EVERY + 4 and len(pool) == EVERY + 4  # its own rows, all of them
        assert pool.commit_record.head == 0 and pool.last_commit_time is None  # nothing on disk yet
        assert reader.next_step_id == 0
        threading.Timer(0.05, gate.set).start()  # the disk finishes later; flush waits for it
        pool.flush()
        on_disk = newest_on_disk(pool.mapped)
        assert on_disk.head == pool.commit_record.head == EVERY + 4
        assert pool.last_commit_time == on_disk.time_unix
        assert reader.next_step_id == EVERY + 4
        assert_window(reader, EVERY + 4)
    # Records reach their slots in order, each after the rows' sync and followed by its own.
    writes = [seq for event, seq in slow.events if event == "write"]
    assert writes == list(range(writes[0], writes[0] + len(writes))) and len(writes) >= 2
    kinds = [event for event, _ in slow.events]
    for at, kind in enumerate(kinds):
        if kind == "write":
            assert kinds[at - 1] == "sync data" and kinds[at + 1] == "sync commit", kinds


@pytest.mark.parametrize("how", ["close", "context manager"])
def test_closing_waits_for_the_commit_on_its_way_and_commits_the_rest(pool_path, how):
    pool = new_pool(pool_path)
    SlowDisk(pool, delay_s=0.05)
    n_rows = 3 * EVERY + 3
    write_rows(pool, "extend", n_rows)  # the last automatic commit is still syncing
    assert pool.commit_record.head < 3 * EVERY
    if how == "close":
        pool.close()
    else:
        with pool:
            pass
    with expstore.open(pool_path, "a") as again:  # the lock was let go
        assert again.next_step_id == n_rows
        assert_window(again, n_rows)


def test_a_commit_thread_that_cannot_start_leaves_the_commit_made_in_place(pool_path, monkeypatch):
    """A process at its thread limit (or an interpreter shutting down) cannot start the pipeline's
    thread: the commit is then made durable on the writer's thread, nothing is left pending, and
    the pool closes (a record no thread would take made every later wait hang)."""
    start = threading.Thread.start

    def refuse_commit_threads(thread):
        if thread.name.startswith("expstore-commit"):
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", refuse_commit_threads)
    pool = new_pool(pool_path)
    write_rows(pool, "extend", 3 * EVERY + 3)
    assert pool._pipeline.pending is None
    assert pool.commit_record is pool._committed  # the newest commit made is the one on disk
    assert pool.commit_record.head >= 3 * EVERY
    pool.close()
    with expstore.open(pool_path, "r") as again:
        assert_window(again, 3 * EVERY + 3)


def test_a_forgotten_writer_is_kept_until_its_pending_commit_is_durable_then_closed(pool_path):
    gate = threading.Event()
    pool = new_pool(pool_path)
    SlowDisk(pool, gate=gate)
    pool.extend(rows_for(np.arange(EVERY)))  # on its way, held at its sync
    n_rows = EVERY + 3
    pool.extend(rows_for(np.arange(EVERY, n_rows)))
    pipeline, forgotten = pool._pipeline, weakref.ref(pool)
    del pool
    gc.collect()
    assert forgotten() is not None  # its maps must stay open under the pipeline's sync
    gate.set()
    pipeline.wait()
    gc.collect()  # now it goes, and its finaliser commits the rows after the pending commit
    assert forgotten() is None
    with expstore.open(pool_path, "a") as again:  # the lock was let go
        assert again.next_step_id == n_rows
        assert_window(again, n_rows)


def assert_window(pool, head: int) -> None:
    window = pool[:]
    np.testing.assert_array_equal(window["step_id"], np.arange(max(0, head - CAPACITY), head))
    for name, values in rows_for(window["step_id"]).items():
        np.testing.assert_array_equal(window[name], values, err_msg=name)


EXIT_CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, expstore
from expstore.core.mapping import MappedPool
from tests.helpers.pools import pendulum_schema, rows_for
sync_data = MappedPool.sync_data
MappedPool.sync_data = lambda self, parallel=True: (time.sleep(0.05), sync_data(self, parallel))
pool = expstore.open(sys.argv[2], "w", capacity=40, schema=pendulum_schema(), slack=12, chunk_rows=4, commit_every=8,
                     commit_interval_s=3600.0)
for start in range(0, 27, 3):
    pool.extend(rows_for(np.arange(start, start + 3)))
print(pool.commit_record.head, flush=True)
"""  # exits with a commit on its way and 3 rows after it: the interpreter's exit commits them


def test_interpreter_exit_commits_what_an_open_writer_appended(pool_path):
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", EXIT_CHILD, checkout, pool_path], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[0]) < 24  # the commit at 24 was on its way when the script ended
    with expstore.open(pool_path, "r") as reader:
        assert reader.next_step_id == 27
        assert_window(reader, 27)


@pytest.mark.parametrize("next_call", ["append", "extend", "flush", "close"])
def test_a_failed_background_sync_is_raised_to_the_writer_and_stops_it(pool_path, next_call):
    pool = new_pool(pool_path)
    pool.extend(rows_for(np.arange(EVERY)))
    pool.flush()
    slow = SlowDisk(pool, fail_on=1)
    pool.extend(rows_for(np.arange(EVERY, 2 * EVERY)))  # its commit's sync fails on the thread
    pool._pipeline._thread.join(30)  # the thread ends after a failure
    calls = {"append": lambda: pool.append(one_row(2 * EVERY)),
             "extend": lambda: pool.extend(rows_for(np.arange(2 * EVERY, 2 * EVERY + 2))),
             "flush": pool.flush, "close": pool.close}
    with pytest.raises(OSError, match="injected") as raised:
        calls[next_call]()
    assert raised.value.errno == errno.EIO
    if next_call != "close":
        for call in (lambda: pool.append(one_row(2 * EVERY)), lambda: pool.extend(rows_for([2 * EVERY])),
                     pool.flush):
            with pytest.raises(expstore.ExpstoreError, match="an earlier write failed"):
                call()
        pool.close()  # releases the pool; the failed commit is not retried
    assert [event for event in slow.events if event[0] == "write"] == []  # no record after the failure
    with expstore.open(pool_path, "a") as again:  # recovers from the last durable commit
        assert again.next_step_id == EVERY
        assert_window(again, EVERY)


def test_a_forked_child_neither_waits_for_nor_touches_the_parents_pending_commit(pool_path):
    gate = threading.Event()
    with new_pool(pool_path) as pool:
        pool.extend(rows_for(np.arange(EVERY)))
        pool.flush()
        SlowDisk(pool, gate=gate)
        pool.extend(rows_for(np.arange(EVERY, 2 * EVERY)))  # on its way, held at its sync
        assert pool._pipeline.pending is not None
        pid = os.fork()
        if pid == 0:  # the child: every call returns at once or refuses, none waits
            code = 1
            try:
                signal.alarm(20)  # a wait on the parent's thread would never end
                assert pool.commit_record.head == EVERY  # the record on disk, not the parent's pending one
                assert pool.next_step_id == EVERY and len(pool[:]["step_id"]) == EVERY
                try:
                    pool.append(one_row(2 * EVERY))
                except expstore.ReadOnlyError:
                    code = 3
                pool.close()
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 3
        gate.set()
        pool.extend(rows_for(np.arange(2 * EVERY, 3 * EVERY + 1)))  # the parent goes on
    with expstore.open(pool_path, "r") as reader:
        assert reader.next_step_id == 3 * EVERY + 1
        assert_window(reader, 3 * EVERY + 1)


# ---------------------------------------------------------------------------- kill -9, live readers
# (commit_every, batch, seed): a writer child (helpers/crash_writer.py) with fsync on and no flushes,
# so that every commit it makes is an automatic one, made durable on the pipeline's thread. The pool
# (tests/crash/test_crash.py) has 200 rows of slack: a commit every 100 rows or fewer leaves room
# for rows past a pending one, which the larger batches and commit_every=200 fill up.
PIPELINED = [(50, 1, -1), (100, 1, -1), (64, 16, -1), (100, 37, 5), (30, 1, -1), (80, 120, 9), (200, 1, -1)]


def kill_pipelined_writer(path: str, backend: str, config: tuple[int, int, int], rng: random.Random,
                          floor: int) -> dict:
    commit_every, batch, seed = config
    writer = WriterProcess(path, backend, CRASH_CAPACITY, commit_every, batch, seed, fsync=True, flush=False)
    if rng.random() < 0.1:
        writer.run_for(rng.uniform(0.0, 0.4))  # now and then while it starts up or opens
    else:
        writer.wait_committed()
        writer.run_for(rng.uniform(0.0, 0.3))
    on_disk = writer.kill()  # the newest commit the child saw on disk
    must_survive = max(floor, on_disk or 0)
    first, head = check_window(path)  # every row of the window bit for bit, nothing past it
    assert head >= must_survive, f"commit {must_survive} reached the disk and was lost: the pool ends at {head}"
    # Between two looks at the disk the child made at most one more commit durable, of rows it
    # appended at most a commit interval and two batches later.
    assert head <= must_survive + 2 * (min(commit_every, CRASH_SLACK) + batch) + batch, (head, must_survive)
    return {"verified": head - first, "new_head": resume_appending(path, head)}


def pipelined_torture(path: str, backend: str, kills: int, seed: int) -> dict:
    make_pool(path)
    rng = random.Random(seed)
    floor = verified = 0
    for round_number in range(kills):
        result = kill_pipelined_writer(path, backend, PIPELINED[round_number % len(PIPELINED)], rng, floor)
        floor, verified = result["new_head"], verified + result["verified"]
    return {"kills": kills, "transitions_verified": verified, "steps_written": floor,
            "ring_wraps": floor // (CRASH_CAPACITY + CRASH_SLACK)}


def test_kill9_during_pipelined_commits_loses_no_durable_row(pool_path, backend):
    summary = pipelined_torture(pool_path, backend, kills=8, seed=3)
    print(f"\npipelined kill -9 torture {backend}: {summary}")
    assert summary["ring_wraps"] > 2, "the writer never wrapped around the ring"


@pytest.mark.slow
def test_kill9_during_pipelined_commits_loses_no_durable_row_full(pool_path, backend):
    summary = pipelined_torture(pool_path, backend, kills=100, seed=4)
    print(f"\npipelined kill -9 torture (full) {backend}: {summary}")
    assert summary["ring_wraps"] > 50


def readers_against_a_pipelined_writer(path: str, backend: str, seconds: float) -> dict:
    capacity, slack = 2000, 100  # commits every 50 rows: 50 rows of room past a pending one
    stats, writer_head = run_readers_against_writer(path, backend, seconds, capacity, slack, chunk_rows=50,
                                                    seeds=(3, 4), commit_every=50, batch=16, fsync=True,
                                                    flush=False)
    for reader in stats:
        assert reader["mismatched_rows"] == 0, f"a reader got rows that do not match their step ids: {reader}"
        assert reader["rows"] > 10_000 and reader["heads_never_decrease"], reader
        assert reader["last_head"] > reader["first_head"] + capacity + slack, "under a wrap: " + str(reader)
    return {"rows_checked": sum(r["rows"] for r in stats), "mismatches": sum(r["mismatched_rows"] for r in stats),
            "writer_head": writer_head, "wraps": writer_head // (capacity + slack)}


def test_readers_during_pipelined_commits_never_get_an_overwritten_row(pool_path, backend):
    summary = readers_against_a_pipelined_writer(pool_path, backend, seconds=2.0)
    print(f"\nreaders against a pipelined writer {backend}: {summary}")


@pytest.mark.slow
def test_readers_during_pipelined_commits_never_get_an_overwritten_row_full(pool_path, backend):
    summary = readers_against_a_pipelined_writer(pool_path, backend, seconds=20.0)
    print(f"\nreaders against a pipelined writer (full) {backend}: {summary}")


# ---------------------------------------------------------------------------- the default slack
def derived_schema() -> dict:
    return {name: spec for name, spec in pendulum_schema().items() if name != "next_obs"}


@pytest.mark.parametrize(("schema", "options", "slack"), [
    (pendulum_schema(), {}, 2 * 100),  # room for the rows after a commit whose sync is on its way
    (pendulum_schema(), {"capacity": 60}, 2 * 60),
    (pendulum_schema(), {"slack": 37}, 37),
    (heap_schema(), {}, 100),  # commits in place: the slack of one commit interval, as before
    (derived_schema(), {"derive_next_obs": True}, 100),
], ids=["plain", "small capacity", "given", "heap fields", "derived next_obs"])
def test_a_new_pool_gets_slack_for_a_commit_on_its_way_where_its_commits_pipeline(pool_path, schema, options, slack):
    settings = {"capacity": 1000, "schema": schema, "commit_every": 100, "chunk_rows": 1} | options
    with expstore.open(pool_path, "w", **settings) as pool:
        assert pool.ring.slack == slack


@pytest.mark.parametrize(("schema", "options", "make_row"), [
    (pendulum_schema(), {"fsync": False}, one_row),  # nothing to sync: the record is written at once
    (heap_schema(), {}, heap_row),
    (derived_schema(), {"derive_next_obs": True},
     lambda step: {name: value for name, value in one_row(step).items() if name != "next_obs"}),
], ids=["fsync=False", "heap fields", "derived next_obs"])
def test_pools_that_commit_in_place_expose_each_automatic_commit_before_the_append_returns(pool_path, schema,
                                                                                           options, make_row):
    with expstore.open(pool_path, "w", capacity=50, schema=schema, commit_every=4, commit_interval_s=3600.0,
                       **options) as pool, expstore.open(pool_path, "r") as reader:
        for step in range(10):
            pool.append(make_row(step))
            assert reader.next_step_id == step + 1 - (step + 1) % 4
            assert pool.commit_record.head == reader.next_step_id


def test_the_default_slack_keeps_the_commit_cadence_and_lets_the_next_interval_in(pool_path):
    """Commits still fall every commit_every rows; while one syncs, the writer appends the whole
    next interval without waiting for it (it waits at the commit after)."""
    gate = threading.Event()
    with expstore.open(pool_path, "w", capacity=1000, schema=pendulum_schema(), commit_every=100, chunk_rows=1,
                       commit_interval_s=3600.0) as pool:
        SlowDisk(pool, gate=gate)
        pool.extend(rows_for(np.arange(100)))  # its commit is held at its sync
        pool.extend(rows_for(np.arange(100, 199)))  # into the maps at once: 100 rows of room
        assert pool.commit_record.head == 0 and pool.next_step_id == 199
        gate.set()
        pool.wait_for_commits()
        assert pool.commit_record.head == 100
        pool.append(one_row(199))
        pool.wait_for_commits()
        assert pool.commit_record.head == 200


@pytest.mark.parametrize("how", ["append", "extend"])
def test_checksums_recorded_beside_pending_commits_verify(pool_path, how):
    """Each record's checksums are computed on the writer's thread from the record before it, which
    may still be on its way: the rows they cover are the ones on disk when either lands."""
    with new_pool(pool_path, checksums=True) as pool:
        slow = SlowDisk(pool, delay_s=0.002)
        write_rows(pool, how, 10 * (CAPACITY + SLACK) + 5)
        report = pool.verify()  # the writer's own: it waits for the commit on its way first
        assert report.ok and report.facts["rows_unchecked"] == 0, (report.findings, report.facts)
    assert slow.background_syncs > 0 and slow.damaged == []
    report = expstore.verify(pool_path)
    assert report.ok and report.facts["rows_unchecked"] == 0, (report.findings, report.facts)
    assert report.facts["chunks_checked"] >= CAPACITY // CHUNK_ROWS - 1
