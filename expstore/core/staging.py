"""Staged appends: single appends gathered in small in-RAM arrays and written in one step.

An env loop's ``append`` writes one row of each field. Into the pool's shared memory maps that
costs several times a write into ordinary memory (a raw ``np.memmap`` loop runs at 0.25x an
in-RAM numpy loop here), and the episode bookkeeping of one row in plain Python costs as much
again. So a writer stages its appends: each row's checked values go into per-field arrays of
``rows`` rows in RAM, and the stage is written into the maps with one slice copy per field, its
episode bookkeeping computed for all its rows at once (``EpisodeBook.on_extend``), when

- the stage is full (its ``limit``: the rows up to the next commit that the row count asks for,
  or fewer),
- the writer commits (on its own, ``flush``, ``close``, the idle-commit thread),
- the writer reads anything its staged rows are part of: a gather (``read``, ``[]``, ``sample``,
  episodes, n-step, sequences), the episode table, priorities, ``end_episodes``, an ``extend``
  (which keeps the step order), or the read-only surface the upper layers use.

A full stage of env 0's rows without next_<obs> leaves its bookkeeping for later, as a one-env
``extend`` does (``Store._defer_bookkeeping``): it runs with the next commit's or read's.

Nothing changes in what a crash may lose: staged rows are uncommitted rows, and a commit
writes the stage before its record. Nothing changes in what the writer sees: its reads drain
the stage first, and ``len`` and ``next_step_id`` count staged rows. Readers in other processes
see committed rows only, as before.

The hot path (``fast_append_for``) is a function written for the pool's schema when a writer's
appends are ready, and installed as the writer's ``append``: one dict-and-length check, then per
field a dict lookup, the check of the one value type that needs no conversion (an array of the
field's exact dtype and shape, a Python float in a float field's range, a bool, an int in an
integer field's range) and a write into the stage row. Any other value, key set, env id or stage
state makes it give up before the row counts, and the method ``Store.append`` (the checked path:
``Stage.put``, with the conversions and their errors) takes the row instead. Generated code
because an interpreted loop over the fields costs more than the writes it does (measured: the
loop's tuple unpacking and branches were about half of an append); installed in the method's
place because the call into it was one more Python call per row.

Not staged (the direct path, as before): pools with heap fields (ragged or codec fields, whose
bytes go through the heap's eviction at once), and a writer whose open episodes are so many that
a new env's episode might not fit the commit record (that check runs per append).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from .casting import as_rows

STAGE_NBYTES = 1 << 22  # RAM per stage, at most: 4 MiB
STAGE_MAX_ROWS = 1024  # a stage drained every 1,024 rows costs under 0.1 us a row
STAGE_MIN_ROWS = 16
# The struct formats of the native numeric columns (float32/64, bool, the ints) a memoryview packs
# a Python scalar into; float16 ("e") and other dtypes keep numpy's assignment.
_PACKED_SCALARS = frozenset("fd?bBhHiIlLqQ")


def stage_rows(row_nbytes: int, slack: int) -> int:
    """Rows of a stage: about ``STAGE_NBYTES`` of rows, within the slack (a stage never holds more
    rows than a writer may write before its next commit)."""
    rows = min(STAGE_MAX_ROWS, max(STAGE_MIN_ROWS, STAGE_NBYTES // max(row_nbytes, 1)))
    return max(1, min(rows, slack))


class Stage:
    """The staged rows of one writer: ``count`` rows, the newest steps it appended."""

    __slots__ = ("rows", "limit", "fast_limit", "env_room", "envs", "last_env", "run_start", "count", "columns",
                 "loop", "names", "env_ids", "derived", "with_derived")

    def __init__(self, row_loop: list[tuple[Any, ...]], derived: Mapping[str, tuple[tuple[int, ...], np.dtype]],
                 rows: int):
        self.rows = rows
        self.limit = rows  # rows it takes before it must be drained (see set_room)
        self.fast_limit = rows - 1  # rows below which the generated append may stage one (0: it stages none)
        self.env_room = rows  # distinct envs it takes before it must be drained (see set_room)
        self.envs: set[int] = set()  # the env ids of the staged rows
        self.last_env: Any = -1
        self.run_start = 0  # the rows from here on are last_env's, their env_ids not yet written
        self.count = 0
        self.columns = [np.empty((rows, *shape), dtype) for _, _, dtype, shape, _, _ in row_loop]
        # The append loop's tuples (RowSpec fields) with the stage column in the place of the map.
        self.loop = [(*spec[:5], column) for spec, column in zip(row_loop, self.columns, strict=True)]
        self.names = [spec[0] for spec in row_loop]
        self.env_ids = np.zeros(rows, np.int64)
        self.derived = {key: np.empty((rows, *shape), dtype) for key, (shape, dtype) in derived.items()}
        self.with_derived = False  # whether the staged rows came with their next_<obs> (all or none)

    def put(self, transition: Mapping[str, Any], derived: Mapping[str, Any] | None, env_id: Any) -> bool:
        """Stage one row, checked as ``Store.append`` checks it; False (nothing staged) when the row
        cannot join the rows staged already (it brings next_<obs> and they did not, or the other
        way round): drain the stage, then put it again.

        Values are written into the stage's next row as they are checked; that row joins the stage
        only once every value passed, so a bad row leaves nothing behind.
        """
        k = self.count
        if k and (derived is not None) != self.with_derived:
            return False
        if env_id is not self.last_env:  # a vector env's rows take turns; one env's rows skip this
            if type(env_id) is not int or env_id < 0:
                env_id = checked_env_id(env_id)
            if env_id != self.last_env:
                if env_id not in self.envs:
                    if len(self.envs) >= self.env_room:
                        return False
                    self.envs.add(env_id)
                self.env_ids[self.run_start:k] = self.last_env
                self.run_start = k
            self.last_env = env_id
        for name, field, dtype, shape, float_limit, column in self.loop:
            value = transition[name]
            kind = type(value)
            if kind is np.ndarray:
                if value.dtype is dtype and value.shape == shape:
                    column[k] = value
                    continue
            elif kind is float:
                if float_limit is not None and not shape and -float_limit <= value <= float_limit:
                    column[k] = value
                    continue
            elif kind is bool and dtype.kind == "b" and not shape:
                column[k] = value
                continue
            column[k] = as_rows(name, field, value, None)
        if derived is not None:
            for key, column in self.derived.items():
                column[k] = derived[key]
        if self.with_derived != (derived is not None):
            self.with_derived = derived is not None
            self._set_fast_limit()
        self.count = k + 1
        return True

    def take(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, np.ndarray]:
        """The staged rows (columns, next_<obs> if given, env ids), and an empty stage. The arrays
        are views of the stage: use them before the next ``put``."""
        n = self.count
        self.env_ids[self.run_start:n] = self.last_env
        self.count = 0
        self.run_start = 0
        self.envs.clear()
        self.envs.add(self.last_env)  # the next rows may go on with the last env without a check
        columns = {name: column[:n] for name, column in zip(self.names, self.columns, strict=True)}
        derived = {key: column[:n] for key, column in self.derived.items()} if self.with_derived else None
        return columns, derived, self.env_ids[:n]

    def set_room(self, env_room: int | None, rows_to_commit: int) -> None:
        """Set, for an empty stage, how much it may take before the next drain: at most ``env_room``
        distinct envs (None: no bound; 0: appends go the direct way), the episode book's room for
        new envs' episodes without the per-append check, and ``rows_to_commit`` rows, the rows
        until the commit that the row count asks for (so that no write lands past the slack)."""
        self.env_room = self.rows if env_room is None else max(0, env_room)
        self.limit = min(self.rows, max(0, rows_to_commit)) if self.env_room else 0
        if self.last_env not in self.envs or len(self.envs) > self.env_room:
            self.envs.clear()
            self.last_env = -1  # the next row's env is checked against the room again
        self._set_fast_limit()

    def _set_fast_limit(self) -> None:
        # The generated append never fills the stage (the last row goes through put, which the drain follows),
        # and stages no row after rows that came with next_<obs> (put matches them).
        self.fast_limit = 0 if self.with_derived else self.limit - 1


def fast_append_for(stage: Stage, lock: Any, writer: Any, checked_append: Callable[..., None]) -> Callable[..., None]:
    """A writer's ``append`` once its appends are ready: a function written for the pool's schema
    that the writer installs in the place of its method, so that a row costs one Python call.
    It stages the row under the writer's ``lock`` (taken and let go here: ``with`` costs twice a
    plain acquire and release) and counts it in ``writer._head``; any row it cannot take, it hands
    to ``checked_append`` (``Store.append``, with every check and its errors) with the lock let go,
    having staged nothing.

    It takes a row only when: the stage has room for it below ``fast_limit``, ``env_id`` is the last
    row's env (the same int object: the checks of an env id passed for it), the mapping is a plain
    dict (whose lookups add no keys) with as many keys as the schema has fields, and each field's
    value is of the kind staged without a conversion. Values are written into the stage row as
    they pass; the row counts only once all did."""
    lines = ["def append(transition, *, env_id=0):",
             "    acquire()",
             "    try:",
             "        while True:  # once: a value the fast path cannot take breaks out to the checked path",
             "            k = stage.count",
             "            if (k >= stage.fast_limit or env_id is not stage.last_env or type(transition) is not dict",
             "                    or len(transition) != n_fields):",
             "                break"]
    scope: dict[str, Any] = {"stage": stage, "n_fields": len(stage.loop), "ndarray": np.ndarray,
                             "acquire": lock.acquire, "release": lock.release, "writer": writer,
                             "checked_append": checked_append}
    for i, (name, _, dtype, shape, float_limit, column) in enumerate(stage.loop):
        scope[f"dtype_{i}"], scope[f"shape_{i}"], scope[f"column_{i}"] = dtype, shape, column
        lines.append(f"            value = transition[{name!r}]")
        if shape and len(shape) == 1 and memoryview(column).format in _PACKED_SCALARS:
            # A one-dimensional row copies through a memoryview of its stage row, at half the cost
            # of numpy's view[...] = value (measured here). The memoryview compares the buffers'
            # formats and shapes itself: a row of another length raises ValueError (the checked
            # path takes it), so only the dtype is checked here, which keeps the common mismatch
            # (float64 values for a float32 field) off the exception.
            scope[f"rows_{i}"] = [memoryview(row) for row in column]
            lines += [f"            if type(value) is not ndarray or value.dtype is not dtype_{i}:",
                      "                break",
                      f"            rows_{i}[k][:] = value"]
            continue
        if shape:  # a row of several dimensions: a view per stage row takes it at the cost of a copy
            scope[f"rows_{i}"] = list(column)
            lines += [f"            if type(value) is not ndarray or value.dtype is not dtype_{i} "
                      f"or value.shape != shape_{i}:",
                      "                break",
                      f"            rows_{i}[k][...] = value"]
            continue
        if dtype.kind == "f":
            scope[f"limit_{i}"] = float_limit
            check = f"type(value) is float and -limit_{i} <= value <= limit_{i}"
        elif dtype.kind == "b":
            check = "type(value) is bool"
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            scope[f"low_{i}"], scope[f"high_{i}"] = int(info.min), int(info.max)
            check = f"type(value) is int and low_{i} <= value <= high_{i}"
        else:  # no Python scalar is staged without a conversion: only a 0-d array of the dtype
            check = f"type(value) is ndarray and value.dtype is dtype_{i} and value.shape == ()"
        # A Python scalar goes in through a memoryview of the column where one packs it as numpy
        # would (a C cast of a value already range-checked): 29 ns against numpy's 69 for the
        # item assignment, measured here, on each of an append's scalar fields.
        target, packed = f"column_{i}", memoryview(column)
        if dtype.kind in "fbiu" and packed.format in _PACKED_SCALARS:
            scope[f"packed_{i}"], target = packed, f"packed_{i}"
        lines += [f"            if not ({check}):",
                  "                break",
                  f"            {target}[k] = value"]
    # A missing key (as many keys as fields, so one of them is not a field) or a one-dimensional row
    # of another length: the checked path says what is wrong.
    lines += ["            stage.count = k + 1",
              "            writer._head += 1",
              "            return",
              "    except (KeyError, ValueError):",
              "        pass",
              "    finally:",
              "        release()",
              "    checked_append(transition, env_id=env_id)"]
    exec("\n".join(lines), scope)  # the source is built above from the schema alone
    append = scope["append"]
    append.__doc__, append.__name__, append.__qualname__ = checked_append.__doc__, "append", "Store.append"
    return append


def checked_env_id(env_id: Any) -> int:
    """An append's ``env_id`` as an int: a non-negative int (numpy ints too), never a bool or a float."""
    if isinstance(env_id, (int, np.integer)) and not isinstance(env_id, (bool, np.bool_)) and env_id >= 0:
        return int(env_id)
    raise InvalidArgumentError(f"env_id={env_id!r} must be a non-negative int (the env that produced the row), "
                               "e.g. the index of the sub-env of a vector env")
