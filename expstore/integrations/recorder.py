"""``RecordEpisodes``: a Gymnasium wrapper that records every step of an env into a pool.

Each step becomes one row: ``obs*``, ``action*``, ``reward``, ``next_obs*``, ``terminated``,
``truncated``, the info fields asked for, and ``policy_version`` when the pool has that field.
A vector env (``SyncVectorEnv``/``AsyncVectorEnv``) writes one row per sub-env and step with
the sub-env's index as the row's env id, so each sub-env's episodes stay intact in the pool.

A ``reset()`` before an episode ended (Gymnasium allows one at any time) ends the interrupted
episode as truncated, as Minari's ``DataCollector`` does: ``Store.end_episodes`` closes it at
its last row and keeps the env's last observation as its final one. A vector env's ``reset()``
does so for every sub-env whose episode was running (only those in ``reset_mask`` if given).

An env wrapped in ``FrameStackObservation`` (detected, or declared with ``frame_stack=k``) returns
stacks of k frames that repeat k - 1 frames of the step before; only the newest frame of each is
stored, and ``pool.sample(..., **recorder.sample_options)`` (``frame_stack=k`` and the env's
padding) returns the stacks the env returned, bit for bit (stacked_envs.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

try:
    import gymnasium as gym
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("expstore.RecordEpisodes needs gymnasium: pip install 'expstore[train]' "
                      "(or pip install gymnasium)") from None

from ..errors import SchemaError
from ..schema import Schema
from .spaces import flatten, masked_rows, space_fields, with_masked_rows_replaced
from .stacked_envs import EnvStacking, check_pool_schema, find_stacking


def _pool_schema(observation_space, action_space, info_fields, info, store_next_obs, policy_version, batched):
    fields = dict(space_fields("obs", observation_space))
    fields.update(space_fields("action", action_space))
    fields["reward"] = ((), "float32")
    if store_next_obs:
        fields.update(space_fields("next_obs", observation_space))
    fields["terminated"], fields["truncated"] = ((), "bool"), ((), "bool")
    for name in info_fields:
        value = np.asarray(info[name]) if name in info else None
        if value is None:
            raise SchemaError(f"info field {name!r} is not in the env's info {sorted(info)}; "
                              "name fields the env reports, or create the pool with a schema")
        fields[name] = (value.shape[1:] if batched else value.shape, value.dtype)
    if policy_version is not None:
        fields["policy_version"] = ((), "int64")
    return fields


class _Recording:
    """What both wrappers share: the pool, the fields, and turning a step into rows."""

    def _setup(self, pool, info_fields: Sequence[str], policy_version: int | None, observation_space,
               action_space, stacking: EnvStacking | None = None) -> None:
        self.pool = pool
        self.info_fields = tuple(info_fields)
        self.policy_version = policy_version
        self._stacking = stacking
        if stacking is not None:
            check_pool_schema(pool, stacking)
            observation_space = stacking.frame_space
        self._recorded_obs_space, self._recorded_action_space = observation_space, action_space
        self._obs: dict[str, np.ndarray] | None = None
        self._last_next: dict[str, np.ndarray] | None = None  # the flattened next_obs of the last step

    @property
    def sample_options(self) -> dict:
        """``frame_stack``, ``stack_axis`` and ``stack_padding`` that rebuild the env's frame stacks
        from the pool (pass them to ``sample``, ``read``, ``episode``, ...); empty when the env does
        not stack frames."""
        return {} if self._stacking is None else self._stacking.sample_options

    def _flat(self, prefix: str, value, batched: bool) -> dict[str, np.ndarray]:
        """An observation as flat fields: the newest frame of a stacked env's observation."""
        if self._stacking is not None:
            value = self._stacking.newest(value, batched)
        return flatten(prefix, self._recorded_obs_space, value, batched)

    def _rows(self, obs, action, reward, next_obs: dict, terminated, truncated, info, batched: bool) -> dict:
        """One row (or a batch of rows), ``obs``/``next_obs`` already flattened."""
        if self.pool.schema is None:
            self._define(info, batched)
        row = dict(obs)
        row.update(flatten("action", self._recorded_action_space, action, batched))
        row["reward"] = np.asarray(reward, dtype=np.float32) if batched else float(reward)
        row.update(next_obs)  # a pool without next_obs fields keeps only episodes' final ones
        row["terminated"], row["truncated"] = (np.asarray(terminated, bool), np.asarray(truncated, bool)) \
            if batched else (bool(terminated), bool(truncated))
        for name in self.info_fields:
            row[name] = info[name]
        if "policy_version" in self.pool.schema:
            version = 0 if self.policy_version is None else int(self.policy_version)
            row["policy_version"] = np.full(len(row["reward"]), version, np.int64) if batched else version
        return row

    def _define(self, info: dict, batched: bool) -> None:
        store_next_obs = not getattr(self.pool.creates_on_first_write, "derive_next_obs", False)
        schema = _pool_schema(self._recorded_obs_space, self._recorded_action_space, self.info_fields, info,
                              store_next_obs, self.policy_version, batched)
        self.pool.create_with_schema(Schema(schema))


