"""The archive form of Zarr pools: one group, one zstd- or blosc-compressed array per field (archive.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..schema import Schema
from .archive import ATTR, check_array_types, damaged, write_slices


class ZarrArchive:
    codecs: tuple[str, ...] = ("zstd", "blosc")

    def read_marker(self, path: str) -> Any:
        doc = os.path.join(path, "zarr.json")
        if not os.path.isdir(path) or not os.path.exists(doc):
            return None
        with open(doc, "rb") as fh:
            group = json.loads(fh.read())
        attributes = group.get("attributes") if isinstance(group, dict) else None
        return attributes.get(ATTR) if isinstance(attributes, dict) else None

    def write(self, temp: str, codec: str, schema: Schema, final_meta: Callable[[int], dict], rows: int,
              chunk_rows: int, slices: Iterable[tuple[int, dict[str, np.ndarray]]]) -> None:
        # zarr loads on first use: its import is slow, and a program on HDF5 pools never needs it.
        import zarr
        from zarr.codecs import BloscCodec, ZstdCodec

        compressor = ZstdCodec(level=3) if codec == "zstd" else BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")
        group = zarr.create_group(store=temp, zarr_format=3)
        arrays = {
            name: group.create_array(name, shape=(rows, *field.shape), chunks=(max(chunk_rows, 1), *field.shape),
                                     dtype=field.dtype, compressors=compressor)
            for name, field in schema.items()
        }
        written = write_slices(arrays, slices)
        if written < rows:
            for name, array in arrays.items():
                array.resize((written, *schema[name].shape))
        group.update_attributes({ATTR: final_meta(written)})

    def open_arrays(self, path: str, schema: Schema) -> tuple[dict[str, Any], Callable[[], None] | None]:
        # zarr loads on first use: its import is slow, and a program on HDF5 pools never needs it.
        import zarr

        try:
            group = zarr.open_group(path, mode="r")
            arrays = {name: group[name] for name in schema}
        except Exception as exc:  # zarr reports damaged documents as any of several
            raise damaged(path, "the arrays", exc) from None
        check_array_types(path, arrays, zarr.Array)
        return arrays, None
