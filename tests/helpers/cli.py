"""Shared helpers of the CLI tests: pools with known rows, and the CliRunner."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

import expstore
from expstore.cli import cli
from tests.helpers.pools import pendulum_schema, rows_for


def make_pool(path: str, rows: int = 300, capacity: int = 200, attrs: dict | None = None) -> str:
    with expstore.open(path, "w", capacity=capacity, schema=pendulum_schema(),
                       attrs=attrs if attrs is not None else {"env_id": "Pendulum-v1"}) as pool:
        pool.extend(rows_for(np.arange(rows)))
    return path


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def run_json(*args: str):
    return json.loads(run(*args, "--json").output)


def all_rows(path: str) -> dict[str, np.ndarray]:
    with expstore.open(path, "r") as pool:
        batch = pool[:]
    batch.pop("step_id")
    return batch


def assert_same_rows(left: dict, right: dict) -> None:
    assert list(left) == list(right)
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


def assert_error(result, *words: str) -> None:
    """A user mistake: exit 1, one line, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, result.output
