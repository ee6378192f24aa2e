"""The camera videos of a LeRobot dataset, encoded and decoded with PyAV, one frame at a time.

Encoding uses the settings LeRobot's own ``encode_video_frames`` uses by default (SVT-AV1,
``yuv420p``, a keyframe every 2 frames, CRF 30, preset 12), or H.264/HEVC with the same GOP and
CRF, or ``lossless``: H.264 in RGB at QP 0 (``libx264rgb``), which gives back every frame bit for
bit. Frame ``k`` of a file has presentation time ``k / fps``.

Decoding finds the frame a LeRobot loader returns for a query time: the decoded frame whose
presentation time is nearest, within LeRobot's tolerance (1e-4 s), converted to RGB
(``frame.to_ndarray(format="rgb24")``, what LeRobot's PyAV path does). Frames are decoded in
order; a reader keeps one file open and reopens (seeking to the keyframe before) only when the
query goes backwards or to another file, so importing a dataset decodes each video once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from ..errors import CorruptStoreError, InvalidArgumentError, SchemaError, StoreNotFoundError

TOLERANCE_S = 1e-4  # LeRobotDataset's default tolerance_s


@dataclass(frozen=True)
class VideoSettings:
    """How a camera feature is encoded, and what info.json says about it."""

    codec: str      # the PyAV encoder
    pix_fmt: str
    options: dict   # encoder options
    codec_name: str  # info.json "video.codec"

    @classmethod
    def named(cls, name: str | None) -> VideoSettings:
        name = (name or "libsvtav1").lower()
        if name == "lossless":
            return cls("libx264rgb", "rgb24", {"qp": "0", "preset": "veryfast", "g": "2"}, "h264")
        if name in ("libsvtav1", "av1"):
            return cls("libsvtav1", "yuv420p", {"g": "2", "crf": "30", "preset": "12"}, "av1")
        if name in ("h264", "libx264"):
            return cls("libx264", "yuv420p", {"g": "2", "crf": "30"}, "h264")
        if name in ("hevc", "libx265"):
            return cls("libx265", "yuv420p", {"g": "2", "crf": "30"}, "hevc")
        raise InvalidArgumentError(f"--video-codec {name} is not one of libsvtav1 (LeRobot's default), h264, hevc, "
                                   "lossless")


def pyav() -> Any:
    """The PyAV module, or ImportError with the command that installs it."""
    try:
        import av  # the optional dependency that encodes and decodes LeRobot's videos
    except ImportError as exc:
        raise ImportError("LeRobot videos need PyAV: pip install 'expstore[lerobot]' (or pip install av)") from exc
    return av


class VideoWriter:
    """One mp4 file of one camera: frames appended in order, frame k at time k / fps."""

    def __init__(self, path: str, fps: int, height: int, width: int, settings: VideoSettings):
        av = pyav()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path, self.frames = path, 0
        self._container = av.open(path, "w")
        try:
            self._stream = self._container.add_stream(settings.codec, rate=fps, options=dict(settings.options))
        except (av.error.FFmpegError, ValueError) as exc:
            self._container.close()
            raise InvalidArgumentError(f"the {settings.codec} encoder cannot be used ({exc}); choose another "
                                       "--video-codec") from None
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, settings.pix_fmt
        self._stream.time_base = Fraction(1, fps)
        self._av = av

    def add(self, frames: np.ndarray) -> None:
        """Append frames (N, H, W, 3) uint8 RGB."""
        for rgb in frames:
            frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = self.frames
            self.frames += 1
            self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        self._container.mux(self._stream.encode(None))
        self._container.close()

    def nbytes(self) -> int:
        return os.path.getsize(self.path) if os.path.exists(self.path) else 0


class FrameReader:
    """The frames of one camera, by (file, time), decoded in order with PyAV."""

    def __init__(self, key: str, shape: tuple[int, int, int]):
        self.key, self.shape = key, shape  # shape: (H, W, C) as info.json declares
        self._path: str | None = None
        self._container: Any = None
        self._frames: Any = None
        self._current: tuple[float, np.ndarray] | None = None

    def frame_at(self, path: str, time_s: float) -> np.ndarray:
        """The RGB frame of ``path`` nearest ``time_s`` (within TOLERANCE_S)."""
        if path != self._path or self._current is None or time_s < self._current[0] - TOLERANCE_S:
            self._open(path, time_s)
        while True:
            if self._current is not None:
                found_s, frame = self._current
                if abs(found_s - time_s) <= TOLERANCE_S:
                    return frame
                if found_s > time_s + TOLERANCE_S:
                    raise CorruptStoreError(f"{path} has no frame at {time_s:.4f} s (the next one is at "
                                            f"{found_s:.4f} s); the video does not match the data files")
            self._current = self._decode_next(path, time_s)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def _open(self, path: str, time_s: float) -> None:
        av = pyav()
        self.close()
        if not os.path.exists(path):
            raise StoreNotFoundError(f"{path} is missing; the dataset's {self.key} frames are in it")
        try:
            self._container = av.open(path)
            stream = self._container.streams.video[0]
            if time_s > 1.0:  # seek to the keyframe before: long files need not decode from the start
                self._container.seek(int(max(0.0, time_s - 1.0) / stream.time_base), stream=stream, backward=True)
            self._frames = self._container.decode(stream)
        except (av.error.FFmpegError, IndexError) as exc:
            self.close()
            raise CorruptStoreError(f"{path} is not a readable video ({exc}); the file is damaged") from None
        self._path, self._current = path, None

    def _decode_next(self, path: str, time_s: float) -> tuple[float, np.ndarray]:
        av = pyav()
        try:
            frame = next(self._frames)
        except StopIteration:
            raise CorruptStoreError(f"{path} ends before {time_s:.4f} s; the video is truncated") from None
        except av.error.FFmpegError as exc:
            raise CorruptStoreError(f"{path} cannot be decoded at {time_s:.4f} s ({exc}); the video is damaged") \
                from None
        rgb = frame.to_ndarray(format="rgb24")
        if rgb.shape[:2] != self.shape[:2]:
            raise SchemaError(f"{path} holds frames of {rgb.shape[1]}x{rgb.shape[0]}; meta/info.json declares "
                              f"{self.key} as {self.shape[1]}x{self.shape[0]}")
        return float(frame.time), rgb
