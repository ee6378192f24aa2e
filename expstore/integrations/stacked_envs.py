"""Envs whose observations are frame stacks (gymnasium's ``FrameStackObservation``), recorded one
frame per row.

A stacked observation repeats k - 1 frames of the one before it, so ``RecordEpisodes`` keeps only
its newest frame; ``pool.sample(..., frame_stack=k, stack_padding=...)`` rebuilds the stacks the
env returned (expstore/core/stacking.py). This module finds the stacking (detected from the
wrapper chain, or declared), turns the stacked space into the space of one frame, and takes the
newest frame out of an observation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import FrameStackObservation

from ..core.stacking import STACK_PADDINGS
from ..errors import InvalidArgumentError, SchemaError
from .spaces import space_fields


@dataclass(frozen=True)
class EnvStacking:
    """An env's frame stacking: k frames along a new leading axis, padded as ``padding``."""

    frames: int
    padding: str
    stacked_space: spaces.Space  # one observation as the env returns it
    frame_space: spaces.Space  # one frame of it

    @property
    def sample_options(self) -> dict[str, Any]:
        """The keywords that make ``pool.sample``/``read``/... return what the env returned."""
        return {"frame_stack": self.frames, "stack_axis": 0, "stack_padding": self.padding}

    def newest(self, value: Any, batched: bool) -> Any:
        """The newest frame of an observation (of each sub-env's, when ``batched``)."""
        return _newest(self.stacked_space, value, 1 if batched else 0)


def find_stacking(env: Any, observation_space: spaces.Space, frame_stack: int | bool | None,
                  stack_padding: str | None, vector: bool) -> EnvStacking | None:
    """The stacking to record under: declared (``frame_stack=k``), detected (None), or none (False)."""
    if frame_stack is False:
        return None
    detected = _detect_vector(env) if vector else _detect(env, observation_space)
    if frame_stack is None:
        if detected is None:
            return None
        frames, padding = detected
    else:
        if isinstance(frame_stack, bool) or not isinstance(frame_stack, (int, np.integer)) or frame_stack < 1:
            raise InvalidArgumentError(f"frame_stack={frame_stack!r} must be None (detect FrameStackObservation), "
                                       "False (store the observations as they are) or the int k of the env's stacks")
        frames = int(frame_stack)
        padding = detected[1] if detected is not None else (stack_padding or "reset")
        if detected is not None and detected[0] != frames:
            raise InvalidArgumentError(f"frame_stack={frames} but the env stacks {detected[0]} frames "
                                       f"(FrameStackObservation); pass frame_stack={detected[0]} or leave it out")
    if stack_padding is not None and stack_padding != padding:
        raise InvalidArgumentError(f"stack_padding={stack_padding!r} but the env pads with {padding!r}; leave "
                                   "stack_padding out to use the env's")
    if padding not in STACK_PADDINGS:
        raise InvalidArgumentError(f"the env pads its frame stacks with {padding!r}; only 'reset' and 'zero' "
                                   "padding can be rebuilt: use FrameStackObservation(env, k, padding_type='reset' "
                                   "or 'zero'), or pass frame_stack=False to store the stacks as they are")
    return EnvStacking(frames, padding, observation_space, _frame_space(observation_space, frames))


def check_pool_schema(pool: Any, stacking: EnvStacking) -> None:
    """A stacked env recorded into a pool that already stores whole stacks is refused."""
    schema = pool.schema
    if schema is None:
        return
    stacked = space_fields("obs", stacking.stacked_space)
    frame = space_fields("obs", stacking.frame_space)
    held = {name: schema[name].shape for name in frame if name in schema}
    if held and all(held[name] == stacked[name].shape for name in held):
        raise SchemaError(
            f"{pool.path} stores whole frame stacks ({held}), but the env stacks {stacking.frames} frames "
            f"(FrameStackObservation): record into a new pool, which stores one frame per row (shapes "
            f"{ {name: field.shape for name, field in frame.items()} }) and rebuilds the stacks with "
            f"pool.sample(..., frame_stack={stacking.frames}, stack_padding={stacking.padding!r}); or pass "
            "frame_stack=False to keep storing the stacks")


def _detect(env: Any, observation_space: spaces.Space) -> tuple[int, str] | None:
    """(k, padding) of the FrameStackObservation in the wrapper chain, when no wrapper above it
    changes its observations."""
    layer = env
    while layer is not None:
        if isinstance(layer, FrameStackObservation):
            if layer.observation_space != observation_space:
                return None  # a wrapper above it reshapes the stacks: they are not its own
            return int(layer.stack_size), _padding_name(layer.padding_type, getattr(layer, "padding_value", None))
        layer = getattr(layer, "env", None)
    return None


def _detect_vector(env: Any) -> tuple[int, str] | None:
    """(k, padding) of sub-envs wrapped in FrameStackObservation: read from a SyncVectorEnv's first
    sub-env; an AsyncVectorEnv's sub-envs live in other processes (asking them for an attribute
    they lack shuts a worker down), so one more sub-env is made from its first env_fn and closed."""
    base = getattr(env, "unwrapped", env)
    single_space = env.single_observation_space
    envs = getattr(base, "envs", None)
    if envs:
        return _detect(envs[0], single_space)
    env_fns = getattr(base, "env_fns", None)
    if not env_fns:
        return None
    probe = env_fns[0]()
    try:
        return _detect(probe, single_space)
    finally:
        probe.close()


def _padding_name(padding: Any, value: Any) -> str:
    """FrameStackObservation's "reset" or "zero"; a custom padding value ("_custom") of zeros pads as
    "zero" does."""
    if padding != "_custom":
        return str(padding)
    leaves = list(value.values()) if isinstance(value, dict) else [value]
    return "zero" if all(not np.asarray(leaf).any() for leaf in leaves) else "a custom value"


def _frame_space(space: spaces.Space, frames: int) -> spaces.Space:
    if isinstance(space, spaces.Dict):
        return spaces.Dict({key: _frame_space(sub, frames) for key, sub in space.spaces.items()})
    if isinstance(space, spaces.Tuple):
        return spaces.Tuple([_frame_space(sub, frames) for sub in space.spaces])
    if isinstance(space, spaces.Box) and space.shape and space.shape[0] == frames:
        return spaces.Box(space.low[0], space.high[0], space.shape[1:], space.dtype)
    if isinstance(space, spaces.MultiDiscrete) and space.nvec.shape and space.nvec.shape[0] == frames:
        return spaces.MultiDiscrete(space.nvec[0])
    raise SchemaError(f"observations of space {space} are not stacks of {frames} frames along their first axis; "
                      "pass frame_stack=False to store them as they are")


def _newest(space: spaces.Space, value: Any, axis: int) -> Any:
    if isinstance(space, spaces.Dict):
        return {key: _newest(sub, value[key], axis) for key, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_newest(sub, value[i], axis) for i, sub in enumerate(space.spaces))
    return np.take(np.asarray(value), -1, axis=axis)
