"""verify, convert, merge and info on pools with heap fields (ragged, or with a codec)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import expstore
from expstore.errors import InvalidArgumentError, SchemaError
from expstore.maintenance.convert import convert, merge
from expstore.maintenance.verify import verify
from tests.helpers.cli import run
from tests.helpers.heap_rows import assert_rows_match, heap_batch, heap_schema
from tests.helpers.pools import BACKENDS


def _make(path: str, rows: int = 400, checksums: bool = True, heap_bytes: int = 60_000) -> tuple[int, int]:
    with expstore.open(path, "w", capacity=300, schema=heap_schema(), heap_bytes=heap_bytes,
                       checksums=checksums) as pool:
        pool.extend(heap_batch(range(rows)))
        return pool.window


def _flip_heap_byte(path: str, name: str, step: int) -> None:
    with expstore.open(path) as pool:
        entry = pool.mapped.views[name][step % pool.ring.slots]
        extent = pool.layout.internal[f"_heap_{name}"]
    offset = extent.offset + int(entry[0]) % extent.nbytes
    with open(extent.path, "r+b") as fh:
        old = os.pread(fh.fileno(), 1, offset)
        os.pwrite(fh.fileno(), bytes([old[0] ^ 0xFF]), offset)


def test_verify_checks_heap_bytes_against_their_crcs(pool_path):
    low, high = _make(pool_path)
    report = verify(pool_path)
    assert report.ok, report.findings
    assert report.facts["heap_rows_checked"] == 3 * (high - low)  # every row of the three heap fields
    _flip_heap_byte(pool_path, "obs", low + 5)
    report = verify(pool_path)
    assert not report.ok
    assert f"heap bytes of 1 row (step {low + 5}) changed since their commit" in report.findings[0]
    assert len(report.findings) == 1  # the row is not reported again as one that does not decode


def test_verify_finds_a_damaged_index_entry_without_checksums(pool_path):
    low, _high = _make(pool_path, checksums=False)
    with expstore.open(pool_path, "r+") as pool:
        pool.mapped.views["tokens"][(low + 3) % pool.ring.slots, 1] = 10**9  # its byte count
    report = verify(pool_path)
    assert any(f"heap index entries of 1 row (step {low + 3}) are damaged" in finding
               for finding in report.findings), report.findings
    with expstore.open(pool_path) as pool, pytest.raises(expstore.errors.CorruptStoreError):
        pool.read([low + 3])


@pytest.mark.parametrize("codec", ["raw", "lz4", "zstd:9"])
def test_convert_changes_codecs_and_keeps_every_row(pool_path, tmp_path, codec):
    low, high = _make(pool_path)
    dst = str(tmp_path / "copy.zarr")
    result = convert(pool_path, dst, codecs={"obs": codec, "tokens": None if codec == "raw" else codec})
    assert result.rows == high - low
    with expstore.open(dst) as copy:
        assert copy.schema["obs"].codec == (None if codec == "raw" else codec)
        assert copy.schema["obs"].uses_heap == (codec != "raw")
        assert copy.window == (low, high)
        assert_rows_match(copy[:])
        assert len(copy.episodes()) > 0


def test_convert_sets_heap_sizes_and_a_smaller_heap_keeps_the_newest(pool_path, tmp_path):
    low, high = _make(pool_path)
    dst = str(tmp_path / "small.h5")
    convert(pool_path, dst, heap_bytes={"tokens": 2000})
    with expstore.open(dst) as copy:
        assert copy.heap_usage()["tokens"]["heap_nbytes"] == 2000
        assert copy.window[1] == high and len(copy) < high - low
        assert copy.window_bound == "heap 'tokens'"
        assert_rows_match(copy[:])
    same = str(tmp_path / "same.h5")
    convert(pool_path, same)
    with expstore.open(same) as copy, expstore.open(pool_path) as source:
        assert {n: u["heap_nbytes"] for n, u in copy.heap_usage().items()} == \
            {n: u["heap_nbytes"] for n, u in source.heap_usage().items()}


def test_merge_of_heap_pools(tmp_path):
    paths = [str(tmp_path / f"part{i}{suffix}") for i, suffix in enumerate(BACKENDS.values())]
    for path in paths:
        _make(path, rows=50)
    dst = str(tmp_path / "all.h5")
    result = merge(paths, dst)
    assert result.rows == 100
    with expstore.open(dst) as merged:
        batch = merged[:]
    assert_rows_match({**batch, "step_id": np.concatenate([np.arange(50), np.arange(50)])})


def test_convert_errors(pool_path, tmp_path):
    _make(pool_path)
    with pytest.raises(InvalidArgumentError, match="does not store"):
        convert(pool_path, str(tmp_path / "a.h5"), codecs={"nope": "zstd"})
    with pytest.raises(SchemaError, match="unknown codec 'brotli'"):
        convert(pool_path, str(tmp_path / "b.h5"), codecs={"obs": "brotli"})
    with pytest.raises(InvalidArgumentError, match="archive holds fixed-shape fields only"):
        convert(pool_path, str(tmp_path / "c.h5"), compress="auto")
    assert not os.path.exists(tmp_path / "a.h5") and not os.path.exists(tmp_path / "c.h5")


def test_cli_convert_codec_heap_bytes_and_info(pool_path, tmp_path):
    low, high = _make(pool_path)
    dst = str(tmp_path / "copy.h5")
    run("convert", pool_path, dst, "--codec", "obs=lz4", "--codec", "tokens=zstd", "--heap-bytes", "tokens=64k",
        "--heap-bytes", "obs=1M")
    with expstore.open(dst) as copy:
        assert copy.schema["obs"].codec == "lz4" and copy.schema["tokens"].codec == "zstd:3"
        assert copy.heap_usage()["tokens"]["heap_nbytes"] == 64 << 10
        assert_rows_match(copy[:])
    info = run("info", dst).output
    assert "obs: (16, 16) uint8 codec lz4" in info and "tokens: (N,) int32 codec zstd:3" in info
    assert "heaps:" in info and "ratio" in info and "window bound:" in info
    for args, message in [(["--codec", "obs"], "NAME=VALUE"), (["--codec", "obs=snappy"], "unknown codec"),
                          (["--heap-bytes", "lots"], "number of bytes"),
                          (["--heap-bytes", "1M", "--heap-bytes", "obs=1M"], "not both")]:
        result = run("convert", pool_path, str(tmp_path / "bad.h5"), *args, ok=False)
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output
