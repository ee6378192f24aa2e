"""Feed PyTorch training from a pool: tensors, a background prefetcher, a DataLoader dataset.

- :func:`to_tensors` wraps a sampled batch with ``torch.from_numpy`` (no copy), and optionally
  pins it and moves it to a device with ``non_blocking=True``.
- :class:`Prefetcher` runs a sampling function in a background thread and keeps a bounded
  queue of ready batches, so that the gather from disk overlaps the training step.
- :class:`PoolDataset` serves rows to ``torch.utils.data.DataLoader`` workers; every worker
  process opens its own read-only handle lazily, so no file handle ever crosses a fork.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Self

import numpy as np

try:
    import torch
    from torch.utils.data import DataLoader, Dataset
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("expstore.torch_feed needs PyTorch: pip install torch==2.13.0 "
                      "(or pip install 'expstore[train]' after installing torch)") from exc

from ..core.opening import open as open_pool
from ..core.ragged import RAGGED_MODES, PadValue
from ..core.stacking import frame_stack_of
from ..errors import ClosedStoreError, InvalidArgumentError

logger = logging.getLogger("expstore.torch_feed")  # its name before the layered layout

Batch = dict[str, "torch.Tensor"]
_POLL_S = 0.1  # how often a blocked producer or consumer looks at the stop flag


def to_tensors(batch: Mapping[str, Any], device: str | torch.device | None = None,
               pin_memory: bool = False, nested: bool = False) -> Batch:
    """A batch of numpy arrays as torch tensors sharing their memory.

    A ragged field comes as the padded tensor and its ``<name>_length`` tensor beside it (the
    default ``ragged="pad"``), or, sampled with ``ragged="list"``, as a list of tensors (sequence
    windows: a list of lists of tensors); with ``nested=True`` such a list becomes one nested
    tensor (``torch.nested``, jagged layout, the rows' own lengths along dimension 1), which
    windows' lists of lists are refused as.

    Args:
        batch: field name -> array, as ``Store.sample`` returns.
        device: where the tensors should live; ``None`` keeps them on the CPU (no copy at all).
        pin_memory: pin the CPU tensors first, so that the copy to a CUDA device runs
            asynchronously (``non_blocking=True``). Ignored without CUDA.
        nested: ragged fields sampled as lists come as nested tensors.
    """
    target = torch.device(device) if device is not None else None
    pin = pin_memory and torch.cuda.is_available()
    tensors: dict[str, Any] = {}
    for name, values in batch.items():
        if isinstance(values, list):  # a ragged field sampled with ragged="list"
            rows = [_rows(row, target, pin) for row in values]
            tensors[name] = _nested(name, rows) if nested else rows
        else:
            tensors[name] = _tensor(values, target, pin)
    return tensors


def _rows(values: np.ndarray | list, target: torch.device | None, pin: bool) -> torch.Tensor | list:
    """One row of a listed ragged field: a tensor, or for a sequence window a list of them."""
    if isinstance(values, list):
        return [_rows(row, target, pin) for row in values]
    return _tensor(values, target, pin)


def _nested(name: str, rows: list) -> torch.Tensor:
    if not rows:  # torch cannot make a nested tensor of no rows
        raise InvalidArgumentError(f"field {name!r}: a batch of no rows has no nested tensor; sample at least one row")
    # a window of sequences: lists of lists are not one jagged dimension
    if any(isinstance(row, list) or row.dim() == 0 for row in rows):
        raise InvalidArgumentError(f"field {name!r}: nested tensors take one ragged dimension; sequence windows "
                                   "come as lists of lists, use nested=False or ragged='pad'")
    return torch.nested.nested_tensor(rows, layout=torch.jagged)


def _tensor(values: np.ndarray, target: torch.device | None, pin: bool) -> torch.Tensor:
    # from_numpy refuses non-writable arrays and bool needs no conversion: both are rare.
    tensor = torch.from_numpy(values if values.flags.writeable else values.copy())
    if pin:
        tensor = tensor.pin_memory()
    if target is not None and tensor.device != target:
        tensor = tensor.to(target, non_blocking=pin)
    return tensor


class _Failure:
    """What the producer thread puts in the queue when sampling raised."""

    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """Keep up to ``depth`` batches ready in a background thread.

    Example::

        with Prefetcher(lambda: pool.sample(256, rng=rng), depth=2) as batches:
            for _ in range(updates):
                agent.update(next(batches))

    An error raised by ``sample_fn`` is re-raised by the next ``next()`` in the caller's
    thread. ``close()`` (or leaving the ``with`` block) stops the thread and waits for it.

    Args:
        sample_fn: returns one batch (mapping of numpy arrays) per call; runs in the thread.
        depth: batches kept ready (bounded queue size), at least 1.
        device: device for the tensors (see :func:`to_tensors`).
        pin_memory: pin before moving to a CUDA device.
    """

    def __init__(self, sample_fn: Callable[[], Mapping[str, np.ndarray]], depth: int = 2,
                 device: str | torch.device | None = None, pin_memory: bool = False):
        if depth < 1:
            raise InvalidArgumentError(f"depth must be at least 1, got {depth}")
        self._sample_fn = sample_fn
        self._device = device
        self._pin_memory = pin_memory
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._produce, name="expstore-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        while not self._stop.is_set():
            try:
                item: Any = to_tensors(self._sample_fn(), self._device, self._pin_memory)
            except BaseException as exc:  # handed to the consumer, not swallowed
                item = _Failure(exc)
            if not self._put(item) or isinstance(item, _Failure):
                return

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._closed:
            raise ClosedStoreError("this Prefetcher was closed; create a new one")
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the prefetch thread stopped without a batch or an error") from None
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the thread, drop the ready batches, and wait for the thread to end."""
        self._closed = True
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self._stop.set()


class PoolDataset(Dataset):
    """The rows of a pool, by logical index, for ``torch.utils.data.DataLoader``.

    The pool is opened read-only on first use in each process (and reopened after a fork), so
    ``DataLoader(num_workers>0)`` workers each hold their own handle. With a batch sampler the
    DataLoader calls :meth:`__getitems__`, which gathers the whole batch in one vectorised read;
    use :func:`pool_loader`, which sets the matching ``collate_fn``.

    Index ``i`` is the ``i``-th oldest transition present when the dataset was created; the
    pool should not evict rows while the dataset is in use (train offline from a finished pool,
    or keep the writer's ring from wrapping).

    Args:
        path: the pool.
        fields: the fields to return (default: all), ``step_id`` always included.
        frame_stack, stack_axis, stack_padding: return the observations as frame stacks
            rebuilt from one frame per row (see ``Store.read``). A row whose stack needs rows the
            ring evicted raises.
        ragged, pad_value: how ragged fields come (as in ``Store.sample``): padded tensors plus
            ``<name>_length`` (``"pad"``, padded with ``pad_value``), lists of tensors
            (``"list"``), or one nested tensor each (``"nested"``, ``torch.nested`` jagged).
    """

    def __init__(self, path: str | os.PathLike, fields: Sequence[str] | None = None, *,
                 frame_stack: int | None = None, stack_axis: int = 0, stack_padding: str = "reset",
                 ragged: str = "pad", pad_value: PadValue = 0):
        self.path = os.fspath(path)
        self.stacking = {"frame_stack": frame_stack, "stack_axis": stack_axis, "stack_padding": stack_padding}
        if ragged not in (*RAGGED_MODES, "nested"):
            raise InvalidArgumentError(f"ragged={ragged!r} must be 'pad', 'list' or 'nested' (one nested tensor "
                                       "per ragged field)")
        self.nested = ragged == "nested"
        self.ragged = "list" if self.nested else ragged
        self.pad_value = pad_value
        with open_pool(self.path, "r") as pool:
            self._first_step_id = pool.first_step_id
            self._length = len(pool)
            names = list(pool.schema.keys()) if pool.schema is not None else []
            if frame_stack is not None:  # a bad request fails here, not in a worker
                frame_stack_of(pool.schema, self.path, frame_stack, stack_axis, stack_padding)
            pool.read([], ragged=self.ragged, pad_value=pad_value)  # likewise a bad ragged mode or pad value
        unknown = sorted(set(fields or ()) - set(names))
        if unknown:
            raise InvalidArgumentError(f"fields {unknown} are not in {self.path}, which stores {names}")
        self.fields = list(fields) if fields is not None else names
        self._every_field = fields is None
        self._pool = None
        self._pool_pid: int | None = None

    def __len__(self) -> int:
        return self._length

    def _handle(self):
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = open_pool(self.path, "r")  # a forked child opens its own handle
            self._pool_pid = os.getpid()
        return self._pool

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        logical = np.asarray(indices, dtype=np.int64)
        if logical.size and (logical.min() < 0 or logical.max() >= self._length):
            raise InvalidArgumentError(f"indices must lie in 0..{self._length - 1}, got "
                                       f"{int(logical.min())}..{int(logical.max())}")
        rows = self._handle().read(self._first_step_id + logical, **self.stacking, ragged=self.ragged,
                                   pad_value=self.pad_value)
        if self._every_field:  # derived next_obs stacks too, which no schema field names
            return to_tensors(rows, nested=self.nested)
        lengths = [f"{name}_length" for name in self.fields if f"{name}_length" in rows]  # ragged fields'
        return to_tensors({name: rows[name] for name in (*self.fields, *lengths, "step_id")}, nested=self.nested)

    def __getitem__(self, index: int) -> Batch:
        return {name: values[0] for name, values in self.__getitems__([index]).items()}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pool"], state["_pool_pid"] = None, None  # handles never travel to other processes
        return state

    @staticmethod
    def collate(batch: Batch) -> Batch:
        """``collate_fn`` for batches that :meth:`__getitems__` already gathered."""
        return batch


def pool_loader(path: str | os.PathLike, batch_size: int, *, shuffle: bool = True, num_workers: int = 2,
                fields: Sequence[str] | None = None, seed: int | None = None, frame_stack: int | None = None,
                stack_axis: int = 0, stack_padding: str = "reset", ragged: str = "pad", pad_value: PadValue = 0,
                **loader_kwargs) -> DataLoader:
    """A ``DataLoader`` over a pool: one vectorised read per batch, in worker processes.

    Args:
        path: the pool (opened read-only in each worker).
        batch_size: rows per batch.
        shuffle: epoch order without replacement (True) or oldest first.
        num_workers: worker processes (0 reads in the calling process).
        fields: fields to load (default: all).
        seed: seeds the shuffle order.
        frame_stack, stack_axis, stack_padding: observations as frame stacks (see ``PoolDataset``).
        ragged, pad_value: how ragged fields come (see ``PoolDataset``).
        **loader_kwargs: passed to ``DataLoader`` (``pin_memory``, ``prefetch_factor``, ...).
    """
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    dataset = PoolDataset(path, fields, frame_stack=frame_stack, stack_axis=stack_axis, stack_padding=stack_padding,
                          ragged=ragged, pad_value=pad_value)
    # torch annotates collate_fn as taking a list of items; with __getitems__ it is handed the
    # already gathered batch instead, which its stubs do not describe.
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=PoolDataset.collate,  # type: ignore[arg-type]
                      generator=generator, persistent_workers=num_workers > 0, **loader_kwargs)
