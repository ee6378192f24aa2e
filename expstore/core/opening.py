"""``expstore.open``: modes, backend choice, validation of creation arguments, creation."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends import Backend, Layout, files, internal, resolve_backend
from ..backends.base import internal_nbytes
from ..backends.meta import build_meta
from ..errors import InvalidArgumentError, SchemaError, StoreExistsError, StoreNotFoundError
from ..schema import Schema
from . import lock
from .commit import initial_slots
from .ring import default_chunk_rows, plan_slots
from .store import CommitPolicy, Store

MODES = ("r", "r+", "a", "w", "w-", "x")
logger = logging.getLogger(__name__)


@dataclass
class _Creator:
    """Everything needed to build a new pool once its schema is known."""

    path: str
    backend: Backend
    capacity: int
    chunk_rows: int | None
    slack: int | None  # None: the default, which depends on the schema (default_slack)
    attrs: dict
    replace: bool
    checksums: bool = False
    max_episodes: int | None = None
    derive_next_obs: bool = False
    max_final_obs: int | None = None
    first_step_id: int = 0
    heap_bytes: int | dict[str, int] | None = None
    commit_every: int = 10_000

    def __call__(self, schema: Schema) -> Layout:
        slack = self.slack if self.slack is not None else default_slack(
            schema, self.capacity, self.commit_every, self.derive_next_obs)
        widest = max(field.stored_row_nbytes for field in schema.values())
        chunk_rows = self.chunk_rows or default_chunk_rows(widest, self.capacity + slack)
        slots = plan_slots(self.capacity, slack, chunk_rows)
        meta = build_meta(schema, self.capacity, slots, chunk_rows, self.attrs, self.checksums)
        episode_rows = _episode_rows(self.max_episodes, slots)
        rows = self.capacity + slack
        final_rows = _final_rows(self.max_final_obs, rows, episode_rows)
        heaps = heap_sizes(schema, self.heap_bytes, rows)
        meta["internal"] = internal.plan(schema, slots, episode_rows, self.derive_next_obs, final_rows, heaps,
                                         final_heap_sizes(schema, heaps, final_rows, rows))
        files.check_free_space(self.path, self.backend.disk_nbytes(schema, slots) + internal_nbytes(meta))
        files.build_aside(
            self.path,
            lambda temp: self.backend.create(temp, meta, schema, slots, chunk_rows,
                                            initial_slots(self.first_step_id)),
            replace=self.replace,
        )
        return self.backend.read_layout(self.path)


def open(  # mirrors h5py.File / zarr.open naming on purpose
    path: str | os.PathLike,
    mode: str = "r",
    *,
    capacity: int | None = None,
    schema: Any = None,
    backend: str | None = None,
    chunk_rows: int | None = None,
    attrs: dict | None = None,
    commit_every: int = 10_000,
    commit_interval_s: float = 5.0,
    fsync: bool = True,
    slack: int | None = None,
    checksums: bool = False,
    max_episodes: int | None = None,
    derive_next_obs: bool = False,
    max_final_obs: int | None = None,
    first_step_id: int = 0,
    heap_bytes: int | dict[str, int] | None = None,
) -> Store:
    """Open or create a pool.

    Args:
        path: ``*.h5``/``*.hdf5`` (one HDF5 file) or ``*.zarr`` (one Zarr v3 directory).
        mode: as h5py: ``r`` read-only, ``r+`` read/write existing, ``a`` open or create,
            ``w`` create (replace), ``w-``/``x`` create, fail if it exists.
        capacity: transitions kept (FIFO ring); required to create.
        schema: mapping name -> ``Field(shape, dtype)`` or ``(shape, dtype)``; when omitted at
            creation, the first ``append``/``extend`` defines it.
        backend: ``"hdf5"`` or ``"zarr"``; by default from the path suffix.
        chunk_rows: rows per chunk (default: about 1 MiB for the widest field).
        attrs: JSON-able user metadata (env id, gamma, ...), written at creation.
        commit_every: a writer commits on its own every this many transitions...
        commit_interval_s: ...or when this many seconds passed since the last commit.
        fsync: whether commits are durable against power loss (fdatasync); without it they
            survive a killed process but not a crashed machine.
        slack: spare rows so that uncommitted writes never touch committed rows: a writer commits
            every ``min(commit_every, slack)`` rows at least, and writes no row ``slack`` rows or
            more past the newest commit on disk. Default ``2 * min(commit_every, capacity)``: with
            fsync, automatic commits are made durable on a background thread (core/commit_pipeline.py)
            while the appends go on into the slack beyond them, the next commit interval's rows
            when ``capacity >= commit_every``; ``min(commit_every, capacity)`` for a schema with
            ragged or codec fields or with ``derive_next_obs``, whose commits are made in place.
        checksums: record crc32s of every committed row at commit time (per chunk, and for the
            chunks the window covers in part, in the commit record), so that ``verify`` can
            prove the rows did not change on disk since (costs two passes over the bytes).
        max_episodes: rows of the episode table; default one per slot, enough for any layout.
            A smaller table saves disk but forgets the oldest episodes once more than this many
            are in the pool (their rows stay; ``episodes()`` no longer lists them).
        derive_next_obs: create a pool that stores ``obs`` (and ``obs_*``) without ``next_obs``
            and derives it from the next row of the same episode; the observation after an
            episode's last row is kept in a small table. Appends may still pass ``next_obs``
            (only the episode-final ones are kept); samples include it.
        max_final_obs: rows of that table (only with ``derive_next_obs``): the final
            observations of the newest this many episode ends are kept; default one per 16 rows
            of ``capacity + slack``, plus 64, at most ``max_episodes``. An older episode keeps
            its rows, but its last row's ``next_obs`` is unknown, so that row is not sampled.
            A ragged observation's final values go into a byte heap of their own, the field's
            heap times ``max_final_obs`` over ``capacity + slack`` (at least 64 KiB, at most the
            field's heap; core/finals.py), which may keep fewer when they are large.
        first_step_id: step id of the first transition of a new pool (default 0); a copy made
            by ``expstore convert`` keeps its source's step ids this way. Used only at creation.
        heap_bytes: the byte heaps of ragged fields and fields with a codec (core/heap.py): an
            int is the pool's total: the fields with a size of their own
            (``Field(..., heap_bytes=)``) take it out first, and the rest is shared among the
            others in proportion to their raw row sizes; a dict sizes fields by name (a field
            sized both in its Field and in the dict is an error unless the sizes agree).
            Default per field: ``capacity + slack`` raw rows (a ragged row counted as 64
            elements). The window then holds at most what the heaps hold: when a row's bytes
            do not fit, the oldest rows are evicted (``stats()`` says which bound applies).
            Used only at creation.

    Returns:
        A :class:`Store`; use it as a context manager or call ``close()``.
    """
    path = os.fspath(path)
    if mode not in MODES:
        raise InvalidArgumentError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    chosen = resolve_backend(path, backend)
    exists = os.path.exists(path)
    if mode in ("r", "r+") and not exists:
        raise StoreNotFoundError(f"no pool at {path}; create one with mode='w' or 'a' and a capacity")
    if mode in ("w-", "x") and exists:
        raise StoreExistsError(f"{path} already exists; use mode='a' to open it or 'w' to replace it")
    policy = _commit_policy(commit_every, commit_interval_s, fsync)
    if mode == "r":
        return Store(path, chosen, None, policy, layout=chosen.read_layout(path))
    creating = mode in ("w", "w-", "x") or not exists
    if creating:
        creator = _creator(path, chosen, capacity, schema, chunk_rows, attrs, slack, policy, mode == "w",
                           bool(checksums))
        creator.max_episodes = _check_max_episodes(max_episodes)
        creator.derive_next_obs = bool(derive_next_obs)
        creator.max_final_obs = _check_max_final_obs(max_final_obs, creator.derive_next_obs)
        creator.first_step_id = _check_first_step_id(first_step_id)
        creator.heap_bytes = heap_bytes
        if schema is not None:
            heap_sizes(Schema(schema), heap_bytes, 1)  # fail before touching the disk
        if derive_next_obs and schema is not None:
            internal.plan(Schema(schema), 1, 1, True, final_rows=1)  # fail before touching the disk
    # A read-only mount, an immutable file or a missing permission: ReadOnlyError, not a bare OSError.
    with files.refusing_read_only(path):
        if creating:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        writer_lock = lock.WriterLock(path)
        try:
            if not creating:
                layout = chosen.read_layout(path)
                writer_lock.hold_pool_file(layout.commit.path)  # before any write (see lock.py)
                _check_matches(path, layout, capacity, schema)
                # A copied pool may have lost its disk blocks; writing into a hole on a full disk
                # would be a SIGBUS, so a writer allocates them now (a clean DiskFullError if it can't).
                files.preallocate_sparse(layout.files)
                _record_layout(chosen, path, layout)
                return Store(path, chosen, writer_lock, policy, layout=layout)
            if schema is None:
                if mode == "w" and os.path.exists(path):
                    # replaced now (through a symlink: its target); the new pool appears at the first write
                    files.remove_path(os.path.realpath(path))
                return Store(path, chosen, writer_lock, policy, create=creator)
            return Store(path, chosen, writer_lock, policy, layout=creator(Schema(schema)))
        except BaseException:
            writer_lock.release(remove=not os.path.exists(path))  # a failed creation leaves nothing behind
            raise


# Bytes a codec may add to a row it cannot shrink (a frame header), in the default heap size.
_CODEC_OVERHEAD_NBYTES = 32


def heap_sizes(schema: Schema, heap_bytes: Any, rows: int) -> dict[str, int]:
    """The heap size of each heap field of a new pool (see ``open``'s ``heap_bytes``)."""
    names = schema.heap_fields()
    if heap_bytes is not None and not names:
        raise InvalidArgumentError(f"heap_bytes sizes the heaps of ragged fields and fields with a codec; the "
                                   f"schema {list(schema)} has none")
    given = heap_bytes if isinstance(heap_bytes, dict) else {}
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise InvalidArgumentError(f"heap_bytes names {unknown}, which are not heap fields; the heap fields are "
                                   f"{names}")
    sizes = {name: _positive_bytes(f"heap_bytes[{name!r}]", value) for name, value in given.items()}
    for name in names:
        own = schema[name].heap_bytes
        if own is not None and sizes.get(name, own) != own:
            raise InvalidArgumentError(f"field {name!r} has heap_bytes={own} in its Field and {sizes[name]} in "
                                       "open's heap_bytes; give its size in one place")
        if own is not None:
            sizes[name] = own
    rest = [name for name in names if name not in sizes]
    if heap_bytes is None or isinstance(heap_bytes, dict):
        sizes.update({name: rows * (schema[name].row_nbytes + _CODEC_OVERHEAD_NBYTES * (schema[name].codec is not None))
                      for name in rest})
    else:  # the pool's total: the fields with a size of their own take theirs out of it first
        total = _positive_bytes("heap_bytes", heap_bytes)
        left = total - sum(sizes.values())
        if rest and left < len(rest):
            raise InvalidArgumentError(f"heap_bytes={total} is the pool's total, but the Field sizes of "
                                       f"{sorted(sizes)} take {sum(sizes.values())} of it, leaving nothing for "
                                       f"{rest}; pass a larger total or a dict of sizes by field")
        if rest:
            weights = np.array([schema[name].row_nbytes for name in rest], np.float64)
            shares = np.maximum(1, (left * weights / weights.sum()).astype(np.int64))
            sizes.update({name: int(share) for name, share in zip(rest, shares, strict=True)})
    return {name: sizes[name] for name in names}


# The final-observation heap of a ragged observation never drops below this (a small pool's share
# of its heap would hold only a few final observations).
_MIN_FINAL_HEAP_NBYTES = 1 << 16


def final_heap_sizes(schema: Schema, heaps: dict[str, int], final_rows: int, rows: int) -> dict[str, int]:
    """The final-observation heap of each ragged observation a new pool derives ``next_`` of: the
    share of the field's own heap that ``final_rows`` of its ``rows`` rows take, so that the final
    observations of the newest ``final_rows`` episodes fit as their rows do; at least 64 KiB and
    at most the field's heap (which bounds every row already)."""
    return {name: min(heaps[name], max(_MIN_FINAL_HEAP_NBYTES, -(-heaps[name] * final_rows // rows)))
            for name in internal.derived_fields(schema) if schema[name].ragged}


def _positive_bytes(what: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise InvalidArgumentError(f"{what}={value!r} must be a positive int (bytes), e.g. 8 << 30")
    return int(value)


def _record_layout(backend: Backend, path: str, layout: Layout) -> None:
    """A writer whose open read the container itself (no usable layout record: a pool copied
    without one, or one damaged or stale) records what it verified, so that later opens skip the
    container library. Best effort: a pool without room for a record opens the slow way."""
    record = getattr(backend, "record_layout", None)  # optional for a backend
    if not layout.from_record and record is not None:
        try:
            record(path, layout)
        except OSError as exc:
            logger.warning("%s: could not write its layout record (%s); it opens the slow way", path, exc)


def _check_max_episodes(max_episodes: Any) -> int | None:
    if max_episodes is not None and (not isinstance(max_episodes, int) or isinstance(max_episodes, bool)
                                     or max_episodes < 1):
        raise InvalidArgumentError(f"max_episodes={max_episodes!r} must be a positive int (episodes) or None")
    return max_episodes


def _check_first_step_id(first_step_id: Any) -> int:
    if not isinstance(first_step_id, (int, np.integer)) or isinstance(first_step_id, bool) or first_step_id < 0:
        raise InvalidArgumentError(f"first_step_id={first_step_id!r} must be a non-negative int (a step id)")
    return int(first_step_id)


def _episode_rows(max_episodes: int | None, slots: int) -> int:
    return slots if max_episodes is None else min(slots, max_episodes)


# The default final-observation table: the ends of episodes of 16 rows on average in the window
# and the rows a writer appends before its next commit, plus 64 so that a small pool keeps all.
_ROWS_PER_FINAL = 16
_FINALS_MARGIN = 64


def _final_rows(max_final_obs: int | None, rows: int, episode_rows: int) -> int:
    wanted = -(-rows // _ROWS_PER_FINAL) + _FINALS_MARGIN if max_final_obs is None else max_final_obs
    return min(wanted, episode_rows)  # more rows than episode entries could never be used


def _check_max_final_obs(max_final_obs: Any, derive_next_obs: bool) -> int | None:
    if max_final_obs is None:
        return None
    if not isinstance(max_final_obs, int) or isinstance(max_final_obs, bool) or max_final_obs < 1:
        raise InvalidArgumentError(f"max_final_obs={max_final_obs!r} must be a positive int (episodes) or None")
    if not derive_next_obs:
        raise InvalidArgumentError("max_final_obs sizes the final-observation table of a pool created with "
                                   "derive_next_obs=True; pass derive_next_obs=True or drop max_final_obs")
    return max_final_obs


def _commit_policy(commit_every: Any, commit_interval_s: Any, fsync: Any) -> CommitPolicy:
    if not isinstance(commit_every, int) or commit_every < 1:
        raise InvalidArgumentError(f"commit_every={commit_every!r} must be a positive int (rows)")
    if not isinstance(commit_interval_s, (int, float)) or commit_interval_s <= 0:
        raise InvalidArgumentError(f"commit_interval_s={commit_interval_s!r} must be a positive number of seconds")
    return CommitPolicy(commit_every, float(commit_interval_s), bool(fsync))


def _creator(path, backend, capacity, schema, chunk_rows, attrs, slack, policy, replace, checksums) -> _Creator:
    if capacity is None:
        raise InvalidArgumentError(
            f"creating {path} needs a capacity, e.g. expstore.open(path, 'w', capacity=1_000_000)"
        )
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        raise InvalidArgumentError(f"capacity={capacity!r} must be a positive int (transitions)")
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise InvalidArgumentError(f"chunk_rows={chunk_rows!r} must be a positive int")
    if slack is not None and (not isinstance(slack, int) or slack < 1):
        raise InvalidArgumentError(f"slack={slack!r} must be a positive int (rows)")
    if schema is not None:
        Schema(schema)  # fail before touching the disk
    attrs = {} if attrs is None else attrs
    try:
        attrs = json.loads(json.dumps(attrs))
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"attrs must be JSON-able (str, numbers, lists, dicts): {exc}") from None
    if not isinstance(attrs, dict):
        raise InvalidArgumentError(f"attrs must be a dict, not {type(attrs).__name__}")
    return _Creator(path, backend, capacity, chunk_rows, slack, attrs, replace, checksums,
                    commit_every=policy.every_rows)


def default_slack(schema: Schema, capacity: int, commit_every: int, derive_next_obs: bool) -> int:
    """A new pool's slack when none is given: room for the rows up to the next commit, and, where
    automatic commits are made durable in the background (no heap fields, no derived next_obs:
    Store._attach_unguarded), as many again, so that one commit's sync overlaps the next rows."""
    rows_per_commit = min(commit_every, capacity)
    commits_in_place = bool(schema.heap_fields()) or (derive_next_obs and bool(internal.derived_fields(schema)))
    return rows_per_commit if commits_in_place else 2 * rows_per_commit


def _check_matches(path: str, layout: Layout, capacity: int | None, schema: Any) -> None:
    stored = layout.meta["capacity"]
    if capacity is not None and capacity != stored:
        raise InvalidArgumentError(
            f"{path} has capacity {stored}, not {capacity}; omit capacity to open it, "
            "or use `expstore convert --capacity` to resize"
        )
    if schema is not None and Schema(schema) != layout.schema:
        raise SchemaError(f"{path} stores {layout.schema}, not {Schema(schema)}; open it without a schema "
                          "or create a new pool")
