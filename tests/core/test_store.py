"""Behaviour of the core store (issue 2), on both backends.

Rows come from ``rows_for(step_ids)``: every value is derived from its step id, so any row read
back can be checked on its own, wherever it sits in the ring.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import expstore
from expstore.backends import BACKENDS as BACKEND_IMPLS
from tests.helpers.pools import BACKENDS, drop_from_page_cache, pendulum_schema, pool_files, rows_for

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------- helpers
def create(path: str, capacity: int = 10, **kwargs) -> expstore.Store:
    kwargs.setdefault("schema", pendulum_schema())
    return expstore.open(path, "w", capacity=capacity, **kwargs)


def one_row(step_id: int) -> dict:
    return {name: values[0] for name, values in rows_for([step_id]).items()}


def assert_rows(batch: dict, step_ids) -> None:
    """``batch`` holds exactly the rows of ``step_ids``, in that order, with their step ids."""
    steps = np.asarray(step_ids, dtype=np.int64)
    assert batch["step_id"].dtype == np.int64
    np.testing.assert_array_equal(batch["step_id"], steps)
    for name, expected in rows_for(steps).items():
        assert batch[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(batch[name], expected, err_msg=name)


def run_child(code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter and return its stdout (fails the test on a non-zero exit)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def data_extents(path: str, backend: str):
    """Where each field's bytes lie, as the store itself finds them."""
    return BACKEND_IMPLS[backend].read_layout(path).fields


# ---------------------------------------------------------------------------- modes
def test_mode_w_creates_and_replaces(pool_path):
    with create(pool_path) as pool:
        pool.extend(rows_for(range(4)))
    with create(pool_path) as pool:
        assert len(pool) == 0 and pool.next_step_id == 0
    with expstore.open(pool_path) as pool:
        assert len(pool) == 0


@pytest.mark.parametrize("mode", ["w-", "x"])
def test_exclusive_modes_create_once_then_refuse(pool_path, mode):
    with expstore.open(pool_path, mode, capacity=5, schema=pendulum_schema()) as pool:
        pool.append(one_row(0))
    with pytest.raises(expstore.StoreExistsError):
        expstore.open(pool_path, mode, capacity=5, schema=pendulum_schema())
    with expstore.open(pool_path) as pool:  # the refused open did not touch it
        assert_rows(pool[:], [0])


@pytest.mark.parametrize("mode", ["r", "r+"])
def test_modes_r_and_r_plus_need_an_existing_pool(pool_path, mode):
    with pytest.raises(expstore.StoreNotFoundError):
        expstore.open(pool_path, mode)
    assert not os.path.exists(pool_path)


def test_mode_r_reads_and_refuses_writes(pool_path):
    with create(pool_path) as pool:
        pool.extend(rows_for(range(3)))
    with expstore.open(pool_path, "r") as reader:
        assert not reader.writable
        assert_rows(reader[:], range(3))
        with pytest.raises(expstore.ReadOnlyError):
            reader.append(one_row(3))


def test_mode_r_plus_writes_an_existing_pool(pool_path):
    with create(pool_path) as pool:
        pool.extend(rows_for(range(3)))
    with expstore.open(pool_path, "r+") as pool:
        assert pool.writable
        pool.append(one_row(3))
    with expstore.open(pool_path) as pool:
        assert_rows(pool[:], range(4))


def test_mode_a_creates_then_continues(pool_path):
    with expstore.open(pool_path, "a", capacity=6, schema=pendulum_schema()) as pool:
        pool.extend(rows_for(range(4)))
    with expstore.open(pool_path, "a") as pool:
        assert pool.next_step_id == 4
        pool.extend(rows_for(range(4, 9)))
    with expstore.open(pool_path, "a", capacity=6, schema=pendulum_schema()) as pool:
        assert_rows(pool[:], range(3, 9))


def test_default_mode_is_read_only(pool_path):
    create(pool_path).close()
    with expstore.open(pool_path) as pool:
        assert not pool.writable


