"""Shared fixtures: both backends, a pendulum-like schema, deterministic rows, --full runs."""

from __future__ import annotations

import numpy as np
import pytest

BACKENDS = {"hdf5": ".h5", "zarr": ".zarr"}


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False,
                     help="also run the long torture and soak tests (marker: slow)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--full"):
        return
    skip = pytest.mark.skip(reason="long run: pass --full to include it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request) -> str:
    return request.param


@pytest.fixture
def pool_path(tmp_path, backend) -> str:
    return str(tmp_path / f"pool{BACKENDS[backend]}")


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
