"""Minari's Arrow and Parquet storages (``data_format: "arrow"`` / ``"parquet"``), read and
written with pyarrow: no Minari install needed.

Layout, as Minari's ArrowStorage writes it: ``DATASET/data/metadata.json`` and one directory
``DATASET/data/<k>/`` per episode holding ``metadata.json`` (``id``, ``total_steps``) and one
Arrow IPC file (``.arrow``) or Parquet file (``.parquet``) with T+1 rows: ``observations`` (the
reset observation, then one per step), and ``actions``, ``rewards``, ``terminations``,
``truncations`` padded with one last row that readers drop. Box, MultiDiscrete and MultiBinary
rows are flattened to a fixed-size list; Discrete rows are plain integers. The pool's other
fields go to ``expstore_fields.<name>`` columns (padded the same way), which Minari ignores.

Episodes are presented to the HDF5 import (minari.py) as objects with the same interface as an
h5py episode group: arrays with ``shape``, ``dtype`` and slicing, rows reshaped to the declared
spaces, so the same checks run on every storage. An Arrow file is memory-mapped; a Parquet
episode is read whole. Export gathers each episode's rows and writes them as one record batch,
because Minari's reader takes each batch of a file for one episode: both directions hold at most
the longest episode in memory, besides the bounded slices (an export of a vector env's
interleaved episodes, those running at the same time).
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..errors import CorruptStoreError, NotAPoolError
from ..schema import Field
from .arrow_columns import pyarrow, to_arrow

FORMATS = ("arrow", "parquet")
EXTRA_PREFIX = "expstore_fields."
_SPACE_KEYS = {"observations": "observation_space", "actions": "action_space"}


# ---------------------------------------------------------------------------------------- reading
def episode_dirs(data_dir: str, metadata: dict) -> list[str]:
    """The directories of episodes 0..total_episodes-1."""
    count = int(metadata.get("total_episodes", 0))
    if count == 0:
        raise NotAPoolError(f"{data_dir} holds no episode; there is nothing to import")
    dirs = [os.path.join(data_dir, str(k)) for k in range(count)]
    missing = [path for path in dirs if not os.path.isdir(path)]
    if missing:
        raise CorruptStoreError(f"{data_dir}: metadata.json counts {count} episodes but {missing[0]} is missing "
                                f"({len(missing)} in all); the dataset is incomplete")
    return dirs


def shape_hints(metadata: dict, saved_schema: dict | None) -> dict[str, tuple[int, ...]]:
    """Row shapes to unflatten fixed-size lists to: the declared spaces', the saved extras'."""
    hints: dict[str, tuple[int, ...]] = {}
    for key, space_key in _SPACE_KEYS.items():
        raw = metadata.get(space_key)
        try:
            space = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
        except ValueError:
            continue  # minari_fields reports an unreadable space
        if isinstance(space, dict):
            if space.get("type") == "Box":
                hints[key] = tuple(int(n) for n in space.get("shape", ()))
            elif space.get("type") == "MultiDiscrete":
                hints[key] = tuple(np.shape(space.get("nvec", [])))
            elif space.get("type") == "MultiBinary":
                n = space.get("n", 0)
                hints[key] = (int(n),) if np.ndim(n) == 0 else tuple(int(v) for v in np.ravel(n))
    for name, spec in (saved_schema or {}).items():
        hints[f"expstore_fields/{name}"] = tuple(spec.get("shape", ()))
    return hints


class ArrowColumn:
    """One column of an episode, as an h5py dataset looks: ``shape``, ``dtype``, ``ndim``, slices."""

    def __init__(self, where: str, column, rows: int, row_shape: tuple[int, ...] | None):
        pa = pyarrow("interchange")
        self.where, self._column, self._rows = where, column, rows
        shape: list[int] = []
        leaf = column.type
        while pa.types.is_fixed_size_list(leaf):
            shape.append(leaf.list_size)
            leaf = leaf.value_type
        if pa.types.is_binary(leaf) or pa.types.is_large_binary(leaf):
            raise NotAPoolError(f"{where} holds JPEG bytes; importing JPEG-encoded image observations from Minari's "
                                "arrow or parquet storage is not supported (the hdf5 storage is)")
        try:
            self.dtype = np.dtype(leaf.to_pandas_dtype())
        except (NotImplementedError, TypeError):
            raise NotAPoolError(f"{where} holds {column.type}; only numbers and booleans can be fields") from None
        flat = int(np.prod(shape)) if shape else None
        if row_shape is not None and flat is not None and int(np.prod(row_shape)) == flat:
            shape = list(row_shape)
        self.shape = (rows, *shape)
        self.ndim = len(self.shape)

    def __getitem__(self, rows: slice) -> np.ndarray:
        pa = pyarrow("interchange")
        start, stop, _ = rows.indices(self._rows)
        count = max(0, stop - start)
        part = self._column.slice(start, count)
        if isinstance(part, pa.ChunkedArray):
            part = part.combine_chunks()
        if pa.types.is_fixed_size_list(part.type):
            part = part.flatten()  # Minari flattens a row to one fixed-size list
        values = part.to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=self.dtype).reshape(count, *self.shape[1:])


class ArrowEpisode:
    """One episode directory, as an h5py episode group looks (``get``, ``[key]``)."""

    def __init__(self, path: str, hints: dict[str, tuple[int, ...]], data_format: str):
        self.path = path
        table = _read_episode_table(path, data_format)
        steps = table.num_rows - 1  # the last row of actions, rewards and flags is padding
        self._columns: dict[str, ArrowColumn] = {}
        for name in table.column_names:
            key = f"expstore_fields/{name[len(EXTRA_PREFIX):]}" if name.startswith(EXTRA_PREFIX) else name
            rows = table.num_rows if key == "observations" else steps
            if key == "infos" or name == "episode_id":
                continue
            self._columns[key] = ArrowColumn(f"{path}/{name}", table.column(name), rows, hints.get(key))
        self._extras = {key[len("expstore_fields/"):]: column for key, column in self._columns.items()
                        if key.startswith("expstore_fields/")}

    def get(self, key: str, default=None):
        if key == "expstore_fields":
            return self._extras or default
        return self._columns.get(key, default)

    def __getitem__(self, key: str):
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found


def _read_episode_table(path: str, data_format: str):
    pa = pyarrow("interchange")
    suffix = ".arrow" if data_format == "arrow" else ".parquet"
    names = sorted(name for name in os.listdir(path) if name.endswith(suffix))
    if not names:
        raise CorruptStoreError(f"{path} holds no {suffix} file; the episode's rows are missing")
    try:
        if data_format == "arrow":
            tables = [pa.ipc.open_file(pa.memory_map(os.path.join(path, name))).read_all() for name in names]
        else:
            import pyarrow.parquet as pq  # beside pyarrow: the optional dependency

            tables = [pq.read_table(os.path.join(path, name)) for name in names]
    except (OSError, pa.ArrowInvalid) as exc:
        raise CorruptStoreError(f"{path}: {names[0]} is not a readable {data_format} file ({exc})") from None
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if table.num_rows < 1:
        raise CorruptStoreError(f"{path} holds no rows; a Minari episode has at least its reset observation")
    return table


# ---------------------------------------------------------------------------------------- writing
def write_episodes(data_dir: str, order, ends: np.ndarray, progress, data_format: str, extras: list[str]) -> None:
    """Write the pool's rows as one file per episode (``order``: episode_tags.py's EpisodeOrder
    of the source; ``ends``: exclusive ends of the episodes in its rows)."""
    schema = order.source.schema
    columns = {"observations": schema["obs"], "actions": schema["action"], "rewards": schema["reward"],
               "terminations": Field((), "bool"), "truncations": Field((), "bool"),
               **{EXTRA_PREFIX + name: schema[name] for name in extras}}
    writer: EpisodeFileWriter | None = None
    for first, rows, _ in order.slices(progress=progress):
        last = first + len(rows["reward"])
        position = first
        while position < last:
            k = int(np.searchsorted(ends, position, side="right"))
            if writer is None:
                writer = EpisodeFileWriter(data_dir, k, columns, data_format)
            stop = min(last, int(ends[k]))
            lo, hi = position - first, stop - first
            part = {"observations": rows["obs"][lo:hi], "actions": rows["action"][lo:hi],
                    "rewards": rows["reward"][lo:hi], "terminations": rows["terminated"][lo:hi].astype(bool),
                    "truncations": rows["truncated"][lo:hi].astype(bool),
                    **{EXTRA_PREFIX + name: rows[name][lo:hi] for name in extras}}
            writer.write(part)
            if stop == ends[k]:
                writer.close(rows["next_obs"][hi - 1])
                writer = None
            position = stop


class EpisodeFileWriter:
    """One episode's file, written slice by slice; ``close`` adds the final observation and the
    padding row Minari's layout has."""

    def __init__(self, data_dir: str, k: int, columns: dict[str, Field], data_format: str):
        pa = pyarrow("interchange")
        self.pa, self.k, self.columns, self.data_format = pa, k, columns, data_format
        self.dir = os.path.join(data_dir, str(k))
        os.makedirs(self.dir)
        self.schema = pa.schema([pa.field(name, _flat_type(pa, field)) for name, field in columns.items()])
        path = os.path.join(self.dir, f"part-0.{data_format}")
        if data_format == "arrow":
            self._sink = pa.OSFile(path, "wb")
            self._writer = pa.ipc.new_file(self._sink, self.schema)
        else:
            import pyarrow.parquet as pq  # beside pyarrow: the optional dependency

            self._sink = None
            self._writer = pq.ParquetWriter(path, self.schema)
        self.steps = 0
        self._parts: list = []  # the episode's rows, written as one batch at its end

    def write(self, rows: dict[str, np.ndarray]) -> None:
        n = len(next(iter(rows.values())))
        arrays = [to_arrow(np.asarray(rows[name]).reshape(n, -1) if field.shape else np.asarray(rows[name]))
                  for name, field in self.columns.items()]
        self._parts.append(self.pa.Table.from_arrays(arrays, schema=self.schema))
        self.steps += n

    def close(self, final_observation: np.ndarray) -> None:
        last = {name: np.zeros((1, *field.shape), field.dtype) for name, field in self.columns.items()}
        last["observations"] = final_observation[None]
        self.write(last)
        self.steps -= 1
        # Minari's reader takes each record batch of a file for one episode: one batch per file.
        batch = self.pa.concat_tables(self._parts).combine_chunks().to_batches(max_chunksize=None)
        self._writer.write_table(self.pa.Table.from_batches(batch[:1], schema=self.schema))
        self._writer.close()
        if self._sink is not None:
            self._sink.close()
        with open(os.path.join(self.dir, "metadata.json"), "w") as fh:
            json.dump({"id": self.k, "total_steps": self.steps}, fh)


def _flat_type(pa, field: Field):
    element = pa.from_numpy_dtype(field.dtype)
    return pa.list_(element, int(np.prod(field.shape))) if field.shape else element