class RecordEpisodes(gym.Wrapper, _Recording):
    """Record every step of ``env`` into ``pool`` (an ``expstore`` Store open for writing).

    Args:
        env: a Gymnasium env, or a ``gymnasium.vector.VectorEnv`` (then a vector wrapper is
            returned that records each sub-env's episodes under its index as ``env_id``).
        pool: the pool; when it has no schema yet, the schema is made from the env's spaces
            (a pool opened with ``derive_next_obs=True`` then gets no ``next_obs`` fields).
        info_fields: names of ``info`` entries to store as fields of their own.
        policy_version: an int stamped on every row in a ``policy_version`` field (created when
            given here); set ``wrapper.policy_version`` whenever the policy changes.
        frame_stack: None (default): detect ``FrameStackObservation`` in the env's wrapper chain
            (in a vector env's sub-envs) and store only the newest frame of each stacked
            observation; an int k: the env's observations are stacks of k frames along their
            first axis (declared, for other stacking wrappers); False: store them as they are.
        stack_padding: the padding of a declared stack ("reset" or "zero"; detected ones use
            the wrapper's own).
    """

    def __new__(cls, env, *args, **kwargs):
        if isinstance(env, gym.vector.VectorEnv):
            wrapper = object.__new__(RecordVectorEpisodes)
            wrapper.__init__(env, *args, **kwargs)
            return wrapper
        return super().__new__(cls)

    def __init__(self, env: gym.Env, pool, info_fields: Sequence[str] = (), *, policy_version: int | None = None,
                 frame_stack: int | bool | None = None, stack_padding: str | None = None):
        gym.Wrapper.__init__(self, env)
        stacking = find_stacking(env, env.observation_space, frame_stack, stack_padding, vector=False)
        self._setup(pool, info_fields, policy_version, env.observation_space, env.action_space, stacking)

    def reset(self, **kwargs):
        if self._last_next is not None:  # the episode is still running: the reset interrupts it
            self.pool.end_episodes([0], next_obs={name: value[None] for name, value in self._last_next.items()})
            self._last_next = None
        obs, info = self.env.reset(**kwargs)
        self._obs = self._flat("obs", obs, False)
        return obs, info

    def step(self, action):
        if self._obs is None:
            raise gym.error.ResetNeeded("call reset() before step(): the recorder needs the first observation")
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        next_flat = self._flat("next_obs", next_obs, False)
        self.pool.append(self._rows(self._obs, action, reward, next_flat, terminated, truncated, info, False))
        self._obs = {"obs" + name[8:]: value for name, value in next_flat.items()}
        self._last_next = None if terminated or truncated else next_flat
        return next_obs, reward, terminated, truncated, info


