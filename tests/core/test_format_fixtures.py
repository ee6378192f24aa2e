"""Pools written by the first release of on-disk format 1 (data/format1/, made by
tools/make_format_fixtures.py) open, read, sample, verify and append with today's code."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

import expstore

FIXTURES = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "data", "format1")
NAMES = ["plain.h5", "plain.zarr", "derived.h5", "derived.zarr"]


def _maker():
    script = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "tools", "make_format_fixtures.py")
    spec = importlib.util.spec_from_file_location("make_format_fixtures", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = _maker()
with open(os.path.join(FIXTURES, "expected.json")) as _expected:
    EXPECTED = json.load(_expected)


@pytest.fixture(params=NAMES)
def fixture_copy(request, tmp_path) -> tuple[str, str]:
    name = request.param
    source, path = os.path.join(FIXTURES, name), str(tmp_path / name)
    (shutil.copytree if os.path.isdir(source) else shutil.copyfile)(source, path)
    return name, path


def _check_rows(pool, step_ids) -> None:
    rows, expected = pool.read(step_ids), MAKER.rows_for(step_ids)
    for name in pool.schema:
        np.testing.assert_array_equal(rows[name], expected[name].astype(rows[name].dtype), err_msg=name)


def test_old_pool_reads_as_written(fixture_copy):
    name, path = fixture_copy
    expected = EXPECTED[name]
    with expstore.open(path, "r") as pool:
        assert (len(pool), pool.first_step_id, pool.next_step_id) == (
            expected["len"], expected["first_step_id"], expected["next_step_id"])
        _check_rows(pool, np.arange(pool.first_step_id, pool.next_step_id))
        table = pool.episodes()
        for column, values in expected["episodes"].items():
            assert np.asarray(table[column]).tolist() == values, column
        batch = pool.sample(64, rng=0, n_step=3, gamma=0.5)
        assert ((batch["step_id"] >= pool.first_step_id) & (batch["step_id"] < pool.next_step_id)).all()
        assert pool.verify().ok


def test_old_pool_takes_appends_and_reopens(fixture_copy):
    name, path = fixture_copy
    with expstore.open(path, "a") as pool:
        fields = list(pool.schema)
        new = np.arange(pool.next_step_id, pool.next_step_id + 30)
        rows = MAKER.rows_for(new)
        derived = "next_obs" not in fields  # a deriving pool still takes next_obs, to keep final ones
        pool.extend({field: rows[field] for field in fields + ["next_obs"] * derived}, env_ids=new % 2)
    with expstore.open(path, "r") as pool:
        assert pool.next_step_id == new[-1] + 1 and len(pool) == MAKER.CAPACITY
        _check_rows(pool, np.arange(pool.first_step_id, pool.next_step_id))
        # in a deriving pool next_obs is the next row's obs (step + 2: two envs take turns) or
        # the kept final observation; both equal what the rows were written with
        batch = pool.sample(256, rng=1)
        np.testing.assert_array_equal(batch["next_obs"], MAKER.rows_for(batch["step_id"])["next_obs"])
        assert pool.verify().ok