# ---------------------------------------------------------------------------- backends
@pytest.mark.parametrize("suffix, expected", [(".h5", "hdf5"), (".hdf5", "hdf5"), (".H5", "hdf5"),
                                              (".zarr", "zarr")])
def test_backend_from_suffix(tmp_path, suffix, expected):
    path = str(tmp_path / f"pool{suffix}")
    with create(path) as pool:
        assert pool.backend == expected
    with expstore.open(path) as pool:
        assert pool.backend == expected


def test_backend_argument_overrides_the_suffix(tmp_path, backend):
    path = str(tmp_path / "pool.data")
    with create(path, backend=backend) as pool:
        assert pool.backend == backend
        pool.extend(rows_for(range(2)))
    with expstore.open(path, backend=backend) as pool:
        assert_rows(pool[:], range(2))
    assert os.path.isdir(path) == (backend == "zarr")


def test_zarr_path_with_trailing_separator(tmp_path):
    path = str(tmp_path / "pool.zarr") + os.sep
    with create(path) as pool:
        assert pool.backend == "zarr"


def test_unknown_suffix_lists_the_choices(tmp_path):
    path = str(tmp_path / "pool.bin")
    with pytest.raises(expstore.BackendError) as info:
        create(path)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    for word in (".h5", ".hdf5", ".zarr", "hdf5", "zarr", "backend="):
        assert word in message
    assert not os.path.exists(path)


def test_unknown_backend_name_lists_the_choices(tmp_path):
    with pytest.raises(expstore.BackendError, match=r"unknown backend 'lmdb'.*hdf5.*zarr"):
        create(str(tmp_path / "pool.h5"), backend="lmdb")


# ---------------------------------------------------------------------------- schema
def test_schema_as_fields_or_tuples_is_the_same(tmp_path, backend):
    suffix = BACKENDS[backend]
    as_fields = {name: expstore.Field(*spec) for name, spec in pendulum_schema().items()}
    with create(str(tmp_path / f"a{suffix}"), schema=as_fields) as a, \
            create(str(tmp_path / f"b{suffix}")) as b:
        assert a.schema == b.schema == pendulum_schema()
        assert list(a.schema) == list(pendulum_schema())  # order kept
        assert a.schema["obs"] == expstore.Field((3,), np.float32)


def test_schema_survives_reopen(pool_path):
    schema = {"obs": ((2, 3), "float64"), "count": ((), "int16"), "mask": ((4,), "uint8")}
    create(pool_path, schema=schema).close()
    with expstore.open(pool_path) as pool:
        assert pool.schema == schema
        assert pool.schema["obs"].shape == (2, 3) and pool.schema["count"].dtype == np.int16


def test_first_append_defines_the_schema(pool_path):
    pool = expstore.open(pool_path, "w", capacity=4)
    assert pool.schema is None and len(pool) == 0 and pool.capacity == 4
    pool.append({"obs": np.zeros(3, np.float32), "reward": 1.5, "done": True, "count": 7,
                 "image": np.zeros((2, 2), np.uint8)})
    pool.append({"obs": np.ones(3, np.float32), "reward": 2.5, "done": False, "count": 8,
                 "image": np.ones((2, 2), np.uint8)})
    pool.close()
    with expstore.open(pool_path) as pool:
        assert pool.schema == {"obs": ((3,), "float32"), "reward": ((), "float64"), "done": ((), "bool"),
                               "count": ((), "int64"), "image": ((2, 2), "uint8")}
        assert pool[-1]["reward"] == 2.5 and pool[-1]["count"] == 8 and not pool[-1]["done"]


def test_first_extend_defines_the_schema(pool_path):
    with expstore.open(pool_path, "w", capacity=8) as pool:
        pool.extend(rows_for(range(5)))
        assert pool.schema == pendulum_schema()
        pool.extend(rows_for(range(5, 7)))
    with expstore.open(pool_path) as pool:
        assert pool.schema == pendulum_schema()
        assert_rows(pool[:], range(7))


