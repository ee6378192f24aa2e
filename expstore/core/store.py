"""Store: append, extend, read and sample transitions of one pool; its episodes and priorities.

A writer appends rows in place through the memory maps and publishes them with a commit
(see commit.py); it sees its own rows at once, committed or not. A reader sees the last
commit, polls for newer ones before every read, and after each gather re-checks the window
so that a row overwritten by the writer during the gather is never returned.

The Store composes its helpers rather than inheriting them: the episode book and priorities
(bookkeeping.py), the batch builders (batches.py) and the sampling strategies (sampling/),
which draw step ids from a read-only view of the window. The Store gathers and runs the one
redraw loop (``_draw_usable``) for rows a writer overwrote or that cannot be used.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from ..backends import Backend, Layout
from ..errors import (
    ClosedStoreError,
    CorruptStoreError,
    EmptyStoreError,
    ExpstoreError,
    InvalidArgumentError,
    ReadOnlyError,
    SchemaError,
    StepNotFoundError,
)
from ..sampling import draws
from ..sampling.age_window import VERSION_FIELD, AgeWindow
from ..sampling.base import Sampler, WindowView
from ..sampling.composed import PrioritizedRecency
from ..sampling.prioritized import Prioritized
from ..sampling.uniform import Uniform
from ..schema import Field, Schema
from . import checksums, commit, lock
from .batches import CHAIN, Batches
from .bookkeeping import Bookkeeping, EpisodeState, check_env_ids
from .casting import as_rows, to_numpy
from .coldread import ColdReads, available_memory_nbytes
from .commit_pipeline import CommitPipeline
from .episodes import EpisodeBook, EpisodeTable
from .heap import BOUND_KEY as HEAP_BOUND_KEY
from .heap import EncodedRows
from .heaps import Heaps
from .hooks import call_hook
from .idle import IdleCommitter
from .mapping import MappedPool
from .ragged import PadValue, check_ragged, finish, merge_rows
from .ring import Ring
from .stacking import FrameStacker, frame_stack_of, refuse_incomplete
from .staging import Stage, fast_append_for, stage_rows

logger = logging.getLogger("expstore.store")  # its name before the layered layout

_TORN_RETRIES = 3
# (pool path, seq) of the torn-slot warnings already logged: a command that opens a pool twice
# (convert, report, export, tail) warns once, not once per open.
_WARNED_TORN: set[tuple[str, int]] = set()
_REDRAWS = 100
_CANDIDATES = 1024  # rows drawn per redraw round at least, so that even rare usable rows are found
_HEAP_CANDIDATES = 64
_UNIFORM = Uniform()
_open_writers: weakref.WeakSet = weakref.WeakSet()


class CommitPolicy:
    """When a writer commits on its own: every ``every_rows`` rows or ``interval_s`` seconds."""

    def __init__(self, every_rows: int, interval_s: float, fsync: bool):
        self.every_rows = every_rows
        self.interval_s = interval_s
        self.fsync = fsync


class RowSpec(NamedTuple):
    """What append and extend check a field's values against, and where they go. Append's
    per-row loop reads plain-tuple copies (``Store._row_loop``): the interpreter unpacks an exact
    tuple at C speed, a tuple subclass through its iterator (measured: about 12% of an append)."""

    name: str
    field: Field
    dtype: np.dtype
    shape: tuple[int, ...]
    float_limit: float | None  # the dtype's largest finite value for float fields: a Python float fits
    view: np.ndarray  # the field's memory map, indexed by slot


class Store:
    """One open pool. Create it with :func:`expstore.open`, not directly."""

    def __init__(self, path: str, backend: Backend, writer_lock: lock.WriterLock | None,
                 policy: CommitPolicy, layout: Layout | None = None, create=None):
        self.path = path
        self._backend = backend
        self._lock = writer_lock
        self._policy = policy
        self._create = create  # builds the container on the first write when no schema was given
        self._maps: MappedPool | None = None
        self._closed = False
        self._failure: BaseException | None = None
        self.cold_reads = ColdReads()  # prefetch of sampled rows' pages when the pool reads cold
        self._append_ready = False  # set once the checks append's hot path skips have passed
        self._owner_pid = os.getpid()
        self._write_lock = threading.Lock()
        self._finalizing = False  # closing from __del__: no thread pools (see files.in_parallel)
        self._idle_committer: IdleCommitter | None = None
        self._layout: Layout | None = None
        # The newest commit record this handle read (a reader) or made (a writer: it may still be on
        # its way to the disk, see _durable); the next commit is computed from it.
        self._committed = commit.CommitRecord(1, 0, 0, 0.0)
        self._pipeline: CommitPipeline | None = None  # a writer's records on their way to the disk
        self._pipelined = False  # whether its automatic commits are made durable in the background
        self._head = 0
        self._keeping: Bookkeeping | None = None  # episode book and priorities, in pools created with them
        self._derived: tuple[str, ...] = ()  # the observations whose next_ the pool derives
        self._batches: Batches | None = None
        self._heaps: Heaps | None = None  # the ragged and compressed fields' byte heaps (heap.py)
        self._ragged: dict[str, np.dtype] = {}  # ragged columns of a batch, derived next_<obs> too: their dtypes
        self._heaps_exceed_memory: bool | None = None  # decided at the first gather (_heap_prefetch)
        self._stage: Stage | None = None  # a writer's staged appends (staging.py)
        # Rows of one-env extends whose episode bookkeeping waits (first step, rows): see _defer_bookkeeping.
        self._deferred: tuple[int, int] | None = None
        if layout is not None:
            self._attach(layout)
        if writer_lock is not None:
            _open_writers.add(self)

    # ------------------------------------------------------------------ set-up
    def _attach(self, layout: Layout) -> None:
        try:
            self._attach_unguarded(layout)
        except BaseException:
            self._discard()
            raise

    def _discard(self) -> None:
        """Undo a set-up that failed part-way: such a store must not commit or close what it never
        opened, now or from its finaliser; the lock goes back at once."""
        self._closed = True
        self._disarm_append()
        if self._idle_committer is not None:
            self._idle_committer.stop()
        self._release_views()
        if self._maps is not None:
            self._maps.close()
        if self._lock is not None:
            self._lock.release(remove=not os.path.exists(self.path))

    def _attach_unguarded(self, layout: Layout) -> None:
        if self._lock is not None:
            self._lock.hold_pool_file(layout.commit.path)  # a new pool's too, before any write (lock.py)
        self._layout = layout
        self._ring = Ring(layout.meta["capacity"], layout.meta["slots"])
        self._maps = MappedPool(layout, writable=self.writable)
        self._fields = list(layout.schema.items())
        self._views = [self._maps.views[name] for name, _ in self._fields]
        self._names = dict.fromkeys(layout.schema).keys()  # a dict view: C-speed key comparison in append
        self._row_specs = [  # the fields stored in place; heap fields are written by self._heaps
            RowSpec(name, field, field.dtype, field.shape,
                    float(np.finfo(field.dtype).max) if field.dtype.kind == "f" else None, self._maps.views[name])
            for name, field in self._fields if not field.uses_heap
        ]
        self._row_loop: list[tuple[Any, ...]] = [tuple(spec) for spec in self._row_specs]
        self._committed = self._read_commit(warn=True)
        if self._committed.head - self._committed.tail > self._ring.capacity:
            # Checked before the bookkeeping set-up, which a writer may rewrite from this window.
            raise CorruptStoreError(f"{self.path}: the commit record holds more rows than the capacity; "
                                    "run `expstore verify` on it")
        self._seen_seq = self._committed.seq
        self._head = self._committed.head
        self._slots = self._ring.slots
        views = self._maps.views
        self._heaps = Heaps.of(views, layout.schema, self._slots, bool(layout.meta["checksums"]),
                               self._committed.payload)
        self._keeping = Bookkeeping.of(views, layout.schema, self._slots, self._ring.capacity, self._committed,
                                       self.writable, bool(layout.meta["checksums"]))
        self._derived = () if self._keeping is None else self._keeping.derived
        self._ragged = {name: field.dtype for name, field in self._fields if field.ragged} | {
            f"next_{name}": layout.schema[name].dtype for name in self._derived if layout.schema[name].ragged}
        self._batches = Batches(views, layout.schema, self._slots, self._keeping, self._gather,
                                lambda: self._committed, self.path, self._read_heap_fields)
        if self._keeping is not None:
            # Through self, not bound to today's instance: reopening replaces cold_reads.
            self._keeping.gather_more = lambda views, slots: self.cold_reads.gather_more(views, slots)
        if self._keeping is not None and self._heaps is not None:
            self._keeping.heap_rows = self._read_heap_fields
        self._schedule_commit()
        if self.writable:
            self._pipeline = CommitPipeline(self._maps, self._committed, _stop_writing_on_failure(weakref.ref(self)),
                                            self.path)
            # Heap fields and derived next_obs keep their commits in place: their byte heaps and the
            # final-observation table protect the bytes of the newest commit record (HeapField.committed
            # and .protected, FinalTable), not those of an older one still on disk while it is pending.
            # Without fsync a commit costs no sync, so there is nothing to move off the appending thread.
            self._pipelined = self._policy.fsync and self._heaps is None and not self._derived
            self._stage = self._new_stage()
            self._idle_committer = IdleCommitter(self, self._policy.interval_s)

    def _read_commit(self, warn: bool = False) -> commit.CommitRecord:
        for attempt in range(_TORN_RETRIES):
            try:
                record, torn = commit.newest(self._mapped()[0].commit_slots())
            except CorruptStoreError as exc:
                if attempt + 1 == _TORN_RETRIES:
                    raise CorruptStoreError(f"{self.path}: {exc}") from None
                torn = True
            if not torn:
                return record
            time.sleep(0.001)  # a writer in another process may be mid-commit: look again
        warned = (os.path.realpath(self.path), record.seq)
        if warn and warned not in _WARNED_TORN:
            _WARNED_TORN.add(warned)
            logger.warning("%s: one commit slot is damaged (a commit torn by a crash?); using the "
                           "older valid one, committed at seq %d", self.path, record.seq)
        return record

    def _mapped(self) -> tuple[MappedPool, Layout]:
        """The memory maps and layout, which every path that reads or writes rows has."""
        if self._maps is None or self._layout is None:
            self._check_open()
            raise EmptyStoreError(f"{self.path} has no schema yet; append a transition first")
        return self._maps, self._layout

    # ------------------------------------------------------------------ properties
    @property
    def writable(self) -> bool:
        return self._lock is not None

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has run; a closed pool is opened again with ``expstore.open``."""
        return self._closed

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def schema(self) -> Schema | None:
        return None if self._layout is None else self._layout.schema

    @property
    def capacity(self) -> int:
        return self._create.capacity if self._layout is None else self._ring.capacity

    @property
    def attrs(self) -> dict:
        source = self._create.attrs if self._layout is None else self._layout.meta["attrs"]
        return dict(source)

    @property
    def chunk_rows(self) -> int | None:
        return None if self._layout is None else self._layout.meta["chunk_rows"]

    @property
    def format_version(self) -> int | None:
        return None if self._layout is None else self._layout.meta["format_version"]

    @property
    def next_step_id(self) -> int:
        """Transitions ever appended: uncommitted ones too in the writer, committed in a reader."""
        self._check_open()
        if not self.writable:
            self._refresh()
        return self._head if self.writable else self._committed.head

    @property
    def first_step_id(self) -> int:
        """Step id of the oldest transition still in the pool."""
        return self._window()[0]

    @property
    def last_commit_time(self) -> float | None:
        """Unix time of the last commit on disk, None before the first."""
        self._refresh()
        return self._durable.time_unix or None

    @property
    def _durable(self) -> commit.CommitRecord:
        """The newest commit record in its slot: ``_committed``, but for a writer's commit still on its
        way to the disk (core/commit_pipeline.py), while the one before it is the newest there."""
        return self._committed if self._pipeline is None else self._pipeline.durable

    def __len__(self) -> int:
        """Rows in the window: at most ``capacity``, fewer once a byte heap fills first
        (``window_bound`` says which bound applies)."""
        low, high = self._window()
        return high - low

    @property
    def window_bound(self) -> str | None:
        """What bounds the window now: ``"capacity"`` when it holds ``capacity`` rows, ``"heap
        'name'"`` when that field's byte heap evicted the oldest rows (a pool with ragged or
        compressed fields), None while neither has evicted rows."""
        low, high = self._window()
        if high - low >= self.capacity:
            return "capacity"
        name = self._committed.payload.get(HEAP_BOUND_KEY)
        return None if not name else f"heap {name!r}"

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("writer" if self.writable else "reader")
        if self._closed:
            return f"<expstore.Store {self.path!r} {self.backend} {state} len=?>"
        bound = self.window_bound
        return (f"<expstore.Store {self.path!r} {self.backend} {state} len={len(self)}"
                + ("" if bound is None else f", bounded by {bound}") + ">")

    # ------------------------------------------------------------------ window
    def _window(self) -> tuple[int, int]:
        self._check_open()
        if self._layout is None:
            return 0, 0
        if self.writable:
            return self._ring.tail_for(self._head, self._committed.tail), self._head
        self._refresh()
        return self._committed.tail, self._committed.head

    def _refresh(self) -> None:
        """Readers: take a newer commit if the writer made one (a poll of two integers)."""
        if self.writable or self._maps is None:
            return
        seq = self._maps.poll_seq()
        if seq != self._seen_seq:
            record = self._read_commit()
            if record.seq > self._committed.seq:
                self._committed = record
            if record.seq == seq:
                self._seen_seq = seq

    # ------------------------------------------------------------------ writing
    def append(self, transition: Mapping[str, Any], *, env_id: int = 0) -> None:
        """Append one transition: a mapping of field name -> row value.

        ``env_id`` names the environment (e.g. the sub-env of a vector env) that produced it:
        episodes are tracked per env id, and end at a row with ``terminated`` or ``truncated``.

        Values are checked before any is written, so a bad transition writes nothing. This is
        the env-loop hot path: once a writer's appends are ready, its ``append`` is a function
        written for its schema (staging.fast_append_for) that stages the common rows and hands
        every other row to this method.
        """
        with self._write_lock:  # uncontended: only an idle writer's commit thread takes it too
            if not self._append_ready:
                self._prepare_append(transition)
            derived = None
            try:
                keys = transition.keys()
            except AttributeError:
                raise _not_a_mapping("append", transition) from None
            if keys != self._names:
                transition, derived = self._split_derived(transition, None)
            stage = self._stage
            if stage is not None and stage.count < stage.limit:
                if not stage.put(transition, derived, env_id) and not self._restage(stage, transition, derived, env_id):
                    self._append_direct(transition, derived, env_id)
                    return
                self._head += 1
                # The stage drains when full, and every commit drains it (see staging.py); the
                # interval is checked at the drains (the idle-commit thread covers a quiet writer).
                if stage.count >= stage.limit:
                    self._drain_stage(defer=True)
                    if self._head >= self._commit_due_head or time.monotonic() >= self._commit_due_s:
                        self._auto_commit()
                elif self._head >= self._commit_due_head:
                    self._auto_commit()
                return
            self._append_direct(transition, derived, env_id)

    def _append_direct(self, transition: Mapping[str, Any], derived: dict | None, env_id: int) -> None:
        """An append straight into the maps, the write lock held: pools with heap fields, and rows
        the stage cannot take (staging.py). Values are checked before any is written."""
        converted = None
        for name, field, dtype, shape, float_limit, _ in self._row_loop:  # RowSpec fields, as plain tuples
            value = transition[name]
            kind = type(value)
            if kind is np.ndarray:
                if value.dtype is dtype and value.shape == shape:
                    continue
            elif kind is float:
                if float_limit is not None and not shape and -float_limit <= value <= float_limit:
                    continue
            elif kind is bool and dtype.kind == "b" and not shape:
                continue
            if converted is None:
                converted = {}
            converted[name] = as_rows(name, field, value, None)
        if converted is not None:
            transition = {**transition, **converted}
        self._wait_for_room(self._head + 1)
        if self._heaps is not None:
            self._write_heap_rows(self._heaps.encode(transition, None), 0, 1)
        slot = self._head % self._slots
        for name, _, _, _, _, view in self._row_loop:
            view[slot] = transition[name]
        if self._keeping is not None:
            self._apply_deferred()
            self._keeping.on_append(self._head, slot, transition, derived, env_id)
        self._head += 1
        # A commit whenever `slack` rows are pending keeps the next write off committed rows.
        if self._head >= self._commit_due_head or time.monotonic() >= self._commit_due_s:
            self._auto_commit()
        self._set_stage_room()  # the direct way because the stage was full: maybe it has room again

    # ------------------------------------------------------------------ staged appends (staging.py)
    def _new_stage(self) -> Stage | None:
        if self._heaps is not None:
            return None  # heap rows go through the heap's eviction at once
        schema = self._mapped()[1].schema
        derived = {f"next_{name}": (schema[name].shape, schema[name].dtype) for name in self._derived}
        row_nbytes = sum(spec.field.row_nbytes for spec in self._row_specs)
        stage = Stage(self._row_loop, derived, stage_rows(row_nbytes, self._ring.slack))
        self._stage = stage
        self._set_stage_room()
        return stage

    def _set_stage_room(self) -> None:
        """After the head moved outside the stage (a drain, a commit, an extend, a direct append):
        what an empty stage may take, so that its rows end at the next commit the row count asks
        for (the stage's rows never run past the slack, whatever path filled it)."""
        stage = self._stage
        if stage is not None and not stage.count:
            # Deferred rows open at most one env's episode (one-env extends only): counted as if they did.
            stage.set_room(None if self._keeping is None
                           else self._keeping.book.open_room() - (self._deferred is not None),
                           self._commit_due_head - self._head)

    def _disarm_append(self) -> None:
        """Back to append's slow checks (closed, failed, forked): the hot path refuses every row."""
        self._append_ready = False
        self.__dict__.pop("append", None)  # the method again, with every check

    def _restage(self, stage: Stage, transition: Mapping[str, Any], derived: dict | None, env_id: Any) -> bool:
        """Drain a stage that cannot take this row, and stage the row alone (False: go direct)."""
        self._drain_stage()
        return stage.limit > 0 and stage.put(transition, derived, env_id)

    def _drain_stage(self, defer: bool = False) -> None:
        """Write the staged rows into the maps in one step per field, and their bookkeeping; the
        write lock is held. Every path that reads rows or bookkeeping of its own drains first, and
        the bookkeeping that extends deferred comes first. ``defer``: a full stage drained by
        append, whose rows of env 0 without next_<obs> may leave their bookkeeping for later as
        an extend's do (_defer_bookkeeping)."""
        stage = self._stage
        if stage is None or not stage.count:
            self._apply_deferred()
            return
        self._wait_for_room(self._head)
        first = self._head - stage.count
        one_env = stage.envs == _ENV_0 and not stage.with_derived
        columns, derived, env_ids = stage.take()
        for offset, slot, length in self._ring.runs(first, len(env_ids)):
            for spec in self._row_specs:
                spec.view[slot:slot + length] = columns[spec.name][offset:offset + length]
        if self._keeping is not None:
            if defer and one_env:
                self._defer_bookkeeping(first, len(env_ids))
            else:
                self._apply_deferred()
                self._keeping.on_extend(first, columns, derived, env_ids)
        self._set_stage_room()

    def _drain(self) -> None:
        """Before a read of the writer's own (the write lock not held): the staged rows into the maps."""
        stage = self._stage
        if (stage is not None and stage.count) or self._deferred is not None:
            with self._write_lock:
                self._drain_stage()

    def _defer_bookkeeping(self, first: int, count: int) -> None:
        """The episode bookkeeping of ``count`` rows of env 0 just written from step ``first`` on,
        left for later: it runs once for every such row since the last time it ran, before
        anything else reads or changes the bookkeeping (a drain: every commit, every read of the
        writer's own, an append, an extend of other envs or with next_<obs>). One round of about
        thirty numpy calls for ten 1,000-row extends costs about what it did for one (they are
        per batch, not per row), and it was half of an extend. The rows' tags are read back from
        the maps, where they are already; the slack bounds the rows between two commits, so none
        of them is overwritten before its bookkeeping runs."""
        deferred = self._deferred
        if deferred is not None:
            if deferred[0] + deferred[1] == first:
                self._deferred = (deferred[0], deferred[1] + count)
                return
            self._apply_deferred()
        self._deferred = (first, count)

    def _apply_deferred(self) -> None:
        """Run the deferred bookkeeping (see _defer_bookkeeping); the write lock is held."""
        deferred, self._deferred = self._deferred, None
        if deferred is None or self._keeping is None:
            return
        first, count = deferred
        # Views of the rows in the maps, one piece at a time where they wrap the ring: joining the
        # pieces would copy every field of up to a commit's rows (140 MB of Atari-like rows).
        for offset, slot, length in self._ring.runs(first, count):
            columns = {spec.name: spec.view[slot:slot + length] for spec in self._row_specs}
            self._keeping.on_extend(first + offset, columns, None, None, length)

    def _prepare_append(self, transition: Mapping[str, Any]) -> None:
        """The slow checks the hot path skips once they passed: open, writable, created."""
        self._check_writable()
        if not isinstance(transition, Mapping):
            raise _not_a_mapping("append", transition)
        if self._layout is None:
            self._create_from(transition, n_rows=None)
        self._arm_writes()

    def _arm_writes(self) -> None:
        """The checks passed (open, writable, no failed write, this process's handle, created):
        append and extend skip them until ``_disarm_append``, and append takes its hot path."""
        self._append_ready = True
        if self._stage is not None:  # the lock of this process: a fork disarms this path
            # an instance attribute in the method's place (the method is its checked path)
            self.append = fast_append_for(self._stage, self._write_lock, self,  # type: ignore[method-assign]
                                          Store.append.__get__(self))
        if self._failure is not None:  # a background sync failed since the checks: its disarming stands
            self._disarm_append()

    def extend(self, batch: Mapping[str, Any], *, env_ids=None) -> None:
        """Append a batch: a mapping of field name -> values with a leading batch dimension.

        ``env_ids`` (one int per row, or one for all) names the env of each row, as in append.

        The whole batch is checked before anything is written: a bad batch writes nothing.
        """
        with self._write_lock:
            if not self._append_ready:  # the checks a ready writer passed already (see _disarm_append)
                self._check_writable()
                if not isinstance(batch, Mapping):
                    raise _not_a_mapping("extend", batch)
                if self._layout is None:
                    self._create_from(batch, n_rows=_batch_length(batch))
                self._arm_writes()
            if self._stage is not None and self._stage.count:
                self._drain_stage()  # staged appends come first, in step order
            derived = None
            exact = self._exact_columns(batch)
            if exact is not None:
                n_rows, columns = exact
            else:
                if not isinstance(batch, Mapping):
                    raise _not_a_mapping("extend", batch)
                n_rows = _batch_length(batch)
                if batch.keys() != self._names:
                    batch, derived = self._split_derived(batch, n_rows)
                columns = [self._column(spec, batch[spec.name], n_rows) for spec in self._row_specs]
            if env_ids is not None:
                self._apply_deferred()  # the open episodes that its checks count
            env_ids = check_env_ids(self._keeping, env_ids, n_rows, self._head)
            encoded = None if self._heaps is None else self._heaps.encode(batch, n_rows)
            done = 0
            while done < n_rows:
                room = self._ring.slack - (self._head - self._durable.head)
                if room < min(n_rows - done, self._ring.slack):
                    if self._commit_on_its_way():
                        self._wait_for_commit()  # the room is counted from the newest commit on disk
                    else:
                        # Commit what is pending rather than split the batch: one commit either way,
                        # and a batch written in one piece costs one round of bookkeeping.
                        self._auto_commit()
                    continue
                take = min(room, n_rows - done)
                if encoded is not None:
                    take = self._write_heap_rows(encoded, done, take)
                    if not take:
                        continue  # a commit made room in a heap
                for offset, slot, length in self._ring.runs(self._head, take):
                    if length == n_rows:  # the batch in one run of slots: the columns need no slices
                        for spec, column in zip(self._row_specs, columns, strict=True):
                            spec.view[slot:slot + length] = column
                        continue
                    for spec, column in zip(self._row_specs, columns, strict=True):
                        spec.view[slot:slot + length] = column[done + offset:done + offset + length]
                if self._keeping is not None and take == n_rows and env_ids is None and derived is None \
                        and encoded is None:  # the common batch: its bookkeeping waits (_defer_bookkeeping)
                    self._defer_bookkeeping(self._head, take)
                elif self._keeping is not None and take == n_rows:  # the batch in one piece: no slices
                    self._apply_deferred()
                    rows = batch if exact is not None else {  # an exact batch is its columns already
                        spec.name: column for spec, column in zip(self._row_specs, columns, strict=True)}
                    self._keeping.on_extend(self._head, rows, derived, env_ids, take)
                elif self._keeping is not None:
                    self._apply_deferred()
                    part = slice(done, done + take)
                    rows = {spec.name: column[part] for spec, column in zip(self._row_specs, columns, strict=True)}
                    self._keeping.on_extend(self._head, rows,
                                            derived and {name: values[part] for name, values in derived.items()},
                                            None if env_ids is None else env_ids[part], take)
                self._head += take
                done += take
            self._maybe_commit()
            self._set_stage_room()

    def _write_heap_rows(self, encoded: dict[str, EncodedRows], first: int, count: int) -> int:
        """Write the heap bytes of up to ``count`` rows from row ``first`` as the next steps; returns
        how many were written. None are when a heap has no room left before its oldest committed
        row: then it commits first, with a tail that makes room (heap.py), and returns 0 (append
        goes on to write its row)."""
        assert self._heaps is not None
        fits, floors = self._heaps.rows_that_fit(encoded, first, count)
        if not fits:
            self._commit(self._policy.fsync, floors)  # in place: a pool with heap fields never pipelines
            fits, floors = self._heaps.rows_that_fit(encoded, first, count)
            if count == 1 and fits:  # append's one row: written now
                self._heaps.write(encoded, first, fits, self._head)
                return fits
            return 0
        self._heaps.write(encoded, first, fits, self._head)
        return fits

    def _exact_columns(self, batch: Any) -> tuple[int, list[np.ndarray]] | None:
        """An extend's common batch, checked in one pass without calls: a plain dict of the
        schema's fields, each an array of the field's dtype and row shape, all of one length, in a
        pool without heap fields. None for anything else (the checks with conversions and errors)."""
        if type(batch) is not dict or self._heaps is not None or batch.keys() != self._names:
            return None
        columns = []
        n_rows = -1
        for name, _, dtype, shape, _, _ in self._row_loop:
            value = batch[name]
            if type(value) is not np.ndarray or value.dtype is not dtype:
                return None
            full = value.shape
            if not full or full[1:] != shape or (full[0] != n_rows and n_rows >= 0):
                return None
            n_rows = full[0]
            columns.append(value)
        return n_rows, columns

    @staticmethod
    def _column(spec: RowSpec, value: Any, n_rows: int) -> np.ndarray:
        """One field of an extend, checked and cast; an array already in shape skips the calls."""
        if (type(value) is np.ndarray and value.dtype is spec.dtype and value.shape[1:] == spec.shape
                and len(value) == n_rows):
            return value
        return as_rows(spec.name, spec.field, value, n_rows)

    def _split_derived(self, mapping: Mapping[str, Any], n_rows: int | None) -> tuple[dict, dict | None]:
        """Take the ``next_<obs>`` values a pool without them keeps only at episode ends."""
        wanted = {f"next_{name}" for name in self._derived}
        if not wanted or not wanted <= mapping.keys() or mapping.keys() - wanted != self._names:
            raise self._names_error(mapping)
        derived = {key: self._derived_rows(key, mapping[key], n_rows) for key in wanted}
        return {key: value for key, value in mapping.items() if key not in wanted}, derived

    def _derived_rows(self, key: str, value: Any, n_rows: int | None) -> Any:
        """A ``next_<obs>`` value of an append (``n_rows`` None) or extend, checked; a ragged
        observation's as one array, or an object array of one per row."""
        name = key[len("next_"):]
        field = self._mapped()[1].schema[name]
        if not field.ragged:
            return as_rows(key, field, value, n_rows)
        assert self._heaps is not None and self._keeping is not None and self._keeping.book.final_table is not None
        rows = self._heaps.by_name[name].check_rows(value, n_rows, key)
        self._keeping.book.final_table.ragged[name].check_fits(key, rows)
        if n_rows is None:
            return rows[0]
        column = np.empty(len(rows), object)
        for row, values in enumerate(rows):  # one by one: rows of one length would make a 2-d array
            column[row] = values
        return column

    def _final_rows(self, next_obs: Mapping[str, Any], n_rows: int) -> dict[str, np.ndarray] | None:
        """The ``next_<obs>`` rows given to ``end_episodes``, checked; those a deriving pool keeps."""
        schema = self._mapped()[1].schema
        observed = [name for name in schema if name == "obs" or name.startswith("obs_")]
        expected = {f"next_{name}" for name in observed}
        if not isinstance(next_obs, Mapping) or set(next_obs) != expected:
            given = sorted(next_obs) if isinstance(next_obs, Mapping) else type(next_obs).__name__
            raise InvalidArgumentError(f"next_obs must map {sorted(expected)} to one row per env id, got {given}")
        heaps = self._heaps  # a ragged observation's rows are checked as its heap checks an append's
        rows: dict[str, Any] = {
            key: (self._derived_rows(key, value, n_rows) if key[len("next_"):] in self._derived
                  else heaps.by_name[key[5:]].check_rows(value, n_rows, key)
                  if heaps is not None and schema[key[5:]].ragged
                  else as_rows(key, schema[key[5:]], value, n_rows)) for key, value in next_obs.items()}
        derived = {key: rows[key] for key in (f"next_{name}" for name in self._derived)}
        return derived or None

    def flush(self, fsync: bool | None = None) -> None:
        """Commit every appended transition now; with fsync (the default) it is durable on return
        (so is an automatic commit still on its way to the disk, which it waits for)."""
        self._check_writable()
        if self._layout is not None:
            with self._write_lock:
                self._commit(self._policy.fsync if fsync is None else fsync)

    def wait_for_commits(self) -> None:
        """Return once every commit this writer made is on disk (durable, with fsync). Automatic
        commits of a pool without heap fields or derived ``next_obs`` are made durable on a
        background thread while the appends go on (core/commit_pipeline.py): when the ``append``
        or ``extend`` that made one returns, it may still be on its way, so a crash a few
        milliseconds later may lose it. Unlike ``flush``, this commits no row appended since."""
        self._check_open()
        if self.writable:
            with self._write_lock:
                self._wait_for_commit()

    def _commit_if_idle(self) -> None:
        """The idle-commit thread's check (idle.py): rows pending longer than the interval."""
        with self._write_lock:
            if self._closed or self._failure is not None or self._layout is None:
                return
            if self._commit_on_its_way():
                return  # never waits on the disk here, holding the lock the appends need: the next wake commits
            if self._head > self._committed.head and time.monotonic() >= self._commit_due_s:
                self._auto_commit()

    def _maybe_commit(self) -> None:
        if self._head >= self._commit_due_head or (
            self._head > self._committed.head and time.monotonic() >= self._commit_due_s
        ):
            self._auto_commit()

    def _auto_commit(self) -> None:
        """A commit the writer makes on its own (rows, interval, slack): made durable in the
        background where the pool pipelines its commits, so that the appends go on meanwhile."""
        self._commit(self._policy.fsync, background=self._pipelined)

    def _commit_on_its_way(self) -> bool:
        return self._pipeline is not None and self._pipeline.pending is not None

    def _wait_for_commit(self) -> None:
        """Until the commit on its way is durable; its failure is raised here (commit_pipeline.py)."""
        if self._pipeline is not None:
            self._pipeline.wait()

    def _wait_for_room(self, end_step: int) -> None:
        """Before rows up to ``end_step`` (exclusive) go into the maps. The slots of steps from
        ``head + slack`` on hold rows of the window of the commit record with that ``head``: while a
        newer commit is on its way, the older one is what a crash leaves, so no row may reach
        ``slack`` rows past its head. Wait for the newer one instead: it was made no more than
        ``slack`` rows before ``end_step`` (the commits fall at least every ``slack`` rows)."""
        pipeline = self._pipeline
        if pipeline is not None and pipeline.pending is not None \
                and end_step > pipeline.durable.head + self._ring.slack:
            pipeline.wait()

    def _commit(self, fsync: bool, heap_floors: Mapping[str, int] | None = None, background: bool = False) -> None:
        """Commit every row appended. ``background``: hand the syncs and the record's write to the
        pipeline's thread and return (core/commit_pipeline.py); else the record is durable (with
        ``fsync``) on return. A commit still on its way is waited for first either way."""
        self._drain_stage()  # a commit's rows are in the maps before its record
        maps, layout = self._mapped()
        pipeline = self._pipeline
        assert pipeline is not None, "only a writer commits"
        try:
            pipeline.wait()  # one record on its way at a time: N + 1 goes into the slot of N - 1
            previous = self._committed
            tail = ring_tail = self._ring.tail_for(self._head, previous.tail)
            if self._heaps is not None:  # evict too the rows whose heap bytes the next write needs
                tail = self._heaps.tail_for(ring_tail, self._head, heap_floors)
            payload = (dict(previous.payload) if self._keeping is None
                       else self._keeping.payload(previous.payload, tail, self._head))
            if self._heaps is not None:
                payload = self._heaps.payload(payload, ring_tail, previous.tail, tail, self._head)
            if self._head == previous.head and tail == previous.tail and payload == previous.payload:
                if fsync:  # nothing new, but earlier commits may have skipped the fsync
                    maps.sync_data(parallel=not self._finalizing)
                    maps.sync_commit()
                return
            if maps.checksum_table is not None:
                payload = checksums.record_commit(maps.checksum_table, self._views, self._ring,
                                                  layout.meta["chunk_rows"], previous, self._head, tail, payload)
            record = commit.CommitRecord(
                seq=previous.seq + 1, head=self._head, tail=tail, time_unix=time.time(), payload=payload,
            )
            if not (background and fsync and pipeline.submit(record, owner=self)):
                pipeline.commit_now(record, fsync, parallel=not self._finalizing)
        except OSError as exc:
            # Linux marks pages clean after a failed writeback, so a retry could "succeed"
            # without the data: stop writing, and let a reopen recover from the last commit.
            self._failure = exc
            self._disarm_append()
            raise
        self._committed = record
        self._schedule_commit()
        self._set_stage_room()

    def _schedule_commit(self) -> None:
        self._commit_due_head = self._committed.head + min(self._policy.every_rows, self._ring.slack)
        self._commit_due_s = time.monotonic() + self._policy.interval_s

    def _create_from(self, mapping: Mapping[str, Any], n_rows: int | None) -> None:
        fields = {}
        for name, value in mapping.items():
            arr = to_numpy(str(name), value)
            if n_rows is not None and arr.ndim == 0:
                raise SchemaError(f"field {name!r} is a scalar; extend takes arrays with a leading batch dimension")
            fields[name] = Field(arr.shape if n_rows is None else arr.shape[1:], arr.dtype)
        self._attach(self._create(Schema(fields)))

    # ------------------------------------------------------------------ reading
    def __getitem__(self, key: int | slice) -> dict[str, Any]:
        low, high = self._window()
        count = high - low
        if isinstance(key, slice):
            start, stop, step = key.indices(count)
            return self._finish(self._read_checked(low + np.arange(start, stop, step, dtype=np.int64)))
        if not isinstance(key, (int, np.integer)):
            raise TypeError(f"store indices are ints or slices, not {type(key).__name__}")
        index = int(key) + count if key < 0 else int(key)
        if not 0 <= index < count:
            raise StepNotFoundError(f"index {key} is out of range for a pool of {count} transitions")
        batch = self._finish(self._read_checked(np.array([low + index], dtype=np.int64)))
        return {name: values[0] for name, values in batch.items()}

    def read(self, step_ids, *, frame_stack: int | None = None, stack_axis: int = 0,
             stack_padding: str = "reset", ragged: str = "pad", pad_value: PadValue = 0) -> dict[str, Any]:
        """The rows of the given step ids, in that order, plus ``step_id``.

        ``ragged`` and ``pad_value``: how ragged fields come back, as in ``sample``.

        With ``frame_stack=k`` the observation fields come as stacks of each row's k newest
        frames of its episode (see ``sample``); ``next_obs`` too where the pool stores it, and
        where it derives it, when every row's next observation is known. A row whose stack
        needs rows the ring evicted raises StepNotFoundError.
        """
        stacker = self._stacker(frame_stack, stack_axis, stack_padding)
        steps = _as_step_ids(step_ids)
        low, high = self._window()
        outside = steps[(steps < low) | (steps >= high)]
        if outside.size:
            raise StepNotFoundError(
                f"step id {int(outside[0])} is not in the pool, which holds steps {low}..{high - 1}"
                if high > low else f"step id {int(outside[0])} is not in the pool, which is empty"
            )
        return self._finish(self._read_checked(steps, stacker, high), ragged, pad_value)

    def _read_checked(self, steps: np.ndarray, stacker: FrameStacker | None = None,
                      high: int | None = None) -> dict[str, np.ndarray]:
        batch = self._gather(steps)
        stale = self._stale(steps)
        if stale is not None and stale.any():
            raise StepNotFoundError(
                f"step id {int(steps[stale][0])} was evicted by the writer while it was being read")
        if stacker is not None:
            low, window_high = self._window()
            complete = self._builder().stacked_rows(batch, steps, window_high if high is None else high, stacker)
            refuse_incomplete(complete, steps, low)
        return batch

    def _stacker(self, frame_stack, stack_axis, stack_padding) -> FrameStacker | None:
        """The frame stacker a call's ``frame_stack``/``stack_axis``/``stack_padding`` ask for (see
        core/stacking.py), or None without ``frame_stack``."""
        request = frame_stack_of(self.schema, self.path, frame_stack, stack_axis, stack_padding)
        if request is None:
            return None
        self._need_book()
        return FrameStacker(request, self._mapped()[0].views, self._ring.slots, self._gather,
                            lambda: self._window()[0], self._fresh)

    # ------------------------------------------------------------------ sampling
    def sample(self, batch_size: int, *, rng: int | np.random.Generator | None = None, n_step: int = 1,
               gamma: float = 0.99, prioritized: bool = False, alpha: float = 0.6,
               beta: float = 0.4, max_age: int | None = None, age_unit: str = "auto",
               current_version: int | None = None, recency=None,
               sampler: Sampler | None = None, frame_stack: int | None = None, stack_axis: int = 0,
               stack_padding: str = "reset", her=None, ragged: str = "pad", pad_value: PadValue = 0) -> dict[str, Any]:
        """A random batch (with replacement) of committed transitions, plus ``step_id``.

        The keywords build a sampling strategy; ``sampler`` takes one directly. They compose:
        ``max_age`` with ``prioritized`` and/or ``recency`` (the strategy draws among the young
        rows only), ``prioritized`` with ``recency`` (expstore/sampling/composed.py), and
        ``n_step`` and ``her`` with every strategy and with each other (a relabelled n-step
        return recomputes each of its rewards for the new goal).

        Args:
            batch_size: rows to draw.
            rng: a seed or a ``numpy.random.Generator``; the same seed on the same pool gives
                the same batch.
            n_step: with n > 1, ``reward`` is the discounted sum of up to n rewards of the
                episode, ``next_obs``/``terminated``/``truncated`` those of the last row summed,
                and ``discount`` is gamma ** (rows summed). It stops at an episode end and at
                the newest committed row; truncation does not set ``terminated``.
            gamma: discount factor of the n-step sum.
            prioritized: draw rows in proportion to ``priority ** alpha`` (see
                ``update_priorities``) and add ``weights``, the importance weights
                ``(N * P) ** -beta`` divided by their batch maximum.
            alpha, beta: the exponents of prioritized replay.
            max_age: draw only rows at most this old, counted from the newest committed row
                (see ``age_unit``); never returns an older row, also while a writer appends.
                With ``prioritized``, N and P of the weights are those of the young rows.
            age_unit: "policy_versions" (by the ``policy_version`` field), "steps" (by step
                id), or "auto": policy versions when the pool has that field, else steps.
            current_version: with policy versions, count age from this version instead of
                the newest row's (e.g. the learner's current update count).
            recency: weight recent rows: ``expstore.ERE(k, K)`` (Emphasizing Recent
                Experience; ``ERESchedule`` tracks k) or ``expstore.ExponentialRecency(half_life)``.
                See expstore/sampling/recency.py.
            sampler: a strategy object instead of ``prioritized``/``max_age``/``recency``:
                ``expstore.Uniform()``, ``Prioritized(alpha, beta)``, ``ERE(k, K)``,
                ``ExponentialRecency(half_life)``, ``AgeWindow(max_age, within=...)``, or any
                object with ``draw(rng, view, count) -> step ids`` (``expstore.Sampler``;
                see expstore/sampling/base.py).
            frame_stack: return ``obs`` (every observation field) and ``next_obs`` as stacks of
                the k newest frames of the row's episode (of its sub-env's episode in a vector-env
                pool), rebuilt from one frame per row; rows whose stack needs evicted rows are
                drawn again. See core/stacking.py.
            stack_axis: 0: a new leading axis, (84, 84) -> (k, 84, 84), as gymnasium's
                ``FrameStackObservation``; -1: concatenated along the last axis, (84, 84, 1) ->
                (84, 84, k), as SB3's ``VecFrameStack``.
            stack_padding: how the first rows of an episode are padded: "reset" repeats the
                episode's first frame (gymnasium's default), "zero" pads zeros (SB3).
            her: hindsight relabelling of the drawn rows, ``expstore.HER(compute_reward, ...)``
                (expstore/mixing/her.py): adds the ``relabeled`` column. With ``n_step`` > 1 a
                relabelled row's ``reward`` is the discounted sum of the rewards recomputed for
                the new goal along the same rows (the same episode end, ``discount`` as without).
            ragged: how ragged fields (``Field((None, ...), dtype)``) come back: ``"pad"``, an
                array padded to the longest row of the batch plus an int64 ``<name>_length``
                column; ``"list"``, a list of one array per row (and the lengths column).
            pad_value: what the padded positions hold (default 0): one number, or a dict of one
                per ragged field (``{"response_ids": -1, "mask": 0}``; a derived ``next_<obs>``
                pads as its observation unless named). A value a field's dtype cannot hold
                (-1 for uint8) is an ``InvalidArgumentError``.

        Fields with a codec come back as plain arrays, identical to what was appended.
        """
        if ragged != "pad" or pad_value != 0:
            check_ragged(ragged, pad_value, self._ragged)  # before any draw
        if sampler is None and not prioritized and max_age is None and recency is None and n_step == 1 \
                and not self._derived and frame_stack is None and her is None:
            return self._finish(self._sample_uniform(batch_size, rng), ragged, pad_value)
        _check_sampling_args(batch_size, n_step, gamma, alpha, beta)
        stacker = self._stacker(frame_stack, stack_axis, stack_padding)
        strategy = self._strategy(sampler, prioritized, alpha, beta, max_age, age_unit, current_version, recency)
        _check_her(her)
        if n_step > 1:
            self._need_book()
        generator = _generator(rng)
        keep_chain = her is not None and n_step > 1  # relabelling recomputes every reward of the chain
        batch, view = self._draw_usable(
            strategy, generator, batch_size, self._view(),
            lambda steps, high: self._builder().transitions(steps, n_step, gamma, high, stacker, keep_chain))
        _add_weights(strategy, view, batch, batch["step_id"])
        if her is not None:
            if keep_chain:
                batch = her.relabel(self, batch, generator, view, chain=batch.pop(CHAIN), gamma=gamma)
            else:
                batch = her.relabel(self, batch, generator, view)
        return self._finish(batch, ragged, pad_value)

    def _finish(self, batch: dict[str, np.ndarray], ragged: str = "pad", pad_value: PadValue = 0) -> dict[str, Any]:
        """A batch as the public calls return it: ragged fields cut, padded or listed (ragged.py)."""
        if ragged != "pad" or pad_value != 0:
            check_ragged(ragged, pad_value, self._ragged)
        return finish(batch, tuple(self._ragged), ragged, pad_value) if self._ragged else batch

    def _sample_uniform(self, batch_size: int, rng) -> dict[str, np.ndarray]:
        """The hot path: one draw, one gather, one look at the window."""
        _check_batch_size(batch_size)
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        low, high = self._window()
        if high == low:
            raise EmptyStoreError(f"{self.path} holds no committed transition yet; append and flush first")
        steps = generator.integers(low, high, size=int(batch_size), dtype=np.int64)
        batch = self._gather(steps)
        stale = self._stale(steps)
        if stale is None or not stale.any():
            return batch
        # The writer overwrote these rows during the gather: the redraw loop replaces them.
        first = (batch, ~stale)
        return self._draw_usable(_UNIFORM, generator, len(steps), self._view(low, high),
                                 lambda s, view_high: (self._gather(s), np.ones(len(s), bool)), first)[0]

    def _strategy(self, sampler: Sampler | None, prioritized: bool, alpha: float, beta: float, max_age: int | None,
                  age_unit: str, current_version: int | None, recency) -> Sampler:
        """The strategy ``sample``'s keywords describe, or the one given as ``sampler``."""
        if sampler is not None:
            if prioritized or max_age is not None or recency is not None:
                raise InvalidArgumentError("sampler= replaces prioritized, max_age and recency; pass one or the "
                                           "other, e.g. sampler=expstore.AgeWindow(100, within=expstore.Prioritized())")
            if not callable(getattr(sampler, "draw", None)):
                raise InvalidArgumentError(f"sampler={sampler!r} is not a sampler: it needs a method "
                                           "draw(rng, view, count) returning step ids (see expstore.Sampler)")
            return sampler
        if recency is not None and not callable(getattr(recency, "draw", None)):
            raise InvalidArgumentError(f"recency={recency!r} must be expstore.ERE(k, K) or "
                                       "expstore.ExponentialRecency(half_life)")
        if prioritized:
            self._need_book()
        inner: Sampler = Prioritized(alpha, beta) if prioritized else (recency or _UNIFORM)
        if prioritized and recency is not None:
            inner = PrioritizedRecency(Prioritized(alpha, beta), recency)
        return inner if max_age is None else AgeWindow(max_age, age_unit, current_version, inner)

    def _view(self, low: int | None = None, high: int | None = None) -> WindowView:
        """The read-only view a strategy draws from: the committed window (or [low, high))."""
        self._drain()
        if low is None or high is None:
            low, high = self._nonempty_window()
        seq = None if self.writable else self._committed.seq
        if self._keeping is None:
            versions = self._mapped()[0].views.get(VERSION_FIELD)
            return WindowView(low, high, self._ring.slots, versions=versions, commit_seq=seq, fields=tuple(self._names))
        return self._keeping.window_view(low, high, seq)

    def _draw_usable(self, strategy: Sampler, rng: np.random.Generator, count: int, view: WindowView, build,
                     first: tuple[dict, np.ndarray] | None = None) -> tuple[dict, WindowView]:
        """Draw ``count`` rows with ``strategy`` and build them with ``build(steps, high) -> (batch,
        ok)``; draw again where a row was unusable, refused by the strategy, or overwritten.

        The one redraw loop. Rows accepted once stay: their bytes were read before any overwrite.
        ``first`` is a batch already built (the uniform hot path's). Returns the batch and the
        view of the last draw.
        """
        admits = getattr(strategy, "admits", None)

        def attempt(view: WindowView, n: int) -> tuple[dict, np.ndarray]:
            steps = strategy.draw(rng, view, n)
            batch, ok = build(steps, view.head)
            if admits is not None:
                ok &= admits(view, batch)
            return batch, ok & self._fresh(steps)

        batch, ok = first if first is not None else attempt(view, count)
        for _ in range(_REDRAWS):
            if ok.all():
                return batch, view
            view = self._view_after(view)
            redo = np.flatnonzero(~ok)
            # Heap rows cost a decode each: fewer spare candidates than rows that are cheap to gather.
            candidates = _CANDIDATES if self._heaps is None else _HEAP_CANDIDATES
            new_batch, new_ok = attempt(view, max(4 * len(redo), candidates))
            usable = np.flatnonzero(new_ok)[:len(redo)]
            redo = redo[:len(usable)]
            merge_rows(batch, redo, new_batch, usable)
            ok[redo] = True
        raise EmptyStoreError(f"{self.path}: too few rows can be sampled this way (the writer kept overwriting "
                              "sampled rows, next observations not known yet, or windows too long); sample a "
                              "smaller batch, append more or sample differently")

    def _view_after(self, view: WindowView) -> WindowView:
        """The view to draw again from: rows the writer evicted meanwhile left out; a new view
        of the whole window when the writer lapped this one (every row of it evicted)."""
        tail = self._window()[0]
        if tail <= view.tail:
            return view
        return self._view() if tail >= view.head else replace(view, tail=tail)

    def _builder(self) -> Batches:
        self._drain()
        if self._batches is None:
            self._check_open()
            raise EmptyStoreError(f"{self.path} holds no committed transition yet; append and flush first")
        return self._batches

    def _fresh(self, steps: np.ndarray) -> np.ndarray:
        stale = self._stale(steps)
        return np.ones(len(steps), bool) if stale is None else ~stale

    def _nonempty_window(self) -> tuple[int, int]:
        low, high = self._window()
        if high == low:
            raise EmptyStoreError(f"{self.path} holds no committed transition yet; append and flush first")
        return low, high

    def sample_sequences(self, batch_size: int, length: int, *, rng: int | np.random.Generator | None = None,
                         full_only: bool = False, frame_stack: int | None = None, stack_axis: int = 0,
                         stack_padding: str = "reset", prioritized: bool = False, alpha: float = 0.6,
                         beta: float = 0.4, max_age: int | None = None, age_unit: str = "auto",
                         current_version: int | None = None, recency=None,
                         sampler: Sampler | None = None, ragged: str = "pad",
                         pad_value: PadValue = 0) -> dict[str, Any]:
        """Windows of ``length`` consecutive rows of one episode each: arrays [batch, length, ...].

        A window starts at a committed row drawn by the strategy the keywords describe (as in
        ``sample``: uniform by default, ``prioritized``, ``recency``, ``max_age``, ``sampler``)
        and follows its episode (for a vector env, its own sub-env). ``mask`` [batch, length]
        marks the rows that exist; past the end of the episode (or of the committed rows)
        values are zero and ``step_id`` is -1. With ``full_only`` only windows of ``length``
        existing rows are drawn. ``frame_stack``, ``stack_axis`` and ``stack_padding`` stack
        every row's observations as in ``sample``. A prioritized draw adds ``weights`` [batch],
        those of the start rows (set a sequence's priority with ``update_priorities`` on its
        start step id). A ragged field comes back [batch, length, longest row, ...] with
        ``<name>_length`` [batch, length] (or, with ``ragged="list"``, a list of lists of
        arrays); see ``sample``.
        """
        _check_sampling_args(batch_size, 1, 0.0, alpha, beta)
        _check_positive(length, "length")
        strategy = self._strategy(sampler, prioritized, alpha, beta, max_age, age_unit, current_version, recency)
        self._need_book()
        stacker = self._stacker(frame_stack, stack_axis, stack_padding)
        generator = _generator(rng)
        batch, view = self._draw_usable(
            strategy, generator, batch_size, self._view(),
            lambda steps, high: self._builder().windows(steps, length, high, full_only, stacker))
        _add_weights(strategy, view, batch, batch["step_id"][:, 0])
        return self._finish(batch, ragged, pad_value)

    def iter_epoch(self, batch_size: int, *, rng: int | np.random.Generator | None = None, drop_last: bool = False,
                   n_step: int = 1, gamma: float = 0.99, frame_stack: int | None = None, stack_axis: int = 0,
                   stack_padding: str = "reset", ragged: str = "pad",
                   pad_value: PadValue = 0) -> Iterator[dict[str, Any]]:
        """One pass over every committed transition, in shuffled batches (offline training).

        The window is taken when the pass starts; rows the ring evicts during the pass (and,
        in a pool without ``next_obs``, rows whose next observation is not known yet) are
        skipped, so a batch can be shorter than ``batch_size``. ``frame_stack``, ``stack_axis``
        and ``stack_padding`` stack the observations as in ``sample`` (rows whose stack needs
        evicted rows are skipped too). ``ragged``, ``pad_value``: as in ``sample``.
        """
        self._finish({}, ragged, pad_value)  # checks them before the first batch
        _check_sampling_args(batch_size, n_step, gamma, 0.0, 0.0)
        stacker = self._stacker(frame_stack, stack_axis, stack_padding)
        generator = _generator(rng)
        low, high = self._nonempty_window()
        order = draws.epoch_order(generator, low, high)
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for start in range(0, stop, batch_size):
            steps = order[start:start + batch_size]
            steps = steps[steps >= self._window()[0]]
            batch, ok = self._builder().transitions(steps, n_step, gamma, high, stacker)
            ok &= self._fresh(steps)
            if not ok.all():
                batch = {name: values[ok] for name, values in batch.items()}
            if len(batch["step_id"]):
                yield self._finish(batch, ragged, pad_value)

    def epochs(self, batch_size: int, *, num_epochs: int | None = None,
               rng: int | np.random.Generator | None = None, **options) -> Iterator[dict[str, np.ndarray]]:
        """``iter_epoch`` repeated ``num_epochs`` times (forever when None), one generator."""
        generator = _generator(rng)
        epoch = 0
        while num_epochs is None or epoch < num_epochs:
            yield from self.iter_epoch(batch_size, rng=generator, **options)
            epoch += 1

    def update_priorities(self, step_ids, priorities) -> int:
        """Set the priorities of sampled rows (e.g. their TD errors); returns how many were set.

        Ids the ring already evicted are ignored. Priorities must be finite and >= 0; they are
        written into the pool and committed with it, so they survive a reopen.
        """
        self._check_writable()
        keeping = self._need_keeping()
        self._drain()  # staged rows get their max priority first, then these
        steps = np.asarray(step_ids, dtype=np.int64).reshape(-1)
        values = np.asarray(priorities, dtype=np.float64).reshape(-1)
        if values.shape != steps.shape:
            raise InvalidArgumentError(f"update_priorities got {steps.size} step ids and {values.size} priorities; "
                                       "pass one priority per step id")
        if values.size and not (np.isfinite(values).all() and (values >= 0).all()):
            raise InvalidArgumentError("priorities must be finite and >= 0 (use |TD error| + a small epsilon)")
        low, high = self._window()
        inside = (steps >= low) & (steps < high)
        keeping.set_priorities(steps[inside], values[inside])
        return int(inside.sum())

    # ------------------------------------------------------------------ episodes
    def end_episodes(self, env_ids=None, *, next_obs: Mapping[str, Any] | None = None) -> np.ndarray:
        """End the open episodes of ``env_ids`` (one int or several; default: every env) at
        their last appended row, as truncated. Returns the ids of the episodes ended.

        For an env reset before its episode ended (a time limit outside the env, an evaluation
        harness, a curriculum): ``episodes()`` then reports the episode truncated, n-step
        returns and sequence windows stop at its last row, and the env's next row begins a new
        episode. The rows keep the flags the env returned (``terminated`` and ``truncated``
        stay False), so a TD target bootstraps from the row's next observation as it should.

        Args:
            env_ids: the envs whose episodes end; envs with no open episode are skipped.
            next_obs: the observation that followed each env's last row, as a batch of the
                pool's ``next_<obs>`` fields (one row per env id). A pool that derives
                ``next_obs`` keeps it as the episode's final observation (without it, that row's
                ``next_obs`` is unknown and the row is not sampled); a pool that stores
                ``next_obs`` has it in the row already and only checks it.
        """
        with self._write_lock:
            self._check_writable()
            if self._layout is None:
                return np.zeros(0, np.int64)
            book = self._need_book()
            self._drain_stage()  # the staged rows' episodes are the open ones to end
            env_ids = np.array(sorted(book.open), np.int64) if env_ids is None else np.atleast_1d(np.asarray(env_ids))
            checked = book.check_env_ids(env_ids, len(env_ids))
            if checked is None:  # no env id given
                return np.zeros(0, np.int64)
            derived = None if next_obs is None else self._final_rows(next_obs, len(checked))
            return np.array(book.end_open(checked, derived), np.int64)

    def episodes(self) -> EpisodeTable:
        """The episodes with at least one row in the pool, ordered by first step id.

        Read from the episode table, without scanning the pool. An :class:`EpisodeTable`:
        ``len(table)`` episodes, ``table[name]`` a column. Columns (numpy arrays):
        ``episode_id``, ``first_step_id`` (may be evicted), ``length`` (rows ever appended,
        evicted ones included), ``return`` (their summed reward), ``terminated``,
        ``truncated``, ``open`` (still running), ``evicted`` (rows the ring dropped),
        ``cut_off`` (open when its writer stopped without closing), ``env_id``, ``last_step_id``.
        ``table.window_bound`` says what bounds the window, as ``Store.window_bound``.
        """
        keeping, state = self._episode_state()
        table = keeping.table(state)
        order = np.argsort(table["first_step_id"], kind="stable")
        return EpisodeTable({name: column[order] for name, column in table.items()}, self.window_bound)

    def episode(self, episode_id: int, *, frame_stack: int | None = None, stack_axis: int = 0,
                stack_padding: str = "reset", ragged: str = "pad", pad_value: PadValue = 0) -> dict[str, Any]:
        """The rows of one episode still in the pool, in order, plus ``step_id`` (ragged fields
        as ``sample`` gives them).

        With ``frame_stack`` the observations come stacked as in ``read``; of an episode whose
        first rows the ring evicted, only the rows whose whole stack is still there.
        """
        stacker = self._stacker(frame_stack, stack_axis, stack_padding)
        keeping, state = self._episode_state()
        table = keeping.table(state)
        position = np.flatnonzero(table["episode_id"] == int(episode_id))
        if not position.size:
            raise StepNotFoundError(f"episode {episode_id} has no row in the pool (episodes with rows: "
                                    f"{_id_summary(table['episode_id'])}); see store.episodes()")
        first, last = int(table["first_step_id"][position[0]]), int(table["last_step_id"][position[0]])
        if first < state.tail:
            first = keeping.book.oldest_rows(np.array([episode_id]), state.tail, state.head)[0]
        steps = keeping.book.rows_of(int(episode_id), first, last)
        if stacker is not None and first > int(table["first_step_id"][position[0]]):
            steps = steps[min(stacker.request.frames - 1, len(steps)):]  # their stacks reach evicted rows
        return self._finish(self._read_checked(steps, stacker, state.head), ragged, pad_value)

    def _episode_state(self) -> tuple[Bookkeeping, EpisodeState]:
        self._drain()
        keeping = self._need_keeping()
        low, high = self._window()
        return keeping, keeping.episode_state(low, high, self._committed)

    def _need_keeping(self) -> Bookkeeping:
        self._check_open()
        if self._keeping is None:
            raise ExpstoreError(f"{self.path} has no episode bookkeeping (it was created without it); "
                                "copy it into a new pool with `expstore convert`")
        return self._keeping

    def _need_book(self) -> EpisodeBook:
        return self._need_keeping().book

    # ------------------------------------------------------------------ gathering
    def _gather(self, steps: np.ndarray, undecoded: Collection[str] = ()) -> dict[str, np.ndarray]:
        """Every field's rows at ``steps``; heap fields named in ``undecoded`` keep their index
        entries (a frame stacker decodes those rows with the rest of their stacks, once)."""
        self._drain()  # a writer's staged rows are part of its reads
        if self._layout is None:  # no schema yet, so nothing was ever written: no field to read
            return {"step_id": steps}
        columns = self.cold_reads.gather(self._views, self._ring.slots_of(steps))
        batch = {name: column for (name, _), column in zip(self._fields, columns, strict=True)}
        if self._heaps is not None:  # the gather read their index entries: now their rows
            names = [name for name in self._heaps.by_name if name not in undecoded] if undecoded else None
            self._heaps.decode(batch, steps, self._committed.payload, self.writable, names,
                               prefetch=self._heap_prefetch())
        batch["step_id"] = steps
        return batch

    def _heap_prefetch(self) -> bool:
        """Whether to ask for the heap bytes of gathered rows at once: cold reads forced on, or
        in "auto" mode switched on, or heaps larger than the memory available (coldread.py)."""
        mode = self.cold_reads.mode
        if mode != "auto":
            return mode == "on"
        if self._heaps_exceed_memory is None:
            available = available_memory_nbytes()
            self._heaps_exceed_memory = available is not None and self._heaps is not None \
                and self._heaps.nbytes > available
        return self.cold_reads.active or self._heaps_exceed_memory

    def _read_heap_fields(self, names: list[str], steps: np.ndarray) -> dict[str, np.ndarray]:
        """The rows of heap fields ``names`` at ``steps`` (n-step and derived next observations)."""
        assert self._heaps is not None
        return self._heaps.read(names, steps, self._committed.payload, self.writable, self._heap_prefetch())

    def _stale(self, steps: np.ndarray) -> np.ndarray | None:
        """Readers: which gathered steps the writer may have overwritten meanwhile."""
        if self.writable:
            return None
        before = self._committed.tail
        self._refresh()
        if self._heaps is not None:
            self._check_bad_heap_rows()
        if self._committed.tail == before:
            return None
        return steps < self._committed.tail

    def _check_bad_heap_rows(self) -> None:
        """Rows whose heap entries failed their checks in the gather must have been overwritten
        by the writer meanwhile (their steps now below the tail); any other is damage."""
        assert self._heaps is not None
        bad = self._heaps.take_bad_steps()
        if bad is not None and (bad >= self._committed.tail).any():
            step = int(bad[bad >= self._committed.tail][0])
            raise CorruptStoreError(f"{self.path}: the heap bytes of step {step} do not match its index entry "
                                    "although no writer replaced them; the pool is damaged: run `expstore verify`")

    def verify(self, progress=None):
        """Check the pool's integrity; returns a report with ``ok`` and ``findings``.

        Checks the commit record (both slots), the committed window, that every file is
        preallocated, leftovers of interrupted creates, and, for pools created with
        ``checksums=True``, every committed row against the checksums recorded at commit.
        ``progress``, if given, is called with the number of chunks just checked.
        """
        self._check_open()
        if self.writable:
            with self._write_lock:
                self._wait_for_commit()  # the record on disk is then the writer's newest
        return call_hook("verify", self, progress)

    def stats(self, *, duplicates: bool = False) -> dict:
        """Rows, window, and the age distribution of the pool (in steps, and in policy
        versions when rows carry a ``policy_version`` field); with ``duplicates``, also exact
        duplicate transitions and observation clusters. One bounded-memory pass; see inspect/age.py."""
        self._check_open()
        return call_hook("stats", self, duplicates)

    # ------------------------------------------------------------------ life cycle
    def close(self) -> None:
        """Commit (durably, unless the store was opened with fsync=False) and release the pool."""
        if self._closed:
            return
        forked = os.getpid() != self._owner_pid
        if self._idle_committer is not None:
            self._idle_committer.stop()
        try:
            if self.writable and self._layout is not None and not forked:
                with self._write_lock:
                    self._wait_for_commit()  # raises what made a commit on its way fail
                    if self._failure is None:
                        self._commit(self._policy.fsync)
        finally:
            self._closed = True
            if self._pipeline is not None and not forked:  # a child has no thread of the parent's
                self._pipeline.stop()
            self._disarm_append()
            self._release_views()
            if self._maps is not None:
                self._maps.close()
            if self._lock is not None and not forked:  # the lock belongs to the parent
                self._lock.release(remove=not os.path.exists(self.path))  # no pool was ever created
            _open_writers.discard(self)

    def _release_views(self) -> None:
        """Drop this store's own views of the mappings, so that closing unmaps the files; a view
        a caller still holds keeps its mapping alive instead (see mapping.py)."""
        self._views, self._row_specs, self._row_loop = [], [], []
        self._keeping = None
        self._batches = None
        self._stage = None  # rows still staged here were never committed: a crash would lose them too
        self.__dict__.pop("append", None)
        self.cold_reads = ColdReads(self.cold_reads.mode)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        self._finalizing = True
        try:
            self.close()
        except Exception:  # nothing can be raised from a finaliser
            logger.exception("closing %s at garbage collection failed", self.path)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedStoreError(f"{self.path} was closed; open it again with expstore.open")

    def _check_writable(self) -> None:
        self._check_open()
        if not self.writable:
            raise ReadOnlyError(f"{self.path} is open read-only; open it with mode='a' or 'r+' to write")
        if self._failure is not None:
            if self._pipeline is not None:
                self._pipeline.raise_failure()  # a background sync's OSError first, as a commit in place raises it
            raise ExpstoreError(f"{self.path}: an earlier write failed ({self._failure}); "
                                "close and reopen the pool, it recovers from the last commit")
        if os.getpid() != self._owner_pid:
            raise ReadOnlyError(f"{self.path}: this writer handle was inherited across fork; only the process "
                                "that opened it may write. Open the pool with mode='r' in the child")

    def _names_error(self, mapping: Mapping[str, Any]) -> SchemaError:
        missing = [n for n in self._names if n not in mapping]
        extra = [str(n) for n in mapping if n not in self._names]
        parts = ([f"missing {missing}"] if missing else []) + ([f"unknown {extra}"] if extra else [])
        return SchemaError(f"fields do not match the pool's schema: {', '.join(parts)}; "
                           f"the pool stores {list(self._names)}")

    # Read-only surface for the layers above ----------------------------------------------
    # What verify, convert, carry, streaming and the recorder read of an open pool, so that
    # no module outside the core reaches into the attributes above (tests/test_layers.py).

    @property
    def layout(self) -> Layout | None:
        """Where the pool's arrays and commit record live (None before the first write of a
        pool opened without a schema)."""
        return self._layout

    @property
    def window(self) -> tuple[int, int]:
        """The committed window ``(first_step_id, next_step_id)``, taken together (a reader
        polls for a newer commit first; a writer sees its own rows)."""
        return self._window()

    @property
    def commit_record(self) -> commit.CommitRecord:
        """The commit record this handle's ``window`` was last taken from: read ``window`` first
        for the newest (a reader polls there), then this record matches it. A writer's is the
        newest on disk: an automatic commit still on its way there is not yet this record."""
        return self._durable

    @property
    def mapped(self) -> MappedPool | None:
        """The pool's memory maps: every array by name, the commit slots, the checksum table."""
        self._drain()
        return self._maps

    @property
    def field_views(self) -> list[np.ndarray]:
        """The user fields' mapped arrays in schema order, indexed by slot."""
        self._drain()
        return self._views

    def heap_usage(self) -> dict[str, dict]:
        """Per ragged or compressed field: its codec, heap size, the bytes the window spans in
        it, and the bytes its rows take stored and raw (``ratio`` = raw / stored). Empty for a
        pool without such fields."""
        low, high = self._window()
        if self._heaps is None:
            return {}
        return self._heaps.usage(low, high, self._committed.payload, self.writable)

    def check_heaps(self, progress: Callable[[int], None] | None = None) -> tuple[int, list[str]]:
        """``verify``'s check of the heap fields over the committed window (core/heap.py):
        (rows whose bytes matched a recorded crc32, findings). Rows a writer evicted meanwhile
        are not reported. ``progress`` is called with 1 per block of rows checked."""
        if self._heaps is None:
            return 0, []
        record = self._committed
        # A writer's live window runs past its last commit, whose heap positions the check
        # compares the rows with: its own verify checks what that commit covers.
        low, high = (record.tail, record.head) if self.writable else self._window()
        checked, findings = self._heaps.check(low, high, record.payload, progress)
        if findings and self._window()[0] > low:  # a writer moved on: look again at what is still there
            low, high = self._window()
            checked, findings = self._heaps.check(low, high, self._committed.payload, progress)
        final_table = None if self._keeping is None else self._keeping.book.final_table
        if final_table is not None and final_table.ragged:
            final_checked, final_findings = final_table.check()
            checked, findings = checked + final_checked, findings + final_findings
        return checked, findings

    @property
    def ring(self) -> Ring:
        """The step-id/slot arithmetic of the pool's ring."""
        return self._ring

    @property
    def bookkeeping(self) -> Bookkeeping | None:
        """The episode book and priorities (None for a pool created without them)."""
        self._drain()
        return self._keeping

    @property
    def creates_on_first_write(self) -> Any:
        """How a pool opened without a schema is created at its first write (its options, such as
        ``derive_next_obs``, as attributes; core/opening.py), or None once it has a schema."""
        return self._create if self._layout is None else None

    def create_with_schema(self, schema: Schema) -> None:
        """Create a pool opened without a schema now, with ``schema`` (as its first write would)."""
        self._check_writable()
        if self._layout is not None:
            raise SchemaError(f"{self.path} already has a schema; create_with_schema is for a pool opened "
                              "without one")
        self._attach(self._create(schema))

    def gather(self, steps: np.ndarray) -> dict[str, np.ndarray]:
        """The rows of ``steps`` as the slots hold them now, plus ``step_id``, not checked against
        the window: the caller reads the window again afterwards to drop rows overwritten meanwhile."""
        return self._gather(steps)

    def damaged_heap_rows(self, steps: np.ndarray) -> np.ndarray:
        """Which of ``steps``, just gathered, have a heap row that is not as written: it failed its
        index checks or its decoding in the gathers since the last call (``gather`` returns it as
        zeros), or, with ``checksums=True``, its bytes fail their crc32. A row that a writer
        overwrote meanwhile may be among them: the caller reads the window again afterwards."""
        steps = np.asarray(steps, np.int64)
        if self._heaps is None:
            return np.zeros(len(steps), bool)
        failed = self._heaps.take_bad_steps()
        damaged = np.zeros(len(steps), bool) if failed is None else np.isin(steps, failed)
        for heap in self._heaps.fields:
            if heap.checksums:
                damaged |= heap.check_crcs(steps % heap.slots)
        return damaged


