"""A heap field's zstd dictionary (codec ``zstd:N+dict``): trained once, then kept in the pool.

Small rows of one kind (Atari frames: 200-1,100 B of zstd each) share most of what a compressor
learns, and a frame compressed alone relearns it every time; a dictionary trained on the first
rows holds it once. Measured on real Atari frames with 64 KiB dictionaries at level 3: 1.5x
(Pong) to 3.3x (MsPacman) fewer bytes per frame, decoded 1.2-2.8x faster (tools/README.md).

The writer keeps the raw bytes of the field's first ``TRAIN_ROWS`` rows (those before the batch
that completes them are stored without a dictionary); with that batch it trains one, writes it
to ``_dict_<name>`` (backends/internal.py), the bytes and their crc32 first and the length last,
and only then compresses rows with it, that batch's own first. (A batch refused later by another
field's checks may have trained it: no row is written then, and the dictionary serves the next.)
The dictionary never changes after that, so no commit needs to cover it: a row compressed with
it is committed after it was written, and a reader that holds that commit sees the length.
Readers load it as soon as the length is set, and one decompressor holding it reads every row:
zstd frames name the dictionary they need, and those made before it need none. Rows too alike
or too few to train on leave the field without one; it tries again on the next ``TRAIN_ROWS``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping

import numpy as np

from ..backends.internal import DICTIONARY_HEADER_NBYTES, DICTIONARY_NBYTES, DICTIONARY_PREFIX
from ..codecs.registry import train_dictionary
from ..errors import RESTORE_FROM_COPY_ADVICE, RESTORE_LENGTH_ADVICE, CorruptStoreError

# What every dictionary zstd trains starts with (little-endian 0xEC30A437).
_ZSTD_DICTIONARY_MAGIC = b"\x37\xa4\x30\xec"

# About 14 MB of Atari frames. Measured at level 3: dictionaries trained on the first 2,000 frames
# code Pong and Breakout frames in 112 B, against 172 and 218 B from the first 1,000.
TRAIN_ROWS = 2000


class HeapDictionary:
    """The dictionary array of one heap field, and the rows its writer collects to train it."""

    def __init__(self, name: str, array: np.ndarray):
        self.name = name
        self.array = array
        self.samples: list[bytes] = []

    def header(self) -> tuple[int, int]:
        """The stored (length, crc32); length 0 while there is no dictionary."""
        length, crc = (int(n) for n in self.array[:DICTIONARY_HEADER_NBYTES].view(np.int64))
        return length, crc

    def length_lost(self) -> bool:
        """A length of 0 beside a recorded crc32: a dictionary was stored and its length lost
        (or a writer died between the two writes, before any row used it)."""
        length, crc = self.header()
        return length == 0 and crc != 0

    def load(self) -> bytes | None:
        """The stored dictionary, None while there is none. Raises CorruptStoreError when its
        header or bytes are damaged."""
        length, crc = self.header()
        if length == 0:
            return None
        if not 0 < length <= DICTIONARY_NBYTES:
            raise CorruptStoreError(f"field {self.name!r}: the zstd dictionary's length is {length}, outside "
                                    f"1..{DICTIONARY_NBYTES}; {RESTORE_LENGTH_ADVICE}")
        data = self.array[DICTIONARY_HEADER_NBYTES:DICTIONARY_HEADER_NBYTES + length].tobytes()
        if zlib.crc32(data) != crc:
            raise CorruptStoreError(f"field {self.name!r}: the zstd dictionary fails its crc32 at its length of "
                                    f"{length} bytes, so rows compressed with it cannot be read; where only its "
                                    f"length is damaged, {RESTORE_LENGTH_ADVICE}, else {RESTORE_FROM_COPY_ADVICE}")
        return data

    def collect(self, raws: list[np.ndarray]) -> None:
        """Keep the raw bytes of rows the field stores before it has a dictionary, up to ``TRAIN_ROWS``."""
        for raw in raws[:TRAIN_ROWS - len(self.samples)]:
            if raw.size:
                self.samples.append(raw.tobytes())

    def train(self) -> bytes | None:
        """Once ``TRAIN_ROWS`` rows are collected: train a dictionary on them and store it (see the
        module docstring). None while there are too few, or when the trainer learned nothing."""
        if len(self.samples) < TRAIN_ROWS:
            return None
        samples, self.samples = self.samples, []
        try:
            data = train_dictionary(samples, DICTIONARY_NBYTES)
        except ValueError:  # rows all alike, or too small: the next TRAIN_ROWS rows get their turn
            return None
        self.store(data)
        return data

    def store(self, data: bytes) -> None:
        """Store the dictionary ``data`` as the module docstring says: bytes and crc32, then length."""
        header = self.array[:DICTIONARY_HEADER_NBYTES].view(np.int64)
        self.array[DICTIONARY_HEADER_NBYTES:DICTIONARY_HEADER_NBYTES + len(data)] = np.frombuffer(data, np.uint8)
        header[1] = zlib.crc32(data)
        header[0] = len(data)  # last: the dictionary exists from here on

    def restorable_length(self) -> int | None:
        """The length to store where the stored one is damaged or lost: the one at which the
        bytes match the recorded crc32 and start as zstd dictionaries do. None when the stored
        length is right, no dictionary was ever stored, or no length matches (the bytes or the
        crc32 are damaged: nothing to restore them from)."""
        length, crc = self.header()
        data = self.array[DICTIONARY_HEADER_NBYTES:].tobytes()
        if crc == 0 and length == 0:
            return None
        if 0 < length <= len(data) and zlib.crc32(data[:length]) == crc:
            return None
        if not data.startswith(_ZSTD_DICTIONARY_MAGIC):
            return None
        # zlib.crc32 continues a running crc: one pass over the bytes tries every length.
        running = zlib.crc32(data[:len(_ZSTD_DICTIONARY_MAGIC) - 1])
        for end in range(len(_ZSTD_DICTIONARY_MAGIC), min(len(data), DICTIONARY_NBYTES) + 1):
            running = zlib.crc32(data[end - 1:end], running)
            if running == crc:
                return end
        return None


def stored_dictionaries(store, names: Iterable[str]) -> dict[str, bytes]:
    """The trained dictionaries of the heap fields ``names`` of the open pool ``store`` (fields
    without one are left out)."""
    found = {}
    for name in names:
        array = store.mapped.views.get(DICTIONARY_PREFIX + name)
        data = None if array is None else HeapDictionary(name, array).load()
        if data is not None:
            found[name] = data
    return found


def store_dictionaries(store, dictionaries: Mapping[str, bytes]) -> None:
    """Store ``dictionaries`` in the new, empty pool ``store`` as its writer would have trained
    them (``HeapDictionary.store``); the pool must be opened again to compress with them."""
    for name, data in dictionaries.items():
        HeapDictionary(name, store.mapped.views[DICTIONARY_PREFIX + name]).store(data)
