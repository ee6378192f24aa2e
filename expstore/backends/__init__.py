"""Backends: the container formats, registered by name and path suffix (registry.py).

A new backend is a module in this folder implementing base.Backend (its archive form
included), registered below with ``register_backend``; nothing outside this folder names one.
"""

from __future__ import annotations

from ..errors import BackendError
from .base import FORMAT_VERSION, ArchiveForm, Backend, Extent, Layout
from .hdf5 import HDF5Backend
from .registry import (
    BACKENDS,
    backend_holding,
    backend_names,
    get_backend,
    has_known_suffix,
    primary_suffix,
    register_backend,
    resolve_backend,
)
from .zarr_v3 import ZarrBackend

register_backend("hdf5", HDF5Backend(), suffixes=(".h5", ".hdf5"))
register_backend("zarr", ZarrBackend(), suffixes=(".zarr",))

__all__ = [
    "BACKENDS",
    "FORMAT_VERSION",
    "ArchiveForm",
    "Backend",
    "BackendError",
    "Extent",
    "Layout",
    "backend_holding",
    "backend_names",
    "get_backend",
    "has_known_suffix",
    "primary_suffix",
    "register_backend",
    "resolve_backend",
]
