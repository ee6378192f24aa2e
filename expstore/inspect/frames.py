"""Frames of a pool: which fields hold pictures, and their rows as (H, W, C) uint8 images.

A field holds frames when it is an image field (``Field.is_image``: layout "HW", "HWC" or
"CHW", see schema.py) or a frame stack: a uint8 field without an image layout whose shape is a
stack axis followed by an image shape, (k, H, W), (k, H, W, C) or (k, C, H, W), as frame-stacking
wrappers store them ((3, 84, 84) is detected as a CHW colour image: a 3- or 4-frame stack of
grayscale frames is declared with ``image=False``). A stack shows its newest frame, the last
along the stack axis: that is the frame the environment returned at that step, the others
repeat earlier steps.

Frames come out channels-last with 1 (grayscale) or 3 (colour) channels; an alpha channel is
dropped. Nothing is resized: a frame is the stored frame at its own size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError, SchemaError
from ..schema import Field, Schema, detect_image_layout
from .streaming import RowSource, iter_slices
from .summary import episode_table


@dataclass(frozen=True)
class FrameLayout:
    """How one row of a field becomes a frame: its image layout, and whether a stack axis leads."""

    layout: str  # "HW", "HWC" or "CHW"
    stacked: bool
    height: int
    width: int
    channels: int  # of the frames given out: 1 or 3


def frame_layout(field: Field) -> FrameLayout | None:
    """The frame layout of a field, or None when its rows are not pictures (nor a ragged field's)."""
    if field.ragged:
        return None
    if field.is_image:
        layout, shape, stacked = str(field.image_layout), field.shape, False
    else:
        inner = detect_image_layout(field.shape[1:], field.dtype) if len(field.shape) >= 3 else None
        if inner is None:
            return None
        layout, shape, stacked = inner, field.shape[1:], True
    height, width = shape[layout.index("H")], shape[layout.index("W")]
    channels = 1 if layout == "HW" or shape[layout.index("C")] == 1 else 3
    return FrameLayout(layout, stacked, height, width, channels)


def frame_fields(schema: Schema) -> list[str]:
    """The fields of ``schema`` whose rows are frames (images or frame stacks), in schema order."""
    return [name for name, field in schema.items() if frame_layout(field) is not None]


def choose_frame_field(schema: Schema, name: str | None, where: str) -> str:
    """``name``, checked to hold frames, or the first field that does (``obs`` when it does).

    Raises:
        SchemaError: the pool has no such field, it holds no frames, or no field does.
    """
    found = frame_fields(schema)
    if name is not None:
        if name not in schema:
            raise SchemaError(f"{where} has no field {name!r}; it stores {list(schema)}"
                              + (f" (frames: {found})" if found else ""))
        if name not in found:
            raise SchemaError(f"field {name!r} of {where} holds no frames (shape {schema[name].shape}, "
                              f"{schema[name].dtype}); frames are uint8 (H, W), (H, W, C) or (C, H, W), or a stack "
                              f"of them; " + (f"fields with frames: {found}" if found else "no field has them"))
        return name
    if not found:
        described = ", ".join(f"{n} {f.shape} {f.dtype}" for n, f in schema.items())
        raise SchemaError(f"{where} has no image fields to show: it stores {described}; image fields are uint8 "
                          "(H, W), (H, W, C) or (C, H, W) with 1, 3 or 4 channels, or a stack of them")
    return "obs" if "obs" in found else found[0]


def to_frames(values: np.ndarray, layout: FrameLayout) -> np.ndarray:
    """Rows of a frame field as [n, H, W, C] uint8 frames, C being 1 or 3 (alpha dropped)."""
    values = np.asarray(values)
    if layout.stacked:
        values = values[:, -1]  # the newest frame of each stack
    if layout.layout == "HW":
        values = values[..., None]
    elif layout.layout == "CHW":
        values = np.moveaxis(values, 1, -1)
    return np.ascontiguousarray(values[..., :3] if values.shape[-1] == 4 else values)


def as_rgb(frames: np.ndarray) -> np.ndarray:
    """[n, H, W, 1 or 3] frames as [n, H, W, 3] (grayscale repeated over the channels)."""
    return frames if frames.shape[-1] == 3 else np.repeat(frames, 3, axis=-1)


@dataclass(frozen=True)
class Clip:
    """The rows a video shows: logical rows (0 = oldest), with what an overlay names."""

    label: str
    rows: np.ndarray  # int64 logical row indices, in order
    first_step_id: int  # the step id of logical row 0

    @property
    def step_ids(self) -> np.ndarray:
        return self.first_step_id + self.rows


def episode_clip(source: RowSource, episode_id: int, table: dict[str, np.ndarray] | None = None) -> Clip:
    """The rows of one episode still in the pool, by its ``episode_id`` (``expstore episodes``).

    Rows of an episode recorded alongside others (a vector env) are not contiguous: a pool that
    indexes its episodes gives their step ids; without an index an episode is the contiguous
    run of rows the terminated/truncated flags delimit.

    Raises:
        InvalidArgumentError: no episode with that id has a row in the pool.
    """
    table = episode_table(source) if table is None else table
    position = np.flatnonzero(table["episode_id"] == int(episode_id))
    if not position.size:
        ids = table["episode_id"]
        known = "none" if not ids.size else f"{int(ids.min())}..{int(ids.max())}"
        raise InvalidArgumentError(f"episode {episode_id} has no row in {source.path} (episode ids: {known}); "
                                   "`expstore episodes` lists them")
    store = getattr(source, "store", None)
    if store is not None and "env_id" in table:
        steps = np.asarray(store.episode(int(episode_id))["step_id"], np.int64)
        rows = steps - source.first_step_id
        rows = rows[(rows >= 0) & (rows < len(source))]
    else:
        first = int(table["first_step_id"][position[0]]) - source.first_step_id
        start = max(0, first)
        rows = np.arange(start, min(len(source), first + int(table["length"][position[0]])), dtype=np.int64)
    return Clip(f"episode {episode_id}", rows, source.first_step_id)


def steps_clip(source: RowSource, start: int | None, stop: int | None) -> Clip:
    """Step ids ``[start, stop)`` of the window (None: its first / its end).

    Raises:
        InvalidArgumentError: the range is empty or reaches outside the window.
    """
    first, end = source.first_step_id, source.first_step_id + len(source)
    start = first if start is None else int(start)
    stop = end if stop is None else int(stop)
    if not first <= start < stop <= end:
        raise InvalidArgumentError(f"steps {start}:{stop} are not inside the pool's window {first}:{end} "
                                   "(step ids, end excluded); choose a non-empty range within it")
    return Clip(f"steps {start}:{stop}", np.arange(start - first, stop - first, dtype=np.int64), first)


def iter_clip_rows(source: RowSource, clip: Clip, fields: list[str],
                   max_rows: int = 256) -> Iterator[dict[str, np.ndarray]]:
    """The clip's rows of ``fields``, at most ``max_rows`` at a time (bounded memory)."""
    rows = clip.rows
    if rows.size and np.all(np.diff(rows) == 1):  # contiguous: read slice by slice
        for _first, sliced in iter_slices(source, int(rows[0]), int(rows[-1]) + 1, fields=fields,
                                          slice_nbytes=max_rows * source.schema.row_nbytes):
            yield sliced
        return
    for begin in range(0, rows.size, max_rows):
        part = rows[begin:begin + max_rows]
        low, high = int(part.min()), int(part.max()) + 1
        if high - low > 4 * max_rows:  # scattered rows: one at a time rather than a wide read
            pieces = [source.read(int(r), int(r) + 1) for r in part]
            yield {name: np.concatenate([piece[name] for piece in pieces]) for name in fields}
        else:
            block = source.read(low, high)
            yield {name: block[name][part - low] for name in fields}

