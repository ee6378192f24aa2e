"""zstd dictionaries trained by the pool (codec ``zstd:N+dict``, core/heap_dictionary.py).

The frames here share a textured background and differ by a few moving blocks, as game frames
do: compressed one at a time each pays for the background again, which a dictionary holds once.
"""

from __future__ import annotations

import sys
import zlib

import h5py
import numpy as np
import pytest

import expstore
from expstore.backends.internal import DICTIONARY_HEADER_NBYTES, DICTIONARY_PREFIX, HEAP_PREFIX
from expstore.codecs import registry
from expstore.core import heap_dictionary
from expstore.core.heap_dictionary import TRAIN_ROWS
from expstore.errors import CorruptStoreError, SchemaError
from tests.helpers.cli import run

pytest.importorskip("zstandard")

BACKGROUND = np.random.default_rng(7).integers(0, 4, (84, 84), dtype=np.uint8) * 40


def frame(step: int) -> np.ndarray:
    image = BACKGROUND.copy()
    for block in range(3):
        y, x = (step * (3 + block)) % 76, (step * (5 + 2 * block) + 17 * block) % 76
        image[y:y + 8, x:x + 8] = 200 + block
    return image


def frames(steps) -> np.ndarray:
    return np.stack([frame(int(step)) for step in steps])


def schema(codec: str = "zstd:3+dict") -> dict:
    return {"obs": expstore.Field((84, 84), "uint8", codec=codec), "action": ((), "int64")}


def fill(pool, start: int, stop: int, batch: int = 250) -> None:
    for first in range(start, stop, batch):
        steps = np.arange(first, min(stop, first + batch))
        pool.extend({"obs": frames(steps), "action": steps})


def assert_frames_match(batch: dict) -> None:
    np.testing.assert_array_equal(batch["obs"], frames(batch["action"]))


def stored_nbytes(pool, steps) -> float:
    index = pool._maps.views["obs"]
    return float(index[np.asarray(steps) % len(index), 1].mean())


def plain_zstd_nbytes(steps) -> float:
    import zstandard

    compressor = zstandard.ZstdCompressor(level=3)
    return float(np.mean([len(compressor.compress(frame(step).tobytes())) for step in steps]))


def test_the_pool_trains_its_dictionary_on_the_first_rows_and_compresses_later_rows_with_it(pool_path):
    with expstore.open(pool_path, "w", capacity=3 * TRAIN_ROWS, schema=schema()) as pool:
        assert pool.schema["obs"].codec == "zstd:3+dict"
        fill(pool, 0, TRAIN_ROWS + 1500)
        # Batches of 250: the fourth completes the training rows and is the first compressed with it.
        before = stored_nbytes(pool, range(TRAIN_ROWS - 250))
        after = stored_nbytes(pool, range(TRAIN_ROWS, TRAIN_ROWS + 1500))
        assert after < 0.7 * before, (before, after)
        assert_frames_match(pool.sample(512, rng=0))
        assert_frames_match(pool[:])  # rows from before and after the dictionary, in one read
    with expstore.open(pool_path) as reader:
        assert_frames_match(reader.sample(1024, rng=1))
        assert reader._heaps.fields[0].dictionary_nbytes > 0


def test_a_reader_opened_before_the_dictionary_reads_rows_compressed_with_it(pool_path):
    with expstore.open(pool_path, "w", capacity=3 * TRAIN_ROWS, schema=schema()) as writer:
        fill(writer, 0, 300)
        writer.flush()
        with expstore.open(pool_path) as reader:
            assert reader._heaps.fields[0].dictionary_nbytes is None
            fill(writer, 300, TRAIN_ROWS + 1000)
            writer.flush()
            batch = reader.sample(512, rng=0)
            assert_frames_match(batch)
            assert (batch["action"] > TRAIN_ROWS + 250).any(), "rows compressed with the dictionary were read"
            assert reader._heaps.fields[0].dictionary_nbytes > 0


def test_a_reopened_writer_keeps_the_stored_dictionary(pool_path):
    with expstore.open(pool_path, "w", capacity=3 * TRAIN_ROWS, schema=schema()) as pool:
        fill(pool, 0, TRAIN_ROWS + 500)
        stored = pool._maps.views[DICTIONARY_PREFIX + "obs"].copy()
    with expstore.open(pool_path, "a") as pool:
        fill(pool, TRAIN_ROWS + 500, TRAIN_ROWS + 1000)
        np.testing.assert_array_equal(pool._maps.views[DICTIONARY_PREFIX + "obs"], stored)
        assert stored_nbytes(pool, range(TRAIN_ROWS + 500, TRAIN_ROWS + 1000)) < 0.7 * plain_zstd_nbytes(
            range(TRAIN_ROWS + 500, TRAIN_ROWS + 1000))
        assert_frames_match(pool[:])


def test_rows_the_trainer_cannot_learn_from_leave_the_field_without_one_until_the_next_rows(pool_path, monkeypatch):
    attempts = []
    train = registry.train_dictionary

    def failing_once(samples, nbytes):
        attempts.append(len(samples))
        if len(attempts) == 1:
            raise ValueError("Src size is incorrect")
        return train(samples, nbytes)

    monkeypatch.setattr(heap_dictionary, "train_dictionary", failing_once)
    with expstore.open(pool_path, "w", capacity=4 * TRAIN_ROWS, schema=schema()) as pool:
        fill(pool, 0, TRAIN_ROWS + 500)
        assert attempts == [TRAIN_ROWS] and pool._heaps.fields[0].dictionary_nbytes is None
        fill(pool, TRAIN_ROWS + 500, 2 * TRAIN_ROWS + 500)
        assert attempts == [TRAIN_ROWS, TRAIN_ROWS] and pool._heaps.fields[0].dictionary_nbytes > 0
        assert_frames_match(pool[:])


