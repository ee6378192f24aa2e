"""expstore.mix of pools with ragged fields whose longest rows differ: padded batches widened to
the longest row of the whole batch (with each source's pad value, lengths kept), listed ones
joined, for every sampling option."""

from __future__ import annotations

import numpy as np
import pytest

import expstore
from expstore import ExponentialRecency
from expstore.core.heap import length_key
from tests.helpers.heap_rows import heap_batch, heap_row, heap_schema


def short_row(step: int) -> dict[str, np.ndarray]:
    """``heap_row`` with at most 2 tokens, so that its source pads to far fewer than the other."""
    return heap_row(step, tokens=step % 3)


ROWS = (short_row, heap_row)  # source index -> the row of a step


@pytest.fixture
def sources(pool_path):
    stem, dot, suffix = pool_path.rpartition(".")
    paths = [f"{stem}_short{dot}{suffix}", pool_path]
    for path, row in zip(paths, ROWS, strict=True):
        with expstore.open(path, "w", capacity=200, schema=heap_schema()) as pool:
            pool.extend(heap_batch(range(120), row=row))
    pools = [expstore.open(path) for path in paths]
    yield pools
    for pool in pools:
        pool.close()


def pad_of(pad_value, name: str) -> float:
    return pad_value.get(name, 0) if isinstance(pad_value, dict) else pad_value


def assert_rows(batch: dict, listed: bool, pads: tuple) -> None:
    """Every row its source's, padded to the batch's longest row with its source's pad value."""
    assert set(batch["source"].tolist()) == {0, 1}
    for name in ("tokens", "points"):
        lengths = batch[length_key(name)]
        if not listed:
            assert batch[name].shape[1] == lengths.max()
        for k, (source, step) in enumerate(zip(batch["source"].tolist(), batch["step_id"].tolist(), strict=True)):
            expected = ROWS[source](step)[name]
            assert lengths[k] == len(expected)
            row = batch[name][k]
            if listed:
                np.testing.assert_array_equal(row, expected)
                continue
            np.testing.assert_array_equal(row[:len(expected)], expected)
            assert (row[len(expected):] == pad_of(pads[source], name)).all()
    for k, (source, step) in enumerate(zip(batch["source"].tolist(), batch["step_id"].tolist(), strict=True)):
        if batch["obs"].ndim == 3:  # not frame-stacked
            np.testing.assert_array_equal(batch["obs"][k], ROWS[source](step)["obs"])


@pytest.mark.parametrize("options", [
    {}, {"ragged": "list"}, {"n_step": 3}, {"prioritized": True},
    {"prioritized": True, "recency": ExponentialRecency(40)}, {"max_age": 50}, {"frame_stack": 2},
    {"pad_value": -1}, {"pad_value": {"tokens": -1, "points": 7}},
    {"ragged": "list", "n_step": 2, "prioritized": True},
], ids=lambda options: ",".join(f"{key}={value}" for key, value in options.items()) or "plain")
def test_mixed_ragged_fields_are_widened_or_listed(sources, options):
    batch = expstore.mix({sources[0]: 0.5, sources[1]: 0.5}).sample(64, rng=0, **options)
    pad = options.get("pad_value", 0)
    assert_rows(batch, options.get("ragged") == "list", (pad, pad))
    assert batch["obs"].shape[0] == 64


def test_each_source_widens_with_its_own_pad_value(sources):
    batch = expstore.mix({sources[0]: 0.5, sources[1]: 0.5}).sample(
        64, rng=1, pad_value=-2, per_source={0: {"pad_value": -1}})
    assert_rows(batch, False, (-1, -2))
    short = batch["source"] == 0
    assert batch["tokens"].shape[1] > 3 and (batch["tokens"][short][:, 3:] == -1).all()
