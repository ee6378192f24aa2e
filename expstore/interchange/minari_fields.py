"""What each field of a Minari dataset must hold, from the spaces its metadata declares.

Minari writes ``observation_space`` and ``action_space`` (serialised gymnasium spaces) and
``jpeg_encoding`` into ``metadata.json``. With ``jpeg_encoding`` (Minari's default), rows of an
image space (a uint8 Box of shape HxW or HxWxC with H, W >= 32 and bounds 0..255, Minari's own
rule) are stored as JPEG bytes: one fixed-length uint8 row per frame when every frame happened
to encode to the same length, a variable-length row otherwise. Every episode's arrays are
checked against the declared spaces before a row is written, and JPEG rows are decoded back to
frames of the declared shape, so a mismatch is an error, never a field of the wrong shape.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from ..errors import CorruptStoreError, NotAPoolError, SchemaError

# Episode group key -> the metadata key of its declared space.
SPACE_KEYS = {"observations": "observation_space", "actions": "action_space"}


@dataclass(frozen=True)
class FieldLayout:
    """One space-typed array of every episode: its row shape and dtype, and how rows are stored."""

    key: str                     # "observations" or "actions"
    shape: tuple[int, ...]
    dtype: np.dtype
    jpeg: bool                   # rows are JPEG bytes, decoded to ``shape`` on import
    declared: bool = True        # False: no space declared, episode 0's layout is the reference


def field_layouts(src: str, metadata: dict, first_episode) -> dict[str, FieldLayout]:
    """The layout of ``observations`` and ``actions``, from the declared spaces (else episode 0)."""
    layouts = {}
    for key, space_key in SPACE_KEYS.items():
        space = _declared_space(src, metadata, space_key)
        dataset = first_episode.get(key)
        if not hasattr(dataset, "dtype"):
            raise NotAPoolError(f"{src}: {key} of episode 0 is a group (a Dict or Tuple space); only Box, Discrete, "
                                "MultiDiscrete and MultiBinary spaces can be imported")
        if space is None:
            layouts[key] = FieldLayout(key, tuple(dataset.shape[1:]), dataset.dtype, jpeg=False, declared=False)
        else:
            layouts[key] = _layout_of_space(src, key, space, metadata.get("jpeg_encoding"), dataset)
    return layouts


def _declared_space(src: str, metadata: dict, space_key: str) -> dict | None:
    raw = metadata.get(space_key)
    if raw is None:
        return None
    try:
        space = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    except json.JSONDecodeError as exc:
        raise CorruptStoreError(f"{src}: {space_key} in metadata.json is not JSON ({exc}); "
                                "the dataset's metadata is damaged") from None
    if not isinstance(space, dict) or "type" not in space:
        raise CorruptStoreError(f"{src}: {space_key} in metadata.json is not a serialised space: {str(raw)[:80]}")
    return space


def _layout_of_space(src: str, key: str, space: dict, jpeg_encoding, dataset) -> FieldLayout:
    kind = space["type"]
    if kind == "Box":
        shape, dtype = tuple(int(n) for n in space["shape"]), np.dtype(space["dtype"])
        jpeg = _stored_as_jpeg(space, shape, jpeg_encoding, dataset)
        return FieldLayout(key, shape, dtype, jpeg=jpeg)
    if kind == "Discrete":
        # Minari writes Discrete as int64 ("hardcoded in Gymnasium"); any integer dtype is kept as stored.
        dtype = dataset.dtype if dataset.dtype.kind in "iu" else np.dtype(space.get("dtype", "int64"))
        return FieldLayout(key, (), dtype, jpeg=False)
    if kind == "MultiDiscrete":
        return FieldLayout(key, tuple(np.shape(space["nvec"])), np.dtype(space["dtype"]), jpeg=False)
    if kind == "MultiBinary":
        n = space["n"]
        return FieldLayout(key, (int(n),) if np.ndim(n) == 0 else tuple(int(v) for v in n), np.dtype(np.int8),
                           jpeg=False)
    raise NotAPoolError(f"{src}: the {SPACE_KEYS[key]} is a {kind} space; only Box, Discrete, MultiDiscrete and "
                        "MultiBinary spaces can be imported")


def is_image_space(space: dict, shape: tuple[int, ...]) -> bool:
    """Minari's rule for a space whose rows it JPEG-encodes."""
    return (len(shape) in (2, 3) and shape[0] >= 32 and shape[1] >= 32 and np.dtype(space["dtype"]) == np.uint8
            and bool(np.all(np.asarray(space["low"]) == 0)) and bool(np.all(np.asarray(space["high"]) == 255)))


def _stored_as_jpeg(space: dict, shape: tuple[int, ...], jpeg_encoding, dataset) -> bool:
    if not is_image_space(space, shape):
        return False
    raw_layout = tuple(dataset.shape[1:]) == shape and dataset.dtype == np.uint8
    if jpeg_encoding is None:
        # Datasets written before Minari had the option store frames raw (Minari's own reader then
        # assumes JPEG and fails on them): the layout of episode 0 tells.
        return not raw_layout
    return bool(jpeg_encoding)


