"""Every exception expstore raises.

Each leaf also subclasses the builtin a caller would naturally catch, so
``except FileNotFoundError`` keeps working for code that does not know expstore.
"""

from __future__ import annotations

# The way out of each kind of damage, worded once, for the messages that end with it.
REBUILD_POSITIONS_ADVICE = "`expstore repair` rebuilds them from the index entries"  # a commit's heap positions
RESTORE_LENGTH_ADVICE = "`expstore repair` restores it from the dictionary's crc32"  # a zstd dictionary's length
COPY_THE_REST_ADVICE = "`expstore convert` copies the other rows into a new pool"  # rows nothing restores
RESTORE_FROM_COPY_ADVICE = "restore the pool from a copy"  # damage no copy can leave out
FOUND_IN_USE_ADVICE = "the pool is damaged: run `expstore verify`"  # found by a read: verify says which of these


class ExpstoreError(Exception):
    """Root of every error raised by expstore."""


class StoreNotFoundError(ExpstoreError, FileNotFoundError):
    """The path holds no pool, and the open mode does not create one."""


class StoreExistsError(ExpstoreError, FileExistsError):
    """Mode ``w-``/``x`` was asked to create a pool where something already exists."""


class NotAPoolError(ExpstoreError, ValueError):
    """The path is a readable HDF5 file or Zarr group, but not an expstore pool."""


class CorruptStoreError(ExpstoreError, ValueError):
    """The pool's bytes do not make sense: truncated, garbage, or both commit slots torn."""


class DamagedRowsError(CorruptStoreError):
    """A copy read heap rows of the source pool ``path`` that can no longer be read as written;
    convert and merge catch it and copy again without such rows (maintenance/damaged.py)."""

    def __init__(self, path: str):
        super().__init__(f"{path} holds heap rows that can no longer be read; {FOUND_IN_USE_ADVICE}")
        self.path = path


class FormatVersionError(ExpstoreError, ValueError):
    """The pool was written by a newer expstore than this one."""


class SchemaError(ExpstoreError, ValueError):
    """A schema, or a batch of values, does not fit: shape, dtype, names."""


class ReadOnlyError(ExpstoreError, PermissionError):
    """A write was attempted through a read-only handle."""


class StoreLockedError(ExpstoreError, BlockingIOError):
    """Another process holds the pool's writer lock."""


class DiskFullError(ExpstoreError, OSError):
    """The disk cannot hold the pool being created."""


class EmptyStoreError(ExpstoreError, ValueError):
    """Sampling or reading from a pool that holds no committed transition."""


class StepNotFoundError(ExpstoreError, IndexError):
    """A step id or index lies outside the pool's window (evicted, or not yet written)."""


class WriterOutranError(StepNotFoundError):
    """The writer of a pool being copied evicted rows that the copy had not read yet."""


class ClosedStoreError(ExpstoreError, ValueError):
    """An operation on a store that was already closed."""


class BackendError(ExpstoreError, ValueError):
    """No backend matches the name or the path suffix."""


class InvalidArgumentError(ExpstoreError, ValueError):
    """An argument to an expstore call has a value it cannot use."""


class ShardsUnavailableError(ExpstoreError, ConnectionError):
    """Every shard of a sharded pool is down (its Ray actor dead or restarting)."""
