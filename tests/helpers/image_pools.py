"""Small pools of synthetic frames (no emulator needed): each frame is derived from its step id,
so a video or a thumbnail can be checked against the frame it must show."""

from __future__ import annotations

import numpy as np

import expstore

SIDE = 32
# Episode lengths of the default image pool: returns are not in episode order, so sorting the
# episode table by return reorders it.
EPISODE_LENGTHS = (7, 12, 5, 9, 11, 6)


def frame_of(step_id: int, height: int = SIDE, width: int = SIDE, channels: int = 3) -> np.ndarray:
    """An [H, W, C] uint8 frame with few colours (a GIF holds it exactly) that differs per step:
    a band whose row and colour follow the step id, on a background of the step's shade."""
    frame = np.zeros((height, width, channels), np.uint8)
    frame[...] = (step_id * 7) % 200
    row = step_id % height
    frame[row, :, :] = 255
    frame[:, step_id % width, channels - 1] = (step_id * 31) % 256
    return frame


def frames_for(step_ids, height: int = SIDE, width: int = SIDE, channels: int = 3) -> np.ndarray:
    return np.stack([frame_of(int(s), height, width, channels) for s in step_ids])


def shaped(frames: np.ndarray, layout: str) -> np.ndarray:
    """[n, H, W, C] frames stored as ``layout``: "HW" (C == 1 dropped), "HWC", "CHW"."""
    if layout == "HW":
        return frames[..., 0]
    if layout == "CHW":
        return np.ascontiguousarray(np.moveaxis(frames, -1, 1))
    return frames


def episode_rewards(step_ids: np.ndarray) -> np.ndarray:
    return ((step_ids * 5) % 7 - 2).astype(np.float32)


def make_image_pool(path: str, lengths=EPISODE_LENGTHS, *, layout: str = "HWC", channels: int = 3,
                    height: int = SIDE, width: int = SIDE, capacity: int = 1000) -> str:
    """A pool whose ``obs`` holds one frame per step, in ``layout``, episodes of ``lengths``."""
    rows = int(sum(lengths))
    steps = np.arange(rows)
    ends = np.cumsum(lengths) - 1
    obs = shaped(frames_for(np.concatenate([[0], steps]), height, width, channels), layout)[1:]
    schema = {"obs": ((obs.shape[1:]), "uint8"), "action": ((), "int64"), "reward": ((), "float32"),
              "terminated": ((), "bool"), "truncated": ((), "bool")}
    with expstore.open(path, "w", capacity=capacity, schema=schema, attrs={"env_id": "Synthetic-v0"}) as pool:
        if rows:
            pool.extend({"obs": obs, "action": steps % 4, "reward": episode_rewards(steps),
                         "terminated": np.isin(steps, ends), "truncated": np.zeros(rows, bool)})
    return path

