"""Stable-Baselines3 replay buffers whose transitions live in an expstore pool.

Pass the class to any off-policy algorithm (SAC, TD3, DDPG, DQN) and a pool path::

    model = SAC("MlpPolicy", env, replay_buffer_class=DiskReplayBuffer,
                replay_buffer_kwargs={"path": "pool.h5"})

Every transition of every sub-env is one pool row (``obs``, ``action``, ``reward``,
``next_obs``, ``terminated``, ``truncated``, ``env_index``), so the pool is also an ordinary
offline dataset. The buffer keeps no data of its own: SB3's ``pos``/``full`` are derived from
the pool's step ids, the pool commits as training goes (every ``commit_every`` rows or
``commit_interval_s`` seconds) and at a normal exit. A buffer built on a path that already
holds transitions continues that pool only when asked (``mode="a"``: after a crash, or in
``SAC.load``), and ``load_replay_buffer`` (which pickles only the path) always does; either
way it holds every transition the pool committed, and logs how many it adopted.

Sampling draws the same random numbers, from numpy's global generator, as SB3's own buffers,
so with the same seeds a run with a disk buffer is the run with SB3's buffer.

Under ``VecFrameStack(n_stack=k)`` pass ``frame_stack=k``: each row then stores the newest frame
only (one frame per transition instead of 2k) and the stacks are rebuilt at sample time, bit for
bit the ones SB3's own buffer returns (sb3_frame_stack.py).

``codec="zstd"`` stores every observation field compressed, one row at a time (Atari frames
shrink 6-40x); samples are the same arrays as without it.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any, cast

import numpy as np
from numpy.typing import DTypeLike

try:
    from gymnasium import spaces
    from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
    from stable_baselines3.common.preprocessing import get_action_dim, get_obs_shape
    from stable_baselines3.common.type_aliases import DictReplayBufferSamples, ReplayBufferSamples
    from stable_baselines3.common.utils import get_device
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("expstore.sb3 needs Stable-Baselines3: pip install 'expstore[sb3]'") from exc

import inspect

from ..codecs.registry import normalise_codec
from ..core.opening import open as open_pool
from ..errors import EmptyStoreError, InvalidArgumentError, SchemaError, StoreExistsError, StoreLockedError
from ..schema import Field, check_field_name
from .sb3_frame_stack import StackLayout, stack_layout

__all__ = ["DiskDictReplayBuffer", "DiskReplayBuffer"]

logger = logging.getLogger("expstore.sb3")  # its name before the layered layout

# Buffers of this process by pool path: a second buffer on the same path (SAC.load,
# load_replay_buffer) takes the pool over from the first instead of failing on its lock.
_open_buffers: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_MODES = ("x", "w-", "a")  # "w-" is h5py's spelling of "x"


class DiskReplayBuffer(ReplayBuffer):
    """SB3's ``ReplayBuffer`` (and ``DictReplayBuffer``) kept in a persistent pool.

    Args:
        buffer_size: transitions kept in all, as in SB3 (``buffer_size // n_envs`` per env).
        observation_space: a Box/Discrete/MultiDiscrete/MultiBinary space, or a Dict of them.
        action_space: the action space.
        device: where sampled tensors go.
        n_envs: sub-envs of the vector env.
        optimize_memory_usage: store observations once: the next observation of a row is the
            observation of the same env's next row, as in SB3 (halves the disk used).
        handle_timeout_termination: sample ``dones`` as terminations only, so a time limit
            does not cut bootstrapping (SB3's default). The pool records both flags anyway.
        path: the pool (``.h5`` or ``.zarr``).
        mode: ``"x"`` (default): a new pool; a pool at ``path`` that holds transitions is an
            error (one that holds none, left by a run that stopped before its first commit, is
            reused). ``"a"``: continue the pool at ``path`` (created if missing) and train on
            what it holds; the adopted transitions are logged. ``SAC.load`` builds the buffer
            from the saved ``replay_buffer_kwargs``: pass ``mode="a"`` there or to ``SAC.load``.
        backend: ``"hdf5"`` or ``"zarr"``; by default from the suffix.
        commit_every: commit every this many transitions (rounded up to whole env steps)...
        commit_interval_s: ...or when this many seconds passed.
        fsync: whether commits are durable against power loss.
        frame_stack: the ``n_stack`` of the ``VecFrameStack`` the env is wrapped in: store one
            frame per row (the newest channel(s) of each observation) and rebuild the stacks at
            sample time, zero-padded at episode starts as VecFrameStack pads them. The pool keeps
            ``frame_stack - 1`` env steps more than ``buffer_size``, the history of its oldest
            stacks. Not with ``optimize_memory_usage`` (it already stores each frame once).
        codec: compress the observations row by row, as ``expstore.Field(codec=)`` does:
            ``"zstd"``, ``"zstd:N"``, ``"lz4"`` or ``None``/``"raw"`` for every observation field
            (``obs`` and ``next_obs``; ``obs_<key>`` and ``next_obs_<key>`` of a Dict space), or a
            mapping from observation field names (``"obs"``, ``"obs_<key>"``) to codecs, the
            ``next_obs`` fields following theirs. A creation setting: a pool continued with
            ``mode="a"`` must have been made with the same codecs (``expstore convert --codec``
            changes them). ``"zstd:3+dict"`` (a dictionary trained on the first 2,000 frames)
            is the one for Atari frames.
        heap_bytes: the byte heaps of compressed observations, as ``expstore.open``'s: an int for
            all of them, or a dict by field. Without it a heap holds ``buffer_size`` raw rows, so
            compressed frames take no less disk than raw ones; Atari frames take about 110-450
            bytes each with ``"zstd:3+dict"``, so ``heap_bytes=buffer_size * 1024`` leaves room.
            Too small a heap evicts the oldest transitions before ``buffer_size`` is reached
            (``buffer.pool.window_bound`` says so). A creation setting, like ``codec``.
    """

    def __init__(self, buffer_size: int, observation_space: spaces.Space, action_space: spaces.Space,
                 device: Any = "auto", n_envs: int = 1, optimize_memory_usage: bool = False,
                 handle_timeout_termination: bool = True, *, path: str | os.PathLike, mode: str = "x",
                 backend: str | None = None, commit_every: int = 10_000, commit_interval_s: float = 5.0,
                 fsync: bool = True, frame_stack: int | None = None,
                 codec: str | dict[str, str | None] | None = None, heap_bytes: int | dict[str, int] | None = None):
        if path is None:
            raise InvalidArgumentError("DiskReplayBuffer needs a pool path: replay_buffer_kwargs={'path': 'pool.h5'}")
        if mode not in _MODES:
            raise InvalidArgumentError(f"DiskReplayBuffer mode {mode!r}: use 'x' (a new pool, the default) or 'a' "
                                       "(continue the pool at path); to start over, delete the pool or choose "
                                       "another path")
        if optimize_memory_usage and handle_timeout_termination:
            raise InvalidArgumentError(
                "optimize_memory_usage=True cannot honour handle_timeout_termination=True (the next observation "
                "of a time-limited step is not stored), as in SB3; pass handle_timeout_termination=False")
        if frame_stack is not None and optimize_memory_usage:
            raise InvalidArgumentError("frame_stack already stores every frame once; pass "
                                       "optimize_memory_usage=False with it")
        if frame_stack is not None:
            stack_layout(observation_space, frame_stack)  # a bad frame_stack fails before any pool is made
        _obs_codecs(codec, _obs_fields(observation_space))  # a bad codec too
        self._config = {
            "buffer_size": buffer_size, "observation_space": observation_space, "action_space": action_space,
            "n_envs": n_envs, "optimize_memory_usage": optimize_memory_usage,
            "handle_timeout_termination": handle_timeout_termination, "path": os.path.abspath(os.fspath(path)),
            "mode": mode, "backend": backend, "commit_every": commit_every, "commit_interval_s": commit_interval_s,
            "fsync": fsync, "frame_stack": frame_stack, "codec": codec, "heap_bytes": heap_bytes,
        }
        self.device = get_device(device)
        self._set_up(self._config, pending_next_obs=None, mode="a" if mode == "a" else "x")

    # ------------------------------------------------------------------ set-up
    def _set_up(self, config: dict, pending_next_obs: Any, mode: str) -> None:
        self.observation_space = config["observation_space"]
        self.action_space = config["action_space"]
        # SB3's ReplayBuffer declares a tuple; a Dict space's shapes are a dict (SB3's own
        # DictReplayBuffer ignores the same declaration).
        self.obs_shape = get_obs_shape(self.observation_space)  # type: ignore[assignment]
        self.action_dim = get_action_dim(self.action_space)
        self.n_envs = config["n_envs"]
        self.buffer_size = max(config["buffer_size"] // self.n_envs, 1)
        self.optimize_memory_usage = config["optimize_memory_usage"]
        self.handle_timeout_termination = config["handle_timeout_termination"]
        self.path = config["path"]
        self._obs_fields = _obs_fields(self.observation_space)
        frame_stack = config.get("frame_stack")
        self._stacking: StackLayout | None = (None if frame_stack is None
                                               else stack_layout(self.observation_space, frame_stack))
        self._codecs = _obs_codecs(config.get("codec"), self._obs_fields)  # pickles older than codec= lack it
        self._pool = _open_taking_over(self, config, self._schema(), mode)
        # Rows are grouped in env steps of n_envs rows from the step id the pool had at open.
        self._origin = self._pool.next_step_id % self.n_envs
        self._pending_next_obs = pending_next_obs  # optimize_memory_usage: the newest step's next obs
        self._with_env_ids = _extend_takes_env_ids(self._pool)

    def _schema(self) -> dict:
        schema: dict[str, Field | tuple[tuple[int, ...], DTypeLike | None]] = {}
        whole = self.observation_space
        for name, key in self._obs_fields.items():
            space = whole[key] if isinstance(whole, spaces.Dict) and key is not None else whole
            schema[name] = Field(_shape_of(self.obs_shape, key), cast(DTypeLike, space.dtype), codec=self._codecs[name])
        if self._stacking is not None:  # one frame per row; next frames derived, final ones kept
            schema["obs"] = Field(self._stacking.frame_shape, cast(DTypeLike, self.observation_space.dtype),
                                  codec=self._codecs["obs"])
        elif not self.optimize_memory_usage:
            schema.update({"next_" + name: spec for name, spec in schema.items()})
        schema["action"] = ((self.action_dim,), self._maybe_cast_dtype(self.action_space.dtype))
        schema["reward"] = ((), np.float32)
        schema["terminated"] = ((), np.bool_)
        schema["truncated"] = ((), np.bool_)
        schema["env_index"] = ((), np.int32)
        return schema

    @property
    def pool(self):
        """The :class:`expstore.Store` holding the transitions."""
        return self._pool

    # ------------------------------------------------------------------ SB3's view of the ring
    def _step_range(self) -> tuple[int, int]:
        """Env steps (groups of n_envs rows) wholly in the pool, as block numbers [first, end)."""
        low, high = self._pool.first_step_id, self._pool.next_step_id
        return -(-(low - self._origin) // self.n_envs), (high - self._origin) // self.n_envs

    @property
    def pos(self) -> int:
        """SB3's next write position, derived from the pool."""
        return self._step_range()[1] % self.buffer_size

    @pos.setter
    def pos(self, value: int) -> None:
        raise InvalidArgumentError("a DiskReplayBuffer's position follows its pool; it cannot be set")

    @property
    def full(self) -> bool:
        """Whether the pool holds buffer_size env steps."""
        first, end = self._step_range()
        return end - first >= self.buffer_size

    @full.setter
    def full(self, value: bool) -> None:
        raise InvalidArgumentError("a DiskReplayBuffer's fullness follows its pool; it cannot be set")

    def size(self) -> int:
        """Env steps held (SB3's size: transitions per env)."""
        first, end = self._step_range()
        return min(end - first, self.buffer_size)

    def reset(self) -> None:
        raise InvalidArgumentError(f"{self.path}: a disk buffer is not emptied in place; "
                                   "delete the pool or give the buffer a new path")

    # ------------------------------------------------------------------ writing
    def add(self, obs: Any, next_obs: Any, action: np.ndarray, reward: np.ndarray, done: np.ndarray,
            infos: list[dict[str, Any]]) -> None:
        """Append one env step: one row per sub-env, in env order."""
        batch = self._obs_columns(obs, "")
        if self._stacking is not None:
            batch["next_obs"] = self._stacking.newest(np.asarray(next_obs, dtype=batch["obs"].dtype))
            self._pending_next_obs = {"obs": batch["next_obs"]}  # the newest step's, until its successor comes
        elif not self.optimize_memory_usage:
            batch.update(self._obs_columns(next_obs, "next_"))
        done = np.asarray(done).reshape(self.n_envs).astype(bool)
        timeouts = np.array([bool(info.get("TimeLimit.truncated", False)) for info in infos], dtype=bool)
        batch["action"] = np.asarray(action).reshape(self.n_envs, self.action_dim)
        batch["reward"] = np.asarray(reward, dtype=np.float32).reshape(self.n_envs)
        batch["terminated"] = done & ~timeouts
        batch["truncated"] = done & timeouts
        batch["env_index"] = np.arange(self.n_envs, dtype=np.int32)
        batch["action"] = batch["action"].astype(self._pool.schema["action"].dtype, copy=False)
        if self._with_env_ids:
            self._pool.extend(batch, env_ids=batch["env_index"])
        else:
            self._pool.extend(batch)
        if self.optimize_memory_usage:
            self._pending_next_obs = self._obs_columns(next_obs, "")

    def _obs_columns(self, obs: Any, prefix: str) -> dict[str, np.ndarray]:
        """Observations as (n_envs, *shape) arrays of the field dtype; copies, as SB3 does."""
        columns = {}
        for name, key in self._obs_fields.items():
            field = self._pool.schema[name]
            value = obs[key] if key is not None else obs
            if self._stacking is not None:
                value = self._stacking.newest(np.asarray(value).reshape(self.n_envs, *self.obs_shape))
            columns[prefix + name] = np.array(value, dtype=field.dtype).reshape(self.n_envs, *field.shape)
        return columns

    # ------------------------------------------------------------------ sampling
    def sample(self, batch_size: int, env: Any = None):
        """A batch of ``batch_size`` transitions, drawn as SB3's buffers draw them."""
        first, end = self._step_range()
        held = min(end - first, self.buffer_size)
        if held == self.buffer_size:
            if not self.optimize_memory_usage:
                positions = np.random.randint(0, self.buffer_size, size=batch_size)
            else:  # as SB3: not the oldest step, whose slot SB3 gives to the newest next obs
                high = self.buffer_size - (self._pending_next_obs is None)
                positions = (np.random.randint(1, high, size=batch_size) + self.pos) % self.buffer_size
        else:
            usable = held - (self.optimize_memory_usage and self._pending_next_obs is None)
            if usable <= 0:
                raise EmptyStoreError(f"{self.path} holds no transition to sample yet; add some first")
            positions = np.random.randint(0, usable, size=batch_size)
        return self._get_samples(positions, env=env)

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None):
        env_indices = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))
        step_ids = self._step_ids(batch_inds, env_indices)
        rows: Any = (self._stacked_rows(step_ids, env_indices) if self._stacking is not None
                     else self._pool.read(step_ids))
        obs = self._gather_obs(rows, "")
        if self.optimize_memory_usage:  # never with frame_stack, whose rows carry next_obs stacks
            next_obs = self._next_obs(step_ids, env_indices)
        else:
            next_obs = self._gather_obs(rows, "next_")
        dones = rows["terminated"] if self.handle_timeout_termination else rows["terminated"] | rows["truncated"]
        dones = dones.astype(np.float32).reshape(-1, 1)
        rewards = self._normalize_reward(rows["reward"].reshape(-1, 1), env)
        obs, next_obs = self._normalize_obs(obs, env), self._normalize_obs(next_obs, env)
        if isinstance(self.observation_space, spaces.Dict):  # then the observations are dicts of arrays
            obs_dict, next_obs_dict = cast(dict[str, np.ndarray], obs), cast(dict[str, np.ndarray], next_obs)
            return DictReplayBufferSamples(
                observations={key: self.to_torch(value) for key, value in obs_dict.items()},
                actions=self.to_torch(rows["action"]),
                next_observations={key: self.to_torch(value) for key, value in next_obs_dict.items()},
                dones=self.to_torch(dones), rewards=self.to_torch(rewards))
        return ReplayBufferSamples(*map(self.to_torch, (obs, rows["action"], next_obs, dones, rewards)))

    def _stacked_rows(self, step_ids: np.ndarray, env_indices: np.ndarray) -> dict[str, np.ndarray]:
        """frame_stack: the rows with their stacks rebuilt. The next frame of the newest env step's
        running episodes is not in the pool yet: their next stacks are pushed with the frame add()
        was given (SB3 stores it)."""
        layout = cast(StackLayout, self._stacking)
        rows = self._pool.read(step_ids, **layout.sample_options)
        if "next_obs" in rows:
            return rows
        ended = rows["terminated"] | rows["truncated"]
        newest = (step_ids >= self._pool.next_step_id - self.n_envs) & ~ended & (self._pending_next_obs is not None)
        rows["next_obs"] = np.empty_like(rows["obs"])
        if newest.any():
            pending = self._pending_next_obs["obs"][env_indices[newest]]
            rows["next_obs"][newest] = layout.push(rows["obs"][newest], pending)
        rest = np.flatnonzero(~newest)
        if rest.size:
            rest_rows = self._pool.read(step_ids[rest], **layout.sample_options)
            if "next_obs" in rest_rows:
                rows["next_obs"][rest] = rest_rows["next_obs"]
            else:  # rows cut off by a restart: their next frame was never given to the pool
                rows["next_obs"][rest] = self._unknown_next(step_ids[rest], rows["obs"][rest])
        return rows

    def _unknown_next(self, step_ids: np.ndarray, stacks: np.ndarray) -> np.ndarray:
        """Next stacks of rows whose next frame the pool never got: the last rows of episodes that
        were running when an earlier writer of the pool stopped. Read one by one (few such rows
        exist, one per env and restart); those without one repeat their own newest frame."""
        layout = cast(StackLayout, self._stacking)
        result = np.empty_like(stacks)
        for i, step in enumerate(step_ids):
            one = self._pool.read([step], **layout.sample_options)
            if "next_obs" in one:
                result[i] = one["next_obs"][0]
            else:
                logger.warning("%s: step %d ended an episode cut off by a restart; its next frame is unknown and "
                               "sampled as its own newest frame", self.path, int(step))
                result[i] = layout.push(stacks[i:i + 1], layout.newest(stacks[i:i + 1]))[0]
        return result

    def _step_ids(self, positions: np.ndarray, env_indices: np.ndarray) -> np.ndarray:
        """Pool step ids of SB3 ring positions (as SB3 numbers its rows) and env indices."""
        first, end = self._step_range()
        if end - first >= self.buffer_size:
            blocks = end - self.buffer_size + (positions - end) % self.buffer_size
        else:
            blocks = first + positions
        return self._origin + blocks.astype(np.int64) * self.n_envs + env_indices

    def _next_obs(self, step_ids: np.ndarray, env_indices: np.ndarray) -> Any:
        """optimize_memory_usage: the next obs is the same env's obs one env step later."""
        successors = step_ids + self.n_envs
        stored = successors < self._pool.next_step_id
        rows = self._pool.read(successors[stored])
        result = {}
        for name in self._obs_fields:
            values = np.empty((len(step_ids), *self._pool.schema[name].shape), self._pool.schema[name].dtype)
            values[stored] = rows[name]
            if not stored.all():
                values[~stored] = self._pending_next_obs[name][env_indices[~stored]]
            result[name] = values
        return self._as_observation(result)

    def _gather_obs(self, rows: dict, prefix: str) -> Any:
        return self._as_observation({name: rows[prefix + name] for name in self._obs_fields})

    def _as_observation(self, columns: dict[str, np.ndarray]) -> Any:
        if isinstance(self.observation_space, spaces.Dict):
            return {key: columns[name] for name, key in self._obs_fields.items()}
        return columns["obs"]

    # ------------------------------------------------------------------ life cycle
    def flush(self) -> None:
        """Commit every added transition now (durably, unless fsync=False)."""
        self._pool.flush()

    def close(self) -> None:
        """Commit and release the pool; the buffer cannot be used afterwards.

        With ``frame_stack``, the episodes still running end here (as truncated; their rows keep
        the flags the env gave, so TD targets still bootstrap), with the frame ``add()`` got last
        as their final next frame: a pool reopened later (a restarted training run) knows the
        next observation of every row. Without ``close()`` (a crash, a killed process) that frame
        is lost, and those last rows are sampled with their own newest frame as the next one.
        """
        if not self._pool.closed:
            self._end_running_episodes()
        self._pool.close()

    def _end_running_episodes(self) -> None:
        """frame_stack: keep the newest step's next frames as the final frames of the open episodes."""
        if self._stacking is None or self._pending_next_obs is None or not self._pool.writable:
            return
        pending = self._pending_next_obs["obs"]
        env_ids = np.arange(self.n_envs) if self._with_env_ids else np.zeros(1, np.int64)
        self._pool.end_episodes(env_ids, next_obs={"next_obs": pending[:len(env_ids)]})
        self._pending_next_obs = None

    def __getstate__(self) -> dict:
        """Pickle (``save_replay_buffer``) the path and settings only; the data stays in the pool."""
        if self._pool.writable:
            self._pool.flush()
        return {"config": self._config, "device": str(self.device), "pending_next_obs": self._pending_next_obs}

    def __setstate__(self, state: dict) -> None:
        self._config = state["config"]
        self.device = get_device(state["device"])
        # The pickle is this pool's own buffer (load_replay_buffer): it continues the pool whatever its mode.
        self._set_up(self._config, state["pending_next_obs"], mode="a")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r} steps={self.size()} n_envs={self.n_envs}>"


