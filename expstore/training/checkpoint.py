"""Atomic checkpoints: write aside, fsync, rename; plus the RNG states a resume restores."""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch

from ..backends.files import fsync_dir
from ..errors import CorruptStoreError

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    """Write ``state`` so that ``path`` always holds either the old or the new checkpoint.

    A kill at any moment leaves at worst a stray temporary file, never a half-written
    checkpoint: the bytes reach the disk (fsync) before the rename publishes them, and the
    directory is synced so the rename itself survives a power loss.
    """
    directory = os.path.dirname(os.path.abspath(path))
    temp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    with open(temp, "wb") as stream:
        torch.save(state, stream)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temp, path)  # atomic on POSIX: readers see the old file or the new one
    fsync_dir(directory)


def load_checkpoint(path: str) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None if there is none."""
    if not os.path.exists(path):
        return None
    try:
        # The checkpoint holds numpy RNG states and plain dicts besides tensors.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a bad file
        raise CorruptStoreError(f"cannot read the checkpoint {path} ({exc}); move it away to "
                                "start the agent afresh (the pool in the run directory is kept)") from None


def remove_stale_temporaries(directory: str) -> None:
    """Delete checkpoint temporaries a killed run left behind."""
    for name in os.listdir(directory):
        if name.startswith(f".{CHECKPOINT_NAME}.tmp-"):
            os.unlink(os.path.join(directory, name))


def capture_rng(generator: np.random.Generator) -> dict[str, Any]:
    """The random states a run draws from: torch, numpy (the trainer's generator), Python."""
    return {"torch": torch.get_rng_state(), "numpy": generator.bit_generator.state,
            "python": random.getstate()}


def restore_rng(state: dict[str, Any], generator: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.bit_generator.state = state["numpy"]
    random.setstate(state["python"])
