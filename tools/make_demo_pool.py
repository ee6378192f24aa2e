"""Make data/demo_pool.h5: a Pendulum-v1 pool recorded by the project's own SAC trainer.

Runs the reference trainer (``python -m expstore.train``, online SAC) for ``--steps`` env
steps in a temporary run directory, recording into a pool of exactly that capacity, then
copies the pool to ``--out`` with ``expstore convert`` (step ids, episodes and priorities
kept; no lock file or run directory left behind). The first ``--learning-starts`` steps are
random actions, the rest come from the learning policy, so episode returns in the pool show
the learning progress (``expstore plot data/demo_pool.h5 -o demo.png``). Seeded; torch on one
CPU thread. About a minute on a 2-core machine; the pool is under 1 MiB.

    python tools/make_demo_pool.py                 # writes data/demo_pool.h5
    python tools/make_demo_pool.py --out runs/demo.zarr --steps 2000
"""

from __future__ import annotations

import argparse
import os
import tempfile

from expstore.maintenance import convert
from expstore.training import main as train


def record(out: str, steps: int, learning_starts: int, seed: int) -> convert.CopyResult:
    """Train SAC for ``steps`` env steps and copy its pool to ``out``."""
    with tempfile.TemporaryDirectory(prefix="demo-run-") as run_dir:
        status = train.main(["--run-dir", run_dir, "--total-steps", str(steps), "--capacity", str(steps),
                             "--learning-starts", str(learning_starts), "--seed", str(seed),
                             "--checkpoint-every", str(steps), "--eval-every", str(steps),
                             "--eval-episodes", "3", "--log-interval", "10"])
        if status != 0:
            raise SystemExit(f"the trainer failed (exit {status}); see its log lines above")
        return convert.convert(os.path.join(run_dir, "pool.h5"), out, overwrite=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/demo_pool.h5")
    parser.add_argument("--steps", type=int, default=4_000, help="env steps (Pendulum episodes are 200 steps)")
    parser.add_argument("--learning-starts", type=int, default=1_000, help="random-action steps first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = record(args.out, args.steps, args.learning_starts, args.seed)
    print(f"wrote {result.rows} transitions to {result.path}")  # the trainer logs its progress to stderr


if __name__ == "__main__":
    main()
