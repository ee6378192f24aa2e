"""Ragged fields at their edges: pad values per field and the dtypes that hold them, rows of no
values, reads of no rows, what bounds the window, and how heap sizes add up."""

from __future__ import annotations

import numpy as np
import pytest

import expstore
from expstore.core.opening import heap_sizes
from expstore.errors import InvalidArgumentError, SchemaError
from expstore.schema import Schema

Field = expstore.Field


def _tokens_and_mask(path: str):
    pool = expstore.open(path, "w", capacity=20, schema={
        "tokens": Field((None,), "int32"), "mask": Field((None,), "uint8"), "reward": ((), "float32")})
    pool.append({"tokens": np.arange(2, dtype=np.int32), "mask": np.ones(3, np.uint8), "reward": 0.0})
    pool.append({"tokens": np.arange(5, dtype=np.int32), "mask": np.zeros(0, np.uint8), "reward": 1.0})
    pool.flush()
    return pool


def test_pad_value_per_field(pool_path):
    with _tokens_and_mask(pool_path) as pool:
        rows = pool.read([0, 1], pad_value={"tokens": -1})
        assert rows["tokens"].tolist() == [[0, 1, -1, -1, -1], [0, 1, 2, 3, 4]]
        assert rows["mask"].tolist() == [[1, 1, 1], [0, 0, 0]]  # unnamed: zeros
        rows = pool.read([0, 1], pad_value={"tokens": -1, "mask": 255})
        assert rows["mask"].tolist() == [[1, 1, 1], [255, 255, 255]]
        batch = pool.sample(8, rng=0, pad_value={"tokens": -7})
        for k, length in enumerate(batch["tokens_length"]):
            assert (batch["tokens"][k, length:] == -7).all()


@pytest.mark.parametrize("pad_value", [-1, 256, float("nan"), 2.5])
def test_a_pad_value_the_dtype_cannot_hold_is_refused(pool_path, pad_value):
    with _tokens_and_mask(pool_path) as pool:
        with pytest.raises(InvalidArgumentError, match=r"does not fit ragged field '(mask|tokens)' \((uint8|int32)\)"):
            pool.read([0, 1], pad_value=pad_value)
        with pytest.raises(InvalidArgumentError, match="does not fit"):
            pool.sample(4, rng=0, pad_value=pad_value)  # before any draw
        with pytest.raises(InvalidArgumentError, match="does not fit"):
            next(pool.iter_epoch(2, pad_value=pad_value))


def test_pad_value_naming_no_ragged_field_is_refused(pool_path):
    with _tokens_and_mask(pool_path) as pool:
        with pytest.raises(InvalidArgumentError, match=r"names \['reward'\], which are not ragged fields"):
            pool.read([0], pad_value={"reward": 1})
        with pytest.raises(InvalidArgumentError, match=r"pad_value\['tokens'\]='x' must be a number"):
            pool.read([0], pad_value={"tokens": "x"})


def test_rows_of_no_values_from_empty_lists(pool_path):
    schema = {"flags": Field((None,), "bool"), "points": Field((None, 3), "float32"), "terminated": ((), "bool")}
    with expstore.open(pool_path, "w", capacity=10, schema=schema) as pool:
        pool.append({"flags": [], "points": [], "terminated": False})
        pool.extend({"flags": [[True], []], "points": [[[1, 2, 3]], []], "terminated": [False, True]})
        pool.extend({"flags": [], "points": [], "terminated": []})  # no rows at all
        rows = pool.read([0, 1, 2], ragged="list")
    assert [len(row) for row in rows["flags"]] == [0, 1, 0]
    assert [row.shape for row in rows["points"]] == [(0, 3), (1, 3), (0, 3)]
    assert rows["flags"][0].dtype == bool


def test_values_that_are_not_booleans_are_still_refused(pool_path):
    with expstore.open(pool_path, "w", capacity=10, schema={"flags": Field((None,), "bool")}) as pool:
        with pytest.raises(SchemaError, match="is bool but got float64 values other than 0 and 1"):
            pool.append({"flags": [0.5]})
        assert len(pool) == 0


