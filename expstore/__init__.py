"""expstore: a persistent, disk-backed experience store for reinforcement learning."""

from __future__ import annotations

from ._version import __version__
from .core.allocator import tune_allocator
from .core.episodes import EpisodeTable
from .core.hooks import register_hook as _register_hook
from .core.opening import open
from .core.store import Store
from .errors import (
    BackendError,
    ClosedStoreError,
    CorruptStoreError,
    DiskFullError,
    EmptyStoreError,
    ExpstoreError,
    FormatVersionError,
    InvalidArgumentError,
    NotAPoolError,
    ReadOnlyError,
    SchemaError,
    ShardsUnavailableError,
    StepNotFoundError,
    StoreExistsError,
    StoreLockedError,
    StoreNotFoundError,
    WriterOutranError,
)
from .inspect.age import store_stats as _store_stats
from .maintenance.verify import verify_store as _verify_store
from .mixing.her import HER
from .mixing.mix import Mix, mix
from .sampling.age_window import AgeWindow
from .sampling.base import Sampler, WindowView
from .sampling.prioritized import Prioritized
from .sampling.recency import ERE, ERESchedule, ExponentialRecency
from .sampling.uniform import Uniform
from .schema import Field, Schema
from .verify import RepairReport, VerifyReport, repair, verify

# Store.verify() and Store.stats() are served from the layers above the core (core/hooks.py).
_register_hook("verify", _verify_store)
_register_hook("stats", _store_stats)

__all__ = [
    "BackendError", "ClosedStoreError", "CorruptStoreError", "DiskFullError", "EmptyStoreError",
    "ExpstoreError", "Field", "FormatVersionError", "InvalidArgumentError", "NotAPoolError",
    "ReadOnlyError", "Schema", "SchemaError", "ShardsUnavailableError", "StepNotFoundError", "Store",
    "StoreExistsError", "StoreLockedError", "StoreNotFoundError", "WriterOutranError", "RepairReport", "VerifyReport",
    "__version__", "open", "repair", "verify", "RecordEpisodes", "RecordVectorEpisodes", "ERE", "ERESchedule",
    "AgeWindow", "Prioritized", "Sampler", "Uniform", "WindowView",
    "ExponentialRecency", "EpisodeTable", "HER", "Mix", "mix", "tune_allocator",
]


def __getattr__(name: str):
    # The recorder needs gymnasium, an optional dependency: import it only when asked for.
    if name in ("RecordEpisodes", "RecordVectorEpisodes"):
        from .integrations import recorder

        return getattr(recorder, name)
    raise AttributeError(f"module 'expstore' has no attribute {name!r}")
