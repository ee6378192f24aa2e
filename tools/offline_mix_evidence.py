"""SAC with and without prior data (``python -m expstore.train --offline-data``), several seeds.

Runs the reference trainer for every (arm, seed) in its own run directory, ``--jobs`` at a time
(each with one torch thread and one OpenMP thread, so each holds one core; arms interleaved, so a
cut-short invocation has as many seeds of one arm as of the other), then prints the evaluation
return of each run at the fixed step counts where the trainer evaluates (``--eval-every``), the
mean over seeds per arm, and writes
``summary.json`` in ``--out``. A run directory that exists resumes (the trainer's own resume),
so a cut-short invocation can be continued with the same command.

Example (the numbers in tools/README.md)::

    python -m expstore.train --env Hopper-v5 --total-steps 15000 --hidden-units 128 \\
        --batch-size 128 --run-dir runs/prior                     # the earlier run: its pool is the prior data
    python tools/offline_mix_evidence.py --env Hopper-v5 --offline-data runs/prior/pool.h5 \\
        --total-steps 50000 --eval-every 5000 --eval-episodes 10 --seeds 1 2 3 --jobs 2 \\
        --out runs/mix-evidence
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--offline-data", required=True, help="the prior pool (opened read-only)")
    parser.add_argument("--offline-ratio", type=float, default=0.5)
    parser.add_argument("--total-steps", type=int, default=8_000)
    parser.add_argument("--learning-starts", type=int, default=1_000)
    parser.add_argument("--eval-every", type=int, default=2_000)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--hidden-units", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one core each)")
    parser.add_argument("--out", default="runs/mix-evidence")
    parser.add_argument("--report-only", action="store_true", help="only summarise the runs in --out")
    return parser.parse_args()


def command(args: argparse.Namespace, arm: str, seed: int) -> list[str]:
    line = [sys.executable, "-m", "expstore.train", "--env", args.env, "--total-steps", str(args.total_steps),
            "--learning-starts", str(args.learning_starts), "--eval-every", str(args.eval_every),
            "--checkpoint-every", str(args.eval_every), "--eval-episodes", str(args.eval_episodes),
            "--hidden-units", str(args.hidden_units), "--batch-size", str(args.batch_size), "--seed", str(seed),
            "--run-dir", os.path.join(args.out, f"{arm}-seed{seed}"), "--log-interval", "60", "--threads", "1"]
    if arm == "offline":
        line += ["--offline-data", args.offline_data, "--offline-ratio", str(args.offline_ratio)]
    return line


def evals(run_dir: str) -> dict[int, float]:
    path = os.path.join(run_dir, "metrics.jsonl")
    found: dict[int, float] = {}
    if os.path.exists(path):
        with open(path) as metrics:
            for line in metrics:
                record = json.loads(line)
                if record.get("kind") == "eval":
                    found[int(record["step"])] = float(record["mean_return"])
    return found


def report(args: argparse.Namespace) -> dict:
    table: dict[str, dict] = {}
    for arm in ("online", "offline"):
        runs = {seed: evals(os.path.join(args.out, f"{arm}-seed{seed}")) for seed in args.seeds}
        steps = sorted({step for found in runs.values() for step in found})
        means = {step: sum(found[step] for found in runs.values() if step in found)
                 / max(1, sum(step in found for found in runs.values())) for step in steps}
        table[arm] = {"runs": runs, "mean": means}
        for step in steps:
            values = [runs[seed].get(step) for seed in args.seeds]
            shown = ", ".join("-" if value is None else f"{value:7.1f}" for value in values)
            print(f"{arm:8s} step {step:6d}: mean {means[step]:7.1f}   seeds [{shown}]")
    with open(os.path.join(args.out, "summary.json"), "w") as out:
        json.dump(table, out, indent=1)
    return table


def main() -> int:
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    if not args.report_only:
        queue = [(arm, seed) for seed in args.seeds for arm in ("online", "offline")]
        # One thread per run: more would only fight over the cores the other runs hold.
        child_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        running: list[subprocess.Popen] = []
        started = time.monotonic()
        finished = 0
        while queue or running:
            while queue and len(running) < args.jobs:
                arm, seed = queue.pop(0)
                with open(os.path.join(args.out, f"{arm}-seed{seed}.log"), "a") as log:  # the child keeps its copy
                    running.append(subprocess.Popen(command(args, arm, seed), stdout=log, stderr=subprocess.STDOUT,
                                                    env=child_env))
            time.sleep(10)
            for process in [process for process in running if process.poll() is not None]:
                running.remove(process)
                finished += 1
                print(f"{time.monotonic() - started:6.0f} s: {finished} runs done (exit {process.returncode}), "
                      f"{len(running)} running, {len(queue)} waiting", flush=True)
    report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
