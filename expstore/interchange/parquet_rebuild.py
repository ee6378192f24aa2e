"""Rebuilding a pool that derives ``next_obs`` from the rows of a Parquet file (parquet_derived.py).

The file names each row's episode; the pool tracks episodes per env id. ``EpisodeSpans``
(parquet_reading.py, shared with the import of pools that store ``next_obs``) gives the episodes
that run at the same time (a vector env's interleaved ones) env ids of their own, so that each
row's next row in its episode is the same in the pool as in the file. ``DerivedWriter`` then
appends the rows on those env ids, hands the pool each ended episode's final observation (the
``next_<obs>`` of its last row), and checks on the way that every other row's ``next_<obs>`` is
the observation of its episode's next row: what the pool will derive in its place.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, SchemaError
from ..inspect.streaming import Progress, slice_rows
from ..schema import Field, Schema
from .arrow_columns import from_arrow
from .parquet_reading import EpisodeSpans, check_steps, done_flags, next_batch

_CHECK_ROWS = 1 << 16  # episode ends checked per pass after the import


@dataclass
class Batch:
    """Consecutive rows of the file: the fields, the ``next_<obs>`` (zeros where null) and where
    they are given, episode ids and step ids; ``first_row``: the file's row of the first."""

    first_row: int
    steps: np.ndarray
    rows: dict[str, Any]
    nexts: dict[str, Any]
    valid: np.ndarray
    ids: np.ndarray


def read_batches(src: str, parquet, schema: Schema, names: tuple[str, ...],
                 progress: Progress | None) -> Iterator[Batch]:
    """The file's rows in batches of about 64 MiB, their step ids checked."""
    keys = [f"next_{name}" for name in names]
    wide = Schema({**dict(schema.items()), **{key: schema[name] for key, name in zip(keys, names, strict=True)}})
    batches = parquet.iter_batches(batch_size=slice_rows(wide), columns=[*schema, *keys, "episode_id", "step_id"])
    expected, first_row = None, 0
    while (current := next_batch(src, batches)) is not None:
        expected = check_steps(src, current.column("step_id"), expected)
        rows = {name: from_arrow(current.column(name), field, f"{src}: column {name!r}")
                for name, field in schema.items()}
        nexts: dict[str, Any] = {}
        valid = None
        for key, name in zip(keys, names, strict=True):
            nexts[key], given = _next_column(current.column(key), schema[name], f"{src}: column {key!r}")
            if valid is not None and not np.array_equal(given, valid):
                raise SchemaError(f"{src}: columns {keys} have nulls in different rows; they were changed after "
                                  "export: export the pool again")
            valid = given
        ids = current.column("episode_id").to_numpy(zero_copy_only=False).astype(np.int64)
        yield Batch(first_row, current.column("step_id").to_numpy(zero_copy_only=False), rows, nexts,
                     np.ones(len(ids), bool) if valid is None else valid, ids)
        first_row += current.num_rows
        if progress is not None:
            progress(current.num_rows)


def _next_column(column, field: Field, where: str) -> tuple[Any, np.ndarray]:
    """A ``next_<obs>`` column's rows (zeros or empty where null) and which are not null."""
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    if valid.all():
        return from_arrow(column, field, where), valid
    present = from_arrow(column.filter(column.is_valid()), field, where)
    if field.ragged:
        values = [np.zeros((0, *field.item_shape), field.dtype)] * len(valid)
        for row, value in zip(np.flatnonzero(valid).tolist(), present, strict=True):
            values[row] = value
        return values, valid
    filled = np.zeros((len(valid), *field.shape), field.dtype)
    filled[valid] = present
    return filled, valid


