"""The layout record: opening reads a pool's layout with plain file I/O, and falls back to the
container (h5py, the zarr.json documents) whenever the record is missing, damaged or stale;
a writer's open then records the layout it verified again."""

from __future__ import annotations

import logging
import os
import shutil

import h5py
import numpy as np
import pytest

import expstore
from expstore.backends import resolve_backend
from expstore.backends.zarr_v3 import RECORD_FILE
from tests.helpers.pools import pendulum_schema, rows_for


def make_pool(path: str, rows: int = 40, **options) -> str:
    with expstore.open(path, "w", capacity=64, schema=pendulum_schema(), **options) as pool:
        pool.extend(rows_for(np.arange(rows)))
    return path


def container_layout(path: str):
    """The layout read the slow way, from the container itself (the record hidden meanwhile)."""
    backend = resolve_backend(path, None)
    if os.path.isdir(path):
        record = os.path.join(path, RECORD_FILE)
        os.rename(record, record + ".hidden")
        try:
            return backend.read_layout(path)
        finally:
            os.rename(record + ".hidden", record)
    with open(path, "r+b") as fh:
        head = os.pread(fh.fileno(), 16, 0)
        os.pwrite(fh.fileno(), b"\0" * 16, 0)
        try:
            return backend.read_layout(path)
        finally:
            os.pwrite(fh.fileno(), head, 0)


def record_bytes(path: str) -> tuple[str, int]:
    """The file holding the record and the record's length."""
    file = os.path.join(path, RECORD_FILE) if os.path.isdir(path) else path
    with open(file, "rb") as fh:
        head = fh.read(28)
    return file, 28 + int.from_bytes(head[20:24], "little")


def assert_all_rows(path: str, rows: int = 40) -> None:
    with expstore.open(path, "r") as pool:
        batch = pool[:]
        for name, values in rows_for(np.arange(rows)).items():
            np.testing.assert_array_equal(batch[name], values, err_msg=name)


@pytest.mark.parametrize("checksums", [False, True])
def test_the_record_gives_the_layout_the_container_gives(pool_path, checksums):
    make_pool(pool_path, checksums=checksums)
    recorded = resolve_backend(pool_path, None).read_layout(pool_path)
    assert recorded.from_record
    slow = container_layout(pool_path)
    assert not slow.from_record
    assert recorded == slow
    assert_all_rows(pool_path)


@pytest.mark.filterwarnings("error")  # zarr-python warns of a file it does not know in the group
def test_a_plain_reader_still_reads_the_pool(pool_path):
    make_pool(pool_path)
    if pool_path.endswith(".h5"):
        with h5py.File(pool_path, "r") as f:  # the record lives in the user block, which HDF5 skips
            np.testing.assert_array_equal(f["reward"][:40], rows_for(np.arange(40))["reward"])
    else:
        import zarr

        group = zarr.open_group(pool_path, mode="r")
        np.testing.assert_array_equal(group["reward"][:40], rows_for(np.arange(40))["reward"])
        assert "expstore.layout" not in list(group.keys())  # the record file is no array


def test_a_damaged_record_falls_back_with_a_warning_and_a_writer_records_it_again(pool_path, caplog):
    make_pool(pool_path)
    file, nbytes = record_bytes(pool_path)
    with open(file, "r+b") as fh:
        byte = os.pread(fh.fileno(), 1, nbytes - 3)
        os.pwrite(fh.fileno(), bytes([byte[0] ^ 0x40]), nbytes - 3)  # inside the JSON body
    with caplog.at_level(logging.WARNING, logger="expstore.layout_record"):
        assert not resolve_backend(pool_path, None).read_layout(pool_path).from_record
        assert_all_rows(pool_path)
    assert any("fails its checksum" in record.getMessage() for record in caplog.records)
    with expstore.open(pool_path, "a") as pool:  # the first open that writes verifies and records
        assert not pool.layout.from_record
    assert resolve_backend(pool_path, None).read_layout(pool_path).from_record
    assert_all_rows(pool_path)


def test_a_stale_record_is_passed_over(pool_path, caplog):
    make_pool(pool_path)
    if pool_path.endswith(".h5"):
        with h5py.File(pool_path, "a") as f:  # another program changes HDF5's own structures
            f.create_dataset("notes", data=np.arange(1000))
    else:
        document = os.path.join(pool_path, "reward", "zarr.json")
        stat = os.stat(document)
        os.utime(document, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten by another program
    with caplog.at_level(logging.INFO, logger="expstore.layout_record"):
        assert not resolve_backend(pool_path, None).read_layout(pool_path).from_record
    assert any("stale" in record.getMessage() for record in caplog.records)
    assert_all_rows(pool_path)
    expstore.open(pool_path, "r+").close()
    assert resolve_backend(pool_path, None).read_layout(pool_path).from_record


def test_a_copy_opens_and_a_pool_without_a_record_opens_the_slow_way(pool_path, tmp_path):
    make_pool(pool_path)
    copy = str(tmp_path / ("copy" + os.path.splitext(pool_path)[1]))
    if os.path.isdir(pool_path):
        shutil.copytree(pool_path, copy)  # new modification times: stale until a writer records it
        os.remove(os.path.join(pool_path, RECORD_FILE))  # as in a pool made before the record existed
    else:
        shutil.copyfile(pool_path, copy)  # the same bytes: the record stays true
    assert_all_rows(copy)
    assert_all_rows(pool_path)
    assert not resolve_backend(pool_path, None).read_layout(pool_path).from_record or pool_path.endswith(".h5")


def test_an_hdf5_pool_without_a_user_block_opens_through_h5py_and_keeps_its_bytes(tmp_path):
    """A pool created before the record existed has no user block: it opens through h5py, and a
    writer's open leaves the file's first bytes (HDF5's superblock) alone."""
    source = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "data", "format1")
    old = next(name for name in sorted(os.listdir(source)) if name.endswith(".h5"))
    path = str(tmp_path / old)
    shutil.copyfile(os.path.join(source, old), path)
    with open(path, "rb") as fh:
        head = fh.read(4096)
    assert head[:8] == b"\x89HDF\r\n\x1a\n"
    with expstore.open(path, "a") as pool:
        assert not pool.layout.from_record
        assert len(pool) > 0
    with open(path, "rb") as fh:
        assert fh.read(48) == head[:48]
    assert not resolve_backend(path, None).read_layout(path).from_record


@pytest.mark.parametrize("document", ["_episode_id/zarr.json", "_commit/zarr.json"])
def test_a_zarr_pool_missing_a_bookkeeping_document_takes_appends_and_opens_the_slow_way(tmp_path, caplog, document):
    """The documents of arrays expstore reads as raw files: another program's deletion leaves a
    writer nothing to fingerprint, so it writes no record (it said why), appends as before, and
    repair restores the document."""
    path = make_pool(str(tmp_path / "pool.zarr"))
    os.remove(os.path.join(path, document))
    with caplog.at_level(logging.WARNING), expstore.open(path, "a") as pool:
        pool.extend(rows_for(np.arange(40, 50)))
    assert any("no layout record written" in record.getMessage() and "repair" in record.getMessage()
               for record in caplog.records)
    assert not resolve_backend(path, None).read_layout(path).from_record
    assert_all_rows(path, rows=50)
    expstore.repair(path)
    assert os.path.exists(os.path.join(path, document))
    expstore.open(path, "a").close()
    assert resolve_backend(path, None).read_layout(path).from_record
