"""What plain zarr-python needs of a Zarr pool's files: checked by ``verify``, restored by ``repair``.

expstore maps each array's bytes where the pool's own metadata says they are and reads on
past damage that stops a plain Zarr reader, which needs:

- each array's ``zarr.json`` with the keys of the v3 spec (zarr_format, node_type, shape,
  data_type, chunk_grid, chunk_key_encoding, fill_value, codecs) and the values that make it
  decode expstore's bytes (a changed chunk key separator, say, reads fill values silently);
- each chunk file at its exact size: zarr-python reads a shard's index from the file's last
  bytes (bytes appended move it, and its crc32c fails), and an unsharded array's one chunk
  whole (a cut or grown file cannot be reshaped into the array).

Both are derived from the pool's metadata alone, so ``repair`` can restore them once the data
files agree with it: it rewrites a damaged ``zarr.json``, cuts bytes appended past an array's
data, and gives a commit file cut inside its second slot its zero padding back. Anything else
(a data file cut short) loses rows: restore a copy, or copy what is left into a new pool.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .base import Layout, expected_arrays
from .files import fsync_dir, temp_sibling

REQUIRED_KEYS = ("zarr_format", "node_type", "shape", "data_type", "chunk_grid", "chunk_key_encoding",
                 "fill_value", "codecs")
INDEX_ENTRY_NBYTES = 16  # offset and nbytes, two little-endian uint64
CRC_NBYTES = 4
_REPAIR = "`expstore repair` rewrites it from the pool's metadata"


# ------------------------------------------------------------------ the expected documents
def array_document(shape: tuple[int, ...], dtype: str, inner_rows: int | None) -> dict:
    """The ``zarr.json`` expstore creates for an array: one shard with inner chunks of
    ``inner_rows`` rows (the fields), or one raw chunk (None: the bookkeeping arrays)."""
    bytes_codec = _bytes_codec(dtype)
    if inner_rows is None:
        codecs = [bytes_codec]
    else:
        little = {"name": "bytes", "configuration": {"endian": "little"}}
        codecs = [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [inner_rows, *shape[1:]], "codecs": [bytes_codec],
            "index_codecs": [little, {"name": "crc32c"}], "index_location": "end"}}]
    return {
        "shape": list(shape), "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(shape)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": _fill_value(dtype), "codecs": codecs, "attributes": {}, "zarr_format": 3,
        "node_type": "array", "storage_transformers": [],
    }


def expected_documents(layout: Layout) -> dict[str, dict]:
    """Every array's ``zarr.json`` document, by array name."""
    chunk_rows = layout.meta["chunk_rows"]
    return {name: array_document(shape, dtype, chunk_rows if name in layout.schema else None)
            for name, (shape, dtype) in expected_arrays(layout).items()}


def expected_sizes(layout: Layout) -> dict[str, int]:
    """Every array's chunk file size: a field's shard holds its data, then the index and its crc32c."""
    sizes = {}
    for name, (shape, dtype) in expected_arrays(layout).items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if name in layout.schema:
            nbytes += shard_index_nbytes(layout.meta) + CRC_NBYTES
        sizes[name] = nbytes
    return sizes


def shard_index_nbytes(meta: dict) -> int:
    return meta["slots"] // meta["chunk_rows"] * INDEX_ENTRY_NBYTES


def _bytes_codec(dtype: str) -> dict:
    if np.dtype(dtype).itemsize == 1:
        return {"name": "bytes"}  # zarr writes no endianness for one-byte types
    return {"name": "bytes", "configuration": {"endian": "little"}}


def _fill_value(dtype: str):
    kind = np.dtype(dtype).kind
    return False if kind == "b" else 0.0 if kind == "f" else 0


