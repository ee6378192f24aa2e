"""expstore verify/repair and plot, on both backends."""

from __future__ import annotations

import matplotlib.image
import pytest
from cli_helpers import assert_error, make_pool, run, run_json

import expstore


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
