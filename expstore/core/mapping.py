"""Memory maps over a pool's files: one ndarray view per field, and the commit slots.

Rows are written and read through these shared mappings, so readers in other processes see
a row as soon as it is written, and no container library ever holds the files open for
writing. Commit records go through ``os.pwrite`` (one syscall, no partially visible record
beyond what the checksum catches) and are read back through the mapping.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import struct

import numpy as np

from ..backends import Layout
from ..backends.base import internal_arrays
from ..backends.files import in_parallel
from .commit import SEQ_OFFSET, SLOT_NBYTES, CommitRecord

_SEQ = struct.Struct("<Q")


def _restore_commit_size(extent) -> None:
    """A writer gives a commit file cut short by damage its full size back, zero-filled: the
    lost slot then reads as damaged, the other one is used, and the next commit rewrites it."""
    needed = extent.offset + extent.nbytes
    if os.path.getsize(extent.path) < needed:
        os.truncate(extent.path, needed)


class MappedPool:
    def __init__(self, layout: Layout, writable: bool):
        self._fds: dict[str, int] = {}
        self._maps: dict[str, mmap.mmap] = {}
        if writable:
            _restore_commit_size(layout.commit)
        try:
            for path in layout.files:
                self._map(path, writable)
        except BaseException:
            self.close()
            raise
        slots = layout.meta["slots"]
        self.views: dict[str, np.ndarray] = {
            name: self._view(extent, (slots, *layout.schema[name].stored_shape), layout.schema[name].stored_dtype)
            for name, extent in layout.fields.items()
        }
        for name, (shape, dtype) in internal_arrays(layout.meta).items():
            self.views[name] = self._view(layout.internal[name], shape, dtype)
        self.checksum_table: np.ndarray | None = None
        data_extents = [*layout.fields.values(), *layout.internal.values()]
        if layout.checksums is not None:
            extent = layout.checksums
            self.checksum_table = self._view(extent, (extent.nbytes // 16, 2), "<i8")
            data_extents.append(extent)
        self._data_fds = [self._fds[path] for path in dict.fromkeys(e.path for e in data_extents)]
        self._commit_map = self._maps[layout.commit.path]
        self._commit_fd = self._fds[layout.commit.path]
        self._commit_offset = layout.commit.offset

    def _view(self, extent, shape: tuple, dtype) -> np.ndarray:
        """An ndarray over ``extent``. np.frombuffer holds a buffer export on the mapping, so
        closing the pool cannot unmap memory that a view still reaches (a segfault when read):
        the mapping then lives until the last view is gone."""
        count = math.prod(shape)  # of Python ints: numpy's prod costs more than the rest of the view
        return np.frombuffer(self._maps[extent.path], dtype=dtype, count=count, offset=extent.offset).reshape(shape)

    def _map(self, path: str, writable: bool) -> None:
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        self._fds[path] = fd
        size = os.fstat(fd).st_size
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        self._maps[path] = mmap.mmap(fd, size, access=access)

    def commit_slots(self) -> bytes:
        """Both slots; a part cut off the end of a damaged commit file reads as zeros (invalid)."""
        start = self._commit_offset
        return self._commit_map[start:start + 2 * SLOT_NBYTES].ljust(2 * SLOT_NBYTES, b"\0")

    def poll_seq(self) -> int:
        """The larger raw seq of the two slots, checksum unchecked: a cheap "anything new?"."""
        start = self._commit_offset + SEQ_OFFSET
        if start + SLOT_NBYTES + _SEQ.size > len(self._commit_map):  # a cut-off commit file
            return _SEQ.unpack_from(self.commit_slots(), SEQ_OFFSET)[0]
        return max(_SEQ.unpack_from(self._commit_map, start)[0],
                   _SEQ.unpack_from(self._commit_map, start + SLOT_NBYTES)[0])

    def write_commit(self, record: CommitRecord) -> None:
        offset = self._commit_offset + record.slot_index * SLOT_NBYTES
        os.pwrite(self._commit_fd, record.encode(), offset)

    def sync_data(self, parallel: bool = True) -> None:
        # fdatasync also writes back the pages dirtied through the mapping (one page cache);
        # np.memmap.flush would silently do nothing on views like ours.
        in_parallel(os.fdatasync, self._data_fds, parallel=parallel)

    def sync_commit(self) -> None:
        os.fdatasync(self._commit_fd)

    def close(self) -> None:
        self.views = {}
        self.checksum_table = None
        for path, mapping in list(self._maps.items()):
            with contextlib.suppress(BufferError):  # a caller still holds a view; the mapping goes when that view does
                mapping.close()
            del self._maps[path]
        for path, fd in list(self._fds.items()):
            os.close(fd)
            del self._fds[path]
