"""Making commit records durable, on the writer's thread or on a thread of its own.

A commit with fsync costs the writer two ``fdatasync`` calls (the rows, then the record's slot):
a few milliseconds per 10,000 Pendulum rows here, the whole difference between default commits
and ``fsync=False`` in tools/bench_core.py's single appends. The writer's automatic commits
(every ``commit_every`` rows or ``commit_interval_s`` seconds) hand that part to one background
thread instead: the writer computes the record as before (window, episode payload, checksums,
all on its own thread, from the previous record), and the thread syncs the rows, writes the
record into its slot and syncs the slot, in the order of DESIGN.md section 4, while the writer
appends the next rows. ``fdatasync`` releases the GIL.

What keeps this as crash safe as a commit made in place:

- One record at most is on its way (``pending``); the writer waits for it before it computes
  the next, so records reach their slots in order, and record N + 1 (in the slot of N - 1) is
  written only once N is durable: a torn write of N + 1 always leaves N.
- Until the pending record is durable, the newest record on disk is the one before it
  (``durable``), and the writer writes no row at or past ``durable.head + slack``: the slots
  it writes hold steps that record evicted, as the slack rule of a synchronous writer has it
  (core/ring.py), and the episode table, the checksums and the deferred bookkeeping, which
  rely on the same bound, see no other writer than before (Store._wait_for_room).
- A failed sync is not retried (DESIGN.md section 4): the thread stops, the writer is told at
  once (``on_failure``: it refuses further writes) and the error itself is raised to the writer
  by its next call (``wait`` or ``raise_failure``), once.

The thread never takes the writer's lock, and the writer holds it while it waits here, so the
two cannot wait on each other. The store is kept alive while a record of its is pending, so that
it is never finalised (and its maps closed) under the thread, nor on the thread while the
thread's own work is unfinished.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from .commit import CommitRecord
from .mapping import MappedPool

logger = logging.getLogger(__name__)


class CommitPipeline:
    """The commit records of one writer on their way to the disk; at most one pending."""

    def __init__(self, maps: MappedPool, durable: CommitRecord, on_failure: Callable[[BaseException], None],
                 path: str = ""):
        self._maps = maps
        self._path = path
        self.durable = durable  # the newest record in its slot (synced too, when commits sync)
        self.pending: CommitRecord | None = None
        self._owner: Any = None  # the store, kept alive while its record is pending
        self._on_failure = on_failure
        self._failure: BaseException | None = None
        self._failure_raised = False
        self._stopping = False
        self._changed = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None

    @property
    def failure(self) -> BaseException | None:
        """The error a background sync raised, if one did: no record is written after it."""
        return self._failure

    def commit_now(self, record: CommitRecord, fsync: bool, parallel: bool = True) -> None:
        """Make ``record`` durable on the caller's thread (``wait`` first). An OSError is the caller's."""
        _make_durable(self._maps, record, fsync, parallel)
        self.durable = record

    def submit(self, record: CommitRecord, owner: Any) -> bool:
        """Hand ``record`` (synced) to the background thread and return True (``wait`` first).
        False, with nothing pending, where no thread could be started (a process at its thread
        limit, an interpreter shutting down): the caller then makes it durable in place."""
        with self._changed:
            if self.pending is not None or self._failure is not None or self._stopping:
                raise RuntimeError("a commit was handed on while another is pending, after a failure, or after "
                                   "close; wait() first")
            if self._thread is None:
                thread = threading.Thread(target=self._run, name=f"expstore-commit {self._path}", daemon=True)
                try:
                    thread.start()  # before anything is pending: a record no thread will take would hang wait()
                except RuntimeError:
                    return False
                self._thread = thread
            self.pending, self._owner = record, owner
            self._changed.notify_all()
        return True

    def wait(self) -> None:
        """Return once no record is pending. The first call after a background sync failed
        raises that error (later calls return: the writer refuses writes by then)."""
        if self.pending is not None:
            with self._changed:
                while self.pending is not None:
                    self._changed.wait()
        if self._failure is not None and not self._failure_raised:
            self._failure_raised = True
            raise self._failure

    def raise_failure(self) -> None:
        """Raise the background sync's error if no call raised it yet."""
        if self._failure is not None and not self._failure_raised:
            self._failure_raised = True
            raise self._failure

    def stop(self) -> None:
        """Let the thread end (after ``wait``). The caller may be the thread itself: a store whose
        last reference the thread let go of is closed there."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                while self.pending is None and not self._stopping:
                    self._changed.wait()
                if self.pending is None:
                    return
                record = self.pending
            failure = None
            try:
                _make_durable(self._maps, record, fsync=True, parallel=True)
            except BaseException as exc:  # whatever stopped the sync, the record is not durable
                failure = exc
            if failure is not None:
                self._fail(failure, record)
                return
            with self._changed:
                self.durable = record
                self.pending = None
                owner, self._owner = self._owner, None
                self._changed.notify_all()
            del owner  # outside the lock: letting the store go may close it, on this thread

    def _fail(self, failure: BaseException, record: CommitRecord) -> None:
        logger.error("%s: making commit %d (head %d) durable failed: %s; the writer stops writing and a reopen "
                     "recovers from commit %d", self._path, record.seq, record.head, failure, self.durable.seq)
        with self._changed:
            self._failure = failure
            owner, self._owner = self._owner, None
        try:
            self._on_failure(failure)  # before the waiters wake: they must find the writer stopped
        finally:
            with self._changed:
                self.pending = None
                self._changed.notify_all()
        del owner


def _make_durable(maps: MappedPool, record: CommitRecord, fsync: bool, parallel: bool) -> None:
    if fsync:
        maps.sync_data(parallel=parallel)  # rows reach the disk before the record that exposes them
    maps.write_commit(record)
    if fsync:
        maps.sync_commit()
