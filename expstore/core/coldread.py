"""Cold reads: ask the kernel for every sampled row's pages at once, before the gather.

A gather from a memory map whose pages are not in the page cache faults them in one at a
time (queue depth 1): on a virtio disk, 256 random 7 KB rows ran at 18-20 batches/s.
Advising ``MADV_WILLNEED`` on each sampled row's pages first lets the kernel read them all
concurrently (about 15x faster there). The advice costs more than a whole hot batch (256
syscalls against about 30 us), so hot pools must not pay for it: in ``"auto"`` mode it is
switched on when gathers are slow, or from the start when the pool is larger than the memory
available, and a probe gather without it, now and then, switches it off once the pool is hot.
While it is on, the mappings are advised ``MADV_RANDOM`` so that a fault reads its page only,
not megabytes of read-around.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import time
from collections.abc import Sequence

import numpy as np

from ..errors import InvalidArgumentError

logger = logging.getLogger("expstore.coldread")  # its name before the layered layout

MODES = ("auto", "on", "off")
_PAGE_NBYTES = mmap.PAGESIZE
# A hot page gathers in well under 1 us; a cold fault costs 50-200 us on SSDs and virtio disks.
# A gather slower than 10 us per page it touches is therefore mostly waiting on the disk.
_SLOW_S_PER_PAGE = 10e-6
_SLOW_S_MIN = 1e-3  # below this, scheduler noise on a busy machine dominates
_SLOW_STREAK = 2  # consecutive slow gathers before switching on: one preempted gather is not enough
_FIRST_PROBE_EVERY = 16
_MAX_PROBE_EVERY = 1024
# ndarray.take(axis=0) copies small multi-value rows (obs of 3 floats) 3-4x faster than fancy
# indexing, which pays per-row subspace set-up; for scalar fields and large rows (frames)
# fancy indexing is as fast or faster.
_TAKE_MAX_ROW_NBYTES = 512
_DENSE_MIN_ROWS = 4096  # from this many rows, a read whose rows lie close together is advised as one range


class ColdReads:
    """Whether and how a store prefetches the pages of the rows it gathers.

    A store has one, as ``store.cold_reads``. Set ``mode`` to force the fast path:

    - ``"auto"`` (default): on when gathers are slow or the pool exceeds available memory,
      off again once a probe gather without it is fast;
    - ``"on"``: always advise ``MADV_WILLNEED`` before a gather (pools known to be cold);
    - ``"off"``: never (pools known to be hot, or to measure the plain gather).
    """

    def __init__(self, mode: str = "auto"):
        self._plan: _Plan | None = None
        self._companion: _Plan | None = None  # the views gather_more reads (derived next observations)
        self._last_prefetched = False
        self._active = False
        self._slow_streak = 0
        self._probe_every = _FIRST_PROBE_EVERY
        self._until_probe = _FIRST_PROBE_EVERY
        self.mode = mode

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise InvalidArgumentError(f"cold_reads.mode={mode!r} is not one of {', '.join(MODES)}")
        self._mode = mode
        if self._plan is not None:
            self._set_active(self._plan, mode == "on" or (mode == "auto" and self._active))

    @property
    def active(self) -> bool:
        """Whether gathers are prefetched now (in ``"auto"`` mode, probes aside)."""
        return self._active

    def gather(self, views: Sequence[np.ndarray], slots: np.ndarray) -> list[np.ndarray]:
        """``[view[slots] for view in views]``, prefetched first when the pool reads cold."""
        plan = self._plan_for(views)
        prefetched = self._last_prefetched = self._should_prefetch(plan)
        if prefetched:
            plan.prefetch(slots)
        start_s = time.perf_counter()
        columns = [view.take(slots, axis=0) if take else view[slots]
                   for view, take in zip(views, plan.use_take, strict=True)]
        if self._mode == "auto" and plan.can_prefetch:
            self._observe(time.perf_counter() - start_s, plan, len(slots), prefetched)
        return columns

    def gather_more(self, views: Sequence[np.ndarray], slots: np.ndarray) -> list[np.ndarray]:
        """More rows for the batch the last ``gather`` read (the next observations of its rows, in
        pools that derive them): prefetched whenever that gather was, so a cold batch does not
        fault its second set of rows in one page at a time. It has no switch logic of its own:
        probes and mode changes follow the batch's own gather."""
        plan = self._companion
        if plan is None or not plan.covers(views):
            plan = self._companion = _Plan(views)
        if self._last_prefetched and plan.can_prefetch:
            plan.prefetch(slots)
        return [view.take(slots, axis=0) if take else view[slots]
                for view, take in zip(views, plan.use_take, strict=True)]

    # ------------------------------------------------------------------ switch logic
    def _plan_for(self, views: Sequence[np.ndarray]) -> _Plan:
        if self._plan is not None and views is self._plan.source:
            return self._plan  # the store passes the same list every time: skip the per-view check
        if self._plan is None or not self._plan.covers(views):
            self._plan = _Plan(views)
            available = available_memory_nbytes()
            larger = available is not None and self._plan.pool_nbytes > available
            if larger:
                logger.info("pool of %d bytes exceeds the %d bytes of memory available: prefetching "
                            "sampled rows (cold reads)", self._plan.pool_nbytes, available)
            self._set_active(self._plan, self._mode == "on" or (self._mode == "auto" and larger))
        return self._plan

    def _should_prefetch(self, plan: _Plan) -> bool:
        if not self._active or not plan.can_prefetch:
            return False
        if self._mode == "on":
            return True
        self._until_probe -= 1
        return self._until_probe > 0  # at zero: a probe gather without prefetch

    def _observe(self, elapsed_s: float, plan: _Plan, n_rows: int, prefetched: bool) -> None:
        if prefetched:
            return
        slow = elapsed_s > max(_SLOW_S_MIN, n_rows * plan.pages_per_row * _SLOW_S_PER_PAGE)
        if self._active:  # this was a probe
            if slow:
                self._probe_every = min(2 * self._probe_every, _MAX_PROBE_EVERY)
                self._until_probe = self._probe_every
            else:
                self._set_active(plan, False)
            return
        self._slow_streak = self._slow_streak + 1 if slow else 0
        if self._slow_streak >= _SLOW_STREAK:
            logger.info("gathers take %.1f ms for %d rows: the pool reads cold, prefetching sampled rows",
                        elapsed_s * 1e3, n_rows)
            self._set_active(plan, True)

    def _set_active(self, plan: _Plan, active: bool) -> None:
        self._slow_streak = 0
        self._until_probe = self._probe_every
        if active != self._active:
            plan.advise_all(mmap.MADV_RANDOM if active else mmap.MADV_NORMAL)
        self._active = active