def test_a_ragged_field_with_a_dictionary(pool_path):
    tokens = {"tokens": expstore.Field((None,), "int32", codec="zstd+dict"), "reward": ((), "float32")}

    def row(step: int) -> np.ndarray:
        return (np.arange(step % 50 + 20, dtype=np.int32) * 3 + 1000) % 997

    with expstore.open(pool_path, "w", capacity=3 * TRAIN_ROWS, schema=tokens) as pool:
        for first in range(0, TRAIN_ROWS + 1000, 100):
            pool.extend({"tokens": [row(step) for step in range(first, first + 100)],
                         "reward": np.arange(first, first + 100, dtype=np.float32)})
        assert pool._heaps.fields[0].dictionary_nbytes > 0
        batch = pool.sample(300, rng=0, ragged="list")
    for step, values in zip(batch["reward"].astype(int), batch["tokens"], strict=True):
        np.testing.assert_array_equal(values, row(step))


def test_a_damaged_dictionary_is_a_clear_error_and_a_verify_finding(pool_path):
    with expstore.open(pool_path, "w", capacity=3 * TRAIN_ROWS, schema=schema()) as pool:
        fill(pool, 0, TRAIN_ROWS + 500)
        pool._maps.views[DICTIONARY_PREFIX + "obs"][DICTIONARY_HEADER_NBYTES + 100] ^= 0xFF
    with pytest.raises(CorruptStoreError, match="'obs': the zstd dictionary fails its crc32"):
        expstore.open(pool_path)
    report = expstore.verify(pool_path)
    assert not report.ok and any("dictionary" in finding for finding in report.findings), report.findings


def test_codec_names_with_a_dictionary():
    assert expstore.Field((4,), "uint8", codec="ZSTD+dict").codec == "zstd:3+dict"
    assert expstore.Field((4,), "uint8", codec="zstd:12+dict").codec == "zstd:12+dict"
    with pytest.raises(SchemaError, match="only zstd compresses with a dictionary"):
        expstore.Field((4,), "uint8", codec="lz4+dict")


def test_a_dictionary_needs_python_zstandard(monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard now fails
    monkeypatch.setattr(registry, "_BUILT", {})
    with pytest.raises(SchemaError, match="needs python-zstandard"):
        expstore.Field((4,), "uint8", codec="zstd:5+dict")


def test_convert_trains_a_dictionary_for_the_copy_and_info_shows_it(tmp_path):
    source, copy = str(tmp_path / "raw.h5"), str(tmp_path / "dict.zarr")
    with expstore.open(source, "w", capacity=3 * TRAIN_ROWS, schema=schema(None)) as pool:
        fill(pool, 0, TRAIN_ROWS + 1000)
    run("convert", source, copy, "--codec", "obs=zstd:3+dict")
    with expstore.open(copy) as pool:
        assert pool.schema["obs"].codec == "zstd:3+dict"
        assert_frames_match(pool[:])
        assert stored_nbytes(pool, range(TRAIN_ROWS + 1000)) < 0.7 * plain_zstd_nbytes(range(TRAIN_ROWS + 1000))
    nbytes = expstore.open(copy)._heaps.fields[0].dictionary_nbytes
    assert f"; dictionary {nbytes / 1024:.1f} KiB" in run("info", copy).output
    fresh = str(tmp_path / "fresh.h5")
    with expstore.open(fresh, "w", capacity=10, schema=schema()):
        pass
    assert f"dictionary not trained yet (on the first {TRAIN_ROWS:,} rows)" in run("info", fresh).output


def test_plain_h5py_and_zstandard_read_a_row(tmp_path):
    """What the README says a reader without expstore does: the dictionary's length, then its
    bytes, from ``_dict_obs``; a row's frame from ``_heap_obs`` at its index entry."""
    import zstandard

    pool_path = str(tmp_path / "pool.h5")
    with expstore.open(pool_path, "w", capacity=3 * TRAIN_ROWS, schema=schema()) as pool:
        fill(pool, 0, TRAIN_ROWS + 500)
    with h5py.File(pool_path, "r") as f:
        header = f["_dict_obs"][:16].view(np.int64)
        data = f["_dict_obs"][16:16 + header[0]].tobytes()
        assert zlib.crc32(data) == header[1]
        position, nbytes, _, _ = f["obs"][TRAIN_ROWS + 400]
        heap = f[HEAP_PREFIX + "obs"]
        offset = position % len(heap)
        stored = heap[offset:offset + nbytes].tobytes()
    decompressor = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(data))
    row = np.frombuffer(decompressor.decompress(stored), np.uint8).reshape(84, 84)
    np.testing.assert_array_equal(row, frame(TRAIN_ROWS + 400))


def test_a_stored_dictionary_reads_back_and_a_lost_length_is_found_from_its_crc():
    """HeapDictionary.store writes what header(), load() and restorable_length() read."""
    array = np.zeros(DICTIONARY_HEADER_NBYTES + 4096, np.uint8)
    dictionary = heap_dictionary.HeapDictionary("obs", array)
    assert dictionary.header() == (0, 0) and dictionary.load() is None and dictionary.restorable_length() is None
    data = b"\x37\xa4\x30\xec" + bytes(range(200))  # starts as zstd dictionaries do
    dictionary.store(data)
    assert dictionary.header() == (len(data), zlib.crc32(data)) and dictionary.load() == data
    assert dictionary.restorable_length() is None  # the stored length is right
    array[:8] = 0
    assert dictionary.length_lost() and dictionary.restorable_length() == len(data)
