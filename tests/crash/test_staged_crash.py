"""kill -9 of a writer whose appends are staged (core/staging.py): only uncommitted rows are lost,
never a committed or a torn one, whether the staged rows were still in RAM, drained into the maps
by a read of the writer's own, or drained because the stage filled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import expstore
from tests.helpers.pools import BACKENDS, pendulum_schema, rows_for

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, expstore
from tests.helpers.pools import pendulum_schema, rows_for
path, committed, staged, how = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
pool = expstore.open(path, "w", capacity=5000, schema=pendulum_schema(), commit_every=100_000,
                     commit_interval_s=3600.0, fsync=False)
rows = rows_for(np.arange(committed + staged))
names = list(pool.schema)
for step in range(committed + staged):
    if step == committed:
        pool.flush()
    pool.append({name: rows[name][step] for name in names}, env_id=step % 2)
if how == "drained":
    assert pool[len(pool) - 1]["reward"] == -(committed + staged - 1)  # a read of its own drains the stage
print("READY", pool.next_step_id, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("how, staged", [("in RAM", 37), ("drained", 37), ("stage filled", 2500)])
def test_kill9_with_staged_rows_loses_only_uncommitted_rows(tmp_path, backend, how, staged):
    path = str(tmp_path / f"pool{BACKENDS[backend]}")
    committed = 1234
    child = subprocess.Popen([sys.executable, "-c", CHILD, CHECKOUT, path, str(committed), str(staged), how],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline().split()
        assert line[:1] == ["READY"], child.stderr.read()
        assert int(line[1]) == committed + staged  # the writer counted its staged rows
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with expstore.open(path, "r") as pool:
        assert (pool.first_step_id, pool.next_step_id) == (0, committed)
        batch = pool[:]
    for name, values in rows_for(np.arange(committed)).items():
        np.testing.assert_array_equal(batch[name], values, err_msg=name)
    with expstore.open(path, "a", schema=pendulum_schema()) as pool:  # a writer resumes after the crash
        episodes = pool.episodes()
        assert episodes["cut_off"].sum() >= 1 and not episodes["open"].any()  # open at the last commit: cut off
        rows = rows_for(np.arange(committed, committed + 10))
        for step in range(10):
            pool.append({name: values[step] for name, values in rows.items()})
    with expstore.open(path, "r") as pool:
        assert pool.next_step_id == committed + 10
        np.testing.assert_array_equal(pool[:]["reward"], -np.arange(committed + 10, dtype=np.float32))
