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
        fd = _lock_current_file(self.path)
        if fd is None:
            holder_record = _read_holder_of(self.path)
            raise StoreLockedError(
                f"{path} is being written by another process ({holder_record}); one writer per pool: "
                "stop that writer, or open with mode='r' to read while it writes"
            )
        self._fd: int | None = fd
        _write_record(fd, f"pid={os.getpid()} host={socket.gethostname()} since={time.time():.0f}\n")

    def release(self, *, remove: bool = False) -> None:
        """Drop the lock; ``remove`` also deletes the lock file (after a creation that failed)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if remove:
                # Unlinked while still held: a process that opened the old file and locks it
                # after us sees that its file is gone and tries again (_lock_current_file).
                _unlink_quietly(self.path)
            else:
                _write_record(fd, "")  # an empty lock file means a clean exit; a crashed writer leaves its name
            os.close(fd)  # closing the only descriptor drops the flock


def _lock_current_file(path: str) -> int | None:
    """A descriptor of ``path`` holding its exclusive flock, or None when another process holds it.

    Retries when the file was unlinked between our open and our flock, so that two writers can
    never hold locks on two different files of the same name.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if _same_file(fd, path):
            return fd
        os.close(fd)


def _same_file(fd: int, path: str) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _write_record(fd: int, text: str) -> None:
    """Replace the holder record; it only informs, so a full disk must not stop a writer."""
    try:
        os.ftruncate(fd, 0)
        if text:
            os.pwrite(fd, text.encode(), 0)
    except OSError:
        pass


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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


def _read_holder_of(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return "holder unknown"
    try:
        return _read_holder(fd)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 256, 0).decode(errors="replace").strip()
    return text or "holder unknown"
