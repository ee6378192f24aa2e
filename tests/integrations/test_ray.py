"""Sharded pools on Ray: proportional sampling, shard actors killed mid-run, shared-filesystem reads.

Ray tests run on one local cluster (``ray.init(num_cpus=2)``) shared by the module; they are
skipped when Ray is not installed. The split and shared-filesystem tests need no Ray.
Every row's values derive from its step id (tests.helpers.pools.rows_for), so any sampled or reopened
row can be checked on its own.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import expstore
from expstore.errors import EmptyStoreError, InvalidArgumentError, ShardsUnavailableError
from expstore.integrations.sharding import SharedShards, join_parts, split_batch
from expstore.integrations.sharding.split import split_rounds
from tests.helpers.heap_rows import heap_batch, heap_row, heap_schema
from tests.helpers.pools import BACKENDS, pendulum_schema, rows_for

# Mixed backends, so that every Ray test covers both.
SHARD_NAMES = ["shard0.h5", "shard1.zarr", "shard2.h5"]
DEADLINE_S = 90.0  # a generous bound for a restart on a loaded 2-core machine; reaching it fails the test


def assert_rows_match(batch: dict) -> None:
    expected = rows_for(batch["step_id"])
    for name, values in expected.items():
        np.testing.assert_array_equal(batch[name], values, err_msg=f"field {name}")


def fill(path: str, count: int, **options) -> None:
    with expstore.open(path, "w", capacity=10_000, schema=pendulum_schema(), **options) as pool:
        pool.extend(rows_for(np.arange(count)))


# ---------------------------------------------------------------------- no Ray needed
def test_split_is_multinomial_by_shard_length():
    rng = np.random.default_rng(0)
    counts = split_batch(rng, 60_000, [100, 0, 300, 600])
    assert counts.sum() == 60_000
    assert counts[1] == 0
    np.testing.assert_allclose(counts[[0, 2, 3]] / 60_000, [0.1, 0.3, 0.6], atol=0.01)


def test_split_of_empty_shards_raises():
    with pytest.raises(EmptyStoreError, match="every shard is empty"):
        split_batch(np.random.default_rng(0), 8, [0, 0])


def test_join_adds_the_shard_column_and_keeps_step_ids():
    parts = [(2, {"x": np.ones(3), "step_id": np.arange(3)}), (0, {"x": np.zeros(2), "step_id": np.arange(5, 7)})]
    joined = join_parts(parts)
    assert joined["shard"].tolist() == [2, 2, 2, 0, 0]
    assert joined["step_id"].tolist() == [0, 1, 2, 5, 6]
    assert joined["x"].tolist() == [1, 1, 1, 0, 0]


def test_shared_filesystem_shards_sample_in_proportion(tmp_path, backend):
    paths = [str(tmp_path / f"shard{index}{BACKENDS[backend]}") for index in range(3)]
    for path, count in zip(paths, [100, 300, 600], strict=True):
        fill(path, count)
    with SharedShards(paths, rng=1) as shards:
        assert shards.lengths() == [100, 300, 600]
        assert len(shards) == 1000
        batch = shards.sample(4000)
        assert_rows_match(batch)
        np.testing.assert_allclose(np.bincount(batch["shard"]) / 4000, [0.1, 0.3, 0.6], atol=0.03)
        for index, count in enumerate([100, 300, 600]):
            assert batch["step_id"][batch["shard"] == index].max() < count
        n_step = shards.sample(64, n_step=3, gamma=0.5)
        assert set(np.unique(n_step["discount"])) <= {0.5, 0.25, 0.125}
        windows = shards.sample_sequences(16, 4)
        assert windows["obs"].shape == (16, 4, 3) and windows["shard"].shape == (16,)


def test_shared_filesystem_reader_follows_a_live_writer(tmp_path, backend):
    paths = [str(tmp_path / f"shard{index}{BACKENDS[backend]}") for index in range(2)]
    fill(paths[0], 10)
    with (expstore.open(paths[1], "w", capacity=1000, schema=pendulum_schema()) as writer,
          SharedShards(paths, rng=2) as shards):
        assert shards.lengths() == [10, 0]
        writer.extend(rows_for(np.arange(500)))
        assert shards.lengths() == [10, 0]  # nothing committed yet: readers see the last commit
        writer.flush()
        assert shards.lengths() == [10, 500]
        batch = shards.sample(1000)
        assert_rows_match(batch)
        assert (batch["shard"] == 1).sum() > 900


# ---------------------------------------------------------------------- ragged fields, no Ray needed
def short_row(step: int) -> dict[str, np.ndarray]:
    """``heap_row`` with at most 2 tokens: its shard pads to far fewer than a shard of ``heap_row``."""
    return heap_row(step, tokens=step % 3)


def fill_ragged(path: str, row, count: int = 120) -> None:
    with expstore.open(path, "w", capacity=500, schema=heap_schema()) as pool:
        pool.extend(heap_batch(range(count), row=row))


def ragged_shards(tmp_path, suffixes) -> tuple[list[str], tuple]:
    """Shards of short rows and one of long rows; returns the paths and each shard's row function."""
    rows = (short_row, heap_row, short_row)[:len(suffixes)]
    paths = [str(tmp_path / f"ragged{index}{suffix}") for index, suffix in enumerate(suffixes)]
    for path, row in zip(paths, rows, strict=True):
        fill_ragged(path, row)
    return paths, rows


