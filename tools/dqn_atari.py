"""Evidence that DQN learns from a compressed single-frame pool on disk: SB3's DQN on an ALE game.

SB3's DQN with its Atari settings (Nature CNN, ``make_atari_env`` + ``VecFrameStack(n_stack=4)``),
its replay buffer replaced by ``expstore.sb3.DiskReplayBuffer(frame_stack=4)`` storing one
``zstd:3+dict`` frame per transition. Writes ``returns.csv`` (step, episode return of the whole
game, as ``Monitor`` counts it before the life-loss wrapper) and ``returns.png`` into --out, and
prints the mean return of the first 100 episodes (epsilon near 1: a random policy's) and of the last 100.

    python tools/dqn_atari.py --game Breakout --steps 300000 --out runs/dqn-breakout
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="Breakout")
    parser.add_argument("--steps", type=int, default=300_000, help="environment steps (frames / 4)")
    parser.add_argument("--buffer", type=int, default=100_000, help="replay capacity in transitions")
    parser.add_argument("--codec", default="zstd:3+dict")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default="runs/dqn")
    args = parser.parse_args(argv)

    import ale_py
    import gymnasium
    import torch
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    import expstore
    from expstore.sb3 import DiskReplayBuffer

    gymnasium.register_envs(ale_py)  # the NoFrameskip-v4 ids SB3's Atari wrappers expect
    torch.set_num_threads(args.threads)
    expstore.tune_allocator()  # sampled stacks are megabytes of fresh memory per batch
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pool_path = out / "replay.h5"
    if pool_path.exists():
        os.remove(pool_path)
    env = VecFrameStack(make_atari_env(f"{args.game}NoFrameskip-v4", n_envs=1, seed=args.seed), n_stack=4)
    returns: list[tuple[int, float]] = []

    class Returns(BaseCallback):
        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    returns.append((self.num_timesteps, float(info["episode"]["r"])))
                    if len(returns) % 50 == 0:
                        recent = np.mean([r for _, r in returns[-50:]])
                        print(f"step {self.num_timesteps:,}: {len(returns)} episodes, last 50 mean {recent:.2f}, "
                              f"pool {len(self.model.replay_buffer.pool):,} rows", flush=True)
            return True

    # SB3's Atari hyperparameters (rl-zoo's dqn.yml for Atari), the buffer on disk.
    model = DQN("CnnPolicy", env, seed=args.seed, buffer_size=args.buffer, learning_rate=1e-4,
                batch_size=32, learning_starts=10_000, target_update_interval=1000, train_freq=4,
                gradient_steps=1, exploration_fraction=0.1, exploration_final_eps=0.01,
                optimize_memory_usage=False, replay_buffer_class=DiskReplayBuffer,
                replay_buffer_kwargs={"path": str(pool_path), "frame_stack": 4, "codec": args.codec,
                                      "heap_bytes": args.buffer * 1024},  # compressed frames: 110-450 B each
                verbose=0)
    start = time.monotonic()
    model.learn(args.steps, callback=Returns())
    seconds = time.monotonic() - start
    pool_bytes = pool_path.stat().st_blocks * 512  # the disk it takes: the heap's unwritten tail is a hole
    model.replay_buffer.close()

    with open(out / "returns.csv", "w", newline="") as table:
        writer = csv.writer(table)
        writer.writerow(["step", "return"])
        writer.writerows(returns)
    _plot(returns, out / "returns.png", args.game)
    first = np.mean([r for _, r in returns[:100]]) if returns else float("nan")
    last = np.mean([r for _, r in returns[-100:]]) if returns else float("nan")
    print(f"{args.game}: {args.steps:,} steps in {seconds / 60:.1f} min, {len(returns)} episodes; mean return of "
          f"the first 100 {first:.2f}, of the last 100 {last:.2f}; pool file {pool_bytes / 2**20:.0f} MiB on disk "
          f"for {min(args.steps, args.buffer):,} transitions ({args.codec})")
    return 0


def _plot(returns: list[tuple[int, float]], path: Path, game: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a file, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.5))
    if returns:
        steps, values = np.array(returns).T
        axes.plot(steps, values, ".", alpha=0.3, label="episode return")
        window = min(50, len(values))
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        axes.plot(steps[window - 1:], smooth, label=f"mean of {window}")
    axes.set_xlabel("environment steps")
    axes.set_ylabel("return (whole game)")
    axes.set_title(f"SB3 DQN on {game}, replay on disk: one compressed frame per row", fontsize=10)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
