"""LeRobot's own dataset code (the ``lerobot-dataset`` package, module ``ledataset``) for the tests:
datasets written by ``LeRobotDataset.create / add_frame / save_episode / finalize``, and loaded
by ``LeRobotDataset(repo_id, root=...)``.

Two things of this test environment are bridged, neither of them LeRobot's logic:

* torchvision: LeRobot imports it (``transforms``), and a torchvision wheel built for another
  torch than the installed one fails at import while registering its compiled operators. The
  import is retried with that registration tolerated; the Python parts LeRobot uses work.
* video decoding: LeRobot's loader decodes with torchcodec when installed, else through
  ``torchvision.io.VideoReader`` (gone from recent torchvision). Where neither is there, its
  ``decode_video_frames`` is replaced by the same PyAV decode torchvision's "pyav" backend did
  (every frame to RGB, the one nearest each query time within the tolerance, as float in [0, 1]);
  LeRobot's own code still picks the file, the episode's start time and the query times.
"""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest


def import_lerobot_dataset():
    """The ``ledataset.datasets.lerobot_dataset`` module, or skip (lerobot-dataset not installed)."""
    if importlib.util.find_spec("ledataset") is None:
        pytest.skip("lerobot-dataset is not installed (pip install --no-deps lerobot-dataset)")
    _import_torchvision()
    module = importlib.import_module("ledataset.datasets.lerobot_dataset")
    if importlib.util.find_spec("torchcodec") is None:
        module.decode_video_frames = _decode_with_pyav
    return module


def _import_torchvision() -> None:
    try:
        importlib.import_module("torchvision")
    except RuntimeError:  # compiled operators of another torch build: register_fake finds no operator
        import torch.library

        real = torch.library.register_fake

        def tolerant(op, *args, **kwargs):
            def register(fn):
                try:
                    return real(op, *args, **kwargs)(fn)
                except RuntimeError:
                    return fn
            return register

        torch.library.register_fake = tolerant
        try:
            importlib.import_module("torchvision")
        finally:
            torch.library.register_fake = real


def _decode_with_pyav(video_path, timestamps, tolerance_s, backend=None):
    import av
    import torch

    frames, times = [], []
    with av.open(str(video_path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time))
    times_s = np.asarray(times)
    nearest = [int(np.argmin(np.abs(times_s - t))) for t in timestamps]
    assert all(abs(times_s[k] - t) < tolerance_s for k, t in zip(nearest, timestamps, strict=True))
    chosen = np.stack([frames[k] for k in nearest])
    return torch.from_numpy(chosen).permute(0, 3, 1, 2).float() / 255


def gradient_frame(step: int, height: int = 32, width: int = 48) -> np.ndarray:
    """A smooth RGB frame that moves with ``step``: lossy codecs keep it close."""
    rows, cols = np.mgrid[0:height, 0:width]
    red = (rows * 4 + step * 3) % 256
    green = (cols * 4 + step * 5) % 256
    blue = np.full_like(rows, (step * 7) % 256)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def write_with_lerobot(root: str, episodes: int = 3, steps: int = 6, fps: int = 10) -> dict:
    """A dataset written by LeRobot's own writer; returns the frames given to it, in order."""
    module = import_lerobot_dataset()
    features = {
        "observation.state": {"dtype": "float32", "shape": (3,), "names": ["x", "y", "z"]},
        "action": {"dtype": "float32", "shape": (2,), "names": None},
        "observation.environment_state": {"dtype": "float64", "shape": (4,), "names": None},
        "observation.images.top": {"dtype": "video", "shape": (32, 48, 3), "names": ["height", "width", "channels"]},
    }
    dataset = module.LeRobotDataset.create("tests/written", fps=fps, root=root, features=features, use_videos=True)
    rng = np.random.default_rng(0)
    given: dict[str, list] = {key: [] for key in features}
    for episode in range(episodes):
        for t in range(steps + episode):
            frame = {"observation.state": rng.normal(size=3).astype(np.float32),
                     "action": rng.normal(size=2).astype(np.float32),
                     "observation.environment_state": rng.normal(size=4),
                     "observation.images.top": gradient_frame(10 * episode + t)}
            for key, value in frame.items():
                given[key].append(value)
            dataset.add_frame({**frame, "task": f"task {episode % 2}"})
        dataset.save_episode()
    dataset.finalize()
    return {key: np.stack(values) for key, values in given.items()}


def load_with_lerobot(root: str):
    """``LeRobotDataset(repo_id, root=root)`` as LeRobot's users load a local dataset."""
    module = import_lerobot_dataset()
    return module.LeRobotDataset("tests/loaded", root=root)


def loaded_items(dataset) -> dict[str, np.ndarray]:
    """Every item of a LeRobotDataset through its ``__getitem__``, stacked per key (video frames
    back to uint8 HWC, as the loader's float CHW in [0, 1] was made from them)."""
    items = [dataset[k] for k in range(len(dataset))]
    out = {}
    for key in items[0]:
        if key == "task":
            out[key] = np.asarray([item[key] for item in items])
            continue
        values = np.stack([item[key].numpy() for item in items])
        if key in dataset.meta.video_keys:
            values = np.round(np.moveaxis(values, 1, -1) * 255).astype(np.uint8)
        out[key] = values
    return out


def loaded_columns(dataset) -> dict[str, np.ndarray]:
    """The non-video columns LeRobot's loader holds (its ``hf_dataset``), in their stored dtypes
    (its ``__getitem__`` turns float64 into float32 tensors)."""
    table = dataset.hf_dataset.data.table
    out = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if hasattr(column, "flatten") and column.type.num_fields == 1:  # fixed-size list
            width = column.type.list_size
            out[name] = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), width)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out
