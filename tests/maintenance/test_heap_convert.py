"""convert and merge of pools with heap fields: damaged rows left out and reported, heaps sized
for the rows copied (and the rows a too small heap evicted reported), dictionaries carried over,
codecs that differ between merged pools, and the CLI's options and messages for all of it."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

import expstore
from expstore.errors import CorruptStoreError
from expstore.maintenance.convert import convert, merge
from expstore.maintenance.verify import verify
from tests.helpers.cli import assert_error, run
from tests.helpers.heap_rows import (
    assert_rows_match,
    heap_batch,
    heap_derived_batch,
    heap_derived_schema,
    heap_row,
    heap_schema,
)
from tests.helpers.pools import BACKENDS


def _make(path: str, rows: int = 400, checksums: bool = False, heap_bytes: int = 60_000, capacity: int = 300,
          schema: dict | None = None) -> tuple[int, int]:
    with expstore.open(path, "w", capacity=capacity, schema=schema or heap_schema(), heap_bytes=heap_bytes,
                       checksums=checksums) as pool:
        pool.extend(heap_batch(range(rows)))
        return pool.window


def _damage_row(path: str, name: str, step: int, at_start: bool = True) -> None:
    """Flip the first byte of a row's heap bytes (a zstd frame's magic: it no longer decodes), or
    one in its middle (a raw row then reads as other values)."""
    with expstore.open(path) as pool:
        entry = pool.mapped.views[name][step % pool.ring.slots]
        extent = pool.layout.internal[f"_heap_{name}"]
    offset = extent.offset + int(entry[0]) % extent.nbytes + (0 if at_start else int(entry[1]) // 2)
    with open(extent.path, "r+b") as fh:
        old = os.pread(fh.fileno(), 1, offset)
        os.pwrite(fh.fileno(), bytes([old[0] ^ 0xFF]), offset)


def _copied_rows(path: str) -> dict:
    with expstore.open(path) as copy:
        return copy[:]


def _token_step(low: int, high: int) -> int:
    """A step of [low, high) with at least two tokens, so that its raw row has bytes to damage."""
    return next(step for step in range(low + 7, high) if len(heap_row(step)["tokens"]) >= 2)


# ---------------------------------------------------------------------------------- damaged rows
def test_convert_leaves_out_rows_that_do_not_decode_and_reports_them(pool_path, tmp_path):
    low, high = _make(pool_path)
    _damage_row(pool_path, "obs", low + 5)
    dst = str(tmp_path / "copy.zarr")
    result = convert(pool_path, dst)
    assert (result.damaged_rows, result.damaged_steps) == (1, {pool_path: [low + 5]})
    kept = [step for step in range(low, high) if step != low + 5]
    assert result.rows == len(kept)
    batch = _copied_rows(dst)
    assert len(batch["step_id"]) == len(kept)
    assert_rows_match(batch, steps=kept)  # every row as written: none zeroed
    assert verify(dst).ok


def test_convert_leaves_out_raw_rows_that_fail_their_crc(pool_path, tmp_path):
    low, high = _make(pool_path, checksums=True)
    damaged = _token_step(low, high)
    _damage_row(pool_path, "tokens", damaged, at_start=False)
    dst = str(tmp_path / "copy.h5")
    result = convert(pool_path, dst)
    assert (result.damaged_rows, result.damaged_steps) == (1, {pool_path: [damaged]})
    kept = [step for step in range(low, high) if step != damaged]
    assert_rows_match(_copied_rows(dst), steps=kept)
    report = verify(dst)
    assert report.ok and report.facts["heap_rows_checked"] == 3 * len(kept)  # the copy keeps checksums


def test_merge_and_dedup_leave_out_damaged_rows(tmp_path):
    paths = [str(tmp_path / f"part{i}{suffix}") for i, suffix in enumerate(BACKENDS.values())]
    windows = [_make(path, rows=60) for path in paths]
    _damage_row(paths[1], "obs", windows[1][0] + 2)
    result = merge(paths, str(tmp_path / "all.h5"))
    assert (result.rows, result.damaged_rows) == (119, 1)
    assert result.damaged_steps == {paths[1]: [2]}
    assert_rows_match(_copied_rows(str(tmp_path / "all.h5")), steps=[*range(60), 0, 1, *range(3, 60)])
    deduplicated = convert(paths[1], str(tmp_path / "unique.h5"), dedup=True)
    assert (deduplicated.rows, deduplicated.damaged_rows) == (59, 1)


def test_a_damaged_pool_that_derives_next_observations_is_refused(pool_path, tmp_path):
    with expstore.open(pool_path, "w", capacity=300, schema=heap_derived_schema(), heap_bytes=200_000,
                       derive_next_obs=True) as pool:
        pool.extend(heap_derived_batch(range(100)))
    _damage_row(pool_path, "obs", 40)
    with pytest.raises(CorruptStoreError, match=r"steps 40\b.*capacity=59 \(CLI: --capacity 59\)"):
        convert(pool_path, str(tmp_path / "copy.h5"))
    assert not os.path.exists(tmp_path / "copy.h5")


def test_cli_reports_damaged_rows_on_stderr(pool_path, tmp_path):
    low, _high = _make(pool_path)
    _damage_row(pool_path, "obs", low + 5)
    result = run("convert", pool_path, tmp_path / "copy.h5")
    assert "left out 1 rows whose heap bytes cannot be read" in result.stdout
    assert "warning: left out 1 rows" in result.stderr and f"steps {low + 5} of {pool_path}" in result.stderr
    assert result.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------- heap sizes
def _long_rows_pool(path: str, rows: int = 400) -> None:
    """Rows of up to MAX_TOKENS tokens in a heap sized for them: open's default, which counts a
    ragged row as 64 elements, would hold them; rows of 300 tokens it would not."""
    schema = {"tokens": expstore.Field((None,), "int32"), "reward": ((), "float32")}
    with expstore.open(path, "w", capacity=rows, schema=schema, heap_bytes=rows * 300 * 4 * 2) as pool:
        pool.extend({"tokens": [np.full(300, step, np.int32) for step in range(rows)],
                     "reward": np.arange(rows, dtype=np.float32)})


def test_merge_and_a_new_capacity_size_heaps_for_the_rows(tmp_path, backend):
    suffix = BACKENDS[backend]
    paths = [str(tmp_path / f"part{i}{suffix}") for i in range(2)]
    for path in paths:
        _long_rows_pool(path)
    merged = merge(paths, str(tmp_path / f"all{suffix}"))
    grown = convert(paths[0], str(tmp_path / f"grown{suffix}"), capacity=1000)
    for result, rows in [(merged, 800), (grown, 400)]:
        assert (result.rows, result.heap_evicted_rows) == (rows, 0)
        with expstore.open(result.path) as copy:
            assert len(copy) == rows
            assert copy.window_bound in (None, "capacity")


def test_a_heap_too_small_reports_the_rows_it_evicted(pool_path, tmp_path):
    low, high = _make(pool_path)
    result = convert(pool_path, str(tmp_path / "small.h5"), heap_bytes={"tokens": 2000})
    with expstore.open(result.path) as copy:
        assert result.rows == len(copy) < high - low
        assert result.heap_evicted_rows == high - low - len(copy)
        assert (result.first_step_id, result.next_step_id) == copy.window
        assert result.window_bound == "heap 'tokens'"
    printed = run("merge", pool_path, "-o", tmp_path / "merged.h5", "--heap-bytes", "tokens=2000").stdout
    assert f"wrote {result.rows} rows" in printed
    assert f"heap 'tokens' evicted the {result.heap_evicted_rows} oldest rows copied" in printed
    assert "pass a larger --heap-bytes" in printed


def test_a_heap_named_alone_leaves_the_others_at_the_sources_sizes(pool_path, tmp_path):
    _make(pool_path)
    run("convert", pool_path, tmp_path / "copy.h5", "--heap-bytes", "tokens=64k")
    with expstore.open(pool_path) as source, expstore.open(str(tmp_path / "copy.h5")) as copy:
        sizes = {name: usage["heap_nbytes"] for name, usage in copy.heap_usage().items()}
        assert sizes == {**{name: usage["heap_nbytes"] for name, usage in source.heap_usage().items()},
                         "tokens": 64 << 10}


# ---------------------------------------------------------------------------------- dictionaries
def test_convert_keeps_a_trained_dictionary(pool_path, tmp_path):
    pytest.importorskip("zstandard")
    _make(pool_path, rows=2100, capacity=500, heap_bytes=4 << 20, schema=heap_schema("zstd:3+dict"))
    with expstore.open(pool_path) as source:
        assert source.heap_usage()["obs"]["dictionary"] > 0 and len(source) < 2000
    same, other = str(tmp_path / "same.zarr"), str(tmp_path / "other.h5")
    convert(pool_path, same)
    convert(pool_path, other, codecs={"obs": "zstd:1+dict"})  # another codec: trained for the copy, not yet
    with expstore.open(same) as copy:
        assert copy.heap_usage()["obs"]["dictionary"] > 0
        assert_rows_match(copy[:])
    with expstore.open(other) as copy:
        assert copy.heap_usage()["obs"]["dictionary"] == 0
    assert "dictionary not trained yet" not in run("info", same).stdout


# ---------------------------------------------------------------------------------- merge codecs, CLI
def test_merge_takes_pools_that_differ_in_codecs(tmp_path, backend):
    suffix = BACKENDS[backend]
    first, second = str(tmp_path / f"a{suffix}"), str(tmp_path / f"b{suffix}")
    _make(first, rows=50)
    _make(second, rows=50, schema=heap_schema("lz4"))
    merged = merge([first, second], str(tmp_path / f"m{suffix}"))
    recoded = merge([second, first], str(tmp_path / f"r{suffix}"), codecs={"obs": "zstd:5"})
    for result, codec in [(merged, "zstd:3"), (recoded, "zstd:5")]:
        with expstore.open(result.path) as copy:
            assert copy.schema["obs"].codec == codec
            assert_rows_match(copy[:], steps=[*range(50), *range(50)])
    run("merge", first, second, "-o", tmp_path / f"cli{suffix}", "--codec", "obs=lz4")
    with expstore.open(str(tmp_path / f"cli{suffix}")) as copy:
        assert copy.schema["obs"].codec == "lz4" and len(copy) == 100


@pytest.mark.parametrize("command", ["convert", "merge"])
def test_cli_mistakes_are_one_line_naming_the_option(pool_path, tmp_path, command):
    _make(pool_path)
    dst = str(tmp_path / "bad.h5")
    where = [pool_path, dst] if command == "convert" else [pool_path, "-o", dst]
    for args, words in [(["--codec", "obs=zstd", "--codec", "obs=lz4"], ["'obs' twice", "give each field once"]),
                        (["--heap-bytes", "obs="], ["e.g. --heap-bytes obs=512M"]),
                        (["--heap-bytes", "nope=1M"], ["--heap-bytes names ['nope']"]),
                        (["--heap-bytes", "obs=10"], ["pass a larger --heap-bytes"])]:
        result = run(command, *where, *args, ok=False)
        assert_error(result, *words)
        assert "heap_bytes" not in result.output and "zstd:3" not in result.output.split("e.g.")[-1]
        assert not os.path.exists(dst)


def test_a_copy_that_reads_damaged_rows_raises_an_expstore_error_naming_the_pool():
    from expstore.errors import DamagedRowsError, ExpstoreError

    error = DamagedRowsError("runs/pool.h5")
    assert isinstance(error, CorruptStoreError)
    assert isinstance(error, ExpstoreError) and error.path == "runs/pool.h5"
    assert str(error) == "runs/pool.h5 holds heap rows that can no longer be read; the pool is damaged: run " \
        "`expstore verify`"


def test_a_copy_without_damaged_rows_is_retried_when_a_writer_outruns_it(pool_path, tmp_path, monkeypatch, caplog):
    """The copy that leaves damaged rows out reads them as the first copy does: rows a writer
    evicted meanwhile make it start again further ahead, not fail (StepNotFoundError)."""
    from expstore.maintenance import damaged

    low, _high = _make(pool_path)  # 182 rows: the heap bounds the window
    _damage_row(pool_path, "obs", low + 150)
    writer = expstore.open(pool_path, "a", fsync=False)
    calls = []
    read_kept = damaged.WithoutDamagedRows.read_kept

    def evicting(self, start, stop):
        calls.append(start)
        if len(calls) == 2:  # after the first slice: the writer evicts rows the copy has not read yet
            head = writer.next_step_id
            writer.extend(heap_batch(range(head, head + 60)))
            writer.flush()
        return read_kept(self, start, stop)

    monkeypatch.setattr(damaged.WithoutDamagedRows, "read_kept", evicting)
    try:
        with caplog.at_level(logging.INFO, logger="expstore.convert"):
            result = convert(pool_path, str(tmp_path / "copy.h5"), slice_nbytes=40 * 1024)  # 39 rows a slice
    finally:
        writer.close()
    assert any("before the copy read it; copying again from a later row (attempt 2)" in record.getMessage()
               for record in caplog.records), [record.getMessage() for record in caplog.records]
    assert len(calls) > 2 and (result.damaged_rows, result.damaged_steps) == (1, {pool_path: [low + 150]})
    batch = _copied_rows(str(tmp_path / "copy.h5"))
    steps = batch["reward"].astype(np.int64)  # the rows' own steps: the copy is tagged anew
    assert low + 150 not in steps and len(steps) == result.rows and (np.diff(steps) > 0).all()
    assert_rows_match(batch, steps=steps)


def test_the_warning_lists_exactly_listed_steps_without_dots(pool_path, tmp_path):
    low, _high = _make(pool_path)
    for k in range(5):
        _damage_row(pool_path, "obs", low + 10 + 3 * k)
    result = run("convert", pool_path, tmp_path / "copy.h5")
    listed = ", ".join(str(low + 10 + 3 * k) for k in range(5))
    assert f"steps {listed} of {pool_path};" in result.stderr, result.stderr
    _damage_row(pool_path, "obs", low + 40)
    result = run("convert", pool_path, tmp_path / "again.h5")
    assert f"steps {listed}, ... of {pool_path};" in result.stderr, result.stderr
