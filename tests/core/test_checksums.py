"""Checksums of every committed row (checksums.py): the partly covered chunks of the window's
head and tail, old pools without running crcs, crashes and a concurrent writer; both backends."""

from __future__ import annotations

import os
import random
import zlib

import numpy as np
import pytest

import expstore
from expstore.core import checksums, commit
from tests.helpers.crash_writer import WriterProcess
from tests.helpers.pools import BACKENDS, pendulum_schema, rows_for
from tests.maintenance.test_verify import field_byte_range, make_pool

CHUNK_ROWS = 32  # make_pool's


def flip_byte(path: str, name: str, step: int) -> None:
    """Invert the first byte of field ``name`` of ``step``'s row."""
    file, offset = field_byte_range(path, name, step)
    with open(file, "r+b") as fh:
        fh.seek(offset)
        value = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([value[0] ^ 0xFF]))


def window_of(path: str) -> tuple[int, int]:
    with expstore.open(path) as pool:
        return pool.first_step_id, pool.next_step_id


def test_crc32_combine_matches_zlib_on_joined_bytes():
    rng = np.random.default_rng(0)
    for nbytes_b in [0, 1, 7, 64, 4096, 100_003]:
        a, b = rng.bytes(int(rng.integers(0, 500))), rng.bytes(nbytes_b)
        assert checksums.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_a_healthy_pool_has_every_committed_row_covered(pool_path):
    make_pool(pool_path)
    tail, head = window_of(pool_path)
    assert tail % CHUNK_ROWS and head % CHUNK_ROWS  # both ends of the window lie inside a chunk
    report = expstore.verify(pool_path)
    assert report.ok, report.findings
    assert report.facts["partial_chunks_checked"] == 2 and report.facts["rows_unchecked"] == 0


def test_a_changed_row_in_the_head_chunk_is_found(pool_path):
    make_pool(pool_path)
    _, head = window_of(pool_path)
    step = head - 3  # committed, in the chunk the head has not filled yet
    flip_byte(pool_path, "reward", step)
    report = expstore.verify(pool_path)
    first = head - head % CHUNK_ROWS
    assert not report.ok
    assert any(f"'reward' of steps {first}..{head - 1}" in finding for finding in report.findings), report.findings


def test_a_changed_row_in_the_tail_chunk_is_found(pool_path):
    make_pool(pool_path)
    tail, _ = window_of(pool_path)
    flip_byte(pool_path, "obs", tail + 1)  # still in the window, in the chunk the tail has entered
    report = expstore.verify(pool_path)
    end = tail - tail % CHUNK_ROWS + CHUNK_ROWS
    assert not report.ok
    assert any(f"steps {tail}..{end - 1} (the tail's chunk)" in finding for finding in report.findings), \
        report.findings


def test_a_changed_evicted_row_of_the_tail_chunk_is_no_finding(pool_path):
    make_pool(pool_path)
    tail, _ = window_of(pool_path)
    flip_byte(pool_path, "obs", tail - 1)  # dropped from the window: the writer may overwrite it
    assert expstore.verify(pool_path).ok


def test_a_window_inside_one_chunk_is_covered_and_checked(pool_path):
    with expstore.open(pool_path, "w", capacity=40, schema=pendulum_schema(), checksums=True, chunk_rows=64,
                       slack=10, fsync=False) as pool:
        for start in range(0, 300, 7):
            pool.extend(rows_for(np.arange(start, start + 7)))
            pool.flush()
        tail, head = pool.first_step_id, pool.next_step_id
    assert tail // 64 == (head - 1) // 64, "the test needs the whole window inside one chunk"
    report = expstore.verify(pool_path)
    assert report.ok and report.facts["rows_unchecked"] == 0, report.facts
    flip_byte(pool_path, "action", head - 1)
    assert any(f"'action' of steps {tail}..{head - 1}" in finding for finding in expstore.verify(pool_path).findings)


