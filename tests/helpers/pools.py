"""Pools and rows the tests share: the backends and their path suffixes, a pendulum-like schema,
and rows derived from their step ids, so that any row can be checked alone."""

from __future__ import annotations

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
