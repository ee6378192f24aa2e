"""Minari and LeRobot exports of pools recorded from vector envs: the interleaved episodes of
several sub-envs come out as the pool's episodes (pool.episodes(), episode(k)), each one's rows
together and in step order, ended as the pool ended it, an open one as a one-env pool's."""

from __future__ import annotations

import numpy as np
import pytest

import expstore
from expstore.interchange import export_lerobot, export_minari, import_minari
from tests.helpers import minari_datasets
from tests.helpers.lerobot import load_with_lerobot, loaded_columns
from tests.helpers.pools import BACKENDS

pytest.importorskip("pyarrow")
minari_root = minari_datasets.minari_root  # a fixture: the tests take it by this name

FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")
SCHEMA = {"obs": ((2,), "float32"), "action": ((), "int64"), "reward": ((), "float32"), "next_obs": ((2,), "float32"),
          "terminated": ((), "bool"), "truncated": ((), "bool")}
# Episode lengths of each sub-env; the last of each is still open at the export.
LENGTHS = {0: [5, 7, 2], 1: [3, 4, 9, 6], 2: [11, 8]}


def _vector_pool(path: str, *, derive: bool = False) -> str:
    """Three sub-envs stepping in turn (env 2 skips every third round), so their episodes of
    different lengths interleave; ended ones alternate terminated / truncated. Observations run
    on within an episode, and every env's start the same, so only the bookkeeping tells the
    envs apart: ``obs`` is (step in episode, episode number of its env)."""
    schema = {name: spec for name, spec in SCHEMA.items() if not (derive and name == "next_obs")}
    todo = {env: list(lengths) for env, lengths in LENGTHS.items()}
    at = dict.fromkeys(LENGTHS, 0)
    with expstore.open(path, "w", capacity=1_000, schema=schema, derive_next_obs=derive) as pool:
        for round_index in range(1_000):
            for env in LENGTHS:
                if not todo[env] or (env == 2 and round_index % 3 == 2):
                    continue
                step, number = at[env], len(LENGTHS[env]) - len(todo[env])
                ended = step == todo[env][0] - 1 and len(todo[env]) > 1
                pool.extend({"obs": [[step, number]], "action": [env], "reward": [100 * env + round_index],
                             "next_obs": [[step + 1, number]], "terminated": [ended and number % 2 == 0],
                             "truncated": [ended and number % 2 == 1]}, env_ids=[env])
                at[env] = step + 1
                if at[env] == todo[env][0]:
                    todo[env].pop(0)
                    at[env] = 0
    return path


def _pool_episodes(path: str) -> list[dict]:
    """Each episode of the pool (episodes() order): its rows, how it ended (``ended_*``, from
    episodes()), whether it is open."""
    with expstore.open(path) as pool:
        table = pool.episodes()
        out = []
        for k in range(len(table)):
            rows = pool.episode(int(table["episode_id"][k]))
            out.append({**{name: rows[name] for name in FIELDS if name in rows}, "open": bool(table["open"][k]),
                        "ended_terminated": bool(table["terminated"][k]),
                        "ended_truncated": bool(table["truncated"][k])})
    assert len({int(env) for env in table["env_id"]}) == 3 and table["open"].sum() == 3
    assert table["terminated"].any() and table["truncated"].any()
    return out


def _assert_minari_episode(got, want: dict, n: int) -> None:
    """A Minari episode against the pool's first ``n`` rows of an episode."""
    assert len(got.rewards) == n and len(got.observations) == n + 1
    np.testing.assert_array_equal(got.observations[:-1], want["obs"][:n])
    np.testing.assert_array_equal(got.actions, want["action"][:n])
    np.testing.assert_array_equal(got.rewards, want["reward"][:n])
    assert len(set(got.actions.tolist())) == 1  # one env's rows only
    flagged = n == len(want["reward"]) and not want["open"]
    assert bool(got.terminations[-1]) == (flagged and want["ended_terminated"])
    assert bool(got.truncations[-1]) == (flagged and want["ended_truncated"])
    assert not got.terminations[:-1].any() and not got.truncations[:-1].any()


@pytest.mark.parametrize("storage", ["hdf5", "arrow", "parquet"])
def test_minari_writes_each_episode_of_a_vector_env_pool_whole(tmp_path, backend, minari_root, storage):
    minari = pytest.importorskip("minari")
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"))
    episodes = _pool_episodes(src)
    rows = sum(len(episode["reward"]) for episode in episodes)
    assert export_minari(src, minari_root / "vec" / f"{storage}-v0", data_format=storage) == (rows, len(episodes))
    dataset = minari.load_dataset(f"vec/{storage}-v0")
    assert dataset.total_episodes == len(episodes)
    for got, want in zip(dataset.iterate_episodes(), episodes, strict=True):
        _assert_minari_episode(got, want, len(want["reward"]))
        np.testing.assert_array_equal(got.observations[-1], want["next_obs"][-1])  # the final observation
    back = str(tmp_path / f"back{BACKENDS[backend]}")
    assert import_minari(minari_root / "vec" / f"{storage}-v0", back) == rows
    with expstore.open(back) as pool:  # one episode after another, bit for bit
        rows_back = pool.read(np.arange(*pool.window))
    for name in FIELDS:
        np.testing.assert_array_equal(rows_back[name], np.concatenate([episode[name] for episode in episodes]))