@pytest.mark.parametrize("seed", range(4))
def test_random_workloads_cover_every_row_and_catch_every_damaged_one(tmp_path, backend, seed):
    """Appends and extends of random sizes, flushes and reopens at random, several ring laps,
    a start step inside a chunk (a convert copy's): after each commit every committed row has
    a checksum, verify is clean, and a byte changed in a random committed row is found."""
    rng = random.Random(seed)
    capacity, chunk_rows, slack = rng.choice([(300, 32, 50), (100, 64, 20), (257, 16, 16), (64, 128, 80)])
    path = str(tmp_path / f"pool{BACKENDS[backend]}")
    first = rng.randrange(0, 1000)
    pool = expstore.open(path, "w", capacity=capacity, schema=pendulum_schema(), checksums=True,
                         chunk_rows=chunk_rows, slack=slack, fsync=False, first_step_id=first)
    head = first
    try:
        for _ in range(25):
            n_rows = rng.choice([1, 1, 3, rng.randrange(1, 3 * slack)])
            if n_rows == 1:
                pool.append({name: values[0] for name, values in rows_for([head]).items()})
            else:
                pool.extend(rows_for(np.arange(head, head + n_rows)))
            head += n_rows
            if rng.random() < 0.5:
                pool.flush()
            if rng.random() < 0.2:
                pool.close()
                pool = expstore.open(path, "a", fsync=False)
            report = pool.verify()
            assert report.ok, report.findings
            assert report.facts["rows_unchecked"] == 0, (report.facts, head)
    finally:
        pool.close()
    tail, head = window_of(path)
    for step in rng.sample(range(tail, head), 4):
        name = rng.choice(list(pendulum_schema()))
        flip_byte(path, name, step)
        assert not expstore.verify(path).ok, f"a changed byte of {name!r} at step {step} went unnoticed"
        flip_byte(path, name, step)
        assert expstore.verify(path).ok


def strip_running_crcs(path: str) -> None:
    """Make the pool look written by an expstore whose commit payload held no running crcs."""
    with expstore.open(path) as pool:
        extent = pool._layout.commit
        newest = pool._committed
    slots = b""
    for record in (commit.CommitRecord(newest.seq - 1 + i, newest.head, newest.tail, newest.time_unix,
                                       {k: v for k, v in newest.payload.items() if k != checksums.PAYLOAD_KEY})
                   for i in range(2)):
        slots += record.encode()
    if newest.slot_index == 0:  # keep the seq -> slot rule: record seq goes to slot seq % 2
        slots = slots[commit.SLOT_NBYTES:] + slots[:commit.SLOT_NBYTES]
    with open(extent.path, "r+b") as fh:
        fh.seek(extent.offset)
        fh.write(slots)


def test_a_pool_without_running_crcs_opens_and_a_writer_starts_them(pool_path):
    make_pool(pool_path)
    strip_running_crcs(pool_path)
    report = expstore.verify(pool_path)
    assert report.ok and report.facts["partial_chunks_checked"] == 0 and report.facts["rows_unchecked"] > 0
    with expstore.open(pool_path, "a", fsync=False) as pool:
        pool.extend(rows_for(np.arange(pool.next_step_id, pool.next_step_id + 5)))
        pool.flush()
        head_covered = pool.verify()
        assert head_covered.ok and head_covered.facts["partial_chunks_checked"] >= 1
        pool.extend(rows_for(np.arange(pool.next_step_id, pool.next_step_id + CHUNK_ROWS)))  # the tail moves on
    report = expstore.verify(pool_path)
    assert report.ok and report.facts["rows_unchecked"] == 0, report.facts


def test_running_crcs_of_another_window_are_ignored(pool_path):
    """An expstore that does not know the key copies it into its commits unchanged: it then
    names another head and tail than the record's, and is neither trusted nor reported."""
    make_pool(pool_path)
    with expstore.open(pool_path) as pool:
        old_key = pool._committed.payload[checksums.PAYLOAD_KEY]
    with expstore.open(pool_path, "a", fsync=False) as pool:
        pool.extend(rows_for(np.arange(pool.next_step_id, pool.next_step_id + 5)))
        pool.flush()
        extent, newest = pool._layout.commit, pool._committed
    copied = commit.CommitRecord(newest.seq + 1, newest.head, newest.tail, newest.time_unix,
                                 {**newest.payload, checksums.PAYLOAD_KEY: old_key})
    with open(extent.path, "r+b") as fh:
        fh.seek(extent.offset + copied.slot_index * commit.SLOT_NBYTES)
        fh.write(copied.encode())
    report = expstore.verify(pool_path)
    assert report.ok and report.facts["commit_seq"] == copied.seq, report.findings
    assert report.facts["partial_chunks_checked"] == 0


