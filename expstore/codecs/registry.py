"""The codec registry: a name such as ``"zstd:3"`` -> an object that encodes and decodes one row.

Names are ``<codec>`` or ``<codec>:<level>``; the schema stores the full name, so any reader
knows how a row's bytes were written. The libraries load on first use: importing them costs
more than a pool without heap fields should pay.

zstd rows are standard zstd frames. They are coded with python-zstandard when it is installed
(``pip install expstore[codecs]``): its calls cost about 5 us per 84x84 frame, where numcodecs,
the fallback, spends 30-50 us per call in Python-level argument checks (measured here). Either
library reads what the other wrote.

``"zstd:N+dict"`` is zstd with a dictionary the pool trains on the field's first rows and keeps
(core/heap_dictionary.py); ``get_codec`` gives the codec without it, ``with_dictionary`` the one
with it. Only python-zstandard trains and uses dictionaries.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from ..errors import SchemaError

RAW = "raw"  # the bytes as they are: what a ragged field without a codec stores
DICTIONARY_SUFFIX = "+dict"  # after a zstd codec's name: rows compressed with the pool's dictionary


class Codec(Protocol):
    """Compresses one row's bytes. ``decode`` gets the decoded size, and its calls may run on
    several threads at once (the library's calls should release the GIL)."""

    name: str

    def encode(self, data: bytes | memoryview) -> bytes: ...

    def decode(self, data: bytes | memoryview, nbytes: int) -> bytes | memoryview: ...


class BatchDecoder(Protocol):
    """A codec that can also decode many rows of one buffer in one call, off the GIL. A batch of
    stacked frames is about a thousand rows of a few microseconds each, so the Python of a call per
    row costs as much as the decoding, and threads that take turns at the GIL lose more than they
    gain; a call for the whole batch, on the library's own threads, pays neither."""

    def decode_rows(self, buffer: np.ndarray, offsets: np.ndarray, nbytes: np.ndarray, row_nbytes: int,
                    threads: int) -> bytearray:
        """The rows stored at ``buffer[offsets[i]:offsets[i] + nbytes[i]]``, each ``row_nbytes``
        long decoded, concatenated in order. Raises ValueError if any row fails to decode: the
        caller then decodes row by row to find which."""
        ...


def batch_decoder(codec: Codec) -> BatchDecoder | None:
    """``codec`` as a BatchDecoder, or None where it decodes one row per call only."""
    return codec if callable(getattr(codec, "decode_rows", None)) else None  # type: ignore[return-value]


class _Numcodec:
    """A numcodecs codec behind the Codec protocol."""

    def __init__(self, name: str, build: Callable[[], Any]):
        self.name = name
        self._codec = build()

    def encode(self, data):
        return bytes(self._codec.encode(data))

    def decode(self, data, nbytes):
        out = bytearray(nbytes)
        self._codec.decode(data, out=out)
        return out


class _Zstandard:
    """zstd through python-zstandard; a (de)compressor object per thread, as the library asks.
    With ``dictionary`` (a ZstdCompressionDict), rows are compressed with it; its decompressor
    also decodes frames made without it (they name no dictionary)."""

    def __init__(self, name: str, level: int, zstandard: Any, dictionary: Any = None):
        self.name = name
        self._level = level
        self._zstandard = zstandard
        self._dictionary = dictionary
        self._local = threading.local()

    def _coders(self) -> tuple[Any, Any]:
        coders = getattr(self._local, "coders", None)
        if coders is None:
            zstandard, dictionary = self._zstandard, self._dictionary
            coders = self._local.coders = (zstandard.ZstdCompressor(level=self._level, dict_data=dictionary),
                                           zstandard.ZstdDecompressor(dict_data=dictionary))
        return coders

    def with_dictionary(self, data: bytes) -> Codec:
        """This codec compressing with the trained dictionary ``data``."""
        dictionary = self._zstandard.ZstdCompressionDict(data)
        dictionary.precompute_compress(level=self._level)  # once, not per compressor
        return type(self)(self.name + DICTIONARY_SUFFIX, self._level, self._zstandard, dictionary)

    def encode(self, data):
        return self._coders()[0].compress(data)

    def decode(self, data, nbytes):
        raw = self._coders()[1].decompress(data, max_output_size=nbytes)
        if len(raw) != nbytes:
            raise ValueError(f"a zstd frame of {len(raw)} bytes, expected {nbytes}")
        return raw


class _ZstandardBatches(_Zstandard):
    """python-zstandard's C backend, which also decodes a whole batch in one call (BatchDecoder)."""

    def decode_rows(self, buffer, offsets, nbytes, row_nbytes, threads):
        segments = np.empty((len(offsets), 2), np.uint64)  # (offset, size) pairs, as the library takes them
        segments[:, 0], segments[:, 1] = offsets, nbytes
        try:  # the segments are bounds-checked against the buffer; no bytes are copied
            frames = self._zstandard.BufferWithSegments(buffer, segments.tobytes())
            decoded = self._coders()[1].multi_decompress_to_buffer(
                frames, decompressed_sizes=np.full(len(offsets), row_nbytes, np.uint64).tobytes(), threads=threads)
        except self._zstandard.ZstdError as error:
            raise ValueError(str(error)) from None
        raw = bytearray().join(decoded)  # one copy, in C, of every decoded row in order; writable
        if len(raw) != row_nbytes * len(offsets):  # a short frame: each row has a destination of row_nbytes
            raise ValueError(f"zstd rows decoded to {len(raw)} bytes, expected {row_nbytes * len(offsets)}")
        return raw


class _Raw:
    name = RAW

    def encode(self, data):
        return bytes(data)

    def decode(self, data, nbytes):
        if len(data) != nbytes:
            raise ValueError(f"a raw row of {len(data)} bytes, expected {nbytes}")
        return data


def _zstd(level: int | None) -> Codec:
    chosen = 3 if level is None else level
    if not -7 <= chosen <= 22:
        raise SchemaError(f"zstd level {chosen} is outside -7..22; use e.g. 'zstd:3' (the default) or 'zstd:19'")
    try:
        import zstandard  # first use only: see the module docstring
    except ImportError:
        import numcodecs  # first use only: see the module docstring

        return _Numcodec(f"zstd:{chosen}", lambda: numcodecs.Zstd(level=chosen))
    # Batches of many rows need the C backend's BufferWithSegments (the CFFI one, for PyPy, lacks it).
    coder = _ZstandardBatches if hasattr(zstandard, "BufferWithSegments") else _Zstandard
    return coder(f"zstd:{chosen}", chosen, zstandard)


def _lz4(level: int | None) -> Codec:
    chosen = 1 if level is None else level
    if not 1 <= chosen <= 65537:
        raise SchemaError(f"lz4 acceleration {chosen} must be at least 1 (1 is the default, larger is faster)")
    import numcodecs  # first use only: see the module docstring

    name = "lz4" if chosen == 1 else f"lz4:{chosen}"
    return _Numcodec(name, lambda: numcodecs.LZ4(acceleration=chosen))


def _raw(level: int | None) -> Codec:
    if level is not None:
        raise SchemaError("the raw codec takes no level; write codec='raw' or codec=None")
    return _Raw()


_FACTORIES: dict[str, Callable[[int | None], Codec]] = {"zstd": _zstd, "lz4": _lz4, RAW: _raw}
_BUILT: dict[str, Codec] = {}


def register_codec(name: str, factory: Callable[[int | None], Codec]) -> None:
    """Make ``name`` (and ``name:<level>``) a codec: ``factory(level or None)`` builds it. The
    codec's ``name`` is what the schema records, so it must parse back to the same codec."""
    if not name.isidentifier():
        raise SchemaError(f"codec name {name!r} must be an identifier such as 'zstd'")
    _FACTORIES[name] = factory
    for built in [key for key in _BUILT if key.split(":")[0] == name]:
        del _BUILT[built]


def codec_names() -> list[str]:
    return sorted(_FACTORIES)


def _parse(name: object) -> tuple[str, int | None]:
    if not isinstance(name, str):
        raise SchemaError(f"codec {name!r} must be a string such as 'zstd', 'zstd:3' or 'lz4', or None")
    base, _, level_text = name.strip().lower().partition(":")
    if base not in _FACTORIES:
        raise SchemaError(f"unknown codec {name!r}; the codecs are {', '.join(codec_names())} "
                          "(with a level: 'zstd:3'; with a dictionary the pool trains: 'zstd:3+dict')")
    if not level_text:
        return base, None
    try:
        return base, int(level_text)
    except ValueError:
        raise SchemaError(f"codec {name!r}: the level after ':' must be an int, as in 'zstd:3'") from None


def uses_dictionary(name: str | None) -> bool:
    """Whether the codec ``name`` compresses with a dictionary the pool keeps (``"zstd:3+dict"``)."""
    return isinstance(name, str) and name.strip().lower().endswith(DICTIONARY_SUFFIX)


def with_dictionary(codec: Codec, data: bytes) -> Codec:
    """``codec`` compressing with the trained dictionary ``data`` (a codec ``get_codec`` gave for
    a ``+dict`` name, so one that can)."""
    return codec.with_dictionary(data)  # type: ignore[attr-defined]


def train_dictionary(samples: list[bytes], nbytes: int) -> bytes:
    """A zstd dictionary of at most ``nbytes`` trained on ``samples`` (rows' raw bytes); raises
    ValueError when the rows give the trainer too little to learn from."""
    import zstandard  # only a dictionary field's writer trains

    chunks: list[bytes | bytearray | memoryview] = list(samples)
    try:
        return zstandard.train_dictionary(nbytes, chunks).as_bytes()
    except zstandard.ZstdError as error:
        raise ValueError(str(error)) from None


def get_codec(name: str | None) -> Codec:
    """The codec named ``name`` (None: raw). Raises SchemaError naming the choices when unknown.
    A ``+dict`` name gives its codec without the dictionary (``with_dictionary`` adds it)."""
    if uses_dictionary(name):
        return _dictionary_base(str(name))
    key = RAW if name is None else name
    codec = _BUILT.get(key)
    if codec is None:
        base, level = _parse(key)
        codec = _FACTORIES[base](level)
        _BUILT[key] = _BUILT[codec.name] = codec
    return codec


def _dictionary_base(name: str) -> Codec:
    base_name = name.strip().lower()[:-len(DICTIONARY_SUFFIX)]
    codec = get_codec(base_name)
    if _parse(base_name)[0] != "zstd":
        raise SchemaError(f"codec {name!r}: only zstd compresses with a dictionary; write e.g. 'zstd:3+dict'")
    if not callable(getattr(codec, "with_dictionary", None)):
        raise SchemaError(f"codec {name!r} needs python-zstandard, which trains and reads zstd dictionaries: "
                          "pip install 'expstore[codecs]' (or zstandard)")
    return codec


def normalise_codec(name: str | None) -> str | None:
    """The canonical name of a codec (``"zstd"`` -> ``"zstd:3"``, ``"zstd+dict"`` ->
    ``"zstd:3+dict"``), None for raw storage."""
    if name is None:
        return None
    canonical = get_codec(name).name
    if canonical == RAW:
        return None
    return canonical + DICTIONARY_SUFFIX if uses_dictionary(name) else canonical