def test_minari_writes_the_derived_episodes_of_a_vector_env_pool(tmp_path, backend, minari_root):
    minari = pytest.importorskip("minari")
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"), derive=True)
    episodes = _pool_episodes(src)
    # The newest row of an open episode has no next observation yet: it is left out.
    lengths = [len(episode["reward"]) - episode["open"] for episode in episodes]
    assert export_minari(src, minari_root / "derived-v0") == (sum(lengths), len(episodes))
    dataset = minari.load_dataset("derived-v0")
    for got, want, n in zip(dataset.iterate_episodes(), episodes, lengths, strict=True):
        _assert_minari_episode(got, want, n)
        final = want["obs"][n] if n < len(want["obs"]) else [n, want["obs"][0][1]]  # the env's next step
        np.testing.assert_array_equal(got.observations[-1], final)


def test_lerobot_writes_each_episode_of_a_vector_env_pool_as_one(tmp_path, backend):
    src = _vector_pool(str(tmp_path / f"src{BACKENDS[backend]}"))
    episodes = _pool_episodes(src)
    rows = sum(len(episode["reward"]) for episode in episodes)
    root = str(tmp_path / "exported")
    assert export_lerobot(src, root) == (rows, len(episodes))
    dataset = load_with_lerobot(root)
    assert dataset.meta.total_episodes == len(episodes) and len(dataset) == rows
    columns = loaded_columns(dataset)
    lengths = [len(episode["reward"]) for episode in episodes]
    assert columns["episode_index"].tolist() == np.repeat(np.arange(len(episodes)), lengths).tolist()
    assert columns["frame_index"].tolist() == [t for n in lengths for t in range(n)]
    starts = np.cumsum([0, *lengths])
    for k, want in enumerate(episodes):
        frames = slice(int(starts[k]), int(starts[k + 1]))
        for name, key in (("obs", "observation.state"), ("action", "action"), ("reward", "next.reward"),
                          ("next_obs", "next.observation.state"), ("terminated", "next.done"),
                          ("truncated", "next.truncated")):
            np.testing.assert_array_equal(columns[key][frames], want[name], err_msg=f"{key} of episode {k}")
        assert dataset.meta.episodes[k]["dataset_from_index"] == starts[k]
        assert dataset.meta.episodes[k]["dataset_to_index"] == starts[k + 1]


def test_the_episode_order_of_a_slice_with_many_episodes_is_each_episodes_rows_in_turn(tmp_path, backend):
    from expstore.inspect.streaming import open_source
    from expstore.interchange.episode_tags import EpisodeOrder

    rng = np.random.default_rng(5)
    path = str(tmp_path / f"many{BACKENDS[backend]}")
    with expstore.open(path, "w", capacity=600, schema=SCHEMA) as pool:
        for step in range(80):  # eight envs, episodes of 1 to 4 rows: about 200 in one slice
            envs = rng.permutation(8)[: rng.integers(5, 9)]
            ended = rng.random(len(envs)) < 0.4
            pool.extend({"obs": rng.normal(size=(len(envs), 2)), "action": envs, "reward": np.full(len(envs), step),
                         "next_obs": rng.normal(size=(len(envs), 2)), "terminated": ended,
                         "truncated": np.zeros(len(envs), bool)}, env_ids=envs)
        table = pool.episodes()
        first = np.argsort(table["first_step_id"], kind="stable")  # episodes in the order they begin
        want = [pool.episode(int(table["episode_id"][k])) for k in first]
    assert len(want) > 150
    source = open_source(path)
    try:
        order = EpisodeOrder(source)
        assert order.interleaved
        parts = list(order.slices())
    finally:
        source.close()
    assert len(parts) >= 1 and [first for first, _, _ in parts] == np.cumsum(
        [0, *[len(ids) for _, _, ids in parts]])[:-1].tolist()
    got_ids = np.concatenate([ids for _, _, ids in parts])
    want_ids = np.concatenate([np.full(len(rows["reward"]), table["episode_id"][k]) for k, rows in zip(first, want,
                                                                                                      strict=True)])
    np.testing.assert_array_equal(got_ids, want_ids)
    for name in FIELDS:
        np.testing.assert_array_equal(np.concatenate([rows[name] for _, rows, _ in parts]),
                                      np.concatenate([rows[name] for rows in want]), err_msg=name)
