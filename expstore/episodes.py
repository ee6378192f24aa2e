"""Episode bookkeeping: which episode each row belongs to, and the episode table.

The writer tags every row it appends (episode id, index in the episode, running return, and a
forward link from the previous row of the same episode; see internal.py) and keeps one table
entry per episode. Episodes are tracked per ``env_id``, so the interleaved rows of a vector
env keep each sub-env's episodes intact. An episode ends at a row whose ``terminated`` or
``truncated`` is true.

Crash safety: the commit payload holds the small state of the still-open episodes (env id,
episode id, last committed step); everything else lives in arrays written in place before the
commit that exposes them. A writer reopening after a crash marks the episodes that were open
at the last commit as cut off (and drops their links into rows the crash discarded), so
resuming starts new episodes and finished episodes stay intact.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InvalidArgumentError
from .internal import EPISODE_TABLE, FINAL_PREFIX, final_fields
from .schema import Schema

logger = logging.getLogger(__name__)

OPEN, TERMINATED, TRUNCATED, CUT_OFF = 0, 1, 2, 3
FINAL_STORED = 4  # flag in an entry's info: the final observation is in the final-obs table
PAYLOAD_KEY = "episodes"
_SCAN_ROWS = 1 << 16
_LOW_BLOCK = 1024  # episode ids checked per step when the oldest live episode moves on
_ONE_RUN = np.zeros(1, np.int64)  # the run starts of a batch that holds one episode run


class EpisodeBook:
    """The episode bookkeeping of one open pool (writer or reader)."""

    def __init__(self, views: Mapping[str, np.ndarray], schema: Schema, slots: int, payload: Mapping,
                 head: int):
        self.episode_id = views["_episode_id"]
        self.episode_step = views["_episode_step"]
        self.episode_return = views["_episode_return"]
        self.next_delta = views["_next_delta"]
        self.table = views[EPISODE_TABLE]
        self.table_rows = len(self.table)
        self.derived = final_fields(views)
        self.finals = {name: views[FINAL_PREFIX + name] for name in self.derived}
        self.slots = slots
        self.reward = "reward" if "reward" in schema else None
        self.terminated = "terminated" if "terminated" in schema else None
        self.truncated = "truncated" if "truncated" in schema else None
        state = decode(payload, head)
        self.next_id, self.low_id = state["next"], state["low"]
        # env id -> [episode id, first step, last step, index of last row, return so far]
        self.open: dict[int, list] = {}
        self.committed_open = state["open"]  # env id -> (episode id, last step), as committed
        self.committed_head = head

    # ------------------------------------------------------------------ writer: recovery
    def cut_off_committed_open(self) -> None:
        """Writer reopening: the episodes open at the last commit end here, cut off."""
        for env_id, (episode_id, last_step) in self.committed_open.items():
            entry = self.table[episode_id % self.table_rows]
            first_step = int(entry[1]) if entry[0] == episode_id else last_step - int(
                self.episode_step[last_step % self.slots])
            self.table[episode_id % self.table_rows] = (episode_id, first_step, last_step, env_id * 8 + CUT_OFF)
            if self.committed_head - last_step <= self.slots:  # else a newer committed row holds the slot
                self.next_delta[last_step % self.slots] = 0  # may point at a row the crash discarded
            logger.info("episode %d (env %d) was open when the writer stopped; marked cut off at step %d",
                        episode_id, env_id, last_step)
        self.committed_open = {}

    # ------------------------------------------------------------------ writer: appends
    def status_of(self, transition: Mapping[str, Any]) -> int:
        if self.terminated is not None and transition[self.terminated]:
            return TERMINATED
        if self.truncated is not None and transition[self.truncated]:
            return TRUNCATED
        return OPEN

    def on_append(self, step_id: int, slot: int, transition: Mapping[str, Any], derived: Mapping | None,
                  env_id: int) -> None:
        """Tag the row just written at ``slot``; one env-loop step, so kept to plain Python."""
        reward = float(transition[self.reward]) if self.reward is not None else 0.0
        state = self.open.get(env_id)
        if state is None:
            state = [self.next_id, step_id, step_id, 0, reward]
            self.table[self.next_id % self.table_rows] = (self.next_id, step_id, -1, env_id * 8)
            self.next_id += 1
            self.open[env_id] = state
        else:
            self._link(state[2], step_id)
            state[2] = step_id
            state[3] += 1
            state[4] += reward
        self.episode_id[slot] = state[0]
        self.episode_step[slot] = state[3]
        self.episode_return[slot] = state[4]
        self.next_delta[slot] = 0
        status = self.status_of(transition)
        if status:
            self._close(env_id, state, status, derived)

    def _close(self, env_id: int, state: list, status: int, derived: Mapping | None) -> None:
        del self.open[env_id]
        entry = state[0] % self.table_rows
        if self.table[entry, 0] != state[0]:
            return  # a newer episode took the entry over (a table smaller than the open episodes)
        has_final = bool(self.finals) and derived is not None
        self.table[entry, 2:] = (state[2], env_id * 8 + has_final * FINAL_STORED + status)
        if has_final:
            for name, final in self.finals.items():
                final[entry] = derived[f"next_{name}"]

    def on_extend(self, first_step: int, columns: Mapping[str, np.ndarray], derived: Mapping | None,
                  env_ids: np.ndarray | None) -> None:
        """Tag a run of rows ``first_step, first_step + 1, ...`` just written; vectorised."""
        n_rows = len(next(iter(columns.values())))
        status = self._status_column(columns, n_rows)
        rewards = (np.asarray(columns[self.reward], np.float64) if self.reward is not None
                   else np.zeros(n_rows))
        if env_ids is None or (env_ids == env_ids[0]).all():
            env_id = 0 if env_ids is None else int(env_ids[0])
            self._extend_one_env(env_id, first_step, status, rewards, derived)
            return
        envs = env_ids
        # rows grouped by env, each group in step order
        order = np.arange(n_rows) if env_ids is None else np.argsort(envs, kind="stable")
        runs = _Runs(first_step + order, envs[order], status[order], rewards[order], self.open)
        ids = self._assign_ids(runs)
        self._link_open(runs, ids)
        self._tag_rows(runs, ids, order, first_step)
        self._write_entries(runs, ids, order, derived)
        self._update_open(runs, ids)

    def _extend_one_env(self, env_id: int, first_step: int, status: np.ndarray, rewards: np.ndarray,
                        derived: Mapping | None) -> None:
        """``on_extend`` of rows from one env, the common case: its episodes are contiguous runs
        of the batch, so every tag is a cumulative sum or a slice; no sort, no per-run loop."""
        n_rows = len(status)
        ends = status.nonzero()[0]  # rows that end an episode
        state = self.open.get(env_id)
        continuing = state is not None
        first_id = state[0] if continuing else self.next_id
        if ends.size == 0 or (ends.size == 1 and ends[0] == n_rows - 1):
            starts = _ONE_RUN  # one episode run: tags without per-run indexing
            ids = np.full(n_rows, first_id, np.int64)
            index = np.arange(n_rows, dtype=np.int64)
            returns = np.cumsum(rewards)
        else:
            starts = np.concatenate((_ONE_RUN, ends[ends < n_rows - 1] + 1))  # first row of each run
            run_of_row = np.zeros(n_rows, np.int64)
            run_of_row[starts[1:]] = 1
            np.cumsum(run_of_row, out=run_of_row)
            ids = run_of_row + (self.next_id - continuing)
            ids[:starts[1]] = first_id
            index = np.arange(n_rows, dtype=np.int64) - starts[run_of_row]
            totals = np.cumsum(rewards)
            returns = totals - (totals - rewards)[starts][run_of_row]
        next_delta = np.ones(n_rows, np.int64)
        next_delta[ends] = 0
        next_delta[-1] = 0
        if continuing:
            first_run = slice(0, starts[1] if len(starts) > 1 else n_rows)
            index[first_run] += state[3] + 1
            returns[first_run] += state[4]
            self._link(state[2], first_step)
        for view, values in ((self.episode_id, ids), (self.episode_step, index),
                             (self.episode_return, returns), (self.next_delta, next_delta)):
            write_run(view, first_step, values, self.slots)
        new_runs = len(starts) - continuing
        if new_runs:
            self._enter_runs(env_id, first_step, np.arange(self.next_id, self.next_id + new_runs, dtype=np.int64),
                             starts[int(continuing):])
        if ends.size:
            self._close_runs(env_id, first_step, ids[ends], ends, status[ends], derived)
        self._keep_open_one_env(env_id, first_step, state, int(ids[-1]), int(starts[-1]), n_rows, status[-1])

    def _enter_runs(self, env_id: int, first_step: int, new_ids: np.ndarray, first_rows: np.ndarray) -> None:
        """Table entries of the episodes that begin in this batch; their ids are consecutive."""
        self.next_id += len(new_ids)
        new_ids, first_rows = new_ids[-self.table_rows:], first_rows[-self.table_rows:]  # the newest fit
        entries = np.empty((len(new_ids), 4), np.int64)
        entries[:, 0] = new_ids
        entries[:, 1] = first_rows
        entries[:, 1] += first_step
        entries[:, 2] = -1
        entries[:, 3] = env_id * 8
        write_run(self.table, int(new_ids[0]), entries, self.table_rows)

    def _close_runs(self, env_id: int, first_step: int, closed_ids: np.ndarray, end_rows: np.ndarray,
                    end_status: np.ndarray, derived: Mapping | None) -> None:
        has_final = bool(self.finals) and derived is not None
        finals = {name: np.asarray(derived[f"next_{name}"])[end_rows] for name in self.finals} if has_final else None
        self._close_entries(closed_ids, first_step + end_rows, env_id * 8 + has_final * FINAL_STORED + end_status,
                            finals)

    def _close_entries(self, ids: np.ndarray, last_steps: np.ndarray, infos: np.ndarray,
                       finals: Mapping[str, np.ndarray] | None) -> None:
        """End the table entries of ``ids``, except those a newer episode already took over (a
        table smaller than the episodes of one batch keeps only the newest)."""
        entries = ids % self.table_rows
        own = self.table[entries, 0] == ids
        entries = entries[own]
        self.table[entries, 2] = last_steps[own]
        self.table[entries, 3] = infos[own]
        for name, values in (finals or {}).items():
            self.finals[name][entries] = values[own]

    def _keep_open_one_env(self, env_id: int, first_step: int, state: list | None, last_id: int,
                           last_start: int, n_rows: int, last_status: int) -> None:
        if last_status:
            self.open.pop(env_id, None)
            return
        first = state[1] if state is not None and last_start == 0 else first_step + last_start
        last_step = first_step + n_rows - 1
        slot = last_step % self.slots  # read back: the running return as stored (float32)
        self.open[env_id] = [int(last_id), first, last_step, int(self.episode_step[slot]),
                             float(self.episode_return[slot])]

    def _status_column(self, columns: Mapping[str, np.ndarray], n_rows: int) -> np.ndarray:
        status = np.zeros(n_rows, np.int64)
        if self.truncated is not None:
            status[_any_per_row(columns[self.truncated], n_rows)] = TRUNCATED
        if self.terminated is not None:
            status[_any_per_row(columns[self.terminated], n_rows)] = TERMINATED
        return status

    def _assign_ids(self, runs: _Runs) -> np.ndarray:
        """Episode id of each run: the open one it continues, or a new id in first-step order."""
        ids = np.empty(runs.count, np.int64)
        continuing = runs.continues_open
        for run in np.flatnonzero(continuing):
            ids[run] = self.open[int(runs.env[run])][0]
        new = np.flatnonzero(~continuing)
        rank = np.argsort(np.argsort(runs.first_step[new], kind="stable"), kind="stable")
        ids[new] = self.next_id + rank
        self.next_id += len(new)
        return ids

    def _link_open(self, runs: _Runs, ids: np.ndarray) -> None:
        for run in np.flatnonzero(runs.continues_open):
            self._link(self.open[int(runs.env[run])][2], int(runs.first_step[run]))

    def _link(self, from_step: int, to_step: int) -> None:
        """Point row ``from_step`` at ``to_step``, the next row of its episode, unless the ring
        already reused its slot: an env idle for a whole ring must not relink a newer row."""
        if to_step - from_step < self.slots:
            self.next_delta[from_step % self.slots] = to_step - from_step

    def _tag_rows(self, runs: _Runs, ids: np.ndarray, order: np.ndarray, first_step: int) -> None:
        base_index = np.zeros(runs.count, np.int64)
        base_return = np.zeros(runs.count)
        for run in np.flatnonzero(runs.continues_open):
            state = self.open[int(runs.env[run])]
            base_index[run], base_return[run] = state[3] + 1, state[4]
        columns = ((self.episode_id, ids[runs.run_of_row]),
                   (self.episode_step, runs.index_in_run + base_index[runs.run_of_row]),
                   (self.episode_return, runs.return_in_run + base_return[runs.run_of_row]),
                   (self.next_delta, runs.next_delta))
        for view, sorted_values in columns:
            values = np.empty_like(sorted_values)
            values[order] = sorted_values  # back to step order: the rows are one or two slot runs
            write_run(view, first_step, values, self.slots)

    def _write_entries(self, runs: _Runs, ids: np.ndarray, order: np.ndarray, derived: Mapping | None) -> None:
        entries = ids % self.table_rows
        new = ~runs.continues_open
        self.table[entries[new]] = np.stack(
            [ids[new], runs.first_step[new], np.full(new.sum(), -1), runs.env[new] * 8], axis=1)
        closed = runs.last_status > 0
        has_final = bool(self.finals) and derived is not None
        finals = {name: np.asarray(derived[f"next_{name}"])[order][runs.last_row[closed]]
                  for name in self.finals} if has_final else None
        self._close_entries(ids[closed], runs.last_step[closed],
                            runs.env[closed] * 8 + has_final * FINAL_STORED + runs.last_status[closed], finals)

    def _update_open(self, runs: _Runs, ids: np.ndarray) -> None:
        last_run_of_env = np.flatnonzero(np.r_[runs.env[1:] != runs.env[:-1], True])
        for run in last_run_of_env:
            env_id = int(runs.env[run])
            if runs.last_status[run]:
                self.open.pop(env_id, None)
                continue
            first = (self.open[env_id][1] if runs.continues_open[run] else int(runs.first_step[run]))
            row = runs.last_row[run]
            slot = int(runs.steps[row]) % self.slots
            self.open[env_id] = [int(ids[run]), first, int(runs.steps[row]), int(self.episode_step[slot]),
                                 float(self.episode_return[slot])]

    # ------------------------------------------------------------------ commits
    def payload(self, tail: int, head: int) -> dict:
        """This book's part of the commit payload (tail/head: the window being committed)."""
        self._advance_low(tail)
        open_rows = sorted([env_id, self.next_id - state[0], head - state[2]] for env_id, state in self.open.items())
        return {PAYLOAD_KEY: {"next": self.next_id, "low": self.low_id, "open": open_rows}}

    def _advance_low(self, tail: int) -> None:
        """Move ``low_id`` past episodes gone from the pool; vectorised over blocks of ids, and
        amortised O(1) per episode since ``low_id`` only grows."""
        open_ids = [state[0] for state in self.open.values()]
        if self.low_id in open_ids and self.table[self.low_id % self.table_rows, 0] == self.low_id:
            return  # the common case between episode ends: the oldest episode is still open
        while self.low_id < self.next_id:
            ids = np.arange(self.low_id, min(self.next_id, self.low_id + _LOW_BLOCK), dtype=np.int64)
            entries = self.table[ids % self.table_rows]
            live = (entries[:, 3] % 4 != OPEN) & (entries[:, 2] >= tail)  # ended, last row still in the pool
            for episode_id in open_ids:  # at most one per env
                if ids[0] <= episode_id <= ids[-1]:
                    live[episode_id - ids[0]] = True
            live &= entries[:, 0] == ids
            first_live = int(live.argmax())
            if live[first_live]:
                self.low_id = int(ids[first_live])
                return
            self.low_id = int(ids[-1]) + 1

    # ------------------------------------------------------------------ queries
    def table_view(self, tail: int, head: int, open_now: Mapping[int, tuple[int, int]], next_id: int,
                   low_id: int) -> dict[str, np.ndarray]:
        """The episodes with a row in [tail, head): see ``Store.episodes``."""
        ids = np.arange(low_id, next_id, dtype=np.int64)
        entries = self.table[ids % self.table_rows]
        first, last, info = entries[:, 1].copy(), entries[:, 2].copy(), entries[:, 3].copy()
        keep = (entries[:, 0] == ids) & (info % 4 != OPEN) & (last >= tail) & (last < head)
        for env_id, (episode_id, last_step) in open_now.items():
            position = episode_id - low_id
            if 0 <= position < len(ids) and entries[position, 0] == episode_id:
                last[position], info[position], keep[position] = last_step, env_id * 8 + OPEN, last_step >= tail
        ids, first, last, info = ids[keep], first[keep], last[keep], info[keep]
        last_slots = last % self.slots
        status = info % 4
        return {
            "episode_id": ids, "first_step_id": first, "length": self.episode_step[last_slots] + 1,
            "return": self.episode_return[last_slots].astype(np.float64),
            "terminated": status == TERMINATED, "truncated": status == TRUNCATED, "open": status == OPEN,
            "evicted": self._evicted(ids, first, tail, head), "cut_off": status == CUT_OFF,
            "env_id": info // 8, "last_step_id": last,
        }

    def _evicted(self, ids: np.ndarray, first: np.ndarray, tail: int, head: int) -> np.ndarray:
        evicted = np.zeros(len(ids), np.int64)
        straddling = np.flatnonzero(first < tail)
        for position, step_id in zip(straddling, self.oldest_rows(ids[straddling], tail, head)):
            evicted[position] = self.episode_step[step_id % self.slots] if step_id >= 0 else 0
        return evicted

    def oldest_rows(self, ids: np.ndarray, tail: int, head: int) -> list[int]:
        """The oldest step id in [tail, head) of each episode (-1 if none), scanning up from tail.

        Only episodes that began before the tail need this, at most one per env, and their
        oldest surviving row lies just above the tail, so the scan usually reads one block.
        """
        found = {int(i): -1 for i in ids}
        missing = set(found)
        start = tail
        while missing and start < head:
            stop = min(head, start + _SCAN_ROWS)
            tags = self.episode_id[np.arange(start, stop) % self.slots]
            for episode_id in list(missing):
                hits = np.flatnonzero(tags == episode_id)
                if hits.size:
                    found[episode_id] = start + int(hits[0])
                    missing.discard(episode_id)
            start = stop
        return [found[int(i)] for i in ids]

    def rows_of(self, episode_id: int, first_step: int, last_step: int) -> np.ndarray:
        """Step ids in [first_step, last_step] tagged with ``episode_id``, in order."""
        parts = []
        for start in range(first_step, last_step + 1, _SCAN_ROWS):
            steps = np.arange(start, min(last_step + 1, start + _SCAN_ROWS), dtype=np.int64)
            parts.append(steps[self.episode_id[steps % self.slots] == episode_id])
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def check_env_ids(self, env_ids: Any, n_rows: int) -> np.ndarray | None:
        if env_ids is None:
            return None
        values = np.asarray(env_ids)
        if values.ndim == 0:
            values = np.full(n_rows, values)
        if values.shape != (n_rows,) or values.dtype.kind not in "iu" or (values < 0).any():
            raise InvalidArgumentError(f"env_ids must be {n_rows} non-negative ints (one per row), "
                                       f"got {values.dtype} of shape {values.shape}")
        return values.astype(np.int64)


