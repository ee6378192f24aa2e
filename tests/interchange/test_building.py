"""The interchange builder: a pool filled through its open store at a temporary sibling, renamed
into place only once filled; an error while filling leaves nothing behind."""

from __future__ import annotations

import numpy as np
import pytest

import expstore
from expstore.interchange import building
from tests.helpers.pools import BACKENDS

SCHEMA = {"obs": ((2,), "float32"), "terminated": ((), "bool")}


def test_a_filled_pool_appears_whole(tmp_path, backend):
    dst = str(tmp_path / f"built{BACKENDS[backend]}")

    def fill(store) -> None:
        store.extend({"obs": np.arange(8, dtype=np.float32).reshape(4, 2), "terminated": np.arange(4) == 3})

    building.build_filled_pool(dst, None, fill, capacity=10, schema=SCHEMA)
    with expstore.open(dst) as pool:
        assert len(pool) == 4 and pool[:]["obs"].tolist() == np.arange(8).reshape(4, 2).tolist()
    assert not hasattr(building, "build_pool")  # maintenance/writing.py's build_pool is another function


def test_an_error_while_filling_leaves_nothing(tmp_path, backend):
    def fill(store) -> None:
        store.extend({"obs": np.zeros((2, 2), np.float32), "terminated": np.zeros(2, bool)})
        raise ValueError("found late")

    with pytest.raises(ValueError, match="found late"):
        building.build_filled_pool(str(tmp_path / f"built{BACKENDS[backend]}"), None, fill, capacity=10,
                                   schema=SCHEMA)
    assert not list(tmp_path.iterdir())
