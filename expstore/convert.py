"""``expstore.convert``, kept as an import path: the code lives in expstore/maintenance/convert.py."""

from .maintenance import convert as _moved
from .maintenance.convert import CopyResult, CopyRows, convert, deduplicated, merge
from .maintenance.writing import build_pool, make_parent

__all__ = ["CopyResult", "CopyRows", "build_pool", "convert", "deduplicated", "make_parent", "merge"]


def __getattr__(name: str):
    # Any other name, private ones included, resolves in expstore.maintenance.convert.
    return getattr(_moved, name)
