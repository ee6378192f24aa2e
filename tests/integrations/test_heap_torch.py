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


@pytest.mark.parametrize(("options", "message"), [
    ({"ragged": "padded"}, "ragged='padded' must be 'pad', 'list' or 'nested'"),
    ({"pad_value": 2.5, "fields": ["points"]}, "does not fit"),
    ({"pad_value": {"reward": 0}}, "not ragged fields"),
])
def test_bad_ragged_options_fail_when_the_dataset_is_made(heap_pool, options, message):
    with pytest.raises(expstore.ExpstoreError, match=message):
        PoolDataset(heap_pool, **options)
