"""The torch feed with heap fields: padded tensors plus lengths, or lists of tensors."""

from __future__ import annotations

import numpy as np
import pytest

import expstore
from tests.helpers.heap_rows import heap_batch, heap_row, heap_schema

torch = pytest.importorskip("torch")
from expstore.integrations.torch_feed import PoolDataset, pool_loader, to_tensors  # noqa: E402


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
