"""Store.verify, expstore.verify and expstore.repair on both backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import expstore
from expstore.backends.files import TEMP_MARK
from expstore.core import commit, lock
from tests.helpers.pools import pendulum_schema, rows_for


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
    code = (f"import expstore, os, signal; p = expstore.open({pool_path!r}, 'a'); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    subprocess.run([sys.executable, "-c", code])
    assert lock.holder(pool_path) is None  # the kernel dropped the flock at once
    assert lock.stale_record(pool_path).startswith("pid=")
    repaired = expstore.repair(pool_path)
    assert any("died" in action for action in repaired.actions)
    assert lock.stale_record(pool_path) is None


def test_repair_refuses_while_a_writer_runs(pool_path):
    make_pool(pool_path, checksums=False)
    with expstore.open(pool_path, "a"), pytest.raises(expstore.StoreLockedError, match="another process|being written"):
        expstore.repair(pool_path)


def sparse_copy(pool_path) -> str:
    """Punch the zero blocks out of the pool's data file, the way a sparse copy (or a git
    checkout, which seeks over zeros) loses them; returns the file."""
    make_pool(pool_path, checksums=False, batches=1, capacity=200_000)  # mostly zero blocks
    with expstore.open(pool_path) as pool:
        data_file = pool._layout.fields["obs"].path
    subprocess.run(["fallocate", "--dig-holes", data_file], check=True)
    if not expstore.backends.files.is_sparse(data_file):
        pytest.skip("this file system keeps zero blocks allocated; nothing to preallocate")
    return data_file


def test_a_sparse_copy_is_reported_and_repair_preallocates_it(pool_path):
    data_file = sparse_copy(pool_path)
    report = expstore.verify(pool_path)
    assert report.ok and os.path.basename(data_file) in str(report.facts["sparse_files"])
    assert any("preallocated" in action for action in expstore.repair(pool_path).actions)
    assert not expstore.backends.files.is_sparse(data_file) and "sparse_files" not in expstore.verify(pool_path).facts


def test_a_writer_preallocates_a_sparse_copy_when_it_opens(pool_path):
    data_file = sparse_copy(pool_path)
    with expstore.open(pool_path, "r"):
        assert expstore.backends.files.is_sparse(data_file)  # readers change nothing
    with expstore.open(pool_path, "a") as pool:
        assert not expstore.backends.files.is_sparse(data_file)  # no hole left for a write to SIGBUS on
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
    assert any("'_commit'" in finding and "missing" in finding and "expstore convert" in finding
               for finding in report.findings), report.findings
    copy = str(tmp_path / "copy.h5")
    from expstore.maintenance.convert import convert

    convert(path, copy)  # the advice works: the copy is a whole pool with the same rows
    assert expstore.verify(copy).ok
    with expstore.open(copy) as pool:
        assert len(pool) == 2 * 97


# ------------------------------------------------------------------ what plain zarr-python needs
def zarr_array(path, name):
    import zarr
    from zarr.storage import LocalStore

    return zarr.open_array(store=LocalStore(path, read_only=True), path=name, mode="r")


def zarr_reads_committed_rows(path, name) -> bool:
    """zarr-python reads array ``name`` and its committed rows are the ones written."""
    values = zarr_array(path, name)[...]
    with expstore.open(path) as pool:
        steps = np.arange(pool.first_step_id, pool.next_step_id)
        slots = pool._ring.slots
    return np.array_equal(values[steps % slots], rows_for(steps)[name])


def test_zarr_documents_expstore_expects_are_the_ones_zarr_writes(tmp_path):
    """The documents verify compares against and repair writes are zarr-python's own, for
    every kind of array (sharded fields of one- and eight-byte types, raw bookkeeping arrays)."""
    from expstore.backends import zarr_checks

    path = str(tmp_path / "pool.zarr")
    schema = {"obs": ((2, 3), "uint8"), "action": ((), "int64"), "reward": ((), "float64"),
              "terminated": ((), "bool"), "truncated": ((), "bool")}
    with expstore.open(path, "w", capacity=100, schema=schema, checksums=True, chunk_rows=16,
                       derive_next_obs=True) as pool:
        expected = zarr_checks.expected_documents(pool._layout)
    for name, document in expected.items():
        with open(os.path.join(path, name, "zarr.json")) as fh:
            assert json.load(fh) == document, name
    assert expstore.verify(path).ok


def append_to_a_shard(path):
    with open(os.path.join(path, "obs", "c", "0", "0"), "ab") as fh:
        fh.write(b"x")
    return "obs"


def cut_the_commit_file(path):
    os.truncate(os.path.join(path, "_commit", "c", "0", "0"), 8033)
    return "_commit"


def drop_a_metadata_key(path, name="terminated", key="chunk_key_encoding"):
    file = os.path.join(path, name, "zarr.json")
    with open(file) as fh:
        document = json.load(fh)
    del document[key]
    with open(file, "w") as fh:
        json.dump(document, fh)
    return name


def change_the_chunk_separator(path):
    file = os.path.join(path, "reward", "zarr.json")
    with open(file) as fh:
        document = json.load(fh)
    document["chunk_key_encoding"]["configuration"]["separator"] = "."
    with open(file, "w") as fh:
        json.dump(document, fh)
    return "reward"


def append_to_a_raw_array(path):
    with open(os.path.join(path, "_episode_step", "c", "0"), "ab") as fh:
        fh.write(b"\0" * 8)
    return "_episode_step"


ZARR_DAMAGE = [append_to_a_shard, cut_the_commit_file, drop_a_metadata_key, change_the_chunk_separator,
               append_to_a_raw_array]


@pytest.mark.parametrize("damage", ZARR_DAMAGE, ids=lambda f: f.__name__)
def test_zarr_damage_only_plain_readers_trip_on_is_found_and_repaired(tmp_path, damage):
    from tests.helpers.cli import run

    path = str(tmp_path / "pool.zarr")
    make_pool(path, checksums=False, batches=3)
    name = damage(path)
    with expstore.open(path) as pool:  # expstore maps the bytes by its own metadata and reads on
        assert len(pool) == 3 * 97
    if name == "reward":  # the chunk key points at a file that does not exist: zarr reads fill values
        assert not zarr_reads_committed_rows(path, name)
    else:
        with pytest.raises((ValueError, KeyError)):
            zarr_array(path, name)[...]
    report = expstore.verify(path)
    assert not report.ok and any(name in finding and "expstore repair" in finding for finding in report.findings), \
        report.findings
    assert run("verify", path, ok=False).exit_code == 1
    repaired = expstore.repair(path)
    assert any(name in action for action in repaired.actions), repaired.actions
    assert expstore.verify(path).ok
    if name in pendulum_schema():
        assert zarr_reads_committed_rows(path, name)
    else:
        zarr_array(path, name)[...]
    assert expstore.repair(path).actions == []


def test_zarr_group_document_without_its_node_type_is_found_and_repaired(tmp_path):
    path = str(tmp_path / "pool.zarr")
    make_pool(path, checksums=False, batches=1)
    file = os.path.join(path, "zarr.json")
    with open(file) as fh:
        document = json.load(fh)
    del document["node_type"]
    with open(file, "w") as fh:
        json.dump(document, fh)
    report = expstore.verify(path)
    assert any("node_type" in finding for finding in report.findings), report.findings
    assert any("node_type" in action for action in expstore.repair(path).actions)
    assert expstore.verify(path).ok


def test_a_cut_zarr_data_file_says_how_to_recover(tmp_path):
    path = str(tmp_path / "pool.zarr")
    make_pool(path, checksums=False, batches=1)
    shard = os.path.join(path, "obs", "c", "0", "0")
    os.truncate(shard, os.path.getsize(shard) - 100)
    report = expstore.verify(path)
    assert not report.ok and "truncated" in report.findings[0] and "restore the pool from a copy" in report.findings[0]
    with pytest.raises(expstore.CorruptStoreError):
        expstore.repair(path)  # rows are lost: nothing to rewrite from the metadata


def test_a_damaged_zarr_shard_index_is_rewritten_from_the_metadata(tmp_path):
    path = str(tmp_path / "pool.zarr")
    make_pool(path, checksums=False, batches=3)
    shard = os.path.join(path, "obs", "c", "0", "0")
    with open(shard, "r+b") as fh:  # one flipped bit in the index that follows the data
        fh.seek(os.path.getsize(shard) - 30)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(expstore.CorruptStoreError, match="expstore repair"):
        expstore.open(path)
    with pytest.raises(ValueError, match="checksum"):
        zarr_array(path, "obs")[...]
    assert not expstore.verify(path).ok
    assert any("shard index of 'obs'" in action for action in expstore.repair(path).actions)
    assert expstore.verify(path).ok and zarr_reads_committed_rows(path, "obs")


def test_a_damaged_zarr_shard_index_in_a_grown_file_is_left_alone(tmp_path):
    """Bytes appended and the index damaged: the data may have moved too, so nothing is rewritten."""
    path = str(tmp_path / "pool.zarr")
    make_pool(path, checksums=False, batches=1)
    shard = os.path.join(path, "obs", "c", "0", "0")
    with open(shard, "r+b") as fh:
        fh.seek(os.path.getsize(shard) - 30)
        fh.write(b"\xff")
        fh.seek(0, os.SEEK_END)
        fh.write(b"extra")
    with open(shard, "rb") as fh:
        before = fh.read()
    with pytest.raises(expstore.CorruptStoreError):
        expstore.repair(path)
    with open(shard, "rb") as fh:
        assert fh.read() == before


@pytest.mark.parametrize("damage", ["delete", "shape"])
def test_a_lost_zarr_field_document_is_rewritten_so_that_the_pool_opens_again(tmp_path, damage):
    path = str(tmp_path / "pool.zarr")
    make_pool(path, checksums=False, batches=2)
    document = os.path.join(path, "obs", "zarr.json")
    if damage == "delete":
        os.remove(document)
    else:
        drop_a_metadata_key(path, "obs", "codecs")
        with open(document) as fh:
            changed = json.load(fh)
        changed["shape"][0] -= 1
        with open(document, "w") as fh:
            json.dump(changed, fh)
    with pytest.raises(expstore.CorruptStoreError):
        expstore.open(path)
    assert not expstore.verify(path).ok
    assert "rewrote obs/zarr.json from the pool's metadata" in expstore.repair(path).actions
    assert expstore.verify(path).ok and zarr_reads_committed_rows(path, "obs")
