"""A TorchRL storage kept in an expstore pool.

    rb = TensorDictReplayBuffer(storage=PoolStorage("pool.h5", max_size=1_000_000),
                                sampler=PrioritizedSampler(1_000_000, alpha=0.7, beta=0.5))

Works with ``ReplayBuffer`` and ``TensorDictReplayBuffer`` and TorchRL's samplers (random,
prioritized, slice). The pool is created at the first write, with one field per tensor (nested
TensorDict keys joined by ``__``), and commits as data comes in and at a normal exit. TorchRL
index ``i`` is the pool row whose step id is ``i`` modulo ``max_size``; a buffer built on an
existing pool starts its writer where the pool ends, so a new process continues the ring.

Priorities live in the sampler, as with every TorchRL storage: a new buffer on an existing pool
gives every row the default priority; ``rb.dumps``/``rb.loads`` carry learned priorities over.

``codec={"pixels": "zstd", "next__pixels": "zstd"}`` stores those fields compressed row by row
(``expstore.Field(codec=)``); they are sampled as the same tensors.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

try:
    import torch
    from tensordict import TensorDict, is_tensor_collection
    from torchrl.data.replay_buffers.storages import Storage, TensorStorage
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("expstore.torchrl needs TorchRL: pip install torch==<your torch> 'expstore[torchrl]'") from exc

from ..codecs.registry import normalise_codec
from ..core.casting import to_numpy
from ..core.opening import open as open_pool
from ..core.store import Store
from ..errors import InvalidArgumentError, SchemaError, StepNotFoundError
from ..schema import Field, check_field_name

__all__ = ["PoolStorage"]

logger = logging.getLogger("expstore.torchrl")  # its name before the layered layout

_SEPARATOR = "__"
_TENSOR_FIELD = "data"


@dataclass(frozen=True)
class _OpenOptions:
    """How the storage opens its pool (kept for the reopen of a pickled copy)."""

    mode: str
    backend: str | None
    commit_every: int
    commit_interval_s: float
    fsync: bool


class PoolStorage(TensorStorage):
    """A TorchRL ``Storage`` whose rows live in a persistent expstore pool.

    It is a ``TensorStorage`` to TorchRL (tensors in, tensors out, no collation), but holds no
    tensors itself: every read is a gather from the pool.

    Args:
        path: the pool (``.h5`` or ``.zarr``); reopened if it exists, else created at the first
            write from the data's keys, shapes and dtypes.
        max_size: rows kept; required to create, checked against the pool when reopening.
        mode: ``"a"`` to write (one writer per pool), ``"r"`` to sample a pool that another
            process writes.
        backend: ``"hdf5"`` or ``"zarr"``; by default from the suffix.
        commit_every: commit every this many rows...
        commit_interval_s: ...or when this many seconds passed.
        fsync: whether commits are durable against power loss.
        codec: field name (nested keys joined by ``__``, ``"data"`` for plain tensors) -> codec
            (``"zstd"``, ``"zstd:N"``, ``"lz4"``, ``None``/``"raw"``), as ``expstore.Field(codec=)``:
            those fields are stored compressed row by row. Applied when the first write creates
            the pool; an existing pool must have been made with the same codecs (``expstore
            convert --codec`` changes them).
    """

    def __init__(self, path: str | os.PathLike, max_size: int | None = None, *, mode: str = "a",
                 backend: str | None = None, commit_every: int = 10_000, commit_interval_s: float = 5.0,
                 fsync: bool = True, codec: dict[str, str | None] | None = None):
        if mode not in ("a", "r"):
            raise InvalidArgumentError(f"mode={mode!r}: a PoolStorage opens its pool with 'a' (write) or 'r' (read)")
        self._codecs = _check_codecs(codec)
        self.path = os.path.abspath(os.fspath(path))
        self._options = _OpenOptions(mode, backend, commit_every, commit_interval_s, fsync)
        self._pool: Store | None = None
        self._layout: dict[str, Any] = {}  # kind of data and field name -> key, from the pool's attrs
        self.device = torch.device("cpu")
        if os.path.exists(self.path) or mode == "r":
            pool = self._open(capacity=None)
            _check_pool_codecs(pool, self._codecs)
            if max_size is not None and max_size != pool.capacity:
                raise InvalidArgumentError(f"{self.path} holds {pool.capacity} rows, not max_size={max_size}; "
                                           "omit max_size to reopen it, or use another path")
            max_size = pool.capacity
        elif max_size is None:
            raise InvalidArgumentError(f"no pool at {self.path}; give max_size to create one")
        Storage.__init__(self, max_size)
        self.ndim = 1
        self.initialized = True  # TensorStorage's flag; PoolStorage needs no lazy init
        self._storage = None  # TensorStorage's in-memory tensors: none here, the pool has the rows
        self._last_cursor = None
        if self._pool is not None and len(self._pool):
            self._set_last_cursor((self._pool.next_step_id - 1) % self.max_size)

    # ------------------------------------------------------------------ opening
    def _open(self, capacity: int | None, schema: dict | None = None, attrs: dict | None = None) -> Store:
        options = self._options
        pool = open_pool(self.path, options.mode, capacity=capacity, schema=schema, attrs=attrs,
                         backend=options.backend, commit_every=options.commit_every,
                         commit_interval_s=options.commit_interval_s, fsync=options.fsync)
        layout = pool.attrs.get("torchrl")
        if layout is None:  # a pool written by other means: its fields, as a TensorDict
            layout = {"kind": "tensordict", "keys": {name: [name] for name in pool.schema or ()}}
        self._pool, self._layout = pool, layout
        return pool

    def _create(self, columns: dict[str, np.ndarray], kind: str, keys: dict[str, list[str]], batched: bool
                ) -> Store:
        unknown = sorted(set(self._codecs) - set(columns))
        if unknown:
            raise SchemaError(f"codec given for {unknown}, which the data does not have; its fields are "
                              f"{', '.join(sorted(columns))}")
        schema = {name: Field(values.shape[1:] if batched else values.shape, values.dtype,
                              codec=self._codecs.get(name))
                  for name, values in columns.items()}
        return self._open(self.max_size, schema, attrs={"torchrl": {"kind": kind, "keys": keys}})

    def _opened(self) -> Store:
        """The pool, once the first write created it or the storage opened an existing one."""
        if self._pool is None:
            raise StepNotFoundError(f"{self.path} is empty; extend the buffer before sampling")
        return self._pool

    @property
    def pool(self):
        """The :class:`expstore.Store` holding the rows (None before the first write)."""
        return self._pool

    # ------------------------------------------------------------------ writer sync
    @property
    def checkpointer(self):
        return self._checkpointer

    @checkpointer.setter
    def checkpointer(self, value) -> None:
        # TorchRL sets the checkpointer once the buffer's writer exists: the moment to start
        # that writer where the pool ends instead of at index 0.
        Storage.checkpointer.fset(self, value)
        self._sync_writers()

    def _sync_writers(self) -> None:
        head = 0 if self._pool is None else self._pool.next_step_id
        for entity in getattr(self, "_attached_entities_list", ()):
            writer = getattr(entity, "_writer", None)
            if writer is not None and hasattr(writer, "_cursor"):
                writer._cursor = head % self.max_size
                writer._write_count = min(head, 2**31 - 1)

    # ------------------------------------------------------------------ TensorStorage's sizes
    @property
    def _len(self) -> int:
        return len(self)

    @_len.setter
    def _len(self, value: int) -> None:
        if value != len(self):
            raise InvalidArgumentError(f"{self.path}: a pool's length follows its rows; it cannot be set to {value}")

    @property
    def _total_shape(self) -> torch.Size:
        return torch.Size([self.max_size])

    def _init(self, *args, **kwargs) -> None:
        return None

    # ------------------------------------------------------------------ Storage API
    def set(self, cursor: Any, data: Any, *, set_cursor: bool = True) -> None:
        """Append ``data`` at the writer's cursor, which must be where the pool ends."""
        positions = _positions(cursor, self.max_size)
        batched = not isinstance(cursor, (int, np.integer))
        head = 0 if self._pool is None else self._pool.next_step_id
        expected = (head + np.arange(len(positions))) % self.max_size
        if not np.array_equal(positions, expected):
            raise InvalidArgumentError(
                f"{self.path}: a pool is append-only: TorchRL wrote at indices {positions[:4].tolist()}..., the pool "
                f"continues at {int(expected[0]) if len(expected) else head % self.max_size}. Use the buffer's own "
                "writer (RoundRobinWriter) and do not assign to storage indices")
        kind, keys, columns = _flatten(data)
        if self._pool is None:
            pool = self._create(columns, kind, keys, batched)
        elif kind != self._layout["kind"]:
            raise SchemaError(f"{self.path} stores {self._layout['kind']} data, got {kind}; write the same kind")
        else:
            pool = self._pool
        if batched:
            pool.extend(columns)
        else:
            pool.append(columns)
        if set_cursor:
            self._set_last_cursor(cursor)
        self._bump_mutation_revision()

    def get(self, index: Any) -> Any:
        """Rows at TorchRL indices (int, slice, list, range, array or tensor)."""
        pool = self._opened()
        single = isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.ndim == 0)
        if isinstance(index, slice):
            index = range(*index.indices(len(self)))
        positions = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64).reshape(-1)
        rows = pool.read(self._step_ids(positions))
        return self._unflatten(rows, single)

    def _step_ids(self, positions: np.ndarray) -> np.ndarray:
        """The newest step id in the pool that sits at each TorchRL index."""
        count = len(self)
        if ((positions < 0) | (positions >= count)).any():
            raise StepNotFoundError(f"index {int(positions[(positions < 0) | (positions >= count)][0])} is out of "
                                    f"range for a storage of {count} rows")
        last = self._opened().next_step_id - 1
        return last - (last - positions) % self.max_size

    def _unflatten(self, rows: dict[str, np.ndarray], single: bool) -> Any:
        tensors = {name: torch.as_tensor(rows[name][0] if single else rows[name]) for name in self._layout["keys"]}
        kind = self._layout["kind"]
        if kind == "tensor":
            return tensors[_TENSOR_FIELD]
        nested: dict = {}
        for name, key in self._layout["keys"].items():
            node = nested
            for part in key[:-1]:
                node = node.setdefault(part, {})
            node[key[-1]] = tensors[name]
        if kind == "dict":
            return nested
        batch_size = [] if single else [len(rows["step_id"])]
        return TensorDict(nested, batch_size=batch_size)

    def __len__(self) -> int:
        return 0 if self._pool is None else len(self._pool)

    def contains(self, item: Any) -> Any:
        if isinstance(item, (int, np.integer)):
            return 0 <= int(item) < len(self)
        item = torch.as_tensor(item)
        return (item >= 0) & (item < len(self))

    def _empty(self) -> None:
        raise InvalidArgumentError(f"{self.path}: a pool is not emptied in place; delete it or use another path")

    # ------------------------------------------------------------------ persistence
    def flush(self) -> None:
        """Commit every written row now."""
        if self._pool is not None and self._pool.writable:
            self._pool.flush()

    def close(self) -> None:
        """Commit and release the pool."""
        if self._pool is not None:
            self._pool.close()

    def state_dict(self) -> dict[str, Any]:
        """The data stays in the pool: the state is where it is."""
        self.flush()
        return {"path": self.path, "max_size": self.max_size}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if os.path.abspath(state_dict.get("path", "")) != self.path:
            raise InvalidArgumentError(
                f"this state belongs to the pool at {state_dict.get('path')!r}, not {self.path}; "
                "build the storage on that path"
            )

    def dumps(self, path: str | os.PathLike) -> None:
        """``rb.dumps``: commit the pool and record where it is (the rows are not copied)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "pool.json").write_text(json.dumps(self.state_dict()))

    def loads(self, path: str | os.PathLike) -> None:
        self.load_state_dict(json.loads((Path(path) / "pool.json").read_text()))
        self._bump_mutation_revision()

    def __getstate__(self) -> dict:
        """Pickled copies (e.g. for worker processes) reopen the pool read-only."""
        self.flush()
        state = Storage.__getstate__(self)
        state["_pool"] = None
        state["_options"] = replace(self._options, mode="r")
        return state

    def __setstate__(self, state: dict) -> None:
        Storage.__setstate__(self, state)
        if os.path.exists(self.path):
            self._open(capacity=None)

    def __repr__(self) -> str:
        return f"PoolStorage({self.path!r}, max_size={self.max_size}, len={len(self)})"


def _check_codecs(codec: Any) -> dict[str, str | None]:
    """The ``codec`` argument with canonical codec names; a bad one fails before any pool exists."""
    if codec is None:
        return {}
    if not isinstance(codec, dict):
        raise InvalidArgumentError(f"codec={codec!r}: give a mapping from field names to codec names, such as "
                                   "{'pixels': 'zstd'}")
    return {str(name): normalise_codec(value) for name, value in codec.items()}


def _check_pool_codecs(pool: Store, codecs: dict[str, str | None]) -> None:
    """An existing pool keeps the codecs it was made with: a different request is an error, not ignored."""
    schema = pool.schema
    if schema is None:  # created, never written: the first write applies the codecs
        return
    unknown = sorted(set(codecs) - set(schema))
    if unknown:
        raise InvalidArgumentError(f"{pool.path}: codec given for {unknown}, which the pool does not have; its "
                                   f"fields are {', '.join(name for name in schema if name != 'step_id')}")
    for name, wanted in codecs.items():
        if schema[name].codec != wanted:
            raise InvalidArgumentError(
                f"{pool.path}: field {name!r} is stored with codec {schema[name].codec or 'raw'}, not "
                f"{wanted or 'raw'}; omit codec= to use the pool as it is, or change it with "
                f"expstore convert --codec {name}={wanted or 'raw'}")


def _positions(cursor: Any, max_size: int) -> np.ndarray:
    if isinstance(cursor, torch.Tensor):
        cursor = cursor.cpu().numpy()
    elif isinstance(cursor, slice):
        cursor = range(*cursor.indices(max_size))
    return np.asarray(cursor, dtype=np.int64).reshape(-1)


def _flatten(data: Any) -> tuple[str, dict[str, list[str]], dict[str, Any]]:
    """(kind, field name -> key path, field name -> values) of a tensor, TensorDict or dict."""
    if isinstance(data, torch.Tensor):
        return "tensor", {_TENSOR_FIELD: [_TENSOR_FIELD]}, {_TENSOR_FIELD: to_numpy(_TENSOR_FIELD, data)}
    if is_tensor_collection(data):
        leaves = {tuple(key) if isinstance(key, tuple) else (key,): data.get(key)
                  for key in data.keys(include_nested=True, leaves_only=True)}
        kind = "tensordict"
    elif isinstance(data, dict):
        leaves, kind = dict(_dict_leaves(data, ())), "dict"
    else:
        raise SchemaError(f"a PoolStorage stores tensors, TensorDicts or dicts of tensors, not {type(data).__name__}")
    keys, columns = {}, {}
    for key, value in leaves.items():
        name = _field_name(key)
        keys[name], columns[name] = list(key), to_numpy(name, value)
    return kind, keys, columns


def _dict_leaves(data: dict, prefix: tuple):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _dict_leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _field_name(key: tuple) -> str:
    name = _SEPARATOR.join(str(part) for part in key)
    if any(_SEPARATOR in str(part) or str(part).startswith("_") for part in key):
        raise SchemaError(
            f"key {key!r} cannot name a pool field: keys may not contain '{_SEPARATOR}' or start with '_'"
        )
    try:
        return check_field_name(name)
    except SchemaError:
        raise SchemaError(f"key {key!r} cannot name a pool field ({name!r}); use keys that are Python "
                          "identifiers") from None
