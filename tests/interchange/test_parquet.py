"""Parquet export and import: bit for bit both ways, read by pyarrow, Hugging Face datasets and pandas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import expstore
from expstore.errors import CorruptStoreError, InvalidArgumentError, SchemaError, StoreExistsError
from expstore.interchange import export_parquet, import_parquet
from tests.helpers.pools import BACKENDS

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

SCHEMA = {"obs": ((3,), "float32"), "action": ((), "int64"), "reward": ((), "float64"), "next_obs": ((3,), "float32"),
          "terminated": ((), "bool"), "truncated": ((), "bool"), "frame": ((12, 10, 3), "uint8"),
          "cost": ((2, 2), "float16"), "count": ((), "uint32")}


def _rows(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"obs": rng.normal(size=(n, 3)), "action": rng.integers(-5, 5, n), "reward": rng.normal(size=n),
            "next_obs": rng.normal(size=(n, 3)), "terminated": np.arange(n) % 37 == 36,
            "truncated": np.arange(n) % 50 == 49, "frame": rng.integers(0, 256, (n, 12, 10, 3)),
            "cost": rng.normal(size=(n, 2, 2)), "count": rng.integers(0, 2**32, n, dtype=np.uint64)}


def _pool(path: str, rows: int = 500, capacity: int = 300) -> str:
    with expstore.open(path, "w", capacity=capacity, schema=SCHEMA, attrs={"env_id": "Toy-v0", "n": [1, 2]}) as pool:
        pool.extend(_rows(rows))
        pool.end_episodes()  # the last episode ends without a flag: it must come back ended
    return path


def _all(path: str) -> dict:
    with expstore.open(path) as pool:
        return pool.read(np.arange(*pool.window))


def _episodes(path: str) -> list[tuple]:
    with expstore.open(path) as pool:
        table = pool.episodes()
        return list(zip(table["first_step_id"].tolist(), table["length"].tolist(), table["open"].tolist(),
                        strict=True))


def test_pool_to_parquet_to_pool_is_bit_for_bit(tmp_path, backend):
    src = _pool(str(tmp_path / f"src{BACKENDS[backend]}"))
    file = str(tmp_path / "rows.parquet")
    rows, episodes = export_parquet(src, file, row_group_mb=0.02)
    assert rows == 300 and episodes == len(_episodes(src))
    back = str(tmp_path / f"back{BACKENDS[backend]}")
    assert import_parquet(file, back) == 300
    left, right = _all(src), _all(back)
    assert list(left) == list(right)
    for name in left:
        assert left[name].dtype == right[name].dtype and np.array_equal(left[name], right[name]), name
    with expstore.open(src) as a, expstore.open(back) as b:
        assert a.schema == b.schema and a.attrs == b.attrs and a.window == b.window
    assert _episodes(back) == _episodes(src)


def test_row_groups_hold_whole_episodes_and_metadata_holds_the_schema(tmp_path):
    src = _pool(str(tmp_path / "src.h5"))
    file = str(tmp_path / "rows.parquet")
    export_parquet(src, file, row_group_mb=0.02)
    parquet = pq.ParquetFile(file)
    assert parquet.metadata.num_row_groups > 2
    assert parquet.schema_arrow.names[:3] == ["step_id", "episode_id", "episode_step"]
    assert b"expstore" in parquet.schema_arrow.metadata
    groups = [parquet.read_row_group(g, columns=["episode_id", "episode_step"]) for g in
              range(parquet.metadata.num_row_groups)]
    for group in groups[1:]:  # each group after the first begins an episode
        assert group.column("episode_step")[0].as_py() == 0
    ids = np.concatenate([g.column("episode_id").to_numpy() for g in groups])
    steps = np.concatenate([g.column("episode_step").to_numpy() for g in groups])
    starts = np.flatnonzero(np.diff(ids)) + 1
    assert (steps[starts] == 0).all() and (np.diff(steps)[np.diff(ids) == 0] == 1).all()


def test_columns_read_by_pyarrow_datasets_and_pandas_equal_the_pool(tmp_path):
    datasets = pytest.importorskip("datasets")
    pd = pytest.importorskip("pandas")
    src = _pool(str(tmp_path / "src.zarr"))
    file = str(tmp_path / "rows.parquet")
    export_parquet(src, file)
    rows = _all(src)
    table = pq.read_table(file)
    np.testing.assert_array_equal(table.column("step_id").to_numpy(), rows["step_id"])
    loaded = datasets.load_dataset("parquet", data_files=file, split="train", cache_dir=str(tmp_path / "hf"))
    frame = pd.read_parquet(file)
    assert len(loaded) == len(frame) == 300
    for name, (shape, dtype) in SCHEMA.items():
        feature = loaded.features[name]
        while hasattr(feature, "feature"):  # datasets' List(List(Value(...))) for a nested fixed-size list
            feature = feature.feature
        assert np.dtype(feature.dtype) == np.dtype("float16" if dtype == "float16" else dtype), name
        from_hf = np.asarray(loaded[name])  # python rows (its numpy formatter widens nested integers to int64)
        assert from_hf.shape == (300, *shape), name
        np.testing.assert_array_equal(from_hf.astype(dtype), rows[name], err_msg=name)
        from_pandas = _stacked(frame[name].to_numpy())
        np.testing.assert_array_equal(from_pandas.astype(dtype), rows[name], err_msg=name)


def _stacked(values: np.ndarray) -> np.ndarray:
    """pandas holds a nested list column as object arrays of arrays: stack them, level by level."""
    return np.stack([_stacked(v) for v in values]) if values.dtype == object else values


def test_a_parquet_file_written_by_datasets_imports_with_its_episodes(tmp_path, backend):
    datasets = pytest.importorskip("datasets")
    n = 40
    episode = np.repeat(np.arange(4), 10)
    data = {"observation": np.arange(n * 2, dtype=np.float32).reshape(n, 2).tolist(), "reward": np.arange(n) * 0.5,
            "episode_index": episode, "task": ["push"] * n, "weights": [[0.5 * i] * (i % 3) for i in range(n)],
            "pairs": [[[1, 2]] * (i % 2) + [[3]] for i in range(n)]}
    file = str(tmp_path / "hf.parquet")
    datasets.Dataset.from_dict(data).to_parquet(file)
    pool = str(tmp_path / f"hf{BACKENDS[backend]}")
    assert import_parquet(file, pool) == n
    with expstore.open(pool) as opened:
        assert list(opened.schema) == ["observation", "reward", "weights"]
        assert opened.schema["weights"].shape == (None,)  # rows of their own length: a ragged field
        assert opened.attrs["parquet"]["skipped"] == ["task", "pairs"]  # inner lists of their own length
        assert opened.episodes()["length"].tolist() == [10, 10, 10, 10]
        rows = opened[:]
    np.testing.assert_array_equal(rows["observation"], np.asarray(data["observation"], np.float32))
    np.testing.assert_array_equal(rows["reward"], data["reward"])
    assert rows["weights_length"].tolist() == [i % 3 for i in range(n)]
    for i in range(n):
        np.testing.assert_array_equal(rows["weights"][i, :i % 3], data["weights"][i])


def test_bad_files_are_clear_errors_and_write_nothing(tmp_path):
    src = _pool(str(tmp_path / "src.h5"))
    file = str(tmp_path / "rows.parquet")
    export_parquet(src, file)
    with pytest.raises(StoreExistsError):
        export_parquet(src, file)
    export_parquet(src, file, overwrite=True)  # expstore's own file may be replaced
    table = pq.read_table(file)
    changed = table.set_column(table.schema.get_field_index("obs"), pa.field("obs", pa.float64()),
                               pa.array(np.zeros(300)))
    pq.write_table(changed.replace_schema_metadata(table.schema.metadata), tmp_path / "changed.parquet")
    with pytest.raises(SchemaError, match=r"column 'obs' holds double"):
        import_parquet(tmp_path / "changed.parquet", tmp_path / "out.h5")
    assert not list(tmp_path.glob("out.h5*"))
    data = Path(file).read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises((CorruptStoreError, expstore.errors.NotAPoolError), match="cut.parquet"):
        import_parquet(tmp_path / "cut.parquet", tmp_path / "out.zarr")
    assert not list(tmp_path.glob("out.zarr*"))
    with pytest.raises(InvalidArgumentError, match="--compression"):
        export_parquet(src, tmp_path / "x.parquet", compression="zip")
    other = tmp_path / "notes.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), other)
    with pytest.raises(StoreExistsError, match="did not write"):
        export_parquet(src, other, overwrite=True)  # a Parquet file expstore did not write is left alone


def _ragged_pool(path: str, rows: int = 60) -> str:
    """Token ids of their own length (some empty, some longer than the default heap's 64 per row)
    and per-token 2-vectors, beside fixed fields; episodes of 9."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 200, size=rows)
    lengths[[0, 5]] = 0
    schema = {"tokens": ((None,), "int32"), "logits": ((None, 2), "float16"), "reward": ((), "float32"),
              "terminated": ((), "bool"), "truncated": ((), "bool")}
    with expstore.open(path, "w", capacity=rows, schema=schema, heap_bytes=4 << 20) as pool:
        pool.extend({"tokens": [rng.integers(-2**31, 2**31 - 1, size=n, dtype=np.int32) for n in lengths],
                     "logits": [rng.normal(size=(n, 2)).astype(np.float16) for n in lengths],
                     "reward": rng.normal(size=rows).astype(np.float32),
                     "terminated": np.arange(rows) % 9 == 8, "truncated": np.zeros(rows, bool)})
        pool.end_episodes()
    return path


def test_ragged_fields_round_trip_as_list_columns(tmp_path, backend):
    src = _ragged_pool(str(tmp_path / f"ragged{BACKENDS[backend]}"))
    file = tmp_path / "ragged.parquet"
    assert export_parquet(src, file) == (60, 7)
    arrow = pq.read_table(file)
    assert arrow.schema.field("tokens").type == pa.list_(pa.int32())
    assert arrow.schema.field("logits").type == pa.list_(pa.list_(pa.float16(), 2))
    with expstore.open(src) as pool:
        rows = pool.read(np.arange(pool.first_step_id, pool.first_step_id + len(pool)), ragged="list")
    for name in ("tokens", "logits"):
        column = arrow.column(name).to_pylist()
        assert [len(row) for row in column] == [len(row) for row in rows[name]], name
        for written, kept in zip(column, rows[name], strict=True):
            np.testing.assert_array_equal(np.asarray(written, kept.dtype).reshape(kept.shape), kept, err_msg=name)
    for other in BACKENDS:  # and back, into either backend, bit for bit with the same episodes
        back = str(tmp_path / f"back{BACKENDS[other]}")
        assert import_parquet(file, back) == 60
        with expstore.open(back) as pool:
            again = pool.read(np.arange(pool.first_step_id, pool.first_step_id + len(pool)), ragged="list")
            assert pool.schema["tokens"].shape == (None,) and pool.schema["logits"].shape == (None, 2)
        for name in ("tokens", "logits"):
            assert len(again[name]) == 60
            for kept, restored in zip(rows[name], again[name], strict=True):
                assert restored.dtype == kept.dtype
                np.testing.assert_array_equal(restored.view(np.uint8), kept.view(np.uint8), err_msg=name)
        np.testing.assert_array_equal(_all(back)["reward"], _all(src)["reward"])
        assert _episodes(back) == _episodes(src)


def test_a_ragged_column_that_is_not_a_list_is_a_clear_error(tmp_path):
    src = _ragged_pool(str(tmp_path / "ragged.h5"), rows=20)
    file = str(tmp_path / "ragged.parquet")
    export_parquet(src, file)
    table = pq.read_table(file)
    changed = table.set_column(table.schema.get_field_index("tokens"), pa.field("tokens", pa.int32()),
                               pa.array(np.zeros(20, np.int32)))
    pq.write_table(changed.replace_schema_metadata(table.schema.metadata), file)
    with pytest.raises(SchemaError, match=r"column 'tokens' holds int32.*list<item: int32>"):
        import_parquet(file, tmp_path / "out.h5")
    assert not list(tmp_path.glob("out.h5*"))