def _not_a_mapping(method: str, value: Any) -> SchemaError:
    example = "{'obs': obs, 'reward': r, ...}" if method == "append" else "{'obs': obs_batch, ...}"
    return SchemaError(f"{method} takes a mapping of field name -> values, not {type(value).__name__}; "
                       f"pass a dict such as {example}")


def _check_batch_size(batch_size: Any) -> None:
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size={batch_size!r} must be a positive int (rows to draw), "
                                   "e.g. pool.sample(256)")


def _as_step_ids(step_ids: Any) -> np.ndarray:
    steps = np.asarray(step_ids).reshape(-1)
    if steps.size and steps.dtype.kind not in "iu":
        raise InvalidArgumentError(f"step ids must be integers, got {steps.dtype} values such as {steps[0]!r}; "
                                   "pass the int64 `step_id` column of a sample or episode")
    return steps.astype(np.int64, copy=False)


def _batch_length(batch: Mapping[str, Any]) -> int:
    lengths = {}
    for name, value in batch.items():
        # A list's length without np.shape, which refuses the rows of different lengths of a ragged field.
        shape = (len(value),) if isinstance(value, (list, tuple)) else getattr(value, "shape", None)
        if shape is None:
            shape = np.shape(value)
        if not shape:
            raise SchemaError(f"field {name!r} is a scalar; extend takes arrays with a leading batch dimension")
        lengths[name] = shape[0]
    if len(set(lengths.values())) > 1:
        raise SchemaError(f"batch fields have different lengths {lengths}; every field needs one row per transition")
    return next(iter(lengths.values()), 0)