def assert_ragged_rows(batch: dict, rows: tuple, listed: bool = False, pad: float = 0) -> None:
    """Every row (or window row) its shard's, padded to the batch's longest row with ``pad``."""
    steps = batch["step_id"]
    shards = batch["shard"].reshape(-1, *[1] * (steps.ndim - 1)) + np.zeros_like(steps)
    for name in ("tokens", "points"):
        lengths = batch[f"{name}_length"]
        assert lengths.shape == steps.shape
        if not listed:
            assert batch[name].shape[steps.ndim] == lengths.max()
        for position in np.ndindex(steps.shape):
            step, row = int(steps[position]), batch[name]
            for axis in position:  # a list of lists is indexed one level at a time
                row = row[axis]
            row = np.asarray(row)
            expected = rows[int(shards[position])](step)[name] if step >= 0 else row[:0]  # past a window's end
            assert lengths[position] == len(expected)
            np.testing.assert_array_equal(row[:len(expected)], expected)
            assert (row[len(expected):] == pad).all()


def test_join_widens_padded_ragged_parts_and_joins_lists():
    short = {"tokens": np.array([[1], [2]]), "tokens_length": np.array([1, 1]), "step_id": np.arange(2)}
    long = {"tokens": np.array([[3, 4, 5]]), "tokens_length": np.array([3]), "step_id": np.arange(1)}
    joined = join_parts([(0, short), (1, long)], pad_value=-1)
    assert joined["tokens"].tolist() == [[1, -1, -1], [2, -1, -1], [3, 4, 5]]
    assert joined["tokens_length"].tolist() == [1, 1, 3] and joined["shard"].tolist() == [0, 0, 1]
    windows = {"tokens": np.zeros((1, 2, 1)), "tokens_length": np.array([[1, 0]]), "step_id": np.zeros((1, 2))}
    wide = {"tokens": np.ones((1, 2, 2)), "tokens_length": np.array([[2, 2]]), "step_id": np.ones((1, 2))}
    assert join_parts([(0, windows), (1, wide)], pad_value={"tokens": 9})["tokens"].shape == (2, 2, 2)
    listed = join_parts([(0, {"tokens": [np.ones(1)], "step_id": np.arange(1)}),
                         (1, {"tokens": [np.ones(3), np.ones(2)], "step_id": np.arange(2)})])
    assert [len(row) for row in listed["tokens"]] == [1, 3, 2]
    read_only = np.arange(3)
    read_only.flags.writeable = False  # as a Ray reply's arrays are
    alone = join_parts([(0, {"x": read_only, "step_id": np.arange(3)})])
    assert alone["x"].flags.writeable and alone["x"].tolist() == [0, 1, 2]