def test_no_schema_and_no_write_creates_nothing(pool_path):
    with expstore.open(pool_path, "w", capacity=4) as pool:
        assert pool.schema is None and pool.next_step_id == 0
    assert not os.path.exists(pool_path)


# ---------------------------------------------------------------------------- input types and casts
def test_append_accepts_numpy_python_scalars_and_lists(pool_path):
    with create(pool_path) as pool:
        pool.append(one_row(0))  # numpy rows and numpy scalars
        pool.append({"obs": [1.0, 1.25, 1.5], "action": [2.0], "reward": -1.0,
                     "next_obs": (2.0, 2.25, 2.5), "terminated": False, "truncated": False})
        pool.append({"obs": np.array([2, 2.25, 2.5]), "action": np.array([4.0]), "reward": -2,
                     "next_obs": np.array([3, 3.25, 3.5]), "terminated": np.bool_(False), "truncated": 0})
        assert_rows(pool[:], range(3))


def test_append_and_extend_accept_cpu_torch_tensors(pool_path):
    torch = pytest.importorskip("torch")
    with create(pool_path) as pool:
        pool.append({name: torch.from_numpy(np.array(value)) for name, value in one_row(0).items()})
        pool.extend({name: torch.from_numpy(values) for name, values in rows_for(range(1, 4)).items()})
        pool.append({"obs": torch.tensor([4.0, 4.25, 4.5]), "action": torch.tensor([8.0]),
                     "reward": torch.tensor(-4.0, dtype=torch.float64), "next_obs": torch.tensor([5.0, 5.25, 5.5]),
                     "terminated": torch.tensor(False), "truncated": torch.tensor(False)})
        assert_rows(pool[:], range(5))


def test_tensor_that_requires_grad_is_accepted(pool_path):
    torch = pytest.importorskip("torch")
    with create(pool_path) as pool:
        row = one_row(0)
        row["obs"] = torch.tensor(row["obs"], requires_grad=True)
        pool.append(row)
        assert_rows(pool[:], [0])


def test_safe_casts_are_accepted(pool_path):
    schema = {"x": ((2,), "float32"), "count": ((), "int32"), "flag": ((), "bool"), "small": ((), "uint8")}
    with create(pool_path, schema=schema) as pool:
        pool.append({"x": np.array([0.1, 1e30]), "count": np.int64(2**31 - 1), "flag": 1, "small": 255})
        pool.extend({"x": np.ones((2, 2), np.float64), "count": np.array([-(2**31), 5], np.int64),
                     "flag": np.array([0, 1]), "small": np.array([0.0, 3.0])})
        batch = pool[:]
    np.testing.assert_array_equal(batch["x"], np.array([[0.1, 1e30], [1, 1], [1, 1]], np.float32))
    np.testing.assert_array_equal(batch["count"], np.array([2**31 - 1, -(2**31), 5], np.int32))
    np.testing.assert_array_equal(batch["flag"], [True, False, True])
    np.testing.assert_array_equal(batch["small"], np.array([255, 0, 3], np.uint8))
    assert {name: values.dtype for name, values in batch.items() if name != "step_id"} == \
        {name: np.dtype(dtype) for name, (_shape, dtype) in schema.items()}


@pytest.mark.parametrize("field, value", [
    ("count", 2**31),             # int64 out of int32 range
    ("count", 1.5),               # not a whole number
    ("x", [1e40, 0.0]),           # overflows float32
    ("flag", 2),                  # not 0/1
    ("small", -1),                # negative into unsigned
])
def test_unsafe_casts_are_refused(pool_path, field, value):
    schema = {"x": ((2,), "float32"), "count": ((), "int32"), "flag": ((), "bool"), "small": ((), "uint8")}
    row = {"x": np.zeros(2, np.float32), "count": 1, "flag": True, "small": 1}
    with create(pool_path, schema=schema) as pool:
        with pytest.raises(expstore.SchemaError, match=repr(field)):
            pool.append({**row, field: value})
        assert len(pool) == 0