def _add_weights(strategy: Sampler, view: WindowView, batch: dict[str, np.ndarray], steps: np.ndarray) -> None:
    """The strategy's importance weights of the drawn ``steps``, if it has any."""
    weights = getattr(strategy, "weights", None)
    if weights is not None:
        values = weights(view, steps)
        if values is not None:
            batch["weights"] = values


def _check_her(her: Any) -> None:
    if her is None:
        return
    if not callable(getattr(her, "relabel", None)):
        raise InvalidArgumentError(f"her={her!r} is not a relabelling: pass expstore.HER(compute_reward, ...)")


def _generator(rng: int | np.random.Generator | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _check_positive(value: Any, name: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise InvalidArgumentError(f"{name}={value!r} must be a positive int")


def _check_sampling_args(batch_size, n_step, gamma, alpha, beta) -> None:
    _check_positive(batch_size, "batch_size")
    _check_positive(n_step, "n_step")
    if not 0.0 <= float(gamma) <= 1.0:
        raise InvalidArgumentError(f"gamma={gamma!r} must lie in [0, 1]")
    if float(alpha) < 0 or float(beta) < 0:
        raise InvalidArgumentError(f"alpha={alpha!r} and beta={beta!r} must be >= 0")


_ENV_0 = frozenset({0})  # the env ids of a stage whose rows all come from env 0


def _id_summary(ids: np.ndarray) -> str:
    return "none" if not len(ids) else f"{int(ids.min())}..{int(ids.max())}"

def _forbid_writes_after_fork() -> None:
    """A forked child inherits writer objects but not the right to write: re-arm the checks."""
    for store in list(_open_writers):
        store._disarm_append()
        # The parent's staged rows and deferred bookkeeping are the parent's to write: the child's
        # handle forgets them and shows the committed rows, so that no read of the child's drains
        # them into the maps it shares with the parent (which may have written past them since).
        store._deferred = None
        if store._stage is not None:
            store._stage.take()
        if store._pipeline is not None and store._maps is not None:
            # The parent's commit on its way is the parent's to finish: the child takes the record on
            # disk before it, and gets a pipeline of its own that nothing is pending in, so that it
            # never waits on the parent's thread (which it does not have) nor touches its lock.
            durable = store._pipeline.durable
            store._committed = durable
            store._pipeline = CommitPipeline(store._maps, durable, _ignore_failure, store.path)
        store._head = store._committed.head
        # The parent's idle-commit thread may have held the lock at the fork; it does not run
        # here, so a fresh lock lets the child's writes reach their ReadOnlyError.
        store._write_lock = threading.Lock()


os.register_at_fork(after_in_child=_forbid_writes_after_fork)


def _stop_writing_on_failure(store_ref: weakref.ref) -> Callable[[BaseException], None]:
    """What the commit pipeline's thread does when a background sync fails: the writer refuses
    every write from then on, its hot path included (the error itself reaches it at its next call).
    A weak reference: the thread must not keep a forgotten store alive."""
    def stop_writing(failure: BaseException) -> None:
        store = store_ref()
        if store is not None:
            store._failure = failure
            store._disarm_append()
    return stop_writing


def _ignore_failure(failure: BaseException) -> None:
    """A forked child's pipeline never syncs anything."""


@atexit.register
def _commit_open_writers() -> None:
    """A normal interpreter exit commits what every still-open writer appended."""
    for store in list(_open_writers):
        try:
            store.close()
        except Exception:  # keep closing the others
            logger.exception("committing %s at exit failed", store.path)
