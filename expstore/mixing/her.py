"""Hindsight experience replay (Andrychowicz et al. 2017), relabelled at sample time.

``pool.sample(256, rng=0, her=expstore.HER(env.unwrapped.compute_reward, strategy="future"))``
draws rows as ``sample`` always does, then gives ``relabel_ratio`` of them (a random subset,
``round(ratio * batch)`` rows) a new desired goal, an achieved goal of the same episode:

- ``"future"``: the next achieved goal of a row drawn uniformly from the row itself to the
  episode's last row (inclusive, as Stable-Baselines3 does);
- ``"final"``: that of the episode's last row;
- ``"episode"``: that of any row of the episode still in the pool.

The reward is recomputed as ``compute_reward(next_achieved_goal, new_goal, info)``, the
signature of gymnasium-robotics' ``env.unwrapped.compute_reward`` (vectorised over rows);
``info`` is a dict of the pool fields named by ``info_fields`` (empty by default).
``terminated`` stays as recorded (as SB3 does). A boolean ``relabeled`` column says which rows
got a new goal.

Goals come from the pool's own episode bookkeeping (episode id, index in the episode and the
link to the same episode's next row of every row, and the episode table), never from memory
built at load: relabelling works on pools larger than RAM, after a reopen, and on vector-env
recordings whose episodes interleave. A goal never crosses into another episode, past the
newest committed row, or below the ring's tail: for an episode still running, its newest
committed row is its last; a row whose goal the writer overwrote while it was read keeps its
own goal (``relabeled`` False).

Field names default to those the recorder and ``expstore.sb3`` give a Dict observation with
``achieved_goal`` and ``desired_goal`` keys: ``obs_achieved_goal``, ``obs_desired_goal`` and
their ``next_`` fields (stored, or derived in a pool opened with ``derive_next_obs=True``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..backends.internal import EpisodeStatus, info_status
from ..core.store import Store
from ..errors import InvalidArgumentError, SchemaError
from ..sampling import draws
from ..sampling.base import WindowView
from ..schema import Schema

STRATEGIES = ("future", "final", "episode")


@dataclass(frozen=True)
class HER:
    """Hindsight relabelling for ``Store.sample(her=...)`` and ``expstore.mix(...).sample(her=...)``.

    Args:
        compute_reward: ``f(achieved_goal, desired_goal, info) -> rewards``, vectorised over rows.
        strategy: "future", "final" or "episode" (see the module docstring).
        relabel_ratio: the share of each batch that gets a new goal, in [0, 1] (SB3's default
            of 4 sampled goals per transition is 0.8).
        achieved_goal, desired_goal: the pool fields of the goals.
        info_fields: pool fields handed to ``compute_reward`` as its ``info`` dict.
    """

    compute_reward: Callable
    strategy: str = "future"
    relabel_ratio: float = 0.8
    achieved_goal: str = "obs_achieved_goal"
    desired_goal: str = "obs_desired_goal"
    info_fields: Sequence[str] = ()

    def __post_init__(self) -> None:
        if not callable(self.compute_reward):
            raise InvalidArgumentError(f"HER compute_reward={self.compute_reward!r} is not callable; pass e.g. "
                                       "env.unwrapped.compute_reward(achieved_goal, desired_goal, info)")
        if self.strategy not in STRATEGIES:
            raise InvalidArgumentError(f"HER strategy={self.strategy!r} is not one of {STRATEGIES}")
        ratio = self.relabel_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0.0 <= float(ratio) <= 1.0:
            raise InvalidArgumentError(f"HER relabel_ratio={ratio!r} must be a number in [0, 1]")

    # ------------------------------------------------------------------ the hook Store.sample calls
    def relabel(self, pool: Store, batch: dict[str, np.ndarray], rng: np.random.Generator,
                view: WindowView, chain: np.ndarray | None = None, gamma: float = 1.0) -> dict[str, np.ndarray]:
        """Relabel a batch ``pool.sample`` drew from ``view`` (in place); returns it.

        ``chain``: for an n-step batch, the [batch, n] rows each return summed (-1 past the
        episode's end); a relabelled row's reward is then ``sum_i gamma ** i * r_i`` with every
        ``r_i`` recomputed for the new goal from the next achieved goal of the chain's row i.
        """
        self._check_fields(pool, batch)
        steps = batch["step_id"]
        chosen = np.sort(rng.permutation(len(steps))[:int(round(float(self.relabel_ratio) * len(steps)))])
        relabeled = np.zeros(len(steps), bool)
        if chosen.size:
            goal_rows = self.goal_rows(pool, steps[chosen], rng, view)
            goals, known = next_achieved(pool, goal_rows, view.head, self.achieved_goal)
            known &= goal_rows >= pool.window[0]  # a goal row the writer overwrote while it was read
            rows = chosen[known]
            goal = goals[known]
            if rows.size and chain is not None:
                rewards, fresh = self._chain_rewards(pool, batch, rows, goal, chain[rows], gamma)
                rows, goal, rewards = rows[fresh], goal[fresh], rewards[fresh]
            elif rows.size:
                info = {name: batch[name][rows] for name in self.info_fields}
                rewards = self._rewards(batch["next_" + self.achieved_goal][rows], goal, info)
            if rows.size:
                batch[self.desired_goal][rows] = goal
                if "next_" + self.desired_goal in batch:
                    batch["next_" + self.desired_goal][rows] = goal
                batch["reward"][rows] = rewards.astype(batch["reward"].dtype)
                relabeled[rows] = True
        batch["relabeled"] = relabeled
        return batch

    def _rewards(self, achieved: np.ndarray, goal: np.ndarray, info: dict[str, np.ndarray]) -> np.ndarray:
        rewards = np.asarray(self.compute_reward(achieved, goal, info))
        if rewards.size != len(goal):
            raise InvalidArgumentError(f"HER compute_reward returned {rewards.size} rewards for {len(goal)} "
                                       "rows; it must be vectorised over rows (as gymnasium-robotics' is)")
        return rewards.reshape(len(goal))

    def _chain_rewards(self, pool: Store, batch: dict[str, np.ndarray], rows: np.ndarray, goal: np.ndarray,
                       chain: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
        """The relabelled n-step return of each of ``rows`` (chains ``chain``, goals ``goal``), and
        which rows' chains were still in the pool once read (the others keep their own goal)."""
        valid = chain >= 0  # a prefix of each row: the chain stops at the episode's end
        counts = valid.sum(axis=1)
        last = (np.arange(len(rows)), counts - 1)
        interior = valid.copy()
        interior[last] = False
        achieved = np.empty((*chain.shape, *goal.shape[1:]), goal.dtype)
        achieved[last] = batch["next_" + self.achieved_goal][rows]  # the builder's, known for a usable row
        if interior.any():
            stored = "next_" + self.achieved_goal
            # a row's derived next achieved goal is the achieved goal of the chain's next row
            field, at = (stored, chain[interior]) if stored in _schema(pool) else \
                (self.achieved_goal, chain[:, 1:][interior[:, :-1]])
            achieved[interior] = _read(pool, field, at)
        info = {name: _read(pool, name, chain[valid]) for name in self.info_fields}
        # a chain row the writer overwrote while it was read: that row keeps its own goal
        fresh = np.where(valid, chain, np.iinfo(np.int64).max).min(axis=1) >= pool.window[0]
        each = np.zeros(chain.shape, np.float64)
        each[valid] = self._rewards(achieved[valid], np.repeat(goal, counts, axis=0), info)
        return each @ (np.float64(gamma) ** np.arange(chain.shape[1])), fresh

    def goal_rows(self, pool: Store, steps: np.ndarray, rng: np.random.Generator, view: WindowView) -> np.ndarray:
        """For each drawn step: the row of its episode whose next achieved goal becomes the goal."""
        rows = EpisodeRows(pool, view)
        index = rows.index_of(steps)
        last = rows.last_rows(steps)
        last_index = rows.index_of(last)
        if "next_" + self.achieved_goal not in _schema(pool):
            # derived: a running episode's newest row has no next observation yet, so the row
            # before it is the last whose next achieved goal is known
            unknown = ~next_achieved(pool, last, view.head, self.achieved_goal)[1] & (last > steps)
            if unknown.any():
                last_index = np.where(unknown, last_index - 1, last_index)
                last = np.where(unknown, rows.row_at(steps, index, last_index, last), last)
        if self.strategy == "final":
            return last
        if self.strategy == "future":
            target = index + (rng.random(len(steps)) * (last_index - index + 1)).astype(np.int64)
        else:
            first_index = rows.index_of(rows.oldest_rows(steps))
            target = first_index + (rng.random(len(steps)) * (last_index - first_index + 1)).astype(np.int64)
        return rows.row_at(steps, index, np.minimum(target, last_index), last)

    def _check_fields(self, pool: Store, batch: dict[str, np.ndarray]) -> None:
        schema = _schema(pool)
        names = list(schema)
        needed = [self.achieved_goal, self.desired_goal, "reward", *self.info_fields]
        missing = [name for name in needed if name not in names]
        if missing:
            raise SchemaError(f"HER needs the fields {missing}, which {pool.path} does not store (it stores "
                              f"{names}); name the goal fields with HER(achieved_goal=..., desired_goal=...)")
        goals = [self.achieved_goal, self.desired_goal]
        goals += ["next_" + name for name in goals]
        ragged = [name for name in goals if name in names and schema[name].ragged]
        if ragged:
            raise SchemaError(f"HER relabels fixed-shape goals; the goal fields {ragged} of {pool.path} are ragged "
                              "(rows of their own lengths). Store goals with a fixed shape, e.g. Field((3,), "
                              "'float32'), or name other goal fields with HER(achieved_goal=..., desired_goal=...)")
        if pool.bookkeeping is None:
            raise SchemaError(f"HER draws goals from the episode bookkeeping, which {pool.path} was created "
                              "without; copy it into a new pool with `expstore convert`")
        if batch[self.desired_goal].shape[1:] != schema[self.desired_goal].shape:
            raise InvalidArgumentError(
                f"her= with frame_stack: frame_stack stacks every observation field ('obs_*'), the goal fields "
                f"{self.desired_goal} and {self.achieved_goal} too, and HER relabels unstacked goals only (a "
                "relabelled stack would need the new goal in each of its k frames but not in zero padding, and the "
                "reward from the newest frame of the next achieved-goal stack). Sample goal-conditioned pools "
                "without frame_stack, or store the goals in fields not named 'obs_*' and name them with "
                "HER(achieved_goal=..., desired_goal=...)")
        if "next_" + self.achieved_goal not in batch:
            raise SchemaError(f"HER needs next_{self.achieved_goal} (stored, or derived with derive_next_obs=True)")


class EpisodeRows:
    """Where each row sits in its episode, from the pool's bookkeeping, within one view."""

    def __init__(self, pool: Store, view: WindowView):
        keeping = pool.bookkeeping
        if keeping is None:
            raise SchemaError(f"{pool.path} has no episode bookkeeping")
        self.book = keeping.book
        self.kept = keeping.kept_now(pool.commit_record)
        self.open_now = keeping.episode_state(view.tail, view.head, pool.commit_record).open_now
        self.tail, self.head, self.slots = view.tail, view.head, view.slots

    def index_of(self, steps: np.ndarray) -> np.ndarray:
        return self.book.episode_step[steps % self.slots].astype(np.int64)

    def episode_of(self, steps: np.ndarray) -> np.ndarray:
        return self.book.episode_id[steps % self.slots].astype(np.int64)

    def last_rows(self, steps: np.ndarray) -> np.ndarray:
        """The last row of each step's episode below the view's head (the newest committed row
        of an episode still running)."""
        ids = self.episode_of(steps)
        entries = self.book.entries_of(ids, self.kept)
        last = entries[:, 2].copy()
        closed = (entries[:, 0] == ids) & (info_status(entries[:, 3]) != EpisodeStatus.OPEN)
        known = closed & (last >= steps) & (last < self.head)
        for episode_id, last_step in self.open_now.values():
            running = (ids == episode_id) & ~known & (last_step >= steps) & (last_step < self.head)
            last[running] = last_step
            known |= running
        known &= self.episode_of(np.where(known, last, steps)) == ids
        if not known.all():  # closed after the view was taken, or forgotten by the table: follow the links
            last[~known] = self._follow_to_end(steps[~known])
        return last

    def oldest_rows(self, steps: np.ndarray) -> np.ndarray:
        """The oldest row of each step's episode still in the view (at or above its tail)."""
        ids = self.episode_of(steps)
        first = self.book.entries_of(ids, self.kept)[:, 1].copy()
        inside = (first >= self.tail) & (self.episode_of(np.maximum(first, 0)) == ids) \
            & (self.index_of(np.maximum(first, 0)) == 0)
        if not inside.all():
            straddling = np.flatnonzero(~inside)
            unique, where = np.unique(ids[straddling], return_inverse=True)
            found = np.array(self.book.oldest_rows(unique, self.tail, self.head), np.int64)
            first[straddling] = np.where(found[where] >= 0, found[where], steps[straddling])
        return first

    def row_at(self, steps: np.ndarray, index: np.ndarray, target: np.ndarray, last: np.ndarray) -> np.ndarray:
        """The row of each step's episode with index ``target`` (between its oldest row in the
        view and ``last``). Rows of one episode are usually evenly spaced (1 apart, or n_envs
        in a vector-env recording): that guess is checked on the tags, the rest is looked up."""
        ids = self.episode_of(steps)
        spacing = np.where(last > steps, (last - steps) // np.maximum(self.index_of(last) - index, 1),
                           np.maximum(self.book.next_delta[steps % self.slots], 1))
        guess = steps + (target - index) * spacing
        inside = (guess >= self.tail) & (guess < self.head)
        safe = np.where(inside, guess, steps)
        good = inside & (self.episode_of(safe) == ids) & (self.index_of(safe) == target)
        out = np.where(good, guess, -1)
        for position in np.flatnonzero(~good):
            out[position] = self._lookup(int(ids[position]), int(target[position]), int(last[position]))
        return out

    def _follow_to_end(self, steps: np.ndarray) -> np.ndarray:
        current = steps.copy()
        while True:
            following = draws.next_in_episode(current, self.head, self.slots, self.book.next_delta,
                                              self.book.episode_id)
            moved = following >= 0
            if not moved.any():
                return current
            current = np.where(moved, following, current)

    def _lookup(self, episode_id: int, target: int, last: int) -> int:
        oldest = int(self.oldest_rows(np.array([last], np.int64))[0])
        rows = self.book.rows_of(episode_id, oldest, last)
        found = rows[self.index_of(rows) == target]
        return int(found[0]) if found.size else last


def _schema(pool: Store) -> Schema:
    schema = pool.schema
    if schema is None:
        raise SchemaError(f"{pool.path} holds no committed transition yet")
    return schema


def _read(pool: Store, name: str, rows: np.ndarray) -> np.ndarray:
    """The values of the stored field ``name`` at step ids ``rows``: a heap field's rows decoded
    (its mapped array holds index entries, not values)."""
    field = _schema(pool)[name]
    if field.ragged:
        raise SchemaError(f"HER reads {name} along each chain of an n-step return; it is a ragged field of "
                          f"{pool.path} (rows of their own lengths), which relabelling does not read: sample with "
                          "n_step=1 or leave it out of info_fields")
    if field.uses_heap:
        # The Store has no public read of a few fields at step ids: ``read`` refuses rows a writer
        # overwrote (a chain's row may be; the caller marks those) and, as ``gather`` does, decodes
        # every heap field. The bookkeeping's ``heap_rows`` decodes only this one.
        keeping = pool.bookkeeping
        heap_rows = None if keeping is None else keeping.heap_rows
        if heap_rows is None:
            raise SchemaError(f"HER reads the compressed field {name} of {pool.path} through its episode "
                              "bookkeeping, which this pool was created without; copy it with `expstore convert`")
        return np.asarray(heap_rows([name], rows)[name])
    mapped = pool.mapped
    assert mapped is not None  # a pool with a schema has its maps: both come with its layout
    return np.asarray(mapped.views[name][pool.ring.slots_of(rows)])


def next_achieved(pool: Store, rows: np.ndarray, high: int, achieved_goal: str) -> tuple[np.ndarray, np.ndarray]:
    """The next achieved goal of each row, and where it is known (a derived one is unknown until
    the episode's next row or final observation is committed)."""
    name = "next_" + achieved_goal
    if name in _schema(pool):
        return _read(pool, name, rows), np.ones(len(rows), bool)
    keeping = pool.bookkeeping
    if keeping is None or achieved_goal not in keeping.derived:
        raise SchemaError(f"HER needs {name}, which {pool.path} neither stores nor derives")
    values, known = keeping.next_values(rows, high, keeping.kept_now(pool.commit_record))
    return values[name], known
