"""Parquet export and import of pools that derive next_obs: the derived values as a column, and a
pool that derives them again, bit for bit; files changed after export refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

import expstore
from expstore.errors import CorruptStoreError, SchemaError
from expstore.interchange import export_parquet, import_parquet
from tests.helpers.cli import assert_error, run
from tests.helpers.pools import BACKENDS

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

FRAME = expstore.Field((4, 4), "uint8", codec="zstd")
FLAGS = {"action": ((), "int64"), "reward": ((), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}


def _vector_pool(path: str, *, capacity: int = 60, steps: int = 40, max_final_obs: int | None = 4) -> str:
    """Three envs' interleaved episodes of compressed frames: terminated, truncated, ended by
    end_episodes with and without a final observation, still open; the ring wrapped (its oldest
    episodes partial) and a final-observation table too small for every episode."""
    rng = np.random.default_rng(1)
    with expstore.open(path, "w", capacity=capacity, schema={"obs": FRAME, **FLAGS}, derive_next_obs=True,
                       max_final_obs=max_final_obs) as pool:
        for step in range(steps):
            envs = np.arange(3)
            terminated = rng.random(3) < 0.12
            following = rng.integers(0, 256, (3, 4, 4), np.uint8)
            pool.extend({"obs": rng.integers(0, 256, (3, 4, 4), np.uint8), "next_obs": following, "action": envs,
                         "reward": rng.normal(size=3).astype(np.float32), "terminated": terminated,
                         "truncated": (rng.random(3) < 0.08) & ~terminated}, env_ids=envs)
            if step == steps - 2:
                pool.end_episodes([1], next_obs={"next_obs": following[1:2]})
            if step == steps - 5:
                pool.end_episodes([2])  # no final observation: its last row has none
    return path


def _ragged_pool(path: str) -> str:
    """Compressed token observations of their own length (derived), a fixed goal (derived) and an
    observation whose next value the pool stores, on two envs."""
    rng = np.random.default_rng(2)
    schema = {"obs": expstore.Field((None,), "int32", codec="lz4"), "obs_goal": ((2,), "float32"),
              "obs_aux": ((), "float64"), "next_obs_aux": ((), "float64"), **FLAGS}
    with expstore.open(path, "w", capacity=64, schema=schema, derive_next_obs=True, heap_bytes=1 << 16) as pool:
        for step in range(20):
            tokens = [rng.integers(-9, 9, rng.integers(0, 6), dtype=np.int32) for _ in range(2)]
            following = {"next_obs": [rng.integers(-9, 9, rng.integers(0, 9), dtype=np.int32) for _ in range(2)],
                         "next_obs_goal": rng.normal(size=(2, 2)).astype(np.float32)}
            done = np.array([step % 7 == 6, step % 9 == 8])
            pool.extend({"obs": tokens, "obs_goal": rng.normal(size=(2, 2)).astype(np.float32),
                         "obs_aux": rng.normal(size=2), "next_obs_aux": rng.normal(size=2), **following,
                         "action": np.arange(2), "reward": np.ones(2, np.float32), "terminated": done,
                         "truncated": np.zeros(2, bool)}, env_ids=[0, 1])
            if step == 12:
                pool.end_episodes([0], next_obs={"next_obs": following["next_obs"][:1],
                                                 "next_obs_goal": following["next_obs_goal"][:1],
                                                 "next_obs_aux": np.zeros(1)})
    return path


def _view(path: str) -> dict:
    """What a reader gets of every step: the rows, the derived next observations and where they
    are known (sampling draws only those), and the episodes' ends."""
    with expstore.open(path) as pool:
        low, high = pool.window
        steps = np.arange(low, high)
        keeping = pool.bookkeeping
        derived, known = keeping.next_values(steps, high, keeping.kept_now(pool.commit_record))
        rows = pool.read(steps, ragged="list")
        table = pool.episodes()
        ends = list(zip(table["last_step_id"].tolist(), table["open"].tolist(), table["terminated"].tolist(),
                        strict=True))
        return {"window": (low, high), "schema": pool.schema, "derives": keeping.derived, "rows": rows,
                "derived": derived, "known": known, "ends": ends}


def _assert_same(left: dict, right: dict) -> None:
    assert left["window"] == right["window"] and left["schema"] == right["schema"]
    assert left["derives"] == right["derives"] and left["derives"]
    assert list(left["rows"]) == list(right["rows"])
    for name, values in left["rows"].items():
        _assert_bits(values, right["rows"][name], name)
    known = left["known"]
    np.testing.assert_array_equal(known, right["known"])
    assert 0 < known.sum() < len(known)  # some rows have no next observation, in both
    for name in ("next_obs", "next_obs_goal"):
        if name in left["derived"]:
            lengths = left["derived"].get(f"{name}_length")
            for row in np.flatnonzero(known).tolist():
                a, b = left["derived"][name][row], right["derived"][name][row]
                if lengths is not None:
                    assert lengths[row] == right["derived"][f"{name}_length"][row], (name, row)
                    a, b = a[:lengths[row]], b[:lengths[row]]
                assert a.tobytes() == b.tobytes(), (name, row)
    assert sorted(left["ends"]) == sorted(right["ends"])  # listed by first step: a partial episode's differs


