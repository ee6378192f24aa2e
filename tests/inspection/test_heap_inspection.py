"""Statistics and duplicates of pools with ragged and compressed fields."""

from __future__ import annotations

import numpy as np

import expstore
from expstore.inspect.streaming import PoolSource
from expstore.inspect.summary import field_stats
from tests.helpers.heap_rows import heap_batch, heap_row, heap_schema


def test_ragged_rows_read_alike_in_every_slice_and_padding_is_no_data(pool_path):
    with expstore.open(pool_path, "w", capacity=500, schema=heap_schema()) as pool:
        pool.extend(heap_batch(range(200)))
        pool.extend(heap_batch(range(190, 200)))  # ten exact duplicates of older rows
    with expstore.open(pool_path) as pool:
        report = pool.stats(duplicates=True)["duplicates"]
        source = PoolSource(pool)
        stats = field_stats(source)
        first, last = source.read(0, 3), source.read(200, 210)
    assert report["exact"]["duplicate_rows"] == 10, report
    assert first["tokens"].shape[1] == last["tokens"].shape[1]  # one width for the whole pool
    tokens = np.concatenate([heap_row(step)["tokens"] for step in [*range(200), *range(190, 200)]])
    assert stats["tokens"].to_json()["count"] == tokens.size
    assert stats["tokens"].to_json()["min"] == tokens.min()