def test_a_schema_wider_than_the_payload_allows_keeps_whole_chunk_checksums(pool_path):
    schema = {f"f{i}": ((), "float32") for i in range(checksums.MAX_FIELDS + 1)}
    with expstore.open(pool_path, "w", capacity=100, schema=schema, checksums=True, chunk_rows=16, fsync=False) as pool:
        pool.extend({name: np.arange(150, dtype=np.float32) for name in schema})
        payload = pool._committed.payload
    assert checksums.PAYLOAD_KEY not in payload
    report = expstore.verify(pool_path)
    assert report.ok and report.facts["chunks_checked"] > 0 and report.facts["rows_unchecked"] > 0


def test_a_payload_full_of_open_episodes_commits_with_whole_chunk_checksums(pool_path, caplog):
    """300 envs with an open episode each nearly fill the commit record: the running crcs step
    aside rather than fail the commit, and come back once the episodes end."""
    n_envs = 300
    checksums._warn_payload_full.cache_clear()  # logged once per process: another test may have seen it
    with expstore.open(pool_path, "w", capacity=2000, schema=pendulum_schema(), checksums=True, chunk_rows=64,
                       fsync=False) as pool:
        rows = rows_for(np.arange(n_envs))
        rows["terminated"][:] = rows["truncated"][:] = False
        pool.extend(rows, env_ids=np.arange(n_envs))
        pool.flush()
        assert checksums.PAYLOAD_KEY not in pool._committed.payload
        assert "too full" in caplog.text
        report = pool.verify()
        assert report.ok and report.facts["rows_unchecked"] > 0
        rows = rows_for(np.arange(n_envs, 2 * n_envs))
        rows["terminated"][:] = True
        pool.extend(rows, env_ids=np.arange(n_envs))  # every episode ends: room again
        pool.flush()
        assert checksums.PAYLOAD_KEY in pool._committed.payload
    report = expstore.verify(pool_path)
    assert report.ok and report.facts["partial_chunks_checked"] >= 1, report.facts


def test_verify_finds_no_damage_in_pools_left_by_killed_writers(pool_path, backend):
    """SIGKILLed at random moments (a commit may be cut anywhere, the checksum table written
    for a chunk whose commit never came), then resumed: never a false finding."""
    with expstore.open(pool_path, "w", capacity=700, schema=pendulum_schema(), slack=90, chunk_rows=64,
                       checksums=True):
        pass
    rng = random.Random(5)
    for commit_every, batch in [(1, 1), (37, 25)]:
        writer = WriterProcess(pool_path, backend, capacity=700, commit_every=commit_every, batch=batch)
        writer.wait_committed()
        writer.run_for(rng.uniform(0.05, 0.3))
        assert expstore.verify(pool_path).ok  # a reader's verify while the writer runs
        writer.kill()
        report = expstore.verify(pool_path)
        assert report.ok, report.findings
        assert report.facts["rows_unchecked"] == 0, report.facts


@pytest.mark.slow
def test_verify_beside_a_full_speed_writer_and_many_kills(pool_path, backend):
    with expstore.open(pool_path, "w", capacity=1500, schema=pendulum_schema(), slack=200, chunk_rows=100,
                       checksums=True):
        pass
    rng = random.Random(11)
    for round_ in range(30):
        writer = WriterProcess(pool_path, backend, capacity=1500, commit_every=rng.choice([1, 37, 256]),
                               batch=rng.choice([1, 64, 300]), seed=round_)
        writer.wait_committed()
        for _ in range(5):
            report = expstore.verify(pool_path)
            assert report.ok, report.findings
        writer.run_for(rng.uniform(0.0, 0.5))
        writer.kill()
        assert expstore.verify(pool_path).ok
    assert os.path.exists(pool_path)