class _Plan:
    """Where each field's rows lie inside its mapping, for one list of field views."""

    def __init__(self, views: Sequence[np.ndarray]):
        self.source = views
        self.views = list(views)
        self.pool_nbytes = sum(view.nbytes for view in self.views)
        row_nbytes = [view.strides[0] if view.ndim else 0 for view in self.views]
        self.pages_per_row = sum(-(-n // _PAGE_NBYTES) for n in row_nbytes) or 1
        self.use_take = [view.ndim > 1 and n <= _TAKE_MAX_ROW_NBYTES
                         for view, n in zip(self.views, row_nbytes, strict=True)]
        by_mapping: dict[int, tuple[mmap.mmap, list[tuple[int, int]]]] = {}
        for view, nbytes in zip(self.views, row_nbytes, strict=True):
            mapping = _mapping_of(view)
            if mapping is None or nbytes == 0 or not view.flags.c_contiguous:
                continue
            entry = by_mapping.setdefault(id(mapping), (mapping, []))
            entry[1].append((view.ctypes.data - _address_of(mapping), nbytes))
        self.mappings = list(by_mapping.values())
        self.can_prefetch = bool(self.mappings) and hasattr(mmap.mmap, "madvise")

    def covers(self, views: Sequence[np.ndarray]) -> bool:
        return len(views) == len(self.views) and all(a is b for a, b in zip(views, self.views, strict=True))

    def prefetch(self, slots: np.ndarray) -> None:
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        if not slots.size:
            return
        for mapping, fields in self.mappings:
            first_page, stop_page = _page_runs(slots, fields)
            try:
                for first, stop in zip(first_page.tolist(), stop_page.tolist(), strict=True):
                    mapping.madvise(mmap.MADV_WILLNEED, first * _PAGE_NBYTES, (stop - first) * _PAGE_NBYTES)
            except (OSError, ValueError):
                return  # advice only: a closed mapping or a refusing kernel just means a plain gather

    def advise_all(self, advice: int) -> None:
        for mapping, _ in self.mappings:
            with contextlib.suppress(OSError, ValueError):  # advice only, as in prefetch
                mapping.madvise(advice)


def prefetch_byte_ranges(view: np.ndarray, starts: np.ndarray, nbytes: np.ndarray) -> None:
    """Advise ``MADV_WILLNEED`` on the byte ranges [start, start + n) of a mapped uint8 ``view``
    (the rows of a heap field, core/heap.py), merged into page runs: one request per run."""
    mapping = _mapping_of(view)
    if mapping is None or not len(starts) or not hasattr(mapping, "madvise"):
        return
    base = view.ctypes.data - _address_of(mapping)
    first, stop = _merged((base + starts) // _PAGE_NBYTES, (base + starts + nbytes + _PAGE_NBYTES - 1) // _PAGE_NBYTES)
    try:
        for page, end in zip(first.tolist(), stop.tolist(), strict=True):
            mapping.madvise(mmap.MADV_WILLNEED, page * _PAGE_NBYTES, (end - page) * _PAGE_NBYTES)
    except (OSError, ValueError):
        return  # advice only, as in _Plan.prefetch


def _page_runs(slots: np.ndarray, fields: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted page ranges [first, stop) covering the rows ``slots`` of every field.

    Exactly their pages for a sample; for a large read of rows that lie close together (a
    slice), the whole span of each field, which the kernel then reads in large requests.
    """
    if len(slots) >= _DENSE_MIN_ROWS:
        low, high = int(slots.min()), int(slots.max()) + 1
        if high - low <= 2 * len(slots):  # a slice read: one range per field, no sort of every row
            first = [(offset + low * nbytes) // _PAGE_NBYTES for offset, nbytes in fields]
            stop = [-(-(offset + high * nbytes) // _PAGE_NBYTES) for offset, nbytes in fields]
            return _merged(np.array(first, dtype=np.int64), np.array(stop, dtype=np.int64))
    starts = np.concatenate([offset + slots * nbytes for offset, nbytes in fields])
    ends = starts + np.repeat([nbytes for _, nbytes in fields], len(slots))
    return _merged(starts // _PAGE_NBYTES, (ends + _PAGE_NBYTES - 1) // _PAGE_NBYTES)


def _merged(first_pages: np.ndarray, stop_pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Page ranges [first, stop), merged where they overlap or touch, in order."""
    order = np.argsort(first_pages, kind="stable")
    first = first_pages[order]
    reach = np.maximum.accumulate(stop_pages[order])
    new_run = np.empty(len(first), dtype=bool)
    new_run[:1] = True
    np.greater(first[1:], reach[:-1], out=new_run[1:])
    run_first = np.flatnonzero(new_run)
    run_last = np.append(run_first[1:] - 1, len(first) - 1)
    return first[run_first], reach[run_last]


def _mapping_of(view: np.ndarray) -> mmap.mmap | None:
    """The memory map under a view (through the arrays and the buffer export between), if any."""
    base: object = view
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


def _address_of(mapping: mmap.mmap) -> int:
    return np.frombuffer(mapping, dtype=np.uint8, count=1).ctypes.data


def available_memory_nbytes() -> int | None:
    """Memory this process can fill with page cache: MemAvailable, capped by a memory cgroup."""
    known = [n for n in (_meminfo_available(), _cgroup_limit()) if n is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_limit() -> int | None:
    """memory.max (cgroup v2) or memory.limit_in_bytes (v1) of this process's cgroup, if set."""
    try:
        with open("/proc/self/cgroup") as cgroups:
            lines = cgroups.read().splitlines()
    except OSError:
        return None
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidates += [f"/sys/fs/cgroup{path}/memory.max", f"/sys/fs/cgroup/unified{path}/memory.max"]
        elif "memory" in controllers.split(","):
            candidates.append(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
    read = [_read_limit(candidate) for candidate in candidates]
    limits = [n for n in read if n is not None and n < 1 << 60]  # "max" or the v1 huge default: none
    return min(limits) if limits else None


def _read_limit(path: str) -> int | None:
    try:
        with open(path) as limit_file:
            text = limit_file.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None

