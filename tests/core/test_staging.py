"""The staged append hot path (core/staging.py) and the exact-batch path of extend: what they
take without a conversion, what they hand to the checked path, and where commits fall."""

from __future__ import annotations

import collections

import numpy as np
import pytest

import expstore
from tests.helpers.pools import BACKENDS, pendulum_schema, rows_for


def _row(step: int) -> dict:
    """Row ``step`` of ``rows_for`` as an env loop hands it over: arrays, a float, bools."""
    rows = rows_for([step])
    return {"obs": rows["obs"][0], "action": rows["action"][0], "reward": float(rows["reward"][0]),
            "next_obs": rows["next_obs"][0], "terminated": bool(rows["terminated"][0]),
            "truncated": bool(rows["truncated"][0])}


def _writer(tmp_path, backend, **kwargs):
    return expstore.open(tmp_path / f"pool{BACKENDS[backend]}", "w", capacity=1000, schema=pendulum_schema(),
                         fsync=False, **kwargs)


def _assert_rows(pool, steps):
    got = pool.read(np.arange(len(steps)))
    want = rows_for(steps)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_the_hot_path_stages_rows_and_the_writer_reads_them(tmp_path, backend):
    with _writer(tmp_path, backend) as pool:
        for step in range(50):
            pool.append(_row(step))
        assert pool._stage.count > 0  # staged, not yet in the maps
        assert len(pool) == 50 and pool.next_step_id == 50
        _assert_rows(pool, list(range(50)))
        episodes = pool.episodes()
        assert len(episodes) == len(pool.episodes())


@pytest.mark.parametrize("bad", [
    {"obs": np.zeros((1, 3), np.float32)},  # a shape numpy would broadcast into the row
    {"obs": np.zeros(3, np.float64) + 0.1},  # float64 of the right shape: the checks cast it
    {"reward": 1e39},  # overflows float32
    {"terminated": 2},  # not a bool
    {"action": "1.0"},  # a string numpy would parse
])
def test_values_the_hot_path_does_not_take_go_through_the_checks(tmp_path, bad):
    with _writer(tmp_path, "hdf5") as pool:
        for step in range(10):
            pool.append(_row(step))
        row = {**_row(10), **bad}
        name = next(iter(bad))
        if name == "obs" and bad[name].shape == (3,):  # a float64 row of the right shape is cast
            pool.append(row)
            assert len(pool) == 11
            np.testing.assert_allclose(pool.read(np.array([10]))["obs"][0], bad[name], rtol=1e-6)
            return
        with pytest.raises(expstore.ExpstoreError, match=name):
            pool.append(row)
        assert len(pool) == 10 and pool.next_step_id == 10  # nothing written
        pool.append(_row(10))  # and the next good row lands in step order
        _assert_rows(pool, list(range(11)))


_SCALAR_DTYPES = ["float32", "float64", "float16", "bool", "int8", "uint8", "int16", "uint16", "int32",
                  "uint32", "int64", "uint64"]


