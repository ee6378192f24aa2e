"""``expstore.sb3``, kept as an import path: the code lives in expstore/integrations/sb3_buffers.py."""

from .integrations import sb3_buffers as _moved
from .integrations.sb3_buffers import DiskDictReplayBuffer, DiskReplayBuffer
from .integrations.sb3_her import DiskHerReplayBuffer

__all__ = ["DiskDictReplayBuffer", "DiskHerReplayBuffer", "DiskReplayBuffer"]


def __getattr__(name: str):
    # Any other name, private ones included, resolves in expstore.integrations.sb3_buffers.
    return getattr(_moved, name)