def check_episode(src: str, index: int, episode, layouts: dict[str, FieldLayout],
                  per_step: dict[str, tuple[tuple[int, ...], np.dtype]]) -> int:
    """Check every array of one episode group; return its steps.

    ``layouts`` covers observations and actions; ``per_step`` maps the other keys (rewards and
    the expstore extras) to the row shape and dtype that episode 0 has.
    """
    where = f"{src}: episode_{index}"
    rewards = _dataset(where, episode, "rewards")
    if rewards.ndim != 1 or rewards.dtype.kind not in "fiu":
        raise SchemaError(f"{where}/rewards holds {rewards.dtype} of shape {rewards.shape}; Minari stores one "
                          "number per step")
    steps = int(rewards.shape[0])
    for key in ("terminations", "truncations"):
        flags = _dataset(where, episode, key)
        if flags.shape != (steps,) or flags.dtype != np.bool_:
            raise SchemaError(f"{where}/{key} holds {flags.dtype} of shape {flags.shape}; Minari stores {steps} "
                              "booleans, one per step")
    for key, (row_shape, dtype) in per_step.items():
        dataset = _dataset(where, episode, key)
        if dataset.shape != (steps, *row_shape) or dataset.dtype != dtype:
            raise SchemaError(f"{where}/{key} holds {dataset.dtype} of shape {dataset.shape}; expected {dtype} "
                              f"of shape {(steps, *row_shape)}, as in episode 0")
    for key, layout in layouts.items():
        rows = steps + 1 if key == "observations" else steps
        _check_layout(where, _dataset(where, episode, key), layout, rows)
    return steps


def _dataset(where: str, episode, key: str):
    dataset = episode.get(key)
    if dataset is None:
        raise CorruptStoreError(f"{where} has no {key}; the dataset is incomplete")
    if not hasattr(dataset, "dtype"):
        raise NotAPoolError(f"{where}/{key} is a group (a Dict or Tuple space); it cannot be imported")
    return dataset


def _check_layout(where: str, dataset, layout: FieldLayout, rows: int) -> None:
    if layout.jpeg:
        fixed = dataset.ndim == 2 and dataset.dtype == np.uint8
        if dataset.shape[:1] != (rows,) or not (fixed or _is_vlen_bytes(dataset)):
            raise SchemaError(f"{where}/{layout.key} holds {dataset.dtype} of shape {dataset.shape}; with "
                              f"jpeg_encoding it must hold {rows} JPEG byte rows (frames of {layout.shape})")
        return
    if dataset.shape != (rows, *layout.shape) or dataset.dtype != layout.dtype:
        source = f"the declared {SPACE_KEYS[layout.key]}" if layout.declared else "episode 0"
        raise SchemaError(f"{where}/{layout.key} holds {dataset.dtype} of shape {dataset.shape}; {source} needs "
                          f"{layout.dtype} of shape {(rows, *layout.shape)}: the dataset does not match its "
                          "metadata.json, so it cannot be imported as it is")


def _is_vlen_bytes(dataset) -> bool:
    # h5py loads on first use: its import is slow, and a program on Zarr pools never needs it.
    import h5py

    base = h5py.check_vlen_dtype(dataset.dtype)
    return base is not None and np.dtype(base) == np.uint8


def read_rows(dataset, lo: int, hi: int, layout: FieldLayout, where: str) -> np.ndarray:
    """Rows ``[lo, hi)`` of an episode array, JPEG rows decoded to frames of the layout's shape."""
    stored = dataset[lo:hi]
    if not layout.jpeg:
        return stored
    frames = np.empty((len(stored), *layout.shape), dtype=layout.dtype)
    for offset, encoded in enumerate(stored):
        frames[offset] = decode_jpeg(encoded, layout.shape, f"{where}/{layout.key}[{lo + offset}]")
    return frames


def decode_jpeg(encoded: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """One JPEG frame as a uint8 array of ``shape``; damaged bytes or another shape are errors."""
    image_module = _pillow()
    try:
        image = image_module.open(io.BytesIO(np.asarray(encoded, dtype=np.uint8).tobytes()))
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's UnidentifiedImageError is an OSError
        raise CorruptStoreError(f"{where} is not a readable JPEG frame ({exc}); the dataset is damaged") from None
    with image:
        if image.format != "JPEG":
            raise CorruptStoreError(f"{where} holds a {image.format} image where jpeg_encoding promises JPEG")
        frame = np.asarray(image, dtype=np.uint8)
    if frame.shape != shape:
        raise SchemaError(f"{where} decodes to a frame of shape {frame.shape}; the declared space has {shape}")
    return frame


def _pillow():
    try:
        # Pillow is optional (the interchange extra): loaded only for JPEG-encoded observations.
        from PIL import Image
    except ImportError as exc:
        raise ImportError("decoding Minari's JPEG-encoded image observations needs Pillow: "
                          "pip install 'expstore[interchange]' (or pip install pillow)") from exc
    return Image