def _edge_values(dtype: np.dtype) -> list:
    """Python scalars the hot path takes for ``dtype``: limits, rounding cases, signs, zeros."""
    if dtype.kind == "b":
        return [True, False, True]
    if dtype.kind == "f":
        top = float(np.finfo(dtype).max)
        return [top, -top, 0.1, -0.0, 1 / 3, 5e-324, float(np.finfo(dtype).tiny) / 3, 1.0000001, 2.5e-8, 0.0]
    info = np.iinfo(dtype)
    return [int(info.min), int(info.max), 0, 1, int(info.max) // 3, int(info.min) // 2 or 7]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_scalars_stage_as_numpys_assignment_stores_them(tmp_path, backend):
    """The hot path packs Python scalars through a memoryview of the stage column (numeric dtypes):
    every value lands as numpy's own item assignment would store it, bit for bit."""
    schema = {f"x_{name}": ((), name) for name in _SCALAR_DTYPES}
    schema.update({"terminated": ((), "bool"), "truncated": ((), "bool")})
    columns = {f"x_{name}": _edge_values(np.dtype(name)) for name in _SCALAR_DTYPES}
    rows = max(len(values) for values in columns.values())
    with expstore.open(tmp_path / f"pool{BACKENDS[backend]}", "w", capacity=64, schema=schema, fsync=False) as pool:
        for i in range(rows):
            row = {key: values[i % len(values)] for key, values in columns.items()}
            pool.append({**row, "terminated": False, "truncated": False})
        assert pool._stage.count == rows  # every row went the hot path, none drained yet
        got = pool.read(np.arange(rows))
    for key, values in columns.items():
        want = np.empty(rows, schema[key][1])
        for i in range(rows):
            want[i] = values[i % len(values)]  # numpy's item assignment, the reference
        assert got[key].tobytes() == want.tobytes(), key


def test_a_mapping_with_a_wrong_key_writes_nothing_and_adds_no_key(tmp_path):
    with _writer(tmp_path, "zarr") as pool:
        for step in range(5):
            pool.append(_row(step))
        row = collections.defaultdict(float, _row(5))
        del row["reward"]
        row["rew"] = 1.0  # as many keys as fields, one of them unknown
        with pytest.raises(expstore.ExpstoreError, match="reward"):
            pool.append(row)
        assert "reward" not in row and len(pool) == 5
        with pytest.raises(expstore.ExpstoreError):
            pool.append([1, 2, 3, 4, 5, 6])  # no mapping at all
        assert len(pool) == 5


def test_env_ids_taking_turns_keep_their_episodes(tmp_path):
    with _writer(tmp_path, "hdf5") as pool:
        for step in range(40):
            row = _row(step)
            row["terminated"] = row["truncated"] = False
            row["terminated"] = step in (21, 30)  # env 1 ends at step 21, env 0 at step 30
            pool.append(row, env_id=step % 2)
        with pytest.raises(expstore.ExpstoreError, match="env_id"):
            pool.append(_row(40), env_id=1.0)
        with pytest.raises(expstore.ExpstoreError, match="env_id"):
            pool.append(_row(40), env_id=True)
        assert len(pool) == 40
        table = pool.episodes()
        ended = {int(env): int(last) for env, last, is_open in
                 zip(table["env_id"], table["last_step_id"], table["open"], strict=True) if not is_open}
        assert ended == {1: 21, 0: 30}
        assert sorted(table["env_id"][table["open"]].tolist()) == [0, 1]  # each env's next episode


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_commits_fall_every_commit_every_rows_whatever_wrote_before(tmp_path, backend):
    every = 100
    with _writer(tmp_path, backend, commit_every=every) as pool, \
            expstore.open(pool.path, "r") as reader:
        pool.extend(rows_for(range(30)))  # not a commit: the appends' stage must end at row 100
        for step in range(30, 99):
            pool.append(_row(step))
        assert len(reader) == 0
        pool.append(_row(99))
        assert len(reader) == 100  # the commit at exactly commit_every rows
        for step in range(100, 250):
            pool.append(_row(step))
        assert len(reader) == 200
        # never more than commit_every rows pending: the slack keeps committed rows safe
        assert pool.next_step_id - len(reader) <= every
    with expstore.open(tmp_path / f"pool{BACKENDS[backend]}", "r") as pool:
        _assert_rows(pool, list(range(250)))


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_extend_of_exact_arrays_and_of_values_to_convert_store_the_same(tmp_path, backend):
    rows = rows_for(range(64))
    converted = {name: values.tolist() if values.dtype.kind == "b" else values.astype(np.float64)
                 for name, values in rows.items()}
    with _writer(tmp_path, backend) as pool:
        pool.extend(rows)
        pool.extend(converted)
        got = pool.read(np.arange(128))
    for name, values in rows.items():
        np.testing.assert_array_equal(got[name], np.concatenate([values, values]), err_msg=name)


def test_extend_refuses_a_bad_exact_batch_whole(tmp_path):
    with _writer(tmp_path, "hdf5") as pool:
        pool.extend(rows_for(range(10)))
        bad = rows_for(range(10, 20))
        bad["obs"] = bad["obs"][:9]  # one row short
        with pytest.raises(expstore.ExpstoreError, match="length"):
            pool.extend(bad)
        bad = rows_for(range(10, 20))
        bad["obs"] = bad["obs"][:, :2]
        with pytest.raises(expstore.ExpstoreError, match="obs"):
            pool.extend(bad)
        assert len(pool) == 10
