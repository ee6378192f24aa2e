"""Rows of a pool with heap fields (a codec field and two ragged ones), derived from their step
ids so that any row can be checked alone, with lengths that vary from row to row."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

import expstore

MAX_TOKENS = 40


def heap_schema(codec: str = "zstd:3") -> dict:
    return {
        "obs": expstore.Field((16, 16), "uint8", codec=codec),
        "tokens": expstore.Field((None,), "int32"),
        "points": expstore.Field((None, 2), "float32", codec="lz4"),
        "reward": ((), "float32"),
        "terminated": ((), "bool"),
        "truncated": ((), "bool"),
    }


def token_count(step: int) -> int:
    return (step * 7919) % (MAX_TOKENS + 1)


def heap_row(step: int, tokens: int | None = None) -> dict[str, np.ndarray]:
    """The row of ``step``; ``tokens`` overrides its token count (to make rows of a chosen size)."""
    count = token_count(step) if tokens is None else tokens
    obs = np.zeros((16, 16), np.uint8)
    obs[step % 16] = step % 251
    obs[:, (step // 16) % 16] = 7
    return {
        "obs": obs,
        "tokens": (np.arange(count, dtype=np.int64) + step).astype(np.int32),
        "points": np.full((step % 5, 2), step, np.float32) + np.arange(2, dtype=np.float32),
        "reward": np.float32(step),
        "terminated": np.bool_(step % 11 == 10),
        "truncated": np.bool_(False),
    }


def heap_batch(steps) -> dict:
    rows = [heap_row(int(step)) for step in steps]
    ragged = ("tokens", "points")
    return {name: [row[name] for row in rows] if name in ragged else np.stack([row[name] for row in rows])
            for name in rows[0]}


def assert_rows_match(batch: Mapping, steps=None) -> None:
    """Every row of ``batch`` (padded ragged fields with lengths) is the row of its step id."""
    steps = batch["step_id"] if steps is None else steps
    for k, step in enumerate(np.asarray(steps)):
        expected = heap_row(int(step), tokens=None)
        np.testing.assert_array_equal(batch["obs"][k], expected["obs"])
        for name in ("tokens", "points"):
            length = int(batch[f"{name}_length"][k])
            assert length == len(expected[name]), (name, step, length)
            np.testing.assert_array_equal(batch[name][k][:length], expected[name])
        assert batch["reward"][k] == np.float32(step)