# ---------------------------------------------------------------------------- properties
def test_properties_in_the_writer(pool_path, backend):
    attrs = {"env_id": "Pendulum-v1", "gamma": 0.99, "nested": {"k": [1, 2]}}
    with create(pool_path, capacity=5, attrs=attrs, commit_every=1000) as pool:
        assert (len(pool), pool.next_step_id, pool.first_step_id) == (0, 0, 0)
        assert pool.capacity == 5 and pool.backend == backend and pool.attrs == attrs
        assert pool.schema == pendulum_schema() and pool.format_version >= 1 and pool.chunk_rows >= 1
        assert pool.last_commit_time is None
        pool.extend(rows_for(range(7)))  # uncommitted still, but the writer counts them
        assert (len(pool), pool.next_step_id, pool.first_step_id) == (5, 7, 2)
        pool.attrs["env_id"] = "changed"  # a copy: the pool's attrs are written once
        assert pool.attrs == attrs
        pool.flush()
        assert pool.last_commit_time is not None


def test_properties_in_a_reader_process_see_the_committed_count(pool_path, backend):
    reader_code = """
        import json, sys, expstore
        with expstore.open(sys.argv[1], "r") as pool:
            print(json.dumps({"len": len(pool), "capacity": pool.capacity, "backend": pool.backend,
                              "attrs": pool.attrs, "next": pool.next_step_id, "first": pool.first_step_id,
                              "schema": {n: [list(f.shape), f.dtype.name] for n, f in pool.schema.items()}}))
    """
    attrs = {"env_id": "Pendulum-v1"}
    with create(pool_path, capacity=5, attrs=attrs, commit_every=1000, commit_interval_s=3600) as pool:
        pool.extend(rows_for(range(3)))
        pool.flush()
        pool.extend(rows_for(range(3, 7)))  # not committed: a reader must not count these
        seen = json.loads(run_child(reader_code, pool_path))
        assert (seen["len"], seen["next"], seen["first"]) == (3, 3, 0)
        assert (seen["capacity"], seen["backend"], seen["attrs"]) == (5, backend, attrs)
        assert seen["schema"] == {n: [list(s), d] for n, (s, d) in pendulum_schema().items()}
        assert (len(pool), pool.next_step_id, pool.first_step_id) == (5, 7, 2)
        pool.flush()
        seen = json.loads(run_child(reader_code, pool_path))
        assert (seen["len"], seen["next"], seen["first"]) == (5, 7, 2)


def test_reader_follows_the_writer_commits(pool_path):
    with (
        create(pool_path, capacity=4, slack=8, commit_every=1000, commit_interval_s=3600) as pool,
        expstore.open(pool_path, "r") as reader,
    ):
        assert len(reader) == 0
        pool.extend(rows_for(range(6)))
        assert len(reader) == 0 and reader.next_step_id == 0
        pool.flush()
        assert (len(reader), reader.first_step_id, reader.next_step_id) == (4, 2, 6)
        assert_rows(reader[:], range(2, 6))


def test_auto_commit_every_n_rows(pool_path):
    with (
        create(pool_path, capacity=50, commit_every=4, commit_interval_s=3600) as pool,
        expstore.open(pool_path, "r") as reader,
    ):
        for step in range(10):
            pool.append(one_row(step))
        pool.wait_for_commits()  # the automatic commits' syncs run in the background (core/commit_pipeline.py)
        assert reader.next_step_id == 8  # commits at 4 and 8, 2 rows still pending
        pool.extend(rows_for(range(10, 13)))
        pool.wait_for_commits()
        assert reader.next_step_id == 13


# ---------------------------------------------------------------------------- reading
def test_indexing_and_slices(pool_path):
    with create(pool_path, capacity=6) as pool:
        pool.extend(rows_for(range(9)))  # window is steps 3..8
        row = pool[0]
        assert row["step_id"] == 3 and row["obs"].shape == (3,)
        np.testing.assert_array_equal(row["obs"], rows_for([3])["obs"][0])
        assert pool[-1]["step_id"] == 8 and pool[5]["step_id"] == 8 and pool[-6]["step_id"] == 3
        assert_rows(pool[1:4], range(4, 7))
        assert_rows(pool[:], range(3, 9))
        assert_rows(pool[-2:], [7, 8])
        assert_rows(pool[::2], [3, 5, 7])
        assert_rows(pool[4:100], [7, 8])
        assert_rows(pool[3:3], [])
        for key in (6, -7):
            with pytest.raises(expstore.StepNotFoundError):
                pool[key]


