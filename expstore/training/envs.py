"""Environments for the trainers: making them, evaluating a policy, recording into a pool."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from ..errors import InvalidArgumentError
from ..integrations.recorder import RecordEpisodes


def make_env(env_id: str) -> gym.Env:
    """A Gymnasium env with a continuous (Box) action space, which the trainers need."""
    try:
        env = gym.make(env_id)
    except gym.error.Error as exc:  # unknown id or version, a missing extra such as box2d
        reason = " ".join(str(exc).split())
        raise InvalidArgumentError(f"cannot make the env {env_id!r}: {reason}") from None
    if not isinstance(env.action_space, gym.spaces.Box):
        env.close()
        raise InvalidArgumentError(f"{env_id} has a {type(env.action_space).__name__} action space; the "
                                   "SAC and TD3+BC trainers need continuous (Box) actions, e.g. Pendulum-v1")
    return env


def obs_units(env: gym.Env) -> int:
    shape = env.observation_space.shape
    if shape is None:
        raise InvalidArgumentError(f"{env.spec.id if env.spec else env}: its observation space has no shape; "
                                   "the trainers need a fixed-size (Box) observation")
    return int(np.prod(shape))


def action_box(env: gym.Env) -> gym.spaces.Box:
    """The action space of an env from :func:`make_env`, which refused any but a Box."""
    space = env.action_space
    if not isinstance(space, gym.spaces.Box):
        raise InvalidArgumentError(f"a {type(space).__name__} action space; the trainers need a Box")
    return space


def evaluate(policy: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int, seed: int) -> list[float]:
    """Undiscounted returns of ``episodes`` episodes with the given (deterministic) policy."""
    env = make_env(env_id)
    returns = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(policy(obs))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return returns


def recording_env(env: gym.Env, pool) -> RecordEpisodes:
    """``env`` wrapped so that every step is appended to ``pool``, stamped with a policy version."""
    return RecordEpisodes(env, pool, policy_version=0)
