"""Frame stacks built at read time from one frame per row.

A pixel agent sees the k newest frames of its episode (gymnasium's ``FrameStackObservation``,
SB3's ``VecFrameStack``), but consecutive stacks share k - 1 frames: storing the stack stores
every frame k times. A pool stores one frame per row instead, and ``frame_stack=k`` rebuilds
the stacks of the rows a call returns from the rows before them in the same episode (the same
sub-env's episode in a vector-env pool; sampling/stacks.py finds them):

- ``stack_axis=0`` adds a new leading axis, as ``FrameStackObservation`` does:
  (84, 84) -> (k, 84, 84);
- ``stack_axis=-1`` concatenates along the last axis, as ``VecFrameStack`` does for
  channels-last frames: (84, 84, 1) -> (84, 84, k).

The first rows of an episode have fewer than k - 1 rows before them; the stack is padded as the
env wrapper pads it: ``stack_padding="reset"`` repeats the episode's first frame (gymnasium's
default), ``"zero"`` pads zeros (SB3). ``next_obs`` is stacked the same way: the row's stack
without its oldest frame, and the next frame (the next row's, derived, or the stored one).

A stack never reaches across an episode start (that is padding), the ring edge or uncommitted
rows: a row whose stack needs a row the ring evicted cannot be rebuilt and is drawn again by
the sampling calls (``read`` refuses it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError, SchemaError, StepNotFoundError
from ..sampling.stacks import history
from ..schema import Schema
from .workers import in_slices

STACK_AXES = (0, -1)
STACK_PADDINGS = ("reset", "zero")
# A call's stacks are copied on the worker threads from this many bytes of stacks and next stacks.
_PARALLEL_COPY_NBYTES = 1 << 21


@dataclass(frozen=True)
class FrameStack:
    """What a call's ``frame_stack``, ``stack_axis`` and ``stack_padding`` ask for, checked
    against the pool's schema: the observation fields to stack (their ``next_`` fields too)."""

    frames: int
    axis: int
    padding: str
    fields: tuple[str, ...]

    def stacked_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one stack of rows of ``shape``."""
        if self.axis == 0:
            return (self.frames, *shape)
        return (*shape[:-1], shape[-1] * self.frames)


def frame_stack_of(schema: Schema | None, path: str, frame_stack: object, stack_axis: object = 0,
                   stack_padding: object = "reset") -> FrameStack | None:
    """The checked request, or None without ``frame_stack``; a clear error for each bad input."""
    if frame_stack is None:
        return None
    if not isinstance(frame_stack, (int, np.integer)) or isinstance(frame_stack, bool) or frame_stack < 1:
        raise InvalidArgumentError(f"frame_stack={frame_stack!r} must be an int >= 1 (the frames per stack, "
                                   "e.g. frame_stack=4 as in DQN), or None for the rows as stored")
    if stack_axis not in STACK_AXES or isinstance(stack_axis, bool):
        raise InvalidArgumentError(f"stack_axis={stack_axis!r} must be 0 (a new leading axis, as gymnasium's "
                                   "FrameStackObservation) or -1 (concatenated along the last axis, as SB3's "
                                   "VecFrameStack)")
    if stack_padding not in STACK_PADDINGS:
        raise InvalidArgumentError(f"stack_padding={stack_padding!r} must be 'reset' (repeat the episode's first "
                                   "frame, gymnasium's default) or 'zero' (zeros, as SB3's VecFrameStack)")
    if schema is None:
        raise SchemaError(f"{path} has no schema yet; append transitions before reading frame stacks")
    fields = stackable_fields(schema)
    if not fields:
        raise SchemaError(f"frame_stack needs observation fields ('obs' or 'obs_<key>') or image fields; {path} "
                          f"stores {list(schema)}: sample without frame_stack, or record observations as 'obs'")
    # A ragged observation (a language instruction beside the frames) has no frame to stack: it
    # comes back as stored, one row per transition. Only a pool of nothing but ragged ones is refused.
    ragged = [name for name in fields if schema[name].ragged]
    fields = tuple(name for name in fields if name not in ragged)
    if not fields:
        shapes = ", ".join(f"{name!r} of shape {schema[name].shape}" for name in ragged)
        raise SchemaError(f"frame_stack needs fixed-shape frames, but {path} has only ragged observation fields "
                          f"({shapes}) whose rows differ in length; sample without frame_stack, or take "
                          "windows of consecutive rows with sample_sequences(batch, length)")
    if stack_axis == -1:
        for name in fields:
            _check_concatenable(schema, name)
    return FrameStack(int(frame_stack), int(stack_axis), str(stack_padding), fields)


def stackable_fields(schema: Schema) -> tuple[str, ...]:
    """The fields a frame stack stacks: the observation fields, else the image fields."""
    observed = tuple(name for name in schema if name == "obs" or name.startswith("obs_"))
    return observed or tuple(name for name, field in schema.items() if field.is_image
                             and not name.startswith("next_"))


def _check_concatenable(schema: Schema, name: str) -> None:
    field = schema[name]
    if not field.shape:
        raise SchemaError(f"stack_axis=-1 concatenates along the last axis, but field {name!r} holds scalars; "
                          "use stack_axis=0 (a new leading axis)")
    if field.image_layout in ("HW", "CHW"):
        suggestion = ("store channels-last frames of shape (H, W, 1) for VecFrameStack-style stacks"
                      if field.image_layout == "HW" else "VecFrameStack stacks channels-first frames in "
                      "another way; store channels-last (H, W, C) frames")
        raise SchemaError(f"stack_axis=-1 concatenates along the last axis, which in field {name!r} "
                          f"({field.image_layout} images of shape {field.shape}) is the image width, not its "
                          f"channels; use stack_axis=0 (a new leading axis: {(4, *field.shape)} for 4 frames) "
                          f"or {suggestion}")


class FrameStacker:
    """Rebuilds the stacks of one call's rows from a pool's maps and episode bookkeeping.

    Args:
        request: the checked request (``frame_stack_of``).
        views: the pool's arrays by name, indexed by slot.
        slots: ring slots.
        gather: reads the rows of step ids (every field, as the store gathers them).
        low: the oldest step id a stack may use, taken when the call reads its rows.
        fresh: after a gather, which step ids are still in the window (a reader's writer may
            have overwritten older rows meanwhile).
    """

    def __init__(self, request: FrameStack, views: Mapping[str, np.ndarray], slots: int,
                 gather: Callable[[np.ndarray], dict], low: Callable[[], int],
                 fresh: Callable[[np.ndarray], np.ndarray]):
        self.request = request
        self.slots = slots
        self.gather = gather
        self.low = low
        self.fresh = fresh
        self.next_delta = views["_next_delta"]
        self.episode_id = views["_episode_id"]
        self.episode_step = views["_episode_step"]

    def apply(self, batch: dict, steps: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Replace the observation fields of ``batch`` (rows ``steps``) by their stacks, and the
        ``next_`` fields present (those of rows ``last``, n-step's last rows) by theirs.
        Returns which rows could be stacked (their history is still in the window)."""
        request = self.request
        low = self.low()
        ids, complete = self._history(steps, low)
        wanted_next = [name for name in request.fields if f"next_{name}" in batch]
        if wanted_next and last is not steps and not np.array_equal(last, steps):
            last_ids, last_complete = self._history(last, low)
        else:
            last_ids, last_complete = ids, complete
        needed = _sorted_unique(np.concatenate([ids[ids >= 0], last_ids[last_ids >= 0]]))
        rows = self.gather(needed)
        ok = complete & last_complete & self._fresh_history(ids, last_ids)
        same_rows = last_ids is ids
        for name in request.fields:
            frames = rows[name]
            key = f"next_{name}"
            stacks, following = self._stack(frames, needed, ids, last_ids if key in batch and not same_rows else None,
                                            batch.get(key))
            if following is not None:
                batch[key] = self._arrange(following)
            batch[name] = self._arrange(stacks)
        return ok

    def _history(self, steps: np.ndarray, low: int) -> tuple[np.ndarray, np.ndarray]:
        return history(steps, self.request.frames, low, self.slots, self.next_delta, self.episode_id,
                       self.episode_step)

    def _fresh_history(self, ids: np.ndarray, last_ids: np.ndarray) -> np.ndarray:
        oldest = np.minimum(_oldest(ids), _oldest(last_ids))
        return self.fresh(oldest)

    def _stack(self, frames: np.ndarray, needed: np.ndarray, ids: np.ndarray, last_ids: np.ndarray | None,
               next_frames: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """[batch, k, *frame] stacks of ``ids`` from the gathered ``frames`` of step ids ``needed``,
        padded; with ``next_frames``, also the stacks one frame on (the stack of ``last_ids``, or
        of ``ids`` where None, without its oldest frame, and the next frame in).

        The copies are a batch's largest cost after decoding (14 MB for 256 84x84 4-stacks and
        their next stacks), and numpy's take releases the GIL: a large batch is copied in parts
        on the worker threads. Measured on 2 cores, 256 such stacks: 0.31 ms on two threads
        against 0.64 ms on one."""
        positions, absent = self._positions(needed, ids)
        stacks = np.empty((len(ids), *positions.shape[1:], *frames.shape[1:]), frames.dtype)
        following = None if next_frames is None else np.empty_like(stacks)
        last_positions, last_absent = (positions, absent) if last_ids is None else self._positions(needed, last_ids)

        def fill(part: slice) -> None:
            # mode="clip": the positions are in range, and "raise" copies through a buffer (2x slower)
            np.take(frames, positions[part], axis=0, out=stacks[part], mode="clip")
            if absent is not None:
                stacks[part][absent[part]] = 0
            if following is None:
                return
            if last_ids is None:
                following[part, :-1] = stacks[part, 1:]
            else:
                np.take(frames, last_positions[part, 1:], axis=0, out=following[part, :-1], mode="clip")
                if last_absent is not None:
                    following[part, :-1][last_absent[part, 1:]] = 0
            assert next_frames is not None  # following is made only with them
            following[part, -1] = next_frames[part]

        copied = stacks.nbytes + (0 if following is None else following.nbytes)
        in_slices(fill, len(ids), parallel=copied >= _PARALLEL_COPY_NBYTES)
        return stacks, following

    def _positions(self, needed: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Where each stack's frames lie among the gathered ``needed``, padded as the request
        says, and (zero padding) which entries are padding, None where there are none."""
        present = ids >= 0
        first = ids[np.arange(len(ids)), present.argmax(axis=1)]  # the oldest row of each stack
        filled = np.where(present, ids, first[:, None])  # "reset": the episode's first frame
        absent = ~present if self.request.padding == "zero" and not present.all() else None
        return np.searchsorted(needed, filled), absent

    def _arrange(self, stacked: np.ndarray) -> np.ndarray:
        """[batch, k, *frame] as the request lays stacks out."""
        if self.request.axis == 0:
            return stacked
        moved = np.moveaxis(stacked, 1, -2)  # [batch, *frame[:-1], k, frame[-1]]
        return np.ascontiguousarray(moved).reshape(*moved.shape[:-2], moved.shape[-2] * moved.shape[-1])


def _sorted_unique(ids: np.ndarray) -> np.ndarray:
    """``np.unique`` of a batch's step ids, without its cost: np.unique's first call in a process
    imports numpy.ma (30 ms, a fresh sampler's whole first batch several times over), and
    a sort and a comparison are faster than its hashing for a few hundred ids."""
    ordered = np.sort(ids)
    if len(ordered) < 2:
        return ordered
    first = np.empty(len(ordered), bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered[first]


def _oldest(ids: np.ndarray) -> np.ndarray:
    return np.where(ids >= 0, ids, np.iinfo(np.int64).max).min(axis=1)


def refuse_incomplete(complete: np.ndarray, steps: np.ndarray, low: int) -> None:
    """``read``: a row whose stack needs evicted rows is an error, not a silently padded stack."""
    if not complete.all():
        step = int(steps[~complete][0])
        raise StepNotFoundError(f"step id {step}: its frame stack needs rows of its episode the ring already "
                                f"evicted (the pool holds steps from {low}); read it without frame_stack, or "
                                "read later rows of the episode")
