"""Parquet export and import of pools that store next_obs, recorded from vector envs: the
interleaved episodes of several sub-envs come back as the same episodes (rows, order, how each
ended or that it is still open), for n-step returns and sequence windows as for episode(k)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import expstore
from expstore.errors import CorruptStoreError
from expstore.interchange import export_parquet, import_parquet
from tests.helpers.cli import run
from tests.helpers.pools import BACKENDS

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

SCHEMA = {"obs": ((2,), "float32"), "action": ((), "int64"), "reward": ((), "float32"), "next_obs": ((2,), "float32"),
          "terminated": ((), "bool"), "truncated": ((), "bool")}


def _vector_pool(path: str, *, capacity: int = 1_000, steps: int = 40, envs: int = 3) -> str:
    """``envs`` sub-envs' interleaved episodes of their own lengths: terminated, truncated, ended
    by end_episodes (no flag on the last row), and one per env still open at the end; the last
    env skips every third step, so the rows do not take turns evenly."""
    rng = np.random.default_rng(4)
    with expstore.open(path, "w", capacity=capacity, schema=SCHEMA) as pool:
        for step in range(steps):
            env_ids = np.arange(envs - 1 if step % 3 == 2 and envs > 1 else envs)
            n = len(env_ids)
            terminated = (rng.random(n) < 0.1) & (step < steps - 1)
            pool.extend({"obs": rng.normal(size=(n, 2)), "action": env_ids, "reward": rng.normal(size=n),
                         "next_obs": rng.normal(size=(n, 2)), "terminated": terminated,
                         "truncated": (rng.random(n) < 0.08) & ~terminated & (step < steps - 1)},
                        env_ids=env_ids)
            if step in (steps // 3, steps - 9):
                pool.end_episodes([min(1, envs - 1)])  # an env reset from outside: the episode ends unflagged
    return path


def _view(path: str) -> dict:
    """What a reader sees of the pool's episodes: each episode's rows (those the pool still holds)
    and how it ended, in order; the rows bit for bit; seeded sequence windows and n-step batches,
    which follow each row's episode."""
    with expstore.open(path) as pool:
        low, high = pool.window
        table = pool.episodes()
        episodes, returns = [], []
        for k in range(len(table)):
            steps = pool.episode(int(table["episode_id"][k]))["step_id"].tolist()
            episodes.append((steps, bool(table["terminated"][k]), bool(table["truncated"][k]), bool(table["open"][k]),
                             int(table["last_step_id"][k])))
            whole = int(table["first_step_id"][k]) >= low  # the ring kept every row of it
            returns.append(float(table["return"][k]) if whole else None)
            assert not whole or int(table["length"][k]) == len(steps)
        return {"window": (low, high), "episodes": episodes, "returns": returns,
                "rows": pool.read(np.arange(low, high)),
                "sequences": pool.sample_sequences(64, 6, rng=1),
                "n_step": pool.sample(64, rng=2, n_step=3, gamma=0.9),
                "env_ids": table["env_id"].tolist()}


def _assert_same(left: dict, right: dict) -> None:
    assert left["window"] == right["window"]
    assert left["episodes"] == right["episodes"]
    for one, two in zip(left["returns"], right["returns"], strict=True):  # left: the source
        assert one is None or np.isclose(one, two, rtol=1e-12, atol=1e-12)  # None: the ring cut it there
    for key in ("rows", "sequences", "n_step"):
        assert left[key].keys() == right[key].keys(), key
        for name in left[key]:
            assert left[key][name].dtype == right[key][name].dtype, (key, name)
            assert left[key][name].tobytes() == right[key][name].tobytes(), (key, name)


def _in_row_order(view: dict) -> dict:
    """The view with its episodes ordered by their oldest row in the pool: episodes() orders them
    by first step id, which for an episode the ring cut is a row only the source ever had."""
    order = sorted(range(len(view["episodes"])), key=lambda k: view["episodes"][k][0][0])
    return {**view, "episodes": [view["episodes"][k] for k in order], "returns": [view["returns"][k] for k in order]}


def _round_trip(tmp_path, src: str, backend: str, name: str = "back") -> str:
    file = tmp_path / f"{name}.parquet"
    with expstore.open(src) as pool:
        rows, episodes = len(pool), len(pool.episodes())
    assert export_parquet(src, file) == (rows, episodes)  # an interleaved episode counted once
    back = str(tmp_path / f"{name}{BACKENDS[backend]}")
    assert import_parquet(file, back) == rows
    return back


def _kinds(view: dict) -> list[str]:
    """How each episode of a view ended: terminated, truncated by a flag or by end_episodes, open."""
    rows = view["rows"]
    where = {int(step): row for row, step in enumerate(rows["step_id"])}
    kinds = []
    for _, terminated, truncated, is_open, last in view["episodes"]:
        flagged = bool(rows["truncated"][where[last]])
        kinds.append("open" if is_open else "terminated" if terminated else "flagged" if flagged else "ended")
        assert not truncated or not terminated
    return kinds


