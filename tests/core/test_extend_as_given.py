"""Extend's path for batches taken as given (Store._exact_columns): a dict of the pool's
fields as ndarrays of their dtypes and row shapes. Anything else still goes through the checks."""

from __future__ import annotations

import numpy as np
import pytest

import expstore

SCHEMA = {"obs": ((3,), "float32"), "reward": ((), "float32"), "terminated": ((), "bool")}


def batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"obs": rng.standard_normal((n, 3)).astype(np.float32),
            "reward": rng.standard_normal(n).astype(np.float32), "terminated": rng.random(n) < 0.1}


@pytest.mark.parametrize("field, value, message", [
    ("obs", np.zeros((4, 3), np.float32), "different lengths"),  # one row fewer than the other fields
    ("reward", np.zeros((5, 1), np.float32), "reward"),  # a row shape the field does not have
    ("reward", np.float32(1.0), "reward"),  # a 0-d array: no batch dimension
    ("obs", np.zeros((5, 2), np.float32), "obs"),
    ("terminated", np.full(5, 2), "terminated"),  # ints other than 0 and 1 are no bools
])
def test_a_bad_column_raises_and_writes_nothing(pool_path, field, value, message):
    with expstore.open(pool_path, "w", capacity=100, schema=SCHEMA) as pool:
        pool.extend(batch(5))
        with pytest.raises(expstore.ExpstoreError, match=message):
            pool.extend({**batch(5, seed=1), field: value})
        assert len(pool) == 5
        np.testing.assert_array_equal(pool.read(np.arange(5))["obs"], batch(5)["obs"])


def test_given_arrays_are_copied_and_other_dtypes_cast(pool_path):
    rows = batch(50)
    with expstore.open(pool_path, "w", capacity=100, schema=SCHEMA) as pool:
        pool.extend(rows)
        pool.extend({**rows, "reward": rows["reward"].astype(np.float64)})  # cast, not taken as given
        rows["obs"][:] = 0  # the caller reusing its buffer changes nothing in the pool
        got = pool.read(np.arange(100))
    want = batch(50)
    for name in SCHEMA:
        np.testing.assert_array_equal(got[name], np.concatenate([want[name], want[name]]), err_msg=name)
    assert got["reward"].dtype == np.float32