# ------------------------------------------------------------------ checks
def document_findings(name: str, document: dict, expected: dict) -> list[str]:
    """What a plain Zarr reader would trip on, or misread, in one array's ``zarr.json``."""
    where = f"{name}/zarr.json"
    missing = [key for key in REQUIRED_KEYS if key not in document]
    if missing:
        return [f"{where} lacks {', '.join(map(repr, missing))}, which plain Zarr readers need; {_REPAIR}"]
    wrong = [key for key in REQUIRED_KEYS if not _same(key, document[key], expected[key], expected["data_type"])]
    if document.get("storage_transformers") not in (None, []):
        wrong.append("storage_transformers")
    return [f"{where} has {key!r} = {_short(document[key])}, expstore wrote {_short(expected[key])}; a plain Zarr "
            f"reader would fail or misread the array; {_REPAIR}" for key in wrong]


def size_findings(path: str, name: str, file: str, size: int, expected: int, shard: bool) -> list[str]:
    """A chunk file whose size a plain Zarr reader cannot read (expstore opens both kinds)."""
    relative = os.path.relpath(file, path)
    if size > expected:
        why = ("zarr-python reads the shard index from the end of the file, where its crc32c checksum then fails"
               if shard else "zarr-python cannot fit a chunk of that size into the array")
        return [(f"{relative} has {size - expected} bytes past its data ({size}, expected {expected}): {why}; "
                 "`expstore repair` removes them")]
    if size < expected and name == "_commit":
        return [(f"{relative} is {size} bytes, expected {expected}: its second commit slot was cut short, and "
                 "zarr-python cannot fit it into the (2, 4096) array; `expstore repair` restores its zero padding")]
    if size < expected:
        return [f"{relative} is {size} bytes, expected {expected}: rows were lost; restore the pool from a copy"]
    return []


def group_findings(document: dict) -> list[str]:
    found = {key: document.get(key) for key in ("zarr_format", "node_type")}
    if found == {"zarr_format": 3, "node_type": "group"}:
        return []
    return [(f"zarr.json has zarr_format={found['zarr_format']!r}, node_type={found['node_type']!r}; Zarr v3 "
             "readers need 3 and 'group'; `expstore repair` sets them")]


def _same(key: str, found, expected, dtype: str) -> bool:
    try:
        if key == "fill_value":
            return _fill_ok(found, dtype)
        if key == "chunk_key_encoding":
            return found["name"] == "default" and found.get("configuration", {}).get("separator", "/") == "/"
        if key == "codecs":
            return _codec_chain(found, dtype) == _codec_chain(expected, dtype)
    except (AttributeError, KeyError, TypeError, ValueError):
        return False
    return found == expected and type(found) is type(expected)


def _fill_ok(value, dtype: str) -> bool:
    """A zero of the array's type: any fill value reads the same here (every chunk is stored),
    but zarr-python refuses one that does not fit the type."""
    kind = np.dtype(dtype).kind
    if kind == "b":
        return value is False
    if kind == "f":
        return type(value) in (int, float) and value == 0
    return type(value) is int and value == 0


def _codec_chain(codecs: list, dtype: str) -> list:
    """The codecs as a comparable list: defaults spelt out, one-byte types without endianness."""
    chain: list[tuple] = []
    for codec in codecs:
        name, config = codec["name"], codec.get("configuration") or {}
        if name == "bytes":
            chain.append(("bytes", None if np.dtype(dtype).itemsize == 1 else config.get("endian")))
        elif name == "sharding_indexed":
            chain.append((name, tuple(config["chunk_shape"]), tuple(_codec_chain(config["codecs"], dtype)),
                          tuple(_codec_chain(config["index_codecs"], "uint64")),
                          config.get("index_location", "end")))
        else:
            chain.append((name, json.dumps(config, sort_keys=True)))
    return chain


def _short(value) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------ repairs
def write_document(file: str, document: dict) -> None:
    """Replace a ``zarr.json`` atomically: written aside, fsynced, renamed over the old one."""
    temp = temp_sibling(file)
    with open(temp, "w") as fh:
        json.dump(document, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, file)
    fsync_dir(os.path.dirname(file))


def fix_size(file: str, expected: int) -> None:
    """Cut bytes past an array's data, or give a cut commit file its zero padding back."""
    with open(file, "r+b") as fh:
        fh.truncate(expected)
        os.fsync(fh.fileno())
