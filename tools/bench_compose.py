"""Cost per batch of the composed strategies, mixing and HER, against uniform sampling of the
same pool in the same run (ratios; the median of interleaved rounds).

Two pools of ``--rows`` goal-conditioned transitions (episodes of 50 rows, as FetchReach's)
are written to a temporary folder; every strategy samples ``--batch`` rows per call.

    python tools/bench_compose.py --rows 200000 --batch 256 --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import expstore

SCHEMA = {"obs_observation": ((10,), "float32"), "obs_achieved_goal": ((3,), "float32"),
          "obs_desired_goal": ((3,), "float32"), "action": ((4,), "float32"), "reward": ((), "float32"),
          "next_obs_observation": ((10,), "float32"), "next_obs_achieved_goal": ((3,), "float32"),
          "next_obs_desired_goal": ((3,), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}


def write_pool(path: str, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with expstore.open(path, "w", capacity=rows, schema=SCHEMA) as pool:
        for start in range(0, rows, 10_000):
            n = min(10_000, rows - start)
            batch = {name: rng.standard_normal((n, *shape)).astype(dtype) if dtype == "float32"
                     else np.zeros(n, bool) for name, (shape, dtype) in SCHEMA.items()}
            batch["truncated"] = (np.arange(start, start + n) % 50) == 49
            pool.extend(batch)
        steps = np.arange(pool.first_step_id, pool.next_step_id)
        pool.update_priorities(steps, rng.uniform(0.1, 2.0, len(steps)))


def reward(achieved, desired, info):
    return -(np.linalg.norm(achieved - desired, axis=-1) > 0.05).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--calls", type=int, default=50, help="sample calls per round and strategy")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = [os.path.join(folder, f"pool{i}.h5") for i in range(2)]
        for i, path in enumerate(paths):
            write_pool(path, args.rows, i)
        a, b = (expstore.open(path, "r") for path in paths)
        mixed = expstore.mix({a: 0.5, b: 0.5})
        her = {s: expstore.HER(reward, strategy=s) for s in ("future", "final", "episode")}
        cases = {
            "uniform": lambda rng: a.sample(args.batch, rng=rng),
            "uniform (keyword path)": lambda rng: a.sample(args.batch, rng=rng, sampler=expstore.Uniform()),
            "prioritized": lambda rng: a.sample(args.batch, rng=rng, prioritized=True),
            "prioritized + ERE": lambda rng: a.sample(args.batch, rng=rng, prioritized=True,
                                                      recency=expstore.ERE(3, 10, c_min=5_000)),
            "prioritized + exponential recency": lambda rng: a.sample(
                args.batch, rng=rng, prioritized=True, recency=expstore.ExponentialRecency(args.rows / 10)),
            "prioritized + exponential + max_age": lambda rng: a.sample(
                args.batch, rng=rng, prioritized=True, recency=expstore.ExponentialRecency(args.rows / 10),
                max_age=args.rows // 2, age_unit="steps"),
            "n_step=3 + prioritized + ERE": lambda rng: a.sample(args.batch, rng=rng, n_step=3, prioritized=True,
                                                                 recency=expstore.ERE(3, 10, c_min=5_000)),
            "mix 50/50 of two pools": lambda rng: mixed.sample(args.batch, rng=rng),
            "HER future": lambda rng: a.sample(args.batch, rng=rng, her=her["future"]),
            "HER final": lambda rng: a.sample(args.batch, rng=rng, her=her["final"]),
            "HER episode": lambda rng: a.sample(args.batch, rng=rng, her=her["episode"]),
            "n_step=3 (no HER)": lambda rng: a.sample(args.batch, rng=rng, n_step=3),
            "HER future + n_step=3": lambda rng: a.sample(args.batch, rng=rng, n_step=3, her=her["future"]),
            "sequences (8) uniform": lambda rng: a.sample_sequences(args.batch // 8, 8, rng=rng),
            "sequences (8) prioritized + exponential": lambda rng: a.sample_sequences(
                args.batch // 8, 8, rng=rng, prioritized=True, recency=expstore.ExponentialRecency(args.rows / 10)),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        rng = np.random.default_rng(0)
        for case in cases.values():  # warm: page cache, priority trees
            case(rng)
        for _ in range(args.rounds):
            for name, case in cases.items():
                start = time.perf_counter()
                for _ in range(args.calls):
                    case(rng)
                times[name].append((time.perf_counter() - start) / args.calls)
        base = statistics.median(times["uniform"])
        print(f"{args.rows:,} rows, batch {args.batch}, median of {args.rounds} rounds of {args.calls} calls")
        print(f"{'strategy':42s} {'us/batch':>10s} {'x uniform':>10s}")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"{name:42s} {median * 1e6:10.0f} {median / base:10.2f}")
        a.close()
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
