"""SB3 observations stacked by ``VecFrameStack``, stored one frame per row.

``VecFrameStack(n_stack=k)`` concatenates the k newest frames along the channel axis, last for
channels-last images and vectors, first once SB3 has transposed an image env
(``VecTransposeImage``, which DQN and the CNN policies add): (84, 84, 1) frames become
(84, 84, k), or (k, 84, 84). A ``DiskReplayBuffer(frame_stack=k)`` stores only the newest frame
of each observation (the pool derives the next one from the next row, and keeps the final one
of each episode) and rebuilds the stacks at sample time, padded with zeros at episode starts as
``VecFrameStack`` pads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class StackLayout:
    """Where the k frames of a stacked observation lie, and the shape of one frame."""

    frames: int
    channels_first: bool  # stacked along the first axis of (k, H, W) images, else along the last axis
    frame_shape: tuple[int, ...]

    @property
    def sample_options(self) -> dict:
        """``Store.read`` keywords that rebuild the stacks: VecFrameStack pads zeros."""
        return {"frame_stack": self.frames, "stack_axis": 0 if self.channels_first else -1, "stack_padding": "zero"}

    def newest(self, stacked: np.ndarray) -> np.ndarray:
        """The newest frame of a batch of stacked observations (n_envs, *stacked shape)."""
        if self.channels_first:
            return stacked[:, -1]
        return stacked[..., -self.frame_shape[-1]:]

    def push(self, stacks: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """The stacks after one more frame: the oldest frame out, ``frames`` in (VecFrameStack's roll)."""
        if self.channels_first:
            return np.concatenate([stacks[:, 1:], frames[:, None]], axis=1)
        width = self.frame_shape[-1]
        return np.concatenate([stacks[..., width:], frames], axis=-1)


def stack_layout(space: spaces.Space, frame_stack: int) -> StackLayout:
    """The layout of ``space``'s observations as stacks of ``frame_stack`` frames."""
    if isinstance(frame_stack, bool) or not isinstance(frame_stack, (int, np.integer)) or frame_stack < 1:
        raise InvalidArgumentError(f"frame_stack={frame_stack!r} must be the n_stack of the VecFrameStack "
                                   "the env is wrapped in (e.g. 4), or None")
    if not isinstance(space, spaces.Box) or not space.shape:
        raise InvalidArgumentError(f"frame_stack needs a Box observation space (VecFrameStack's), not {space}; "
                                   "a Dict space stacks each key: store it without frame_stack")
    k = int(frame_stack)
    channels_first = is_image_space(space, check_channels=False) and is_image_space_channels_first(space)
    if channels_first:
        if space.shape[0] != k:
            raise InvalidArgumentError(
                f"observations of shape {space.shape} are channels-first images with {space.shape[0]} channels, "
                f"not {k} stacked single-channel frames; frame_stack={k} rebuilds (k, H, W) stacks of "
                "grayscale frames only: pass frame_stack=None to store the observations as they are")
        return StackLayout(k, True, tuple(space.shape[1:]))
    if space.shape[-1] % k:
        raise InvalidArgumentError(f"the last axis of observations of shape {space.shape} does not split into "
                                   f"{k} frames; pass the n_stack of the env's VecFrameStack as frame_stack")
    return StackLayout(k, False, (*space.shape[:-1], space.shape[-1] // k))
