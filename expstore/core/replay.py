"""Episode queries and the sampling strategies of a Store: n-step, sequences, prioritized,
epochs, and next observations derived from the following row.

``ReplayMixin`` is a base class of ``Store``; it keeps the bookkeeping (episodes.py), the
priority tree (sampling/priorities.py) and the samplers (sampling/draws.py) wired to the store's memory maps.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends import internal
from ..errors import EmptyStoreError, ExpstoreError, InvalidArgumentError, SchemaError, StepNotFoundError
from ..sampling import age_window
from ..sampling import draws as sampling
from ..sampling.priorities import PriorityIndex
from .casting import as_rows
from .episodes import EpisodeBook, EpisodeTable, decode, write_run

_REDRAWS = 100
_CANDIDATES = 1024
PRIORITY_KEY = "priorities"


def _generator(rng: int | np.random.Generator | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


@dataclass(frozen=True)
class EpisodeState:
    """The episode bookkeeping as one handle sees it: the writer's own, or a reader's commit."""

    tail: int
    head: int
    open_now: Mapping[int, tuple[int, int]]  # env id -> (episode id, last step)
    next_id: int
    low_id: int
    kept: Mapping[int, np.ndarray]  # episode id -> entry that a newer episode may have taken over


class ReplayMixin:
    _book: EpisodeBook | None = None
    _derived: tuple[str, ...] = ()
    _decoded: tuple[int, dict] | None = None  # a reader's decoded commit payload, by sequence number

    # ------------------------------------------------------------------ set-up and commits
    def _init_replay(self) -> None:
        views = self._maps.views
        if not internal.has_bookkeeping(views):
            self._book = None
            return
        payload = self._committed.payload
        self._book = EpisodeBook(views, self._layout.schema, self._ring.slots, self._ring.capacity, payload,
                                 self._committed.head)
        if self.writable:
            self._book.cut_off_committed_open()
        self._derived = tuple(self._book.derived)
        self._priority_view = views["_priority"]
        self._max_priority = float(payload.get(PRIORITY_KEY, {}).get("max", 1.0))
        self._priority_index = PriorityIndex(self._priority_view, self._ring.slots)

    def _commit_payload(self, previous_payload: Mapping, tail: int) -> dict:
        """The payload of the next commit: the episode state and the max priority."""
        if self._book is None:
            return dict(previous_payload)
        return {**previous_payload, **self._book.payload(tail, self._head),
                PRIORITY_KEY: {"max": self._max_priority}}

    def _tag_row(self, step_id: int, slot: int, transition: Mapping, derived: Mapping | None, env_id: int) -> None:
        if self._book is not None:
            self._book.on_append(step_id, slot, transition, derived, env_id)
            self._priority_view[slot] = self._max_priority

    def _tag_rows(self, first_step: int, columns: Mapping, derived: Mapping | None, env_ids) -> None:
        if self._book is not None:
            self._book.on_extend(first_step, columns, derived, env_ids)
            count = len(next(iter(columns.values())))
            write_run(self._priority_view, first_step, np.full(count, self._max_priority, np.float32), self._ring.slots)

    def _split_derived(self, mapping: Mapping[str, Any], n_rows: int | None) -> tuple[dict, dict | None]:
        """Take the ``next_<obs>`` values a pool without them keeps only at episode ends."""
        wanted = {f"next_{name}" for name in self._derived}
        if not wanted or not wanted <= mapping.keys() or mapping.keys() - wanted != self._names:
            raise self._names_error(mapping)
        derived = {key: as_rows(key, self._layout.schema[key[5:]], mapping[key], n_rows) for key in wanted}
        return {key: value for key, value in mapping.items() if key not in wanted}, derived

    def _check_env_ids(self, env_ids: Any, n_rows: int):
        if env_ids is None or self._book is None:
            return None
        return self._book.check_env_ids(env_ids, n_rows)

    def _need_book(self) -> EpisodeBook:
        self._check_open()
        if self._book is None:
            raise ExpstoreError(f"{self.path} has no episode bookkeeping (it was created without it); "
                                "copy it into a new pool with `expstore convert`")
        return self._book

    # ------------------------------------------------------------------ episodes
    def _episode_state(self) -> EpisodeState:
        book = self._need_book()
        low, high = self._window()
        if self.writable:
            open_now = {env: (state.episode_id, state.last_step) for env, state in book.open.items()}
            return EpisodeState(low, high, open_now, book.next_id, book.low_id, book.kept)
        state = self._committed_state()
        return EpisodeState(low, high, state["open"], state["next"], state["low"], state["kept"])

    def _committed_state(self) -> dict:
        """A reader's decoded episode payload of its current commit (decoded once per commit)."""
        seq = self._committed.seq
        if self._decoded is None or self._decoded[0] != seq:
            self._decoded = (seq, decode(self._committed.payload, self._committed.head))
        return self._decoded[1]

    def _kept_now(self) -> Mapping[int, np.ndarray]:
        return self._book.kept if self.writable else self._committed_state()["kept"]

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
            env_ids = np.array(sorted(book.open), np.int64) if env_ids is None else np.atleast_1d(np.asarray(env_ids))
            checked = book.check_env_ids(env_ids, len(env_ids))
            derived = None if next_obs is None else self._final_rows(next_obs, len(checked))
            return np.array(book.end_open(checked, derived), np.int64)

    def _final_rows(self, next_obs: Mapping[str, Any], n_rows: int) -> dict[str, np.ndarray] | None:
        """The ``next_<obs>`` rows given to ``end_episodes``, checked; those a deriving pool keeps."""
        schema = self._layout.schema
        observed = [name for name in schema if name == "obs" or name.startswith("obs_")]
        expected = {f"next_{name}" for name in observed}
        if not isinstance(next_obs, Mapping) or set(next_obs) != expected:
            given = sorted(next_obs) if isinstance(next_obs, Mapping) else type(next_obs).__name__
            raise InvalidArgumentError(f"next_obs must map {sorted(expected)} to one row per env id, got {given}")
        rows = {key: as_rows(key, schema[key[5:]], value, n_rows) for key, value in next_obs.items()}
        derived = {key: rows[key] for key in (f"next_{name}" for name in self._derived)}
        return derived or None

    def episodes(self) -> EpisodeTable:
        """The episodes with at least one row in the pool, ordered by first step id.

        Read from the episode table, without scanning the pool. An :class:`EpisodeTable`:
        ``len(table)`` episodes, ``table[name]`` a column. Columns (numpy arrays):
        ``episode_id``, ``first_step_id`` (may be evicted), ``length`` (rows ever appended,
        evicted ones included), ``return`` (their summed reward), ``terminated``,
        ``truncated``, ``open`` (still running), ``evicted`` (rows the ring dropped),
        ``cut_off`` (open when its writer stopped without closing), ``env_id``, ``last_step_id``.
        """
        state = self._episode_state()
        table = self._book.table_view(state.tail, state.head, state.open_now, state.next_id, state.low_id, state.kept)
        order = np.argsort(table["first_step_id"], kind="stable")
        return EpisodeTable({name: column[order] for name, column in table.items()})

    def episode(self, episode_id: int) -> dict[str, np.ndarray]:
        """The rows of one episode still in the pool, in order, plus ``step_id``."""
        state = self._episode_state()
        tail, head = state.tail, state.head
        table = self._book.table_view(tail, head, state.open_now, state.next_id, state.low_id, state.kept)
        position = np.flatnonzero(table["episode_id"] == int(episode_id))
        if not position.size:
            raise StepNotFoundError(f"episode {episode_id} has no row in the pool (episodes with rows: "
                                    f"{_id_summary(table['episode_id'])}); see store.episodes()")
        first, last = int(table["first_step_id"][position[0]]), int(table["last_step_id"][position[0]])
        if first < tail:
            first = self._book.oldest_rows(np.array([episode_id]), tail, head)[0]
        return self._read_checked(self._book.rows_of(int(episode_id), first, last))

    # ------------------------------------------------------------------ batches
    def _next_values(self, last: np.ndarray, high: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """next_<obs> of rows ``last`` in a pool that derives them; and where they are known."""
        book = self._book
        slots = self._ring.slots
        following = sampling.next_in_episode(last, high, slots, book.next_delta, book.episode_id)
        values = {f"next_{name}": self._maps.views[name][np.where(following >= 0, following, last) % slots]
                  for name in self._derived}
        known = following >= 0
        ends = np.flatnonzero(~known)  # an episode's last row, or the newest row of an open one
        if ends.size:
            finals, found = book.finals_at(last[ends], self._kept_now())
            for name, final in finals.items():
                values[f"next_{name}"][ends] = final
            known[ends] = found
        return values, known

    def _transitions(self, steps: np.ndarray, n_step: int, gamma: float, high: int) -> tuple[dict, np.ndarray]:
        """The batch for start rows ``steps``, and which rows are usable (next obs known)."""
        batch = self._gather(steps)
        last = steps
        if n_step > 1:
            last = self._n_step(batch, steps, n_step, gamma, high)
        ok = np.ones(len(steps), bool)
        if self._derived:
            values, ok = self._next_values(last, high)
            batch.update(values)
        return batch, ok

    def _n_step(self, batch: dict, steps: np.ndarray, n_step: int, gamma: float, high: int) -> np.ndarray:
        book = self._need_book()
        if "reward" not in self._layout.schema:
            raise SchemaError(f"n-step sampling needs a 'reward' field; {self.path} stores {list(self._names)}")
        slots = self._ring.slots
        chain = sampling.chains(steps, n_step, high, slots, book.next_delta, book.episode_id)
        rewards = self._maps.views["reward"][chain % slots]
        total, counts = sampling.n_step_returns(chain, rewards, gamma)
        last = sampling.last_valid(chain, counts)
        batch["reward"] = total.astype(self._layout.schema["reward"].dtype)
        for name in self._layout.schema:
            if name in ("terminated", "truncated") or name.startswith("next_"):
                batch[name] = self._maps.views[name][last % slots]
        batch["discount"] = (np.float64(gamma) ** counts).astype(np.float32)
        return last

    def _draw_usable(self, count: int, draw, build) -> tuple[dict, np.ndarray]:
        """Draw ``count`` start rows with ``draw(n) -> (steps, extra)`` and build them with
        ``build(steps) -> (batch, ok)``; draw again where a row was unusable or overwritten."""
        steps, extra = draw(count)
        batch, ok = build(steps)
        ok &= self._fresh(steps)
        for _ in range(_REDRAWS):
            if ok.all():
                return batch, extra
            redo = np.flatnonzero(~ok)
            # Candidates in bulk, so that even rare usable rows (long full windows) are found.
            new_steps, new_extra = draw(max(4 * len(redo), _CANDIDATES))
            new_batch, new_ok = build(new_steps)
            usable = np.flatnonzero(new_ok & self._fresh(new_steps))[:len(redo)]
            redo = redo[:len(usable)]
            for name, values in new_batch.items():
                batch[name][redo] = values[usable]
            extra[redo] = new_extra[usable]
            ok[redo] = True
        raise EmptyStoreError(f"{self.path}: too few rows can be sampled this way "
                              "(next observations not known yet, windows too long, or the writer "
                              "overwriting rows); append more or sample differently")

    def _fresh(self, steps: np.ndarray) -> np.ndarray:
        stale = self._stale(steps)
        return np.ones(len(steps), bool) if stale is None else ~stale

    def _nonempty_window(self) -> tuple[int, int]:
        low, high = self._window()
        if high == low:
            raise EmptyStoreError(f"{self.path} holds no committed transition yet; append and flush first")
        return low, high

    def _sample_replay(self, batch_size: int, rng, n_step: int, gamma: float, prioritized: bool,
                       alpha: float, beta: float, selection: dict | None = None) -> dict[str, np.ndarray]:
        _check_sampling_args(batch_size, n_step, gamma, alpha, beta)
        generator = _generator(rng)
        low, high = self._nonempty_window()
        if selection is not None:
            if prioritized:
                raise InvalidArgumentError("max_age and recency cannot be combined with prioritized=True; "
                                           "sample recent rows uniformly, or prioritize without them")
            return self._draw_usable(batch_size, *self._recent_draw(generator, selection, n_step, gamma))[0]
        if prioritized:
            self._need_book()
            self._priority_index.sync(low, high, float(alpha), None if self.writable else self._committed.seq)
            draw = lambda n: self._priority_index.draw(generator, n)  # noqa: E731
        else:
            draw = lambda n: (sampling.uniform(generator, *self._window(), n), np.zeros(n))  # noqa: E731
        batch, extra = self._draw_usable(batch_size, draw, lambda s: self._transitions(s, n_step, gamma, high))
        if prioritized:
            batch["weights"] = sampling.importance_weights(extra, high - low, beta)
        return batch

    def _recent_draw(self, generator: np.random.Generator, selection: dict, n_step: int, gamma: float):
        """draw(n) -> (steps, zeros) and build(steps) -> (batch, ok) for max_age / recency.

        The age limit is taken from a snapshot of the window (sampling/age_window.py); a reader that the writer
        lapped (the whole snapshot evicted) takes a new, newer snapshot.
        """
        how = selection["recency"]
        if how is not None and not hasattr(how, "draw"):
            raise InvalidArgumentError(f"recency={how!r} must be expstore.ERE(k, K) or "
                                       "expstore.ExponentialRecency(half_life)")
        snapshot = {}

        def take_snapshot(low: int, high: int) -> None:
            snapshot["high"], snapshot["limit"] = high, self._age_limit(selection, low, high)
            snapshot["low"] = low if snapshot["limit"] is None else snapshot["limit"].low

        def draw(count: int):
            tail, head = self._window()
            if tail >= snapshot["high"]:
                take_snapshot(tail, head)
            start = max(tail, snapshot["low"])
            steps = (how.draw(generator, start, snapshot["high"], count) if how is not None
                     else sampling.uniform(generator, start, snapshot["high"], count))
            return steps, np.zeros(count)

        def build(steps: np.ndarray):
            batch, ok = self._transitions(steps, n_step, gamma, snapshot["high"])
            limit = snapshot["limit"]
            return batch, ok if limit is None else ok & limit.admits(batch)

        take_snapshot(*self._nonempty_window())
        return draw, build

    def _age_limit(self, selection: dict, low: int, high: int) -> age_window.AgeLimit | None:
        if selection["max_age"] is None:
            return None
        unit = age_window.resolve_age_unit(selection["age_unit"], self._layout.schema)
        versions = self._maps.views.get(age_window.VERSION_FIELD) if unit == "policy_versions" else None
        limit = age_window.age_limit(selection["max_age"], unit, low, high, versions, self._ring.slots,
                              selection["current_version"])
        if limit.low >= high:
            raise EmptyStoreError(f"{self.path}: no committed row is at most {selection['max_age']} {unit} old "
                                  f"(policy_version >= {limit.min_version}); raise max_age")
        return limit

    # ------------------------------------------------------------------ sequences
    def sample_sequences(self, batch_size: int, length: int, *, rng: int | np.random.Generator | None = None,
                         full_only: bool = False) -> dict[str, np.ndarray]:
        """Windows of ``length`` consecutive rows of one episode each: arrays [batch, length, ...].

        A window starts at a uniformly drawn committed row and follows its episode (for a vector
        env, its own sub-env). ``mask`` [batch, length] marks the rows that exist; past the end
        of the episode (or of the committed rows) values are zero and ``step_id`` is -1. With
        ``full_only`` only windows of ``length`` existing rows are drawn.
        """
        _check_positive(batch_size, "batch_size")
        _check_positive(length, "length")
        book = self._need_book()
        generator = _generator(rng)
        low, high = self._nonempty_window()

        def build(steps):
            chain = sampling.chains(steps, length, high, self._ring.slots, book.next_delta, book.episode_id)
            batch = self._window_batch(chain, high)
            ok = batch["mask"].all(axis=1) if full_only else batch["mask"][:, 0].copy()
            return batch, ok

        draw = lambda n: (sampling.uniform(generator, *self._window(), n), np.zeros(n))  # noqa: E731
        return self._draw_usable(batch_size, draw, build)[0]

    def _window_batch(self, chain: np.ndarray, high: int) -> dict[str, np.ndarray]:
        mask = chain >= 0
        flat = np.where(mask, chain, chain[:, :1]).reshape(-1)
        batch, ok = self._transitions(flat, 1, 1.0, high)
        mask &= ok.reshape(mask.shape)
        out = {}
        for name, values in batch.items():
            values = values.reshape(*mask.shape, *values.shape[1:])
            keep = mask.reshape(*mask.shape, *[1] * (values.ndim - 2))
            out[name] = np.where(keep, values, np.zeros((), values.dtype))
        out["step_id"] = np.where(mask, chain, -1)
        out["mask"] = mask
        return out

    # ------------------------------------------------------------------ priorities
    def update_priorities(self, step_ids, priorities) -> int:
        """Set the priorities of sampled rows (e.g. their TD errors); returns how many were set.

        Ids the ring already evicted are ignored. Priorities must be finite and >= 0; they are
        written into the pool and committed with it, so they survive a reopen.
        """
        self._check_writable()
        self._need_book()
        steps = np.asarray(step_ids, dtype=np.int64).reshape(-1)
        values = np.asarray(priorities, dtype=np.float64).reshape(-1)
        if values.shape != steps.shape:
            raise InvalidArgumentError(f"update_priorities got {steps.size} step ids and {values.size} priorities; "
                                       "pass one priority per step id")
        if values.size and not (np.isfinite(values).all() and (values >= 0).all()):
            raise InvalidArgumentError("priorities must be finite and >= 0 (use |TD error| + a small epsilon)")
        low, high = self._window()
        inside = (steps >= low) & (steps < high)
        steps, values = steps[inside], values[inside]
        self._priority_view[steps % self._ring.slots] = values
        if values.size:
            self._max_priority = max(self._max_priority, float(values.max()))
        self._priority_index.set(steps, values)
        return int(steps.size)

    # ------------------------------------------------------------------ epochs
    def iter_epoch(self, batch_size: int, *, rng: int | np.random.Generator | None = None, drop_last: bool = False,
                   n_step: int = 1, gamma: float = 0.99) -> Iterator[dict[str, np.ndarray]]:
        """One pass over every committed transition, in shuffled batches (offline training).

        The window is taken when the pass starts; rows the ring evicts during the pass (and,
        in a pool without ``next_obs``, rows whose next observation is not known yet) are
        skipped, so a batch can be shorter than ``batch_size``.
        """
        _check_sampling_args(batch_size, n_step, gamma, 0.0, 0.0)
        generator = _generator(rng)
        low, high = self._nonempty_window()
        order = sampling.epoch_order(generator, low, high)
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for start in range(0, stop, batch_size):
            steps = order[start:start + batch_size]
            steps = steps[steps >= self._window()[0]]
            batch, ok = self._transitions(steps, n_step, gamma, high)
            ok &= self._fresh(steps)
            if not ok.all():
                batch = {name: values[ok] for name, values in batch.items()}
            if len(batch["step_id"]):
                yield batch

    def epochs(self, batch_size: int, *, num_epochs: int | None = None,
               rng: int | np.random.Generator | None = None, **options) -> Iterator[dict[str, np.ndarray]]:
        """``iter_epoch`` repeated ``num_epochs`` times (forever when None), one generator."""
        generator = _generator(rng)
        epoch = 0
        while num_epochs is None or epoch < num_epochs:
            yield from self.iter_epoch(batch_size, rng=generator, **options)
            epoch += 1


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


def _id_summary(ids: np.ndarray) -> str:
    return "none" if not len(ids) else f"{int(ids.min())}..{int(ids.max())}"