def _assert_bits(left, right, name: str) -> None:
    if isinstance(left, list):
        assert len(left) == len(right), name
        for a, b in zip(left, right, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name
        return
    assert left.dtype == right.dtype and left.tobytes() == right.tobytes(), name


def _derived_steps(path: str) -> tuple[int, int]:
    """(rows, rows whose next observation the pool knows)."""
    view = _view(path)
    return len(view["known"]), int(view["known"].sum())


def test_a_vector_env_pool_round_trips_its_derived_next_obs(tmp_path, backend):
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"))
    file = tmp_path / "rows.parquet"
    rows, _ = export_parquet(src, file, row_group_mb=0.001)
    table = pq.read_table(file)
    assert table.schema.field("next_obs").type == table.schema.field("obs").type
    total, known = _derived_steps(src)
    assert rows == total == 60 and table.column("next_obs").null_count == total - known > 0
    saved = json.loads(table.schema.metadata[b"expstore"])
    assert saved["derived_next_obs"] == {"fields": ["obs"]} and saved["open_episodes"]  # open ones named once
    assert pq.ParquetFile(file).metadata.num_row_groups > 1  # episodes carried across batches and groups
    for other in BACKENDS:
        back = str(tmp_path / f"back-{other}{BACKENDS[other]}")
        assert import_parquet(file, back) == 60
        _assert_same(_view(src), _view(back))
        with expstore.open(back) as pool:
            assert "next_obs" not in pool.schema and pool.schema["obs"] == FRAME  # derived, compressed again


def test_the_derived_next_obs_column_equals_what_sampling_reads(tmp_path, backend):
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"))
    file = tmp_path / "rows.parquet"
    export_parquet(src, file)
    table = pq.read_table(file)
    steps = table.column("step_id").to_numpy()
    next_obs = table.column("next_obs").to_pylist()
    with expstore.open(src) as pool:
        batch = pool.sample(200, rng=0)
    for step, value in zip(batch["step_id"].tolist(), batch["next_obs"], strict=True):
        written = next_obs[int(np.flatnonzero(steps == step)[0])]
        assert written is not None and np.array_equal(np.asarray(written, np.uint8), value)


def test_ragged_and_several_derived_observations_round_trip(tmp_path, backend):
    src = _ragged_pool(str(tmp_path / f"src{BACKENDS[backend]}"))
    file = tmp_path / "ragged.parquet"
    export_parquet(src, file)
    names = pq.read_schema(file).names
    assert "next_obs" in names and "next_obs_goal" in names and names.count("next_obs_aux") == 1
    for other in BACKENDS:
        back = str(tmp_path / f"back-{other}{BACKENDS[other]}")
        import_parquet(file, back)
        _assert_same(_view(src), _view(back))


def test_an_import_with_a_smaller_capacity_keeps_the_newest_rows_deriving(tmp_path, backend):
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"), max_final_obs=None)
    file = tmp_path / "rows.parquet"
    export_parquet(src, file)
    back = str(tmp_path / f"small{BACKENDS[backend]}")
    import_parquet(file, back, capacity=25)
    left, right = _view(src), _view(back)
    low, high = right["window"]
    assert high == left["window"][1] and high - low == 25
    keep = np.arange(*left["window"]) >= low
    np.testing.assert_array_equal(left["known"][keep], right["known"])
    for row, same in zip(np.flatnonzero(keep & left["known"]), np.flatnonzero(right["known"]), strict=True):
        assert left["derived"]["next_obs"][row].tobytes() == right["derived"]["next_obs"][same].tobytes()


def _changed(file, out, edit) -> None:
    table = pq.read_table(file)
    column = table.column("next_obs").to_pylist()
    edit(table, column)
    index = table.schema.get_field_index("next_obs")
    changed = table.set_column(index, table.schema.field("next_obs"), pa.array(column, table.schema.field(index).type))
    pq.write_table(changed.replace_schema_metadata(table.schema.metadata), out)


def _inside(table) -> int:
    """A row followed by another row of its episode (a vector env's: not the file's next row)."""
    ids = table.column("episode_id").to_numpy()
    return next(row for row in range(len(ids)) if (ids[row + 1:] == ids[row]).any())


@pytest.mark.parametrize("edit", ["value", "null"])
def test_a_next_obs_changed_after_export_is_one_clear_error_and_writes_nothing(tmp_path, backend, edit):
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"))
    file = tmp_path / "rows.parquet"
    export_parquet(src, file)

    def change(table, column):
        row = _inside(table)
        column[row] = None if edit == "null" else (np.asarray(column[row]) + 1).tolist()

    _changed(file, tmp_path / "changed.parquet", change)
    out = tmp_path / f"out{BACKENDS[backend]}"
    with pytest.raises(SchemaError, match=r"next_obs of step \d+ is not the obs of step \d+.*export the pool again"):
        import_parquet(tmp_path / "changed.parquet", out)
    assert not list(tmp_path.glob("out*"))
    result = run("import", tmp_path / "changed.parquet", out, ok=False)
    assert_error(result, "the column was changed after export", "export the pool again")
    assert not list(tmp_path.glob("out*"))


def _exported(src: str, tmp_path) -> tuple:
    """The Parquet table of ``src``'s export, and its ``expstore`` metadata, to change and write again."""
    file = tmp_path / "rows.parquet"
    export_parquet(src, file)
    table = pq.read_table(file)
    return table, json.loads(table.schema.metadata[b"expstore"])


def test_a_damaged_derived_entry_is_refused(tmp_path):
    src = _vector_pool(str(tmp_path / "src.h5"))
    table, saved = _exported(src, tmp_path)
    saved["derived_next_obs"]["fields"] = ["obs_other"]
    pq.write_table(table.replace_schema_metadata({"expstore": json.dumps(saved)}), tmp_path / "bad.parquet")
    with pytest.raises(CorruptStoreError, match="derived next_ of"):
        import_parquet(tmp_path / "bad.parquet", tmp_path / "out.h5")
    assert not list(tmp_path.glob("out*"))


def test_a_file_naming_the_open_episodes_in_the_derived_entry_imports_the_same(tmp_path, backend):
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"))
    table, saved = _exported(src, tmp_path)
    with expstore.open(src) as pool:
        episodes = pool.episodes()
        assert saved["open_episodes"] == sorted(episodes["episode_id"][episodes["open"]].tolist()) != []
    saved["derived_next_obs"]["open_episodes"] = saved.pop("open_episodes")  # where earlier exports kept them
    pq.write_table(table.replace_schema_metadata({"expstore": json.dumps(saved)}), tmp_path / "nested.parquet")
    back = str(tmp_path / f"nested{BACKENDS[backend]}")
    assert import_parquet(tmp_path / "nested.parquet", back) == 60
    _assert_same(_view(src), _view(back))


def test_files_without_the_derived_entry_import_as_before(tmp_path, backend):
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"))
    table, saved = _exported(src, tmp_path)
    del saved["derived_next_obs"]
    old = table.drop_columns(["next_obs"]).replace_schema_metadata({"expstore": json.dumps(saved)})
    pq.write_table(old, tmp_path / "old.parquet")  # what the export wrote before it had the column
    back = str(tmp_path / f"old{BACKENDS[backend]}")
    assert import_parquet(tmp_path / "old.parquet", back) == 60
    with expstore.open(back) as pool:
        assert "next_obs" not in pool.schema and pool.bookkeeping.derived == ()
    stored = str(tmp_path / f"stored{BACKENDS[backend]}")
    with expstore.open(stored, "w", capacity=8, schema={"obs": ((2,), "float32"), "next_obs": ((2,), "float32"),
                                                        **FLAGS}) as pool:
        pool.extend({"obs": np.zeros((3, 2), np.float32), "next_obs": np.ones((3, 2), np.float32),
                     "action": np.arange(3), "reward": np.zeros(3, np.float32), "terminated": np.arange(3) == 2,
                     "truncated": np.zeros(3, bool)})
    export_parquet(stored, tmp_path / "stored.parquet")
    assert "derived_next_obs" not in json.loads(pq.read_schema(tmp_path / "stored.parquet").metadata[b"expstore"])
    again = str(tmp_path / f"again{BACKENDS[backend]}")
    import_parquet(tmp_path / "stored.parquet", again)
    with expstore.open(again) as pool:
        np.testing.assert_array_equal(pool[:]["next_obs"], np.ones((3, 2), np.float32))


def test_the_cli_round_trip_keeps_next_obs(tmp_path, backend):
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"))
    file = tmp_path / "rows.parquet"
    assert "wrote 60 rows" in run("export", src, file).output
    back = str(tmp_path / f"back{BACKENDS[backend]}")
    assert "imported 60 rows" in run("import", file, back).output
    _assert_same(_view(src), _view(back))
    with expstore.open(back) as pool:
        batch = pool.sample(32, rng=1)
    assert batch["next_obs"].shape == (32, 4, 4)
