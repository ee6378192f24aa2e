"""``expstore video``: the frames of an episode, of a step range, or of several episodes as a grid.

Frames are what frames.py gives: each the stored frame at its own size, so a video compares
with the pool pixel for pixel. Encoded with PyAV (FFmpeg; its wheels ship the codecs):

- ``.mp4``: H.264 (yuv420p), which every browser and player shows. Its chroma is subsampled,
  so colours are close, not exact, and an odd width or height gets one black column or row
  (H.264 4:2:0 needs even sides). ``lossless=True`` writes H.264 in RGB at quality 0 instead:
  every pixel exact, sides kept, but many browsers do not play that profile.
- ``.gif``: a palette per frame. A frame of at most 256 colours (every grayscale frame, most
  game frames) is stored exactly; one with more is reduced to 256 (median cut).

With ``overlay``, a strip under each frame names the step id, the reward and the return so
far; the frame above it is untouched. A grid shows each chosen episode in its own cell, side
by side; an episode that ended holds its last frame until the longest one ends.

Re-rendering low-dimensional states through an environment is not offered: gymnasium has no
general way to set an environment's state, so it would work for a few environments only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import closing, nullcontext
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..errors import InvalidArgumentError
from .frames import (
    Clip,
    FrameLayout,
    as_rgb,
    choose_frame_field,
    episode_clip,
    frame_layout,
    iter_clip_rows,
    steps_clip,
    to_frames,
)
from .streaming import Progress, RowSource, open_source
from .summary import episode_table

VIDEO_FORMATS = {".mp4": "H.264 video", ".gif": "animated GIF"}
DEFAULT_FPS = 30
_STRIP_LINE_PX = 12
_STRIP_MIN_WIDTH_PX = 132
_MAX_GRID = 64


def _require_av():
    """PyAV, or an ImportError that says how to install it."""
    try:
        # PyAV is optional (the video extra): only videos need it.
        import av
    except ImportError:
        raise ModuleNotFoundError("writing videos needs PyAV; install it: pip install 'expstore[video]'") from None
    return av


def video_path(out: str | os.PathLike) -> str:
    """``out``, checked before any work: a known extension, in a directory that exists.

    Raises:
        InvalidArgumentError: another extension, or a missing directory.
    """
    path = os.fspath(out)
    extension = os.path.splitext(path)[1].lower()
    if extension not in VIDEO_FORMATS:
        kinds = ", ".join(f"{ext} ({what})" for ext, what in VIDEO_FORMATS.items())
        raise InvalidArgumentError(f"cannot write {path}: the extension must be one of {kinds}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InvalidArgumentError(f"cannot write {path}: the directory {directory} does not exist; create it first")
    return path


@dataclass
class _Cell:
    """One clip of the video being drawn: its frames as they stream in, and what an overlay says."""

    clip: Clip
    rows: Iterator[dict[str, np.ndarray]]
    field: str
    layout: FrameLayout
    has_reward: bool
    pending: list | None = None
    last: np.ndarray | None = None
    shown: int = 0
    total_return: float = 0.0
    caption: tuple[int, float, float] = (0, 0.0, 0.0)

    def next_frame(self) -> np.ndarray:
        """This clip's next frame, or its last one again once it has ended."""
        if self.shown < len(self.clip.rows):
            if not self.pending:
                block = next(self.rows)
                frames = as_rgb(to_frames(block[self.field], self.layout))
                rewards = block["reward"].astype(np.float64).reshape(len(frames), -1).sum(axis=1) \
                    if self.has_reward else np.zeros(len(frames))
                self.pending = list(zip(frames, rewards, strict=True))[::-1]
            frame, reward = self.pending.pop()
            self.total_return += float(reward)
            self.caption = (int(self.clip.step_ids[self.shown]), float(reward), self.total_return)
            self.last, self.shown = frame, self.shown + 1
        assert self.last is not None  # a clip has at least one row (checked when it was made)
        return self.last


