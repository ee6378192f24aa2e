"""A writer handle inherited across fork never writes, commits or releases the parent's lock."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import expstore
from tests.helpers.pools import pendulum_schema, rows_for

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


RETURNED, REFUSED, FAILED = 0, 3, 1


def run_in_fork(action) -> int:
    """Run ``action`` in a forked child: RETURNED, REFUSED (ReadOnlyError) or FAILED."""
    pid = os.fork()
    if pid == 0:
        code = FAILED
        try:
            action()
            code = RETURNED
        except expstore.ReadOnlyError:
            code = REFUSED
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_forked_child_cannot_write_through_the_parents_writer(pool_path):
    with expstore.open(pool_path, "w", capacity=100, schema=pendulum_schema()) as pool:
        pool.extend(rows_for(np.arange(10)))
        one_row = {name: values[0] for name, values in rows_for([10]).items()}
        assert run_in_fork(lambda: pool.append(one_row)) == REFUSED
        assert run_in_fork(lambda: pool.extend(rows_for(np.arange(10, 12)))) == REFUSED
        assert run_in_fork(pool.flush) == REFUSED
        pool.append(one_row)  # the parent still writes
        assert len(pool) == 11


def test_forked_child_closing_leaves_lock_and_commit_alone(pool_path):
    with expstore.open(pool_path, "w", capacity=100, schema=pendulum_schema()) as pool:
        pool.extend(rows_for(np.arange(10)))
        pool.flush()
        pool.extend(rows_for(np.arange(10, 15)))  # pending, not committed
        assert run_in_fork(pool.close) == RETURNED
        with pytest.raises(expstore.StoreLockedError):
            expstore.open(pool_path, "a")  # the parent still holds the lock
        with expstore.open(pool_path) as reader:
            assert len(reader) == 10  # the child committed nothing
    with expstore.open(pool_path) as reader:
        assert len(reader) == 15


def test_forked_child_closing_keeps_the_parents_lock_on_the_pool_file(tmp_path, pool_path):
    copy = str(tmp_path / ("copy" + os.path.splitext(pool_path)[1]))
    with expstore.open(pool_path, "w", capacity=100, schema=pendulum_schema()) as pool:
        pool.extend(rows_for(np.arange(10)))
        if os.path.isdir(pool_path):
            shutil.copytree(pool_path, copy, copy_function=os.link)  # cp -al: the same files
        else:
            os.link(pool_path, copy)
        assert run_in_fork(pool.close) == RETURNED  # the child shares, then closes, the locked descriptor
        with pytest.raises(expstore.StoreLockedError, match="another name"):
            expstore.open(copy, "a")  # the parent still holds the lock on the pool's file
    with expstore.open(copy, "a") as other:
        assert len(other) == 10


def test_a_forked_childs_reads_leave_the_parents_uncommitted_rows_to_the_parent(pool_path):
    """Rows the parent staged, or whose episode bookkeeping it deferred, are written by the
    parent only: a child reading through the inherited handle sees the committed rows and
    changes no byte of the pool."""
    with expstore.open(pool_path, "w", capacity=100, schema=pendulum_schema()) as pool:
        pool.extend(rows_for(np.arange(10)))
        pool.flush()
        files = [os.path.join(root, name) for root, _, names in os.walk(pool_path) for name in names] \
            if os.path.isdir(pool_path) else [pool_path]
        pool.extend(rows_for(np.arange(10, 20)))  # its bookkeeping deferred
        for step in range(20, 23):  # staged
            pool.append({name: values[0] for name, values in rows_for([step]).items()})
        before = {path: Path(path).read_bytes() for path in sorted(files)}

        def read_in_child() -> None:
            assert len(pool) == 10 and len(pool.episodes()["episode_id"]) >= 1
            pool.sample(8, rng=0)

        assert run_in_fork(read_in_child) == RETURNED
        assert {path: Path(path).read_bytes() for path in sorted(files)} == before
        assert len(pool) == 23
    with expstore.open(pool_path, "r") as reader:
        np.testing.assert_array_equal(reader[:]["obs"], rows_for(np.arange(23))["obs"])
