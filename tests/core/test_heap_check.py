"""The checks of heap fields (core/heap_check.py): how findings list steps, the cap on the pairs
of index entries they list, and verify's decoding of a codec field in bounded batches."""

from __future__ import annotations

import numpy as np
import pytest

import expstore
from expstore.core import heap_check
from tests.helpers.heap_rows import heap_batch, heap_schema


def test_a_listing_ends_in_dots_only_where_steps_are_left_out():
    assert heap_check.listed_steps([7], 1) == "7"
    assert heap_check.listed_steps([1, 2, 3, 4, 5], 5) == "1, 2, 3, 4, 5"
    assert heap_check.listed_steps([1, 2, 3, 4, 5], 6) == "1, 2, 3, 4, 5, ..."
    assert heap_check.clipped("x" * 100).endswith("...") and len(heap_check.clipped("x" * 100)) == 60
    assert heap_check.clipped([1, 2, 3]) == "[1, 2, 3]"


def _shorten(pool, step: int) -> None:
    """A raw ragged row's bytes and length one item shorter: it no longer fits the row after it."""
    entry = pool.mapped.views["tokens"][step % pool.ring.slots]
    entry[1] -= 4
    entry[2] -= 1


def test_the_pairs_of_entries_that_do_not_fit_are_listed_up_to_a_total(pool_path):
    """Damage spread over several blocks of the scan lists LISTED_STEPS pairs in all, and counts every one."""
    schema = {"tokens": expstore.Field((None,), "int32"), "reward": ((), "float32")}
    rows = 3 * 4096
    with expstore.open(pool_path, "w", capacity=rows, schema=schema, fsync=False) as pool:
        pool.extend({"tokens": [np.arange(2, dtype=np.int32) + step for step in range(rows)],
                     "reward": np.zeros(rows, np.float32)})
    steps = [100 + 4096 * block + 50 * k for block in range(3) for k in range(3)]
    with expstore.open(pool_path, "r+") as pool:
        for step in steps:
            _shorten(pool, step)
    findings = expstore.verify(pool_path).findings
    assert len(findings) == 1, findings
    listed = ", ".join(f"{step} and {step + 1}" for step in steps[:heap_check.LISTED_STEPS])
    assert f"{len(steps)} pair(s) of neighbouring heap index entries do not fit together (steps {listed}, ...)" \
        in findings[0], findings[0]


def test_verify_decodes_a_codec_field_in_batches_of_bounded_bytes(pool_path, monkeypatch):
    """Rows of more than _VERIFY_DECODE_NBYTES a block decode in several batch calls, not row by
    row; a damaged row costs a row-by-row decode of its own batch only."""
    pytest.importorskip("zstandard")
    with expstore.open(pool_path, "w", capacity=300, schema=heap_schema(), heap_bytes=200_000) as pool:
        pool.extend(heap_batch(range(300)))
        low, _high = pool.window
    monkeypatch.setattr(heap_check, "_VERIFY_DECODE_NBYTES", 64 * 16 * 16)  # 64 obs rows a call
    one_by_one = heap_check._undecodable_one_by_one
    alone: list[tuple[str, int]] = []
    monkeypatch.setattr(heap_check, "_undecodable_one_by_one", lambda heap, rows, *args: (
        alone.append((heap.name, len(rows))), one_by_one(heap, rows, *args))[1])
    assert expstore.verify(pool_path).ok
    assert [name for name, _ in alone] == ["points"]  # lz4 decodes no batches: row by row, as before
    alone.clear()
    with expstore.open(pool_path, "r+") as pool:
        position, nbytes = (int(n) for n in pool.mapped.views["obs"][(low + 70) % pool.ring.slots][:2])
        heap = pool.mapped.views["_heap_obs"]
        heap[position % len(heap)] ^= 0xFF  # a zstd frame's magic: it no longer decodes
    findings = expstore.verify(pool_path).findings
    assert any(f"'obs': the heap bytes of 1 row (step {low + 70}) do not decode" in f for f in findings), findings
    assert ("obs", 64) in alone and sum(n for name, n in alone if name == "obs") == 64, alone