def test_read_step_ids(pool_path):
    with create(pool_path, capacity=6) as pool:
        pool.extend(rows_for(range(9)))
        assert_rows(pool.read([8, 3, 5, 5]), [8, 3, 5, 5])
        assert_rows(pool.read(np.array([4], np.int32)), [4])
        assert_rows(pool.read([]), [])
        for step in (2, 9):  # evicted, not yet written
            with pytest.raises(expstore.StepNotFoundError, match=str(step)):
                pool.read([4, step])


# ---------------------------------------------------------------------------- sampling
def test_sample_holds_every_field_and_step_id(pool_path):
    with create(pool_path, capacity=20) as pool:
        pool.extend(rows_for(range(30)))
        batch = pool.sample(64, rng=0)
    assert set(batch) == set(pendulum_schema()) | {"step_id"}
    assert batch["obs"].shape == (64, 3) and batch["reward"].shape == (64,)
    assert ((batch["step_id"] >= 10) & (batch["step_id"] < 30)).all()
    assert_rows(batch, batch["step_id"])


def test_same_seed_same_batch(pool_path):
    with create(pool_path, capacity=100) as pool:
        pool.extend(rows_for(range(100)))
        first = pool.sample(32, rng=123)
        assert_rows(pool.sample(32, rng=123), first["step_id"])
        assert not np.array_equal(pool.sample(32, rng=124)["step_id"], first["step_id"])
    with expstore.open(pool_path) as reader:  # same pool, another handle
        np.testing.assert_array_equal(reader.sample(32, rng=123)["step_id"], first["step_id"])


def test_sample_accepts_a_generator(pool_path):
    with create(pool_path, capacity=100) as pool:
        pool.extend(rows_for(range(100)))
        rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
        a1, a2 = pool.sample(16, rng=rng_a), pool.sample(16, rng=rng_a)
        b1 = pool.sample(16, rng=rng_b)
        np.testing.assert_array_equal(a1["step_id"], b1["step_id"])
        assert not np.array_equal(a1["step_id"], a2["step_id"])  # the generator advanced
        assert pool.sample(8)["step_id"].shape == (8,)  # rng=None draws fresh entropy


def test_sample_covers_the_whole_window_uniformly(pool_path):
    with create(pool_path, capacity=10) as pool:
        pool.extend(rows_for(range(25)))
        steps = pool.sample(20_000, rng=1)["step_id"]
    counts = np.bincount(steps - 15, minlength=10)
    assert counts.size == 10 and counts.min() > 1700 and counts.max() < 2300


def test_reader_samples_only_committed_rows(pool_path):
    with create(pool_path, capacity=50, commit_every=1000, commit_interval_s=3600) as pool:
        pool.extend(rows_for(range(10)))
        pool.flush()
        pool.extend(rows_for(range(10, 40)))
        with expstore.open(pool_path) as reader:
            steps = reader.sample(2000, rng=0)["step_id"]
            assert steps.max() < 10 and steps.min() >= 0


def test_sampling_an_empty_pool_is_a_clear_error(pool_path):
    with create(pool_path) as pool:
        with pytest.raises(expstore.EmptyStoreError, match="no committed transition"):
            pool.sample(4, rng=0)
        pool.append(one_row(0))
        with expstore.open(pool_path) as reader, pytest.raises(expstore.EmptyStoreError):  # nothing committed yet
            reader.sample(4, rng=0)
    with (
        expstore.open(str(pool_path) + "-none" + os.path.splitext(pool_path)[1], "w", capacity=3) as pool,
        pytest.raises(expstore.EmptyStoreError),
    ):
        pool.sample(1)


