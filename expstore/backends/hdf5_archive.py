"""The archive form of HDF5 pools: one file, one gzip + shuffle dataset per field (archive.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..schema import Schema
from .archive import ATTR, check_array_types, damaged, write_slices

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _h5py():
    # h5py loads on first use: its import is slow, and a program on Zarr pools never needs it.
    import h5py

    return h5py


class HDF5Archive:
    codecs: tuple[str, ...] = ("gzip",)

    def read_marker(self, path: str) -> Any:
        if os.path.isdir(path):
            return None
        with open(path, "rb") as fh:
            if fh.read(8) != _HDF5_SIGNATURE:
                return None
        with _h5py().File(path, "r", locking=False) as f:
            return f.attrs.get(ATTR)

    def write(self, temp: str, codec: str, schema: Schema, final_meta: Callable[[int], dict], rows: int,
              chunk_rows: int, slices: Iterable[tuple[int, dict[str, np.ndarray]]]) -> None:
        with _h5py().File(temp, "w", locking=False) as f:
            datasets = {
                name: f.create_dataset(name, shape=(rows, *field.shape), dtype=field.dtype,
                                       chunks=(chunk_rows, *field.shape) if rows else None,
                                       maxshape=(None, *field.shape) if rows else None,
                                       compression="gzip" if rows else None, compression_opts=4,
                                       shuffle=bool(rows))
                for name, field in schema.items()
            }
            written = write_slices(datasets, slices)
            if written < rows:
                for name, dataset in datasets.items():
                    dataset.resize((written, *schema[name].shape))
            f.attrs[ATTR] = json.dumps(final_meta(written))

    def open_arrays(self, path: str, schema: Schema) -> tuple[dict[str, Any], Callable[[], None] | None]:
        h5py = _h5py()
        f = h5py.File(path, "r", locking=False)
        try:
            try:
                arrays = {name: f[name] for name in schema}
            except Exception as exc:  # h5py reports damaged headers as KeyError, OSError, ...
                raise damaged(path, "the arrays", exc) from None
            check_array_types(path, arrays, h5py.Dataset)
        except BaseException:
            # An HDF5 file left open would be reused, damaged state and all, by the next open of this path.
            f.close()
            raise
        return arrays, f.close
