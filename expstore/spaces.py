"""``expstore.spaces``, kept as an import path: the code lives in expstore/integrations/spaces.py."""

from .integrations import spaces as _moved
from .integrations.spaces import flatten, space_fields

__all__ = ["flatten", "space_fields"]


def __getattr__(name: str):
    # Any other name, private ones included, resolves in expstore.integrations.spaces.
    return getattr(_moved, name)
