"""``expstore.sharding``, kept as an import path: the code lives in expstore/integrations/sharding/."""

from .integrations import sharding as _moved
from .integrations.sharding import SHARD_KEY, SharedShards, join_parts, split_batch

__all__ = [
    "SHARD_KEY",
    "ShardActor",  # noqa: F822
    "ShardedPool",  # noqa: F822
    "SharedShards",
    "create_shards",  # noqa: F822
    "join_parts",
    "split_batch",
]


def __getattr__(name: str):
    # Any other name, private ones included, resolves in expstore.integrations.sharding
    # (ShardActor, ShardedPool, create_shards load there lazily).
    return getattr(_moved, name)
