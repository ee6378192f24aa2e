"""Append's fast path into the stage (staging.py: Stage.fast_env, row_writer): the same checks,
rows, env ids and episodes as every other way of writing them."""

from __future__ import annotations

import numpy as np
import pytest

import expstore

SCHEMA = {"obs": ((3,), "float32"), "action": ((1,), "float32"), "reward": ((), "float32"),
          "terminated": ((), "bool"), "truncated": ((), "bool")}


def rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"obs": rng.standard_normal((n, 3)).astype(np.float32),
            "action": rng.standard_normal((n, 1)).astype(np.float32),
            "reward": rng.standard_normal(n).astype(np.float32),
            "terminated": rng.random(n) < 0.05, "truncated": rng.random(n) < 0.03}


def one(batch: dict[str, np.ndarray], i: int) -> dict:
    """Row i as an env loop hands it over: arrays, a Python float, Python bools."""
    return {"obs": batch["obs"][i], "action": batch["action"][i], "reward": float(batch["reward"][i]),
            "terminated": bool(batch["terminated"][i]), "truncated": bool(batch["truncated"][i])}


@pytest.mark.parametrize("field, value", [
    ("obs", np.zeros(2, np.float32)),  # wrong row shape
    ("obs", np.zeros(4, np.float32)),  # a row longer than the field's
    ("obs", np.zeros((1, 3), np.float32)),  # a shape numpy would broadcast
    ("obs", "abc"),
    ("action", np.array([np.nan + 1j])),  # complex: no cast to float32
    ("reward", 1e300),  # overflows float32
    ("reward", [1.0, 2.0]),
    ("terminated", 2),  # an int other than 0 and 1 is no bool
    ("truncated", np.zeros(2, bool)),
])
def test_a_bad_value_after_staged_rows_raises_and_writes_nothing(pool_path, field, value):
    batch = rows(5)
    with expstore.open(pool_path, "w", capacity=100, schema=SCHEMA) as pool:
        for i in range(4):
            pool.append(one(batch, i))  # the later ones take the fast path
        bad = {**one(batch, 4), field: value}
        with pytest.raises(expstore.ExpstoreError, match=field):
            pool.append(bad)
        assert len(pool) == 4
        pool.append(one(batch, 4))  # the stage goes on after the refused row
        got = pool.read(np.arange(5))
    for name in SCHEMA:
        np.testing.assert_array_equal(got[name], batch[name])


def test_values_the_fast_path_hands_on_are_converted_as_before(pool_path):
    """Rows the generated append does not take itself (another dtype, a strided view, numpy
    scalars) go to the checked path and are stored as numpy casts them, in step order."""
    batch = rows(6)
    strided = np.repeat(batch["obs"], 2, axis=1)[:, ::2]  # the same values, not contiguous
    with expstore.open(pool_path, "w", capacity=100, schema=SCHEMA) as pool:
        for i in range(6):
            row = one(batch, i)
            if i % 3 == 1:
                row["obs"] = batch["obs"][i].astype(np.float64)
            elif i % 3 == 2:
                row.update(obs=strided[i], reward=np.float32(batch["reward"][i]))
            pool.append(row)
        got = pool.read(np.arange(6))
    for name in SCHEMA:
        np.testing.assert_array_equal(got[name], batch[name])


def test_a_ready_writer_appends_through_a_function_of_its_own_and_the_method_after_close(pool_path):
    batch = rows(3)
    pool = expstore.open(pool_path, "w", capacity=100, schema=SCHEMA)
    assert "append" not in vars(pool)  # no schema yet: the method, with every check
    pool.append(one(batch, 0))
    assert "append" in vars(pool) and pool.append.__doc__ == expstore.Store.append.__doc__
    pool.append(one(batch, 1))
    pool.close()
    assert "append" not in vars(pool)
    with pytest.raises(expstore.ClosedStoreError):
        pool.append(one(batch, 2))
    with expstore.open(pool_path, "r") as reader:
        np.testing.assert_array_equal(reader.read(np.arange(2))["obs"], batch["obs"][:2])


def test_appends_from_env_runs_match_the_same_rows_extended(tmp_path, backend):
    """Runs of one env (the fast path) and env switches (the checked path), across stage drains
    and commits: rows, env ids and episodes as one extend of the same rows writes them."""
    n = 5000
    batch = rows(n, seed=1)
    rng = np.random.default_rng(2)
    env_ids = np.repeat(rng.integers(0, 4, n // 10), 10)[:n]
    env_ids[rng.random(n) < 0.2] = 3  # some single-row switches too
    suffix = ".h5" if backend == "hdf5" else ".zarr"
    with expstore.open(str(tmp_path / f"a{suffix}"), "w", capacity=3000, schema=SCHEMA,
                       commit_every=700) as appended:
        for i in range(n):
            appended.append(one(batch, i), env_id=int(env_ids[i]))
        mid = appended.episodes()  # read while rows are still staged
    with expstore.open(str(tmp_path / f"e{suffix}"), "w", capacity=3000, schema=SCHEMA,
                       commit_every=700) as extended:
        extended.extend(batch, env_ids=env_ids)
        want = extended.episodes()
    assert len(mid) == len(want) > 0
    for column in want.columns:
        np.testing.assert_array_equal(mid[column], want[column], err_msg=column)
    with expstore.open(str(tmp_path / f"a{suffix}"), "r") as pool:
        steps = np.arange(n - 3000, n)
        got = pool.read(steps)
        for name in SCHEMA:
            np.testing.assert_array_equal(got[name], batch[name][steps], err_msg=name)
        table = pool.episodes()
        for column in table.columns:
            np.testing.assert_array_equal(table[column], want[column], err_msg=column)
