"""A guard for the metadata of HDF5 pools written before it moved into the object header.

Those pools store the metadata JSON as a variable-length string attribute, whose bytes live in
an HDF5 global heap collection. Unlike object headers, a global heap has no checksum, and HDF5
walks its objects by their recorded sizes: an object header zeroed by damage has size 0, and
HDF5 then loops forever reading the attribute (measured with HDF5 2.0). So before h5py touches
the attribute, this module finds the collection the attribute points to and walks it the way
HDF5 does, bounded. It reads only what the HDF5 file format specification lays out (superblock
version 2/3, object header version 2, attribute message versions 1-3, global heap version 1) and
gives up quietly on anything else, leaving HDF5's own checks to speak: it reports damage only
when HDF5 would loop or read past the collection.
"""

from __future__ import annotations

import os
import struct

_SUPERBLOCK = struct.Struct("<8sBBBB")
_OFFSETS = 8  # the sizes of offsets and lengths that h5py files use (checked in the superblock)
_GCOL = struct.Struct("<4sB3xQ")
_HEAP_OBJECT = struct.Struct("<HH4xQ")
_VLEN_CLASS = 9
_ATTRIBUTE = 0x0C
_CONTINUATION = 0x10
_MAX_CHUNKS = 64  # object header chunks followed; a damaged chain could otherwise cycle
_MAX_OBJECTS = 1 << 16  # HDF5 object indexes are 16-bit


class _File:
    """A file read at HDF5 addresses: relative to the superblock, which a user block moves on."""

    def __init__(self, fd: int, base: int):
        self.fd = fd
        self.base = base

    def read(self, offset: int, nbytes: int) -> bytes:
        return os.pread(self.fd, nbytes, self.base + offset) if offset >= 0 else b""


def damaged_heap(fd: int, file_nbytes: int, attribute: bytes, base: int = 0) -> str | None:
    """Why reading the root group's variable-length attribute ``attribute`` would make HDF5
    loop or overrun its global heap collection, or None (healthy, or not a layout this reads).
    ``base``: where the superblock lies (the user block's size)."""
    file = _File(fd, base)
    root = _root_header_address(file)
    if root is None:
        return None
    heap_id = _attribute_heap_id(file, file_nbytes, root, attribute)
    if heap_id is None:
        return None
    return _walk_collection(file, file_nbytes, heap_id)


def _root_header_address(fd: _File) -> int | None:
    head = fd.read(0, 48)
    if len(head) < 48:
        return None
    signature, version, offsets, lengths, _flags = _SUPERBLOCK.unpack_from(head)
    if signature != b"\x89HDF\r\n\x1a\n" or version not in (2, 3) or (offsets, lengths) != (_OFFSETS, _OFFSETS):
        return None
    return struct.unpack_from("<Q", head, 36)[0]  # after base, extension and end-of-file addresses


def _header_chunks(fd: _File, file_nbytes: int, address: int):
    """(messages, header flags) of each chunk of a version-2 object header, continuations included."""
    prefix = fd.read(address, 6 + 16 + 4 + 8)
    if len(prefix) < 6 or prefix[:4] != b"OHDR" or prefix[4] != 2:
        return
    flags = prefix[5]
    start = 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
    width = 1 << (flags & 0x03)
    size = int.from_bytes(prefix[start:start + width], "little")
    body = fd.read(address + start + width, min(size, file_nbytes))
    seen = {address}
    while True:
        yield body, flags
        chunks = [(offset, nbytes) for offset, nbytes in _continuations(body, flags) if offset not in seen]
        if not chunks or len(seen) >= _MAX_CHUNKS:
            return
        # Continuations form a chain; a header with several in one chunk is followed one at a time.
        offset, nbytes = chunks[0]
        seen.add(offset)
        chunk = fd.read(offset, min(nbytes, file_nbytes))
        if len(chunk) < 8 or chunk[:4] != b"OCHK":
            return
        body = chunk[4:-4]


def _messages(body: bytes, flags: int):
    """(type, data) of each message of one chunk; ``flags`` is the header's (creation order bytes)."""
    order = 2 if flags & 0x04 else 0
    position = 0
    while position + 4 + order <= len(body):
        kind = body[position]
        size = int.from_bytes(body[position + 1:position + 3], "little")
        data_start = position + 4 + order
        yield kind, body[data_start:data_start + size]
        position = data_start + size


def _continuations(body: bytes, flags: int) -> list[tuple[int, int]]:
    found = []
    for kind, data in _messages(body, flags):
        if kind == _CONTINUATION and len(data) >= 16:
            found.append(struct.unpack_from("<QQ", data))
    return found


def _attribute_heap_id(fd: _File, file_nbytes: int, root: int, attribute: bytes) -> tuple[int, int] | None:
    """(collection address, object index) of the attribute's string, if it is a compact
    variable-length attribute of the root group."""
    for body, flags in _header_chunks(fd, file_nbytes, root):
        for kind, data in _messages(body, flags):
            parts = _attribute_parts(data) if kind == _ATTRIBUTE else None
            if parts is None or parts[0].rstrip(b"\0") != attribute:
                continue
            _name, datatype, value = parts
            if not datatype or datatype[0] & 0x0F != _VLEN_CLASS or len(value) < 16:
                return None  # fixed-length (or shared): it does not live in a global heap
            _length, address, index = struct.unpack_from("<IQI", value)
            return address, index
    return None


def _attribute_parts(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(name, datatype, value) of an attribute message of version 1, 2 or 3."""
    if len(data) < 8 or data[0] not in (1, 2, 3) or (data[0] > 1 and data[1] & 0x03):
        return None  # another version, or a shared datatype or dataspace
    name_nbytes, type_nbytes, space_nbytes = struct.unpack_from("<HHH", data, 2)
    # Version 1 pads each part to 8 bytes; version 3 adds the name's character set.
    padded = (lambda n: -(-n // 8) * 8) if data[0] == 1 else (lambda n: n)
    name_at = 9 if data[0] == 3 else 8
    type_at = name_at + padded(name_nbytes)
    value_at = type_at + padded(type_nbytes) + padded(space_nbytes)
    return data[name_at:name_at + name_nbytes], data[type_at:type_at + type_nbytes], data[value_at:]


def _walk_collection(fd: _File, file_nbytes: int, heap_id: tuple[int, int]) -> str | None:
    """Walk the collection's objects as HDF5 loads them (H5HG cache deserialize)."""
    address, _index = heap_id
    head = fd.read(address, _GCOL.size)
    if len(head) < _GCOL.size:
        return None
    signature, version, size = _GCOL.unpack_from(head)
    if signature != b"GCOL" or version != 1 or size < _GCOL.size or address + size > file_nbytes:
        return None  # HDF5 refuses these itself, with an error
    collection = fd.read(address, size)
    position = _GCOL.size
    for _ in range(_MAX_OBJECTS + 1):
        if position + _HEAP_OBJECT.size > size:
            return None  # a tail too small for an object: free space, as HDF5 reads it
        index, _refs, nbytes = _HEAP_OBJECT.unpack_from(collection, position)
        step = _HEAP_OBJECT.size + -(-nbytes // 8) * 8 if index else nbytes
        if step == 0:
            return f"the global heap at byte {address} holds an empty free-space record at byte {address + position}"
        if position + step > size:
            return (f"the global heap at byte {address} holds an object of {nbytes} bytes at byte "
                    f"{address + position} that runs past its end")
        position += step
        if position == size:
            return None
    return f"the global heap at byte {address} holds more objects than HDF5 can index"