class _Runs:
    """A batch's rows grouped by env (each group in step order) and cut into runs: the rows of
    one episode inside the batch."""

    def __init__(self, steps: np.ndarray, env: np.ndarray, status: np.ndarray, rewards: np.ndarray,
                 open_episodes: Mapping[int, Sequence]):
        self.steps = steps
        n_rows = len(steps)
        group_start = np.ones(n_rows, bool)
        group_start[1:] = env[1:] != env[:-1]
        run_start = group_start.copy()
        run_start[1:] |= status[:-1] > 0
        first_row = np.flatnonzero(run_start)
        self.last_row = np.append(first_row[1:] - 1, n_rows - 1)
        self.count = len(first_row)
        self.run_of_row = np.cumsum(run_start) - 1
        self.env = env[first_row]
        self.first_step = steps[first_row]
        self.last_step = steps[self.last_row]
        self.last_status = status[self.last_row]
        open_envs = np.fromiter(open_episodes.keys(), np.int64, len(open_episodes))
        self.continues_open = group_start[first_row] & np.isin(self.env, open_envs)
        self.index_in_run = np.arange(n_rows) - first_row[self.run_of_row]
        totals = np.cumsum(rewards)
        before = (totals - rewards)[first_row]
        self.return_in_run = totals - before[self.run_of_row]
        self.next_delta = np.zeros(n_rows, np.int64)
        same_run_next = self.run_of_row[1:] == self.run_of_row[:-1]
        self.next_delta[:-1] = np.where(same_run_next, steps[1:] - steps[:-1], 0)


def _any_per_row(flags: np.ndarray, n_rows: int) -> np.ndarray:
    """One bool per row: whether any element of the row's flag is set."""
    if flags.dtype == np.bool_ and flags.ndim == 1:
        return flags
    return np.asarray(flags, bool).reshape(n_rows, -1).any(1)


def write_run(view: np.ndarray, first_step: int, values: np.ndarray, slots: int) -> None:
    """Write the values of consecutive steps from ``first_step`` on as one or two slices
    (a run shorter than the ring wraps at most once); no fancy-indexed scatter."""
    start = first_step % slots
    head = min(len(values), slots - start)
    view[start:start + head] = values[:head]
    view[:len(values) - head] = values[head:]


def decode(payload: Mapping, head: int) -> dict:
    """The episode state of a commit payload: next id, low id, open episodes by env."""
    state = payload.get(PAYLOAD_KEY) or {}
    next_id = int(state.get("next", 0))
    open_episodes = {int(env_id): (next_id - int(id_back), head - int(head_back))
                     for env_id, id_back, head_back in state.get("open", [])}
    return {"next": next_id, "low": int(state.get("low", 0)), "open": open_episodes}
