"""Crash safety: kill -9 torture, torn commit records, and the one-writer rule (both backends).

The writer child (helpers/crash_writer.py) appends rows derived from their step ids and prints
``COMMITTED <head>`` after each flush; the parent SIGKILLs it at random instants and checks
that the pool it left behind holds exactly a committed window, bit for bit.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import pytest

import expstore
from expstore.backends import resolve_backend
from expstore.core import commit, lock
from tests.helpers.crash_writer import WriterProcess
from tests.helpers.pools import pendulum_schema, rows_for

CAPACITY = 1500
SLACK = 200  # small, so that in-flight writes run right behind the committed tail
CHUNK_ROWS = 100  # slots = capacity + slack exactly


@dataclass(frozen=True)
class WriterConfig:
    commit_every: int
    batch: int
    seed: int = -1  # >= 0: ragged batches of 1..batch rows
    fsync: bool = False

    @property
    def max_commit_gap(self) -> int:
        """At most this many rows past the last printed COMMITTED can be committed."""
        return self.commit_every - 1 + self.batch


CONFIGS = [
    WriterConfig(commit_every=1, batch=1),  # every append commits
    WriterConfig(commit_every=37, batch=1, fsync=True),
    WriterConfig(commit_every=256, batch=64),  # commits forced mid-extend by the slack
    WriterConfig(commit_every=100, batch=1000),  # one extend spans several commits and wraps
    WriterConfig(commit_every=500, batch=300, seed=7, fsync=True),  # ragged batches
    WriterConfig(commit_every=1000, batch=1),  # mostly more rows pending than the slack: forced commits
    WriterConfig(commit_every=1000, batch=100),
]


def make_pool(path: str) -> None:
    with expstore.open(path, "w", capacity=CAPACITY, schema=pendulum_schema(), slack=SLACK,
                       chunk_rows=CHUNK_ROWS):
        pass


def check_window(path: str) -> tuple[int, int]:
    """Reopen read-only; check the whole committed window bit for bit; return (first, head)."""
    with expstore.open(path, "r") as pool:
        head, first, count = pool.next_step_id, pool.first_step_id, len(pool)
        assert count == min(head, CAPACITY) and first == head - count
        window = pool[:]
        np.testing.assert_array_equal(window["step_id"], np.arange(first, head))
        expected = rows_for(window["step_id"])
        for name, values in expected.items():
            assert window[name].tobytes() == values.tobytes(), f"field {name!r} differs from rows_for"
        with pytest.raises(expstore.StepNotFoundError):
            pool.read([head])  # nothing past the commit is visible
    return first, head


def resume_appending(path: str, head: int, n_rows: int = 3) -> int:
    """Open a writer at once (the lock must be free), append from ``head`` on; the new head."""
    with expstore.open(path, "a") as pool:
        assert pool.next_step_id == head
        pool.extend(rows_for(np.arange(head, head + n_rows)))
    with expstore.open(path, "r") as pool:
        assert pool.next_step_id == head + n_rows
        assert pool[-1]["reward"] == -np.float32(head + n_rows - 1)
    return head + n_rows


def kill_and_check(path: str, backend: str, config: WriterConfig, rng: random.Random, floor: int) -> dict:
    """One torture round: run the writer, SIGKILL it at a random instant, check, resume."""
    writer = WriterProcess(path, backend, CAPACITY, config.commit_every, config.batch, config.seed, config.fsync)
    if rng.random() < 0.15:
        writer.run_for(rng.uniform(0.0, 0.4))  # now and then, kill while it starts up or opens
    else:
        writer.wait_committed()
        writer.run_for(rng.uniform(0.0, 0.3))
    last_committed = writer.kill()
    must_survive = max(floor, last_committed or 0)
    first, head = check_window(path)
    assert head >= must_survive, f"commit {must_survive} was lost: the pool ends at {head}"
    assert head <= must_survive + config.max_commit_gap, (
        f"head {head} lies past anything the writer could have committed after {must_survive}")
    new_head = resume_appending(path, head)
    return {"verified": head - first, "new_head": new_head, "before_first_commit": last_committed is None}


def torture(path: str, backend: str, kills: int, seed: int) -> dict:
    make_pool(path)
    rng = random.Random(seed)
    floor, verified, early = 0, 0, 0
    for round_number in range(kills):
        result = kill_and_check(path, backend, CONFIGS[round_number % len(CONFIGS)], rng, floor)
        floor, verified = result["new_head"], verified + result["verified"]
        early += result["before_first_commit"]
    return {"kills": kills, "kills_before_first_commit": early, "transitions_verified": verified,
            "steps_written": floor, "ring_wraps": floor // (CAPACITY + SLACK)}


def test_kill9_torture_fast(pool_path, backend):
    summary = torture(pool_path, backend, kills=10, seed=1)
    print(f"\nkill -9 torture {backend}: {summary}")
    assert summary["ring_wraps"] > 3, "the writer never wrapped around the ring"


@pytest.mark.slow
def test_kill9_torture_full(pool_path, backend):
    summary = torture(pool_path, backend, kills=120, seed=2)
    print(f"\nkill -9 torture (full) {backend}: {summary}")
    assert summary["ring_wraps"] > 120


# ---------------------------------------------------------------------------- torn commit records
def commit_extent(path: str):
    return resolve_backend(path, None).read_layout(path).commit


def read_slots(path: str) -> bytes:
    extent = commit_extent(path)
    with open(extent.path, "rb") as fh:
        return os.pread(fh.fileno(), 2 * commit.SLOT_NBYTES, extent.offset)


def newer_slot(path: str) -> int:
    records = [commit.decode(read_slots(path)[i * commit.SLOT_NBYTES:(i + 1) * commit.SLOT_NBYTES]) for i in (0, 1)]
    return max((0, 1), key=lambda i: records[i].seq)


def overwrite_slot(path: str, slot_index: int, start: int, data: bytes) -> None:
    extent = commit_extent(path)
    with open(extent.path, "r+b") as fh:
        os.pwrite(fh.fileno(), data, extent.offset + slot_index * commit.SLOT_NBYTES + start)


def test_commit_slots_are_where_the_container_says(pool_path, backend):
    """The bytes the torn-slot tests damage are the container's own ``_commit`` array."""
    pool_with_two_commits(pool_path)
    if backend == "hdf5":
        import h5py

        with h5py.File(pool_path, "r", locking=False) as f:
            assert f["_commit"].id.get_offset() == commit_extent(pool_path).offset
            as_read = f["_commit"][:].tobytes()
    else:
        import zarr

        assert commit_extent(pool_path).path == os.path.join(pool_path, "_commit", "c", "0", "0")
        as_read = zarr.open_array(os.path.join(pool_path, "_commit"), mode="r")[:].tobytes()
    assert as_read == read_slots(pool_path)
    assert commit.newest(as_read)[0].head == 90


