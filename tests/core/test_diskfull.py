"""A full disk: creation fails up front and cleanly, and writing a created pool never SIGBUSes.

These tests mount a small tmpfs, which needs root (CAP_SYS_ADMIN); elsewhere they skip.
Writes go through memory maps, where a page that the disk cannot back kills the process with
SIGBUS instead of raising, so the filling runs in a child process and the test checks how it
ended.
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
from expstore.backends.files import TEMP_MARK
from tests.helpers.pools import BACKENDS, pendulum_schema, rows_for

# Children run in the tests directory: they import conftest from it, and expstore as we do.
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

TMPFS_NBYTES = 8 << 20
SLACK = 1000


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs, unmounted afterwards whatever happens."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_NBYTES}", "tmpfs", str(mount_point)],
                                capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        pytest.skip("no `mount` command here; the disk-full tests need a small tmpfs")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root with CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True, timeout=30)


def fill_disk(directory) -> int:
    """Write a filler file until the disk refuses another byte; its size."""
    fd = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT, 0o644)
    written = 0
    try:
        for block_nbytes in (1 << 16, 4096, 1):
            try:
                while True:
                    written += os.write(fd, bytes(block_nbytes))
            except OSError as exc:
                assert exc.errno == 28, exc  # ENOSPC, nothing else
    finally:
        os.close(fd)
    assert shutil.disk_usage(directory).free == 0
    return written


def pool_nbytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name)) for root, _dirs, names in os.walk(path) for name in names)


_rows_per_disk: dict[str, int] = {}


@pytest.fixture
def rows_per_disk(tmp_path, backend) -> int:
    """About how many transitions (capacity) fill the small disk, bookkeeping arrays included."""
    if backend not in _rows_per_disk:
        path = str(tmp_path / f"reference{BACKENDS[backend]}")
        with expstore.open(path, "w", capacity=20_000, schema=pendulum_schema(), slack=SLACK, chunk_rows=SLACK):
            pass
        nbytes_per_slot = pool_nbytes(path) / (20_000 + SLACK)
        expstore.backends.files.remove_path(path)
        _rows_per_disk[backend] = int(TMPFS_NBYTES / nbytes_per_slot)
    return _rows_per_disk[backend]


def leftovers(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if not name.endswith(".lock"))


def test_pool_larger_than_free_space_fails_at_creation(small_disk, backend, rows_per_disk):
    path = str(small_disk / f"pool{BACKENDS[backend]}")
    with pytest.raises(expstore.DiskFullError) as caught:
        expstore.open(path, "w", capacity=2 * rows_per_disk, schema=pendulum_schema())
    assert isinstance(caught.value, OSError) and caught.value.errno == 28
    assert "MiB" in str(caught.value) and "free" in str(caught.value) and path in str(caught.value)
    assert leftovers(small_disk) == [], "a failed creation left files behind"


def test_failed_creation_leaves_no_lock_file(small_disk, backend, rows_per_disk):
    path = str(small_disk / f"pool{BACKENDS[backend]}")
    with pytest.raises(expstore.DiskFullError):
        expstore.open(path, "w", capacity=2 * rows_per_disk, schema=pendulum_schema())
    assert os.listdir(small_disk) == []


def test_creation_near_the_limit_fits_or_fails_cleanly(small_disk, backend, rows_per_disk):
    """Around the free space, each creation either works or raises DiskFullError, leaving nothing.

    Small chunks make the container's own overhead (zarr shard indexes, HDF5 chunk B-tree)
    large, so some sizes pass the up-front estimate and fail at preallocation instead.
    """
    path = str(small_disk / f"pool{BACKENDS[backend]}")
    outcomes = []
    for capacity in np.linspace(0.90, 1.02, 9) * rows_per_disk:
        try:
            with expstore.open(path, "w", capacity=int(capacity), schema=pendulum_schema(), chunk_rows=50, slack=50):
                pass
            outcomes.append("fits")
            expstore.backends.files.remove_path(path)
        except expstore.DiskFullError as exc:
            outcomes.append("full")
            assert "free disk space" in str(exc)
        assert leftovers(small_disk) == [], f"capacity {int(capacity)} left {leftovers(small_disk)}"
        assert not any(TEMP_MARK in name for name in os.listdir(small_disk))
    assert "fits" in outcomes and "full" in outcomes, outcomes


FILL_POOL = textwrap.dedent("""
    import sys
    import numpy as np
    import expstore
    from tests.helpers.pools import rows_for

    with expstore.open(sys.argv[1], "a", commit_every=5000) as pool:
        print("OPENED", flush=True)
        sys.stdin.readline()  # the parent fills the disk meanwhile
        end = pool.next_step_id + 3 * pool.capacity  # every slot, several times over
        for start in range(pool.next_step_id, end, 7000):
            pool.extend(rows_for(np.arange(start, min(start + 7000, end))))
    print("DONE", end, flush=True)
