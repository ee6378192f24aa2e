"""The D4RL HDF5 layout: one flat file of aligned per-step arrays.

``observations``, ``actions``, ``rewards``, ``terminals``, ``timeouts`` and, when the pool has
them, ``next_observations``; any other pool field goes to ``infos/<name>`` (D4RL keeps per-step
extras such as ``infos/qpos`` there). Export and import both stream in bounded slices. Ragged
fields are refused: every array of the layout holds rows of one shape.
"""

from __future__ import annotations

import os
from contextlib import closing

import numpy as np

from ..backends import files, resolve_backend
from ..errors import InvalidArgumentError, NotAPoolError
from ..inspect.streaming import Progress, iter_slices, open_source, slice_rows
from ..maintenance.destination import SAVED_KEY, check_destination
from ..maintenance.writing import build_pool, make_parent
from ..schema import SUPPORTED_DTYPES, Field
from .base import ExportOption, ExportResult
from .common import D4RL_NAMES, check_fixed, check_required, field_name, restore, saved_json

_FROM_D4RL = {d4rl: pool for pool, d4rl in D4RL_NAMES.items()}
_D4RL_REQUIRED = ("observations", "actions", "rewards", "terminals")


def export_d4rl(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False,
                progress: Progress | None = None) -> int:
    """Write the rows of pool ``src`` (oldest first) as a D4RL HDF5 file ``dst``; return the row count."""
    dst = os.fspath(dst)
    check_destination(dst, overwrite, "d4rl")
    with closing(open_source(src)) as source:
        check_required(source.schema, source.path, "the D4RL layout")
        check_fixed(source.schema, source.path, "the D4RL layout", "one array per field, one row per step")
        rows = len(source)

        def build(temp: str) -> list[str]:
            # h5py loads on first use: its import is slow, and a program on Zarr pools never needs it.
            import h5py

            with h5py.File(temp, "w", locking=False) as f:
                datasets = {name: f.create_dataset(D4RL_NAMES.get(name, f"infos/{name}"),
                                                   shape=(rows, *field.shape), dtype=field.dtype)
                            for name, field in source.schema.items()}
                for first, batch in iter_slices(source, progress=progress):
                    for name, values in batch.items():
                        datasets[name][first:first + len(values)] = values
                f.attrs[SAVED_KEY] = saved_json(source.schema, source.attrs)
            return []

        make_parent(dst)
        files.build_aside(dst, build, replace=overwrite)
    return rows


def import_d4rl(src: str | os.PathLike, dst: str | os.PathLike, *, capacity: int | None = None,
                backend: str | None = None, overwrite: bool = False, progress: Progress | None = None) -> int:
    """Create pool ``dst`` from the D4RL HDF5 file ``src``; return the row count.

    ``timeouts`` may be missing (read as all false); ``next_observations`` is imported when
    present. Numeric ``infos/*`` arrays with one row per step become fields of the same name.
    """
    # h5py loads on first use: its import is slow, and a program on Zarr pools never needs it.
    import h5py

    src, dst = os.fspath(src), os.fspath(dst)
    check_destination(dst, overwrite)
    try:
        f = h5py.File(src, "r", locking=False)
    except OSError as exc:
        raise NotAPoolError(f"{src} is not a readable HDF5 file ({exc}); pass a D4RL .hdf5 file") from None
    with f:
        missing = [name for name in _D4RL_REQUIRED if name not in f]
        if missing:
            raise NotAPoolError(f"{src} lacks {missing}, so it is not a D4RL file; it holds {sorted(f.keys())}")
        rows = int(f["observations"].shape[0])
        datasets = _columns(f, rows)
        columns = {name: Field(ds.shape[1:], _supported(ds.dtype)) for name, ds in datasets.items()}
        if "truncated" not in columns:
            columns["truncated"] = Field((), "bool")
        schema, attrs = restore(columns, f.attrs.get(SAVED_KEY))
        step = slice_rows(schema)
        slices = (_read_rows(datasets, schema, first, min(rows, first + step), progress)
                  for first in range(0, rows, step))
        build_pool(dst, _backend(dst, backend), schema, capacity or max(1, rows), attrs, slices,
                   overwrite=overwrite)
    return rows


def _columns(f, rows: int) -> dict:
    datasets = {}
    for d4rl_name, pool_name in _FROM_D4RL.items():
        if d4rl_name in f:
            datasets[pool_name] = _checked(f[d4rl_name], d4rl_name, rows)
    infos = f.get("infos")
    for key in ([] if infos is None else list(infos.keys())):
        item, name = infos[key], field_name(key)
        if name and name not in datasets and hasattr(item, "dtype") and item.ndim >= 1 \
                and item.shape[0] == rows and item.dtype.kind in "biuf":
            datasets[name] = item
    return datasets


def _checked(dataset, name: str, rows: int):
    if dataset.ndim < 1 or dataset.shape[0] != rows:
        raise NotAPoolError(f"D4RL array {name!r} has shape {dataset.shape}, expected {rows} rows like observations")
    return dataset


def _supported(dtype: np.dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype in SUPPORTED_DTYPES:
        return dtype
    raise InvalidArgumentError(f"D4RL arrays of dtype {dtype} cannot be stored in a pool")


def _read_rows(datasets, schema, first: int, last: int, progress: Progress | None):
    batch = {}
    for name, field in schema.items():
        if name in datasets:
            batch[name] = np.asarray(datasets[name][first:last]).astype(field.dtype, copy=False)
        else:
            batch[name] = np.zeros((last - first, *field.shape), dtype=field.dtype)
    if progress is not None:
        progress(last - first)
    return first, batch


def _backend(dst: str, backend: str | None) -> str:
    return resolve_backend(dst, backend).name


class D4RLFormat:
    """The D4RL layout as a registered interchange format (base.Format)."""

    name: str = "d4rl"
    description: str = "D4RL file"
    suffixes: tuple[str, ...] = (".h5", ".hdf5")
    export_passes: int = 1
    export_options: tuple[ExportOption, ...] = ()

    def recognises(self, path: str) -> bool:
        return os.path.isfile(path) and os.path.splitext(path)[1].lower() in self.suffixes

    def export_pool(self, src: str, dst: str, *, overwrite: bool = False, progress: Progress | None = None,
                    **options) -> ExportResult:
        return ExportResult(export_d4rl(src, dst, overwrite=overwrite, progress=progress, **options))

    def import_pool(self, src: str, dst: str, *, capacity: int | None = None, backend: str | None = None,
                    overwrite: bool = False, progress: Progress | None = None) -> int:
        return import_d4rl(src, dst, capacity=capacity, backend=backend, overwrite=overwrite, progress=progress)