class DiskDictReplayBuffer(DiskReplayBuffer, DictReplayBuffer):
    """:class:`DiskReplayBuffer` for Dict observations; also an SB3 ``DictReplayBuffer``.

    Each key ``k`` of the observation space is stored as the fields ``obs_k`` and
    ``next_obs_k``. Unlike SB3's, it supports ``optimize_memory_usage``.
    """

    def __init__(self, buffer_size: int, observation_space: spaces.Dict, action_space: spaces.Space, *args,
                 **kwargs):
        if not isinstance(observation_space, spaces.Dict):
            raise InvalidArgumentError(f"DiskDictReplayBuffer needs a Dict observation space, got "
                                       f"{observation_space}; use DiskReplayBuffer")
        super().__init__(buffer_size, observation_space, action_space, *args, **kwargs)


def _obs_fields(space: spaces.Space) -> dict[str, str | None]:
    """Pool field name -> Dict key (None for a plain space)."""
    if not isinstance(space, spaces.Dict):
        return {"obs": None}
    fields: dict[str, str | None] = {}
    for key in space.spaces:
        try:
            fields[check_field_name(f"obs_{key}")] = key
        except SchemaError:
            raise SchemaError(f"observation key {key!r} cannot name a pool field (obs_{key}); "
                              "use keys that are Python identifiers") from None
    return fields


