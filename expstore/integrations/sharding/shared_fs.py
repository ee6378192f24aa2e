"""Shared-filesystem mode: sample shards read-only, straight from their files, without Ray.

When the shards' disks are mounted on the learner's machine (NFS, Lustre, a shared SSD), the
learner opens each shard with ``expstore.open(path, "r")`` and samples it like any pool: the
shard writers (Ray actors or plain processes) keep writing meanwhile, and the learner sees
each shard's last commit. No Ray is needed to read; a dead writer costs nothing but new rows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from ...core.opening import open as open_pool
from ...core.ragged import PadValue, check_ragged
from ...core.store import Store
from .split import derive_seeds, join_parts, split_batch


class SharedShards:
    """Read-only view of several shard pools, sampled in proportion to their sizes.

    Args:
        paths: the shard pools (``.h5`` or ``.zarr``), each written by its own writer.
        rng: a seed or generator for the split of each batch across shards.

    Example:
        >>> shards = SharedShards(["/mnt/a/shard0.h5", "/mnt/b/shard1.h5"])  # doctest: +SKIP
        >>> batch = shards.sample(256)  # doctest: +SKIP
        >>> batch["shard"], batch["step_id"]  # doctest: +SKIP
    """

    def __init__(self, paths: Sequence[str | os.PathLike], *, rng: int | np.random.Generator | None = None):
        self.paths = [os.fspath(path) for path in paths]
        self._rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self._pools: list[Store] = []
        try:
            for path in self.paths:
                self._pools.append(open_pool(path, "r"))
        except BaseException:
            self.close()
            raise

    def lengths(self) -> list[int]:
        """Committed transitions of each shard, in the order of ``paths``."""
        return [len(pool) for pool in self._pools]

    def __len__(self) -> int:
        return sum(self.lengths())

    def sample(self, batch_size: int, *, n_step: int = 1, gamma: float = 0.99, ragged: str = "pad",
               pad_value: PadValue = 0) -> dict[str, Any]:
        """A batch drawn from every shard in proportion to its size, plus ``shard`` and ``step_id``.

        ``n_step`` and ``gamma`` work as in :meth:`expstore.Store.sample`, within each shard;
        ``ragged`` and ``pad_value`` too, a padded ragged field widened to the longest row of
        the whole batch.
        """
        check_ragged(ragged, pad_value)
        return self._draw(batch_size, pad_value, lambda pool, count, seed: pool.sample(
            count, rng=seed, n_step=n_step, gamma=gamma, ragged=ragged, pad_value=pad_value))

    def sample_sequences(self, batch_size: int, length: int, *, full_only: bool = False, ragged: str = "pad",
                         pad_value: PadValue = 0) -> dict[str, Any]:
        """Windows of ``length`` rows of one episode each, drawn as :meth:`expstore.Store.sample_sequences`."""
        check_ragged(ragged, pad_value)
        return self._draw(batch_size, pad_value, lambda pool, count, seed: pool.sample_sequences(
            count, length, rng=seed, full_only=full_only, ragged=ragged, pad_value=pad_value))

    def _draw(self, batch_size: int, pad_value: PadValue, draw) -> dict[str, Any]:
        counts = split_batch(self._rng, batch_size, self.lengths())
        seeds = derive_seeds(self._rng, len(self._pools))
        parts = [(index, draw(pool, int(count), seed))
                 for index, (pool, count, seed) in enumerate(zip(self._pools, counts, seeds, strict=True)) if count]
        return join_parts(parts, pad_value)

    def close(self) -> None:
        """Close every shard handle (the writers are not affected)."""
        for pool in self._pools:
            pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