# ---------------------------------------------------------------------------- ring semantics
SIZE_SEQUENCES = [
    [1] * 25,
    [0, 3, 4, 7, 10, 11, 2, 25, 1, 9],
    [23],  # one extend larger than capacity + slack
    [10, 10, 10],
    [5, 37, 0, 1, 13],
]


@pytest.mark.parametrize("sizes", SIZE_SEQUENCES)
def test_ring_keeps_the_last_capacity_transitions(pool_path, sizes):
    capacity = 10
    with create(pool_path, capacity=capacity, slack=3, chunk_rows=4, commit_every=5, fsync=False) as pool:
        next_step = 0
        for size in sizes:
            if size == 1 and next_step % 2:
                pool.append(one_row(next_step))
            else:
                pool.extend(rows_for(range(next_step, next_step + size)))
            next_step += size
            expected = range(max(0, next_step - capacity), next_step)
            assert_rows(pool[:], expected)
            assert (len(pool), pool.next_step_id, pool.first_step_id) == (len(expected), next_step, expected.start)
    with expstore.open(pool_path) as pool:
        assert_rows(pool[:], expected)


def test_extend_larger_than_the_ring_keeps_the_last_rows(pool_path):
    with create(pool_path, capacity=7, slack=2, chunk_rows=3, fsync=False) as pool:  # 50 commits
        pool.extend(rows_for(range(100)))
        assert_rows(pool[:], range(93, 100))


# ---------------------------------------------------------------------------- life cycle
def test_flush_makes_rows_visible_and_durable(pool_path):
    with create(pool_path, commit_every=1000, commit_interval_s=3600) as pool:
        pool.extend(rows_for(range(3)))
        with expstore.open(pool_path) as reader:
            assert len(reader) == 0
            pool.flush()
            assert_rows(reader[:], range(3))
            pool.flush(fsync=False)  # nothing new: a no-op commit
            pool.append(one_row(3))
            pool.flush(fsync=False)
            assert_rows(reader[:], range(4))


def test_close_commits_and_releases(pool_path):
    pool = create(pool_path, commit_every=1000, commit_interval_s=3600)
    pool.extend(rows_for(range(4)))
    pool.close()
    pool.close()  # twice is fine
    for call in (lambda: len(pool), lambda: pool[0], lambda: pool.sample(1), lambda: pool.append(one_row(4)),
                 lambda: pool.extend(rows_for([4])), lambda: pool.flush(), lambda: pool.next_step_id):
        with pytest.raises(expstore.ClosedStoreError):
            call()
    with expstore.open(pool_path, "a") as again:  # the writer lock was released
        assert_rows(again[:], range(4))


def test_context_manager_closes_even_on_error(pool_path):
    with pytest.raises(RuntimeError), create(pool_path, commit_every=1000, commit_interval_s=3600) as pool:
        pool.extend(rows_for(range(2)))
        raise RuntimeError("boom")
    with expstore.open(pool_path, "a") as again:
        assert_rows(again[:], range(2))


def test_interpreter_exit_without_close_commits(pool_path):
    run_child("""
        import sys, expstore
        from tests.helpers.pools import pendulum_schema, rows_for
        pool = expstore.open(sys.argv[1], "w", capacity=10, schema=pendulum_schema(),
                             commit_every=1000, commit_interval_s=3600)
        pool.extend(rows_for(range(7)))
        pool.append({k: v[0] for k, v in rows_for([7]).items()})
        keep = pool  # still referenced at exit: only the exit hook can commit it
    """, pool_path)
    with expstore.open(pool_path, "a") as pool:
        assert_rows(pool[:], range(8))


def test_hard_exit_keeps_only_the_last_commit(pool_path):
    """Contrast for the test above: os._exit skips the exit hook, so uncommitted rows are gone."""
    run_child("""
        import os, sys, expstore
        from tests.helpers.pools import pendulum_schema, rows_for
        pool = expstore.open(sys.argv[1], "w", capacity=10, schema=pendulum_schema(),
                             commit_every=1000, commit_interval_s=3600)
        pool.extend(rows_for(range(3)))
        pool.flush()
        pool.extend(rows_for(range(3, 6)))
        os._exit(0)
    """, pool_path)
    with expstore.open(pool_path, "a") as pool:
        assert_rows(pool[:], range(3))
        pool.append(one_row(3))
        assert pool.next_step_id == 4


