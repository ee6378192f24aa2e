"""DQN on the bit-flipping goal env (Andrychowicz et al. 2017) with and without HER, both with
their transitions in a pool: ``expstore.sb3.DiskHerReplayBuffer`` against
``expstore.sb3.DiskDictReplayBuffer``. Prints the success rate of the greedy policy over
``--eval-episodes`` episodes every ``--eval-every`` steps.

The env is the paper's: the start state and the target state are drawn uniformly at random at
every reset (``--goal random``, the default). Stable-Baselines3's ``BitFlippingEnv`` keeps the
target at all ones (``--goal ones``), a much easier task: one target to learn, not 2**n.

    python tools/her_bitflip_evidence.py --bits 15 --steps 100000 --eval-every 10000 \\
        --eval-episodes 100 --seed 0      # the numbers in tools/README.md (seeds 0, 1, 2)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.envs import BitFlippingEnv

from expstore.sb3 import DiskDictReplayBuffer, DiskHerReplayBuffer


class RandomGoalBitFlippingEnv(BitFlippingEnv):
    """The bit-flipping env of Andrychowicz et al. 2017: a new random target at every reset."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed, options=options)
        self.desired_goal = np.asarray(self._obs_space.sample(), dtype=self.desired_goal.dtype)
        return self._get_obs(), {}


def make_env(bits: int, goal: str) -> BitFlippingEnv:
    env_class = RandomGoalBitFlippingEnv if goal == "random" else BitFlippingEnv
    return env_class(n_bits=bits, continuous=False, max_steps=bits)


def success_rate(model, bits: int, episodes: int, seed: int, goal: str) -> float:
    env = make_env(bits, goal)
    wins = 0
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        for _ in range(bits):
            action, _ = model.predict(obs, deterministic=True)
            obs, _, terminated, truncated, info = env.step(int(action))
            if terminated or truncated:
                break
        wins += bool(info.get("is_success", False))
    return wins / episodes


class Evaluate(BaseCallback):
    def __init__(self, label: str, bits: int, every: int, episodes: int, goal: str):
        super().__init__()
        self.label, self.bits, self.every, self.episodes, self.goal = label, bits, every, episodes, goal

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            rate = success_rate(self.model, self.bits, self.episodes, seed=10_000, goal=self.goal)
            print(f"{self.label:8s} step {self.num_timesteps:6d}: success {rate:.2f}", flush=True)
        return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--eval-every", type=int, default=2_000)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--goal", default="random", choices=["random", "ones"],
                        help="random: a new target per episode (the paper); ones: SB3's fixed target")
    parser.add_argument("--arms", nargs="+", default=["her", "no-her"], choices=["her", "no-her"])
    args = parser.parse_args()
    torch.set_num_threads(1)  # a small MLP: more threads would only contend with other runs
    with tempfile.TemporaryDirectory() as folder:
        for arm in args.arms:
            env = make_env(args.bits, args.goal)
            buffer_class = DiskHerReplayBuffer if arm == "her" else DiskDictReplayBuffer
            kwargs = {"path": os.path.join(folder, f"{arm}.h5")}
            if arm == "her":
                kwargs.update(n_sampled_goal=4, goal_selection_strategy="future")
            model = DQN("MultiInputPolicy", env, buffer_size=100_000, learning_starts=1_000, batch_size=128,
                        learning_rate=1e-3, gamma=0.95, exploration_fraction=0.3, exploration_final_eps=0.05,
                        target_update_interval=500, train_freq=1, seed=args.seed, device="cpu",
                        policy_kwargs={"net_arch": [256, 256]}, replay_buffer_class=buffer_class,
                        replay_buffer_kwargs=kwargs)
            model.learn(args.steps, callback=Evaluate(arm, args.bits, args.eval_every, args.eval_episodes, args.goal))
            model.replay_buffer.close()
            print(f"{arm:8s} final success {success_rate(model, args.bits, 200, seed=20_000, goal=args.goal):.2f} "
                  f"over 200 episodes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
