"""``expstore.torch_feed``, kept as an import path: the code lives in expstore/integrations/torch_feed.py."""

from .integrations import torch_feed as _moved
from .integrations.torch_feed import Batch, PoolDataset, Prefetcher, pool_loader, to_tensors

__all__ = ["Batch", "PoolDataset", "Prefetcher", "pool_loader", "to_tensors"]


def __getattr__(name: str):
    # Any other name, private ones included, resolves in expstore.integrations.torch_feed.
    return getattr(_moved, name)
