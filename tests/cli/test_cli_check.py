"""expstore verify/repair and plot, on both backends."""

from __future__ import annotations

import matplotlib.image
import pytest

import expstore
from tests.helpers.cli import assert_error, make_pool, run, run_json


def _tear_commit_slot(path: str, both: bool) -> None:
    with expstore.open(path, "r") as pool:
        extent = pool._layout.commit
    with open(extent.path, "r+b") as fh:
        fh.seek(extent.offset + (0 if both else 4096))
        fh.write(b"\xff" * (8192 if both else 64))


def test_verify_healthy_pool_exits_zero(pool_path):
    make_pool(pool_path)
    assert "healthy" in run("verify", pool_path).output
    report = run_json("verify", pool_path)
    assert report["ok"] and report["findings"] == []


def test_torn_slot_is_found_then_repaired(pool_path):
    make_pool(pool_path)
    _tear_commit_slot(pool_path, both=False)
    result = run("verify", pool_path, ok=False)
    assert result.exit_code == 1 and "damaged" in result.output
    assert "rewrote the damaged commit slot" in run("repair", pool_path).output
    assert run_json("verify", pool_path)["ok"]


def test_both_slots_damaged_needs_reset_window(pool_path):
    make_pool(pool_path)
    _tear_commit_slot(pool_path, both=True)
    result = run("verify", pool_path, "--json", ok=False)
    assert result.exit_code == 1 and "commit slots are damaged" in result.output
    assert_error(run("repair", pool_path, ok=False), "--reset-window")
    assert run_json("repair", pool_path, "--reset-window")["actions"]
    assert run_json("info", pool_path)["length"] == 0


def test_verify_and_repair_of_missing_path(tmp_path):
    result = run("verify", tmp_path / "none.h5", ok=False)
    assert result.exit_code == 1 and "no pool at" in result.output
    assert run("repair", tmp_path / "none.h5", ok=False).exit_code == 1


def test_repair_refuses_while_a_writer_runs(pool_path):
    make_pool(pool_path)
    with expstore.open(pool_path, "a"):
        assert_error(run("repair", pool_path, ok=False), "another process")


def test_plot_writes_an_image(tmp_path, pool_path):
    make_pool(pool_path, rows=300, capacity=200)
    out = tmp_path / "pool.png"
    assert "complete episodes" in run("plot", pool_path, "-o", out).output
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 100 and image.shape[1] > 3 * image.shape[0] // 2


def test_plot_needs_a_reward_field(tmp_path):
    path = str(tmp_path / "x.h5")
    with expstore.open(path, "w", capacity=5, schema={"obs": ((2,), "float32")}):
        pass
    assert_error(run("plot", path, "-o", tmp_path / "x.png", ok=False), "no 'reward' field")


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_group_options(args):
    assert "expstore" in run(*args).output


API_ADVICE = ("mode='", "backend='", "=True", "expstore.open(")


def _no_api_advice(output: str) -> None:
    for phrase in API_ADVICE:
        assert phrase not in output, output


def test_repair_of_a_file_that_is_not_a_pool_leaves_no_lock_file(tmp_path):
    text = tmp_path / "text.h5"
    text.write_text("hello\n")
    assert_error(run("repair", text, ok=False), "not an HDF5 file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.h5"]


def test_repair_keeps_a_lock_file_that_was_there(pool_path):
    import os

    make_pool(pool_path)
    assert os.path.exists(pool_path + ".lock")  # left by the writer that made it, with an empty record
    run("repair", pool_path)
    assert os.path.exists(pool_path + ".lock")


def test_verify_text_mentions_sparse_files(pool_path):
    import subprocess

    make_pool(pool_path, rows=10, capacity=100_000)
    with expstore.open(pool_path) as pool:
        data_file = pool._layout.fields["obs"].path
    subprocess.run(["fallocate", "--dig-holes", data_file], check=True)
    if not expstore.backends.files.is_sparse(data_file):
        pytest.skip("this file system keeps zero blocks allocated")
    text = run("verify", pool_path).output
    assert "healthy" in text and "sparse" in text and "preallocate" in text, text


@pytest.mark.parametrize("case", ["unknown suffix", "not a pool", "missing", "writer", "both slots", "dir as h5",
                                  "file as zarr"])
def test_cli_errors_give_cli_advice(tmp_path, backend, case):
    """The library's messages tell a Python caller which argument to pass; the CLI names the flag."""
    pool = make_pool(str(tmp_path / f"pool{'.h5' if backend == 'hdf5' else '.zarr'}"))
    if case == "unknown suffix":
        result = run("convert", pool, tmp_path / "copy.bin", ok=False)
        assert_error(result, "--backend hdf5 or --backend zarr")
    elif case == "not a pool":
        (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
        for command in ("info", "repair"):
            assert_error(result := run(command, tmp_path / "junk.h5", ok=False), "not an HDF5 file")
            _no_api_advice(result.output)
        result = run("verify", tmp_path / "junk.h5", ok=False)
    elif case == "missing":
        assert_error(result := run("sample", tmp_path / "none.h5", ok=False), "no pool at")
        _no_api_advice(result.output)
        result = run("verify", tmp_path / "none.h5", ok=False)
        assert "no pool at" in result.output
    elif case == "writer":
        with expstore.open(pool, "a"):
            result = run("repair", pool, ok=False)
        assert_error(result, "another process", "expstore info")
    elif case == "both slots":
        _tear_commit_slot(pool, both=True)
        assert_error(result := run("repair", pool, ok=False), "--reset-window")
    elif case == "dir as h5":
        (tmp_path / "dir.h5").mkdir()
        assert_error(result := run("info", tmp_path / "dir.h5", ok=False), "is a directory", ".zarr suffix")
        _no_api_advice(result.output)
        result = run("convert", pool, tmp_path / "dir.h5", "--overwrite", ok=False)
        assert result.exit_code == 1
    else:
        (tmp_path / "file.zarr").write_text("x")
        assert_error(result := run("info", tmp_path / "file.zarr", ok=False), "a file, not a directory")
    _no_api_advice(result.output)