""")


def run_child(code: str, *args: str, fill_dir=None) -> subprocess.CompletedProcess:
    """Run ``code`` in a child; if ``fill_dir``, fill that disk once the child printed OPENED."""
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=TESTS_DIR)
    if fill_dir is not None:
        assert child.stdout.readline().strip() == "OPENED", child.stderr.read()
        fill_disk(fill_dir)
    stdout, stderr = child.communicate("go\n", timeout=120)
    return subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)


def test_full_disk_never_sigbuses_a_writer(small_disk, backend, rows_per_disk):
    path = str(small_disk / f"pool{BACKENDS[backend]}")
    capacity = rows_per_disk // 2
    with expstore.open(path, "w", capacity=capacity, schema=pendulum_schema(), slack=SLACK, chunk_rows=SLACK):
        pass
    result = run_child(FILL_POOL, path, fill_dir=small_disk)
    assert result.returncode != -signal.SIGBUS, "writing the pool on a full disk raised SIGBUS"
    assert result.returncode == 0, result.stderr
    end = int(result.stdout.split()[-1])
    with expstore.open(path, "r") as pool:
        assert pool.next_step_id == end and len(pool) == capacity
        window = pool[:]
        for name, values in rows_for(window["step_id"]).items():
            assert window[name].tobytes() == values.tobytes()


def test_writer_opens_on_an_already_full_disk(small_disk, backend, rows_per_disk):
    path = str(small_disk / f"pool{BACKENDS[backend]}")
    capacity = rows_per_disk // 2
    with expstore.open(path, "w", capacity=capacity, schema=pendulum_schema(), slack=SLACK, chunk_rows=SLACK):
        pass
    fill_disk(small_disk)
    with expstore.open(path, "a") as pool:
        pool.extend(rows_for(np.arange(2 * capacity)))
    with expstore.open(path, "r") as pool:
        assert pool.next_step_id == 2 * capacity


def rewrite_sparse(file: str) -> None:
    """Rewrite ``file`` seeking over its zero pages, as git and `cp --sparse` do."""
    with open(file, "rb") as fh:
        data = fh.read()
    temp = file + ".sparse"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for offset in range(0, len(data), 4096):
            page = data[offset:offset + 4096]
            if page.count(0) != len(page):
                os.pwrite(fd, page, offset)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    os.replace(temp, file)


def test_a_sparse_pool_on_a_full_disk_refuses_a_writer_cleanly(small_disk, backend, rows_per_disk):
    """A copied pool that lost its zero blocks: a writer must allocate them before it writes
    through the mapping, so a full disk gives DiskFullError at open, never SIGBUS later."""
    path = str(small_disk / f"pool{BACKENDS[backend]}")
    with expstore.open(path, "w", capacity=rows_per_disk // 2, schema=pendulum_schema(), slack=SLACK,
                       chunk_rows=SLACK) as pool:
        files = pool._layout.files
    for file in files:
        rewrite_sparse(file)
    if not any(expstore.backends.files.is_sparse(file) for file in files):
        pytest.skip("this file system keeps zero blocks allocated")
    fill_disk(small_disk)
    with pytest.raises(expstore.DiskFullError):
        expstore.open(path, "a")
    with expstore.open(path, "r") as pool:  # still a readable pool, and free for the next writer
        assert len(pool) == 0
    os.remove(os.path.join(small_disk, "filler"))
    with expstore.open(path, "a") as pool:
        pool.extend(rows_for(np.arange(10)))
    assert not any(expstore.backends.files.is_sparse(file) for file in files)


SPARSE_MAP_WRITE = textwrap.dedent("""
    import mmap, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, 4 << 20)  # a hole: no disk blocks behind it
    mapping = mmap.mmap(fd, 4 << 20)
    print("OPENED", flush=True)
    sys.stdin.readline()
    mapping[:] = b"x" * (4 << 20)
""")


def test_control_a_sparse_mapping_does_sigbus_on_a_full_disk(small_disk):
    """The harness can see a SIGBUS: what the preallocation at creation prevents."""
    result = run_child(SPARSE_MAP_WRITE, str(small_disk / "sparse.bin"), fill_dir=small_disk)
    assert result.returncode == -signal.SIGBUS, (result.returncode, result.stderr)
