"""Staged appends: single appends gathered in small in-RAM arrays and written in one step.

An env loop's ``append`` writes one row of each field. Into the pool's shared memory maps that
costs several times a write into ordinary memory (a raw ``np.memmap`` loop runs at 0.25x an
in-RAM numpy loop here), and the episode bookkeeping of one row in plain Python costs as much
again. So a writer stages its appends: each row's checked values go into per-field arrays of
``rows`` rows in RAM, and the stage is written into the maps with one slice copy per field, its
episode bookkeeping computed for all its rows at once (``EpisodeBook.on_extend``), when

- the stage is full,
- the writer commits (on its own, ``flush``, ``close``, the idle-commit thread),
- the writer reads anything its staged rows are part of: a gather (``read``, ``[]``, ``sample``,
  episodes, n-step, sequences), the episode table, priorities, ``end_episodes``, an ``extend``
  (which keeps the step order), or the read-only surface the upper layers use.

Nothing changes in what a crash may lose: staged rows are uncommitted rows, and a commit
writes the stage before its record. Nothing changes in what the writer sees: its reads drain
the stage first, and ``len`` and ``next_step_id`` count staged rows. Readers in other processes
see committed rows only, as before.

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
NO_FAST_ENV = object()  # Stage.fast_env when no row may take append's fast path


def stage_rows(row_nbytes: int, slack: int) -> int:
    """Rows of a stage: about ``STAGE_NBYTES`` of rows, within the slack (a stage never holds more
    rows than a writer may write before its next commit)."""
    rows = min(STAGE_MAX_ROWS, max(STAGE_MIN_ROWS, STAGE_NBYTES // max(row_nbytes, 1)))
    return max(1, min(rows, slack))


class Stage:
    """The staged rows of one writer: ``count`` rows, the newest steps it appended."""

    def __init__(self, row_loop: list[tuple[Any, ...]], derived: Mapping[str, tuple[tuple[int, ...], np.dtype]],
                 rows: int):
        self.rows = rows
        self.limit = rows  # rows it takes before it must be drained
        self.env_room = rows  # distinct envs it takes before it must be drained (see set_env_room)
        self.envs: set[int] = set()  # the env ids of the staged rows
        self.last_env = -1
        self.count = 0
        self.columns = [np.empty((rows, *shape), dtype) for _, _, dtype, shape, _, _ in row_loop]
        self.names = [spec[0] for spec in row_loop]
        self.env_ids = np.zeros(rows, np.int64)
        self.derived = {key: np.empty((rows, *shape), dtype) for key, (shape, dtype) in derived.items()}
        self.with_derived = False  # whether the staged rows came with their next_<obs> (all or none)
        self.put_row = row_writer(row_loop, self.columns)
        # The env id whose next row may take append's fast path (Store.append): the last staged
        # row's env while the stage has room and no next_<obs>; NO_FAST_ENV (equal to no env id)
        # otherwise. The fast path skips put's checks of the env id and the mix of rows, and its
        # rows' env ids are filled in at take (the same as the row before).
        self.fast_env: Any = NO_FAST_ENV
        self.env_runs = 0  # rows whose env_ids entry is written (the rows of the fast path are not)

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
        if env_id != self.last_env:  # a vector env's rows take turns; one env's rows skip this
            if type(env_id) is not int or env_id < 0:
                env_id = checked_env_id(env_id)
            if env_id not in self.envs:
                if len(self.envs) >= self.env_room:
                    return False
                self.envs.add(env_id)
            self.last_env = env_id
        self.put_row(transition, k)
        if derived is not None:
            for key, column in self.derived.items():
                column[k] = derived[key]
        self._fill_env_ids(k)
        self.env_ids[k] = env_id
        self.env_runs = k + 1
        self.with_derived = derived is not None
        self.count = k + 1
        self.fast_env = NO_FAST_ENV if self.with_derived or self.count >= self.limit else env_id
        return True

    def _fill_env_ids(self, end: int) -> None:
        """The env ids of the fast path's rows before ``end``: each the env of the row before it."""
        if self.env_runs < end:
            self.env_ids[self.env_runs:end] = self.env_ids[self.env_runs - 1]
            self.env_runs = end

    def take(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, np.ndarray]:
        """The staged rows (columns, next_<obs> if given, env ids), and an empty stage. The arrays
        are views of the stage: use them before the next ``put``."""
        n = self.count
        self._fill_env_ids(n)
        self.count = 0
        self.env_runs = 0
        self.envs.clear()
        self.last_env = -1
        self.fast_env = NO_FAST_ENV
        columns = {name: column[:n] for name, column in zip(self.names, self.columns, strict=True)}
        derived = {key: column[:n] for key, column in self.derived.items()} if self.with_derived else None
        self.with_derived = False
        return columns, derived, self.env_ids[:n]

    def set_env_room(self, room: int | None) -> None:
        """At most ``room`` distinct envs (None: no bound) before the next drain: the episode book's
        room for new envs' episodes without the per-append check (0: appends go the direct way)."""
        self.env_room = self.rows if room is None else max(0, room)
        self.limit = self.rows if self.env_room else 0
        if self.count >= self.limit:
            self.fast_env = NO_FAST_ENV


def checked_env_id(env_id: Any) -> int:
    """An append's ``env_id`` as an int: a non-negative int (numpy ints too), never a bool or a float."""
    if isinstance(env_id, (int, np.integer)) and not isinstance(env_id, (bool, np.bool_)) and env_id >= 0:
        return int(env_id)
    raise InvalidArgumentError(f"env_id={env_id!r} must be a non-negative int (the env that produced the row), "
                               "e.g. the index of the sub-env of a vector env")


def row_writer(row_loop: list[tuple[Any, ...]], columns: list[np.ndarray]) -> Callable[[Mapping[str, Any], int], None]:
    """``put_row(transition, k)``: check each field's value of one row and write it into row ``k``
    of its stage column; a value that fails raises (the row's earlier fields stay written into a
    row the stage does not count yet).

    The function is generated for the schema, one block per field: an append of a pendulum row is
    about a microsecond, and a loop over the fields (unpacking each field's tuple, branching on
    the value's type) costs about a third of that again. Each block takes the exact value types an
    env loop hands over (an ndarray of the field's dtype and row shape, a Python float that fits a
    float field, a Python bool for a bool field) with one inline check, and anything else through
    ``as_rows``, the checks and casts of every other path.
    """
    scope: dict[str, Any] = {"ndarray": np.ndarray, "as_rows": as_rows}
    lines = ["def put_row(transition, k):"]
    for i, ((name, field, dtype, shape, float_limit, _), column) in enumerate(zip(row_loop, columns, strict=True)):
        scope.update({f"name{i}": name, f"field{i}": field, f"dtype{i}": dtype, f"shape{i}": shape,
                      f"column{i}": column, f"limit{i}": float_limit})
        lines.append(f"    value = transition[name{i}]")
        if not shape and float_limit is not None:
            fast = f"type(value) is float and -limit{i} <= value <= limit{i}"
        elif not shape and dtype.kind == "b":
            fast = "type(value) is bool"
        else:
            fast = f"type(value) is ndarray and value.dtype is dtype{i} and value.shape == shape{i}"
        lines += [f"    if {fast}:", f"        column{i}[k] = value", "    else:",
                  f"        column{i}[k] = as_rows(name{i}, field{i}, value, None)"]
    if not row_loop:
        lines.append("    pass")
    exec(compile("\n".join(lines), f"<put_row of {len(row_loop)} fields>", "exec"), scope)
    return scope["put_row"]
