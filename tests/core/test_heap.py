"""Heap fields (ragged, or with a codec): writing, reading, eviction by the heap, reopening,
plain h5py/zarr reading, and every bad input writing nothing."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import expstore
from expstore.core.opening import heap_sizes
from expstore.errors import InvalidArgumentError, SchemaError
from expstore.maintenance.convert import convert
from expstore.schema import Schema
from tests.helpers.heap_rows import assert_rows_match, heap_batch, heap_row, heap_schema


def _fill(pool, steps) -> None:
    for step in steps:
        pool.append(heap_row(step))


def test_rows_come_back_as_appended(pool_path):
    with expstore.open(pool_path, "w", capacity=64, schema=heap_schema()) as pool:
        _fill(pool, range(30))
        pool.extend(heap_batch(range(30, 50)))
        assert_rows_match(pool.read(np.arange(50)))
    with expstore.open(pool_path) as pool:
        batch = pool.sample(128, rng=1)
        assert_rows_match(batch)
        assert batch["obs"].dtype == np.uint8 and batch["obs"].shape == (128, 16, 16)
        assert batch["tokens"].shape[1] == batch["tokens_length"].max()  # padded to the longest row
        assert_rows_match(pool[10:20])
        row = pool[3]
        assert len(row["tokens"]) == row["tokens_length"] == len(heap_row(3)["tokens"])


def test_lists_and_pad_value(pool_path):
    with expstore.open(pool_path, "w", capacity=64, schema=heap_schema()) as pool:
        _fill(pool, range(40))
        listed = pool.sample(16, rng=0, ragged="list")
        padded = pool.sample(16, rng=0, pad_value=-1)
        for k, step in enumerate(listed["step_id"]):
            np.testing.assert_array_equal(listed["tokens"][k], heap_row(int(step))["tokens"])
            length = padded["tokens_length"][k]
            assert (padded["tokens"][k, length:] == -1).all()
        assert (padded["tokens_length"] == listed["tokens_length"]).all()
        with pytest.raises(InvalidArgumentError, match="ragged='nested'"):
            pool.sample(4, ragged="nested")
        with pytest.raises(InvalidArgumentError, match="pad_value"):
            pool.read([0], pad_value="x")


def test_extend_takes_lists_object_arrays_and_regular_arrays(pool_path):
    schema = {"tokens": expstore.Field((None,), "int32"), "reward": ((), "float32")}
    rows = [np.arange(n, dtype=np.int32) for n in (3, 0, 5)]
    objects = np.empty(3, dtype=object)
    objects[:] = rows
    with expstore.open(pool_path, "w", capacity=20, schema=schema) as pool:
        pool.extend({"tokens": rows, "reward": np.zeros(3, np.float32)})
        pool.extend({"tokens": objects, "reward": np.zeros(3, np.float32)})
        pool.extend({"tokens": np.ones((2, 4), np.int64), "reward": np.zeros(2, np.float32)})
        listed = pool.read(np.arange(8), ragged="list")["tokens"]
    assert [len(row) for row in listed] == [3, 0, 5, 3, 0, 5, 4, 4]
    np.testing.assert_array_equal(listed[2], rows[2])
    assert listed[7].dtype == np.int32


def test_heap_bound_eviction_keeps_the_newest_rows(pool_path):
    schema = {"tokens": expstore.Field((None,), "int32", heap_bytes=4096), "reward": ((), "float32")}
    with expstore.open(pool_path, "w", capacity=1000, schema=schema) as pool:
        for step in range(400):
            pool.append({"tokens": np.full(50, step, np.int32), "reward": float(step)})  # 200 bytes a row
        assert len(pool) <= 4096 // 200 and pool.window[1] == 400
        assert pool.window_bound == "heap 'tokens'"
        low, high = pool.window
        batch = pool.read(np.arange(low, high))
        assert (batch["tokens"] == np.arange(low, high)[:, None]).all()
    with expstore.open(pool_path) as pool:
        assert pool.window == (low, high)
        assert (pool.sample(64, rng=0)["tokens"][:, 0] >= low).all()


def test_capacity_bound_eviction(pool_path):
    with expstore.open(pool_path, "w", capacity=16, schema=heap_schema()) as pool:
        _fill(pool, range(100))
        assert len(pool) == 16 and pool.window_bound == "capacity"
        assert_rows_match(pool.read(np.arange(84, 100)))
        assert pool.stats()["window_bound"] == "capacity"


def test_reopened_writer_goes_on_where_the_commit_left(pool_path):
    schema = {"tokens": expstore.Field((None,), "int32", heap_bytes=3000), "reward": ((), "float32")}
    with expstore.open(pool_path, "w", capacity=100, schema=schema) as pool:
        for step in range(37):
            pool.append({"tokens": np.full(step % 9, step, np.int32), "reward": float(step)})
    for _round in range(3):
        with expstore.open(pool_path, "a") as pool:
            first = pool.window[1]
            for step in range(first, first + 41):
                pool.append({"tokens": np.full(step % 9, step, np.int32), "reward": float(step)})
    with expstore.open(pool_path) as pool:
        low, high = pool.window
        assert high == 37 + 3 * 41
        listed = pool.read(np.arange(low, high), ragged="list")["tokens"]
        for step, row in zip(range(low, high), listed, strict=True):
            np.testing.assert_array_equal(row, np.full(step % 9, step, np.int32))


def test_episodes_n_step_sequences_and_derived_next_obs(pool_path):
    schema = heap_schema()
    with expstore.open(pool_path, "w", capacity=200, schema=schema, derive_next_obs=True) as pool:
        _fill(pool, range(120))
        episodes = pool.episodes()
        assert len(episodes) >= 10
        episode = pool.episode(int(episodes["episode_id"][2]))
        assert_rows_match(episode)
        batch = pool.sample(32, rng=0, n_step=3, gamma=0.5)
        assert_rows_match({**batch, "reward": batch["step_id"].astype(np.float32)})
        for k, step in enumerate(batch["step_id"]):
            if not batch["terminated"][k] and step + 3 < 120:
                np.testing.assert_array_equal(batch["next_obs"][k], heap_row(int(step) + 3)["obs"])
        windows = pool.sample_sequences(8, 4)
        assert windows["tokens"].shape[:2] == (8, 4) and windows["tokens_length"].shape == (8, 4)
        for b in range(8):
            for t in range(4):
                if windows["mask"][b, t]:
                    expected = heap_row(int(windows["step_id"][b, t]))["tokens"]
                    np.testing.assert_array_equal(windows["tokens"][b, t, :len(expected)], expected)
        pool.update_priorities(batch["step_id"], np.arange(32) + 1.0)
        assert_rows_match(pool.sample(16, rng=0, prioritized=True))
        assert_rows_match(pool.sample(16, rng=0, max_age=10))
        epoch = list(pool.iter_epoch(50, rng=0, ragged="list"))
        # Rows whose next obs is unknown are skipped: episode ends appended without it, and the newest row.
        unknown = sum(bool(heap_row(step)["terminated"]) for step in range(120)) + 1
        assert sum(len(b["step_id"]) for b in epoch) == 120 - unknown


def test_plain_h5py_or_zarr_reads_a_heap_field(pool_path, backend):
    with expstore.open(pool_path, "w", capacity=32, schema=heap_schema()) as pool:
        _fill(pool, range(50))
        low, high = pool.window
    # The snippet of the README ("Heap fields on disk"), for both formats.
    import numcodecs

    if backend == "hdf5":
        import h5py

        with h5py.File(pool_path, "r") as f:
            index, heap, slots = f["tokens"][:], f["_heap_tokens"], f["tokens"].shape[0]
            step = high - 1
            position, nbytes, length, _crc = index[step % slots]
            start = position % heap.shape[0]
            tokens = np.frombuffer(heap[start:start + nbytes].tobytes(), "int32")
            position, nbytes, _length, _crc = f["obs"][step % slots]
            start = position % f["_heap_obs"].shape[0]
            obs = np.frombuffer(numcodecs.Zstd().decode(f["_heap_obs"][start:start + nbytes]), "uint8")
    else:
        import zarr

        group = zarr.open_group(pool_path, mode="r")
        index, heap, slots = group["tokens"][:], group["_heap_tokens"], group["tokens"].shape[0]
        step = high - 1
        position, nbytes, length, _crc = index[step % slots]
        start = position % heap.shape[0]
        tokens = np.frombuffer(heap[start:start + nbytes].tobytes(), "int32")
        position, nbytes, _length, _crc = group["obs"][step % slots]
        start = position % group["_heap_obs"].shape[0]
        obs = np.frombuffer(numcodecs.Zstd().decode(group["_heap_obs"][start:start + nbytes]), "uint8")
        assert group.attrs["expstore"]["schema"]["obs"]["codec"] == "zstd:3"
    assert length == len(heap_row(step)["tokens"])
    np.testing.assert_array_equal(tokens, heap_row(step)["tokens"])
    np.testing.assert_array_equal(obs.reshape(16, 16), heap_row(step)["obs"])


def test_fixed_raw_schema_json_is_unchanged():
    assert expstore.Field((3,), "float32").to_json() == {"shape": [3], "dtype": "float32"}
    assert expstore.Field((84, 84), "uint8").to_json() == {"shape": [84, 84], "dtype": "uint8"}
    assert expstore.Field((None, 3), "float32", codec="zstd").to_json() == {
        "shape": [None, 3], "dtype": "float32", "codec": "zstd:3"}
    assert expstore.Field((4,), "int32", codec="lz4") == expstore.Field.from_json(
        expstore.Field((4,), "int32", codec="lz4").to_json())


# ------------------------------------------------------------------ bad input writes nothing
def _rows_and_bytes(pool):
    return len(pool), pool.window


@pytest.mark.parametrize("value, message", [
    (np.zeros((3, 2), np.int32), "shape \\(3, 2\\)"),
    (np.zeros((), np.int32), "shape \\(\\)"),
    (np.array([1.5, 2.0]), "not whole numbers"),
    (np.array(["a"]), "cannot be stored as int32"),
])
def test_bad_ragged_rows_write_nothing(pool_path, value, message):
    with expstore.open(pool_path, "w", capacity=16, schema=heap_schema()) as pool:
        _fill(pool, range(5))
        before = _rows_and_bytes(pool)
        with pytest.raises(SchemaError, match=message):
            pool.append({**heap_row(5), "tokens": value})
        with pytest.raises(SchemaError):
            pool.extend({**heap_batch([5, 6]), "tokens": [np.zeros(2, np.int32), value]})
        assert _rows_and_bytes(pool) == before
        pool.append(heap_row(5))
        assert_rows_match(pool.read(np.arange(6)))


def test_row_larger_than_the_heap_writes_nothing(pool_path):
    schema = {"tokens": expstore.Field((None,), "int32", heap_bytes=1000), "reward": ((), "float32")}
    with expstore.open(pool_path, "w", capacity=16, schema=schema) as pool:
        pool.append({"tokens": np.arange(10, dtype=np.int32), "reward": 0.0})
        with pytest.raises(SchemaError, match="larger than the field's heap of 1000 bytes"):
            pool.append({"tokens": np.arange(251, dtype=np.int32), "reward": 1.0})
        with pytest.raises(SchemaError, match="row 1 of the batch"):
            pool.extend({"tokens": [np.arange(2, dtype=np.int32), np.arange(300, dtype=np.int32)],
                         "reward": np.zeros(2, np.float32)})
        pool.append({"tokens": np.arange(250, dtype=np.int32), "reward": 2.0})  # exactly the heap
        assert len(pool) == 1
        np.testing.assert_array_equal(pool.read([1], ragged="list")["tokens"][0], np.arange(250))


def test_codec_field_takes_only_its_shape(pool_path):
    with expstore.open(pool_path, "w", capacity=16, schema=heap_schema()) as pool:
        with pytest.raises(SchemaError, match="shape"):
            pool.append({**heap_row(0), "obs": np.zeros((16, 15), np.uint8)})
        assert len(pool) == 0


def test_schema_errors():
    with pytest.raises(SchemaError, match="unknown codec 'snappy'; the codecs are lz4, raw, zstd"):
        expstore.Field((3,), "float32", codec="snappy")
    with pytest.raises(SchemaError, match="level"):
        expstore.Field((3,), "float32", codec="zstd:x")
    with pytest.raises(SchemaError, match="-7..22"):
        expstore.Field((3,), "float32", codec="zstd:40")
    with pytest.raises(SchemaError, match="only the leading dimension may be None"):
        expstore.Field((3, None), "float32")
    with pytest.raises(SchemaError, match="heap_bytes=5 is for a ragged field"):
        expstore.Field((3,), "float32", heap_bytes=5)
    with pytest.raises(SchemaError, match="positive int"):
        expstore.Field((None,), "float32", heap_bytes=0)
    with pytest.raises(SchemaError, match="cannot be an image"):
        expstore.Field((None, 84), "uint8", image=True)
    with pytest.raises(SchemaError, match="'ids_length'"):
        Schema({"ids": expstore.Field((None,), "int32"), "ids_length": ((), "int64")})


def test_open_errors(pool_path, tmp_path):
    schema = heap_schema()
    with pytest.raises(InvalidArgumentError, match="not heap fields"):
        expstore.open(pool_path, "w", capacity=8, schema=schema, heap_bytes={"reward": 100})
    with pytest.raises(InvalidArgumentError, match="has none"):
        expstore.open(pool_path, "w", capacity=8, schema={"a": ((), "float32")}, heap_bytes=100)
    with pytest.raises(InvalidArgumentError, match="positive int"):
        expstore.open(pool_path, "w", capacity=8, schema=schema, heap_bytes=-1)


def test_a_ragged_observation_beside_derived_ones_stores_its_next_field(pool_path):
    """A ragged observation whose next field is declared is stored, beside a derived next_obs."""
    schema = {"obs": expstore.Field((4,), "uint8", codec="zstd"), "obs_tokens": expstore.Field((None,), "int32"),
              "next_obs_tokens": expstore.Field((None,), "int32"), "terminated": ((), "bool"),
              "truncated": ((), "bool")}
    with expstore.open(pool_path, "w", capacity=64, schema=schema, derive_next_obs=True) as pool:
        for step in range(40):
            end = step % 10 == 9
            row = {"obs": np.full(4, step, np.uint8), "obs_tokens": np.arange(step % 7, dtype=np.int32),
                   "next_obs_tokens": np.arange(step % 5, dtype=np.int32), "terminated": end, "truncated": False}
            pool.append({**row, "next_obs": np.full(4, 200, np.uint8)} if end else row)
        batch = pool.sample(64, rng=0, ragged="list")
    for step, next_obs, tokens in zip(batch["step_id"], batch["next_obs"], batch["next_obs_tokens"], strict=True):
        np.testing.assert_array_equal(next_obs, np.full(4, 200 if step % 10 == 9 else step + 1, np.uint8))
        np.testing.assert_array_equal(tokens, np.arange(step % 5, dtype=np.int32))


def test_heap_sizes_split_the_pool_total_by_raw_row_size():
    schema = Schema(heap_schema())
    sizes = heap_sizes(schema, 1_000_000, 10)
    # raw rows: obs 16 * 16 bytes, tokens 64 int32, points 64 x 2 float32
    assert sizes == {"obs": 250_000, "tokens": 250_000, "points": 500_000}
    assert heap_sizes(schema, {"obs": 5000}, 10)["obs"] == 5000
    assert heap_sizes(schema, None, 10)["obs"] == 10 * (256 + 32)


def test_cold_reads_ask_for_every_heap_fields_pages_before_reading_any(pool_path, monkeypatch):
    from expstore.core import heap as heap_module
    from tests.helpers.pools import drop_from_page_cache

    with expstore.open(pool_path, "w", capacity=200, schema=heap_schema(), derive_next_obs=True) as pool:
        _fill(pool, range(150))
    with expstore.open(pool_path) as reader:
        reader.cold_reads.mode = "off"
        expected = reader.sample(48, rng=3)
    events: list[tuple[str, object]] = []
    prefetch, read = heap_module.prefetch_byte_ranges, heap_module.HeapField.read
    monkeypatch.setattr(heap_module, "prefetch_byte_ranges",
                        lambda view, starts, nbytes: events.append(("prefetch", view.size)) or
                        prefetch(view, starts, nbytes))
    monkeypatch.setattr(heap_module.HeapField, "read",
                        lambda self, *args, **kwargs: events.append(("read", self.name)) or read(self, *args, **kwargs))
    drop_from_page_cache(pool_path)
    with expstore.open(pool_path) as reader:
        reader.cold_reads.mode = "on"
        got = reader.sample(48, rng=3)
        heap_sizes_by_name = {heap.name: heap.heap.size for heap in reader._heaps.fields}
        index_size = reader._heaps.by_name["obs"].index.size * 8
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert_rows_match(got)
    # The batch's own rows: the three heaps' pages asked for, then the three fields decoded.
    assert events[:6] == [("prefetch", heap_sizes_by_name[name]) for name in ("obs", "tokens", "points")] + [
        ("read", "obs"), ("read", "tokens"), ("read", "points")]
    # The derived next_obs: the index pages of the next rows first, then their heap pages.
    assert events[6:9] == [("prefetch", index_size), ("prefetch", heap_sizes_by_name["obs"]), ("read", "obs")]


@pytest.mark.parametrize(("shape", "threads"), [((84, 84), False), ((160, 160, 3), True)])
def test_rows_decode_on_the_codec_threads_only_when_each_row_is_large(pool_path, monkeypatch, shape, threads):
    """A codec that decodes one row per call (lz4 here): short decodes lose to the GIL on several
    threads (a thread back from the codec waits for the one running Python), so only batches of
    large rows are decoded in parallel; either way the rows come back as appended."""
    from expstore.core import heap

    calls = []
    original = heap.in_parts

    def recording(work, items, parallel=True, min_items=2):
        calls.append(parallel)
        return original(work, items, parallel, min_items)

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 4, (128, *shape), dtype=np.uint8)  # compressible; 0.9 MB or more a batch
    schema = {"obs": expstore.Field(shape, "uint8", codec="lz4"), "reward": ((), "float32")}
    with expstore.open(pool_path, "w", capacity=128, schema=schema, fsync=False) as pool:
        pool.extend({"obs": frames, "reward": np.zeros(128, np.float32)})
        monkeypatch.setattr(heap, "in_parts", recording)
        batch = pool.read(np.arange(128))
    np.testing.assert_array_equal(batch["obs"], frames)
    assert calls == [threads]


@pytest.mark.parametrize(("rows", "tuned", "way"), [(5, False, "per row"), (100, False, "one call"),
                                                    (600, False, "one call on threads"), (600, True, "one call")])
def test_zstd_batches_decode_in_one_call_on_the_librarys_threads(pool_path, monkeypatch, rows, tuned, way):
    """zstd rows of a fixed shape decode in one call for the batch (python-zstandard's own threads
    from a large batch, unless the allocator keeps the output's pages: the threads gain only the
    page faults they share out): Atari frames cost as much Python per row as decoding."""
    pytest.importorskip("zstandard")
    from expstore.codecs.registry import _ZstandardBatches
    from expstore.core import heap, workers

    monkeypatch.setattr(heap, "keeps_large_blocks", lambda: tuned)

    calls, per_row = [], []
    decode_rows, decode_into = _ZstandardBatches.decode_rows, heap.HeapField._decode_into
    monkeypatch.setattr(_ZstandardBatches, "decode_rows", lambda self, buffer, offsets, nbytes, row_nbytes, threads:
                        calls.append(threads) or decode_rows(self, buffer, offsets, nbytes, row_nbytes, threads))
    monkeypatch.setattr(heap.HeapField, "_decode_into",
                        lambda self, out, part, *args: per_row.append(len(part)) or decode_into(self, out, part, *args))
    frames = np.random.default_rng(1).integers(0, 4, (rows, 84, 84), dtype=np.uint8)
    schema = {"obs": expstore.Field((84, 84), "uint8", codec="zstd"), "reward": ((), "float32")}
    with expstore.open(pool_path, "w", capacity=1024, schema=schema, fsync=False) as pool:
        pool.extend({"obs": frames, "reward": np.zeros(rows, np.float32)})
        order = np.random.default_rng(2).permutation(rows)
        batch = pool.read(order)
    np.testing.assert_array_equal(batch["obs"], frames[order])
    expected = {"per row": ([], [rows]), "one call": ([0], []), "one call on threads": ([workers.WORKERS], [])}
    assert (calls, per_row) == expected[way]


@contextlib.contextmanager
def _forty_zstd_frames(pool_path, seed: int):
    """A pool of 40 random zstd frames: the frames, the heap field and its index entries of steps 0-39."""
    frames = np.random.default_rng(seed).integers(0, 4, (40, 84, 84), dtype=np.uint8)
    schema = {"obs": expstore.Field((84, 84), "uint8", codec="zstd"), "reward": ((), "float32")}
    with expstore.open(pool_path, "w", capacity=64, schema=schema, fsync=False) as pool:
        pool.extend({"obs": frames, "reward": np.zeros(40, np.float32)})
        field = pool._heaps.by_name["obs"]
        yield frames, field, field.index[np.arange(40)]


def test_a_batch_decode_leaves_the_rows_that_fail_the_checks_zero(pool_path):
    """Rows the reader's commit no longer covers are marked bad and stay zero; the others of the
    batch still decode in one call."""
    steps = np.arange(40)
    with _forty_zstd_frames(pool_path, 3) as (frames, field, entries):
        positions = [int(entries[3, 0]), field.head_position, field.max_length]  # rows 0-2 lie before the tail
        out, lengths, bad = field.read(steps, entries, positions)
    assert lengths is None
    np.testing.assert_array_equal(bad, steps < 3)
    assert not out[:3].any()
    np.testing.assert_array_equal(out[3:], frames[3:])


def test_a_damaged_frame_in_a_batch_is_found_row_by_row(pool_path):
    """One undecodable frame fails the whole batch call; the rows are then decoded one by one, so
    the damage is reported for that row alone (verify names it) while the rest decode."""
    steps = np.arange(40)
    with _forty_zstd_frames(pool_path, 4) as (frames, field, entries):
        start = int(entries[7, 0]) % field.heap_nbytes
        field.heap[start:start + 4] = 0  # the frame's magic number: no longer a zstd frame
        positions = [int(entries[0, 0]), field.head_position, field.max_length]
        out, _, bad = field.read(steps, entries, positions)
    np.testing.assert_array_equal(bad, steps == 7)
    np.testing.assert_array_equal(out[steps != 7], frames[steps != 7])


def test_a_zstandard_without_batches_decodes_row_by_row(pool_path, monkeypatch):
    """python-zstandard's CFFI backend has no BufferWithSegments: its codec offers no batch decode,
    and batches decode row by row as with any codec."""
    zstandard = pytest.importorskip("zstandard")
    from expstore.codecs import batch_decoder, registry

    monkeypatch.delattr(zstandard, "BufferWithSegments")
    monkeypatch.setattr(registry, "_BUILT", {})
    codec = registry.get_codec("zstd:5")
    assert batch_decoder(codec) is None
    frames = np.random.default_rng(5).integers(0, 4, (70, 84, 84), dtype=np.uint8)
    schema = {"obs": expstore.Field((84, 84), "uint8", codec="zstd:5"), "reward": ((), "float32")}
    with expstore.open(pool_path, "w", capacity=128, schema=schema, fsync=False) as pool:
        pool.extend({"obs": frames, "reward": np.zeros(70, np.float32)})
        np.testing.assert_array_equal(pool.read(np.arange(70))["obs"], frames)
        assert pool._heaps.by_name["obs"]._batch_decoder is None


def test_a_schema_of_heap_fields_only_extends_and_converts(pool_path, tmp_path):
    """No fixed field: the episode bookkeeping of an extend counts the rows without a column."""
    schema = {"obs": expstore.Field((4,), "uint8", codec="zstd")}
    with expstore.open(pool_path, "w", capacity=100, schema=schema) as pool:
        pool.extend({"obs": np.arange(40, dtype=np.uint8).reshape(10, 4)})
        pool.append({"obs": np.full(4, 7, np.uint8)})
        assert len(pool) == 11
    raw = str(tmp_path / "raw.h5")
    with expstore.open(raw, "w", capacity=100, schema={"obs": ((4,), "uint8")}) as pool:
        pool.extend({"obs": np.arange(40, dtype=np.uint8).reshape(10, 4)})
    copy = str(tmp_path / "copy.zarr")
    convert(raw, copy, codecs={"obs": "zstd"})
    with expstore.open(copy) as pool:
        np.testing.assert_array_equal(pool[:]["obs"], np.arange(40, dtype=np.uint8).reshape(10, 4))