def _obs_codecs(codec: Any, obs_fields: dict[str, str | None]) -> dict[str, str | None]:
    """Observation field name -> canonical codec name (None: raw), from the ``codec`` argument."""
    if codec is None or isinstance(codec, str):
        return dict.fromkeys(obs_fields, normalise_codec(codec))
    if not isinstance(codec, dict):
        raise InvalidArgumentError(f"codec={codec!r}: give a codec name such as 'zstd', or a mapping from "
                                   f"observation fields ({', '.join(obs_fields)}) to codec names")
    unknown = sorted(set(codec) - set(obs_fields))
    if unknown:
        raise InvalidArgumentError(f"codec names {unknown}, which are not observation fields of this buffer; "
                                   f"the fields are {', '.join(obs_fields)} (next_obs fields follow theirs)")
    return {name: normalise_codec(codec.get(name)) for name in obs_fields}


def _shape_of(obs_shape: Any, key: str | None) -> tuple[int, ...]:
    return tuple(obs_shape[key] if key is not None else obs_shape)


def _open_taking_over(buffer: DiskReplayBuffer, config: dict, schema: dict, mode: str):
    """Open (or create) the pool; a buffer of this process holding it hands it over first."""
    path, n_envs = config["path"], config["n_envs"]
    previous = _open_buffers.get(path)
    previous_pool = getattr(previous, "_pool", None) if previous is not buffer else None
    if previous_pool is not None and previous_pool._closed:
        previous_pool = None
    if mode == "x":
        _refuse_a_pool_with_transitions(path, previous_pool)
    if previous_pool is not None:
        logger.info("%s: a new replay buffer takes the pool over; the previous buffer is closed", path)
        end_running_episodes = getattr(previous, "_end_running_episodes", None)
        if end_running_episodes is not None:  # frame_stack: its newest next frames survive the reopen
            end_running_episodes()
        previous_pool.close()
    commit_every = -(-config["commit_every"] // n_envs) * n_envs
    attrs = {"sb3": {"n_envs": n_envs, "buffer_size": config["buffer_size"],
                     "observation_space": str(config["observation_space"]),
                     "action_space": str(config["action_space"])}}
    frame_stack = config.get("frame_stack")
    if frame_stack is not None:
        attrs["sb3"]["frame_stack"] = frame_stack
    # A stack of the oldest env step needs the frame_stack - 1 env steps before it.
    history_steps = 0 if frame_stack is None else frame_stack - 1
    try:
        pool = open_pool(path, "a", capacity=(max(config["buffer_size"] // n_envs, 1) + history_steps) * n_envs,
                         schema=schema, backend=config["backend"], attrs=attrs, commit_every=commit_every,
                         commit_interval_s=config["commit_interval_s"], fsync=config["fsync"],
                         derive_next_obs=frame_stack is not None,
                         heap_bytes=config.get("heap_bytes"))  # pickles older than heap_bytes= lack it
    except StoreLockedError as exc:
        raise StoreLockedError(f"{exc}; another process (or an SB3 model of this process that was not "
                               "closed) is writing this pool: close it, or give this buffer another path") from None
    if len(pool):
        logger.info("%s: the replay buffer adopted %d transitions (step ids %d to %d) already in the pool",
                    path, len(pool), pool.first_step_id, pool.next_step_id - 1)
    _open_buffers[path] = buffer
    return pool


def _refuse_a_pool_with_transitions(path: str, open_pool_of_this_process) -> None:
    """Mode "x": a pool that holds transitions is another run's data, never taken over unasked."""
    if open_pool_of_this_process is not None:
        held = open_pool_of_this_process.next_step_id - open_pool_of_this_process.first_step_id
    elif os.path.exists(path):
        with open_pool(path, "r") as existing:  # a reader takes no lock and reads the committed window
            held = len(existing)
    else:
        return
    if held:
        raise StoreExistsError(
            f"{path} already holds {held} transitions (an earlier run's pool); to train on them pass "
            f"replay_buffer_kwargs={{'path': {path!r}, 'mode': 'a'}} (to SAC.load as well), to start over "
            "delete the pool or give the buffer another path")


def _extend_takes_env_ids(pool) -> bool:
    """Pools with episode bookkeeping track episodes per env id when extend is told them."""
    return "env_ids" in inspect.signature(pool.extend).parameters
