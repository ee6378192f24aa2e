"""Shared fixtures: both backends, a pendulum-like schema, deterministic rows, --full runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.pools import BACKENDS

# The child processes tests start import tests.helpers and this checkout's expstore, from
# whatever folder they run in: put the checkout first on their import path.
_CHECKOUT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join([_CHECKOUT, *filter(None, [os.environ.get("PYTHONPATH")])])


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
