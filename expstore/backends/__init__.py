"""Backend registry: the container formats, looked up by name or by path suffix."""

from __future__ import annotations

import os

from ..errors import BackendError
from .base import FORMAT_VERSION, Backend, Extent, Layout
from .hdf5 import HDF5Backend
from .zarr_v3 import ZarrBackend

BACKENDS: dict[str, Backend] = {"hdf5": HDF5Backend(), "zarr": ZarrBackend()}


def resolve_backend(path: str, name: str | None) -> Backend:
    """The backend called ``name``, or the one whose suffix ``path`` ends with."""
    if name is not None:
        if name not in BACKENDS:
            raise BackendError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
        return BACKENDS[name]
    suffix = os.path.splitext(os.path.normpath(path))[1].lower()
    for backend in BACKENDS.values():
        if suffix in backend.suffixes:
            return backend
    choices = ", ".join(f"{s} -> {b.name}" for b in BACKENDS.values() for s in b.suffixes)
    raise BackendError(
        f"cannot tell the backend of {path!r} from its suffix ({choices}); "
        "rename the path or pass backend='hdf5' or backend='zarr'"
    )


__all__ = ["BACKENDS", "FORMAT_VERSION", "Backend", "BackendError", "Extent", "Layout", "resolve_backend"]
