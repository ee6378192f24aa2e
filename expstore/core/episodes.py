"""Episode bookkeeping: which episode each row belongs to, and the episode table.

The writer tags every row it appends (episode id, index in the episode, running return, and a
forward link from the previous row of the same episode; see backends/internal.py) and keeps one table
entry per episode. Episodes are tracked per ``env_id``, so the interleaved rows of a vector
env keep each sub-env's episodes intact. An episode ends at a row whose ``terminated`` or
``truncated`` is true.

The table is a ring too: episode ``id`` has row ``id % rows``, and episode ``id + rows`` takes
that row over when it begins. One row per slot is enough for every episode that began inside
the window, but not for one that began before the tail and is still there (a long episode,
or a sub-env's episode while other sub-envs ran many short ones). Such an entry is kept in the
commit payload (``kept``) before any newer episode can take its row, so it survives until its
last row leaves the pool; there is at most one per env.

The final observations of a pool that derives ``next_obs`` have a smaller table of their own,
a ring in the order episodes end (finals.py).

Crash safety: the commit payload holds the small state of the still-open episodes (env id,
episode id, last committed step) and the kept entries; everything else lives in arrays written
in place before the commit that exposes them. A writer reopening after a crash marks the
episodes that were open at the last commit as cut off (and drops their links into rows the
crash discarded), so resuming starts new episodes and finished episodes stay intact.
"""

from __future__ import annotations

import json
import logging
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends.internal import (
    EPISODE_TABLE,
    FINAL_STORED,
    EpisodeStatus,
    episode_info,
    final_fields,
    info_env,
    info_status,
)
from ..errors import InvalidArgumentError
from ..schema import Schema
from .commit import MAX_PAYLOAD_NBYTES
from .finals import FINAL_COLUMN, FinalTable

logger = logging.getLogger("expstore.episodes")  # its name before the layered layout

OPEN, TERMINATED, TRUNCATED, CUT_OFF = EpisodeStatus  # short names for the module's many comparisons
PAYLOAD_KEY = "episodes"
_SCAN_ROWS = 1 << 16
_LOW_BLOCK = 1024  # episode ids checked per step when the oldest live episode moves on, at most
_LOW_FIRST_BLOCK = 64  # and in the first step (a 1,024-id step cost 60 us of every commit)
_KEPT_NBYTES = 1024  # the payload's room for kept entries (about 40), leaving the rest to open episodes
_PAYLOAD_RESERVE_NBYTES = 512  # for what the store adds to the payload (priorities, checksums)
# The payload's room for the open episodes: what the rest of the episode state ({"next", "low",
# "finals"}) and the max priority leave; kept entries and running crcs shrink to fit beside them.
_OPEN_ROOM_NBYTES = MAX_PAYLOAD_NBYTES - 128
_SAFE_OPEN = 64  # open episodes that always fit however large their numbers: no size check below it
_ONE_RUN = np.zeros(1, np.int64)  # the run starts of a batch that holds one episode run
_NO_ROWS = np.zeros(0, np.int64)
_TERMINATED, _TRUNCATED = np.int64(TERMINATED), np.int64(TRUNCATED)
_ARANGE = {"rows": np.arange(0, dtype=np.int64)}  # 0, 1, 2, ...: shared, grown on demand, never written


@dataclass(slots=True)
class OpenEpisode:
    """A writer's running episode of one env; updated in place on every row it appends."""

    episode_id: int
    first_step: int
    last_step: int
    last_index: int  # index of the last row inside the episode (0 for its first row)
    total_return: float  # summed reward up to and including the last row


