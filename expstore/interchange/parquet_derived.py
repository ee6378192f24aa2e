"""Parquet files of pools that derive ``next_obs``: the derived values as columns, and back.

A pool created with ``derive_next_obs=True`` stores ``obs`` (and ``obs_*``) only and derives each
``next_<obs>`` from the next row of the episode, keeping each episode's final observation aside
(derived_next.py). Its Parquet export writes those values as a column ``next_<obs>`` of the
observation's type after the fields, so that a reader of the file gets whole transitions. A row
whose next observation the pool does not know (the newest row of an open episode, an episode whose
final observation the pool no longer keeps: rows sampling never returns) has a null there. The
``expstore`` metadata says so under ``derived_next_obs`` (the observations derived), beside its
``open_episodes``, the episodes still open at the export (earlier exports kept that list in the
``derived_next_obs`` entry: read too).

Importing such a file rebuilds a pool that derives them again: it stores the observations, and
for each ended episode the ``next_<obs>`` of its last row as the final observation, so that every
row's next observation, and which rows have none, come back bit for bit. The file names episodes,
not env ids: the rows of a vector env's interleaved episodes go back on env ids of their own, one
per episode running at the time. A file whose ``next_<obs>`` is not the next row's observation
within an episode (changed after export) cannot be rebuilt so, and is refused before the pool
appears.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass

import numpy as np

from ..backends.internal import derived_fields
from ..core.heap import length_key
from ..core.opening import default_slack
from ..core.opening import open as open_store
from ..errors import CorruptStoreError, SchemaError
from ..inspect.streaming import PoolSource, Progress
from ..schema import Schema
from .arrow_columns import arrow_type, list_levels, to_arrow
from .building import build_filled_pool
from .derived_next import NextObservations, derived_names
from .parquet_reading import OPEN_KEY, EpisodeSpans, first_step_id, heap_room, list_lengths, ragged_heap_bytes
from .parquet_rebuild import DerivedWriter, read_batches

DERIVED_KEY = "derived_next_obs"  # the entry of the ``expstore`` metadata (the module docstring)
_COMMIT_EVERY = inspect.signature(open_store).parameters["commit_every"].default  # open()'s default
_ROWS_PER_FINAL, _FINALS_MARGIN = 16, 64  # open()'s default final-observation table, enlarged below


# ---------------------------------------------------------------------------------------- export
class DerivedColumns:
    """The ``next_<obs>`` columns of the Parquet export of a pool that derives them."""

    def __init__(self, source: PoolSource):
        self._next = NextObservations(source)
        self._fields = {name: source.schema[name] for name in self._next.names}

    @classmethod
    def of(cls, source) -> DerivedColumns | None:
        """The columns for ``source``; None where it derives nothing (its next values are fields)."""
        return cls(source) if isinstance(source, PoolSource) and derived_names(source) else None

    def arrow_fields(self, pa) -> list:
        return [pa.field(f"next_{name}", arrow_type(field), nullable=True) for name, field in self._fields.items()]

    def saved(self, saved: str) -> str:
        """The ``expstore`` metadata ``saved`` with the derived entry."""
        return json.dumps({**json.loads(saved), DERIVED_KEY: {"fields": list(self._fields)}})

    def arrays(self, pa, steps: np.ndarray, rows: dict[str, np.ndarray]) -> list:
        """The columns of rows ``steps`` (``rows``: the pool's, read already); null where unknown."""
        import pyarrow.compute as pc  # beside pyarrow: the optional dependency

        values, known = self._next.of(steps, rows)
        valid = None if known.all() else pa.array(known)
        arrays = []
        for name, field in self._fields.items():
            key = f"next_{name}"
            array = to_arrow(values[key], values[length_key(key)] if field.ragged else None)
            arrays.append(array if valid is None else pc.if_else(valid, array, pa.nulls(len(array), array.type)))
        return arrays


# ---------------------------------------------------------------------------------------- import
@dataclass(frozen=True)
class DerivedFile:
    """What a file's metadata says of the observations its pool derived."""

    names: tuple[str, ...]
    open_episodes: frozenset[int]


def derived_file(src: str, loaded: dict, schema: Schema, columns: list[str]) -> DerivedFile | None:
    """The derived entry of a file's ``expstore`` metadata ``loaded``, checked; None without one."""
    entry = loaded.get(DERIVED_KEY)
    if entry is None:
        return None
    try:
        names = tuple(entry["fields"])
        # The top-level list; exports before it was written for these pools kept it in this entry.
        listed = loaded[OPEN_KEY] if OPEN_KEY in loaded else entry["open_episodes"]
        open_episodes = frozenset(int(episode) for episode in listed)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptStoreError(f"{src}: the {DERIVED_KEY} entry of the expstore metadata cannot be read ({exc}); "
                                "the file is damaged") from None
    expected = derived_fields(schema)
    if not names or sorted(map(str, names)) != sorted(expected):
        raise CorruptStoreError(f"{src}: the expstore metadata says the pool derived next_ of {list(names)}, but the "
                                f"observations its schema stores without a next_ field are {expected}; the file is "
                                "damaged")
    missing = [f"next_{name}" for name in names if f"next_{name}" not in columns]
    if missing:
        raise SchemaError(f"{src} lacks the columns {missing} that its expstore metadata names; the file was changed "
                          "after export")
    return DerivedFile(names, open_episodes)


def import_derived(src: str, dst: str, parquet, schema: Schema, attrs: dict, derived: DerivedFile, *,
                   capacity: int | None, backend: str | None, overwrite: bool, progress: Progress | None) -> int:
    """Create pool ``dst``, deriving ``next_<obs>`` again, from the Parquet file ``src``; return the rows."""
    rows = parquet.metadata.num_rows
    capacity = capacity or max(1, rows)
    spans = EpisodeSpans.read(src, parquet, derived.open_episodes)
    slack = default_slack(schema, capacity, _COMMIT_EVERY, derive_next_obs=True)  # the slack open() gives it
    # Every ended episode's final observation fits the table (open()'s default keeps one per 16 rows).
    final_rows = max(-(-(capacity + slack) // _ROWS_PER_FINAL) + _FINALS_MARGIN, spans.ended)
    heap_bytes = _heap_bytes(parquet, schema, derived.names, spans, capacity, capacity + slack, final_rows)

    def fill(store) -> None:
        writer = DerivedWriter(src, store, schema, derived.names, spans)
        for batch in read_batches(src, parquet, schema, derived.names, progress):
            writer.add(batch)
        store.flush(fsync=False)  # what it checks is the committed pool; the builder's flush makes it durable
        writer.check_kept()

    build_filled_pool(dst, backend, fill, overwrite=overwrite, capacity=capacity, schema=schema, attrs=attrs,
                      first_step_id=first_step_id(parquet), slack=slack, heap_bytes=heap_bytes,
                      derive_next_obs=True, max_final_obs=final_rows)
    return rows


def _heap_bytes(parquet, schema: Schema, names: tuple[str, ...], spans: EpisodeSpans, capacity: int, rows: int,
                final_rows: int) -> dict[str, int] | None:
    """The heaps of the ragged fields (parquet_reading.py), those of ragged observations large
    enough that their share for final observations (``final_rows`` of ``rows``, opening.py's
    final_heap_sizes) holds every final observation of the file."""
    sizes = dict(ragged_heap_bytes(parquet, schema, {name: name for name in schema}, capacity) or {})
    ends = np.sort(spans.last[~spans.open])  # the rows whose next observation is a final one
    for name in names:
        key = f"next_{name}"
        if not schema[name].ragged or not list_levels(parquet.schema_arrow.field(key).type):
            continue  # not a list column: reading it says so (from_arrow)
        total = longest = start = 0
        for batch in parquet.iter_batches(columns=[key]):
            lengths = list_lengths(batch.column(0))
            at = ends[np.searchsorted(ends, start):np.searchsorted(ends, start + len(lengths))] - start
            total += int(lengths[at].sum())
            longest = max(longest, int(lengths[at].max(initial=0)))
            start += len(lengths)
        needed = heap_room(schema[name], total, longest)
        sizes[name] = max(sizes.get(name, 1), -(-needed * rows // min(final_rows, rows)))
    return sizes or None