def write_video(pool: str | os.PathLike | RowSource, out: str | os.PathLike, *, episode: int | None = None,
                episodes: Sequence[int] | None = None, steps: tuple[int | None, int | None] | None = None,
                field: str | None = None, fps: float = DEFAULT_FPS, overlay: bool = False, lossless: bool = False,
                progress: Progress | None = None) -> dict:
    """Write the frames of one episode, a step range, or several episodes side by side.

    Args:
        pool: a pool or archive path, or an open row source (streaming.open_source).
        out: ``.mp4`` or ``.gif``; written through a temporary and renamed, so it appears whole.
        episode: an ``episode_id`` of the episode table (``expstore episodes``).
        episodes: several episode ids: a grid, one cell each, at most 64.
        steps: ``(start, stop)`` step ids, end excluded; None for the window's first / end.
        field: the frame field (default: ``obs`` when it holds frames, else the first that does).
        fps: frames per second of the video.
        overlay: a strip under each frame with step id, reward and return so far.
        lossless: ``.mp4`` only: exact pixels (RGB H.264 at quality 0) instead of yuv420p.
        progress: called with the number of frames after each frame written.

    Returns:
        ``path``, ``frames``, ``width`` and ``height`` (of the video), ``field``, ``fps`` and
        ``clips`` (what each cell shows: "episode 3", "steps 10:50").

    Raises:
        SchemaError: the pool has no frame field (the message names the fields it has).
        InvalidArgumentError: not exactly one of episode/episodes/steps, an unknown episode, a
            range outside the window, a bad fps or output path.
    """
    path = video_path(out)
    opened = closing(open_source(pool)) if isinstance(pool, (str, os.PathLike)) else nullcontext(pool)
    with opened as source:
        name = choose_frame_field(source.schema, field, source.path)
        return write_clips(source, choose_clips(source, episode, episodes, steps), path, field=name, fps=fps,
                           overlay=overlay, lossless=lossless, progress=progress)


def write_clips(source: RowSource, clips: Sequence[Clip], out: str | os.PathLike, *, field: str,
                fps: float = DEFAULT_FPS, overlay: bool = False, lossless: bool = False,
                progress: Progress | None = None) -> dict:
    """Write ``clips`` (frames.episode_clip, frames.steps_clip) of ``field`` as one video, a grid
    when there are several; what :func:`write_video` does once it has chosen them."""
    path = video_path(out)
    if not (isinstance(fps, (int, float)) and 0 < fps <= 1000):
        raise InvalidArgumentError(f"fps {fps} must be a number above 0 and at most 1000")
    if lossless and not path.lower().endswith(".mp4"):
        raise InvalidArgumentError("lossless applies to .mp4 only; a .gif is exact already for frames of at most "
                                   "256 colours")
    av = _require_av()
    field = choose_frame_field(source.schema, field, source.path)
    empty = [clip.label for clip in clips if not len(clip.rows)]
    if not clips or empty:
        raise InvalidArgumentError(f"{', '.join(empty) or 'no clip'}: no rows left in {source.path} to show (the "
                                   "ring evicted them)")
    cells = [_Cell(clip, iter_clip_rows(source, clip, [field, "reward"] if "reward" in source.schema else [field]),
                   field, _layout(source, field), "reward" in source.schema) for clip in clips]
    frames = max(len(cell.clip.rows) for cell in cells)
    size = _encode(av, path, cells, frames, fps, overlay, lossless, progress)
    return {"path": path, "frames": frames, "width": size[1], "height": size[0], "field": field, "fps": fps,
            "clips": [cell.clip.label for cell in cells]}


def _layout(source: RowSource, name: str) -> FrameLayout:
    layout = frame_layout(source.schema[name])
    assert layout is not None  # choose_frame_field returned a frame field
    return layout


def choose_clips(source: RowSource, episode: int | None = None, episodes: Sequence[int] | None = None,
                 steps: tuple[int | None, int | None] | None = None) -> list[Clip]:
    """The clips of one episode, several (a grid), or a step range: exactly one of them given."""
    chosen = [name for name, value in (("episode", episode), ("episodes", episodes), ("steps", steps))
              if value is not None]
    if len(chosen) != 1:
        raise InvalidArgumentError(f"choose exactly one of episode, episodes or steps (got {chosen or 'none'})")
    if steps is not None:
        clips = [steps_clip(source, *steps)]
    else:
        ids = [episode] if episode is not None else list(episodes or [])
        if not 1 <= len(ids) <= _MAX_GRID:
            raise InvalidArgumentError(f"a grid shows 1 to {_MAX_GRID} episodes, not {len(ids)}")
        table = episode_table(source)
        clips = [episode_clip(source, int(episode_id), table) for episode_id in ids]
    return clips


def _encode(av, path: str, cells: list[_Cell], frames: int, fps: float, overlay: bool, lossless: bool,
            progress: Progress | None) -> tuple[int, int]:
    """Draw and encode every frame into a temporary beside ``path``, then rename it into place."""
    root, extension = os.path.splitext(path)
    temp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(root)}.tmp-{os.getpid()}"
                                                                  f"{extension}")
    try:
        with av.open(temp, "w") as container:
            stream = None
            for _ in range(frames):
                picture = _compose(cells, overlay)
                if stream is None:
                    stream = _add_stream(container, extension.lower(), picture.shape, fps, lossless)
                for packet in stream.encode(_video_frame(av, picture, stream)):
                    container.mux(packet)
                if progress is not None:
                    progress(1)
            assert stream is not None  # every clip has a frame
            for packet in stream.encode():
                container.mux(packet)
        os.replace(temp, path)
    except BaseException:  # Ctrl-C included: no temporary is left behind
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    return picture.shape[0], picture.shape[1]


