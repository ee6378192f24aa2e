"""A stream of batches from shard actors: several batches per Ray round trip, several trips in flight.

A Ray round trip costs about a millisecond, far more than gathering a batch of small rows, so a
learner that asks for one batch per trip waits on the network. :class:`BatchStream` asks each
shard for the rows of ``per_request`` batches at once: the shard draws them with one
``Store.sample`` call, so from one snapshot of its committed window, and answers with one reply
(one transfer, one deserialisation). The stream keeps ``in_flight`` such requests outstanding
per shard, so the shards gather the next batches while the learner trains on these.

Each batch is split across the shards exactly as ``ShardedPool.sample`` splits it (a
multinomial draw over the shards' committed lengths, per batch), so a batch from the stream has
the distribution of a ``sample`` call. The lengths a request is split by are those the shards
reported with their last answers, up to ``in_flight`` requests old.

A shard that fails or does not answer within ``timeout_s`` is marked down as for ``sample``; the
rows it owed are drawn from the shards still up, and it is left out of later requests until its
probe says it is back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, Self

import numpy as np

from ...core.ragged import PadValue, join_batches, take_rows
from ...errors import ClosedStoreError, InvalidArgumentError
from .split import SHARD_KEY, derive_seeds, split_rounds

_MAX_IN_FLIGHT = 64
_MAX_PER_REQUEST = 4096


class ShardRequests(Protocol):
    """What a stream asks of its pool (client.py's ``_StreamRequests``)."""

    rng: np.random.Generator

    def live(self) -> list:
        """The shards to ask (objects with ``index``, ``handle``, ``length``, ``down``)."""

    def ask(self, requests: Mapping) -> dict[int, Any]:
        """The answers of ``requests`` (Ray ref -> shard) by shard index; the others marked down."""

    def draw(self, method: str, count: int, options: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``count`` rows drawn as ``ShardedPool.sample`` draws them (with its retries)."""


class _Request:
    """One request to every live shard: the rows of ``counts.shape[0]`` batches, split by ``counts``."""

    def __init__(self, refs: dict, shards: list, counts: np.ndarray):
        self.refs = refs  # Ray object ref -> shard
        self.shards = shards  # the shards asked, in the column order of counts
        self.counts = counts  # [batches, shards asked] rows of each batch from each shard


class BatchStream(Iterator[dict[str, np.ndarray]]):
    """An iterator of batches drawn from a :class:`ShardedPool`; make it with ``pool.batches(...)``.

    The stream reaches the pool through ``requests``, a :class:`ShardRequests` view of it that
    client.py defines (it keeps the pool's state to itself; naming its class here would also
    close an import circle, so it is typed by the protocol below).

    Every batch holds ``batch_size`` rows plus ``shard`` and ``step_id``, as ``pool.sample`` returns.
    A batch from one shard is a set of views of that shard's reply (no copy); from several, one
    join. Not thread-safe; iterate it from one thread, or wrap it in ``Prefetcher(stream.__next__)``.
    ``close()`` (or leaving a ``with`` block) drops the requests still in flight.
    """

    def __init__(self, requests: ShardRequests, method: str, batch_size: int, options: Mapping[str, Any],
                 per_request: int, in_flight: int):
        _check_positive(batch_size, "batch_size", None)
        _check_positive(per_request, "per_request", _MAX_PER_REQUEST)
        _check_positive(in_flight, "in_flight", _MAX_IN_FLIGHT)
        self._shards = requests
        self._method = method
        self._batch_size = int(batch_size)
        self._options = dict(options)
        self._per_request = int(per_request)
        self._in_flight = int(in_flight)
        self._requests: deque[_Request] = deque()
        self._ready: deque[dict[str, np.ndarray]] = deque()
        self._closed = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._closed:
            raise ClosedStoreError("this batch stream was closed; start another with pool.batches(...)")
        if not self._ready:
            self._top_up()
            self._ready.extend(self._collect(self._requests.popleft()))
            self._top_up()  # the shards work on the next requests while the caller uses these
        return self._ready.popleft()

    def _top_up(self) -> None:
        while len(self._requests) < self._in_flight:
            self._requests.append(self._submit())

    def _submit(self) -> _Request:
        live = self._shards.live()
        rng = self._shards.rng
        counts = split_rounds(rng, self._per_request, self._batch_size, [shard.length for shard in live])
        seeds = derive_seeds(rng, len(live))
        totals = counts.sum(axis=0)
        # Every live shard is asked, even for 0 rows: its answer carries its current length.
        refs = {getattr(shard.handle, self._method).remote(int(rows), seed, self._options): shard
                for shard, rows, seed in zip(live, totals, seeds, strict=True)}
        return _Request(refs, live, counts)

    def _collect(self, request: _Request) -> list[dict[str, np.ndarray]]:
        """The batches of one request; rows a shard that went down owed are drawn from the others."""
        # A shard marked down since this request went out owes its rows at once: no second wait.
        waiting = {ref: shard for ref, shard in request.refs.items() if not shard.down}
        answers = self._shards.ask(waiting)
        pieces: list[list[tuple[int, dict]]] = [[] for _ in range(len(request.counts))]
        owed = np.zeros(len(request.counts), np.int64)
        for column, shard in enumerate(request.shards):
            counts = request.counts[:, column]
            answer = answers.get(shard.index)
            if answer is not None:
                shard.length = int(answer[1])
            reply = None if answer is None else answer[0]
            if reply is None or len(reply["step_id"]) != counts.sum():
                owed += counts  # down, or emptied since the split: its rows come from the others
                continue
            starts = np.concatenate(([0], np.cumsum(counts)))
            for index in np.flatnonzero(counts):
                part = slice(int(starts[index]), int(starts[index + 1]))
                pieces[index].append((shard.index, {name: values[part] for name, values in reply.items()}))
        if owed.any():
            self._fill_owed(pieces, owed)
        return [_join(parts, self._options.get("pad_value", 0)) for parts in pieces]

    def _fill_owed(self, pieces: list[list[tuple[int, dict]]], owed: np.ndarray) -> None:
        """Draw the rows down shards owed with ``pool``'s own retrying draw, and hand them out."""
        extra = self._shards.draw(self._method, int(owed.sum()), self._options)
        starts = np.concatenate(([0], np.cumsum(owed)))
        for index in np.flatnonzero(owed):
            part = slice(int(starts[index]), int(starts[index + 1]))
            shards = extra[SHARD_KEY][part]
            for shard_index in np.unique(shards):
                rows = np.flatnonzero(shards == shard_index)
                pieces[index].append((int(shard_index), {name: take_rows(values[part], rows)
                                                         for name, values in extra.items() if name != SHARD_KEY}))

    def close(self) -> None:
        """Drop the requests in flight (their shards finish them; nothing waits for them)."""
        self._closed = True
        self._requests.clear()
        self._ready.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _join(parts: list[tuple[int, dict]], pad_value: PadValue) -> dict[str, Any]:
    """One batch from its per-shard pieces (as ``join_parts`` joins them); a batch from one
    shard keeps the reply's memory."""
    batch = join_batches([piece for _, piece in parts], list(parts[0][1]), [pad_value] * len(parts), what="shards")
    batch[SHARD_KEY] = np.concatenate([np.full(len(piece["step_id"]), index, dtype=np.int64)
                                       for index, piece in parts])
    return batch


def _check_positive(value: Any, name: str, most: int | None) -> None:
    if (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1
            or (most is not None and value > most)):
        limit = "" if most is None else f" of at most {most}"
        raise InvalidArgumentError(f"{name}={value!r} must be a positive int{limit}")