def test_shared_filesystem_shards_sample_ragged_fields(tmp_path, backend):
    paths, rows = ragged_shards(tmp_path, [BACKENDS[backend]] * 3)
    with SharedShards(paths, rng=0) as shards:
        assert_ragged_rows(shards.sample(96), rows)
        assert_ragged_rows(shards.sample(96, n_step=3, pad_value=-1), rows, pad=-1)
        assert_ragged_rows(shards.sample(96, ragged="list"), rows, listed=True)
        assert_ragged_rows(shards.sample_sequences(12, 5, pad_value={"tokens": -1, "points": -1}), rows, pad=-1)
        assert_ragged_rows(shards.sample_sequences(12, 5, ragged="list"), rows, listed=True)
        with pytest.raises(InvalidArgumentError, match="ragged='lists'"):
            shards.sample(8, ragged="lists")


class FakeShardRequests:
    """A stream's view of shards (stream.ShardRequests) over pools opened here, no Ray: each shard's
    handle answers ``sample.remote``; shards in ``failing`` never answer (they go down)."""

    def __init__(self, pools: list, failing: tuple[int, ...] = ()):
        self.rng = np.random.default_rng(0)
        self.pools, self.failing, self.calls = pools, set(failing), {}
        self.shards = [SimpleNamespace(index=index, length=len(pool), down=False,
                                       handle=SimpleNamespace(sample=SimpleNamespace(remote=partial(self.call, index))))
                       for index, pool in enumerate(pools)]

    def call(self, index: int, count: int, seed: int, options: dict) -> object:
        ref = object()
        self.calls[ref] = (index, count, seed, options)
        return ref

    def live(self) -> list:
        return [shard for shard in self.shards if not shard.down]

    def ask(self, requests: dict) -> dict:
        answers = {}
        for ref, shard in requests.items():
            index, count, seed, options = self.calls[ref]
            if index in self.failing:
                shard.down = True
                continue
            pool = self.pools[index]
            answers[index] = (pool.sample(count, rng=seed, **options) if count else None, len(pool))
        return answers

    def draw(self, method: str, count: int, options: dict) -> dict:
        index = self.live()[0].index
        return join_parts([(index, self.pools[index].sample(count, rng=1, **options))], options["pad_value"])


@pytest.mark.parametrize("failing", [(), (1,)])
@pytest.mark.parametrize("ragged", ["pad", "list"])
def test_a_batch_stream_joins_ragged_pieces(tmp_path, backend, failing, ragged):
    from expstore.integrations.sharding.stream import BatchStream

    paths, rows = ragged_shards(tmp_path, [BACKENDS[backend]] * 3)
    pools = [expstore.open(path) for path in paths]
    try:
        requests = FakeShardRequests(pools, failing)
        options = {"n_step": 1, "gamma": 0.99, "ragged": ragged, "pad_value": -1}
        with BatchStream(requests, "sample", 40, options, per_request=3, in_flight=2) as stream:
            for _ in range(6):
                batch = next(stream)
                assert len(batch["step_id"]) == 40 and batch["shard"].shape == (40,)
                assert_ragged_rows(batch, rows, listed=ragged == "list", pad=-1)
                assert not set(failing) & set(batch["shard"].tolist())
    finally:
        for pool in pools:
            pool.close()


# ---------------------------------------------------------------------- a local Ray cluster
@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed; pip install 'expstore[ray]' to run these tests")
    # Tasks defined here run in Ray workers, which cannot import the test modules: ship them by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.cloudpickle.register_pickle_by_value(sys.modules["tests.helpers.pools"])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def record_through_actor(shard, stop_path: str, rows_per_call: int, pace_s: float) -> int:
    """An actor loop on another process: sends batches to its shard, exactly once across restarts."""
    import ray

    next_step = 0
    while not os.path.exists(stop_path):
        rows = rows_for(np.arange(next_step, next_step + rows_per_call))
        next_step = ray.get(shard.extend.remote(rows, first_step_id=next_step))
        time.sleep(pace_s)  # the environment's step time
    return next_step


