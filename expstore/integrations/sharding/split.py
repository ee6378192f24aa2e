"""Pure helpers of sharded sampling: split a batch across shards, join the parts.

No I/O and no Ray: the Ray client (client.py) and the shared-filesystem reader (shared_fs.py)
both draw their per-shard counts here and join the shards' answers the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...core.ragged import PadValue, join_batches
from ...errors import EmptyStoreError, SchemaError

SHARD_KEY = "shard"


def split_batch(rng: np.random.Generator, batch_size: int, lengths: Sequence[int]) -> np.ndarray:
    """Rows to draw from each shard: a multinomial split of ``batch_size`` by shard length.

    Every row of the batch picks its shard with probability ``length / total``, so each stored
    transition is equally likely to be drawn, whichever shard holds it (the same distribution
    as uniform sampling of one pool holding all of them).

    Raises:
        EmptyStoreError: every shard is empty.
    """
    return rng.multinomial(int(batch_size), _shard_shares(lengths)).astype(np.int64)


def split_rounds(rng: np.random.Generator, n_batches: int, batch_size: int, lengths: Sequence[int]) -> np.ndarray:
    """Rows of each of ``n_batches`` batches to draw from each shard: ``[n_batches, shards]``,
    each row a ``split_batch`` of ``batch_size`` (one multinomial draw per batch, in one call).

    Raises:
        EmptyStoreError: every shard is empty.
    """
    return rng.multinomial(int(batch_size), _shard_shares(lengths), size=int(n_batches)).astype(np.int64)


def _shard_shares(lengths: Sequence[int]) -> np.ndarray:
    """Each shard's share of the stored rows, the probability a batch row comes from it."""
    sizes = np.asarray(lengths, dtype=np.float64)
    total = sizes.sum()
    if total <= 0:
        raise EmptyStoreError(f"every shard is empty (lengths {list(map(int, sizes))}); "
                              "record and flush some transitions first")
    return sizes / total


def join_parts(parts: Sequence[tuple[int, Mapping[str, Any]]], pad_value: PadValue = 0) -> dict[str, Any]:
    """Concatenate per-shard batches into one, with a ``shard`` column of shard indices.

    ``parts`` holds ``(shard_index, batch)`` pairs; a batch's ``step_id`` stays the shard's own
    step id, so ``(shard, step_id)`` names a row across the sharded pool. A ragged field, padded
    by each shard to its own longest row, is widened to the batch's longest with ``pad_value``
    (the one the shards were asked for), ``<name>_length`` kept; lists (``ragged="list"``) are
    joined (``join_batches``, expstore/core/ragged.py).
    """
    parts = [(index, batch) for index, batch in parts if batch is not None and len(batch["step_id"])]
    if not parts:
        raise EmptyStoreError("no shard returned any row; record and flush some transitions first")
    try:
        # Copied even from one shard: a Ray reply's arrays are read-only views of the object store.
        joined = join_batches([batch for _, batch in parts], list(parts[0][1]), [pad_value] * len(parts),
                              what="shards", copy=True)
    except SchemaError as exc:
        raise SchemaError(f"{exc}; give every shard the same schema") from None
    joined[SHARD_KEY] = np.concatenate(
        [np.full(len(batch["step_id"]), index, dtype=np.int64) for index, batch in parts])
    return joined


def derive_seeds(rng: np.random.Generator, count: int) -> list[int]:
    """One independent seed per shard, drawn from the caller's generator (reproducible runs)."""
    return [int(seed) for seed in rng.integers(0, 2**63 - 1, size=count, dtype=np.int64)]
