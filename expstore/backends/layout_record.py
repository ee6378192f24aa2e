"""The layout record: a pool's layout where plain file I/O finds it, so that opening skips the
container library (h5py's file open and chunk queries cost 5-10 ms; reading this costs tens of us).

The record holds the pool's metadata document (every array's shape and dtype, and in a one-file
pool every byte offset) and a *fingerprint* of the container as it was when the layout was
verified against it: file sizes, and the bytes or modification times of the container's own
structures. It is written where the backend says (the user block at the start of an HDF5 file,
a file inside a Zarr group), at creation and by a writer whose open had to read the container
the slow way (a pool copied without its record, or one whose record is damaged or stale), so
the record is always one that an open through the container library confirmed.

Bytes: ``MAGIC`` (16), version, body length and the body's crc32c (three little-endian uint32),
then the body, a JSON object ``{"meta": ..., "fingerprint": ...}``. A record that fails any check
(magic, version, length, checksum, JSON, fingerprint) is not used: opening reads the container
instead, so a damaged record costs time, never wrong rows.
"""

from __future__ import annotations

import json
import logging
import struct

import google_crc32c

from .base import FORMAT_VERSION

logger = logging.getLogger("expstore.layout_record")

MAGIC = b"\x89expstore-layout"
VERSION = 1
_HEADER = struct.Struct("<16sIII")
HEADER_NBYTES = _HEADER.size


class RecordUnusable(Exception):
    """Why a layout record cannot be used (opening then reads the container instead)."""


def record_encode(meta: dict, fingerprint: dict) -> bytes:
    """The record's bytes for ``meta`` and the container's ``fingerprint``."""
    body = json.dumps({"meta": meta, "fingerprint": fingerprint}, separators=(",", ":")).encode()
    return _HEADER.pack(MAGIC, VERSION, len(body), google_crc32c.value(body)) + body


def record_has_magic(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) starts like a layout record."""
    return head[:len(MAGIC)] == MAGIC


def record_body_nbytes(header: bytes) -> int:
    """The body length a record's header announces (RecordUnusable if it is not a record header)."""
    if len(header) < HEADER_NBYTES or not record_has_magic(header):
        raise RecordUnusable("no layout record")
    magic, version, nbytes, _crc = _HEADER.unpack_from(header)
    if version != VERSION:
        raise RecordUnusable(f"layout record version {version}, this expstore reads {VERSION}")
    return nbytes


def record_decode(raw: bytes) -> tuple[dict, dict]:
    """``(meta, fingerprint)`` of a record's bytes (header and body); RecordUnusable if damaged."""
    nbytes = record_body_nbytes(raw)
    _magic, _version, _nbytes, crc = _HEADER.unpack_from(raw)
    body = raw[HEADER_NBYTES:HEADER_NBYTES + nbytes]
    if len(body) != nbytes or google_crc32c.value(body) != crc:
        raise RecordUnusable("the layout record fails its checksum")
    try:
        value = json.loads(body)
    except ValueError:
        raise RecordUnusable("the layout record is not valid JSON") from None
    meta = value.get("meta") if isinstance(value, dict) else None
    fingerprint = value.get("fingerprint") if isinstance(value, dict) else None
    if not isinstance(meta, dict) or not isinstance(fingerprint, dict):
        raise RecordUnusable("the layout record lacks its metadata or fingerprint")
    return meta, fingerprint


def record_check_version(meta: dict) -> None:
    """A record of a format this version reads (else the slow path raises FormatVersionError)."""
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise RecordUnusable(f"the layout record holds format_version {version!r}")


def record_fall_back(path: str, reason: RecordUnusable | str) -> None:
    """Log why the record of ``path`` was not used: damage is worth a warning, a stale record
    (its container changed since) only a note, since the next writer records it again."""
    text = str(reason)
    if "checksum" in text or "JSON" in text or "lacks" in text:
        logger.warning("%s: %s; reading the layout from the container instead (a writer's open records it again)",
                       path, text)
    else:
        logger.info("%s: %s; reading the layout from the container instead", path, text)
