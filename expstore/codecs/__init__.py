"""Codecs: how a heap field's rows are compressed one at a time (registry.py).

A codec is a small object (``Codec`` protocol): ``encode(bytes) -> bytes``,
``decode(bytes, nbytes) -> bytes``, and its ``name``. ``"zstd"`` (level 3, or ``"zstd:N"``) and
``"lz4"`` come from numcodecs, a zarr dependency, whose calls release the GIL so that a batch
decodes on several threads; ``register_codec`` adds another. ``None`` and ``"raw"`` store the
bytes as they are.
"""

from __future__ import annotations

from .registry import RAW, Codec, codec_names, get_codec, normalise_codec, register_codec

__all__ = ["RAW", "Codec", "codec_names", "get_codec", "normalise_codec", "register_codec"]
