"""The one-writer rule: an advisory ``flock`` on a lock file beside the pool.

The kernel drops a flock when its holder dies, so a SIGKILLed writer never leaves a stale
lock behind. The lock file sits beside the pool (``pool.h5.lock``) rather than on the pool
itself so that plain h5py readers, which take their own HDF5 file lock, keep working while
a writer runs. Readers never take the lock.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time

from .errors import StoreLockedError


def lock_path(path: str) -> str:
    return os.path.abspath(path).rstrip(os.sep) + ".lock"


class WriterLock:
    """Holds the writer lock of one pool until ``release``."""

    def __init__(self, path: str):
        self.path = lock_path(path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StoreLockedError(
                f"{path} is being written by another process ({holder}); one writer per pool: "
                "stop that writer, or open with mode='r' to read while it writes"
            ) from None
        self._fd: int | None = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()} since={time.time():.0f}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.ftruncate(fd, 0)  # an empty lock file means a clean exit; a crashed writer leaves its name
            os.close(fd)  # closing the only descriptor drops the flock


def holder(path: str) -> str | None:
    """Who holds the writer lock of ``path`` ("pid=... host=..."), or None when nobody does."""
    try:
        fd = os.open(lock_path(path), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(fd)
    finally:
        os.close(fd)
    return None


def stale_record(path: str) -> str | None:
    """The holder record a crashed writer left in a lock file nobody holds, if any."""
    try:
        with open(lock_path(path), "rb") as fh:
            text = fh.read(256).decode(errors="replace").strip()
    except FileNotFoundError:
        return None
    return text if text and holder(path) is None else None


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 256, 0).decode(errors="replace").strip()
    return text or "holder unknown"
