"""File-system steps that must be crash-safe: build aside, preallocate, fsync, rename."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import DiskFullError, ExpstoreError, ReadOnlyError

TEMP_MARK = ".expstore-tmp-"
_SYNC_THREADS = 8

# The ways the OS refuses a write that no retry fixes, and what the user can do about each.
_WRITE_REFUSALS = {
    errno.EROFS: "its file system is mounted read-only (remount it read-write, or copy the pool to a writable disk)",
    errno.EPERM: "a file or directory of it is immutable or append-only (`lsattr` shows the flag, `chattr -i` "
                 "clears it)",
    errno.EACCES: "this user may not write to it or to its directory (check the owner and mode with `ls -l`)",
}


def read_only_error(exc: OSError, path: str) -> ReadOnlyError | None:
    """The ReadOnlyError for an OS refusal to write ``path`` (a read-only mount, an immutable
    file, no permission), or None when ``exc`` is some other failure."""
    if isinstance(exc, ExpstoreError) or exc.errno not in _WRITE_REFUSALS:
        return None
    reason = _WRITE_REFUSALS[exc.errno]
    where = f" ({exc.filename}: {exc.strerror})" if exc.filename else f" ({exc.strerror or exc})"
    return ReadOnlyError(exc.errno, f"{path} cannot be opened for writing: {reason}{where}; "
                                    "open it with mode='r' to read it")


@contextlib.contextmanager
def refusing_read_only(path: str) -> Iterator[None]:
    """Inside, an OS refusal to write (see ``read_only_error``) surfaces as ReadOnlyError."""
    try:
        yield
    except OSError as exc:
        refused = read_only_error(exc, path)
        if refused is None:
            raise
        raise refused from None


def temp_sibling(path: str) -> str:
    """A fresh name beside ``path`` that ``repair`` recognises as a leftover."""
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def check_free_space(path: str, nbytes: int) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    stat = os.statvfs(parent)
    free = stat.f_bavail * stat.f_frsize
    if nbytes > free:
        raise DiskFullError(
            errno.ENOSPC,
            f"cannot create {path}: it needs {nbytes / 2**20:.1f} MiB but {parent} has "
            f"{free / 2**20:.1f} MiB free; free disk space or choose a smaller capacity",
        )


def sync_tree(path: str) -> None:
    """fsync a file, or every file and directory under a directory (metadata included)."""
    if not os.path.isdir(path):
        _fsync_file(path)
        return
    files, dirs = [], []
    for root, _dirs, names in os.walk(path):
        files += [os.path.join(root, name) for name in names]
        dirs.append(root)
    in_parallel(_fsync_file, files)
    in_parallel(fsync_dir, dirs)  # after the files: a directory entry must not outlive its data


def in_parallel(sync: Callable[[Any], None], items: list, *, parallel: bool = True) -> None:
    """Run blocking syncs (fsync, fdatasync) at once: the file system can then write them in
    one journal commit instead of one commit per file. The first error is raised.

    ``parallel=False`` runs them one by one: a finaliser must, since it can run inside any
    thread pool's ``submit``, which holds a lock that every executor's ``submit`` takes.
    """
    try:
        futures = [_sync_pool().submit(sync, item) for item in items] if parallel and len(items) > 1 else []
    except RuntimeError:  # interpreter shutdown (the atexit commit of an open writer): one by one
        futures = []
    if not futures:
        for item in items:
            sync(item)
        return
    for future in futures:
        future.result()


_pool_state: dict[str, Any] = {"pid": None, "executor": None}


def _sync_pool() -> ThreadPoolExecutor:
    # A forked child inherits the executor but not its threads: it needs its own.
    if _pool_state["pid"] != os.getpid():
        _pool_state.update(pid=os.getpid(), executor=ThreadPoolExecutor(_SYNC_THREADS, "expstore-sync"))
    return _pool_state["executor"]


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_sparse(file: str) -> bool:
    """Whether some of the file's bytes have no disk blocks (a hole), as after a sparse copy:
    `cp --sparse`, rsync -S, tar, or a git checkout, which seeks over runs of zeros."""
    stat = os.stat(file)
    return stat.st_blocks * 512 < stat.st_size - 4096


def preallocate_sparse(files: list[str]) -> list[str]:
    """Preallocate the files that have holes; returns them."""
    sparse = [file for file in files if is_sparse(file)]
    preallocate(sparse)
    return sparse


def preallocate(files: list[str]) -> None:
    """Give every byte of ``files`` real disk blocks.

    Writing through a memory map into a hole of a sparse file on a full disk raises SIGBUS,
    which Python cannot catch; allocating every block now turns that into ENOSPC here.
    """
    for file in files:
        fd = os.open(file, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size:
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise DiskFullError(exc.errno, f"the disk is full while preallocating {file}; "
                                            "free disk space or choose a smaller capacity") from None
                    raise
        finally:
            os.close(fd)


def build_aside(path: str, build: Callable[[str], list[str]], replace: bool) -> None:
    """Build a container at a temporary sibling with ``build``, then move it into place.

    A crash or an error part-way leaves only the temporary (removed here on error, by
    ``repair`` after a crash); ``path`` itself is never half-written. Through a symlink the
    container replaces the link's target and the link stays, as opening the link with h5py
    in mode 'w' would; the writer lock is taken on that target too (lock.py).
    """
    path = os.path.realpath(path)
    temp = temp_sibling(path)
    try:
        preallocate(build(temp))
        sync_tree(temp)
        _move_into_place(temp, path, replace)
    except BaseException:
        remove_path(temp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _move_into_place(temp: str, path: str, replace: bool) -> None:
    if not replace or not os.path.isdir(path):
        if not replace and os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, f"{path} appeared while it was being created")
        os.replace(temp, path)  # atomically replaces a file; a directory needs the dance below
        return
    old = temp_sibling(path)
    os.rename(path, old)
    os.rename(temp, path)
    remove_path(old)
