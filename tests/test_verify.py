"""Store.verify, expstore.verify and expstore.repair on both backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import expstore
from expstore import commit, lock
from expstore.files import TEMP_MARK
from conftest import pendulum_schema, rows_for


def make_pool(path, checksums=True, batches=12, batch_rows=97, capacity=600):
    with expstore.open(path, "w", capacity=capacity, schema=pendulum_schema(), checksums=checksums,
                       chunk_rows=32, fsync=False) as pool:
        for k in range(batches):
            pool.extend(rows_for(np.arange(k * batch_rows, (k + 1) * batch_rows)))
            pool.flush()
    return batches * batch_rows


def field_byte_range(path, name, step):
    with expstore.open(path) as pool:
        extent = pool._layout.fields[name]
        slot = step % pool._ring.slots
        row_nbytes = pool.schema[name].row_nbytes
    return extent.path, extent.offset + slot * row_nbytes


def commit_extent(path):
    with expstore.open(path) as pool:
        return pool._layout.commit


def test_healthy_pool_verifies_and_checks_every_complete_chunk(pool_path):
    head = make_pool(pool_path)
    report = expstore.verify(pool_path)
    assert report.ok, report.findings
    tail = head - 600
    complete_chunks = (head // 32) - (-(-tail // 32))  # chunks wholly inside [tail, head)
    assert report.facts["chunks_checked"] == complete_chunks
    assert json.loads(json.dumps(report.to_json()))["ok"] is True


def test_a_changed_committed_byte_fails_its_chunk_checksum(pool_path):
    head = make_pool(pool_path)
    step = head - 100
    file, offset = field_byte_range(pool_path, "reward", step)
    with open(file, "r+b") as fh:
        fh.seek(offset)
        fh.write(np.float32(12345.0).tobytes())
    report = expstore.verify(pool_path)
    assert not report.ok
    first = step // 32 * 32
    assert any(f"steps {first}..{first + 31}" in finding for finding in report.findings)


def test_checksums_survive_reopen_and_new_laps(pool_path):
    make_pool(pool_path, batches=5)
    with expstore.open(pool_path, "a") as pool:
        start = pool.next_step_id
        for step in range(start, start + 1500):  # several laps of the ring through append
            pool.append({name: values[0] for name, values in rows_for([step]).items()})
    with expstore.open(pool_path) as pool:
        report = pool.verify()
    assert report.ok, report.findings
    assert report.facts["chunks_checked"] >= 15


def test_verify_without_checksums_still_checks_structure(pool_path):
    make_pool(pool_path, checksums=False)
    report = expstore.verify(pool_path)
    assert report.ok and report.facts["checksums"] is False


def test_torn_newer_commit_slot_is_reported_and_repaired(pool_path, caplog):
    make_pool(pool_path)
    extent = commit_extent(pool_path)
    with expstore.open(pool_path) as pool:
        newest = pool._committed
        window = (pool.first_step_id, pool.next_step_id)
    with open(extent.path, "r+b") as fh:
        fh.seek(extent.offset + newest.slot_index * commit.SLOT_NBYTES + 20)
        fh.write(b"\xde\xad\xbe\xef")
    report = expstore.verify(pool_path)
    assert not report.ok and any("commit slot" in f for f in report.findings)
    with expstore.open(pool_path) as pool:  # falls back to the older slot
        assert pool.next_step_id < window[1]
    repaired = expstore.repair(pool_path)
    assert any("commit slot" in action for action in repaired.actions)
    assert expstore.verify(pool_path).ok


def test_both_commit_slots_damaged_needs_reset_window(pool_path):
    make_pool(pool_path)
    extent = commit_extent(pool_path)
    with open(extent.path, "r+b") as fh:
        fh.seek(extent.offset)
        fh.write(os.urandom(2 * commit.SLOT_NBYTES))
    report = expstore.verify(pool_path)
    assert not report.ok and "expstore repair" in report.findings[0]
    with pytest.raises(expstore.CorruptStoreError, match="reset.window"):
        expstore.repair(pool_path)
    repaired = expstore.repair(pool_path, reset_window=True)
    assert any("empty window" in action for action in repaired.actions)
    with expstore.open(pool_path, "a") as pool:
        assert len(pool) == 0
        pool.extend(rows_for(np.arange(10)))
    assert expstore.verify(pool_path).ok


def test_repair_removes_leftover_temporaries_of_dead_processes(pool_path, tmp_path):
    make_pool(pool_path, checksums=False)
    name = os.path.basename(pool_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".{name}{TEMP_MARK}{dead.stdout.strip()}-deadbeef"
    leftover.mkdir() if pool_path.endswith(".zarr") else leftover.write_bytes(b"half a pool")
    report = expstore.verify(pool_path)
    assert any("leftover temporary" in f for f in report.findings)
    repaired = expstore.repair(pool_path)
    assert any(leftover.name in action for action in repaired.actions)
    assert not leftover.exists() and expstore.verify(pool_path).ok


def test_repair_clears_the_lock_record_of_a_killed_writer(pool_path):
    make_pool(pool_path, checksums=False)
    code = ("import expstore, os, signal; p = expstore.open(%r, 'a'); "
            "os.kill(os.getpid(), signal.SIGKILL)" % pool_path)
    subprocess.run([sys.executable, "-c", code])
    assert lock.holder(pool_path) is None  # the kernel dropped the flock at once
    assert lock.stale_record(pool_path).startswith("pid=")
    repaired = expstore.repair(pool_path)
    assert any("died" in action for action in repaired.actions)
    assert lock.stale_record(pool_path) is None


def test_repair_refuses_while_a_writer_runs(pool_path):
    make_pool(pool_path, checksums=False)
    with expstore.open(pool_path, "a"):
        with pytest.raises(expstore.StoreLockedError, match="another process|being written"):
            expstore.repair(pool_path)


def sparse_copy(pool_path) -> str:
    """Punch the zero blocks out of the pool's data file, the way a sparse copy (or a git
    checkout, which seeks over zeros) loses them; returns the file."""
    make_pool(pool_path, checksums=False, batches=1, capacity=200_000)  # mostly zero blocks
    with expstore.open(pool_path) as pool:
        data_file = pool._layout.fields["obs"].path
    subprocess.run(["fallocate", "--dig-holes", data_file], check=True)
    if not expstore.files.is_sparse(data_file):
        pytest.skip("this file system keeps zero blocks allocated; nothing to preallocate")
    return data_file


def test_a_sparse_copy_is_reported_and_repair_preallocates_it(pool_path):
    data_file = sparse_copy(pool_path)
    report = expstore.verify(pool_path)
    assert report.ok and os.path.basename(data_file) in str(report.facts["sparse_files"])
    assert any("preallocated" in action for action in expstore.repair(pool_path).actions)
    assert not expstore.files.is_sparse(data_file) and "sparse_files" not in expstore.verify(pool_path).facts


def test_a_writer_preallocates_a_sparse_copy_when_it_opens(pool_path):
    data_file = sparse_copy(pool_path)
    with expstore.open(pool_path, "r"):
        assert expstore.files.is_sparse(data_file)  # readers change nothing
    with expstore.open(pool_path, "a") as pool:
        assert not expstore.files.is_sparse(data_file)  # no hole left for a write to SIGBUS on
        pool.extend(rows_for(np.arange(pool.next_step_id, pool.next_step_id + 10)))


def test_verify_reports_a_file_that_is_not_a_pool(tmp_path, backend):
    path = tmp_path / ("junk.h5" if backend == "hdf5" else "junk.zarr")
    if backend == "hdf5":
        path.write_bytes(os.urandom(4096))
    else:
        path.mkdir()
        (path / "zarr.json").write_text("{not json")
    report = expstore.verify(str(path))
    assert not report.ok and report.findings


def test_verify_reports_a_damaged_zarr_array_metadata_file(tmp_path):
    path = str(tmp_path / "pool.zarr")
    make_pool(path, checksums=False, batches=2)
    metadata = os.path.join(path, "_priority", "zarr.json")
    os.truncate(metadata, os.path.getsize(metadata) // 2)
    with expstore.open(path) as pool:  # expstore maps the shard by the group's layout and still reads it
        assert len(pool) == 2 * 97
    report = expstore.verify(path)
    assert not report.ok
    assert any("_priority" in finding and "zarr.json" in finding for finding in report.findings), report.findings


def test_verify_reports_a_deleted_hdf5_dataset(tmp_path):
    import h5py

    path = str(tmp_path / "pool.h5")
    make_pool(path, checksums=False, batches=2)
    with h5py.File(path, "r+", locking=False) as f:
        del f["_commit"]  # its bytes stay where the pool's metadata points: expstore still opens it
    with expstore.open(path) as pool:
        assert len(pool) == 2 * 97
    report = expstore.verify(path)
    assert not report.ok
    assert any("'_commit'" in finding and "missing" in finding for finding in report.findings), report.findings
