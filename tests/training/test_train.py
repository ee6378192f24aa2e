"""Runs of the reference trainer (both backends): online, offline, resume after SIGKILL and
Ctrl-C, what a resume keeps and refuses, episode counts across resumes, argument errors."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gymnasium")

import expstore
from expstore.training import online
from expstore.training.main import main
from expstore.training.progress import read_metrics
from tests.helpers.pools import BACKENDS

TINY = ["--hidden-units", "32", "--batch-size", "32", "--eval-episodes", "1", "--log-interval", "0.5"]


def online_args(run_dir, backend: str, total_steps: int, checkpoint_every: int = 100) -> list[str]:
    return ["--run-dir", str(run_dir), "--backend", backend, "--total-steps", str(total_steps),
            "--learning-starts", "100", "--eval-every", "200", "--checkpoint-every", str(checkpoint_every), *TINY]


def load_checkpoint(run_dir) -> dict:
    return torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)


def pool_file(run_dir, backend: str) -> str:
    return os.path.join(run_dir, "pool" + BACKENDS[backend])


def snapshot(run_dir) -> dict[str, tuple[bytes, int]]:
    """Every file of a run directory, with its bytes and modification time."""
    return {str(path): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(Path(run_dir).rglob("*")) if path.is_file()}


def episode_records(run_dir) -> list[dict]:
    return [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if r["kind"] == "episode"]


def the_error(caplog) -> str:
    """The one error line a refused command logs."""
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    return errors[0]


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
    assert [(r["episode"], r["episode_id"]) for r in records if r["kind"] == "episode"] == [(1, 0), (2, 1)]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 400 and summary["mean_return_last_eval_episodes"] < 0
    assert summary["episodes"] == 2 and summary["episodes_cut_off"] == 0
    assert (run_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "step " in (run_dir / "train.log").read_text()  # the progress line


@pytest.mark.parametrize("command", ["bare", "same", "other-device"])
def test_rerunning_a_finished_run_says_so_and_writes_nothing(online_runs, backend, command, caplog):
    run_dir = online_runs[backend]
    before = snapshot(run_dir)
    args = {"bare": ["--run-dir", str(run_dir)], "same": online_args(run_dir, backend, total_steps=400),
            "other-device": ["--run-dir", str(run_dir), "--device", "cpu", "--threads", "2", "--log-interval", "1"]}
    assert main(args[command]) == 0
    assert f"the run in {run_dir} is finished: 400 of 400 env steps" in caplog.text
    assert snapshot(run_dir) == before  # config.json, summary.json, the pool, the log: not touched


def test_a_resume_refuses_changed_settings_naming_each(online_runs, backend, caplog):
    run_dir = online_runs[backend]
    before = snapshot(run_dir)
    assert main(["--run-dir", str(run_dir), "--batch-size", "64", "--seed", "3", "--ere", "--hidden-units", "32"]) == 1
    error = the_error(caplog)
    assert error.startswith("error: --seed 3 (recorded: 0), --batch-size 64 (recorded: 32), --ere on (recorded: off):")
    assert "--hidden-units" not in error  # given with its recorded value: fine
    assert snapshot(run_dir) == before


def test_a_resume_cannot_shorten_a_run(online_runs, backend, caplog):
    run_dir = online_runs[backend]
    before = snapshot(run_dir)
    assert main(["--run-dir", str(run_dir), "--total-steps", "50"]) == 1
    assert "recorded with --total-steps 400; a resume can extend a run" in the_error(caplog)
    assert snapshot(run_dir) == before


def test_episodes_are_counted_from_the_pool_across_resumes(tmp_path, backend, monkeypatch, caplog):
    """Episode numbers in metrics.jsonl and the summary's count continue across a resume from
    an older checkpoint and across one with no checkpoint at all."""
    kept = {}
    save = online.save_checkpoint

    def save_and_keep(path, state):
        save(path, state)
        kept[state["run_state"]["step"]] = Path(path).read_bytes()

    monkeypatch.setattr(online, "save_checkpoint", save_and_keep)
    run_dir = tmp_path / "run"
    assert main(online_args(run_dir, backend, total_steps=450, checkpoint_every=150)) == 0
    # killed at step 450 with the step-150 checkpoint on disk: two ended episodes it does not count
    (run_dir / "checkpoint.pt").write_bytes(kept[150])
    (run_dir / "summary.json").unlink()
    assert main(online_args(run_dir, backend, total_steps=650, checkpoint_every=150)) == 0
    assert "checkpoint at step 150, updates 50; the pool holds 450 committed steps (2 episodes ended)" in caplog.text
    # killed before the first checkpoint of a run: nothing but the pool
    (run_dir / "checkpoint.pt").unlink()
    (run_dir / "summary.json").unlink()
    assert main(online_args(run_dir, backend, total_steps=850, checkpoint_every=150)) == 0
    assert "no checkpoint yet, so the agent starts afresh (0 updates); the pool holds 650 committed steps " \
           "(3 episodes ended)" in caplog.text and "None" not in caplog.text
    with expstore.open(pool_file(run_dir, backend), "r") as pool:
        table = pool.episodes()
    ended = table["terminated"] | table["truncated"]
    records = episode_records(run_dir)
    assert [r["episode"] for r in records] == [1, 2, 3, 4]
    assert [r["episode_id"] for r in records] == table["episode_id"][ended].tolist()
    assert [r["step"] for r in records] == (table["last_step_id"][ended] + 1).tolist() == [200, 400, 650, 850]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["episodes"] == 4
    assert summary["episodes_cut_off"] == table["cut_off"].sum() == 1  # the episode open at 450


@pytest.mark.parametrize(("args", "message"), [
    (["--total-steps", "0"], "--total-steps 0: must be at least 1"),
    (["--total-steps", "-5"], "--total-steps -5: must be at least 1"),
    (["--offline", "--pool", "p.h5", "--total-steps", "0"], "--total-steps 0: must be at least 1"),
    (["--eval-every", "0"], "--eval-every 0: must be at least 1"),
    (["--learning-rate", "0"], "--learning-rate 0.0: must be a positive number"),
    (["--pool", "p.h5"], "--pool: only read by offline (--offline) runs"),
    (["--offline", "--pool", "p.h5", "--ere"], "--ere: only read by online runs"),
    (["--env", "NoSuchEnv-v0"], "cannot make the env 'NoSuchEnv-v0'"),
    (["--device", "gpu"], "--device 'gpu' is not a torch device"),
])
def test_bad_arguments_are_one_line_and_write_nothing(tmp_path, caplog, args, message):
    run_dir = tmp_path / "run"
    assert main(["--run-dir", str(run_dir), *args]) == 1
    assert message in the_error(caplog)
    assert not run_dir.exists()


@pytest.mark.parametrize(("built", "count", "device", "message"), [
    (False, 0, "cuda", "CUDA is not available in this torch build"),
    (True, 0, "cuda", "no CUDA device is visible"),
    (True, 1, "cuda:1", "only 1 CUDA device visible (cuda:0 to cuda:0)"),
])
def test_a_device_this_torch_cannot_use_is_one_line(tmp_path, caplog, monkeypatch, built, count, device, message):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: built)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    run_dir = tmp_path / "run"
    assert main(["--run-dir", str(run_dir), "--device", device]) == 1
    error = the_error(caplog)
    assert message in error and ("--device cpu" in error or "cuda:0" in error)
    assert not run_dir.exists()


def test_a_run_shorter_than_learning_starts_says_it_makes_no_update(tmp_path, backend, caplog):
    run_dir = tmp_path / "run"
    assert main(["--run-dir", str(run_dir), "--backend", backend, "--total-steps", "150", "--learning-starts", "200",
                 "--eval-every", "1000", *TINY]) == 0
    assert "this run makes 0 gradient updates: --total-steps 150 does not pass --learning-starts 200" in caplog.text
    assert json.loads((run_dir / "summary.json").read_text())["updates"] == 0
    # no episode ended and no evaluation ran: no empty learning curve
    assert not (run_dir / "learning_curve.png").exists()
    assert "no learning curve written" in caplog.text


# Two loader workers cost a fresh interpreter each (about 8 s); one backend covers them by default.
@pytest.mark.parametrize("workers", [0, 2])
def test_offline_td3bc_trains_from_a_pool_without_the_env(online_runs, tmp_path, backend, workers, request):
    if workers and backend == "zarr" and not request.config.getoption("--full"):
        pytest.skip("long run: pass --full to include it (hdf5 runs the two workers by default)")
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
    assert main(["--offline", "--run-dir", str(tmp_path / "x")]) == 1
    assert "--pool" in the_error(caplog) and not (tmp_path / "x").exists()


def read_until(stream, marker: str) -> list[str]:
    lines = []
    for line in stream:
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"the trainer exited before printing {marker!r}:\n{''.join(lines)}")


def test_resume_after_sigkill_continues_from_the_checkpoint(tmp_path, backend):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "expstore.train", *online_args(run_dir, backend, 450, checkpoint_every=150)]
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        read_until(child.stderr, "checkpoint at step 150")
        with expstore.open(pool_file(run_dir, backend), "r") as pool:  # a reader beside the writer
            committed = pool[0:len(pool)]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
    assert len(committed["step_id"]) >= 150
    checkpoint = load_checkpoint(run_dir)
    killed_at = checkpoint["run_state"]["step"]
    assert killed_at >= 150 and checkpoint["agent"]["updates"] == killed_at - 100

    restarted = subprocess.run(command, check=False, stderr=subprocess.PIPE, text=True, timeout=300)
    assert restarted.returncode == 0, restarted.stderr
    assert f"checkpoint at step {killed_at}, updates {killed_at - 100}" in restarted.stderr
    with expstore.open(pool_file(run_dir, backend), "r") as pool:
        assert len(pool) == 450
        after = pool[0:len(committed["step_id"])]
    for name, values in committed.items():  # everything committed before the kill, bit for bit
        np.testing.assert_array_equal(after[name], values)
    final = load_checkpoint(run_dir)
    assert final["run_state"]["step"] == 450
    assert final["agent"]["updates"] > checkpoint["agent"]["updates"]


def test_ctrl_c_stops_after_the_step_with_everything_committed(tmp_path, backend, caplog):
    run_dir = tmp_path / "run"
    args = ["--run-dir", str(run_dir), "--backend", backend, "--total-steps", "1000", "--learning-starts", "1000",
            "--checkpoint-every", "150", "--eval-every", "1000", *TINY]
    child = subprocess.Popen([sys.executable, "-m", "expstore.train", *args], stderr=subprocess.PIPE, text=True)
    try:
        read_until(child.stderr, "checkpoint at step 150")
        child.send_signal(signal.SIGINT)
        rest = child.stderr.read()
        child.wait(timeout=120)
    finally:
        child.kill()
        child.stderr.close()
    assert child.returncode == 1, rest
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest
    stopped = re.search(r"interrupted at step (\d+); run the same command to resume$", rest.strip().splitlines()[-1])
    assert stopped, rest
    step = int(stopped[1])
    with expstore.open(pool_file(run_dir, backend), "r") as pool:
        assert len(pool) == step  # every step taken was committed, the ones after the last commit too
    assert load_checkpoint(run_dir)["run_state"]["step"] == step < 1000
    assert not (run_dir / "summary.json").exists()  # the run is not finished
    assert main(args) == 0  # the same command resumes
    assert f"resuming in {run_dir}: checkpoint at step {step}, updates 0" in caplog.text
    with expstore.open(pool_file(run_dir, backend), "r") as pool:
        assert len(pool) == 1000