class DerivedWriter:
    """Appends a file's batches to the new pool: each episode on its env id, ended where the file
    ends it, with its final observation where the file has one; checks the file on the way."""

    def __init__(self, src: str, store, schema: Schema, names: tuple[str, ...], spans: EpisodeSpans):
        self.src, self.store, self.schema, self.names, self.spans = src, store, schema, names, spans
        observed = [name for name in schema if name == "obs" or name.startswith("obs_")]
        self._stored_next = [name for name in observed if name not in names]  # end_episodes takes these too
        self._pending: dict[int, tuple[int, dict[str, Any], bool]] = {}  # episode -> its last row's (step, next, given)
        self._kept: list[np.ndarray] = []  # the last steps of episodes that end with a final observation

    def add(self, batch: Batch) -> None:
        placed = self.spans.at(batch.ids, batch.first_row)
        done = done_flags(batch.rows)
        done = np.zeros(len(batch.ids), bool) if done is None else done
        self._check_chains(batch, placed.last)
        self._check_ends(batch, placed.last, done, placed.open)
        ended = placed.last & (done | ~placed.open)
        self._kept.append(batch.steps[ended & batch.valid].astype(np.int64))
        self._write(batch, ended, done, placed.env_ids)

    def _check_chains(self, batch: Batch, last: np.ndarray) -> None:
        """Each row's ``next_<obs>`` against the observation of its episode's next row."""
        order = np.argsort(batch.ids, kind="stable")
        same = batch.ids[order][1:] == batch.ids[order][:-1]
        before, after = order[:-1][same], order[1:][same]  # a row, and the next row of its episode
        for row in order[np.concatenate([[True], ~same])].tolist() if len(order) else []:
            carried = self._pending.pop(int(batch.ids[row]), None)  # its previous row was in an earlier batch
            if carried is not None:
                self._check_pair(*carried, batch, row)
        for name in self.names if before.size else ():
            key = f"next_{name}"
            if self.schema[name].ragged:
                for before_row, after_row in zip(before.tolist(), after.tolist(), strict=True):
                    self._check_pair(int(batch.steps[before_row]), {key: batch.nexts[key][before_row]},
                                     bool(batch.valid[before_row]), batch, after_row)
                continue
            differ = (_bytes(batch.nexts[key][before]) != _bytes(batch.rows[name][after])).any(axis=1)
            differ |= ~batch.valid[before]
            if differ.any():
                first = int(np.flatnonzero(differ)[0])
                raise self._mismatch(key, int(batch.steps[before[first]]), int(batch.steps[after[first]]))
        for row in order[np.concatenate([~same, [True]])].tolist() if len(order) else []:
            if not last[row]:
                self._pending[int(batch.ids[row])] = (int(batch.steps[row]), {
                    f"next_{name}": np.array(batch.nexts[f"next_{name}"][row]) for name in self.names},
                    bool(batch.valid[row]))

    def _check_pair(self, step: int, values: dict[str, Any], given: bool, batch: Batch, row: int) -> None:
        for key, value in values.items():
            obs = np.asarray(batch.rows[key[len("next_"):]][row])
            if not given or value.shape != obs.shape or value.tobytes() != obs.tobytes():
                raise self._mismatch(key, step, int(batch.steps[row]))

    def _mismatch(self, key: str, step: int, following: int) -> SchemaError:
        return SchemaError(f"{self.src}: {key} of step {step} is not the {key[len('next_'):]} of step {following}, the "
                           f"next row of its episode, yet the file's metadata says the pool derived {key} from that "
                           "row; the column was changed after export, so the pool cannot derive it again: export "
                           "the pool again")

    def _check_ends(self, batch: Batch, last: np.ndarray, done: np.ndarray, is_open: np.ndarray) -> None:
        bad = np.flatnonzero(done & ~last)
        if bad.size:
            raise SchemaError(f"{self.src}: episode {int(batch.ids[bad[0]])} has rows after its terminated or "
                              f"truncated step {int(batch.steps[bad[0]])}; the file was changed after export: "
                              "export the pool again")
        bad = np.flatnonzero(last & is_open & ~done & batch.valid)
        if bad.size:
            raise SchemaError(f"{self.src}: episode {int(batch.ids[bad[0]])} was open at the export, yet its last "
                              f"step {int(batch.steps[bad[0]])} has a next observation; the file was changed after "
                              "export: export the pool again")

    def _write(self, batch: Batch, ended: np.ndarray, done: np.ndarray, env_ids: np.ndarray) -> None:
        """Extend the pool by the batch: with the ``next_<obs>`` values, whose final ones it keeps,
        except at flagged ends without one; ending each episode that ends without a flag."""
        finals = ended & done & batch.valid
        unknown = _runs_without(finals, ended & done & ~batch.valid)
        closing = ended & ~done  # ended by end_episodes, with or without a final observation
        cuts = {*(np.flatnonzero(np.diff(unknown.astype(np.int8))) + 1).tolist(),
                *(np.flatnonzero(closing) + 1).tolist(), 0, len(env_ids)}
        bounds = sorted(cuts)
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            part = {name: values[start:stop] for name, values in batch.rows.items()}
            if not unknown[start]:
                part.update(self._nexts(batch, start, stop, finals))
            self.store.extend(part, env_ids=env_ids[start:stop])
            end = stop - 1
            if closing[end]:
                given = {f"next_{name}": [batch.nexts[f"next_{name}"][end]] for name in self.names}
                given.update({f"next_{name}": [batch.rows[f"next_{name}"][end]] for name in self._stored_next})
                self.store.end_episodes(int(env_ids[end]), next_obs=given if batch.valid[end] else None)

    def _nexts(self, batch: Batch, start: int, stop: int, finals: np.ndarray) -> dict[str, Any]:
        """The ``next_<obs>`` of rows [start, stop) for an extend: only flagged episode ends' are
        kept, so a ragged observation passes empty rows elsewhere (no other row need fit its heap)."""
        out: dict[str, Any] = {}
        for name in self.names:
            values = batch.nexts[f"next_{name}"]
            if self.schema[name].ragged:
                empty = np.zeros((0, *self.schema[name].item_shape), self.schema[name].dtype)
                values = [values[row] if finals[row] else empty for row in range(start, stop)]
            else:
                values = values[start:stop]
            out[f"next_{name}"] = values
        return out

    def check_kept(self) -> None:
        """Every episode end the file gives a final observation must have kept it (the table was
        sized for them); a pool that lost one would silently not sample those rows."""
        expected = np.concatenate(self._kept) if self._kept else np.zeros(0, np.int64)
        tail, head = self.store.window
        expected = expected[expected >= tail]
        keeping = self.store.bookkeeping
        kept = keeping.kept_now(self.store.commit_record)
        lost = 0
        for first in range(0, len(expected), _CHECK_ROWS):
            _, known = keeping.next_values(expected[first:first + _CHECK_ROWS], head, kept)
            lost += int((~known).sum())
        if lost:
            raise InvalidArgumentError(f"{self.src}: the new pool keeps the final observations of only "
                                       f"{len(expected) - lost} of the {len(expected)} episodes that end with one; "
                                       "import it with a larger capacity")


def _runs_without(finals: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """Which rows to extend without next values: the flagged ends with none (``unknown``), and the
    rows around them up to the next flagged end with one (``finals``), whose next values the pool
    does not keep either way; so that the oldest ends, whose final observations a wrapped pool
    lost together, go in one extend rather than one each."""
    constrained = finals | unknown
    if not constrained.any():
        return unknown
    at = np.maximum.accumulate(np.where(constrained, np.arange(len(finals)), 0))
    at[:np.argmax(constrained)] = np.argmax(constrained)  # before the first: as the first
    return unknown[at]


def _bytes(values: np.ndarray) -> np.ndarray:
    """Rows as bytes, so that equal bits compare equal (NaNs too)."""
    values = np.ascontiguousarray(values)
    return values.view(np.uint8).reshape(len(values), -1)