def pool_with_two_commits(path: str) -> int:
    """A pool whose older commit slot holds head 60 and the newer one head 90; the newer slot."""
    with expstore.open(path, "w", capacity=100, schema=pendulum_schema()) as pool:
        pool.extend(rows_for(np.arange(60)))
        pool.flush()
        pool.extend(rows_for(np.arange(60, 90)))
    return newer_slot(path)


def flip_bytes(path, slot_index):
    original = read_slots(path)[slot_index * commit.SLOT_NBYTES:][:64]
    overwrite_slot(path, slot_index, 20, bytes(b ^ 0xFF for b in original[20:28]))  # the head field


def flip_one_payload_bit(path, slot_index):
    payload_at = commit._HEADER.size  # the first byte of the JSON payload, covered by the crc
    record = read_slots(path)[slot_index * commit.SLOT_NBYTES:][:commit.SLOT_NBYTES]
    overwrite_slot(path, slot_index, payload_at, bytes([record[payload_at] ^ 0x01]))


def zero_slot(path, slot_index):
    overwrite_slot(path, slot_index, 0, bytes(commit.SLOT_NBYTES))


def torn_half_record(path, slot_index):
    overwrite_slot(path, slot_index, 24, bytes(commit.SLOT_NBYTES - 24))  # a write that stopped part-way


