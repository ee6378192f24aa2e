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

import numpy as np

from ..backends.internal import DICTIONARY_HEADER_NBYTES, DICTIONARY_NBYTES
from ..codecs.registry import train_dictionary
from ..errors import CorruptStoreError

# About 14 MB of Atari frames. Measured at level 3: dictionaries trained on the first 2,000 frames
# code Pong and Breakout frames in 112 B, against 172 and 218 B from the first 1,000.
TRAIN_ROWS = 2000


class HeapDictionary:
    """The dictionary array of one heap field, and the rows its writer collects to train it."""

    def __init__(self, name: str, array: np.ndarray):
        self.name = name
        self.array = array
        self.samples: list[bytes] = []

    def load(self) -> bytes | None:
        """The stored dictionary, None while there is none. Raises CorruptStoreError when its
        header or bytes are damaged."""
        length, crc = (int(n) for n in self.array[:DICTIONARY_HEADER_NBYTES].view(np.int64))
        if length == 0:
            return None
        if not 0 < length <= DICTIONARY_NBYTES:
            raise CorruptStoreError(f"field {self.name!r}: the zstd dictionary's length is {length}, outside "
                                    f"1..{DICTIONARY_NBYTES}; the pool is damaged: run `expstore verify`")
        data = self.array[DICTIONARY_HEADER_NBYTES:DICTIONARY_HEADER_NBYTES + length].tobytes()
        if zlib.crc32(data) != crc:
            raise CorruptStoreError(f"field {self.name!r}: the zstd dictionary fails its crc32, so rows compressed "
                                    "with it cannot be read; the pool is damaged: run `expstore verify`")
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
        header = self.array[:DICTIONARY_HEADER_NBYTES].view(np.int64)
        self.array[DICTIONARY_HEADER_NBYTES:DICTIONARY_HEADER_NBYTES + len(data)] = np.frombuffer(data, np.uint8)
        header[1] = zlib.crc32(data)
        header[0] = len(data)  # last: the dictionary exists from here on
        return data