class RecordVectorEpisodes(gym.vector.VectorWrapper, _Recording):
    """The vector-env form of :class:`RecordEpisodes` (made by it for a VectorEnv)."""

    def __init__(self, env, pool, info_fields: Sequence[str] = (), *, policy_version: int | None = None,
                 frame_stack: int | bool | None = None, stack_padding: str | None = None):
        gym.vector.VectorWrapper.__init__(self, env)
        stacking = find_stacking(env, env.single_observation_space, frame_stack, stack_padding, vector=True)
        self._setup(pool, info_fields, policy_version, env.single_observation_space,
                    env.single_action_space, stacking)
        mode = (getattr(env, "metadata", None) or {}).get("autoreset_mode", "NextStep")
        self._mode = str(getattr(mode, "value", mode))  # an AutoresetMode, or its value
        self._resetting = np.zeros(env.num_envs, bool)
        self._running = np.zeros(env.num_envs, bool)  # sub-envs whose recorded episode has not ended

    def reset(self, **kwargs):
        mask = (kwargs.get("options") or {}).get("reset_mask")
        self._end_interrupted(self._running if mask is None else self._running & np.asarray(mask, bool))
        obs, info = self.env.reset(**kwargs)
        batch = self._flat("obs", obs, True)
        if self._obs is None or mask is None:
            self._obs = batch
        else:
            for name, values in batch.items():
                self._obs[name] = with_masked_rows_replaced(self._obs[name], mask, masked_rows(values, mask))
        self._resetting[:] = False if mask is None else self._resetting & ~np.asarray(mask)
        return obs, info

    def step(self, actions):
        if self._obs is None:
            raise gym.error.ResetNeeded("call reset() before step(): the recorder needs the first observations")
        next_obs, rewards, terminated, truncated, info = self.env.step(actions)
        final = self._final_observations(next_obs, info)
        keep = ~self._resetting  # NEXT_STEP autoreset: a sub-env's reset step is no transition
        rows = self._rows(self._obs, actions, rewards, final, terminated, truncated, info, True)
        if keep.any():
            self.pool.extend({name: masked_rows(values, keep) for name, values in rows.items()},
                             env_ids=np.flatnonzero(keep))
        self._obs = self._flat("obs", next_obs, True)
        ended = np.asarray(terminated) | np.asarray(truncated)
        self._running = keep & ~ended
        self._last_next = final
        if "NextStep" in self._mode:
            self._resetting = ended
        return next_obs, rewards, terminated, truncated, info

    def _end_interrupted(self, interrupted: np.ndarray) -> None:
        """End the episodes of the sub-envs a reset interrupts, at their last recorded row."""
        if interrupted.any() and self._last_next is not None:
            self.pool.end_episodes(np.flatnonzero(interrupted),
                                   next_obs={name: masked_rows(values, interrupted)
                                             for name, values in self._last_next.items()})
            self._running &= ~interrupted

    def _final_observations(self, next_obs, info) -> dict[str, np.ndarray]:
        """Flattened next observations; SAME_STEP autoreset returns the reset observation of a
        finished sub-env, its final one is in ``info["final_obs"]``."""
        final = self._flat("next_obs", next_obs, True)
        if "SameStep" not in self._mode or "final_obs" not in info:
            return final
        mask = np.asarray(info["_final_obs"])
        if mask.any():
            finals = _final_rows(self, info["final_obs"], mask)
            final = {name: with_masked_rows_replaced(values, mask, finals[name]) for name, values in final.items()}
        return final


def _final_rows(recording: _Recording, final_obs: Any, mask: np.ndarray) -> dict[str, list[np.ndarray]]:
    """The flattened final observations of the sub-envs in ``mask``, one row each per field."""
    rows = [recording._flat("next_obs", final_obs[i], False) for i in np.flatnonzero(mask)]
    return {name: [row[name] for row in rows] for name in rows[0]}
