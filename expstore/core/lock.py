"""The one-writer rule: two advisory locks that the kernel drops when their holder dies.

1. A ``flock`` on a lock file beside the pool (``pool.h5.lock``), named from the pool's
   resolved path, so that a symlink to the pool (or a symlinked or bind-mounted directory) takes
   the same lock file. It also records who holds it, and exists before the pool does, so it
   guards a creation too. It sits beside the pool rather than on it so that plain h5py readers,
   which take their own (flock) file lock on the HDF5 file, keep working while a writer runs.
2. An open-file-description record lock (``fcntl`` ``F_OFD_SETLK``) on the file that holds the
   pool's commit record: the ``.h5`` file, or ``_commit/c/0/0`` inside a ``.zarr``. It is tied to
   the inode, so that two names of one file that no path resolution can tell apart (a hard link,
   a ``cp -al`` copy of a ``.zarr``, a bind mount of the file itself) cannot both be written.
   Record locks and flocks never conflict on Linux, so h5py's reader locks still pass.

A SIGKILLed writer never leaves a stale lock behind. Readers never take either lock. Record
locks of this kind exist on Linux only; elsewhere the second lock is skipped (see README).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
import time

from ..backends.files import read_only_error
from ..errors import StoreLockedError

logger = logging.getLogger("expstore.lock")  # its name before the layered layout

# struct flock on Linux: l_type, l_whence (short), l_start, l_len (off_t), l_pid (pid_t), padded
# as the kernel lays it out. l_len 0 means "to the end of the file, however long it grows".
_FLOCK = struct.Struct("hhqqi4x")
_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", None)
_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", None)
_NO_RECORD_LOCKS = (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP)  # some network and FUSE file systems

_LOCKED_FIX = "one writer per pool: stop that writer, or open with mode='r' to read while it writes"


def lock_path(path: str) -> str:
    return os.path.realpath(path).rstrip(os.sep) + ".lock"


class WriterLock:
    """Holds the writer locks of one pool until ``release``."""

    def __init__(self, path: str):
        self.path = lock_path(path)
        self._pool_path = path
        fd = _lock_current_file(self.path, path)
        if fd is None:
            holder_record = _read_holder_of(self.path)
            raise StoreLockedError(f"{path} is being written by another process ({holder_record}); {_LOCKED_FIX}")
        self._fd: int | None = fd
        self._file_fd: int | None = None
        _write_record(fd, f"pid={os.getpid()} host={socket.gethostname()} since={time.time():.0f}\n")

    def hold_pool_file(self, file: str) -> None:
        """Also lock ``file``, the pool's commit file, by its inode (a no-op when it is held already).

        Call it before writing anything to the pool: it refuses a pool that another writer opened
        through a name that resolves elsewhere (a hard link, a bind mount of the file).
        """
        if self._file_fd is not None:
            if _same_file(self._file_fd, file):
                return
            self._drop_file_lock()
        if _OFD_SETLK is None:
            return
        fd = _open_for_writing(file, self._pool_path)
        try:
            fcntl.fcntl(fd, _OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        except OSError as exc:
            if exc.errno in _NO_RECORD_LOCKS:
                os.close(fd)
                logger.warning("%s: the file system does not support record locks (%s), so only the lock file "
                               "guards this pool against a second writer through another name", file, exc)
                return
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            refusal = self._refusal(fd, file)
            os.close(fd)
            raise refusal from None
        self._file_fd = fd

    def _refusal(self, fd: int, file: str) -> StoreLockedError:
        """Why the pool file's lock was refused: a writer's lock, or a read lock nothing of ours takes."""
        if _conflicting_lock_type(fd) == fcntl.F_RDLCK:
            # On NFS the kernel emulates flock with record locks, so an HDF5 reader's file lock is one.
            return StoreLockedError(
                f"{self._pool_path}: another process holds a read lock on {file} (a plain h5py reader with HDF5 "
                "file locking on a network file system?); close it, or open it with locking=False "
                "(HDF5_USE_FILE_LOCKING=FALSE), which expstore's own readers do")
        return StoreLockedError(
            f"{self._pool_path} is being written by another process through another name for the same "
            f"file (a hard link, a `cp -al` copy or a bind mount of {file}; holder unknown); {_LOCKED_FIX}")

    def release(self, *, remove: bool = False) -> None:
        """Drop the locks; ``remove`` also deletes the lock file (after a creation that failed)."""
        self._drop_file_lock()  # first: whoever takes the lock file next finds the pool file free too
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if remove:
                # Unlinked while still held: a process that opened the old file and locks it
                # after us sees that its file is gone and tries again (_lock_current_file).
                _unlink_quietly(self.path)
            else:
                _write_record(fd, "")  # an empty lock file means a clean exit; a crashed writer leaves its name
            os.close(fd)  # closing the only descriptor drops the flock

    def _drop_file_lock(self) -> None:
        if self._file_fd is not None:
            fd, self._file_fd = self._file_fd, None
            os.close(fd)  # the record lock belongs to this open file description: closing it drops the lock


def _conflicting_lock_type(fd: int) -> int | None:
    """The type (F_RDLCK, F_WRLCK) of a lock that would block our write lock, None if unknown."""
    if _OFD_GETLK is None:
        return None
    try:
        found = fcntl.fcntl(fd, _OFD_GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    except OSError:
        return None
    lock_type = _FLOCK.unpack(found)[0]
    return None if lock_type == fcntl.F_UNLCK else lock_type


def _lock_current_file(path: str, pool_path: str) -> int | None:
    """A descriptor of ``path`` holding its exclusive flock, or None when another process holds it.

    Retries when the file was unlinked between our open and our flock, so that two writers can
    never hold locks on two different files of the same name.
    """
    while True:
        fd = _open_for_writing(path, pool_path, os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if _same_file(fd, path):
            return fd
        os.close(fd)


def _open_for_writing(file: str, pool_path: str, flags: int = 0) -> int:
    try:
        return os.open(file, os.O_RDWR | flags, 0o644)
    except OSError as exc:
        refused = read_only_error(exc, pool_path)
        if refused is None:
            raise
        raise refused from None


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
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


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
