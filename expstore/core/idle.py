"""Time-based commits for a writer that stopped appending.

A writer checks ``commit_interval_s`` inside ``append``/``extend``, which costs nothing on the
hot path but would leave the last rows uncommitted for as long as the env loop pauses (an
update phase, a slow evaluation, a hung simulator). One daemon thread per writer closes that
gap: it wakes every interval and commits rows that have waited longer than the interval. It
takes the store's write lock, so it never commits half of an append.
"""

from __future__ import annotations

import logging
import threading
import weakref

logger = logging.getLogger("expstore.idle")  # its name before the layered layout


class IdleCommitter:
    """Commits a writer's pending rows when no write did for ``interval_s`` seconds."""

    def __init__(self, store, interval_s: float):
        self._store = weakref.ref(store)  # the thread must not keep a forgotten store alive
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"expstore-idle-commit {store.path}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            store = self._store()
            if store is None:
                return
            try:
                store._commit_if_idle()
            except Exception:  # the store keeps the failure; its writer sees it at the next write
                logger.exception("%s: the time-based commit of an idle writer failed", store.path)
                return
            del store

    def stop(self) -> None:
        self._stop.set()