def test_a_vector_env_pool_round_trips_its_episodes(tmp_path, backend):
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"))
    source = _view(src)
    assert set(_kinds(source)) == {"terminated", "flagged", "ended", "open"}
    assert len(set(source["env_ids"])) == 3 and len(source["episodes"]) > 10
    _assert_same(source, _view(_round_trip(tmp_path, src, backend)))


def test_a_wrapped_vector_env_pool_keeps_the_rows_of_its_partial_episodes(tmp_path, backend):
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"), capacity=50, steps=60)
    source = _view(src)
    assert source["returns"].count(None) >= 2  # the ring cut the oldest episodes of several envs
    assert set(_kinds(source)) == {"terminated", "flagged", "ended", "open"}
    back = _round_trip(tmp_path, src, backend)
    _assert_same(_in_row_order(source), _in_row_order(_view(back)))
    with expstore.open(back) as pool:  # a cut episode comes back as the rows the file has
        table = pool.episodes()
        assert (table["first_step_id"] >= pool.window[0]).all() and not table["evicted"].any()


def test_an_import_with_a_smaller_capacity_keeps_the_newest_rows_episodes(tmp_path, backend):
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"))
    file = tmp_path / "rows.parquet"
    export_parquet(src, file)
    back = str(tmp_path / f"small{BACKENDS[backend]}")
    import_parquet(file, back, capacity=40)
    copy = _view(back)
    with expstore.open(src) as pool:
        low, high = pool.window
    assert copy["window"] == (high - 40, high)
    kept = [([s for s in steps if s >= high - 40], *rest) for steps, *rest in _view(src)["episodes"]
            if steps[-1] >= high - 40]
    assert sorted(kept) == sorted(copy["episodes"])  # an episode cut by the smaller ring: ordered by its rows


def test_a_one_env_pool_imports_as_before(tmp_path, backend):
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"), envs=1, steps=120)
    source = _view(src)
    assert set(_kinds(source)) == {"terminated", "flagged", "ended", "open"}
    back = _round_trip(tmp_path, src, backend)
    _assert_same(source, _view(back))
    with expstore.open(back) as pool:
        assert not pool.episodes()["env_id"].any()


def test_episodes_cut_off_by_a_stopped_writer_come_back_truncated(tmp_path, backend):
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"))
    with expstore.open(src, "a"):
        pass  # a writer reopening marks the episodes open at its last commit cut off
    source = _view(src)
    with expstore.open(src) as pool:
        assert pool.episodes()["cut_off"].sum() == 3 and not pool.episodes()["open"].any()
    back = _round_trip(tmp_path, src, backend)
    with expstore.open(back) as pool:  # a pool's writer cuts episodes off only by stopping: these ended
        table = pool.episodes()
        assert not table["cut_off"].any() and not table["open"].any()
    source["episodes"] = [(steps, terminated, truncated or kind == "ended", is_open, last) for
                          (steps, terminated, truncated, is_open, last), kind in
                          zip(source["episodes"], _kinds(source), strict=True)]
    _assert_same(source, _view(back))


def test_a_recorded_vector_env_round_trips(tmp_path, backend):
    gym = pytest.importorskip("gymnasium")
    venv = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
    actions = np.random.default_rng(3).integers(0, 2, (80, 3))
    src = str(tmp_path / f"rec{BACKENDS[backend]}")
    with expstore.open(src, "w", capacity=1_000) as pool:
        env = expstore.RecordEpisodes(venv, pool)
        env.reset(seed=5)
        for t in range(80):
            env.step(actions[t])
    venv.close()
    source = _view(src)
    assert {"terminated", "open"} <= set(_kinds(source)) and len(set(source["env_ids"])) == 3
    _assert_same(source, _view(_round_trip(tmp_path, src, backend)))


def test_the_metadata_names_the_open_episodes_and_the_file_has_no_other_columns(tmp_path):
    pd = pytest.importorskip("pandas")
    src = _vector_pool(str(tmp_path / "src.h5"))
    file = tmp_path / "rows.parquet"
    export_parquet(src, file)
    with expstore.open(src) as pool:
        table = pool.episodes()
        open_ids = sorted(table["episode_id"][table["open"]].tolist())
    assert len(open_ids) == 3
    assert json.loads(pq.read_schema(file).metadata[b"expstore"])["open_episodes"] == open_ids
    frame = pd.read_parquet(file)
    assert list(frame.columns) == ["step_id", "episode_id", "episode_step", *SCHEMA]
    assert set(frame["episode_id"][frame["episode_id"].isin(open_ids)]) == set(open_ids)


def _without_open_episodes(file, out) -> None:
    """The file as the export wrote it before it recorded the open episodes."""
    table = pq.read_table(file)
    saved = json.loads(table.schema.metadata[b"expstore"])
    del saved["open_episodes"]
    pq.write_table(table.replace_schema_metadata({"expstore": json.dumps(saved)}), out)


