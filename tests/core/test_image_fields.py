"""Image fields: detected from shape and dtype, or named, and kept through a pool's schema on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest

import expstore
from expstore.errors import CorruptStoreError, SchemaError
from tests.helpers.pools import BACKENDS


@pytest.mark.parametrize(("shape", "dtype", "layout"), [
    ((84, 84), "uint8", "HW"),
    ((84, 84, 1), "uint8", "HWC"),
    ((64, 48, 3), "uint8", "HWC"),
    ((3, 64, 48), "uint8", "CHW"),
    ((84, 84), "float32", None),     # pixels are uint8; a float matrix is a state
    ((4, 4), "uint8", None),         # too small to be a picture
    ((84, 84, 5), "uint8", None),    # five channels: not a camera
    ((7056,), "uint8", None),
])
def test_detection(shape, dtype, layout):
    field = expstore.Field(shape, dtype)
    assert field.image_layout == layout
    assert field.is_image == (layout is not None)


def test_named_and_refused_layouts():
    assert expstore.Field((3, 84, 84), "uint8", image="CHW").image_layout == "CHW"
    assert expstore.Field((84, 84), "uint8", image=False).image_layout is None
    assert expstore.Field((84, 84), "uint8", image=True).image_layout == "HW"
    with pytest.raises(SchemaError, match="is not an image"):
        expstore.Field((3,), "float32", image=True)
    with pytest.raises(SchemaError, match="cannot hold HWC images"):
        expstore.Field((84, 84), "uint8", image="HWC")
    with pytest.raises(SchemaError, match="not one of HW, HWC, CHW"):
        expstore.Field((84, 84), "uint8", image="WH")
    with pytest.raises(SchemaError, match="1, 3 or 4 channels"):
        expstore.Field((84, 84, 6), "uint8", image="HWC")


def test_detected_layouts_leave_the_json_as_before():
    assert expstore.Field((84, 84), "uint8").to_json() == {"shape": [84, 84], "dtype": "uint8"}
    assert expstore.Field((84, 84), "uint8", image=False).to_json()["image"] is False
    assert expstore.Field((3, 84, 84), "uint8", image="CHW").to_json() == {"shape": [3, 84, 84], "dtype": "uint8"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_layout_survives_reopen(tmp_path, backend):
    path = str(tmp_path / f"pool{BACKENDS[backend]}")
    schema = {"frame": expstore.Field((3, 16, 16), "uint8"),
              "grid": expstore.Field((16, 16), "uint8", image=False), "reward": ((), "float32")}
    with expstore.open(path, "w", capacity=8, schema=schema) as pool:
        pool.append({"frame": np.zeros((3, 16, 16), np.uint8), "grid": np.ones((16, 16), np.uint8), "reward": 1.0})
    with expstore.open(path, "r") as pool:
        assert pool.schema["frame"].image_layout == "CHW"
        assert pool.schema["grid"].image_layout is None
        assert pool.schema["reward"].image_layout is None


def test_a_damaged_image_entry_is_named(tmp_path):
    path = str(tmp_path / "pool.zarr")
    schema = {"frame": expstore.Field((16, 16), "uint8", image=False), "reward": ((), "float32")}
    with expstore.open(path, "w", capacity=8, schema=schema) as pool:
        pool.append({"frame": np.zeros((16, 16), np.uint8), "reward": 1.0})
    meta_file = tmp_path / "pool.zarr" / "zarr.json"
    document = json.loads(meta_file.read_text())
    text = json.dumps(document).replace('"image": false', '"image": "XYZ"')
    assert text != json.dumps(document)
    meta_file.write_text(text)
    with pytest.raises(CorruptStoreError, match="schema.frame"):
        expstore.open(path, "r")
