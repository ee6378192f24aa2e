"""Pools and rows the tests share: the backends and their path suffixes, a pendulum-like schema,
and rows derived from their step ids, so that any row can be checked alone."""

from __future__ import annotations

import os

import numpy as np

BACKENDS = {"hdf5": ".h5", "zarr": ".zarr"}


def pendulum_schema() -> dict:
    return {"obs": ((3,), "float32"), "action": ((1,), "float32"), "reward": ((), "float32"),
            "next_obs": ((3,), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}


def rows_for(step_ids) -> dict[str, np.ndarray]:
    """Rows whose every value is derived from its step id, so any row can be checked alone."""
    steps = np.asarray(step_ids, dtype=np.int64)
    base = steps.astype(np.float32)
    return {
        "obs": np.stack([base, base + 0.25, base + 0.5], axis=1),
        "action": (base * 2)[:, None],
        "reward": -base,
        "next_obs": np.stack([base + 1, base + 1.25, base + 1.5], axis=1),
        "terminated": steps % 5 == 0,
        "truncated": steps % 7 == 0,
    }


def pool_files(path: str) -> list[str]:
    """The file of an HDF5 pool, or every file under a Zarr pool's directory, sorted (seeded
    damage picks files by position)."""
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(root, name) for root, _dirs, names in os.walk(path) for name in names)


def drop_from_page_cache(path: str) -> None:
    """Write back and drop a pool's pages from the page cache."""
    for file in pool_files(path):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
