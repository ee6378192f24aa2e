"""Parquet files, the format Hugging Face ``datasets``, pandas, Polars and DuckDB all read.

One row per transition: ``step_id``, ``episode_id`` and ``episode_step`` (the row's position in its
episode), then every pool field in pool order (arrow_columns.py: a field of row shape
``(d0, d1, ...)`` is a nested fixed-size list, a ragged field ``(None, d1, ...)`` a variable-length
list of them, each row's own length). Row groups hold whole episodes where they fit (about ``row_group_mb``
each; a vector env's interleaved episodes cross them), so the ``episode_id`` statistics of a row
group give its episode range and a reader that filters by episode reads only the groups it needs.
The pool's schema and attrs ride in the file's key-value metadata under ``expstore``, with
``open_episodes``, the ids of the episodes still running at the export, so an import gives back
every field bit for bit, with the same step ids and episodes: the same rows in each, in order,
ending as they ended (terminated, truncated, or still open). The file names episodes, not env ids:
episodes that ran at the same time (a vector env's, their rows interleaved) go on env ids of their
own, one per episode running at the time (parquet_reading.py's EpisodeSpans), so each row's next
row in its episode, n-step returns and sequence windows are the source's; episode ids count from 0
again. An episode whose first rows the ring had evicted comes back as the rows the file has, one
cut off when its writer stopped as truncated (only a stopped writer cuts episodes off). A file
without ``open_episodes`` (an older export, or one of an archive, which keeps no episodes) cannot
tell an open episode from one ended without a flag: every such episode is imported as ended, as
before, and the import logs how many. A pool that derives ``next_obs`` (``derive_next_obs=True``)
gets the derived values as ``next_<obs>`` columns, null where the pool knows none, and a
``derived_next_obs`` entry in that metadata; importing such a file builds a pool that derives them
again, bit for bit (parquet_derived.py).

Import also reads Parquet files expstore did not write (``datasets.Dataset.to_parquet``,
pandas): every numeric or boolean column, scalar or list, becomes a field named after it (a
list column whose rows differ in length, a ragged field); ``episode_id`` (or ``episode_index``)
numbers the episodes, each run of rows of one id an episode on env 0 (such a file may be shards
joined end to end, each numbering its episodes from 0, or shuffled rows: only an export of ours
says that an id names one episode, however its rows interleave); columns of other types
(strings, structs, lists whose inner lists differ in length) cannot be pool rows and are listed in
``attrs["parquet"]["skipped"]``. A ragged field's heap is sized from the file's own list lengths,
so every row fits. Both directions stream in bounded slices.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import closing

import numpy as np

from ..backends import files
from ..core.heap import length_key
from ..errors import CorruptStoreError, InvalidArgumentError, NotAPoolError, SchemaError, StoreNotFoundError
from ..inspect.streaming import Progress, iter_slices, open_source, slice_rows
from ..maintenance.convert import make_parent
from ..maintenance.destination import SAVED_KEY, check_destination
from ..schema import Field, Schema
from .arrow_columns import (
    arrow_type,
    field_of_type,
    from_arrow,
    list_levels,
    probed_field,
    pyarrow,
    to_arrow,
)
from .base import ExportOption, ExportResult
from .building import ImportSlice, build_imported_pool, episode_ends
from .common import field_name, saved_json
from .episode_tags import EpisodeTagger, open_episode_ids
from .parquet_derived import DerivedColumns, DerivedFile, derived_file, import_derived
from .parquet_reading import (
    OPEN_KEY,
    EpisodeSpans,
    RowEpisodes,
    check_steps,
    done_flags,
    episode_ids,
    first_step_id,
    next_batch,
    ragged_heap_bytes,
)

log = logging.getLogger(__name__)

ROW_COLUMNS = ("step_id", "episode_id", "episode_step")
_EPISODE_COLUMNS = ("episode_id", "episode_index")  # ours, and LeRobot's / other tools' name
COMPRESSIONS = ("zstd", "snappy", "gzip", "lz4", "brotli", "none")
_ROW_GROUP_MB = 128


# ---------------------------------------------------------------------------------------- export
def export_parquet(src: str | os.PathLike, dst: str | os.PathLike, *, compression: str | None = None,
                   row_group_mb: float | str | None = None, overwrite: bool = False,
                   progress: Progress | None = None) -> tuple[int, int]:
    """Write the rows of pool ``src`` (oldest first) as the Parquet file ``dst``; return (rows, episodes).

    Args:
        compression: the column codec (``zstd`` by default, ``none`` for none).
        row_group_mb: the uncompressed size a row group grows to before it ends at the next
            episode boundary (an episode larger than that ends its group on its own).
    """
    pa = pyarrow()
    import pyarrow.parquet as pq  # beside pyarrow: the optional dependency

    dst = os.fspath(dst)
    codec = _compression(compression)
    group_nbytes = int(_positive_number(row_group_mb, _ROW_GROUP_MB, "--row-group-mb") * (1 << 20))
    check_destination(dst, overwrite, "parquet")
    with closing(open_source(src)) as source:
        derived = DerivedColumns.of(source)  # None unless the pool derives next_<obs>
        schema = _file_schema(pa, source.schema, _saved(source, derived), derived)
        counted = {"episodes": 0}

        def build(temp: str) -> list[str]:
            with pq.ParquetWriter(temp, schema, compression=codec) as writer:
                groups = _RowGroups(pa, writer, group_nbytes)
                for table, starts in _tables(pa, source, schema, counted, progress, derived):
                    groups.add(table, starts)
                groups.close()
            return []

        make_parent(dst)
        files.build_aside(dst, build, replace=overwrite)
        return len(source), counted["episodes"]


def _compression(name: str | None) -> str:
    name = (name or "zstd").lower()
    if name not in COMPRESSIONS:
        raise InvalidArgumentError(f"--compression {name} is not one of {', '.join(COMPRESSIONS)}")
    return name


def _positive_number(value, default: float, flag: str) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = 0.0
    if not number > 0:
        raise InvalidArgumentError(f"{flag} {value} must be a positive number")
    return number


def _saved(source, derived: DerivedColumns | None) -> str:
    """The ``expstore`` metadata: schema and attrs, and the episodes still open (a derived
    pool's import needs them: a list, empty where the source keeps no episodes)."""
    saved = saved_json(source.schema, source.attrs)
    open_ids = open_episode_ids(source)
    if derived is not None:
        open_ids = open_ids or []
    if open_ids is None:
        return saved
    return json.dumps({**json.loads(saved), OPEN_KEY: open_ids})


def _file_schema(pa, schema: Schema, saved: str, derived: DerivedColumns | None):
    columns = [pa.field(name, pa.int64(), nullable=False) for name in ROW_COLUMNS]
    columns += [pa.field(name, arrow_type(spec), nullable=False) for name, spec in schema.items()]
    if derived is not None:
        columns += derived.arrow_fields(pa)
        saved = derived.saved(saved)
    return pa.schema(columns, metadata={SAVED_KEY: saved})


def _tables(pa, source, schema, counted: dict, progress, derived: DerivedColumns | None):
    """Arrow tables of consecutive slices, each with the offsets where an episode begins in it."""
    tagger = EpisodeTagger(source)
    for first, rows in iter_slices(source, progress=progress):
        n = len(next(iter(rows.values()))) if rows else 0
        ids, steps = tagger.tags(first, rows, n)
        columns = [pa.array(np.arange(source.first_step_id + first, source.first_step_id + first + n)), pa.array(ids),
                   pa.array(steps)]
        columns += [to_arrow(rows[name], rows.get(length_key(name)) if field.ragged else None)
                    for name, field in source.schema.items()]
        if derived is not None:
            columns += derived.arrays(pa, np.arange(source.first_step_id + first, source.first_step_id + first + n),
                                      rows)
        table = pa.Table.from_arrays(columns, schema=schema)
        starts = tagger.starts_in_last()
        counted["episodes"] = tagger.episodes
        yield table, starts


class _RowGroups:
    """Cuts the rows into row groups of about ``target_nbytes`` that end where an episode begins;
    an episode more than twice that long is cut inside, so memory stays bounded."""

    def __init__(self, pa, writer, target_nbytes: int):
        self.pa, self.writer, self.target = pa, writer, target_nbytes
        self.pending: list = []
        self.pending_nbytes = 0

    def add(self, table, starts: np.ndarray) -> None:
        row_nbytes = max(1, table.nbytes // max(1, table.num_rows))
        done = 0  # rows of ``table`` written already
        for start in [*starts.tolist(), None]:
            stop = table.num_rows if start is None else start
            while self.pending_nbytes + (stop - done) * row_nbytes >= 2 * self.target:
                cut = done + max(1, (2 * self.target - self.pending_nbytes) // row_nbytes)
                done = self._flush(table, done, min(cut, stop))
            if start is not None and self.pending_nbytes + (start - done) * row_nbytes >= self.target:
                done = self._flush(table, done, start)
        if done < table.num_rows:
            self.pending.append(table.slice(done))
            self.pending_nbytes += (table.num_rows - done) * row_nbytes

    def close(self) -> None:
        if self.pending:
            self.writer.write_table(self.pa.concat_tables(self.pending))
            self.pending.clear()

    def _flush(self, table, done: int, stop: int) -> int:
        """Write the pending rows and ``table``'s rows [done, stop) as one row group."""
        group = self.pa.concat_tables([*self.pending, table.slice(done, stop - done)])
        if group.num_rows:
            self.writer.write_table(group, row_group_size=group.num_rows)
        self.pending.clear()
        self.pending_nbytes = 0
        return stop


# ---------------------------------------------------------------------------------------- import
def import_parquet(src: str | os.PathLike, dst: str | os.PathLike, *, capacity: int | None = None,
                   backend: str | None = None, overwrite: bool = False, progress: Progress | None = None) -> int:
    """Create pool ``dst`` from the Parquet file ``src``; return the row count.

    A file expstore wrote comes back with its schema, attrs, step ids and episodes; any other
    file's numeric and boolean columns become fields (see the module docstring).
    """
    pyarrow()
    import pyarrow.parquet as pq  # beside pyarrow: the optional dependency

    src, dst = os.fspath(src), os.fspath(dst)
    if not os.path.exists(src):
        raise StoreNotFoundError(f"no Parquet file at {src}; check the path")
    check_destination(dst, overwrite)
    try:
        parquet = pq.ParquetFile(src)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for files that are not Parquet
        raise NotAPoolError(f"{src} is not a readable Parquet file ({exc}); pass a .parquet file") from None
    with parquet:
        plan = _import_plan(src, parquet)
        if plan.derived is not None:  # a pool that derived next_<obs>: rebuilt deriving them (parquet_derived.py)
            return import_derived(src, dst, parquet, plan.schema, plan.attrs, plan.derived, capacity=capacity,
                                  backend=backend, overwrite=overwrite, progress=progress)
        rows = parquet.metadata.num_rows
        first_step = first_step_id(parquet) if plan.saved else 0
        capacity = capacity or max(1, rows)
        heap_bytes = ragged_heap_bytes(parquet, plan.schema, plan.columns, capacity)
        # Only an export of ours names each episode once (its rows may interleave); another tool's
        # file may number episodes again (shards joined end to end) or shuffle its rows.
        spans = EpisodeSpans.read(src, parquet, plan.open_episodes or frozenset()) if plan.saved else None
        counted = {"unflagged": 0}  # the episodes ended without a flag on their last row
        slices = _import_slices(src, parquet, plan, spans, counted, progress)
        build_imported_pool(dst, backend, plan.schema, capacity, plan.attrs, slices,
                            overwrite=overwrite, first_step_id=first_step, heap_bytes=heap_bytes)
    if plan.saved and plan.open_episodes is None and counted["unflagged"]:
        log.info("%s does not say which episodes were still open at the export (an older export, or one of an "
                 "archive); its %d episodes that end without a terminated or truncated flag are imported as ended",
                 src, counted["unflagged"])
    return rows


class _Plan:
    def __init__(self, schema: Schema, attrs: dict, columns: dict[str, str], episode_column: str | None, saved: bool,
                 derived: DerivedFile | None = None, open_episodes: frozenset[int] | None = None):
        self.schema, self.attrs, self.columns = schema, attrs, columns  # field -> column
        self.episode_column, self.saved, self.derived = episode_column, saved, derived
        self.open_episodes = open_episodes  # None where the file does not say


def _import_plan(src: str, parquet) -> _Plan:
    arrow_schema = parquet.schema_arrow
    names = arrow_schema.names
    metadata = arrow_schema.metadata or {}
    saved = metadata.get(SAVED_KEY.encode())
    episode_column = next((name for name in _EPISODE_COLUMNS if name in names), None)
    if saved is not None:
        try:
            loaded = json.loads(saved)
            schema, attrs = Schema.from_json(loaded["schema"]), dict(loaded.get("attrs", {}))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptStoreError(f"{src}: the expstore schema in the file metadata cannot be read ({exc}); "
                                    "the file is damaged") from None
        missing = [name for name in (*ROW_COLUMNS, *schema) if name not in names]
        if missing:
            raise SchemaError(f"{src} lacks the columns {missing} that its expstore schema names; the file was "
                              "changed after export")
        return _Plan(schema, attrs, {name: name for name in schema}, "episode_id", saved=True,
                     open_episodes=_open_episodes(src, loaded), derived=derived_file(src, loaded, schema, names))
    fields: dict[str, Field] = {}
    columns: dict[str, str] = {}
    skipped = []
    for column in names:
        if column in ROW_COLUMNS or column == episode_column or column.startswith("__index_level_"):
            continue
        column_type = arrow_schema.field(column).type
        spec, name = field_of_type(column_type), field_name(column)
        if spec is None and list_levels(column_type) is not None:  # datasets and pandas write vectors so
            spec = probed_field(column_type, (batch.column(0) for batch in parquet.iter_batches(columns=[column])))
        if spec is None or name is None or name in fields:
            skipped.append(column)
            continue
        fields[name], columns[name] = spec, column
    if not fields:
        raise NotAPoolError(f"{src} has no numeric or boolean column to import (it holds {names}); a pool field "
                            "is a number or a fixed-size list of numbers")
    if skipped:
        log.info("%s: columns %s cannot be pool fields and are skipped", src, skipped)
    attrs = {"parquet": {"source": os.path.basename(src), "skipped": skipped,
                         "columns": {name: column for name, column in columns.items() if name != column}}}
    return _Plan(Schema(fields), attrs, columns, episode_column, saved=False)


def _open_episodes(src: str, loaded: dict) -> frozenset[int] | None:
    """The episodes open at the export, from the ``expstore`` metadata; None where it does not say."""
    entry = loaded.get(OPEN_KEY)
    if entry is None:
        return None
    try:
        return frozenset(int(episode) for episode in entry)
    except (TypeError, ValueError) as exc:
        raise CorruptStoreError(f"{src}: the {OPEN_KEY} entry of the expstore metadata cannot be read ({exc}); "
                                "the file is damaged") from None


def _import_slices(src: str, parquet, plan: _Plan, spans: EpisodeSpans | None, counted: dict, progress):
    """The file's rows in slices, with the ends of the episodes that end without a flag: an
    export of ours (``spans``) puts each row on its episode's env id (one env for one episode
    after another) and leaves the open ones open; in another tool's file each run of rows of
    one episode id is an episode, all on env 0."""
    batch_rows = slice_rows(plan.schema)
    wanted = list(dict.fromkeys([*plan.columns.values(), *([plan.episode_column] if plan.episode_column else []),
                                 *(["step_id"] if plan.saved else [])]))
    batches = parquet.iter_batches(batch_size=batch_rows, columns=wanted)
    expected_step = None
    first_row = 0
    current = next_batch(src, batches)
    while current is not None:
        following = next_batch(src, batches)  # its first episode id tells whether the last run ends here
        rows = {name: from_arrow(current.column(column), plan.schema[name], f"{src}: column {column!r}")
                for name, column in plan.columns.items()}
        if plan.saved:
            expected_step = check_steps(src, current.column("step_id"), expected_step)
        if plan.episode_column is None:
            yield ImportSlice(rows)
        else:
            ids = episode_ids(src, current.column(plan.episode_column), plan.episode_column)
            if spans is None:
                next_id = None if following is None else following.column(plan.episode_column)[0].as_py()
                yield ImportSlice(rows, episode_ends(ids, next_id, done_flags(rows)))
            else:
                yield _placed(rows, spans.at(ids, first_row), spans.one_env, counted)
        if progress is not None:
            progress(current.num_rows)
        first_row += current.num_rows
        current = following


def _placed(rows: dict, placed: RowEpisodes, one_env: bool, counted: dict) -> ImportSlice:
    """The rows of an export of ours on their episodes' env ids, ending the episodes that end
    there without a flag and were not open at the export (counted)."""
    unflagged = placed.last & ~placed.open
    done = done_flags(rows)
    ends = np.flatnonzero(unflagged if done is None else unflagged & ~done)
    counted["unflagged"] += len(ends)
    return ImportSlice(rows, (ends + 1).tolist(), None if one_env else placed.env_ids)


class ParquetFormat:
    """Parquet files as a registered interchange format (base.Format)."""

    name: str = "parquet"
    description: str = "Parquet file"
    suffixes: tuple[str, ...] = (".parquet", ".pq")
    export_passes: int = 1
    export_options: tuple[ExportOption, ...] = (
        ExportOption("compression", f"column codec: {', '.join(COMPRESSIONS)} (default zstd)."),
        ExportOption("row_group_mb", f"row group size in MiB before it ends at an episode end (default "
                                     f"{_ROW_GROUP_MB})."),
    )

    def recognises(self, path: str) -> bool:
        return os.path.isfile(path) and os.path.splitext(path)[1].lower() in self.suffixes

    def export_pool(self, src: str, dst: str, *, overwrite: bool = False, progress: Progress | None = None,
                    **options) -> ExportResult:
        rows, episodes = export_parquet(src, dst, overwrite=overwrite, progress=progress, **options)
        return ExportResult(rows, episodes)

    def import_pool(self, src: str, dst: str, *, capacity: int | None = None, backend: str | None = None,
                    overwrite: bool = False, progress: Progress | None = None) -> int:
        return import_parquet(src, dst, capacity=capacity, backend=backend, overwrite=overwrite, progress=progress)
