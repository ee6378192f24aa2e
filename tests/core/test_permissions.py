"""Writers on pools they may not write: an immutable file or directory, a read-only bind mount.

Each writer mode gives ReadOnlyError (a PermissionError) saying to open with mode 'r'; mode 'r'
still reads; nothing is written and nothing is logged when the failed store is collected.
Root bypasses plain chmod, so the tests use ``chattr +i`` and ``mount -o remount,ro,bind``.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest

import expstore
from expstore.backends import resolve_backend
from expstore.core import commit, lock
from tests.helpers.pools import BACKENDS, pendulum_schema, rows_for

WRITER_MODES = ["r+", "a", "w"]


def make_pool(path: str) -> str:
    with expstore.open(path, "w", capacity=100, schema=pendulum_schema()) as pool:
        pool.extend(rows_for(np.arange(10)))
    return path


def snapshot(directory: str) -> dict[str, bytes]:
    """Every file under ``directory`` (the lock file aside: it only records who writes)."""
    found = {}
    for root, _dirs, names in os.walk(directory):
        for name in names:
            if not name.endswith(".lock"):
                with open(os.path.join(root, name), "rb") as fh:
                    found[os.path.relpath(os.path.join(root, name), directory)] = fh.read()
    return found


def tree(path: str) -> list[str]:
    """``path`` and, for a directory, everything under it."""
    if not os.path.isdir(path):
        return [path]
    return [path] + [os.path.join(root, name) for root, dirs, names in os.walk(path) for name in dirs + names]


@contextlib.contextmanager
def immutable(paths: list[str]) -> Iterator[None]:
    set_flag = subprocess.run(["chattr", "+i", *paths], capture_output=True, text=True, timeout=30, check=False)
    if set_flag.returncode != 0:
        subprocess.run(["chattr", "-i", *paths], capture_output=True, timeout=30, check=False)
        pytest.skip(f"chattr +i needs root and a file system with the flag (ext4, xfs): {set_flag.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *paths], check=True, timeout=30)


@contextlib.contextmanager
def read_only_bind_mount(source: str, mount_point: str) -> Iterator[None]:
    os.makedirs(mount_point, exist_ok=True)
    bound = subprocess.run(["mount", "--bind", source, mount_point], capture_output=True, text=True, timeout=30,
                           check=False)
    if bound.returncode != 0:
        pytest.skip(f"a read-only bind mount needs root and mount(8): {bound.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", mount_point], check=True, timeout=30)
        yield
    finally:
        subprocess.run(["umount", mount_point], check=True, timeout=30)


def open_writer(path: str, mode: str) -> None:
    creating = mode == "w" or not os.path.exists(path)
    extra = {"capacity": 100, "schema": pendulum_schema()} if creating else {}
    expstore.open(path, mode, **extra).close()


def assert_writers_refused(path: str, reason: str, caplog, modes=WRITER_MODES) -> None:
    """Each writer mode: ReadOnlyError naming ``reason``; the reader still reads; no finaliser noise."""
    for mode in modes:
        with pytest.raises(expstore.ReadOnlyError) as caught:
            open_writer(path, mode)
        message = str(caught.value)
        assert isinstance(caught.value, PermissionError) and path in message and "mode='r'" in message, message
        assert reason in message, message
        assert lock.holder(path) is None
    gc.collect()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    with expstore.open(path) as reader:
        assert len(reader) == 10 and reader[-1]["reward"] == -9.0


def test_immutable_pool_refuses_writers(tmp_path, pool_path, caplog):
    make_pool(pool_path)
    before = snapshot(str(tmp_path))
    with immutable(tree(pool_path)):
        assert_writers_refused(pool_path, "immutable", caplog)
    assert snapshot(str(tmp_path)) == before  # no temporary left beside it either


def test_immutable_directory_refuses_writers(tmp_path, backend, caplog):
    directory = tmp_path / "pools"
    directory.mkdir()
    path = make_pool(str(directory / f"pool{BACKENDS[backend]}"))
    os.unlink(lock.lock_path(path))  # as in a copied directory: the lock file must be created
    before = snapshot(str(directory))
    with immutable([str(directory)]):
        assert_writers_refused(path, "immutable", caplog)
        with pytest.raises(expstore.ReadOnlyError, match="immutable"):
            open_writer(str(directory / f"new{BACKENDS[backend]}"), "a")
    assert snapshot(str(directory)) == before


def test_read_only_bind_mount_refuses_writers(tmp_path, backend, caplog):
    directory = tmp_path / "pools"
    directory.mkdir()
    make_pool(str(directory / f"pool{BACKENDS[backend]}"))
    mount_point = str(tmp_path / "ro")
    with read_only_bind_mount(str(directory), mount_point):
        path = os.path.join(mount_point, f"pool{BACKENDS[backend]}")
        assert_writers_refused(path, "mounted read-only", caplog)
        with pytest.raises(expstore.ReadOnlyError) as caught:
            open_writer(path, "a")
        assert caught.value.errno == errno.EROFS


def test_immutable_field_file_of_a_zarr_pool_refuses_writers(tmp_path, caplog):
    # The commit file stays writable, so the open fails later, while the store maps the fields.
    # (Mode 'w' may replace the directory, which is not immutable.)
    path = make_pool(str(tmp_path / "pool.zarr"))
    with immutable([os.path.join(path, "obs", "c", "0", "0")]):
        assert_writers_refused(path, "immutable", caplog, modes=["r+", "a"])


def test_failed_writer_open_writes_nothing_even_from_its_finaliser(tmp_path, pool_path, backend, caplog):
    make_pool(pool_path)
    layout = resolve_backend(pool_path, None).read_layout(pool_path)
    with open(layout.commit.path, "r+b") as fh:
        slots = os.pread(fh.fileno(), 2 * commit.SLOT_NBYTES, layout.commit.offset)
        newest, _ = commit.newest(slots)
        too_many = commit.CommitRecord(newest.seq + 1, head=newest.tail + 500, tail=newest.tail,
                                       time_unix=newest.time_unix, payload=newest.payload)
        os.pwrite(fh.fileno(), too_many.encode(), layout.commit.offset + too_many.slot_index * commit.SLOT_NBYTES)
    before = snapshot(str(tmp_path))
    for _ in range(2):  # the second open is refused the same way: the first gave the lock back
        with pytest.raises(expstore.CorruptStoreError, match="more rows than the capacity"):
            expstore.open(pool_path, "a")
        gc.collect()
    assert snapshot(str(tmp_path)) == before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert lock.holder(pool_path) is None
