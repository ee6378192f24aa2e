"""Smoke runs of the reference trainer: online, resume after SIGKILL, offline (both backends)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gymnasium")

from conftest import BACKENDS

import expstore
from expstore.train import main
from expstore.training.progress import read_metrics

TINY = ["--hidden-units", "32", "--batch-size", "32", "--eval-episodes", "1", "--log-interval", "0.5"]


def online_args(run_dir, backend: str, total_steps: int, checkpoint_every: int = 100) -> list[str]:
    return ["--run-dir", str(run_dir), "--backend", backend, "--total-steps", str(total_steps),
            "--learning-starts", "100", "--eval-every", "200", "--checkpoint-every", str(checkpoint_every), *TINY]


def load_checkpoint(run_dir) -> dict:
    return torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)


def pool_file(run_dir, backend: str) -> str:
    return os.path.join(run_dir, "pool" + BACKENDS[backend])


@pytest.fixture(scope="module")
def online_runs(tmp_path_factory) -> dict:
    """One short online run per backend, shared by the tests that inspect its outputs."""
    runs = {}
    for backend in BACKENDS:
        run_dir = tmp_path_factory.mktemp(f"online-{backend}")
        assert main(online_args(run_dir, backend, total_steps=400)) == 0
        runs[backend] = run_dir
    return runs


def test_online_run_records_trains_and_reports(online_runs, backend):
    run_dir = online_runs[backend]
    with expstore.open(pool_file(run_dir, backend), "r") as pool:
        assert len(pool) == 400 and pool.attrs["env_id"] == "Pendulum-v1"
        rows = pool[0:400]
    assert rows["truncated"].sum() == 2  # Pendulum's 200-step time limit, twice
    assert not rows["terminated"].any()
    # the recorder stamps each row with the SAC update count of the policy that acted
    assert not rows["policy_version"][:101].any() and rows["policy_version"][-1] == 299
    np.testing.assert_array_equal(rows["obs"][1:200], rows["next_obs"][0:199])  # one episode, in order
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint["run_state"]["step"] == 400 and checkpoint["agent"]["updates"] == 300
    assert checkpoint["pool_path"] == os.path.abspath(pool_file(run_dir, backend))
    records = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    assert [r["step"] for r in records if r["kind"] == "eval"] == [200, 400]
    assert [r["step"] for r in records if r["kind"] == "episode"] == [200, 400]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 400 and summary["mean_return_last_eval_episodes"] < 0
    assert (run_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "step " in (run_dir / "train.log").read_text()  # the progress line


def test_rerunning_a_finished_run_changes_nothing(online_runs, tmp_path):
    run_dir = online_runs["hdf5"]
    before = load_checkpoint(run_dir)["agent"]["updates"]
    assert main(["--run-dir", str(run_dir)]) == 0  # the saved config wins; it is already complete
    assert load_checkpoint(run_dir)["agent"]["updates"] == before
    with expstore.open(pool_file(run_dir, "hdf5"), "r") as pool:
        assert len(pool) == 400


@pytest.mark.parametrize("workers", [0, 2])
def test_offline_td3bc_trains_from_a_pool_without_the_env(online_runs, tmp_path, backend, workers):
    run_dir = tmp_path / "offline"
    pool = pool_file(online_runs[backend], backend)
    assert main(["--offline", "--pool", pool, "--run-dir", str(run_dir), "--total-steps", "200",
                 "--eval-every", "100", "--checkpoint-every", "100", "--workers", str(workers), *TINY]) == 0
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint["agent"]["updates"] == 200 and checkpoint["pool_path"] == os.path.abspath(pool)
    evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [100, 200]
    assert (run_dir / "learning_curve.png").exists()
    with expstore.open(pool, "r") as reopened:
        assert len(reopened) == 400  # read-only: the pool is untouched


def test_offline_without_a_pool_is_a_clear_error(tmp_path, caplog):
    assert main(["--offline", "--run-dir", str(tmp_path / "x")]) == 2
    assert "--pool" in caplog.text


def read_until(stream, marker: str) -> list[str]:
    lines = []
    for line in stream:
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"the trainer exited before printing {marker!r}:\n{''.join(lines)}")


def test_resume_after_sigkill_continues_from_the_checkpoint(tmp_path, backend):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "expstore.train", *online_args(run_dir, backend, 900, checkpoint_every=300)]
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        read_until(child.stderr, "checkpoint at step 300")
        with expstore.open(pool_file(run_dir, backend), "r") as pool:  # a reader beside the writer
            committed = pool[0:len(pool)]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
    assert len(committed["step_id"]) >= 300
    checkpoint = load_checkpoint(run_dir)
    killed_at = checkpoint["run_state"]["step"]
    assert killed_at >= 300 and checkpoint["agent"]["updates"] == killed_at - 100

    restarted = subprocess.run(command, check=False, stderr=subprocess.PIPE, text=True, timeout=300)
    assert restarted.returncode == 0, restarted.stderr
    assert f"checkpoint at step {killed_at}, updates {killed_at - 100}" in restarted.stderr
    with expstore.open(pool_file(run_dir, backend), "r") as pool:
        assert len(pool) == 900
        after = pool[0:len(committed["step_id"])]
    for name, values in committed.items():  # everything committed before the kill, bit for bit
        np.testing.assert_array_equal(after[name], values)
    final = load_checkpoint(run_dir)
    assert final["run_state"]["step"] == 900
    assert final["agent"]["updates"] > checkpoint["agent"]["updates"]
