"""Calls the core serves from the layers above it, without importing them.

``Store.verify()`` and ``Store.stats()`` are answered by maintenance (verify_store) and
inspection (store_stats) code. Importing that from the core would point an import up the
layers, so the answer registers here instead: expstore/__init__.py registers both when the
package is imported, and the Store calls them by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_HOOKS: dict[str, Callable[..., Any]] = {}


def register_hook(name: str, function: Callable[..., Any]) -> None:
    """Serve the Store's ``name`` call with ``function`` (a later registration replaces it)."""
    _HOOKS[name] = function


def call_hook(name: str, *args: Any, **kwargs: Any) -> Any:
    """Call what serves ``name``.

    Raises:
        RuntimeError: nothing registered it (the package ``expstore`` registers every hook).
    """
    try:
        function = _HOOKS[name]
    except KeyError:
        raise RuntimeError(f"nothing serves Store.{name}(); import expstore, which registers it") from None
    return function(*args, **kwargs)
