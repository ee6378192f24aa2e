"""``expstore.recorder``, kept as an import path: the code lives in expstore/integrations/recorder.py."""

from .integrations import recorder as _moved
from .integrations.recorder import RecordEpisodes, RecordVectorEpisodes

__all__ = ["RecordEpisodes", "RecordVectorEpisodes"]


def __getattr__(name: str):
    # Any other name, private ones included, resolves in expstore.integrations.recorder.
    return getattr(_moved, name)
