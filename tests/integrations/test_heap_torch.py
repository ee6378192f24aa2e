"""The torch feed with heap fields: padded tensors plus lengths, or lists of tensors."""

from __future__ import annotations

import numpy as np
import pytest

import expstore
from tests.helpers.heap_rows import heap_batch, heap_row, heap_schema

torch = pytest.importorskip("torch")
from expstore.integrations.torch_feed import PoolDataset, Prefetcher, pool_loader, to_tensors  # noqa: E402


@pytest.fixture
def heap_pool(pool_path) -> str:
    with expstore.open(pool_path, "w", capacity=200, schema=heap_schema()) as pool:
        pool.extend(heap_batch(range(120)))
    return pool_path


def test_to_tensors_of_padded_and_listed_batches(heap_pool):
    with expstore.open(heap_pool) as pool:
        padded = to_tensors(pool.sample(32, rng=0))
        listed = to_tensors(pool.sample(32, rng=0, ragged="list"))
    assert padded["tokens"].dtype == torch.int32 and padded["tokens"].shape[0] == 32
    assert padded["tokens"].shape[1] == int(padded["tokens_length"].max())
    assert padded["obs"].shape == (32, 16, 16)
    for k, step in enumerate(listed["step_id"].tolist()):
        expected = torch.from_numpy(heap_row(step)["tokens"])
        assert torch.equal(listed["tokens"][k], expected)
        assert torch.equal(padded["tokens"][k, :len(expected)], expected)


def test_pool_loader_batches_carry_lengths(heap_pool):
    loader = pool_loader(heap_pool, 16, num_workers=0, fields=["tokens", "reward"], seed=0)
    seen = 0
    for batch in loader:
        assert set(batch) == {"tokens", "tokens_length", "reward", "step_id"}
        for k, step in enumerate(batch["step_id"].tolist()):
            length = int(batch["tokens_length"][k])
            np.testing.assert_array_equal(batch["tokens"][k, :length].numpy(), heap_row(step)["tokens"])
        seen += len(batch["step_id"])
    assert seen == 120
    assert PoolDataset(heap_pool)[5]["tokens_length"] == len(heap_row(5)["tokens"])


def test_pool_loader_pads_as_asked_and_lists_or_nests(heap_pool):
    padded = next(iter(pool_loader(heap_pool, 16, num_workers=0, fields=["tokens"], pad_value={"tokens": -1},
                                   seed=0)))
    for k, step in enumerate(padded["step_id"].tolist()):
        length = len(heap_row(step)["tokens"])
        assert (padded["tokens"][k, length:] == -1).all() and int(padded["tokens_length"][k]) == length
    listed = next(iter(pool_loader(heap_pool, 16, num_workers=0, fields=["tokens"], ragged="list", seed=0)))
    nested = next(iter(pool_loader(heap_pool, 16, num_workers=0, fields=["tokens"], ragged="nested", seed=0)))
    assert nested["tokens"].is_nested and nested["tokens"].size(0) == 16
    for k, step in enumerate(listed["step_id"].tolist()):
        expected = torch.from_numpy(heap_row(step)["tokens"])
        assert torch.equal(listed["tokens"][k], expected)
        assert torch.equal(nested["tokens"].unbind()[k], expected)


def test_to_tensors_nests_listed_fields_only(heap_pool):
    with expstore.open(heap_pool) as pool:
        tensors = to_tensors(pool.sample(8, rng=0, ragged="list"), nested=True)
    assert tensors["tokens"].is_nested and not tensors["obs"].is_nested
    with pytest.raises(expstore.ExpstoreError, match="a batch of no rows has no nested tensor"):
        to_tensors({"tokens": []}, nested=True)


def assert_listed_windows(tensors: dict) -> None:
    """Listed windows as lists of lists of tensors, each row the pool's (empty past a window's end)."""
    assert isinstance(tensors["tokens"], list) and all(isinstance(window, list) for window in tensors["tokens"])
    assert tensors["step_id"].shape == (4, 6)
    for window, steps in zip(tensors["tokens"], tensors["step_id"].tolist(), strict=True):
        assert len(window) == 6
        for row, step in zip(window, steps, strict=True):
            expected = heap_row(step)["tokens"] if step >= 0 else np.zeros(0, np.int32)
            assert isinstance(row, torch.Tensor) and torch.equal(row, torch.from_numpy(expected))


def test_to_tensors_of_listed_sequence_windows(heap_pool):
    with expstore.open(heap_pool) as pool:
        windows = pool.sample_sequences(4, 6, rng=0, ragged="list")
        assert_listed_windows(to_tensors(windows))
        with pytest.raises(expstore.ExpstoreError, match="sequence windows come as lists of lists"):
            to_tensors(windows, nested=True)
        with Prefetcher(lambda: pool.sample_sequences(4, 6, rng=0, ragged="list"), depth=1) as batches:
            assert_listed_windows(next(batches))


@pytest.mark.parametrize(("options", "message"), [
    ({"ragged": "padded"}, "ragged='padded' must be 'pad', 'list' or 'nested'"),
    ({"pad_value": 2.5, "fields": ["points"]}, "does not fit"),
    ({"pad_value": {"reward": 0}}, "not ragged fields"),
])
def test_bad_ragged_options_fail_when_the_dataset_is_made(heap_pool, options, message):
    with pytest.raises(expstore.ExpstoreError, match=message):
        PoolDataset(heap_pool, **options)
