"""expstore formats, and export/import --format parquet through the command line."""

from __future__ import annotations

import numpy as np
import pytest

import expstore
from tests.helpers.cli import all_rows, assert_error, assert_same_rows, make_pool, run
from tests.helpers.pools import BACKENDS

pq = pytest.importorskip("pyarrow.parquet")


def test_formats_lists_every_registered_format_with_its_options():
    out = run("formats").output
    for name in ("d4rl", "minari", "parquet"):
        assert name in out
    assert "--compression" in out and "--dataset-id" in out


def test_parquet_round_trip_on_the_command_line(tmp_path, pool_path, backend):
    make_pool(pool_path, rows=300, capacity=200)
    file = tmp_path / "rows.parquet"
    out = run("export", pool_path, file, "--compression", "snappy").output
    assert "wrote 200 rows in" in out and "Parquet file" in out
    assert pq.ParquetFile(file).metadata.row_group(0).column(3).compression == "SNAPPY"
    back = str(tmp_path / f"back{BACKENDS[backend]}")
    run("import", file, back)  # the format is told from the suffix
    assert_same_rows(all_rows(back), all_rows(pool_path))
    with expstore.open(back) as a, expstore.open(pool_path) as b:
        assert a.window == b.window and a.attrs == b.attrs
        kept = [table["length"] - table["evicted"] for table in (a.episodes(), b.episodes())]  # rows in the pool
        np.testing.assert_array_equal(*kept)


def test_parquet_mistakes_are_one_line(tmp_path, pool_path):
    make_pool(pool_path)
    assert_error(run("export", pool_path, tmp_path / "x.parquet", "--compression", "zip", ok=False), "--compression")
    assert_error(run("export", pool_path, tmp_path / "x.parquet", "--row-group-mb", "-1", ok=False),
                 "--row-group-mb")
    assert_error(run("export", pool_path, tmp_path / "x.parquet", "--dataset-id", "a-v0", ok=False),
                 "--dataset-id does not apply to --format parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    assert_error(run("import", tmp_path / "junk.parquet", tmp_path / "o.h5", ok=False), "junk.parquet",
                 "not a readable Parquet file")
    assert not (tmp_path / "o.h5").exists()
    assert_error(run("import", tmp_path / "none.parquet", tmp_path / "o.h5", ok=False), "no Parquet file")


def test_lerobot_round_trip_on_the_command_line(tmp_path, backend):
    pytest.importorskip("av")
    pool = str(tmp_path / f"pool{BACKENDS[backend]}")
    with expstore.open(pool, "w", capacity=30, schema={"obs": ((2,), "float32"), "terminated": ((), "bool"),
                                                      "cam": ((16, 16, 3), "uint8")}) as opened:
        opened.extend({"obs": np.arange(60).reshape(30, 2), "terminated": np.arange(30) % 10 == 9,
                       "cam": np.arange(30 * 768).reshape(30, 16, 16, 3) % 251})
    out = run("export", pool, tmp_path / "robot", "--format", "lerobot", "--fps", "15", "--video-codec",
              "lossless").output
    assert "wrote 30 rows in 3 episodes to the LeRobot dataset" in out
    back = str(tmp_path / f"back{BACKENDS[backend]}")
    run("import", tmp_path / "robot", back)  # told from meta/info.json
    assert_same_rows(all_rows(back), all_rows(pool))
    assert "lerobot" in run("formats").output


def test_lerobot_mistakes_are_one_line(tmp_path, pool_path):
    make_pool(pool_path)
    assert_error(run("export", pool_path, tmp_path / "r", "--format", "lerobot", "--video-codec", "vp9", ok=False),
                 "--video-codec vp9")
    assert_error(run("export", pool_path, tmp_path / "r", "--format", "lerobot", "--fps", "0", ok=False), "--fps 0")
    (tmp_path / "empty").mkdir()
    assert_error(run("import", tmp_path / "empty", tmp_path / "o.h5", "--format", "lerobot", ok=False),
                 "info.json is missing")
    assert_error(run("import", tmp_path / "empty", tmp_path / "o.h5", ok=False), "LeRobot dataset")
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "r").exists()
