"""Every exception expstore raises.

Each leaf also subclasses the builtin a caller would naturally catch, so
``except FileNotFoundError`` keeps working for code that does not know expstore.
"""

from __future__ import annotations


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
