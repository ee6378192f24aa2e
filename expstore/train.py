"""``python -m expstore.train``: the reference actor-critic trainer on a pool on disk.

Online (the default): SAC collects Pendulum-v1 experience into ``<run-dir>/pool.h5`` and learns
from samples of it. Run the same command again on the same run directory and it resumes from
the last checkpoint, reopening the pool in place: kill it at any moment and nothing committed
is lost. ``--offline --pool PATH`` trains TD3+BC from an existing pool without touching the
environment (except to evaluate the policy).

Examples::

    python -m expstore.train                                   # short default run (a few minutes)
    python -m expstore.train --total-steps 20000 --run-dir runs/sac-20k
    python -m expstore.train --offline --pool runs/sac-20k/pool.h5 --run-dir runs/td3bc
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .errors import ExpstoreError, InvalidArgumentError

logger = logging.getLogger("expstore.train")

DEFAULT_ONLINE_STEPS = 8_000
DEFAULT_OFFLINE_UPDATES = 10_000
POOL_SUFFIX = {"hdf5": ".h5", "zarr": ".zarr"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m expstore.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", help="run directory (default runs/sac-<env> or runs/td3bc-<env>); "
                                          "an existing one resumes")
    parser.add_argument("--env", default=None, help="Gymnasium env id with Box actions (default Pendulum-v1)")
    parser.add_argument("--total-steps", type=int, default=None,
                        help=f"env steps online (default {DEFAULT_ONLINE_STEPS}), gradient updates offline "
                             f"(default {DEFAULT_OFFLINE_UPDATES}); pass a larger value to extend a run")
    parser.add_argument("--learning-starts", type=int, default=1_000, help="random-action steps before learning")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=2_000, help="steps between checkpoints")
    parser.add_argument("--eval-every", type=int, default=2_000, help="steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--backend", choices=sorted(POOL_SUFFIX), default="hdf5", help="pool format")
    parser.add_argument("--capacity", type=int, default=1_000_000, help="pool capacity (transitions)")
    parser.add_argument("--hidden-units", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (small MLPs gain little from more; default 1)")
    parser.add_argument("--log-interval", type=float, default=5.0, help="seconds between progress lines")
    parser.add_argument("--ere", action="store_true",
                        help="online: Emphasizing Recent Experience (Wang & Ross 2019) instead of uniform sampling")
    parser.add_argument("--ere-eta", type=float, default=0.996, help="ERE: recency emphasis (1.0: uniform)")
    parser.add_argument("--ere-c-min", type=int, default=5_000, help="ERE: the smallest window (rows)")
    parser.add_argument("--offline", action="store_true", help="train TD3+BC from --pool, no env interaction")
    parser.add_argument("--pool", help="offline: the pool to train from (opened read-only)")
    parser.add_argument("--workers", type=int, default=0,
                        help="offline: DataLoader worker processes (0: a background prefetch thread)")
    return parser.parse_args(argv)


def setup_logging(run_dir: str) -> None:
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    root = logging.getLogger("expstore")
    root.setLevel(logging.INFO)
    for handler in [h for h in root.handlers if getattr(h, "_expstore_train", False)]:
        root.removeHandler(handler)  # main() called again in the same process: no doubled lines
        handler.close()
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(os.path.join(run_dir, "train.log"))):
        handler.setFormatter(formatter)
        handler._expstore_train = True
        root.addHandler(handler)


def online_config(args: argparse.Namespace, run_dir: str):
    from .sac import SACConfig
    from .training.online import OnlineConfig
    from .training.progress import CONFIG_NAME

    saved = os.path.join(run_dir, CONFIG_NAME)
    if os.path.exists(saved):  # resume with the run's own settings; only the length may change
        with open(saved, encoding="utf-8") as stream:
            config = OnlineConfig.from_dict(json.load(stream))
        if args.total_steps is not None:
            config.total_steps = args.total_steps
        config.device, config.log_interval_s = args.device, args.log_interval
        return config
    sac = SACConfig(hidden_units=args.hidden_units, batch_size=args.batch_size, learning_rate=args.learning_rate)
    return OnlineConfig(env_id=args.env or "Pendulum-v1", total_steps=args.total_steps or DEFAULT_ONLINE_STEPS,
                        learning_starts=args.learning_starts, seed=args.seed,
                        pool_name="pool" + POOL_SUFFIX[args.backend], capacity=args.capacity,
                        checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
                        eval_episodes=args.eval_episodes, log_interval_s=args.log_interval, device=args.device,
                        sac=sac, ere=args.ere, ere_eta=args.ere_eta, ere_c_min=args.ere_c_min)


def run_online(args: argparse.Namespace, run_dir: str) -> dict:
    from .training.online import OnlineRun, save_config

    config = online_config(args, run_dir)
    run = OnlineRun(run_dir, config)
    try:
        save_config(run_dir, config)
        return run.run()
    finally:
        run.close()


def run_offline(args: argparse.Namespace, run_dir: str) -> dict:
    from .training.offline import OfflineRun, offline_config

    if not args.pool:
        raise InvalidArgumentError("--offline needs --pool PATH (a pool written by an online run, for example)")
    run = OfflineRun(run_dir, offline_config(args, run_dir, DEFAULT_OFFLINE_UPDATES))
    try:
        return run.run()
    finally:
        run.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env_name = (args.env or "Pendulum-v1").split("-")[0].lower()
    run_dir = args.run_dir or os.path.join("runs", f"{'td3bc' if args.offline else 'sac'}-{env_name}")
    os.makedirs(run_dir, exist_ok=True)
    setup_logging(run_dir)
    import torch

    torch.set_num_threads(max(1, args.threads))
    try:
        summary = run_offline(args, run_dir) if args.offline else run_online(args, run_dir)
    except ExpstoreError as exc:
        logger.error("error: %s", exc)
        return 2
    logger.info("done: %s", json.dumps(summary))
    logger.info("run directory %s: metrics.jsonl, learning_curve.png, checkpoint.pt, summary.json", run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