def record_in_place(pool, stop_path: str, rows_per_call: int, pace_s: float) -> int:
    """A co-located actor loop, run inside the shard actor; resumes from the pool after a restart."""
    while not os.path.exists(stop_path):
        step = pool.next_step_id
        pool.extend(rows_for(np.arange(step, step + rows_per_call)))
        time.sleep(pace_s)
    pool.flush()
    return pool.next_step_id


def start_pool(cluster, tmp_path, **options):
    from expstore.integrations.sharding import ShardedPool

    paths = [str(tmp_path / name) for name in SHARD_NAMES]
    pool = ShardedPool.create(paths, capacity=50_000, schema=pendulum_schema(), commit_every=64,
                              commit_interval_s=0.05, fsync=False, rng=0, timeout_s=2.0, **options)
    return pool, paths


def sample_until(pool, condition, batch_size: int = 128) -> int:
    """Sample (checking every batch) until ``condition()`` holds; returns the batches drawn."""
    start, batches = time.monotonic(), 0
    while not condition():
        assert time.monotonic() - start < DEADLINE_S, f"condition not reached; states {pool.shard_states()}"
        if not len(pool):
            continue  # the loops have not committed their first rows yet
        batch = pool.sample(batch_size)
        assert len(batch["step_id"]) == batch_size
        assert_rows_match(batch)
        batches += 1
    return batches


def kill_shard(cluster, pool, victim: int, how: str) -> None:
    if how == "ray.kill":
        cluster.kill(pool.shards[victim], no_restart=False)
    else:
        os.kill(pool.info()[victim]["pid"], signal.SIGKILL)


def committed_on_disk(path: str) -> int:
    with expstore.open(path, "r") as reader:
        return reader.next_step_id


@pytest.mark.parametrize("how, victim", [
    ("ray.kill", 1),  # zarr shard fed through the actor
    ("sigkill", 2),  # hdf5 shard fed by a co-located loop
    pytest.param("ray.kill", 2, marks=pytest.mark.slow),
    pytest.param("sigkill", 1, marks=pytest.mark.slow),
])
def test_three_loops_and_a_learner_survive_a_killed_shard(cluster, tmp_path, how, victim):
    pool, paths = start_pool(cluster, tmp_path)
    stop_path = str(tmp_path / "stop")
    remote_loop = cluster.remote(num_cpus=0)(record_through_actor)
    loops = [remote_loop.remote(pool.shards[0], stop_path, 8, 0.005),
             remote_loop.remote(pool.shards[1], stop_path, 8, 0.005),
             pool.shards[2].run.remote(record_in_place, stop_path, 8, 0.005)]
    sample_until(pool, lambda: min(length or 0 for length in pool.lengths()) >= 200)
    with SharedShards(paths, rng=3) as shared:  # read-only, straight from the files, meanwhile
        assert_rows_match(shared.sample(256))

    committed_before = committed_on_disk(paths[victim])
    assert committed_before >= 200
    old_pid = pool.info()[victim]["pid"]
    kill_shard(cluster, pool, victim, how)

    def restarted_and_writing() -> bool:
        info = pool.info()[victim]
        return info is not None and info["pid"] != old_pid and info["length"] >= committed_before + 100

    batches_after_kill = sample_until(pool, restarted_and_writing)
    assert batches_after_kill >= 1
    open(stop_path, "w").close()
    finals = cluster.get(loops, timeout=DEADLINE_S)
    pool.flush()

    assert finals[victim] >= committed_before + 100
    for path, final in zip(paths, finals, strict=True):
        with expstore.open(path, "r") as reader:
            assert (reader.first_step_id, reader.next_step_id) == (0, final)  # every committed row, no gap
            assert_rows_match(reader[:])
    pool.close()


