"""The learner's side: start shard actors, and sample all shards as one pool.

``ShardedPool.sample`` splits the batch across the live shards in proportion to their sizes,
sends every shard its request at once and waits for all answers together: the shards gather
in parallel, each on its own node. The answers come through Ray's object store, whose numpy
arrays the learner reads in place (zero-copy); the one copy is the join into a single batch.

A shard that fails or does not answer within ``timeout_s`` is marked down with a logged
warning and its share of the batch is drawn from the others; a probe notices when Ray has
restarted it. Only when every shard is down does sampling raise ``ShardsUnavailableError``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ...core.ragged import PadValue, check_ragged
from ...errors import ClosedStoreError, InvalidArgumentError, ShardsUnavailableError
from .actor import ShardActor, ray
from .split import derive_seeds, join_parts, split_batch
from .stream import BatchStream

logger = logging.getLogger("expstore.sharding.client")  # its name before the layered layout

# A dead actor, one restarting, or a lost node: the shard is down, not the batch wrong.
_UNAVAILABLE = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.GetTimeoutError)
_START_TIMEOUT_S = 120.0


def create_shards(paths: Sequence[str | os.PathLike], *, node_ids: Sequence[str] | None = None,
                  names: Sequence[str] | None = None, max_restarts: int = -1, max_task_retries: int = -1,
                  num_cpus: float = 0, **open_options: Any) -> list:
    """Start one :class:`ShardActor` per path, each pinned to its node.

    Args:
        paths: the shard pools, each on the local disk of its node. Relative paths are made
            absolute against the caller's working directory.
        node_ids: the Ray node of each shard (``ray.nodes()[i]["NodeID"]``); default: this
            node. The pin is strict, so a restarted shard comes back on the node with its disk.
        names: optional Ray actor names, so learners elsewhere can connect by name.
        max_restarts: how often Ray restarts a dead shard (-1: without limit).
        max_task_retries: how often Ray retries a write that a dead shard did not answer
            (-1: without limit). Samples are never retried: the client draws elsewhere.
        num_cpus: CPUs each shard reserves; shards mostly wait on memory and disk.
        open_options: passed to :func:`expstore.open` in the actor (``capacity``, ``schema``,
            ``commit_every``, ...).

    Returns:
        The actor handles, in the order of ``paths``.
    """
    absolute = [os.path.abspath(os.fspath(path)) for path in paths]
    node_ids = _per_shard(node_ids, absolute, "node_ids") or [ray.get_runtime_context().get_node_id()] * len(absolute)
    names = _per_shard(names, absolute, "names") or [None] * len(absolute)
    handles = []
    for path, node_id, name in zip(absolute, node_ids, names, strict=True):
        options = {"max_restarts": max_restarts, "max_task_retries": max_task_retries, "num_cpus": num_cpus,
                   "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)}
        if name is not None:
            options.update(name=name, get_if_exists=True)
        # ray.remote made ShardActor an actor class; mypy, past the ignored overload, sees the plain class.
        handles.append(ShardActor.options(**options).remote(path, open_options))  # type: ignore[attr-defined]
    return handles


def _per_shard(values: Sequence | None, paths: Sequence[str], what: str) -> list | None:
    if values is None:
        return None
    if len(values) != len(paths):
        raise InvalidArgumentError(f"{what} has {len(values)} entries for {len(paths)} shard paths; "
                                   "give one per shard, or leave it out")
    return list(values)


class _Shard:
    """What the client knows of one shard: its handle, last length, and whether it is up."""

    def __init__(self, index: int, handle):
        self.index = index
        self.handle = handle
        self.length = 0
        self.down = False
        self.probe: ray.ObjectRef | None = None  # a pending call whose success shows the shard is back
        self.next_probe_s = 0.0


class ShardedPool:
    """Several shard actors sampled as one pool. Not thread-safe: one per learner thread.

    Args:
        shards: shard actor handles (from :func:`create_shards`) or their Ray actor names.
        rng: a seed or generator; it draws the split of each batch and the shards' seeds.
        timeout_s: a shard that has not answered a request within this time is treated as
            down for that batch (its rows come from the other shards) until it answers again.
        probe_interval_s: how often a down shard is asked whether it is back.
        owns_actors: whether ``close`` also ends the actors (True for :meth:`create`).
    """

    def __init__(self, shards: Sequence, *, rng: int | np.random.Generator | None = None, timeout_s: float = 5.0,
                 probe_interval_s: float = 0.5, owns_actors: bool = False):
        if not shards:
            raise InvalidArgumentError("a sharded pool needs at least one shard; pass actor handles or names")
        handles = [ray.get_actor(shard) if isinstance(shard, str) else shard for shard in shards]
        self._shards = [_Shard(index, handle) for index, handle in enumerate(handles)]
        self._rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.timeout_s = float(timeout_s)
        self.probe_interval_s = float(probe_interval_s)
        self._owns_actors = owns_actors
        self._closed = False
        self._refresh_lengths(_START_TIMEOUT_S)  # the first call also waits for the actors to start

    @classmethod
    def create(cls, paths: Sequence[str | os.PathLike], *, rng: int | np.random.Generator | None = None,
               timeout_s: float = 5.0, **shard_options: Any) -> ShardedPool:
        """Start shard actors (see :func:`create_shards` for the options) and connect to them."""
        return cls(create_shards(paths, **shard_options), rng=rng, timeout_s=timeout_s, owns_actors=True)

    @property
    def shards(self) -> list:
        """The shard actor handles, in shard-index order."""
        return [shard.handle for shard in self._shards]

    # ------------------------------------------------------------------ sizes and state
    def lengths(self) -> list[int | None]:
        """Committed transitions of each shard; None for a shard that is down."""
        self._refresh_lengths(self.timeout_s)
        return [None if shard.down else shard.length for shard in self._shards]

    def __len__(self) -> int:
        """Committed transitions in the shards that are up."""
        return sum(length for length in self.lengths() if length is not None)

    def shard_states(self) -> list[str]:
        """``"up"`` or ``"down"`` for each shard, as the last request found it."""
        return ["down" if shard.down else "up" for shard in self._shards]

    def info(self) -> list[dict[str, Any] | None]:
        """Each shard's path, node, host, pid and length; None for a shard that is down."""
        answers = self._ask({shard.handle.info.remote(): shard for shard in self._live()}, self.timeout_s)
        return [answers.get(shard.index) for shard in self._shards]

    def _refresh_lengths(self, timeout_s: float) -> None:
        self._check_open()
        for shard in self._shards:
            self._check_probe(shard)
        answers = self._ask({shard.handle.length.remote(): shard for shard in self._live()}, timeout_s)
        for index, length in answers.items():
            self._shards[index].length = int(length)

    # ------------------------------------------------------------------ sampling
    def sample(self, batch_size: int, *, n_step: int = 1, gamma: float = 0.99, ragged: str = "pad",
               pad_value: PadValue = 0) -> dict[str, Any]:
        """A batch from all shards in proportion to their sizes, plus ``shard`` and ``step_id``.

        Each shard draws its share with :meth:`expstore.Store.sample` (``n_step``, ``gamma``,
        ``ragged`` and ``pad_value`` work the same, within the shard; a padded ragged field is
        widened to the longest row of the whole batch) from its committed rows. ``(shard,
        step_id)`` names each row. Shards that are down are left out, with a logged warning.

        Raises:
            ShardsUnavailableError: every shard is down.
            EmptyStoreError: the shards that are up hold no committed row.
        """
        return self._draw("sample", batch_size, _options(ragged, pad_value, n_step=n_step, gamma=gamma))

    def sample_sequences(self, batch_size: int, length: int, *, full_only: bool = False, ragged: str = "pad",
                         pad_value: PadValue = 0) -> dict[str, Any]:
        """Windows of ``length`` rows of one episode each (see :meth:`expstore.Store.sample_sequences`),
        drawn from the shards in proportion to their sizes; ``shard`` has one entry per window."""
        return self._draw("sample_sequences", batch_size,
                          _options(ragged, pad_value, length=length, full_only=full_only))

    def _draw(self, method: str, batch_size: int, options: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise InvalidArgumentError(f"batch_size={batch_size!r} must be a positive int")
        parts, missing = [], int(batch_size)
        for _ in range(len(self._shards) + 2):  # each retry round has lost a shard or learnt a length
            parts += self._draw_round(method, missing, options)
            missing = int(batch_size) - sum(len(batch["step_id"]) for _, batch in parts)
            if missing == 0:
                return join_parts(parts, options.get("pad_value", 0))
        raise ShardsUnavailableError(f"only {batch_size - missing} of {batch_size} rows could be drawn: shards kept "
                                     f"failing (states {self.shard_states()}); check the shard actors' logs")

    def batches(self, batch_size: int, *, n_step: int = 1, gamma: float = 0.99, per_request: int = 32,
                in_flight: int = 2, ragged: str = "pad", pad_value: PadValue = 0) -> BatchStream:
        """An endless iterator of batches as :meth:`sample` draws them, several per Ray round trip.

        Each shard is asked for the rows of ``per_request`` batches at once (one ``Store.sample``
        call, so one snapshot of its committed window), and ``in_flight`` such requests are kept
        outstanding per shard, so the round trip is paid once per ``per_request`` batches and
        overlaps the caller's work. Memory: about ``in_flight * per_request`` batches in the
        object store. See :class:`~expstore.integrations.sharding.stream.BatchStream`.

        Example::

            with pool.batches(256) as stream:
                for _, batch in zip(range(updates), stream):
                    agent.update(batch)
        """
        self._check_open()
        options = _options(ragged, pad_value, n_step=n_step, gamma=gamma)
        return BatchStream(_StreamRequests(self), "sample", batch_size, options, per_request, in_flight)

    def sequence_batches(self, batch_size: int, length: int, *, full_only: bool = False, per_request: int = 32,
                         in_flight: int = 2, ragged: str = "pad", pad_value: PadValue = 0) -> BatchStream:
        """:meth:`sample_sequences` as a stream, several batches per round trip (see :meth:`batches`)."""
        self._check_open()
        options = _options(ragged, pad_value, length=length, full_only=full_only)
        return BatchStream(_StreamRequests(self), "sample_sequences", batch_size, options, per_request, in_flight)

    def _sampling_shards(self) -> list[_Shard]:
        """The shards to ask for rows: those up, with their lengths learnt if none has a row yet."""
        live = self._live_or_wait()
        if not any(shard.length for shard in live):
            self._refresh_lengths(self.timeout_s)
            live = self._live_or_wait()
        return live

    def _draw_round(self, method: str, count: int, options: Mapping[str, Any]) -> list[tuple[int, dict]]:
        live = self._sampling_shards()
        counts = split_batch(self._rng, count, [shard.length for shard in live])
        seeds = derive_seeds(self._rng, len(live))
        # Every live shard is asked, even for 0 rows: its answer carries its current length.
        requests = {getattr(shard.handle, method).remote(int(rows), seed, options): shard
                    for shard, rows, seed in zip(live, counts, seeds, strict=True)}
        parts = []
        for index, (batch, length) in self._ask(requests, self.timeout_s).items():
            self._shards[index].length = int(length)
            if batch is not None:
                parts.append((index, batch))
        return parts

    # ------------------------------------------------------------------ health
    def _ask(self, requests: Mapping, timeout_s: float) -> dict[int, Any]:
        """Wait for all requests at once; answers by shard index. Shards that failed or did
        not answer in time are marked down (their pending request becomes the probe)."""
        if not requests:
            return {}
        ready, pending = ray.wait(list(requests), num_returns=len(requests), timeout=timeout_s)
        answers = {}
        for ref in ready:
            shard = requests[ref]
            try:
                answers[shard.index] = ray.get(ref)
            except _UNAVAILABLE as exc:
                self._mark_down(shard, _first_line(exc), probe=None)
        for ref in pending:
            self._mark_down(requests[ref], f"no answer within {timeout_s:g} s", probe=ref)
        return answers

    def _live(self) -> list[_Shard]:
        return [shard for shard in self._shards if not shard.down]

    def _live_or_wait(self) -> list[_Shard]:
        """The shards that are up; if none, wait up to ``timeout_s`` for one to come back."""
        for shard in self._shards:
            self._check_probe(shard)
        live = self._live()
        if live:
            return live
        probes = [shard.probe for shard in self._shards if shard.probe is not None]
        if probes:
            ray.wait(probes, num_returns=1, timeout=self.timeout_s)
        for shard in self._shards:
            self._check_probe(shard, reprobe=False)
        live = self._live()
        if not live:
            raise ShardsUnavailableError(
                f"all {len(self._shards)} shards are down (none answered within {self.timeout_s:g} s); "
                "Ray restarts shards that have restarts left: retry later, or check the actors' logs")
        return live

    def _mark_down(self, shard: _Shard, reason: str, probe) -> None:
        if not shard.down:
            others = len(self._live()) - 1
            logger.warning("shard %d is down (%s); sampling from the %d other shard(s) until it is back",
                           shard.index, reason, others)
        shard.down = True
        shard.probe = probe
        shard.next_probe_s = time.monotonic() + self.probe_interval_s

    def _check_probe(self, shard: _Shard, reprobe: bool = True) -> None:
        """A down shard whose probe succeeded is up again; a failed probe is sent again later."""
        if not shard.down:
            return
        if shard.probe is None:
            if reprobe and time.monotonic() >= shard.next_probe_s:
                shard.probe = shard.handle.length.remote()
            return
        ready, _ = ray.wait([shard.probe], timeout=0)
        if not ready:
            return
        try:
            answer = ray.get(ready[0])
        except _UNAVAILABLE:
            shard.probe = None
            shard.next_probe_s = time.monotonic() + self.probe_interval_s
            return
        shard.length = int(answer[1] if isinstance(answer, tuple) else answer)
        shard.down, shard.probe = False, None
        logger.warning("shard %d is back with %d committed transitions", shard.index, shard.length)

    # ------------------------------------------------------------------ writes and life cycle
    def flush(self, fsync: bool | None = None) -> list[int | None]:
        """Commit every shard; returns their committed lengths (None for a shard that is down).

        Waits for each shard (a shard running a co-located loop commits when the loop returns).
        """
        self._check_open()
        return self._call_each(lambda handle: handle.flush.remote(fsync))

    def close(self) -> None:
        """Commit and close every shard's pool; end the actors if this client started them."""
        if self._closed:
            return
        self._call_each(lambda handle: handle.close.remote())
        if self._owns_actors:
            for shard in self._shards:
                ray.kill(shard.handle, no_restart=True)
        self._closed = True

    def _call_each(self, call) -> list:
        refs = [call(shard.handle) for shard in self._shards]
        results = []
        for shard, ref in zip(self._shards, refs, strict=True):
            try:
                results.append(ray.get(ref))
            except _UNAVAILABLE as exc:
                self._mark_down(shard, _first_line(exc), probe=None)
                results.append(None)
        return results

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedStoreError("this sharded pool was closed; connect again with ShardedPool(shards)")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _StreamRequests:
    """A stream's view of its pool (stream.ShardRequests): the pool's own sampling steps."""

    def __init__(self, sharded: ShardedPool):
        self._of = sharded
        self.rng = sharded._rng

    def live(self) -> list[_Shard]:
        return self._of._sampling_shards()

    def ask(self, requests: Mapping) -> dict[int, Any]:
        return self._of._ask(requests, self._of.timeout_s)

    def draw(self, method: str, count: int, options: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self._of._draw(method, count, options)


def _options(ragged: str, pad_value: PadValue, **options: Any) -> dict[str, Any]:
    """A shard request's sampling options; ``ragged`` and ``pad_value`` checked here, before any
    shard is asked (a shard checks them against its fields too)."""
    check_ragged(ragged, pad_value)
    return {**options, "ragged": ragged, "pad_value": pad_value}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]

