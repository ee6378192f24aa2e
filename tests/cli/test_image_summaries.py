"""head/tail/show/sample/info show image fields as a layout, shape and pixel summary, never a dump."""

from __future__ import annotations

import json

import numpy as np
import pytest

import expstore
from tests.helpers.cli import run

SUFFIX = {"hdf5": ".h5", "zarr": ".zarr"}


@pytest.fixture
def frames_pool(tmp_path, backend):
    path = str(tmp_path / ("frames" + SUFFIX[backend]))
    schema = {"obs": ((84, 84), "uint8"), "rgb": ((3, 64, 64), "uint8"), "reward": ((), "float32")}
    with expstore.open(path, "w", capacity=10, schema=schema) as pool:
        for i in range(4):
            pool.append({"obs": np.full((84, 84), 10 * i, np.uint8), "rgb": np.full((3, 64, 64), i, np.uint8),
                         "reward": float(i)})
    return path


@pytest.mark.parametrize("command", [["head"], ["tail", "-n", "2"], ["show", "--start", "1", "--count", "2"],
                                     ["sample", "-n", "3", "--seed", "0"]])
def test_tables_summarise_frames(frames_pool, command):
    output = run(command[0], frames_pool, *command[1:]).output
    assert "<image HW 84x84 mean" in output and "<image CHW 3x64x64 mean" in output
    assert len(output) < 2000  # one short line per row, not 7,056 numbers
    if command[0] == "head":
        assert "<image HW 84x84 mean 30.0 min 30 max 30>" in output.splitlines()[4]


def test_sample_json_and_info(frames_pool):
    batch = json.loads(run("sample", frames_pool, "-n", "2", "--seed", "1", "--json").output)
    assert batch["obs"][0]["shape"] == [84, 84] and set(batch["obs"][0]) == {"shape", "dtype", "mean", "min", "max"}
    assert batch["reward"] == [float(s) for s in batch["step_id"]]  # other fields as before
    info = run("info", frames_pool).output
    assert "obs: (84, 84) uint8 (image, HW)" in info and "rgb: (3, 64, 64) uint8 (image, CHW)" in info
    assert "reward: () float32\n" in info
