"""``expstore.torchrl``, kept as an import path: the code lives in expstore/integrations/torchrl_storage.py."""

from .integrations import torchrl_storage as _moved
from .integrations.torchrl_storage import PoolStorage

__all__ = ["PoolStorage"]


def __getattr__(name: str):
    # Any other name, private ones included, resolves in expstore.integrations.torchrl_storage.
    return getattr(_moved, name)
