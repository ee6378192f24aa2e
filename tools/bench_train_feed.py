"""Training speed with a disk pool (prefetched) against an in-RAM numpy buffer of the same data.

The same SAC agent runs the same number of gradient updates from three feeds, in alternating
rounds within one process so that machine noise hits all of them alike:

- ``ram``: every field copied into numpy arrays; a batch is drawn in the training thread;
- ``disk+prefetch``: ``pool.sample`` in the background ``Prefetcher`` thread;
- ``disk``: ``pool.sample`` in the training thread (no prefetch), for reference.

Usage::

    python tools/bench_train_feed.py                       # a fresh 200k-row Pendulum-shaped pool
    python tools/bench_train_feed.py --pool runs/sac-pendulum/pool.h5 --updates 1000 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import expstore
from expstore.integrations.torch_feed import Prefetcher, to_tensors
from expstore.training.sac import SAC, SACConfig

FIELDS = ("obs", "action", "reward", "next_obs", "terminated")


class RamBuffer:
    """The baseline: the pool's fields held in RAM, sampled uniformly like ``Store.sample``."""

    def __init__(self, pool):
        rows = pool[0:len(pool)]
        self.columns = {name: np.ascontiguousarray(rows[name]) for name in FIELDS}
        self.size = len(pool)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        picks = rng.integers(0, self.size, size=batch_size)
        return {name: column[picks] for name, column in self.columns.items()}


def make_pool(path: str, rows: int) -> None:
    rng = np.random.default_rng(0)
    schema = {"obs": ((3,), "float32"), "action": ((1,), "float32"), "reward": ((), "float32"),
              "next_obs": ((3,), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}
    with expstore.open(path, "w", capacity=rows, schema=schema) as pool:
        pool.extend({"obs": rng.normal(size=(rows, 3)), "action": rng.uniform(-2, 2, size=(rows, 1)),
                     "reward": -rng.uniform(0, 16, size=rows), "next_obs": rng.normal(size=(rows, 3)),
                     "terminated": np.zeros(rows, bool), "truncated": np.zeros(rows, bool)})


def timed_updates(agent: SAC, next_batch, updates: int) -> float:
    """Updates per second over ``updates`` SAC updates."""
    start = time.perf_counter()
    for _ in range(updates):
        agent.update(next_batch())
    return updates / (time.perf_counter() - start)


def _prefetched(agent: SAC, pool, rng: np.random.Generator, batch_size: int, updates: int, device: str,
                pin: bool) -> float:
    with Prefetcher(lambda: pool.sample(batch_size, rng=rng), depth=2, device=device, pin_memory=pin) as batches:
        return timed_updates(agent, lambda: next(batches), updates)


def run(pool_path: str, updates: int, rounds: int, batch_size: int, device: str = "cpu",
        pin: bool = False) -> dict[str, list[float]]:
    agent = SAC(3, np.array([-2.0], np.float32), np.array([2.0], np.float32), SACConfig(batch_size=batch_size),
                device=device)
    rng = np.random.default_rng(1)
    results: dict[str, list[float]] = {"ram": [], "disk+prefetch": [], "disk": []}
    with expstore.open(pool_path, "r") as pool:
        ram = RamBuffer(pool)
        timed_updates(agent, lambda: to_tensors(ram.sample(batch_size, rng), device), updates // 4)  # warm-up
        feeds = {
            "ram": lambda: timed_updates(agent, lambda: to_tensors(ram.sample(batch_size, rng), device), updates),
            "disk+prefetch": lambda: _prefetched(agent, pool, rng, batch_size, updates, device, pin),
            "disk": lambda: timed_updates(agent, lambda: to_tensors(pool.sample(batch_size, rng=rng), device, pin),
                                          updates),
        }
        order = list(feeds)
        for round_index in range(rounds):
            for name in order[round_index % 3:] + order[:round_index % 3]:  # rotate: drift hits all alike
                results[name].append(feeds[name]())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", help="an existing pool (default: make a fresh one)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the fresh pool")
    parser.add_argument("--updates", type=int, default=500, help="SAC updates per feed per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="where the networks live, e.g. cuda")
    parser.add_argument("--pin-memory", action="store_true", help="disk feeds: pinned, non_blocking copies")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        pool_path = args.pool or str(Path(scratch) / "bench.h5")
        if not args.pool:
            make_pool(pool_path, args.rows)
        results = run(pool_path, args.updates, args.rounds, args.batch_size, args.device, args.pin_memory)
    ram = statistics.median(results["ram"])
    print(f"pool {args.pool or f'fresh, {args.rows} rows'}; {args.rounds} rounds x {args.updates} SAC updates, "
          f"batch {args.batch_size}, {args.threads} torch thread(s), device {args.device}"
          f"{' (disk feeds pinned)' if args.pin_memory else ''}")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:>14}: {median:7.1f} updates/s (rounds: {', '.join(f'{v:.1f}' for v in values)})"
              f"  ratio to ram {median / ram:.3f}")


if __name__ == "__main__":
    main()
