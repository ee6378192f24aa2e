"""expstore: a persistent, disk-backed experience store for reinforcement learning."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: E402
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
    StepNotFoundError,
    StoreExistsError,
    ShardsUnavailableError,
    StoreLockedError,
    StoreNotFoundError,
    WriterOutranError,
)
from .opening import open  # noqa: E402,A004
from .recency import ERE, ERESchedule, ExponentialRecency  # noqa: E402
from .schema import Field, Schema  # noqa: E402
from .store import Store  # noqa: E402
from .verify import RepairReport, VerifyReport, repair, verify  # noqa: E402

__all__ = [
    "BackendError", "ClosedStoreError", "CorruptStoreError", "DiskFullError", "EmptyStoreError",
    "ExpstoreError", "Field", "FormatVersionError", "InvalidArgumentError", "NotAPoolError",
    "ReadOnlyError", "Schema", "SchemaError", "ShardsUnavailableError", "StepNotFoundError", "Store", "StoreExistsError",
    "StoreLockedError", "StoreNotFoundError", "WriterOutranError", "RepairReport", "VerifyReport", "__version__", "open",
    "repair", "verify", "RecordEpisodes", "RecordVectorEpisodes", "ERE", "ERESchedule", "ExponentialRecency",
]


def __getattr__(name: str):
    # The recorder needs gymnasium, an optional dependency: import it only when asked for.
    if name in ("RecordEpisodes", "RecordVectorEpisodes"):
        from . import recorder

        return getattr(recorder, name)
    raise AttributeError(f"module 'expstore' has no attribute {name!r}")