@pytest.mark.parametrize("codec", [None, "zstd", "lz4"])
def test_a_read_of_no_rows(pool_path, codec):
    schema = {"obs": Field((4, 4), "uint8", codec=codec), "tokens": Field((None,), "int32")}
    with expstore.open(pool_path, "w", capacity=10, schema=schema) as pool:
        pool.append({"obs": np.ones((4, 4), np.uint8), "tokens": np.arange(3, dtype=np.int32)})
        pool.flush()
        rows = pool.read([])
    assert rows["obs"].shape == (0, 4, 4) and rows["tokens"].shape == (0, 0) and rows["tokens_length"].shape == (0,)


def test_episodes_and_repr_say_which_bound_applies(pool_path):
    schema = {"tokens": Field((None,), "int32", heap_bytes=400), "reward": ((), "float32"),
              "terminated": ((), "bool"), "truncated": ((), "bool")}
    with expstore.open(pool_path, "w", capacity=100, schema=schema) as pool:
        for step in range(40):  # 40 rows of 40 bytes: the 400-byte heap holds about ten
            pool.append({"tokens": np.full(10, step, np.int32), "reward": 0.0,
                         "terminated": step % 8 == 7, "truncated": False})
        pool.flush()
        table = pool.episodes()
        assert len(pool) < 40 and pool.window_bound == "heap 'tokens'"
        assert table.window_bound == "heap 'tokens'" and table["evicted"].sum() > 0
        assert "window bounded by heap 'tokens'" in repr(table)
        assert "bounded by heap 'tokens'" in repr(pool)
    with expstore.open(pool_path, "w", capacity=5, schema=schema) as pool:
        pool.extend({"tokens": [np.zeros(1, np.int32)] * 3, "reward": np.zeros(3, np.float32),
                     "terminated": np.zeros(3, bool), "truncated": np.zeros(3, bool)})
        assert pool.episodes().window_bound is None and "bounded" not in repr(pool)


def test_field_heap_sizes_come_out_of_the_pool_total():
    schema = Schema({"tokens": Field((None,), "int32", heap_bytes=100_000), "obs": Field((8,), "uint8", codec="zstd"),
                     "text": Field((None,), "uint8")})
    sizes = heap_sizes(schema, 1_000_000, 10)
    assert sizes["tokens"] == 100_000 and sum(sizes.values()) <= 1_000_000
    assert sizes["obs"] > 0 and sizes["text"] > 0
    with pytest.raises(InvalidArgumentError, match="leaving nothing for"):
        heap_sizes(schema, 100_000, 10)


def test_a_field_sized_twice_must_agree():
    schema = Schema({"tokens": Field((None,), "int32", heap_bytes=5000)})
    assert heap_sizes(schema, {"tokens": 5000}, 10) == {"tokens": 5000}
    with pytest.raises(InvalidArgumentError, match="heap_bytes=5000 in its Field and 9000 in open's heap_bytes"):
        heap_sizes(schema, {"tokens": 9000}, 10)


def test_unknown_codec_names_the_dictionary_form():
    with pytest.raises(SchemaError, match=r"lz4, raw, zstd .*'zstd:3\+dict'"):
        Field((4,), "uint8", codec="brotli")


def test_a_writers_own_verify_of_heap_fields_with_rows_not_committed_yet(pool_path):
    schema = {"tokens": Field((None,), "int32"), "obs": Field((8,), "uint8", codec="zstd"), "reward": ((), "float32")}
    with expstore.open(pool_path, "w", capacity=1000, schema=schema, commit_every=50) as pool:
        pool.extend({"tokens": [np.arange(step % 9, dtype=np.int32) for step in range(400)],
                     "obs": np.zeros((400, 8), np.uint8), "reward": np.zeros(400, np.float32)})
        for _ in range(20):  # past the last commit
            pool.append({"tokens": np.arange(3, dtype=np.int32), "obs": np.ones(8, np.uint8), "reward": 0.0})
        report = pool.verify()
        assert report.ok, report.findings
