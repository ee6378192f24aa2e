"""The registry of backends: each container format under its name and its path suffixes.

``register_backend`` is the one place a backend is made known; everything that chooses a
backend (a new pool's suffix, an existing pool's contents, an archive's marker, the CLI's
``--backend`` choices) asks this registry, so a new backend touches only this folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..errors import BackendError
from .base import Backend

BACKENDS: dict[str, Backend] = {}  # name -> backend, in the order registered
_SUFFIXES: dict[str, str] = {}  # path suffix (lower case, with the dot) -> backend name


def register_backend(name: str, backend: Backend, suffixes: Iterable[str] | None = None) -> Backend:
    """Make ``backend`` known as ``name``, chosen for new paths ending in one of ``suffixes``.

    Args:
        name: the name users pass as ``backend=`` and ``--backend``; ``backend.name`` must match.
        backend: an object implementing :class:`~expstore.backends.base.Backend`.
        suffixes: path suffixes with the dot (``.h5``); default ``backend.suffixes``.

    Raises:
        BackendError: the name or one of the suffixes is registered already, or the names differ.
    """
    suffixes = tuple(s.lower() for s in (backend.suffixes if suffixes is None else suffixes))
    if name in BACKENDS:
        raise BackendError(f"a backend named {name!r} is registered already; choose another name")
    if getattr(backend, "name", name) != name:
        raise BackendError(f"backend {backend!r} calls itself {backend.name!r}, not {name!r}; register it under "
                           "its own name")
    taken = [f"{s} ({_SUFFIXES[s]})" for s in suffixes if s in _SUFFIXES]
    if taken or not suffixes or any(not s.startswith(".") for s in suffixes):
        raise BackendError(f"backend {name!r} needs suffixes of its own that start with a dot, got {suffixes}"
                           + (f"; taken already: {', '.join(taken)}" if taken else ""))
    backend.suffixes = suffixes
    BACKENDS[name] = backend
    _SUFFIXES.update(dict.fromkeys(suffixes, name))
    return backend


def backend_names() -> list[str]:
    """The registered backends' names, in the order registered (the CLI's ``--backend`` choices)."""
    return list(BACKENDS)


def primary_suffix(name: str) -> str:
    """The suffix a new pool of backend ``name`` is given (its first registered one)."""
    return get_backend(name).suffixes[0]


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; BackendError listing the registered ones otherwise."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def resolve_backend(path: str, name: str | None) -> Backend:
    """The backend called ``name``, or the one whose suffix ``path`` ends with."""
    if name is not None:
        return get_backend(name)
    suffix = os.path.splitext(os.path.normpath(path))[1].lower()
    if suffix in _SUFFIXES:
        return BACKENDS[_SUFFIXES[suffix]]
    choices = ", ".join(f"{s} -> {b}" for s, b in _SUFFIXES.items())
    raise BackendError(f"cannot tell the backend of {path!r} from its suffix ({choices}); "
                       f"rename the path or pass {_passing(list(BACKENDS))}")


def backend_holding(path: str) -> Backend | None:
    """The backend whose container form the existing ``path`` has (a directory, a file), or None.

    For a pool whose name does not tell its backend (``backup.pool``): its contents decide.
    """
    return next((backend for backend in BACKENDS.values() if backend.holds(path)), None)


def has_known_suffix(path: str) -> bool:
    return os.path.splitext(os.path.normpath(path))[1].lower() in _SUFFIXES


def _passing(names: list[str]) -> str:
    """``backend='a' or backend='b'`` (the CLI rewrites it into its flags, cli/common.py)."""
    spelled = [f"backend={name!r}" for name in names]
    return " or ".join([", ".join(spelled[:-1]), spelled[-1]] if len(spelled) > 1 else spelled)
