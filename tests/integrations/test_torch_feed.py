"""The torch feed: zero-copy tensors, the background prefetcher, the DataLoader dataset."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import expstore
from expstore.integrations.torch_feed import PoolDataset, Prefetcher, pool_loader, to_tensors
from tests.helpers.pools import pendulum_schema, rows_for

N_ROWS = 600
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def filled_pool(pool_path) -> str:
    with expstore.open(pool_path, "w", capacity=1_000, schema=pendulum_schema()) as pool:
        pool.extend(rows_for(np.arange(N_ROWS)))
    return pool_path


def check_batch(batch: dict, batch_size: int, device: str = "cpu") -> None:
    assert batch["obs"].shape == (batch_size, 3) and batch["obs"].dtype == torch.float32
    assert batch["action"].shape == (batch_size, 1) and batch["action"].dtype == torch.float32
    assert batch["reward"].shape == (batch_size,) and batch["reward"].dtype == torch.float32
    assert batch["terminated"].dtype == torch.bool and batch["truncated"].dtype == torch.bool
    assert batch["step_id"].dtype == torch.int64
    assert all(t.device.type == device for t in batch.values())
    expected = rows_for(batch["step_id"].cpu().numpy())
    for name, values in expected.items():
        np.testing.assert_array_equal(batch[name].cpu().numpy(), values)


@pytest.mark.parametrize("device", DEVICES)
def test_to_tensors_keeps_dtypes_shapes_and_moves_to_the_device(filled_pool, device):
    with expstore.open(filled_pool, "r") as pool:
        batch = to_tensors(pool.sample(32, rng=0), device=device, pin_memory=True)
    check_batch(batch, 32, device)


def test_to_tensors_on_cpu_shares_memory_with_the_numpy_batch():
    arrays = {"obs": np.zeros((4, 3), np.float32), "terminated": np.zeros(4, bool)}
    tensors = to_tensors(arrays)
    arrays["obs"][1, 2] = 7.0
    arrays["terminated"][3] = True
    assert tensors["obs"][1, 2].item() == 7.0 and bool(tensors["terminated"][3])
    assert tensors["obs"].data_ptr() == arrays["obs"].ctypes.data


def test_to_tensors_accepts_read_only_arrays():
    frozen = np.arange(6, dtype=np.float32)
    frozen.flags.writeable = False
    assert torch.equal(to_tensors({"x": frozen})["x"], torch.arange(6, dtype=torch.float32))


def test_prefetcher_serves_pool_batches(filled_pool):
    rng = np.random.default_rng(1)
    with expstore.open(filled_pool, "r") as pool, Prefetcher(lambda: pool.sample(64, rng=rng), depth=3) as batches:
        seen = [next(batches) for _ in range(5)]
    for batch in seen:
        check_batch(batch, 64)
    assert len({tuple(b["step_id"].tolist()) for b in seen}) == 5  # fresh batches, not one repeated


def test_prefetcher_queue_is_bounded():
    calls = []

    def sample():
        calls.append(1)
        return {"n": np.array([len(calls)])}

    with Prefetcher(sample, depth=2) as batches:
        for consumed in range(1, 20):
            next(batches)
            # ready in the queue (2) + one being built: the producer never runs further ahead
            assert len(calls) <= consumed + 2 + 1


def test_prefetcher_errors_reach_the_caller():
    calls = []

    def sample():
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("the disk is gone")
        return {"x": np.zeros(2)}

    batches = Prefetcher(sample, depth=1)
    next(batches)
    next(batches)
    with pytest.raises(ValueError, match="the disk is gone"):
        next(batches)
    assert not batches._thread.is_alive()
    with pytest.raises(expstore.ExpstoreError, match="closed"):
        next(batches)


def test_prefetcher_close_stops_a_producer_blocked_on_a_full_queue():
    produced = threading.Event()

    def sample():
        produced.set()
        return {"x": np.zeros(2)}

    batches = Prefetcher(sample, depth=1)
    assert produced.wait(timeout=10)
    batches.close()  # the producer is blocked on put(): close must still return
    assert not batches._thread.is_alive()


def test_prefetcher_rejects_a_zero_depth():
    with pytest.raises(expstore.InvalidArgumentError, match="depth"):
        Prefetcher(dict, depth=0)


def test_dataloader_with_two_workers_reads_every_row_once(filled_pool):
    loader = pool_loader(filled_pool, batch_size=50, num_workers=2, seed=3)
    seen = []
    for batch in loader:
        check_batch(batch, 50)
        seen.append(batch["step_id"].numpy())
    step_ids = np.concatenate(seen)
    assert sorted(step_ids.tolist()) == list(range(N_ROWS))
    assert step_ids.tolist() != list(range(N_ROWS))  # shuffled
    assert loader.dataset._pool is None  # only the worker processes opened the pool


def test_dataset_rows_and_fields(filled_pool):
    dataset = PoolDataset(filled_pool, fields=["obs", "reward"])
    assert len(dataset) == N_ROWS
    row = dataset[10]
    assert set(row) == {"obs", "reward", "step_id"}
    assert row["obs"].tolist() == [10.0, 10.25, 10.5] and row["step_id"].item() == 10
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._pool is None and clone[599]["step_id"].item() == 599
    with pytest.raises(expstore.InvalidArgumentError, match="0..599"):
        dataset.__getitems__([600])


def test_dataset_rejects_unknown_fields(filled_pool):
    with pytest.raises(expstore.InvalidArgumentError, match="'value'"):
        PoolDataset(filled_pool, fields=["obs", "value"])
