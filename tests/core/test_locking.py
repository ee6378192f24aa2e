"""One writer per pool, whatever name reaches it: a symlink (either way round), a symlinked
directory, a hard link (a `cp -al` copy of a .zarr), a bind mount of the directory or of the file.

The writer runs in this process; a second process tries to open the other names in mode 'a'.
Both locks are held per open file description, so a second open in this process is refused
the same way: the remaining tests use that to save a process start.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import expstore
from expstore.backends import resolve_backend
from expstore.core import lock
from tests.helpers.pools import BACKENDS, pendulum_schema, rows_for

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

# Opens each path of argv in mode 'a' and prints one line per path: OPENED, or LOCKED and the message.
TRY_WRITERS = textwrap.dedent("""
    import sys
    import expstore

    for path in sys.argv[1:]:
        try:
            expstore.open(path, "a").close()
            print("OPENED", flush=True)
        except expstore.StoreLockedError as exc:
            print("LOCKED", " ".join(str(exc).split()), flush=True)
""")

# Holds a writer on argv[1] until its stdin closes.
HOLD_WRITER = textwrap.dedent("""
    import sys
    import expstore

    with expstore.open(sys.argv[1], "a") as pool:
        print("HOLDING", flush=True)
        sys.stdin.read()
""")


def writers_in_child(*paths: str) -> list[str]:
    """What a second process gets when it opens each path as a writer."""
    done = subprocess.run([sys.executable, "-c", TRY_WRITERS, *paths], capture_output=True, text=True,
                          cwd=TESTS_DIR, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == len(paths), done.stdout
    return lines


def make_pool(path: str) -> str:
    with expstore.open(path, "w", capacity=100, schema=pendulum_schema()) as pool:
        pool.extend(rows_for(np.arange(10)))
    return path


def hard_link_copy(src: str, dst: str) -> None:
    """`cp -al`: every file of the copy is a hard link to the source's (a directory gets new directories)."""
    if os.path.isdir(src):
        shutil.copytree(src, dst, copy_function=os.link)
    else:
        os.link(src, dst)


@pytest.fixture
def real_pool(tmp_path, backend) -> str:
    (tmp_path / "real").mkdir()
    return make_pool(str(tmp_path / "real" / f"pool{BACKENDS[backend]}"))


def test_symlink_to_a_pool_is_the_same_pool_for_the_lock(tmp_path, backend, real_pool):
    link = str(tmp_path / f"link{BACKENDS[backend]}")
    os.symlink(real_pool, link)
    with expstore.open(real_pool, "a"):
        expected = f"LOCKED {link} is being written by another process (pid={os.getpid()}"
        assert writers_in_child(link)[0].startswith(expected)
    with expstore.open(link, "a"):
        assert writers_in_child(real_pool)[0].startswith(f"LOCKED {real_pool} is being written by another process "
                                                         f"(pid={os.getpid()}")
    for name in (link, real_pool):  # closing gave both names back
        expstore.open(name, "a").close()


def test_symlinked_parent_directory_is_the_same_pool_for_the_lock(tmp_path, backend, real_pool):
    os.symlink(tmp_path / "real", tmp_path / "alias")
    through_alias = str(tmp_path / "alias" / os.path.basename(real_pool))
    with expstore.open(real_pool, "a"):
        assert writers_in_child(through_alias)[0].startswith("LOCKED")
    with expstore.open(through_alias, "a"):
        assert writers_in_child(real_pool)[0].startswith("LOCKED")


def test_hard_linked_pool_is_the_same_pool_for_the_lock(tmp_path, backend, real_pool):
    copy = str(tmp_path / f"copy{BACKENDS[backend]}")
    hard_link_copy(real_pool, copy)
    with expstore.open(real_pool, "a"):
        answer = writers_in_child(copy)[0]
    assert answer.startswith(f"LOCKED {copy} is being written by another process through another name") \
        and "hard link" in answer
    with expstore.open(copy, "a"):
        assert writers_in_child(real_pool)[0].startswith("LOCKED")
    with expstore.open(real_pool, "r") as reader, expstore.open(copy, "r") as other:
        assert len(reader) == len(other) == 10  # readers take no lock, through any name


def test_repair_through_another_name_waits_for_the_writer(tmp_path, backend, real_pool):
    copy = str(tmp_path / f"copy{BACKENDS[backend]}")
    hard_link_copy(real_pool, copy)
    with expstore.open(real_pool, "a"), pytest.raises(expstore.StoreLockedError, match="another name"):
        expstore.repair(copy)  # it would rewrite the commit record under the running writer
    assert expstore.repair(copy).actions == []


