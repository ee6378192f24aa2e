"""History arithmetic for frame stacks: the rows before each step in its own episode.

Pure functions of integers and arrays, as in draws.py: the store hands in its window's oldest
step id and the bookkeeping arrays (indexed by slot = step id % slots), and gets step ids back.

A row's predecessor in its episode is the row ``p`` with the same episode id and an episode
index one lower. A single env's predecessor is the row before; the rows of a vector env's
sub-envs interleave, so the predecessor lies a sub-env's stride back. The search guesses that
stride from the row's own forward link (rows of one env mostly follow at a constant stride),
checks the guess, and scans back block by block only for rows where the guess missed.
"""

from __future__ import annotations

import numpy as np

_FIRST_BLOCK = 64  # rows scanned back at once where the guessed stride missed; doubles each round


def history(steps: np.ndarray, length: int, low: int, slots: int, next_delta: np.ndarray,
            episode_id: np.ndarray, episode_step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[batch, length] step ids ending at each step: the ``length - 1`` rows before it in its
    episode, oldest first, and the step itself in the last column.

    Entries before the episode's first row are -1 (the stack is padded there). Returns the
    ids and ``complete``: False where a row the stack needs lies below ``low`` (the ring
    evicted it), so the stack cannot be rebuilt.
    """
    steps = np.asarray(steps, np.int64)
    out = np.full((len(steps), int(length)), -1, np.int64)
    out[:, -1] = steps
    complete = np.ones(len(steps), bool)
    if length == 1 or not len(steps):
        return out, complete
    index = episode_step[steps % slots].astype(np.int64)
    episode = episode_id[steps % slots]
    forward = next_delta[steps % slots].astype(np.int64)
    stride = np.where(forward > 0, forward, 1)
    # Every row's whole history guessed at once at its constant stride, checked in one call: the
    # rows of one env mostly follow at one. Only the rows where a guess missed go the row-by-row way.
    back = np.arange(int(length) - 1, 0, -1, dtype=np.int64)  # oldest first, as the columns
    guess = steps[:, None] - stride[:, None] * back[None, :]
    reaches = index[:, None] >= back[None, :]  # the episode goes back this far; else padding
    hit = _is_row(guess, index[:, None] - back[None, :], episode[:, None], low, slots, episode_id, episode_step)
    guessed = (hit | ~reaches).all(axis=1)
    out[:, :-1] = np.where(reaches & guessed[:, None], guess, -1)
    missed = np.flatnonzero(~guessed)
    if missed.size:
        ids, found_complete = _history_row_by_row(steps[missed], int(length), low, slots, index[missed],
                                                  episode[missed], stride[missed], episode_id, episode_step)
        out[missed] = ids
        complete[missed] = found_complete
    return out, complete


def _history_row_by_row(steps: np.ndarray, length: int, low: int, slots: int, index: np.ndarray,
                        episode: np.ndarray, stride: np.ndarray, episode_id: np.ndarray, episode_step: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """``history`` one row back at a time, each predecessor searched from the stride of the last."""
    out = np.full((len(steps), length), -1, np.int64)
    out[:, -1] = steps
    complete = np.ones(len(steps), bool)
    stride = stride.copy()
    current = steps.copy()
    for back in range(1, length):
        wanted = complete & (index >= back)  # rows whose episode reaches this far back
        if not wanted.any():
            break
        found = _predecessors(current[wanted], stride[wanted], index[wanted] - back, episode[wanted], low,
                              slots, episode_id, episode_step)
        rows = np.flatnonzero(wanted)
        hit = found >= 0
        complete[rows[~hit]] = False
        rows, found = rows[hit], found[hit]
        stride[rows] = current[rows] - found
        current[rows] = found
        out[rows, -1 - back] = found
    out[~complete, :-1] = -1
    return out, complete


def _predecessors(steps: np.ndarray, stride: np.ndarray, wanted_index: np.ndarray, episode: np.ndarray, low: int,
                  slots: int, episode_id: np.ndarray, episode_step: np.ndarray) -> np.ndarray:
    """The step id of the row of ``episode`` with index ``wanted_index`` before each step, or
    -1 where it lies below ``low``."""
    guess = steps - stride
    found = np.where(_is_row(guess, wanted_index, episode, low, slots, episode_id, episode_step), guess, -1)
    missed = np.flatnonzero(found < 0)
    start, block = 1, _FIRST_BLOCK
    while missed.size:
        back = np.arange(start, start + block, dtype=np.int64)
        candidates = steps[missed, None] - back[None, :]
        match = _is_row(candidates, wanted_index[missed, None], episode[missed, None], low, slots, episode_id,
                        episode_step)
        hit = match.any(axis=1)
        found[missed[hit]] = candidates[hit, match[hit].argmax(axis=1)]
        below = candidates[:, -1] < low  # scanned down to the window's edge: evicted
        missed = missed[~hit & ~below]
        start, block = start + block, 2 * block
    return found


def _is_row(candidates: np.ndarray, wanted_index: np.ndarray, episode: np.ndarray, low: int, slots: int,
            episode_id: np.ndarray, episode_step: np.ndarray) -> np.ndarray:
    inside = candidates >= low
    slot = np.where(inside, candidates, low) % slots
    return inside & (episode_id[slot] == episode) & (episode_step[slot] == wanted_index)
