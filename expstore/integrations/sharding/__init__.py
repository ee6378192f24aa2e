"""Sharded pools: one pool per actor node, sampled as one by the learners (extra ``expstore[ray]``).

    import ray
    from expstore.sharding import ShardedPool

    ray.init()
    pool = ShardedPool.create(["/data/shard0.h5", "/data/shard1.h5"], capacity=1_000_000, schema=schema)
    ray.get(pool.shards[0].extend.remote(batch))        # actors' env loops append to their shard
    batch = pool.sample(256)                            # learner: proportional, parallel, + "shard"
    for batch in pool.batches(256):                     # or a stream: many batches per round trip
        ...

A shard is an ordinary pool on its node's local disk, written by one Ray actor
(:class:`ShardActor`); :class:`ShardedPool` samples all shards in parallel through Ray.
:class:`SharedShards` reads shards straight from a shared filesystem and needs no Ray.
"""

from __future__ import annotations

from importlib import import_module

from .shared_fs import SharedShards
from .split import SHARD_KEY, join_parts, split_batch

__all__ = ["SHARD_KEY", "BatchStream", "ShardActor", "ShardedPool", "SharedShards", "create_shards", "join_parts",
           "split_batch"]

_NEEDS_RAY = {"ShardActor": "actor", "ShardedPool": "client", "create_shards": "client", "BatchStream": "stream"}


def __getattr__(name: str):
    # Ray is an optional dependency: import it only for the parts that use it.
    if name in _NEEDS_RAY:
        return getattr(import_module(f".{_NEEDS_RAY[name]}", __name__), name)
    raise AttributeError(f"module 'expstore.sharding' has no attribute {name!r}")
