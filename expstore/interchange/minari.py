"""Minari datasets (HDF5 format), read and written with h5py: no Minari install needed.

Layout: ``DATASET/data/metadata.json`` and ``DATASET/data/main_data.hdf5`` with one group
``episode_{i}`` per episode holding ``observations`` (T+1 rows: the reset observation, then one
per step), ``actions``, ``rewards``, ``terminations`` and ``truncations`` (T rows). A pool row t
of an episode is (observations[t], actions[t], rewards[t], observations[t+1], terminations[t],
truncations[t]). Export splits the pool into episodes at every ``terminated``/``truncated`` row,
wherever the pool's bookkeeping ends one (``Store.end_episodes``) and wherever ``next_obs`` of a
row differs from ``obs`` of the next one (a segment without either flag at its end), so that
import gives back every row bit for bit. Import makes each episode group one pool episode: one
whose last row has neither flag is ended there as ``end_episodes`` ends one. A vector env's
interleaved episodes are written one after another, each its own rows in step order and ended
where the pool's bookkeeping ends it too (episode_tags.py's EpisodeOrder); one still open at the
export ends, as a one-env pool's last one does, without a flag. Other pool fields go
to ``expstore_fields/<name>`` in each episode group, which Minari ignores. Import checks every
episode against the spaces that ``metadata.json`` declares and decodes JPEG-encoded image rows
(minari_fields.py); export writes raw arrays (``jpeg_encoding: false``). A pool that derives
``next_obs`` exports the derived values (minari_derived.py); ragged fields are refused, since
every episode array has one row shape.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import closing

import numpy as np

from ..backends import files
from ..errors import CorruptStoreError, InvalidArgumentError, NotAPoolError, StoreNotFoundError
from ..inspect.streaming import Progress, open_source, slice_rows
from ..maintenance.destination import SAVED_KEY, check_destination
from ..maintenance.writing import make_parent
from ..schema import Field, Schema
from .base import ExportOption, ExportResult
from .building import ImportSlice, build_imported_pool
from .common import REQUIRED, check_fixed, check_required, restore
from .episode_tags import EpisodeOrder
from .minari_arrow import FORMATS as ARROW_STORAGES
from .minari_arrow import ArrowEpisode, episode_dirs, shape_hints, write_episodes
from .minari_derived import with_next_obs
from .minari_fields import check_episode, field_layouts, read_rows

MINARI_VERSION = "0.5.4"  # the newest dataset version this layout matches
_STANDARD = ("obs", "action", "reward", "next_obs", "terminated", "truncated")
_EXTRAS = "expstore_fields"


# ---------------------------------------------------------------------------------------- export
def export_minari(src: str | os.PathLike, dst: str | os.PathLike, *, dataset_id: str | None = None,
                  data_format: str | None = None, overwrite: bool = False,
                  progress: Progress | None = None) -> tuple[int, int]:
    """Write pool ``src`` as the Minari dataset directory ``dst``; return (rows, episodes).

    ``data_format`` is Minari's storage: ``hdf5`` (the default), ``arrow`` or ``parquet``
    (minari_arrow.py; pyarrow needed).

    ``minari.load_dataset(dataset_id)`` reads it when ``dst`` is
    ``$MINARI_DATASETS_PATH/<dataset_id>``. ``dataset_id`` defaults to ``dst``'s name and must
    look like ``name-v0``.
    """
    dst = os.fspath(dst)
    dataset_id = dataset_id or os.path.basename(os.path.normpath(dst))
    _check_dataset_id(dataset_id)
    storage = _storage(data_format)
    check_destination(dst, overwrite, "minari")
    with closing(open_source(src)) as opened:
        check_required(opened.schema, opened.path, "a Minari dataset", REQUIRED)
        check_fixed(opened.schema, opened.path, "a Minari dataset",
                    "each episode holds its observations, actions and extras as arrays of one row shape")
        source = with_next_obs(opened, "a Minari dataset")
        order = EpisodeOrder(source)
        ends, bounds = _segment(order, progress)

        def build(temp: str) -> list[str]:
            os.makedirs(os.path.join(temp, "data"))
            if storage == "hdf5":
                _write_episodes(os.path.join(temp, "data", "main_data.hdf5"), order, ends, progress)
            else:
                extras = [name for name in source.schema if name not in _STANDARD]
                write_episodes(os.path.join(temp, "data"), order, ends, progress, storage, extras)
            metadata = _metadata(source, dataset_id, len(ends), bounds)
            metadata["data_format"] = storage
            with open(os.path.join(temp, "data", "metadata.json"), "w") as fh:
                json.dump(metadata, fh)
            return []

        make_parent(dst)
        files.build_aside(dst, build, replace=overwrite)
        return len(source), len(ends)


def _storage(data_format: str | None) -> str:
    storage = (data_format or "hdf5").lower()
    if storage not in ("hdf5", *ARROW_STORAGES):
        raise InvalidArgumentError(f"--data-format {storage} is not one of hdf5, {', '.join(ARROW_STORAGES)} "
                                   "(Minari's storages)")
    return storage


def _check_dataset_id(dataset_id: str) -> None:
    if not re.fullmatch(r"(?:[\w.-]+/)?[\w.-]+-v\d+", dataset_id):
        raise InvalidArgumentError(f"Minari dataset id {dataset_id!r} must look like 'name-v0' or "
                                   "'namespace/name-v0'; pass --dataset-id or rename the destination")


def _segment(order: EpisodeOrder, progress) -> tuple[np.ndarray, dict]:
    """Episode ends (exclusive indices in ``order``'s rows), and min/max of obs and action for
    the spaces. An episode of the pool ends at its last row whatever its observations: where
    episodes interleave, the next rows are another episode's; one after another, the next one
    may begin at the last one's final observation (ended by end_episodes, without a flag)."""
    ends: list[int] = []
    bounds: dict[str, tuple] = {}
    carry, carry_id = None, None
    for first, rows, ids in order.slices(fields=list(_STANDARD), progress=progress):
        obs, next_obs = _as_bytes(rows["obs"]), _as_bytes(rows["next_obs"])
        breaks = rows["terminated"].astype(bool) | rows["truncated"].astype(bool)
        breaks[:-1] |= (next_obs[:-1] != obs[1:]).any(axis=1)
        other = carry_id != int(ids[0])
        breaks[:-1] |= ids[:-1] != ids[1:]
        if carry is not None and ((carry != obs[0]).any() or other) and (not ends or ends[-1] != first):
            ends.append(first)
        ends.extend((first + np.flatnonzero(breaks) + 1).tolist())
        carry, carry_id = next_obs[-1].copy(), int(ids[-1])
        for name in ("obs", "action"):
            _widen(bounds, name, rows[name])
    rows_total = len(order.source)
    if rows_total and (not ends or ends[-1] != rows_total):
        ends.append(rows_total)
    return np.asarray(ends, dtype=np.int64), bounds


def _as_bytes(values: np.ndarray) -> np.ndarray:
    values = np.ascontiguousarray(values)
    return values.reshape(len(values), -1).view(np.uint8)


def _widen(bounds: dict, name: str, values: np.ndarray) -> None:
    if values.size:
        low, high = values.min(), values.max()
        old = bounds.get(name)
        bounds[name] = (low, high) if old is None else (min(old[0], low), max(old[1], high))


def _write_episodes(path: str, order: EpisodeOrder, ends: np.ndarray, progress) -> None:
    # h5py loads on first use: its import is slow, and a program on Zarr pools never needs it.
    import h5py

    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    schema = order.source.schema
    extras = [name for name in schema if name not in _STANDARD]
    with h5py.File(path, "w", track_order=True, locking=False) as f:
        groups = [_episode_group(f, k, int(ends[k] - starts[k]), schema, extras) for k in range(len(ends))]
        for first, rows, _ in order.slices(progress=progress):
            last = first + len(rows["reward"])
            first_episode = np.searchsorted(ends, first, side="right")
            for k in range(first_episode, np.searchsorted(ends, last - 1, side="right") + 1):
                if k >= len(ends):
                    break
                lo, hi = max(first, int(starts[k])), min(last, int(ends[k]))
                _fill(groups[k], rows, lo - first, hi - first, lo - int(starts[k]), hi == ends[k], extras)


def _episode_group(f, k: int, steps: int, schema: Schema, extras: list[str]):
    group = f.create_group(f"episode_{k}")
    group.attrs["id"] = k
    group.attrs["total_steps"] = steps
    obs = schema["obs"]
    group.create_dataset("observations", shape=(steps + 1, *obs.shape), dtype=obs.dtype)
    for name, key in (("action", "actions"), ("reward", "rewards"), ("terminated", "terminations"),
                      ("truncated", "truncations")):
        dtype = bool if name in ("terminated", "truncated") else schema[name].dtype
        group.create_dataset(key, shape=(steps, *schema[name].shape), dtype=dtype)
    for name in extras:
        group.create_dataset(f"{_EXTRAS}/{name}", shape=(steps, *schema[name].shape), dtype=schema[name].dtype)
    return group


def _fill(group, rows, lo: int, hi: int, at: int, closes: bool, extras: list[str]) -> None:
    stop = at + hi - lo
    group["observations"][at:stop] = rows["obs"][lo:hi]
    if closes:
        group["observations"][stop] = rows["next_obs"][hi - 1]
    for name, key in (("action", "actions"), ("reward", "rewards"), ("terminated", "terminations"),
                      ("truncated", "truncations")):
        group[key][at:stop] = rows[name][lo:hi]
    for name in extras:
        group[f"{_EXTRAS}/{name}"][at:stop] = rows[name][lo:hi]


def _space(field: Field, bounds: tuple | None) -> dict:
    if not field.shape and field.dtype.kind in "iu":
        start, stop = (0, 0) if bounds is None else (int(bounds[0]), int(bounds[1]))
        return {"type": "Discrete", "dtype": "int64", "start": start, "n": stop - start + 1}
    low: float
    high: float
    if field.dtype.kind == "f":
        low, high = -np.inf, np.inf
    elif field.dtype.kind in "iu":
        info = np.iinfo(field.dtype)
        low, high = int(info.min), int(info.max)
    else:
        raise InvalidArgumentError(f"a {field.dtype} field has no Minari space; store obs/action as numbers")
    return {"type": "Box", "dtype": field.dtype.name, "shape": list(field.shape),
            "low": np.full(field.shape, low).tolist(), "high": np.full(field.shape, high).tolist()}


def _metadata(source, dataset_id: str, episodes: int, bounds: dict) -> dict:
    saved = source.attrs.get("minari", {})
    metadata = {
        "dataset_id": dataset_id, "minari_version": MINARI_VERSION, "data_format": "hdf5",
        "total_episodes": episodes, "total_steps": len(source), "jpeg_encoding": False,
        "observation_space": (saved.get("observation_space")
                              or json.dumps(_space(source.schema["obs"], bounds.get("obs")))),
        "action_space": saved.get("action_space") or json.dumps(_space(source.schema["action"], bounds.get("action"))),
        SAVED_KEY: {"schema": source.schema.to_json(), "attrs": source.attrs},
    }
    for key in ("env_spec", "eval_env_spec", "description", "algorithm_name", "code_permalink"):
        if saved.get(key) is not None:
            metadata[key] = saved[key]
    return metadata


# ---------------------------------------------------------------------------------------- import
def import_minari(src: str | os.PathLike, dst: str | os.PathLike, *, capacity: int | None = None,
                  backend: str | None = None, overwrite: bool = False, progress: Progress | None = None) -> int:
    """Create pool ``dst`` from the Minari dataset ``src`` (its directory, its ``data``
    directory, or a dataset id under ``$MINARI_DATASETS_PATH``); return the row count.

    Every episode is checked against the spaces in ``metadata.json`` first, and JPEG-encoded
    image observations (``jpeg_encoding``) are decoded to frames (minari_fields.py). The
    dataset's spaces, env spec and description are kept in ``attrs["minari"]``, so an export
    writes them back.
    """
    # h5py loads on first use: its import is slow, and a program on Zarr pools never needs it.
    import h5py

    dst = os.fspath(dst)
    check_destination(dst, overwrite)
    data_dir = _data_dir(os.fspath(src))
    with open(os.path.join(data_dir, "metadata.json")) as fh:
        metadata = json.load(fh)
    storage = metadata.get("data_format", "hdf5")
    if storage not in ("hdf5", *ARROW_STORAGES):
        raise NotAPoolError(f"{src} stores its episodes as {storage!r}; Minari's hdf5, arrow and parquet storages "
                            "can be imported")
    if storage != "hdf5":
        saved = metadata.get(SAVED_KEY, {}).get("schema") if isinstance(metadata.get(SAVED_KEY), dict) else None
        hints = shape_hints(metadata, saved)
        episodes = [ArrowEpisode(path, hints, storage)
                    for path in episode_dirs(data_dir, metadata)]
        return _import_episodes(src, dst, metadata, episodes, capacity, backend, overwrite, progress)
    with h5py.File(os.path.join(data_dir, "main_data.hdf5"), "r", locking=False) as f:
        episodes = _episode_groups(src, f, metadata)
        return _import_episodes(src, dst, metadata, episodes, capacity, backend, overwrite, progress)


def _import_episodes(src, dst: str, metadata: dict, episodes: list, capacity, backend, overwrite: bool,
                     progress) -> int:
    """Check every episode (h5py groups, or minari_arrow's episodes), then build the pool."""
    layouts = field_layouts(os.fspath(src), metadata, episodes[0])
    schema, attrs = _import_schema(src, metadata, episodes[0], layouts)
    per_step = _per_step_layout(episodes[0], schema)
    rows = sum(check_episode(os.fspath(src), k, ep, layouts, per_step)
               for k, ep in enumerate(episodes))
    build_imported_pool(dst, backend, schema, capacity or max(1, rows), attrs,
                        _episode_slices(src, episodes, schema, layouts, progress), overwrite=overwrite)
    return rows


def _episode_groups(src, f, metadata: dict) -> list:
    count = int(metadata.get("total_episodes", len(f.keys())))
    if count == 0:
        raise NotAPoolError(f"{src} holds no episode; there is nothing to import")
    missing = [k for k in range(count) if f"episode_{k}" not in f]
    if missing:
        raise CorruptStoreError(f"{src}: metadata.json counts {count} episodes but episode_{missing[0]} is missing "
                                f"({len(missing)} in all); the dataset is incomplete")
    return [f[f"episode_{k}"] for k in range(count)]


def _data_dir(src: str) -> str:
    if not os.path.exists(src) and not os.path.isabs(src):
        root = os.environ.get("MINARI_DATASETS_PATH") or os.path.join(os.path.expanduser("~"), ".minari", "datasets")
        if os.path.isdir(os.path.join(root, src)):
            src = os.path.join(root, src)
    for candidate in (os.path.join(src, "data"), src):
        episodes_there = os.path.exists(os.path.join(candidate, "main_data.hdf5")) or \
            os.path.isdir(os.path.join(candidate, "0"))  # hdf5, or the arrow/parquet storages' episode 0
        if os.path.exists(os.path.join(candidate, "metadata.json")) and episodes_there:
            return candidate
    if not os.path.exists(src):
        raise StoreNotFoundError(f"no Minari dataset at {src}; pass its directory or a dataset id "
                                 "under $MINARI_DATASETS_PATH")
    raise NotAPoolError(f"{src} holds no data/metadata.json and data/main_data.hdf5, so it is not a Minari dataset")


def _import_schema(src, metadata: dict, first, layouts: dict) -> tuple[Schema, dict]:
    obs, act = layouts["observations"], layouts["actions"]
    columns = {"obs": Field(obs.shape, obs.dtype), "action": Field(act.shape, act.dtype),
               "reward": Field((), first["rewards"].dtype), "next_obs": Field(obs.shape, obs.dtype),
               "terminated": Field((), "bool"), "truncated": Field((), "bool")}
    for name, ds in first.get(_EXTRAS, {}).items():
        columns[name] = Field(ds.shape[1:], ds.dtype)
    schema, attrs = restore(columns, metadata.get(SAVED_KEY))
    if SAVED_KEY not in metadata:
        keep = ("observation_space", "action_space", "env_spec", "eval_env_spec", "dataset_id", "description",
                "algorithm_name", "code_permalink", "minari_version")
        attrs["minari"] = {key: metadata[key] for key in keep if key in metadata}
    return schema, attrs


def _per_step_layout(first, schema: Schema) -> dict:
    """Row shape and dtype of rewards and the expstore extras, as episode 0 stores them."""
    layout = {"rewards": ((), first["rewards"].dtype)}
    for name in schema:
        if name not in _STANDARD:
            stored = first[f"{_EXTRAS}/{name}"]
            layout[f"{_EXTRAS}/{name}"] = (tuple(stored.shape[1:]), stored.dtype)
    return layout


def _episode_slices(src, episodes, schema: Schema, layouts: dict, progress):
    """Each episode's rows in slices. An episode whose last row has neither flag (one ended by
    ``Store.end_episodes``, or open at the export: Minari cannot tell them apart) is ended there
    as ``end_episodes`` ends one, since ``extend`` ends episodes only at a flag and the next
    episode would otherwise continue it."""
    step = slice_rows(schema)
    for k, ep in enumerate(episodes):
        where = f"{src}: episode_{k}"
        steps = int(ep["rewards"].shape[0])
        for lo in range(0, steps, step):
            hi = min(steps, lo + step)
            observations = read_rows(ep["observations"], lo, hi + 1, layouts["observations"], where)
            batch = {"obs": observations[:-1], "next_obs": observations[1:],
                     "action": read_rows(ep["actions"], lo, hi, layouts["actions"], where),
                     "reward": ep["rewards"][lo:hi], "terminated": ep["terminations"][lo:hi],
                     "truncated": ep["truncations"][lo:hi]}
            for name in schema:
                if name not in batch:
                    batch[name] = ep[f"{_EXTRAS}/{name}"][lo:hi]
            rows = {name: np.asarray(batch[name]).astype(schema[name].dtype, copy=False) for name in schema}
            unflagged = hi == steps and not (rows["terminated"][-1] or rows["truncated"][-1])
            yield ImportSlice(rows, [hi - lo] if unflagged else [])
            if progress is not None:
                progress(hi - lo)


class MinariFormat:
    """Minari datasets as a registered interchange format (base.Format)."""

    name: str = "minari"
    description: str = "Minari dataset"
    suffixes: tuple[str, ...] = ()  # a dataset is a directory (or an id under $MINARI_DATASETS_PATH)
    export_passes: int = 2  # one to find the episodes, one to write them
    export_options: tuple[ExportOption, ...] = (
        ExportOption("dataset_id", "Minari dataset id, e.g. pendulum/random-v0 (default: DST's name)."),
        ExportOption("data_format", "Minari storage: hdf5 (default), arrow or parquet."))

    def recognises(self, path: str) -> bool:
        return any(os.path.exists(os.path.join(path, *parts, "metadata.json")) for parts in ((), ("data",)))

    def export_pool(self, src: str, dst: str, *, overwrite: bool = False, progress: Progress | None = None,
                    **options) -> ExportResult:
        rows, episodes = export_minari(src, dst, overwrite=overwrite, progress=progress, **options)
        return ExportResult(rows, episodes)

    def import_pool(self, src: str, dst: str, *, capacity: int | None = None, backend: str | None = None,
                    overwrite: bool = False, progress: Progress | None = None) -> int:
        return import_minari(src, dst, capacity=capacity, backend=backend, overwrite=overwrite, progress=progress)