DAMAGES = [flip_bytes, flip_one_payload_bit, zero_slot, torn_half_record]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("mode", ["r", "a"])
def test_damaged_newer_slot_falls_back_to_older(pool_path, damage, mode, caplog):
    damage(pool_path, pool_with_two_commits(pool_path))
    with caplog.at_level(logging.WARNING, logger="expstore"), expstore.open(pool_path, mode) as pool:
        assert (pool.first_step_id, pool.next_step_id) == (0, 60)
        assert pool[:]["obs"].tobytes() == rows_for(np.arange(60))["obs"].tobytes()
    assert any(r.levelno == logging.WARNING and "commit slot" in r.getMessage() for r in caplog.records), \
        f"no warning about the damaged slot was logged: {[r.getMessage() for r in caplog.records]}"


def test_next_commit_rewrites_the_damaged_slot(pool_path, caplog):
    zero_slot(pool_path, pool_with_two_commits(pool_path))
    with expstore.open(pool_path, "a") as pool:
        pool.extend(rows_for(np.arange(60, 70)))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="expstore"):
        first, head = check_window_small(pool_path)
    assert (first, head) == (0, 70) and not caplog.records


def check_window_small(path: str) -> tuple[int, int]:
    with expstore.open(path, "r") as pool:
        window = pool[:]
        assert window["reward"].tobytes() == rows_for(window["step_id"])["reward"].tobytes()
        return pool.first_step_id, pool.next_step_id


def test_zarr_commit_file_truncated_mid_newer_slot(tmp_path, caplog):
    path = str(tmp_path / "pool.zarr")
    assert pool_with_two_commits(path) == 1
    extent = commit_extent(path)
    os.truncate(extent.path, commit.SLOT_NBYTES + 30)  # the newer slot's write stopped 30 bytes in
    with caplog.at_level(logging.WARNING, logger="expstore"), expstore.open(path, "r") as pool:
        assert (pool.first_step_id, pool.next_step_id) == (0, 60)
    assert any("commit slot" in r.getMessage() for r in caplog.records)
    with expstore.open(path, "a") as pool:  # a writer restores the file's size and commits on
        assert pool.next_step_id == 60
        pool.extend(rows_for(np.arange(60, 80)))
        pool.flush()
        pool.extend(rows_for(np.arange(80, 95)))
    assert os.path.getsize(extent.path) == 2 * commit.SLOT_NBYTES
    assert check_window_small(path) == (0, 95)


@pytest.mark.parametrize("mode", ["r", "a"])
def test_both_slots_damaged_is_corrupt_and_says_what_to_run(pool_path, mode):
    pool_with_two_commits(pool_path)
    zero_slot(pool_path, 0)
    flip_bytes(pool_path, 1)
    with pytest.raises(expstore.CorruptStoreError) as caught:
        expstore.open(pool_path, mode)
    message = str(caught.value)
    assert "expstore verify" in message and "expstore repair" in message and pool_path in message
    assert lock.holder(pool_path) is None  # a failed writer open gives the lock back


# ---------------------------------------------------------------------------- one writer
def test_second_writer_is_refused_and_reader_is_not(pool_path, backend):
    make_pool(pool_path)
    writer = WriterProcess(pool_path, backend, CAPACITY, commit_every=50)
    try:
        committed = writer.wait_committed()
        with pytest.raises(expstore.StoreLockedError) as caught:
            expstore.open(pool_path, "a")
        assert pool_path in str(caught.value) and f"pid={writer.proc.pid}" in str(caught.value)
        with expstore.open(pool_path, "r") as reader:  # readers never wait for the lock
            assert reader.next_step_id >= committed
        second = WriterProcess(pool_path, backend, CAPACITY, commit_every=50)
        second.proc.wait(timeout=60)
        assert second.proc.returncode != 0 and "StoreLockedError" in second.stderr()
        second.kill()
    finally:
        writer.kill()
    with expstore.open(pool_path, "a") as pool:  # the kernel dropped the dead writer's lock
        assert pool.writable and pool.next_step_id >= committed


def test_reader_takes_no_lock(pool_path, backend):
    make_pool(pool_path)
    with expstore.open(pool_path, "r") as reader:
        assert lock.holder(pool_path) is None
        writer = WriterProcess(pool_path, backend, CAPACITY, commit_every=50)
        try:
            committed = writer.wait_committed()  # the writer opened while our reader is open
            assert f"pid={writer.proc.pid}" in (lock.holder(pool_path) or "")
            assert reader.next_step_id >= committed  # and the reader sees its commits
        finally:
            writer.kill()