def test_an_older_file_keeps_its_episodes_and_ends_the_open_ones(tmp_path, backend, caplog):
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"))
    export_parquet(src, tmp_path / "rows.parquet")
    _without_open_episodes(tmp_path / "rows.parquet", tmp_path / "old.parquet")
    back = str(tmp_path / f"old{BACKENDS[backend]}")
    with caplog.at_level(logging.INFO, logger="expstore.interchange.parquet"):
        import_parquet(tmp_path / "old.parquet", back)
    source = _view(src)
    unflagged = sum(kind in ("ended", "open") for kind in _kinds(source))
    # The file cannot tell an open episode from one ended without a flag: both come back ended.
    source["episodes"] = [(steps, terminated, truncated or is_open, False, last)
                          for steps, terminated, truncated, is_open, last in source["episodes"]]
    _assert_same(source, _view(back))
    assert "does not say which episodes were still open" in caplog.text
    assert f"its {unflagged} episodes that end without a terminated or truncated flag" in caplog.text


def test_a_damaged_open_episodes_entry_is_refused(tmp_path):
    src = _vector_pool(str(tmp_path / "src.h5"))
    export_parquet(src, tmp_path / "rows.parquet")
    table = pq.read_table(tmp_path / "rows.parquet")
    saved = {**json.loads(table.schema.metadata[b"expstore"]), "open_episodes": ["seven"]}
    pq.write_table(table.replace_schema_metadata({"expstore": json.dumps(saved)}), tmp_path / "bad.parquet")
    with pytest.raises(CorruptStoreError, match="open_episodes entry"):
        import_parquet(tmp_path / "bad.parquet", tmp_path / "out.h5")
    assert not list(tmp_path.glob("out*"))


def _other_tool_file(path, episode: np.ndarray) -> None:
    """A file another tool wrote: an episode column, an observation numbering the rows, no flags."""
    table = pa.table({"episode_index": episode, "observation": np.arange(len(episode), dtype=np.float64),
                      "reward": np.ones(len(episode))})
    pq.write_table(table, path)


def _imported_episodes(path: str) -> tuple[list[list[float]], list[int]]:
    """Each episode's observations (episodes() order) and env ids of a pool imported from such a file."""
    with expstore.open(path) as pool:
        episodes = pool.episodes()
        assert not episodes["open"].any()
        rows = [pool.episode(int(k))["observation"].tolist() for k in episodes["episode_id"]]
        return rows, episodes["env_id"].tolist()


def _runs(episode: np.ndarray) -> list[list[float]]:
    """The rows of each run of one episode id, in file order."""
    starts = np.flatnonzero(np.concatenate([[True], episode[1:] != episode[:-1]]))
    return [part.astype(float).tolist() for part in np.split(np.arange(len(episode)), starts[1:])]


def test_a_file_of_another_tool_ends_an_episode_where_its_id_changes(tmp_path, backend):
    episode = np.array([0, 1, 0, 1, 0, 2, 1, 2, 2, 3, 2, 3])  # an id seen again later begins another episode
    _other_tool_file(tmp_path / "other.parquet", episode)
    back = str(tmp_path / f"other{BACKENDS[backend]}")
    import_parquet(tmp_path / "other.parquet", back)
    rows, env_ids = _imported_episodes(back)
    assert rows == _runs(episode) and not any(env_ids)


def test_shards_of_another_tool_joined_end_to_end_keep_their_episodes(tmp_path, backend):
    episode = np.tile(np.repeat(np.arange(3), 4), 2)  # two shards, each numbering its episodes from 0
    _other_tool_file(tmp_path / "shards.parquet", episode)
    back = str(tmp_path / f"shards{BACKENDS[backend]}")
    assert import_parquet(tmp_path / "shards.parquet", back) == 24
    rows, env_ids = _imported_episodes(back)
    assert rows == [list(range(start, start + 4)) for start in range(0, 24, 4)] and env_ids == [0] * 6


def test_shuffled_rows_of_another_tool_import(tmp_path, backend):
    episode = np.random.default_rng(7).permutation(np.repeat(np.arange(3_000), 2))
    _other_tool_file(tmp_path / "shuffled.parquet", episode)
    back = str(tmp_path / f"shuffled{BACKENDS[backend]}")
    assert import_parquet(tmp_path / "shuffled.parquet", back) == 6_000
    rows, env_ids = _imported_episodes(back)
    assert rows == _runs(episode) and not any(env_ids)


def test_the_cli_round_trip_keeps_vector_env_episodes(tmp_path, backend):
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"))
    file = tmp_path / "rows.parquet"
    with expstore.open(src) as pool:
        rows, episodes = len(pool), len(pool.episodes())
    assert f"wrote {rows} rows in {episodes} episodes" in run("export", src, file).output
    back = str(tmp_path / f"back{BACKENDS[backend]}")
    assert f"imported {rows} rows" in run("import", file, back).output
    _assert_same(_view(src), _view(back))
