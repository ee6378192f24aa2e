"""Rows of a pool with heap fields (a codec field and two ragged ones), derived from their step
ids so that any row can be checked alone, with lengths that vary from row to row.

The *derived* variant names the tokens ``obs_tokens``, so that a pool created with
``derive_next_obs=True`` derives both ``next_obs`` and the ragged ``next_obs_tokens``; each
episode's final observation is the row of step ``FINAL_OFFSET + step``, with ``FINAL_TOKENS``
tokens, so that final observations are much larger than rows and their heap evicts them while
their episodes are still in the window."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

import expstore

MAX_TOKENS = 40
FINAL_OFFSET = 1_000_000
FINAL_TOKENS = 400


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


def heap_batch(steps, row=heap_row, ragged=("tokens", "points")) -> dict:
    rows = [row(int(step)) for step in steps]
    return {name: [row[name] for row in rows] if name in ragged else np.stack([row[name] for row in rows])
            for name in rows[0]}


def heap_derived_schema() -> dict:
    return {("obs_tokens" if name == "tokens" else name): field for name, field in heap_schema().items()}


def heap_derived_row(step: int) -> dict[str, np.ndarray]:
    """``heap_row`` with its tokens as ``obs_tokens``, and the next observations (see the module docstring)."""
    current = heap_row(step)
    ends = bool(current["terminated"])
    following = heap_row(FINAL_OFFSET + step, tokens=FINAL_TOKENS) if ends else heap_row(step + 1)
    row = {("obs_tokens" if name == "tokens" else name): value for name, value in current.items()}
    return {**row, "next_obs": following["obs"], "next_obs_tokens": following["tokens"]}


def heap_derived_batch(steps) -> dict:
    return heap_batch(steps, heap_derived_row, ragged=("obs_tokens", "points", "next_obs_tokens"))


def assert_derived_rows_match(batch: Mapping, with_next: bool = True) -> None:
    """``assert_rows_match`` for the derived variant; ``with_next``: the batch holds the derived
    next observations too (a sample; reads of rows do not)."""
    names = ("obs", "obs_tokens", "points", "reward") + (("next_obs", "next_obs_tokens") if with_next else ())
    for k, step in enumerate(np.asarray(batch["step_id"])):
        expected = heap_derived_row(int(step))
        for name in names:
            if f"{name}_length" in batch:
                length = int(batch[f"{name}_length"][k])
                assert length == len(expected[name]), (name, step, length)
                np.testing.assert_array_equal(batch[name][k][:length], expected[name])
            else:
                np.testing.assert_array_equal(batch[name][k], expected[name], err_msg=f"{name} of step {step}")


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
