"""The shard actor: one Ray actor owns one pool on its node's local disk.

The actor holds two handles on its pool: the writer (mode ``"a"``), used by appends, flushes
and co-located environment loops, and a reader (mode ``"r"``), used by learners' samples.
They run in two Ray concurrency groups, one thread each, so a learner's sample never waits
behind an append, and a learner only ever sees committed rows: rows that a crash can lose
were never handed out.

When Ray restarts the actor (``max_restarts``), it runs ``__init__`` again with the same
arguments: the pool is reopened from disk in mode ``"a"`` with everything committed, and the
actor logs how many transitions it found. The kernel drops a dead writer's lock at once
(core/lock.py), so the reopen does not wait for it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

try:
    import ray
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("expstore.sharding's Ray actors need Ray: pip install 'expstore[ray]'") from exc

from ...core.opening import open as open_pool
from ...core.store import Store
from ...errors import InvalidArgumentError, StoreLockedError

logger = logging.getLogger("expstore.sharding.actor")  # its name before the layered layout

WRITE_GROUP = "write"
READ_GROUP = "read"
_LOCK_WAIT_S = 10.0


# Ray's typed overloads of ray.remote omit the concurrency_groups option it accepts for actors.
@ray.remote(concurrency_groups={WRITE_GROUP: 1, READ_GROUP: 1})  # type: ignore[call-overload]
class ShardActor:
    """Owns one shard pool. Create it with :func:`expstore.sharding.create_shards`.

    Args:
        path: the pool on this node's local disk; opened in mode ``"a"`` (created if missing).
        open_options: passed to :func:`expstore.open` (``capacity``, ``schema``,
            ``commit_every``, ``commit_interval_s``, ``fsync``, ...).
    """

    def __init__(self, path: str, open_options: Mapping[str, Any]):
        self.path = path
        self._writer = _open_writer(path, dict(open_options))
        self._reader: Store | None = None
        # What the pool already holds says that this is a restart (or a pool an earlier run left).
        # Ray's was_current_actor_reconstructed would ask the cluster, but it reads the deprecated
        # RuntimeContext.actor_id and so printed a RayDeprecationWarning in every shard actor.
        if self._writer.next_step_id:
            logger.info("shard %s opened on %s (pid %d) with %d committed transitions already in it",
                        path, socket.gethostname(), os.getpid(), self._writer.next_step_id)

    # ------------------------------------------------------------------ writing (one thread)
    @ray.method(concurrency_group=WRITE_GROUP)
    def extend(self, batch: Mapping[str, Any], first_step_id: int | None = None, env_ids=None) -> int:
        """Append a batch (field -> rows); returns the shard's next step id afterwards.

        With ``first_step_id`` (the step id the caller means the first row to get) a call is
        exactly-once across restarts: rows the shard already holds are skipped (a retry of a
        call whose reply was lost), and if the shard holds fewer rows than ``first_step_id``
        (its uncommitted rows died with a killed actor) nothing is written. Either way the
        caller continues from the returned step id.
        """
        next_step = self._writer.next_step_id
        if first_step_id is None:
            self._writer.extend(batch, env_ids=env_ids)
            return self._writer.next_step_id
        skip = next_step - int(first_step_id)
        if skip < 0:
            return next_step
        rows = {name: values[skip:] for name, values in batch.items()}
        if len(next(iter(rows.values()), ())):
            self._writer.extend(rows, env_ids=None if env_ids is None else np.asarray(env_ids)[skip:])
        return self._writer.next_step_id

    @ray.method(concurrency_group=WRITE_GROUP)
    def append(self, transition: Mapping[str, Any], env_id: int = 0) -> int:
        """Append one transition; returns the shard's next step id."""
        self._writer.append(transition, env_id=env_id)
        return self._writer.next_step_id

    @ray.method(concurrency_group=WRITE_GROUP)
    def flush(self, fsync: bool | None = None) -> int:
        """Commit every appended row; returns the committed length of the shard."""
        self._writer.flush(fsync)
        return len(self._writer)

    @ray.method(concurrency_group=WRITE_GROUP)
    def run(self, loop: Callable[..., Any], *args, **kwargs) -> Any:
        """Run ``loop(pool, *args, **kwargs)`` in this actor, with the writer handle.

        This is the co-located mode: an environment loop that appends straight into the pool,
        with no object-store transfer per batch. Other writes through the actor wait until it
        returns; samples do not. If the actor is restarted, Ray runs the call again (with
        ``max_task_retries``): write the loop to resume from ``pool.next_step_id``.
        """
        return loop(self._writer, *args, **kwargs)

    @ray.method(concurrency_group=WRITE_GROUP)
    def close(self) -> None:
        """Commit and close the pool; the actor serves nothing afterwards."""
        self._writer.close()
        if self._reader is not None:
            self._reader.close()

    # ------------------------------------------------------------------ reading (one thread)
    @ray.method(concurrency_group=READ_GROUP, max_task_retries=0)
    def sample(self, count: int, seed: int, options: Mapping[str, Any]) -> tuple[dict | None, int]:
        """``count`` committed rows drawn by ``Store.sample(**options)``, and the shard's length."""
        return self._draw(count, lambda reader: reader.sample(count, rng=seed, **options))

    @ray.method(concurrency_group=READ_GROUP, max_task_retries=0)
    def sample_sequences(self, count: int, seed: int, options: Mapping[str, Any]) -> tuple[dict | None, int]:
        """``count`` windows drawn by ``Store.sample_sequences(**options)``, and the shard's length."""
        return self._draw(count, lambda reader: reader.sample_sequences(count, rng=seed, **options))

    @ray.method(concurrency_group=READ_GROUP, max_task_retries=0)
    def length(self) -> int:
        """Committed transitions in the shard."""
        reader = self._ensure_reader()
        return 0 if reader is None else len(reader)

    @ray.method(concurrency_group=READ_GROUP, max_task_retries=0)
    def info(self) -> dict[str, Any]:
        """Where the shard lives and how full it is: path, node, host, pid, length, next step id."""
        reader = self._ensure_reader()
        return {"path": self.path, "node_id": ray.get_runtime_context().get_node_id(),
                "host": socket.gethostname(), "pid": os.getpid(),
                "length": 0 if reader is None else len(reader),
                "next_step_id": 0 if reader is None else reader.next_step_id}

    def _draw(self, count: int, draw) -> tuple[dict | None, int]:
        reader = self._ensure_reader()
        length = 0 if reader is None else len(reader)
        if count <= 0 or length == 0:
            return None, length
        return draw(reader), length

    def _ensure_reader(self) -> Store | None:
        """The read-only handle, opened once the pool exists (a pool without a schema is
        created by its first write)."""
        if self._reader is None and os.path.exists(self.path):
            self._reader = open_pool(self.path, "r")
        return self._reader


def _open_writer(path: str, open_options: dict) -> Store:
    """Open the pool for writing; wait briefly for the lock of a predecessor still exiting."""
    if "mode" in open_options:
        raise InvalidArgumentError(f"a shard always opens its pool in mode 'a'; drop mode={open_options['mode']!r}")
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            return open_pool(path, "a", **open_options)
        except StoreLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)  # the lock is a flock: it is free once the old process is gone
