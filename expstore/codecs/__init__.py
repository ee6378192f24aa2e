"""Codecs: how a heap field's rows are compressed one at a time (registry.py).

A codec is a small object (``Codec`` protocol): ``encode(bytes) -> bytes``,
``decode(bytes, nbytes) -> bytes``, and its ``name``; one that can also decode a whole batch of
rows in one call (``BatchDecoder``: ``decode_rows``) is asked to, for fixed-shape fields.
``"zstd"`` (level 3, or ``"zstd:N"``) comes from python-zstandard, which decodes batches on its own
threads, or else numcodecs; ``"zstd:N+dict"`` (python-zstandard only) adds a dictionary the pool
trains and keeps; ``"lz4"`` from numcodecs, a zarr dependency. ``register_codec`` adds
another. ``None`` and ``"raw"`` store the bytes as they are.
"""

from __future__ import annotations

from .registry import RAW, BatchDecoder, Codec, batch_decoder, codec_names, get_codec, normalise_codec, register_codec

__all__ = ["RAW", "BatchDecoder", "Codec", "batch_decoder", "codec_names", "get_codec", "normalise_codec",
           "register_codec"]