def _add_stream(container, extension: str, shape: tuple[int, ...], fps: float, lossless: bool):
    rate = _rate(fps)
    if extension == ".gif":
        stream = container.add_stream("gif", rate=rate)
        stream.pix_fmt = "pal8"
    elif lossless:
        stream = container.add_stream("libx264rgb", rate=rate, options={"crf": "0", "preset": "medium"})
        stream.pix_fmt = "rgb24"
    else:
        stream = container.add_stream("libx264", rate=rate, options={"crf": "18", "preset": "medium"})
        stream.pix_fmt = "yuv420p"
    height, width = shape[:2]
    stream.height, stream.width = (height + height % 2, width + width % 2) if stream.pix_fmt == "yuv420p" \
        else (height, width)
    return stream


def _rate(fps: float) -> Fraction:
    """The frame rate as a fraction (PyAV takes an int or a Fraction): 29.97 stays 30000/1001."""
    return Fraction(fps).limit_denominator(1001)


def _video_frame(av, picture: np.ndarray, stream):
    if stream.pix_fmt == "pal8":
        indices, palette = palette_frame(picture)
        return av.VideoFrame.from_ndarray((indices, palette), format="pal8")
    height, width = stream.height, stream.width
    if picture.shape[:2] != (height, width):  # yuv420p: one black row or column makes the sides even
        padded = np.zeros((height, width, 3), np.uint8)
        padded[:picture.shape[0], :picture.shape[1]] = picture
        picture = padded
    return av.VideoFrame.from_ndarray(picture, format="rgb24")


def palette_frame(picture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An [H, W, 3] picture as palette indices [H, W] and a (256, 4) ARGB palette (PyAV's order).

    Exact for pictures of at most 256 colours, else reduced to 256 by median cut (Pillow).
    """
    packed = (picture[..., 0].astype(np.uint32) << 16) | (picture[..., 1].astype(np.uint32) << 8) | picture[..., 2]
    colours, indices = np.unique(packed.reshape(-1), return_inverse=True)
    if len(colours) > 256:
        return _quantised(picture)
    palette = np.zeros((256, 4), np.uint8)
    palette[:, 0] = 255
    palette[:len(colours), 1] = colours >> 16
    palette[:len(colours), 2] = (colours >> 8) & 255
    palette[:len(colours), 3] = colours & 255
    return indices.reshape(picture.shape[:2]).astype(np.uint8), palette


def _quantised(picture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Pillow comes with matplotlib and the video extra; only frames of many colours need it.
    from PIL import Image

    reduced = Image.fromarray(picture, "RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    rgb = np.asarray(reduced.getpalette() or [], np.uint8).reshape(-1, 3)[:256]
    palette = np.zeros((256, 4), np.uint8)
    palette[:, 0] = 255
    palette[:len(rgb), 1:] = rgb
    return np.asarray(reduced, np.uint8), palette


def _compose(cells: list[_Cell], overlay: bool) -> np.ndarray:
    """The next picture: each cell's frame (with its strip) tiled in a near-square grid."""
    tiles = [_with_strip(cell.next_frame(), cell) if overlay else cell.next_frame() for cell in cells]
    if len(tiles) == 1:
        return tiles[0]
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    height, width = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    grid = np.zeros((rows * height, columns * width, 3), np.uint8)
    for index, tile in enumerate(tiles):
        top, left = (index // columns) * height, (index % columns) * width
        grid[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
    return grid


def _with_strip(frame: np.ndarray, cell: _Cell) -> np.ndarray:
    """The frame over a black strip naming the clip, step id, reward and return so far, with a
    bar showing how far into the clip this frame is."""
    # Pillow comes with matplotlib and the video extra; only the overlay draws text.
    from PIL import Image, ImageDraw

    step_id, reward, total = cell.caption
    lines = [f"{cell.clip.label}  step {step_id}", f"r {reward:+.3g}  R {total:+.4g}"]
    width = max(frame.shape[1], _STRIP_MIN_WIDTH_PX)
    strip_height = _STRIP_LINE_PX * len(lines) + 4
    canvas = Image.new("RGB", (width, frame.shape[0] + strip_height))
    canvas.paste(Image.fromarray(frame, "RGB"), ((width - frame.shape[1]) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    for number, line in enumerate(lines):
        draw.text((2, frame.shape[0] + number * _STRIP_LINE_PX), line, fill=(255, 255, 255))
    done = round(width * cell.shown / len(cell.clip.rows))
    draw.rectangle((0, canvas.height - 2, max(0, done - 1), canvas.height - 1), fill=(80, 160, 255))
    return np.asarray(canvas, np.uint8)