def test_a_hung_shard_is_skipped_with_a_warning_and_all_down_raises(cluster, tmp_path, caplog):
    pool, paths = start_pool(cluster, tmp_path)
    for index, shard in enumerate(pool.shards):
        count = 100 * (index + 1)
        assert cluster.get(shard.extend.remote(rows_for(np.arange(count)), first_step_id=0)) == count
    assert pool.flush() == [100, 200, 300]
    assert len(pool) == 600

    plain = pool.sample(3000)
    assert_rows_match(plain)
    np.testing.assert_allclose(np.bincount(plain["shard"]) / 3000, [1 / 6, 2 / 6, 3 / 6], atol=0.04)
    n_step = pool.sample(64, n_step=3, gamma=0.5)
    assert set(np.unique(n_step["discount"])) <= {0.5, 0.25, 0.125}
    windows = pool.sample_sequences(8, 4)
    assert windows["obs"].shape == (8, 4, 3) and windows["shard"].shape == (8,)
    inside = windows["mask"][:, 1:]
    assert (np.diff(windows["step_id"], axis=1)[inside] == 1).all()

    hung_pid = pool.info()[1]["pid"]
    os.kill(hung_pid, signal.SIGSTOP)  # a shard that stops answering (GC pause, dead disk, lost node)
    try:
        with caplog.at_level(logging.WARNING, logger="expstore.sharding.client"):
            for _ in range(5):
                batch = pool.sample(128)
                assert len(batch["step_id"]) == 128 and 1 not in batch["shard"]
                assert_rows_match(batch)
        assert pool.shard_states() == ["up", "down", "up"]
        assert pool.lengths() == [100, None, 300]
        assert any("shard 1 is down" in record.getMessage() for record in caplog.records)
    finally:
        os.kill(hung_pid, signal.SIGCONT)
    sample_until(pool, lambda: pool.shard_states()[1] == "up")
    assert 1 in pool.sample(512)["shard"]

    for shard in pool.shards:
        cluster.kill(shard, no_restart=True)
    with pytest.raises(ShardsUnavailableError, match="all 3 shards are down") as caught:
        pool.sample(16)
    assert isinstance(caught.value, ConnectionError)
    assert pool.lengths() == [None, None, None]
    for path, count in zip(paths, [100, 200, 300], strict=True):  # the files outlive their actors
        assert committed_on_disk(path) == count


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_shard_actor_uses_no_deprecated_ray_api(cluster, tmp_path, backend):
    """The actor's process turns deprecation warnings into errors: a deprecated Ray call made while
    starting on an existing pool, writing or sampling would fail the call instead of printing."""
    from expstore.integrations.sharding.actor import ShardActor

    path = str(tmp_path / f"shard{BACKENDS[backend]}")
    fill(path, 10)
    strict = {"env_vars": {"PYTHONWARNINGS": "error::DeprecationWarning"}}
    actor = ShardActor.options(runtime_env=strict, max_restarts=0).remote(path, {"commit_every": 5})
    try:
        assert cluster.get(actor.extend.remote(rows_for(np.arange(10, 15)), first_step_id=10), timeout=DEADLINE_S) == 15
        assert cluster.get(actor.flush.remote(), timeout=DEADLINE_S) == 15
        batch, length = cluster.get(actor.sample.remote(8, 0, {}), timeout=DEADLINE_S)
        assert length == 15
        assert_rows_match(batch)
        assert cluster.get(actor.info.remote(), timeout=DEADLINE_S)["next_step_id"] == 15
        cluster.get(actor.close.remote(), timeout=DEADLINE_S)
    finally:
        cluster.kill(actor)


