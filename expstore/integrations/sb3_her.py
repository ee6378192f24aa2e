"""Stable-Baselines3's ``HerReplayBuffer`` with its transitions in an expstore pool.

Pass it where SB3's buffer goes; SB3 hands it the env (for ``compute_reward``) as it does
its own::

    model = SAC("MultiInputPolicy", env, replay_buffer_class=DiskHerReplayBuffer,
                replay_buffer_kwargs={"path": "pool.h5", "n_sampled_goal": 4,
                                      "goal_selection_strategy": "future"})

Rows are stored as :class:`expstore.sb3.DiskDictReplayBuffer` stores them (``obs_<key>`` and
``next_obs_<key>`` per Dict key, ``action``, ``reward``, ``terminated``, ``truncated``,
``env_index``). Which transitions are complete episodes (SB3's ``ep_start``/``ep_length``,
16 bytes per row) is kept in memory exactly as SB3 keeps it, and rebuilt from the pool's
episode table when a buffer continues a pool (``mode="a"``, ``load_replay_buffer``); the data
itself stays on disk. Sampling makes the same calls to numpy's global generator as SB3's
``HerReplayBuffer.sample``, in the same order, so with the same seeds a run with this buffer
is the run with SB3's (tests/integrations/test_sb3_her.py trains DQN both ways and compares
the networks). Not supported: ``optimize_memory_usage`` (SB3's HER refuses it as well) and
``copy_info_dict`` (info dicts are not stored in the pool; ``compute_reward`` gets empty
dicts, SB3's default).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

try:
    import torch as th
    from gymnasium import spaces
    from stable_baselines3.common.type_aliases import DictReplayBufferSamples
    from stable_baselines3.her.goal_selection_strategy import KEY_TO_GOAL_STRATEGY, GoalSelectionStrategy
    from stable_baselines3.her.her_replay_buffer import HerReplayBuffer
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("expstore.sb3 needs Stable-Baselines3: pip install 'expstore[sb3]'") from exc

from ..errors import InvalidArgumentError
from .sb3_buffers import DiskDictReplayBuffer, DiskReplayBuffer

__all__ = ["DiskHerReplayBuffer"]


class DiskHerReplayBuffer(DiskDictReplayBuffer, HerReplayBuffer):
    """SB3's ``HerReplayBuffer`` kept in a persistent pool (see the module docstring).

    Args:
        buffer_size, observation_space, action_space, env, device, n_envs,
        handle_timeout_termination, n_sampled_goal, goal_selection_strategy: as SB3's
            ``HerReplayBuffer`` (the observation space is a Dict with ``observation``,
            ``achieved_goal`` and ``desired_goal``).
        path, mode, backend, commit_every, commit_interval_s, fsync, codec: as
            :class:`expstore.sb3.DiskReplayBuffer` (``codec="zstd"`` stores the observation
            and goal fields compressed; relabelling reads the goals back decoded).
    """

    def __init__(self, buffer_size: int, observation_space: spaces.Dict, action_space: spaces.Space, env: Any,
                 device: Any = "auto", n_envs: int = 1, optimize_memory_usage: bool = False,
                 handle_timeout_termination: bool = True, n_sampled_goal: int = 4,
                 goal_selection_strategy: GoalSelectionStrategy | str = "future", copy_info_dict: bool = False, *,
                 path: str | os.PathLike, mode: str = "x", backend: str | None = None, commit_every: int = 10_000,
                 commit_interval_s: float = 5.0, fsync: bool = True,
                 codec: str | dict[str, str | None] | None = None):
        if optimize_memory_usage:
            raise InvalidArgumentError("DiskHerReplayBuffer does not support optimize_memory_usage (nor does SB3's "
                                       "HerReplayBuffer): relabelling reads the next achieved goals")
        if copy_info_dict:
            raise InvalidArgumentError("DiskHerReplayBuffer does not store info dicts (copy_info_dict=True); its "
                                       "compute_reward gets empty dicts, SB3's default")
        if not isinstance(observation_space, spaces.Dict) or \
                not {"observation", "achieved_goal", "desired_goal"} <= set(observation_space.spaces):
            raise InvalidArgumentError(f"DiskHerReplayBuffer needs a goal env's Dict observation space with "
                                       f"'observation', 'achieved_goal' and 'desired_goal', got {observation_space}")
        self.goal_selection_strategy = _strategy(goal_selection_strategy)
        self.n_sampled_goal = n_sampled_goal
        self.her_ratio = 1 - (1.0 / (self.n_sampled_goal + 1))
        self.copy_info_dict = False
        super().__init__(buffer_size, observation_space, action_space, device, n_envs, False,
                         handle_timeout_termination, path=path, mode=mode, backend=backend, commit_every=commit_every,
                         commit_interval_s=commit_interval_s, fsync=fsync, codec=codec)
        self._config.update(n_sampled_goal=n_sampled_goal, goal_selection_strategy=self.goal_selection_strategy)
        self.env = env

    def _set_up(self, config: dict, pending_next_obs: Any, mode: str) -> None:
        super()._set_up(config, pending_next_obs, mode)
        self._index_from_pool()

    # ------------------------------------------------------------------ SB3's episode index
    def _index_from_pool(self) -> None:
        """``ep_start``/``ep_length``/``_current_ep_start`` as SB3 would hold them after adding
        the pool's transitions: complete episodes wholly in the buffer have their length."""
        self.ep_start = np.zeros((self.buffer_size, self.n_envs), dtype=np.int64)
        self.ep_length = np.zeros((self.buffer_size, self.n_envs), dtype=np.int64)
        self._current_ep_start = np.full(self.n_envs, self.pos, dtype=np.int64)
        if not len(self._pool) or self._pool.bookkeeping is None:
            return
        first_block, _ = self._step_range()
        table = self._pool.episodes()
        for position in range(len(table)):
            env = int(table["env_id"][position])
            first, last = int(table["first_step_id"][position]), int(table["last_step_id"][position])
            if not 0 <= env < self.n_envs or (first - self._origin) % self.n_envs != env:
                continue  # not a row layout this buffer wrote
            blocks = np.arange((first - self._origin) // self.n_envs, (last - self._origin) // self.n_envs + 1)
            start = int(blocks[0]) % self.buffer_size
            held = blocks[blocks >= first_block] % self.buffer_size
            self.ep_start[held, env] = start
            if table["open"][position]:
                self._current_ep_start[env] = start
            elif not table["cut_off"][position] and blocks[0] >= first_block:
                self.ep_length[held, env] = len(blocks)

    def add(self, obs: dict[str, np.ndarray], next_obs: dict[str, np.ndarray], action: np.ndarray,  # type: ignore[override]
            reward: np.ndarray, done: np.ndarray, infos: list[dict[str, Any]]) -> None:
        """As SB3's ``HerReplayBuffer.add``: forget an episode being overwritten, append, and
        record the length of each episode that ends."""
        pos = self.pos
        for env_idx in range(self.n_envs):
            episode_start, episode_length = self.ep_start[pos, env_idx], self.ep_length[pos, env_idx]
            if episode_length > 0:
                episode_indices = np.arange(pos, episode_start + episode_length) % self.buffer_size
                self.ep_length[episode_indices, env_idx] = 0
        self.ep_start[pos] = self._current_ep_start.copy()
        DiskReplayBuffer.add(self, obs, next_obs, action, reward, done, infos)
        for env_idx in range(self.n_envs):
            if done[env_idx]:
                self._compute_episode_length(env_idx)

    def truncate_last_trajectory(self) -> None:
        """As SB3's: the episodes still running count as finished (they become sampleable). The
        pool's rows keep their flags (rows are never rewritten): their ``dones`` stay 0."""
        for env_idx in np.flatnonzero(self._current_ep_start != self.pos):
            self._compute_episode_length(int(env_idx))

    # ------------------------------------------------------------------ sampling, as SB3's
    def sample(self, batch_size: int, env: Any = None) -> DictReplayBufferSamples:  # type: ignore[override]
        """A batch drawn as SB3's ``HerReplayBuffer.sample`` draws it, read from the pool."""
        is_valid = self.ep_length > 0
        if not np.any(is_valid):
            raise RuntimeError(
                "Unable to sample before the end of the first episode. We recommend choosing a value "
                "for learning_starts that is greater than the maximum number of timesteps in the environment.")
        valid_indices = np.flatnonzero(is_valid)
        sampled_indices = np.random.choice(valid_indices, size=batch_size, replace=True)
        batch_indices, env_indices = np.unravel_index(sampled_indices, is_valid.shape)
        nb_virtual = int(self.her_ratio * batch_size)
        virtual_batch_indices, real_batch_indices = np.split(batch_indices, [nb_virtual])
        virtual_env_indices, real_env_indices = np.split(env_indices, [nb_virtual])
        real = self._samples(real_batch_indices, real_env_indices, env, relabel=False)
        virtual = self._samples(virtual_batch_indices, virtual_env_indices, env, relabel=True)
        return DictReplayBufferSamples(
            observations={key: th.cat((real.observations[key], virtual.observations[key]))
                          for key in virtual.observations},
            actions=th.cat((real.actions, virtual.actions)),
            next_observations={key: th.cat((real.next_observations[key], virtual.next_observations[key]))
                               for key in virtual.next_observations},
            dones=th.cat((real.dones, virtual.dones)), rewards=th.cat((real.rewards, virtual.rewards)))

    def _samples(self, batch_indices: np.ndarray, env_indices: np.ndarray, env: Any,
                 relabel: bool) -> DictReplayBufferSamples:
        """SB3's ``_get_real_samples`` (relabel False) or ``_get_virtual_samples`` (True)."""
        rows = self._pool.read(self._step_ids(batch_indices, env_indices))
        obs = {key: rows["obs_" + key] for key in self._keys()}
        next_obs = {key: rows["next_obs_" + key] for key in self._keys()}
        rewards = rows["reward"]
        if relabel:
            new_goals = self._sample_goals(batch_indices, env_indices)
            obs["desired_goal"] = new_goals
            next_obs["desired_goal"] = new_goals
            if self.env is None:
                raise InvalidArgumentError("DiskHerReplayBuffer needs the env to compute rewards: SB3 passes it; "
                                           "after load_replay_buffer call set_env(env)")
            rewards = self.env.env_method("compute_reward", next_obs["achieved_goal"], obs["desired_goal"],
                                          [{} for _ in range(len(batch_indices))], indices=[0])[0]
            rewards = np.asarray(rewards).astype(np.float32)
        dones = rows["terminated"] if self.handle_timeout_termination else rows["terminated"] | rows["truncated"]
        normalized_obs = self._normalize_obs(obs, env)
        normalized_next = self._normalize_obs(next_obs, env)
        assert isinstance(normalized_obs, dict) and isinstance(normalized_next, dict)
        return DictReplayBufferSamples(
            observations={key: self.to_torch(value) for key, value in normalized_obs.items()},
            actions=self.to_torch(rows["action"]),
            next_observations={key: self.to_torch(value) for key, value in normalized_next.items()},
            dones=self.to_torch(dones.astype(np.float32)).reshape(-1, 1),
            rewards=self.to_torch(self._normalize_reward(np.asarray(rewards).reshape(-1, 1), env)))

    def _sample_goals(self, batch_indices: np.ndarray, env_indices: np.ndarray) -> np.ndarray:
        """SB3's goal selection (the same random calls), the goals read from the pool."""
        batch_ep_start = self.ep_start[batch_indices, env_indices]
        batch_ep_length = self.ep_length[batch_indices, env_indices]
        if self.goal_selection_strategy == GoalSelectionStrategy.FINAL:
            transition_indices_in_episode = batch_ep_length - 1
        elif self.goal_selection_strategy == GoalSelectionStrategy.FUTURE:
            current_indices_in_episode = (batch_indices - batch_ep_start) % self.buffer_size
            transition_indices_in_episode = np.random.randint(current_indices_in_episode, batch_ep_length)
        else:
            transition_indices_in_episode = np.random.randint(0, batch_ep_length)
        transition_indices = (transition_indices_in_episode + batch_ep_start) % self.buffer_size
        return self._pool.read(self._step_ids(transition_indices, env_indices))["next_obs_achieved_goal"]

    def _keys(self) -> list[str]:
        return [key for key in self._obs_fields.values() if key is not None]

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        """The path and settings only, as the disk buffers pickle (the env is not pickled, as in SB3)."""
        return super().__getstate__()

    def __setstate__(self, state: dict) -> None:
        self.goal_selection_strategy = _strategy(state["config"]["goal_selection_strategy"])
        self.n_sampled_goal = state["config"]["n_sampled_goal"]
        self.her_ratio = 1 - (1.0 / (self.n_sampled_goal + 1))
        self.copy_info_dict = False
        super().__setstate__(state)
        self.env = None  # SB3's load_replay_buffer calls set_env


def _strategy(value: GoalSelectionStrategy | str) -> GoalSelectionStrategy:
    if isinstance(value, GoalSelectionStrategy):
        return value
    if isinstance(value, str) and value.lower() in KEY_TO_GOAL_STRATEGY:
        return KEY_TO_GOAL_STRATEGY[value.lower()]
    raise InvalidArgumentError(f"goal_selection_strategy={value!r} is not one of {sorted(KEY_TO_GOAL_STRATEGY)}")