def test_lock_through_another_name_is_released_when_its_writer_dies(tmp_path, backend, real_pool):
    copy = str(tmp_path / f"copy{BACKENDS[backend]}")
    hard_link_copy(real_pool, copy)
    child = subprocess.Popen([sys.executable, "-c", HOLD_WRITER, copy], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=TESTS_DIR)
    try:
        assert child.stdout.readline().strip() == "HOLDING", child.stderr.read()
        with pytest.raises(expstore.StoreLockedError, match="another name"):
            expstore.open(real_pool, "a")
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    with expstore.open(real_pool, "a") as pool:  # the kernel dropped the dead writer's locks
        assert pool.writable


# Holds a POSIX read lock on all of argv[1], as NFS turns an HDF5 reader's flock into, until stdin closes.
HOLD_READ_LOCK = textwrap.dedent("""
    import fcntl, os, sys

    fd = os.open(sys.argv[1], os.O_RDONLY)
    fcntl.lockf(fd, fcntl.LOCK_SH)
    print("HOLDING", flush=True)
    sys.stdin.read()
""")


def test_read_lock_on_the_pool_file_is_named_as_a_reader(backend, real_pool):
    commit_file = resolve_backend(real_pool, None).read_layout(real_pool).commit.path
    child = subprocess.Popen([sys.executable, "-c", HOLD_READ_LOCK, commit_file], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "HOLDING", child.stderr.read()
        with pytest.raises(expstore.StoreLockedError, match="holds a read lock on .*locking=False"):
            expstore.open(real_pool, "a")
        with expstore.open(real_pool, "r") as reader:
            assert len(reader) == 10
    finally:
        child.communicate(timeout=60)  # closing its stdin ends it
    with expstore.open(real_pool, "a") as pool:
        assert pool.writable


def test_writer_locks_the_pool_file_it_created(tmp_path, backend):
    path = str(tmp_path / f"pool{BACKENDS[backend]}")
    copy = str(tmp_path / f"copy{BACKENDS[backend]}")
    with expstore.open(path, "w", capacity=100) as pool:  # created at the first write (no schema)
        pool.extend(rows_for(np.arange(5)))
        hard_link_copy(path, copy)
        with pytest.raises(expstore.StoreLockedError, match="another name"):
            expstore.open(copy, "a")  # another open file description: refused in this process too


def test_mode_w_through_a_symlink_replaces_the_target_and_keeps_the_link(tmp_path, backend, real_pool):
    link = str(tmp_path / f"link{BACKENDS[backend]}")
    os.symlink(real_pool, link)
    with expstore.open(link, "w", capacity=50, schema=pendulum_schema()) as pool:
        pool.extend(rows_for(np.arange(3)))
        with pytest.raises(expstore.StoreLockedError, match=f"pid={os.getpid()}"):
            expstore.open(real_pool, "a")
    assert os.path.islink(link)
    with expstore.open(real_pool) as pool:
        assert (pool.capacity, len(pool)) == (50, 3)
    assert not os.path.exists(link + ".lock")  # the lock lives beside the pool, not the link


def test_holder_is_read_through_a_symlink(tmp_path, backend, real_pool):
    link = str(tmp_path / f"link{BACKENDS[backend]}")
    os.symlink(real_pool, link)
    with expstore.open(real_pool, "a"):
        assert f"pid={os.getpid()}" in (lock.holder(link) or "")
    assert lock.holder(link) is None


# ---------------------------------------------------------------------------- bind mounts
def bind_mount(source: str, target: str) -> None:
    done = subprocess.run(["mount", "--bind", source, target], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.skip(f"bind mounts need root and mount(8): {done.stderr.strip()}")


def unmount(target: str) -> None:
    subprocess.run(["umount", target], check=True, timeout=30)


def test_bind_mounted_directory_is_the_same_pool_for_the_lock(tmp_path, backend, real_pool):
    mount_point = tmp_path / "mounted"
    mount_point.mkdir()
    bind_mount(str(tmp_path / "real"), str(mount_point))
    try:
        through_mount = str(mount_point / os.path.basename(real_pool))
        with expstore.open(real_pool, "a"), pytest.raises(expstore.StoreLockedError):
            expstore.open(through_mount, "a")
        with expstore.open(through_mount, "a"), pytest.raises(expstore.StoreLockedError):
            expstore.open(real_pool, "a")
    finally:
        unmount(str(mount_point))


def test_bind_mounted_pool_file_is_the_same_pool_for_the_lock(tmp_path):
    real_pool = make_pool(str(tmp_path / "pool.h5"))
    other = tmp_path / "other.h5"
    other.write_bytes(b"")  # a bind mount needs an existing file to cover
    bind_mount(real_pool, str(other))
    try:
        with expstore.open(real_pool, "a"), pytest.raises(expstore.StoreLockedError, match="another name"):
            expstore.open(str(other), "a")
    finally:
        unmount(str(other))