class EpisodeBook:
    """The episode bookkeeping of one open pool (writer or reader)."""

    def __init__(self, views: Mapping[str, np.ndarray], schema: Schema, slots: int, capacity: int,
                 payload: Mapping, head: int, checksums: bool = False):
        self.episode_id = views["_episode_id"]
        self.episode_step = views["_episode_step"]
        self.episode_return = views["_episode_return"]
        self.next_delta = views["_next_delta"]
        self.table = views[EPISODE_TABLE]
        self.table_rows = len(self.table)
        self.derived = final_fields(views)
        self.slots = slots
        self.slack = slots - capacity  # rows a writer appends at most between two commits
        self.reward = "reward" if "reward" in schema else None
        self.terminated = "terminated" if "terminated" in schema else None
        self.truncated = "truncated" if "truncated" in schema else None
        state = decode(payload, head)
        self.next_id, self.low_id = state["next"], state["low"]
        self.final_table = (FinalTable(views, self.table, state["finals"], schema, checksums) if self.derived
                            else None)
        self.open: dict[int, OpenEpisode] = {}  # by env id
        self.committed_open = state["open"]  # env id -> (episode id, last step), as committed
        self.committed_head = head
        self.kept: dict[int, np.ndarray] = state["kept"]  # episode id -> entry a newer one may take over
        self.risk_checked = self.low_id  # writer: ids below were checked by _keep_at_risk

    # ------------------------------------------------------------------ writer: recovery
    def cut_off_committed_open(self) -> None:
        """Writer reopening: the episodes open at the last commit end here, cut off."""
        for env_id, (episode_id, last_step) in self.committed_open.items():
            entry = self.entries_of(np.array([episode_id]), self.kept)[0]
            first_step = int(entry[1]) if entry[0] == episode_id else last_step - int(
                self.episode_step[last_step % self.slots])
            cut_off = entry.copy()
            cut_off[:4] = (episode_id, first_step, last_step, episode_info(env_id, CUT_OFF))
            row = episode_id % self.table_rows
            if self.table[row, 0] <= episode_id:  # else a newer episode holds the row (its entry is kept)
                self.table[row, :4] = cut_off[:4]
            if episode_id in self.kept:
                self.kept[episode_id] = cut_off
            if self.committed_head - last_step <= self.slots:  # else a newer committed row holds the slot
                self.next_delta[last_step % self.slots] = 0  # may point at a row the crash discarded
            logger.info("episode %d (env %d) was open when the writer stopped; marked cut off at step %d",
                        episode_id, env_id, last_step)
        self.committed_open = {}

    # ------------------------------------------------------------------ writer: appends
    def open_room(self) -> int:
        """Envs that may open an episode before an append has to check that the open episodes
        still fit the commit record (``check_open_room``): how many appends a stage may take
        before its bookkeeping runs (core/staging.py)."""
        return _SAFE_OPEN - len(self.open)

    def status_of(self, transition: Mapping[str, Any]) -> EpisodeStatus:
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
            if len(self.open) >= _SAFE_OPEN and not self.status_of(transition):
                self.check_open_room(np.array([env_id], np.int64), step_id + 1, 1)
            state = OpenEpisode(self.next_id, step_id, step_id, 0, reward)
            self.table[self.next_id % self.table_rows, :4] = (self.next_id, step_id, -1, episode_info(env_id))
            self.next_id += 1
            self.open[env_id] = state
        else:
            self._link(state.last_step, step_id)
            state.last_step = step_id
            state.last_index += 1
            state.total_return += reward
        self.episode_id[slot] = state.episode_id
        self.episode_step[slot] = state.last_index
        self.episode_return[slot] = state.total_return
        self.next_delta[slot] = 0
        status = self.status_of(transition)
        if status:
            self._close(env_id, state, status, derived)

    def _close(self, env_id: int, state: OpenEpisode, status: EpisodeStatus, derived: Mapping | None) -> None:
        del self.open[env_id]
        if (self.final_table is None or derived is None) and not self.kept:
            row = state.episode_id % self.table_rows  # the common case, in plain Python as on_append is
            if self.table[row, 0] == state.episode_id:  # else a newer episode took the row (a small table)
                self.table[row, 2:4] = (state.last_step, episode_info(env_id, status))
            return
        ids = np.array([state.episode_id], np.int64)
        finals = None
        if self.final_table is not None and derived is not None:
            finals = {name: np.asarray(derived[f"next_{name}"])[None] for name in self.derived}
        self._close_entries(ids, np.array([state.last_step], np.int64),
                            np.array([episode_info(env_id, status)], np.int64), finals)

    def end_open(self, env_ids: np.ndarray, derived: Mapping[str, np.ndarray] | None) -> list[int]:
        """End the open episodes of ``env_ids`` at their last row, as truncated: the env was
        reset before it ended them. ``derived``: the ``next_<obs>`` after each env's last row."""
        ended = []
        for position, env_id in enumerate(env_ids.tolist()):
            state = self.open.get(env_id)
            if state is None:
                continue
            row = None if derived is None else {key: values[position] for key, values in derived.items()}
            self._close(env_id, state, TRUNCATED, row)
            ended.append(state.episode_id)
        return ended

    def on_extend(self, first_step: int, columns: Mapping[str, np.ndarray], derived: Mapping | None,
                  env_ids: np.ndarray | None, n_rows: int | None = None) -> None:
        """Tag a run of ``n_rows`` rows ``first_step, first_step + 1, ...`` just written (default:
        the columns' length; a schema of heap fields only has no columns here); vectorised."""
        n_rows = len(next(iter(columns.values()))) if n_rows is None else n_rows
        if env_ids is None or (env_ids == env_ids[0]).all():
            env_id = 0 if env_ids is None else int(env_ids[0])
            self._extend_one_env(env_id, first_step, *self._ends(columns, n_rows), self._rewards(columns, n_rows),
                                 derived)
            return
        status = self._status_column(columns, n_rows)
        rewards = np.asarray(self._rewards(columns, n_rows), np.float64)
        envs = env_ids
        # rows grouped by env, each group in step order
        order = np.argsort(envs, kind="stable")
        runs = _Runs(first_step + order, envs[order], status[order], rewards[order], self.open)
        ids = self._assign_ids(runs)
        self._link_open(runs, ids)
        self._tag_rows(runs, ids, order, first_step)
        self._write_entries(runs, ids, order, derived)
        self._update_open(runs, ids)

    def _rewards(self, columns: Mapping[str, np.ndarray], n_rows: int) -> np.ndarray:
        if self.reward is None:
            return np.zeros(n_rows)
        rewards = columns[self.reward]
        return rewards if rewards.ndim == 1 else rewards.reshape(n_rows, -1)[:, 0]

    def _ends(self, columns: Mapping[str, np.ndarray], n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows of a batch that end an episode, and how each ends (terminated wins)."""
        terminated = None if self.terminated is None else _any_per_row(columns[self.terminated], n_rows)
        truncated = None if self.truncated is None else _any_per_row(columns[self.truncated], n_rows)
        if terminated is None or truncated is None:
            flags, status = (truncated, TRUNCATED) if terminated is None else (terminated, TERMINATED)
            if flags is None:
                return _NO_ROWS, _NO_ROWS
            ends = flags.nonzero()[0]  # the method: np.flatnonzero adds a Python call and a ravel
            return ends, np.full(len(ends), status, np.int64)
        ends = (terminated | truncated).nonzero()[0]
        return ends, np.where(terminated[ends], _TERMINATED, _TRUNCATED)

    def _extend_one_env(self, env_id: int, first_step: int, ends: np.ndarray, end_status: np.ndarray,
                        rewards: np.ndarray, derived: Mapping | None) -> None:
        """``on_extend`` of rows from one env, the common case: its episodes are contiguous runs
        of the batch, so every tag is a cumulative sum or a slice, computed straight into the
        mapped arrays (a batch that wraps the ring goes through a copy); no sort, no per-run loop."""
        n_rows = len(rewards)
        state = self.open.get(env_id)
        continuing = state is not None
        start = first_step % self.slots
        wraps = start + n_rows > self.slots
        if wraps:
            ids, index, returns, next_delta = (np.empty(n_rows, view.dtype) for view in (
                self.episode_id, self.episode_step, self.episode_return, self.next_delta))
        else:
            end = start + n_rows
            ids, index, returns, next_delta = (self.episode_id[start:end], self.episode_step[start:end],
                                               self.episode_return[start:end], self.next_delta[start:end])
        rows = _arange(n_rows)
        one_run = ends.size == 0 or (ends.size == 1 and ends[0] == n_rows - 1)
        if one_run:
            run_starts = _ONE_RUN
            ids.fill(self.next_id if state is None else state.episode_id)
            if state is None:
                index[:] = rows
            else:
                np.add(rows, state.last_index + 1, out=index)
            np.add.accumulate(rewards, dtype=np.float64, out=returns)  # np.cumsum less its Python wrapper
            if state is not None:
                returns += state.total_return
        else:
            # Each run's values per row as one value per run repeated by the run lengths
            # (ndarray.repeat costs a third of a searchsorted or a gather over every row); the
            # episode a batch continues shifts its run's values, one scalar each.
            edges = (np.concatenate((_ONE_RUN, ends + 1)) if ends[-1] == n_rows - 1
                     else np.concatenate((_ONE_RUN, ends + 1, (n_rows,))))
            run_starts = edges[:-1]
            lengths = edges[1:] - run_starts
            run_ids = _arange(len(lengths)) + (self.next_id - continuing)
            totals = np.add.accumulate(rewards, dtype=np.float64, out=returns)
            offsets = totals[run_starts] - rewards[run_starts]  # the batch's rewards before each run
            index_offsets = run_starts
            if state is not None:
                run_ids[0] = state.episode_id
                index_offsets = run_starts.copy()
                index_offsets[0] = -(state.last_index + 1)
                offsets[0] -= state.total_return
            ids[:] = run_ids.repeat(lengths)
            np.subtract(rows, index_offsets.repeat(lengths), out=index)
            returns -= offsets.repeat(lengths)
        next_delta.fill(1)
        next_delta[ends] = 0
        next_delta[-1] = 0
        if state is not None:
            self._link(state.last_step, first_step, first_step + n_rows - 1)
        if wraps:
            for view, values in ((self.episode_id, ids), (self.episode_step, index),
                                 (self.episode_return, returns), (self.next_delta, next_delta)):
                write_run(view, first_step, values, self.slots)
        last_id = int(ids[-1])
        if (self.final_table is None or derived is None) and not self.kept:
            self._write_run_entries(env_id, first_step, state, run_starts, ends, end_status)
        else:
            new_runs = len(run_starts) - continuing
            if new_runs:
                self._enter_runs(env_id, first_step,
                                 np.arange(self.next_id, self.next_id + new_runs, dtype=np.int64),
                                 run_starts[int(continuing):])
            if ends.size:
                self._close_runs(env_id, first_step, ids[ends], ends, end_status, derived)
        last_status = int(end_status[-1]) if ends.size and ends[-1] == n_rows - 1 else OPEN
        self._keep_open_one_env(env_id, first_step, state, last_id, int(run_starts[-1]), n_rows, last_status)

    def _write_run_entries(self, env_id: int, first_step: int, state: OpenEpisode | None, run_starts: np.ndarray,
                           ends: np.ndarray, end_status: np.ndarray) -> None:
        """The table entries of a one-env batch in a pool without kept entries or final
        observations to store: each new episode's entry written whole (first and last step, how it
        ended) in one slice, then the end of the episode the batch continued, if it ended."""
        continuing = state is not None
        new_runs = len(run_starts) - continuing
        if new_runs:
            columns = np.empty((4, len(run_starts)), np.int64)  # the entries' columns: one call each
            np.add(_arange(len(run_starts)), self.next_id - continuing, out=columns[0])
            np.add(run_starts, first_step, out=columns[1])
            columns[2] = -1
            np.add(ends, first_step, out=columns[2, :len(ends)])
            info = episode_info(env_id)
            columns[3] = info
            np.add(end_status, info, out=columns[3, :len(ends)])
            new = columns.T[int(continuing):][-self.table_rows:]  # more episodes than table rows: the newest fit
            write_run(self.table[:, :4], int(new[0, 0]), new, self.table_rows)
            self.next_id += new_runs
        if state is not None and ends.size:
            row = state.episode_id % self.table_rows
            if self.table[row, 0] == state.episode_id:  # else a newer episode took the row (a small table)
                self.table[row, 2:4] = (first_step + int(ends[0]), episode_info(env_id, int(end_status[0])))

    def _enter_runs(self, env_id: int, first_step: int, new_ids: np.ndarray, first_rows: np.ndarray) -> None:
        """Table entries of the episodes that begin in this batch; their ids are consecutive."""
        self.next_id += len(new_ids)
        new_ids, first_rows = new_ids[-self.table_rows:], first_rows[-self.table_rows:]  # the newest fit
        entries = np.empty((len(new_ids), 4), np.int64)
        entries[:, 0] = new_ids
        entries[:, 1] = first_rows
        entries[:, 1] += first_step
        entries[:, 2] = -1
        entries[:, 3] = episode_info(env_id)
        write_run(self.table[:, :4], int(new_ids[0]), entries, self.table_rows)

    def _close_runs(self, env_id: int, first_step: int, closed_ids: np.ndarray, end_rows: np.ndarray,
                    end_status: np.ndarray, derived: Mapping | None) -> None:
        finals = None
        if self.final_table is not None and derived is not None:
            finals = {name: np.asarray(derived[f"next_{name}"])[end_rows] for name in self.derived}
        self._close_entries(closed_ids, first_step + end_rows, episode_info(env_id, end_status), finals)

    def _close_entries(self, ids: np.ndarray, last_steps: np.ndarray, infos: np.ndarray,
                       finals: Mapping[str, np.ndarray] | None) -> None:
        """End the entries of ``ids`` (``infos``: env id and status), except those a newer
        episode already took over and that are not kept (a table smaller than the episodes of
        one batch keeps only the newest); ``finals``: their final observations, if any."""
        entries = ids % self.table_rows
        own = self.table[entries, 0] == ids
        in_kept = np.isin(ids, list(self.kept)) if self.kept else np.zeros(len(ids), bool)
        kept = np.flatnonzero(in_kept)
        final_table = self.final_table
        if finals is not None and final_table is not None:
            numbers = final_table.keep(ids, last_steps, finals, own | in_kept)
            infos = infos + (numbers >= 0) * FINAL_STORED
            if final_table.is_ring:  # the entry names its observation before it says there is one
                self.table[entries[own], FINAL_COLUMN] = numbers[own]
                for position in kept:
                    self.kept[int(ids[position])][FINAL_COLUMN] = numbers[position]
        self.table[entries[own], 2] = last_steps[own]
        self.table[entries[own], 3] = infos[own]
        for position in kept:
            self.kept[int(ids[position])][2:4] = (last_steps[position], infos[position])

    def _keep_open_one_env(self, env_id: int, first_step: int, state: OpenEpisode | None, last_id: int,
                           last_start: int, n_rows: int, last_status: int) -> None:
        if last_status:
            self.open.pop(env_id, None)
            return
        first = state.first_step if state is not None and last_start == 0 else first_step + last_start
        self.open[env_id] = self.open_at(last_id, first, first_step + n_rows - 1)

    def open_at(self, episode_id: int, first_step: int, last_step: int) -> OpenEpisode:
        """The open episode whose last row is ``last_step``, its index and return read back as stored."""
        slot = last_step % self.slots
        return OpenEpisode(int(episode_id), int(first_step), int(last_step), int(self.episode_step[slot]),
                           float(self.episode_return[slot]))

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
            ids[run] = self.open[int(runs.env[run])].episode_id
        new = np.flatnonzero(~continuing)
        rank = np.argsort(np.argsort(runs.first_step[new], kind="stable"), kind="stable")
        ids[new] = self.next_id + rank
        self.next_id += len(new)
        return ids

    def _link_open(self, runs: _Runs, ids: np.ndarray) -> None:
        # Before _tag_rows: a batch row that reuses a linked row's slot then writes its own link there.
        for run in np.flatnonzero(runs.continues_open):
            self._link(self.open[int(runs.env[run])].last_step, int(runs.first_step[run]))

    def _link(self, from_step: int, to_step: int, newest_step: int | None = None) -> None:
        """Point row ``from_step`` at ``to_step``, the next row of its episode, unless the ring
        already reused its slot: an env idle for a whole ring must not relink a newer row. The
        write that brings ``to_step`` may reach further, up to ``newest_step``: a row of it a
        whole ring after ``from_step`` holds that slot now, with a link of its own."""
        newest = to_step if newest_step is None else newest_step
        if newest - from_step < self.slots:
            self.next_delta[from_step % self.slots] = to_step - from_step

    def _tag_rows(self, runs: _Runs, ids: np.ndarray, order: np.ndarray, first_step: int) -> None:
        base_index = np.zeros(runs.count, np.int64)
        base_return = np.zeros(runs.count)
        for run in np.flatnonzero(runs.continues_open):
            state = self.open[int(runs.env[run])]
            base_index[run], base_return[run] = state.last_index + 1, state.total_return
        columns = ((self.episode_id, ids[runs.run_of_row]),
                   (self.episode_step, runs.index_in_run + base_index[runs.run_of_row]),
                   (self.episode_return, runs.return_in_run + base_return[runs.run_of_row]),
                   (self.next_delta, runs.next_delta))
        for view, sorted_values in columns:
            values = np.empty_like(sorted_values)
            values[order] = sorted_values  # back to step order: the rows are one or two slot runs
            write_run(view, first_step, values, self.slots)

    def _write_entries(self, runs: _Runs, ids: np.ndarray, order: np.ndarray, derived: Mapping | None) -> None:
        new = np.flatnonzero(~runs.continues_open)
        new = new[np.argsort(ids[new], kind="stable")]  # in id order: where ids share a row, the newest wins
        self.table[ids[new] % self.table_rows, :4] = np.stack(
            [ids[new], runs.first_step[new], np.full(len(new), -1), episode_info(runs.env[new])], axis=1)
        closed = runs.last_status > 0
        finals = None
        if self.final_table is not None and derived is not None:
            finals = {name: np.asarray(derived[f"next_{name}"])[order][runs.last_row[closed]] for name in self.derived}
        self._close_entries(ids[closed], runs.last_step[closed],
                            episode_info(runs.env[closed], runs.last_status[closed]), finals)

    def _update_open(self, runs: _Runs, ids: np.ndarray) -> None:
        last_run_of_env = np.flatnonzero(np.r_[runs.env[1:] != runs.env[:-1], True])
        for run in last_run_of_env:
            env_id = int(runs.env[run])
            if runs.last_status[run]:
                self.open.pop(env_id, None)
                continue
            first = (self.open[env_id].first_step if runs.continues_open[run] else int(runs.first_step[run]))
            self.open[env_id] = self.open_at(int(ids[run]), first, int(runs.steps[runs.last_row[run]]))

    # ------------------------------------------------------------------ commits
    def payload(self, tail: int, head: int) -> dict:
        """This book's part of the commit payload (tail/head: the window being committed)."""
        self._keep_at_risk(tail)
        self._drop_gone_kept(tail)
        self._advance_low(tail)
        open_rows = sorted([env_id, self.next_id - state.episode_id, head - state.last_step]
                           for env_id, state in self.open.items())
        state = {"next": self.next_id, "low": self.low_id, "open": open_rows}
        if len(open_rows) > _SAFE_OPEN and len(json.dumps(open_rows, separators=(",", ":"))) > _OPEN_ROOM_NBYTES:
            raise InvalidArgumentError(
                f"the {len(open_rows)} open episodes no longer fit the commit record ({_OPEN_ROOM_NBYTES} bytes); "
                "end some envs' episodes (end_episodes(env_ids)) and flush again, or record the envs into "
                "several pools")
        if self.final_table is not None and self.final_table.is_ring:
            state["finals"] = self.final_table.written
        if self.kept:
            state["kept"] = self._kept_records(head, len(json.dumps(state, separators=(",", ":"))))
        return {PAYLOAD_KEY: state}

    def _kept_records(self, head: int, state_nbytes: int) -> list[list[int]]:
        """The kept entries that fit the payload, the running episodes and the newest ends first.
        More than fit takes an env whose episode outlives a whole ring of other episodes in
        each of dozens of envs; the entries left out are forgotten, like a small table's."""
        room = min(_KEPT_NBYTES, MAX_PAYLOAD_NBYTES - _PAYLOAD_RESERVE_NBYTES - state_nbytes)
        newest_first = sorted(self.kept.items(), key=lambda item: (item[1][2] >= 0, -item[1][2]))
        records: list[list[int]] = []
        used = 0
        for episode_id, entry in newest_first:
            record = self._kept_record(entry, head)
            used += len(json.dumps(record, separators=(",", ":"))) + 1
            if used > room:
                logger.warning("the commit payload has room for %d of %d episode entries that newer episodes "
                               "took over; episode %d and %d older ones are forgotten by episodes()",
                               len(records), len(self.kept), episode_id, len(newest_first) - len(records) - 1)
                for forgotten, _ in newest_first[len(records):]:
                    del self.kept[forgotten]
                break
            records.append(record)
        return sorted(records)

    def _kept_record(self, entry: np.ndarray, head: int) -> list[int]:
        """A kept entry in the payload, its numbers counted back from the commit's like ``open``."""
        record = [self.next_id - int(entry[0]), head - int(entry[1]), head - int(entry[2]) if entry[2] >= 0 else -1,
                  int(entry[3])]
        if len(entry) > FINAL_COLUMN and self.final_table is not None:
            record.append(self.final_table.written - int(entry[FINAL_COLUMN]) if entry[3] & FINAL_STORED else -1)
        return record

    def _keep_at_risk(self, tail: int) -> None:
        """Copy into ``kept`` the entries that the next ``slack`` new episodes (at most one per
        row appended before the next commit) could take over while their episodes still have
        rows in the pool, so that this commit's readers and a writer reopening after a crash
        still find them. With one table row per slot these episodes all began before the tail:
        at most one per env. Amortised O(1) per episode: each id is checked once."""
        stop = self.next_id + self.slack - self.table_rows
        start = max(self.risk_checked, self.low_id)
        if start < stop:
            ids = np.arange(start, stop, dtype=np.int64)
            entries = self.table[ids % self.table_rows]
            is_open = np.isin(ids, [state.episode_id for state in self.open.values()])
            ended_inside = (info_status(entries[:, 3]) != OPEN) & (entries[:, 2] >= tail)
            live = (entries[:, 0] == ids) & (entries[:, 1] < tail) & (is_open | ended_inside)
            for position in np.flatnonzero(live):
                self.kept[int(ids[position])] = entries[position].copy()
        self.risk_checked = max(self.risk_checked, stop)

    def _drop_gone_kept(self, tail: int) -> None:
        open_ids = {state.episode_id for state in self.open.values()}
        for episode_id, entry in list(self.kept.items()):
            if episode_id not in open_ids and info_status(entry[3]) != OPEN and entry[2] < tail:
                del self.kept[episode_id]  # its last row left the pool

    def _advance_low(self, tail: int) -> None:
        """Move ``low_id`` past episodes gone from the pool; vectorised over blocks of ids, and
        amortised O(1) per episode since ``low_id`` only grows."""
        open_ids = [state.episode_id for state in self.open.values()]
        if self.low_id in open_ids:
            return  # the common case between episode ends: the oldest episode is still open
        block = _LOW_FIRST_BLOCK  # a commit's tail passes a few episodes: a first small block, then larger
        while self.low_id < self.next_id:
            ids = np.arange(self.low_id, min(self.next_id, self.low_id + block), dtype=np.int64)
            block = min(2 * block, _LOW_BLOCK)
            entries = self.entries_of(ids, self.kept)
            live = (info_status(entries[:, 3]) != OPEN) & (entries[:, 2] >= tail)  # ended, last row still in the pool
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
    def entries_of(self, ids: np.ndarray, kept: Mapping[int, np.ndarray]) -> np.ndarray:
        """The entries (id, first step, last step, info) of episodes ``ids``, from the table or,
        where a newer episode took the row over, from ``kept``. An entry whose id column is not
        its id is unknown (forgotten by a table smaller than the episodes in the pool)."""
        entries = self.table[ids % self.table_rows]
        lost = np.flatnonzero(entries[:, 0] != ids) if kept else ()
        if len(lost):
            kept_ids = np.array(sorted(kept), np.int64)
            where = np.searchsorted(kept_ids, ids[lost]).clip(max=len(kept_ids) - 1)
            found = kept_ids[where] == ids[lost]
            entries[lost[found]] = np.stack([kept[int(i)] for i in kept_ids])[where[found]]
        return entries

    def finals_at(self, last_steps: np.ndarray, kept: Mapping[int, np.ndarray]) -> tuple[dict, np.ndarray]:
        """The final observations of the episodes whose last rows are ``last_steps`` (name ->
        values), and where they are known: the row ends its episode and its observation is kept."""
        ids = self.episode_id[last_steps % self.slots]
        values, held, entries = self.finals_of(ids, kept)
        return values, held & (entries[:, 2] == last_steps)

    def finals_of(self, ids: np.ndarray, kept: Mapping[int, np.ndarray]) -> tuple[dict, np.ndarray, np.ndarray]:
        """The final observations of episodes ``ids`` (name -> values), where they are held,
        and the episodes' entries."""
        entries = self.entries_of(ids, kept)
        if self.final_table is None:
            return {}, np.zeros(len(ids), bool), entries
        stored = (entries[:, 0] == ids) & (entries[:, 3] & FINAL_STORED > 0)
        values, held = self.final_table.read(ids, entries, stored)
        return values, held, entries

    # ------------------------------------------------------------------ copies (maintenance/carry.py)
    def clear_entries(self) -> None:
        """Forget every episode entry and final observation (a copy replaces them)."""
        self.table[:] = 0
        self.kept = {}
        if self.final_table is not None:
            self.final_table.clear()

    def restore_entries(self, entries: np.ndarray, finals: Mapping[str, np.ndarray] | None, tail: int) -> None:
        """Write a copy's episode entries, ``finals`` holding the final observations of those
        flagged FINAL_STORED. Where ids share a row the newest is written; an older one that
        began before ``tail`` (so it can still be in the pool) is kept, as ``_keep_at_risk`` does."""
        order = np.argsort(entries[:, 0], kind="stable")
        given = np.zeros((len(entries), self.table.shape[1]), np.int64)
        given[:, :4] = entries[order, :4]
        finals = None if finals is None else {name: np.asarray(values)[order] for name, values in finals.items()}
        flagged = given[:, 3] & FINAL_STORED > 0
        given[:, 3] &= ~FINAL_STORED  # set again below for the observations this table holds
        ids = given[:, 0]
        self.table[ids % self.table_rows] = given
        displaced = (self.table[ids % self.table_rows, 0] != ids) & (given[:, 1] < tail)
        for position in np.flatnonzero(displaced):
            self.kept[int(ids[position])] = given[position].copy()
        if finals is not None and flagged.any() and self.final_table is not None:
            ended = given[flagged]
            self._close_entries(ended[:, 0], ended[:, 2], ended[:, 3], {name: finals[name][flagged]
                                                                      for name in self.derived})

    def table_view(self, tail: int, head: int, open_now: Mapping[int, tuple[int, int]], next_id: int,
                   low_id: int, kept: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
        """The episodes with a row in [tail, head): see ``Store.episodes``."""
        ids = np.arange(low_id, next_id, dtype=np.int64)
        entries = self.entries_of(ids, kept)
        first, last, info = entries[:, 1].copy(), entries[:, 2].copy(), entries[:, 3].copy()
        keep = (entries[:, 0] == ids) & (info_status(info) != OPEN) & (last >= tail) & (last < head)
        for env_id, (episode_id, last_step) in open_now.items():
            position = episode_id - low_id
            if 0 <= position < len(ids) and entries[position, 0] == episode_id:
                last[position], info[position], keep[position] = last_step, episode_info(env_id), last_step >= tail
        ids, first, last, info = ids[keep], first[keep], last[keep], info[keep]
        last_slots = last % self.slots
        status = info_status(info)
        return {
            "episode_id": ids, "first_step_id": first, "length": self.episode_step[last_slots] + 1,
            "return": self.episode_return[last_slots].astype(np.float64),
            "terminated": status == TERMINATED, "truncated": status == TRUNCATED, "open": status == OPEN,
            "evicted": self._evicted(ids, first, tail, head), "cut_off": status == CUT_OFF,
            "env_id": info_env(info), "last_step_id": last,
        }

    def _evicted(self, ids: np.ndarray, first: np.ndarray, tail: int, head: int) -> np.ndarray:
        evicted = np.zeros(len(ids), np.int64)
        straddling = np.flatnonzero(first < tail)
        for position, step_id in zip(straddling, self.oldest_rows(ids[straddling], tail, head), strict=True):
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

    def check_env_ids(self, env_ids: Any, n_rows: int, head: int | None = None) -> np.ndarray | None:
        """``env_ids`` of an extend of ``n_rows`` rows from ``head`` on as int64 (None: all env 0),
        refused when they are not ints or open more episodes than the commit record holds."""
        if env_ids is None:
            return None
        values = np.asarray(env_ids)
        if values.ndim == 0:
            values = np.full(n_rows, values)
        if values.shape != (n_rows,) or values.dtype.kind not in "iu" or (values < 0).any():
            raise InvalidArgumentError(f"env_ids must be {n_rows} non-negative ints (one per row), "
                                       f"got {values.dtype} of shape {values.shape}")
        values = values.astype(np.int64)
        # The range of ids bounds how many envs the batch names: the common small vector env skips the rest.
        if (head is not None and n_rows and len(self.open) + n_rows > _SAFE_OPEN
                and len(self.open) + int(values.max()) - int(values.min()) >= _SAFE_OPEN):
            envs = np.unique(values)
            new_envs = envs[~np.isin(envs, np.fromiter(self.open, np.int64, len(self.open)))]
            if len(new_envs) and len(self.open) + len(new_envs) > _SAFE_OPEN:
                # Counted as if each new env's episode stays open: the batch's flags are cast later.
                self.check_open_room(new_envs, head + n_rows, n_rows)
        return values

    def check_open_room(self, new_envs: np.ndarray, head: int, n_rows: int) -> None:
        """Refuse to open episodes for ``new_envs`` (envs without one) when the open episodes would
        no longer fit the commit record: an upper bound on the bytes each takes in the payload
        once they are written (``head``: the step id after the write of ``n_rows`` rows). Their numbers grow a little
        until the commit; ``payload`` refuses a commit they outgrew."""
        per_episode = self._open_nbytes(new_envs, head, n_rows)
        needed = int(per_episode.sum())
        if needed <= _OPEN_ROOM_NBYTES:
            return
        fit = int(_OPEN_ROOM_NBYTES // per_episode.mean())
        raise InvalidArgumentError(
            f"at most {fit} envs can have an open episode at once in this pool; {len(self.open)} have one "
            f"and this write would open {len(new_envs)} more (env ids {_id_list(new_envs)}): their state "
            f"would take {needed} bytes of the commit record's {_OPEN_ROOM_NBYTES}; end some envs' episodes "
            "first (a row with terminated or truncated, or end_episodes(env_ids)), or record the envs into "
            "several pools; nothing was written")

    def _open_nbytes(self, new_envs: np.ndarray, head: int, n_rows: int) -> np.ndarray:
        """Each open episode's payload bytes right after a write of ``n_rows`` rows up to step id
        ``head`` in which ``new_envs`` open one each (counted with the largest numbers they can have)."""
        n_open, n_new = len(self.open), len(new_envs)
        states = self.open.values()
        env = np.concatenate((np.fromiter(self.open, np.int64, n_open), new_envs))
        id_back = np.arange(n_open + n_new, 0, -1, dtype=np.int64)  # new ids: distinct, 1..n_new back
        id_back[:n_open] = np.fromiter((self.next_id - state.episode_id for state in states), np.int64, n_open)
        id_back[:n_open] += n_new
        head_back = np.arange(n_open + n_new, 0, -1, dtype=np.int64) + (n_rows - n_new)  # distinct last rows
        head_back[:n_open] = np.fromiter((head - state.last_step for state in states), np.int64, n_open)
        # "[env,id_back,head_back]," per episode: the digits and five characters
        return _digits(env) + _digits(id_back) + _digits(head_back) + 5


class EpisodeTable:
    """The episodes of a pool, one row each, as ``Store.episodes`` returns them.

    A small column table: ``table["episode_id"]`` is a column (a numpy array), ``len(table)``
    the number of episodes. Like a pandas DataFrame (and the dict of columns it replaces),
    iterating it yields the column names, and ``keys``/``values``/``items`` walk the columns,
    so ``dict(table)``, ``np.savez(path, **table)`` and ``pandas.DataFrame(dict(table))`` work;
    ``to_pandas`` makes the DataFrame when pandas is installed. ``window_bound`` says what
    evicted the episodes' missing rows (the ``evicted`` column), as ``Store.window_bound`` does:
    ``"capacity"``, ``"heap 'name'"`` (a byte heap full before the ring), or None.
    """

    __slots__ = ("_columns", "_rows", "window_bound")

    def __init__(self, columns: Mapping[str, np.ndarray], window_bound: str | None = None):
        self.window_bound = window_bound
        self._columns = {name: np.asarray(values) for name, values in columns.items()}
        lengths = {len(values) for values in self._columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"episode table columns differ in length: {sorted(lengths)}")
        self._rows = lengths.pop() if lengths else 0

    @property
    def columns(self) -> tuple[str, ...]:
        """The column names, in order."""
        return tuple(self._columns)

    def __len__(self) -> int:
        return self._rows

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._columns[name]
        except (KeyError, TypeError):
            raise KeyError(f"the episode table has no column {name!r}; its columns: {list(self._columns)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def keys(self) -> KeysView[str]:
        return self._columns.keys()

    def values(self) -> ValuesView[np.ndarray]:
        return self._columns.values()

    def items(self) -> ItemsView[str, np.ndarray]:
        return self._columns.items()

    def get(self, name: str, default: Any = None) -> Any:
        return self._columns.get(name, default)

    def to_dict(self) -> dict[str, np.ndarray]:
        """The columns as a plain dict (name -> array; the arrays are shared, not copied)."""
        return dict(self._columns)

    def to_pandas(self) -> Any:
        """The table as a ``pandas.DataFrame``, one row per episode (needs pandas)."""
        try:
            import pandas  # optional dependency: only this method needs it
        except ImportError:
            raise ImportError("EpisodeTable.to_pandas needs pandas: pip install pandas") from None
        return pandas.DataFrame(self._columns)

    def __repr__(self) -> str:
        bound = "" if self.window_bound is None else f"; window bounded by {self.window_bound}"
        return f"EpisodeTable({self._rows} episodes; columns {', '.join(self._columns)}{bound})"


class _Runs:
    """A batch's rows grouped by env (each group in step order) and cut into runs: the rows of
    one episode inside the batch."""

    def __init__(self, steps: np.ndarray, env: np.ndarray, status: np.ndarray, rewards: np.ndarray,
                 open_episodes: Mapping[int, OpenEpisode]):
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


def _arange(n_rows: int) -> np.ndarray:
    """``np.arange(n_rows)`` as a read-only view of one shared array (no allocation per batch)."""
    rows = _ARANGE["rows"]
    if len(rows) < n_rows:
        rows = np.arange(max(n_rows, 2 * len(rows)), dtype=np.int64)
        rows.flags.writeable = False
        _ARANGE["rows"] = rows
    return rows[:n_rows]


def _digits(values: np.ndarray) -> np.ndarray:
    """Decimal digits of non-negative ints, as json writes them."""
    return np.char.str_len(values.astype(str))


def _id_list(ids: np.ndarray) -> str:
    shown = ", ".join(str(i) for i in ids[:5].tolist())
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > 5 else "")


def _any_per_row(flags: np.ndarray, n_rows: int) -> np.ndarray:
    """One bool per row: whether any element of the row's flag is set."""
    if flags.dtype == np.bool_ and flags.ndim == 1:
        return flags
    return np.asarray(np.asarray(flags, bool).reshape(n_rows, -1).any(1))


def write_run(view: np.ndarray, first_step: int, values: np.ndarray, slots: int) -> None:
    """Write the values of consecutive steps from ``first_step`` on as one or two slices
    (a run shorter than the ring wraps at most once); no fancy-indexed scatter."""
    start = first_step % slots
    if start + len(values) <= slots:  # the common run, which does not wrap: one slice
        view[start:start + len(values)] = values
        return
    head = slots - start
    view[start:start + head] = values[:head]
    view[:len(values) - head] = values[head:]


def decode(payload: Mapping, head: int) -> dict:
    """The episode state of a commit payload: next id, low id, open episodes by env, and the
    kept entries by episode id."""
    state = payload.get(PAYLOAD_KEY) or {}
    next_id = int(state.get("next", 0))
    open_episodes = {int(env_id): (next_id - int(id_back), head - int(head_back))
                     for env_id, id_back, head_back in state.get("open", [])}
    finals = int(state.get("finals", 0))
    kept = {}
    for record in state.get("kept", []):
        id_back, first_back, last_back, info = (int(value) for value in record[:4])
        entry = [next_id - id_back, head - first_back, head - last_back if last_back >= 0 else -1, info]
        if len(record) > FINAL_COLUMN:
            entry.append(finals - int(record[FINAL_COLUMN]) if int(record[FINAL_COLUMN]) >= 0 else 0)
        kept[entry[0]] = np.array(entry, np.int64)
    return {"next": next_id, "low": int(state.get("low", 0)), "open": open_episodes, "kept": kept,
            "finals": finals}