def test_readme_example_runs(cluster, tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    match = re.search(r"<!-- ray-example -->\s*```python\n(.*?)```", readme, re.DOTALL)
    assert match, "README.md lost its code block marked with <!-- ray-example -->"
    monkeypatch.chdir(tmp_path)
    code = compile(match.group(1), "README ray example", "exec")
    exec(code, {"__name__": "readme_ray_example"})  # the README's own code, run as written
    for index, rows in enumerate([1000, 2000, 3000]):
        assert committed_on_disk(str(tmp_path / "runs" / "shards" / f"shard{index}.h5")) == rows
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs"]  # nothing else in the working directory


def test_split_rounds_splits_each_batch_by_shard_length():
    counts = split_rounds(np.random.default_rng(0), 500, 120, [100, 0, 300])
    assert counts.shape == (500, 3)
    assert (counts.sum(axis=1) == 120).all() and (counts[:, 1] == 0).all()
    np.testing.assert_allclose(counts.sum(axis=0) / counts.sum(), [0.25, 0, 0.75], atol=0.01)
    with pytest.raises(EmptyStoreError, match="every shard is empty"):
        split_rounds(np.random.default_rng(0), 2, 8, [0, 0])


def test_a_batch_stream_draws_like_sample_and_survives_a_hung_shard(cluster, tmp_path, caplog):
    from expstore.errors import ClosedStoreError, InvalidArgumentError

    pool, paths = start_pool(cluster, tmp_path)
    for index, shard in enumerate(pool.shards):
        cluster.get(shard.extend.remote(rows_for(np.arange(100 * (index + 1))), first_step_id=0))
    assert pool.flush() == [100, 200, 300]
    with pool.batches(100, per_request=8, in_flight=3) as stream:
        batches = [next(stream) for _ in range(30)]  # several requests, some answered while others wait
    for batch in batches:
        assert len(batch["step_id"]) == 100 and batch["shard"].shape == (100,)
        assert_rows_match(batch)
        for index, count in enumerate([100, 200, 300]):
            assert (batch["step_id"][batch["shard"] == index] < count).all()
    shards = np.concatenate([batch["shard"] for batch in batches])
    np.testing.assert_allclose(np.bincount(shards) / len(shards), [1 / 6, 2 / 6, 3 / 6], atol=0.03)
    assert len({batch["step_id"].tobytes() for batch in batches}) == 30  # each batch drawn on its own
    with pytest.raises(ClosedStoreError, match="stream was closed"):
        next(stream)
    with pool.batches(32, n_step=3, gamma=0.5, per_request=4) as stream:
        assert set(np.unique(next(stream)["discount"])) <= {0.5, 0.25, 0.125}
    with pool.sequence_batches(8, 4, per_request=2) as stream:
        windows = next(stream)
        assert windows["obs"].shape == (8, 4, 3) and windows["shard"].shape == (8,)
    for bad in ({"per_request": 0}, {"in_flight": 0}, {"per_request": 10**6}):
        with pytest.raises(InvalidArgumentError, match="must be a positive int"):
            pool.batches(16, **bad)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        pool.batches(0)

    hung_pid = pool.info()[1]["pid"]
    stream = pool.batches(64, per_request=4, in_flight=2)
    next(stream)
    os.kill(hung_pid, signal.SIGSTOP)
    try:
        with caplog.at_level(logging.WARNING, logger="expstore.sharding.client"):
            for _ in range(12):  # past the requests sent before the shard hung, into new ones
                batch = next(stream)
                assert len(batch["step_id"]) == 64
                assert_rows_match(batch)
            assert 1 not in batch["shard"]
        assert pool.shard_states()[1] == "down"
        assert any("shard 1 is down" in record.getMessage() for record in caplog.records)
    finally:
        os.kill(hung_pid, signal.SIGCONT)
    stream.close()
    pool.close()


def test_sharded_pools_sample_ragged_fields(cluster, tmp_path):
    from expstore.integrations.sharding import ShardedPool

    paths, rows = ragged_shards(tmp_path, [name[name.index("."):] for name in SHARD_NAMES])
    pool = ShardedPool.create(paths, rng=0, timeout_s=DEADLINE_S)
    try:
        assert pool.lengths() == [120, 120, 120]
        assert_ragged_rows(pool.sample(96), rows)
        assert_ragged_rows(pool.sample(96, n_step=3, pad_value=-1), rows, pad=-1)
        assert_ragged_rows(pool.sample(96, ragged="list"), rows, listed=True)
        assert_ragged_rows(pool.sample_sequences(12, 5, pad_value=-1), rows, pad=-1)
        assert_ragged_rows(pool.sample_sequences(12, 5, ragged="list"), rows, listed=True)
        with pool.batches(48, per_request=4, pad_value=-1) as stream:
            for _ in range(5):
                assert_ragged_rows(next(stream), rows, pad=-1)
        with pool.sequence_batches(6, 4, per_request=2, ragged="list") as stream:
            assert_ragged_rows(next(stream), rows, listed=True)
        with pytest.raises(InvalidArgumentError, match="pad_value"):
            pool.sample(8, pad_value="x")
    finally:
        pool.close()
