"""Exact duplicate transitions, observation clusters and ``convert --dedup``, against a brute-force
count over the rows' bytes (both backends)."""

from __future__ import annotations

from collections import Counter
from contextlib import closing
from functools import partial

import numpy as np
import pytest

import expstore
from expstore.errors import InvalidArgumentError, SchemaError
from expstore.inspect import duplicates
from expstore.inspect.streaming import iter_slices, open_source
from expstore.maintenance.convert import convert
from tests.helpers.cli import assert_error, run, run_json

SCHEMA = {"obs": ((2,), "int32"), "action": ((1,), "float32"), "reward": ((), "float32"),
          "next_obs": ((2,), "int32"), "terminated": ((), "bool"), "truncated": ((), "bool"),
          "policy_version": ((), "int64")}
COMPARED = [name for name in SCHEMA if name != "policy_version"]


def grid_rows(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A small grid world's transitions: few states and actions, so many rows repeat."""
    rng = np.random.default_rng(seed)
    obs = rng.integers(0, 6, size=(count, 2)).astype(np.int32)
    action = rng.integers(0, 2, size=(count, 1)).astype(np.float32)
    step = np.where(action == 0, 1, -1).astype(np.int32)
    next_obs = np.clip(obs + step, 0, 5).astype(np.int32)
    return {"obs": obs, "action": action, "reward": (next_obs.sum(axis=1) == 10).astype(np.float32),
            "next_obs": next_obs, "terminated": next_obs.sum(axis=1) == 10, "truncated": np.zeros(count, bool),
            "policy_version": np.arange(count, dtype=np.int64)}  # differs on every row: not compared


def make_pool(path: str, count: int = 3000, capacity: int = 2500) -> dict[str, np.ndarray]:
    """A pool of ``count`` grid rows (the ring keeps the newest ``capacity``); returns those kept."""
    data = grid_rows(count)
    with expstore.open(path, "w", capacity=capacity, schema=SCHEMA) as pool:
        pool.extend(data)
    return {name: values[count - capacity:] for name, values in data.items()}


def row_keys(data: dict[str, np.ndarray], names) -> list[bytes]:
    return [b"".join(np.ascontiguousarray(data[name][i]).tobytes() for name in names)
            for i in range(len(data[names[0]]))]


@pytest.fixture(params=["one slice", "small slices"])
def slicing(request, monkeypatch):
    """Read the pool in one slice, or in slices of 40 rows (groups merged across slices)."""
    if request.param == "small slices":
        monkeypatch.setattr(duplicates, "iter_slices", partial(iter_slices, slice_nbytes=40 * 34))
    return request.param


@pytest.mark.parametrize("max_hashes", [1 << 22, 300])  # one pass, and 9 bucket passes
def test_exact_duplicates_match_brute_force(pool_path, max_hashes, slicing):
    kept = make_pool(pool_path)
    counts = Counter(row_keys(kept, COMPARED))
    with closing(open_source(pool_path)) as source:
        report = duplicates.count_duplicates(source, max_hashes=max_hashes)
    assert report["distinct"] == len(counts)
    assert report["duplicate_rows"] == 2500 - len(counts) > 0
    assert report["groups_with_duplicates"] == sum(1 for c in counts.values() if c > 1)
    assert report["largest_group"] == max(counts.values())
    assert report["fields"] == COMPARED
    assert report["passes"] == (1 if max_hashes > 2500 else 9)


def test_duplicate_mask_keeps_the_oldest_copy(pool_path, slicing):
    kept = make_pool(pool_path, 1200, 1200)
    seen, expected = set(), []
    for key in row_keys(kept, ["obs", "action"]):
        expected.append(key in seen)
        seen.add(key)
    with closing(open_source(pool_path)) as source:
        mask = duplicates.duplicate_mask(source, ["obs", "action"], max_hashes=100)
    assert np.array_equal(mask, np.array(expected))


def test_one_byte_changes_the_hash():
    rows = {"x": np.zeros((64, 3), np.float32)}
    for i in range(64):
        rows["x"].view(np.uint8)[i, i % 12] = 1 + i // 12
    hashes = duplicates.row_hashes(rows, ["x"])
    assert len({tuple(h) for h in hashes}) == 64
    assert np.array_equal(hashes, duplicates.row_hashes({"x": rows["x"].copy()}, ["x"]))  # deterministic


def test_observation_clusters_match_brute_force(pool_path, slicing):
    kept = make_pool(pool_path)
    counts = Counter(map(tuple, kept["obs"].tolist()))
    with closing(open_source(pool_path)) as source:
        clusters = duplicates.observation_clusters(source, top=3, max_hashes=500)
    assert clusters["distinct"] == len(counts) == 36
    assert clusters["rows_in_clusters"] == sum(c for c in counts.values() if c > 1)
    expected = sorted(counts.values(), reverse=True)[:3]
    assert [c["rows"] for c in clusters["largest"]] == expected
    for cluster in clusters["largest"]:
        assert counts[tuple(cluster["value"])] == cluster["rows"]
        assert kept["obs"][cluster["first_row"]].tolist() == cluster["value"]
        assert not (kept["obs"][:cluster["first_row"]] == cluster["value"]).all(axis=1).any()


def test_float_observations_are_not_clustered(tmp_path):
    path = str(tmp_path / "f.h5")
    with expstore.open(path, "w", capacity=10, schema={"obs": ((2,), "float32")}) as pool:
        pool.extend({"obs": np.zeros((4, 2), np.float32)})
    with closing(open_source(path)) as source:
        assert "not discrete" in duplicates.observation_clusters(source)["skipped"]
        assert "no 'state' field" in duplicates.observation_clusters(source, "state")["skipped"]
        with pytest.raises(SchemaError):
            duplicates.count_duplicates(source, ["nope"])
        assert duplicates.count_duplicates(source)["duplicate_rows"] == 3


def test_convert_dedup_keeps_first_copies_in_order(pool_path, backend, tmp_path):
    kept = make_pool(pool_path)
    keys = row_keys(kept, COMPARED)
    first = np.array([keys.index(key) == i for i, key in enumerate(keys)])
    dst = str(tmp_path / ("dedup.zarr" if backend == "hdf5" else "dedup.h5"))  # across backends
    result = convert(pool_path, dst, dedup=True, slice_nbytes=2048)  # many small slices
    assert result.rows == int(first.sum()) and result.duplicate_rows == 2500 - int(first.sum())
    with expstore.open(dst, "r") as pool:
        copy = pool[:]
        assert pool.stats(duplicates=True)["duplicates"]["exact"]["duplicate_rows"] == 0
    for name in SCHEMA:
        assert np.array_equal(copy[name], kept[name][first]), name


def test_dedup_source_reads_any_range(pool_path):
    kept = make_pool(pool_path, 900, 900)
    with closing(open_source(pool_path)) as source:
        dedup = duplicates.DedupSource(source, ["obs"])
        order = np.flatnonzero(~dedup.duplicate)
        assert len(dedup) == len(order) == 36
        for start, stop in [(0, 36), (5, 6), (10, 30), (35, 36), (36, 36)]:
            assert np.array_equal(dedup.read(start, stop)["obs"], kept["obs"][order[start:stop]])


def test_dedup_refuses_a_pool_deriving_next_obs(tmp_path):
    path = str(tmp_path / "derived.h5")
    schema = {name: spec for name, spec in SCHEMA.items() if name != "next_obs"}
    with expstore.open(path, "w", capacity=100, schema=schema, derive_next_obs=True) as pool:
        data = grid_rows(20)
        data.pop("next_obs")
        for i in range(20):
            pool.append({**{name: values[i] for name, values in data.items()}, "next_obs": np.zeros(2, np.int32)})
    with closing(open_source(path)) as source:
        with pytest.raises(InvalidArgumentError, match="derived"):
            duplicates.DedupSource(source)
        assert duplicates.count_duplicates(source)["derived_not_compared"] == ["next_obs"]


def test_cli_stats_duplicates_and_convert_dedup(pool_path, tmp_path):
    kept = make_pool(pool_path)
    distinct = len(set(row_keys(kept, COMPARED)))
    report = run_json("stats", pool_path, "--duplicates")["duplicates"]
    assert report["exact"]["duplicate_rows"] == 2500 - distinct
    assert report["observation_clusters"]["distinct"] == 36
    text = run("stats", pool_path, "--duplicates").output
    assert f"{2500 - distinct} of 2500 rows" in text and "observation clusters of 'obs'" in text
    dst = str(tmp_path / "unique.h5")
    output = run("convert", pool_path, dst, "--dedup").output
    assert f"wrote {distinct} rows" in output and f"left out {2500 - distinct} exact duplicate rows" in output
    assert_error(run("stats", dst, "--duplicates", "--obs-field", "x", ok=False), "--obs-field x", "no such field")
