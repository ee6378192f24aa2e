"""Make data/demo_pool.h5: a small Pendulum-v1 pool for the README's CLI examples.

Records ``--episodes`` episodes of a uniformly random policy on Pendulum-v1 (seeded, so the
pool is the same on every run) through the store, one transition at a time as an env loop
would. The pool is a few hundred KB.

    python tools/make_demo_pool.py            # writes data/demo_pool.h5
    python tools/make_demo_pool.py --out runs/demo.zarr --episodes 5
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import expstore

SCHEMA = {"obs": ((3,), "float32"), "action": ((1,), "float32"), "reward": ((), "float32"),
          "next_obs": ((3,), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}


def record(path: str, episodes: int, seed: int) -> int:
    env = gym.make("Pendulum-v1")
    env.action_space.seed(seed)
    steps = episodes * env.spec.max_episode_steps
    attrs = {"env_id": "Pendulum-v1", "policy": "uniform random", "seed": seed, "gamma": 0.99}
    with expstore.open(path, "w", capacity=steps, schema=SCHEMA, attrs=attrs) as pool:
        for episode in range(episodes):
            obs, _info = env.reset(seed=seed + episode)
            done = False
            while not done:
                action = env.action_space.sample()
                next_obs, reward, terminated, truncated, _info = env.step(action)
                pool.append({"obs": obs, "action": action, "reward": float(reward), "next_obs": next_obs,
                             "terminated": terminated, "truncated": truncated})
                obs, done = next_obs, terminated or truncated
        return len(pool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/demo_pool.h5")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = record(args.out, args.episodes, args.seed)
    print(f"wrote {rows} transitions to {args.out}")


if __name__ == "__main__":
    main()