def test_reopen_continues_with_the_right_step_ids(pool_path):
    with create(pool_path, capacity=5, slack=2, chunk_rows=2) as pool:
        pool.extend(rows_for(range(4)))
    for start, stop in ((4, 6), (6, 13), (13, 14)):
        with expstore.open(pool_path, "a") as pool:
            assert pool.next_step_id == start
            if stop - start == 1:
                pool.append(one_row(start))
            else:
                pool.extend(rows_for(range(start, stop)))
            assert_rows(pool[:], range(max(0, stop - 5), stop))
    with expstore.open(pool_path) as pool:
        assert (pool.first_step_id, pool.next_step_id) == (9, 14)
        assert_rows(pool[:], range(9, 14))


# ---------------------------------------------------------------------------- on disk
def _slots_of_window(pool) -> np.ndarray:
    slots = BACKEND_IMPLS[pool.backend].read_layout(pool.path).meta["slots"]
    return np.arange(pool.first_step_id, pool.next_step_id) % slots


def test_plain_h5py_reads_every_field(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = str(tmp_path / "pool.h5")
    with create(path, capacity=9, slack=3, chunk_rows=4) as pool:
        pool.extend(rows_for(range(20)))
        pool.flush()
        slots, expected = _slots_of_window(pool), pool[:]
        with h5py.File(path, "r") as f:  # while the writer is open
            for name, field in pool.schema.items():
                assert f[name].shape[1:] == field.shape and f[name].dtype == field.dtype
                np.testing.assert_array_equal(f[name][:][slots], expected[name], err_msg=name)
            assert json.loads(f.attrs["expstore"])["format_version"] == pool.format_version


def test_plain_zarr_reads_every_field(tmp_path):
    zarr = pytest.importorskip("zarr")
    path = str(tmp_path / "pool.zarr")
    with create(path, capacity=9, slack=3, chunk_rows=4) as pool:
        pool.extend(rows_for(range(20)))
        pool.flush()
        slots, expected = _slots_of_window(pool), pool[:]
        group = zarr.open_group(path, mode="r")
        for name, field in pool.schema.items():
            array = group[name]
            assert array.shape[1:] == field.shape and array.dtype == field.dtype
            np.testing.assert_array_equal(array[:][slots], expected[name], err_msg=name)
            np.testing.assert_array_equal(array.oindex[slots], expected[name], err_msg=name)
        assert group.attrs["expstore"]["format_version"] == pool.format_version


def test_files_are_fully_preallocated(pool_path, backend):
    schema = {"obs": ((64,), "float32"), "flag": ((), "bool")}
    create(pool_path, capacity=5000, schema=schema).close()  # nothing written
    extents = data_extents(pool_path, backend)
    data_nbytes = sum(extent.nbytes for extent in extents.values())
    assert data_nbytes >= 5000 * (64 * 4 + 1)
    allocated = {f: os.stat(f).st_blocks * 512 for f in pool_files(pool_path)}
    assert sum(allocated.values()) >= data_nbytes
    for extent in extents.values():
        assert allocated[extent.path] >= extent.nbytes


def _resident_nbytes(file: str, offset: int, nbytes: int) -> int:
    """Bytes of ``file[offset:offset+nbytes]`` in the page cache (mincore on a private mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    start = offset - offset % page
    length = offset + nbytes - start
    with open(file, "rb") as fh:
        mapping = mmap.mmap(fh.fileno(), length, access=mmap.ACCESS_READ, offset=start)
    try:
        address = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
        vec = (ctypes.c_ubyte * (-(-length // page)))()
        if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(length), vec) != 0:
            pytest.skip(f"mincore failed: {os.strerror(ctypes.get_errno())}")
        return int(sum(v & 1 for v in vec)) * page
    finally:
        mapping.close()


@pytest.mark.parametrize("mode", ["r", "a"])
def test_opening_does_not_read_the_data(pool_path, backend, mode):
    """O(1) open, checked without timing: after opening, most data pages are still not cached.

    Reading the container's metadata may pull a read-ahead window (a few MiB) of data pages
    into the cache, so the bound is half the data region: any scan of the data would break it.
    """
    schema = {"obs": ((256,), "float32"), "reward": ((), "float32")}
    with create(pool_path, capacity=16_384, schema=schema, fsync=False) as pool:
        pool.extend({"obs": np.ones((16_384, 256), np.float32), "reward": np.ones(16_384, np.float32)})
    extent = data_extents(pool_path, backend)["obs"]
    drop_from_page_cache(pool_path)
    if _resident_nbytes(extent.path, extent.offset, extent.nbytes) > extent.nbytes // 4:
        pytest.skip("the kernel kept the pool in the page cache after POSIX_FADV_DONTNEED")
    with expstore.open(pool_path, mode) as pool:
        assert len(pool) == 16_384 and pool.first_step_id == 0 and pool.next_step_id == 16_384
        resident = _resident_nbytes(extent.path, extent.offset, extent.nbytes)
        assert resident < extent.nbytes // 2, f"opening read {resident} of {extent.nbytes} data bytes"


def test_an_idle_writer_commits_after_the_interval(pool_path):
    """Rows appended before a pause are committed by time, without another write or a flush."""
    with create(pool_path, capacity=50, commit_every=1000, commit_interval_s=0.2) as pool:
        for step in range(5):
            pool.append(one_row(step))
        with expstore.open(pool_path, "r") as reader:
            deadline = time.monotonic() + 30
            while len(reader) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)  # polling the reader's view, not waiting for a guess
            assert len(reader) == 5, "the idle writer did not commit within 30 s (interval 0.2 s)"


FINALISED_IN_SUBMIT = textwrap.dedent("""
    import concurrent.futures.thread as executor_module, gc, sys
    import numpy as np
    import expstore
    from tests.helpers.pools import pendulum_schema, rows_for

    pool = expstore.open(sys.argv[1], "w", capacity=100, schema=pendulum_schema())
    pool.extend(rows_for(np.arange(10)))
    # Every executor's submit holds this lock; a garbage collection inside one (zarr's I/O
    # thread, say) finalises the writer there, and its commit must not submit to a pool.
    with executor_module._global_shutdown_lock:
        del pool
        gc.collect()
    print("closed")
""")


def test_a_writer_finalised_inside_an_executor_submit_commits_without_deadlock(pool_path):
    done = subprocess.run([sys.executable, "-c", FINALISED_IN_SUBMIT, pool_path], capture_output=True, text=True,
                          cwd=TESTS_DIR, timeout=60, check=False)
    assert done.returncode == 0 and "closed" in done.stdout, done.stderr
    with expstore.open(pool_path) as pool:
        assert_rows(pool[:], range(10))


VIEW_AFTER_CLOSE = textwrap.dedent("""
    import sys
    import numpy as np
    import expstore
    from tests.helpers.pools import pendulum_schema, rows_for

    pool = expstore.open(sys.argv[1], "w", capacity=100, schema=pendulum_schema())
    pool.extend(rows_for(np.arange(10)))
    kept = pool._maps.views["reward"]  # as a traceback, a thread or an adapter may still hold one
    pool.close()
    print(float(kept[3]))
""")


def test_a_view_that_outlives_close_reads_its_mapping_instead_of_crashing(pool_path):
    done = subprocess.run([sys.executable, "-c", VIEW_AFTER_CLOSE, pool_path], capture_output=True, text=True,
                          cwd=TESTS_DIR, timeout=60, check=False)
    assert done.returncode == 0, f"exit {done.returncode} (-11 is a segfault): {done.stderr[-2000:]}"
    assert float(done.stdout) == float(rows_for([3])["reward"][0])
