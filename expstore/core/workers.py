"""The process's worker threads for batch work that releases the GIL: codec calls and the large
numpy copies of frame stacks.

One small pool per process, made on first use: a forked child inherits the executor but not its
threads, so it makes its own. The calling thread always takes a part of the work itself rather
than wait, so a pool of ``WORKERS`` threads serves ``WORKERS`` parts at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

WORKERS = max(1, min(8, os.cpu_count() or 1))

_pool_state: dict[str, Any] = {"pid": None, "executor": None}


def worker_pool() -> ThreadPoolExecutor:
    if _pool_state["pid"] != os.getpid():
        _pool_state.update(pid=os.getpid(), executor=ThreadPoolExecutor(WORKERS, "expstore-worker"))
    return _pool_state["executor"]


def in_slices(work: Callable[[slice], None], count: int, parallel: bool = True) -> None:
    """``work(part)`` over contiguous slices that cover ``range(count)``: on the worker threads
    too when ``parallel`` (the work must release the GIL to gain), else in one call."""
    if not parallel or WORKERS == 1 or count < 2:
        work(slice(0, count))
        return
    bounds = [count * i // WORKERS for i in range(WORKERS + 1)]
    parts = [slice(low, high) for low, high in zip(bounds, bounds[1:], strict=False) if high > low]
    try:
        futures = [worker_pool().submit(work, part) for part in parts[1:]]
    except RuntimeError:  # interpreter shutdown: on this thread
        futures = []
        parts = [slice(0, count)]
    work(parts[0])
    for future in futures:
        future.result()


def in_parts(work: Callable[[list], Any], items: Sequence, parallel: bool = True, min_items: int = 2) -> list:
    """``work(part)`` (a list, returning a list) over parts of ``items``, concatenated in order; on
    the worker threads too when ``parallel`` and there are at least ``min_items``."""
    items = list(items)
    if not parallel or len(items) < min_items or WORKERS == 1:
        return list(work(items))
    parts = [[items[i] for i in part] for part in np.array_split(np.arange(len(items)), WORKERS)]
    try:
        futures = [worker_pool().submit(work, part) for part in parts[1:]]
    except RuntimeError:  # interpreter shutdown: on this thread
        return list(work(items))
    first = list(work(parts[0]))  # the calling thread takes a part too, rather than wait
    return first + [result for future in futures for result in future.result()]
