"""Redundant experience: exact duplicate transitions, observation clusters, and a dedup filter.

Two rows are exact duplicates when the bytes of their fields are identical (so ``-0.0`` and
``0.0``, or two NaN payloads, differ). By default every field but ``policy_version`` counts:
the same transition collected by two policies is still redundant.

Rows are compared by a 128-bit hash of their bytes (two independent 64-bit hashes computed with
vectorised numpy, no per-row Python); two different rows collide with probability about
rows**2 / 2**129, negligible at any pool size. The pool streams through in bounded slices
(streaming.py), and the hashes of distinct rows are held at most about ``max_hashes`` at a time
(repeats of a row cost nothing): a pool of more rows is split into hash buckets, one pass over
the rows per bucket, so memory stays bounded whatever the pool size. The dedup filter
additionally keeps one byte per row.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import InvalidArgumentError, SchemaError
from .streaming import Progress, RowSource, iter_slices

IGNORED_FIELDS = ("policy_version",)
MAX_HASHES = 1 << 22  # 4 Mi hashes (16 bytes each + an int64 row index) per pass: about 100 MiB
TOP_CLUSTERS = 10
_BLOCK_ROWS = 1 << 16

_SEEDS = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))
_MULTIPLIERS = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _mix(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: every input bit affects every output bit (uint64 wraps)."""
    values = values ^ (values >> np.uint64(30))
    values = values * _MULTIPLIERS[0]
    values = values ^ (values >> np.uint64(27))
    values = values * _MULTIPLIERS[1]
    return values ^ (values >> np.uint64(31))


def row_words(rows: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """[rows, words] uint64: each row's bytes over ``names``, zero-padded to whole words."""
    count = len(rows[names[0]])
    # A ragged field's padding is zeros: its lengths column tells [1, 2] from [1, 2, 0].
    names = [*names, *(f"{name}_length" for name in names if f"{name}_length" in rows)]
    parts = [np.ascontiguousarray(rows[name]).reshape(count, -1).view(np.uint8) for name in names]
    raw = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    padding = -raw.shape[1] % 8
    if padding:
        raw = np.concatenate([raw, np.zeros((count, padding), np.uint8)], axis=1)
    return np.ascontiguousarray(raw).view(np.uint64)


def row_hashes(rows: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """[rows, 2] uint64: a 128-bit hash of each row's bytes over ``names``."""
    words = row_words(rows, names)
    out = np.empty((len(words), 2), np.uint64)
    with np.errstate(over="ignore"):
        for lane, seed in enumerate(_SEEDS):
            state = np.full(len(words), seed, np.uint64)
            for column in range(words.shape[1]):
                state = _mix(state * _MULTIPLIERS[lane] + words[:, column] + np.uint64(column))
            out[:, lane] = state
    return out


def hashed_fields(schema, fields: Sequence[str] | None = None) -> list[str]:
    """The fields compared: ``fields``, or every field but those in IGNORED_FIELDS."""
    names = list(fields) if fields is not None else [n for n in schema if n not in IGNORED_FIELDS]
    unknown = [name for name in names if name not in schema]
    if unknown or not names:
        raise SchemaError(f"cannot compare rows by fields {names}: the pool stores {list(schema)}; "
                          "name at least one stored field")
    return names


class _BucketGroups:
    """The distinct rows of one hash bucket seen so far: sorted keys, oldest row, copies.

    Memory grows with the distinct rows only, however often a row repeats.
    """

    def __init__(self):
        self.keys = np.zeros(0, "V16")
        self.first = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)

    def add(self, keys: np.ndarray, row_indices: np.ndarray) -> np.ndarray:
        """Take rows in order; returns which of them equal an older row."""
        unique, first_position, inverse, counts = np.unique(keys, return_index=True, return_inverse=True,
                                                            return_counts=True)
        inverse = inverse.reshape(-1)
        position = np.searchsorted(self.keys, unique)
        known = position < len(self.keys)
        known[known] = self.keys[position[known]] == unique[known]
        self.counts[position[known]] += counts[known]
        fresh = ~known
        keys_now = np.concatenate([self.keys, unique[fresh]])
        order = np.argsort(keys_now, kind="stable")
        self.keys = keys_now[order]
        self.first = np.concatenate([self.first, row_indices[first_position[fresh]]])[order]
        self.counts = np.concatenate([self.counts, counts[fresh]])[order]
        return known[inverse] | (np.arange(len(keys)) != first_position[inverse])


def _scan_buckets(source: RowSource, names: list[str], max_hashes: int, progress: Progress | None,
                  duplicate: np.ndarray | None = None) -> Iterator[_BucketGroups]:
    """One pass over the rows per hash bucket, each yielding that bucket's groups; marks
    ``duplicate[row]`` for rows equal to an older row when given."""
    buckets = max(1, -(-len(source) // int(max_hashes)))  # distinct rows <= rows: each bucket fits
    for bucket in range(buckets):
        groups = _BucketGroups()
        for first, rows in iter_slices(source, fields=names, progress=progress):
            hashes = row_hashes(rows, names)
            chosen = np.flatnonzero(hashes[:, 0] % np.uint64(buckets) == np.uint64(bucket))
            keys = np.ascontiguousarray(hashes[chosen]).view("V16").reshape(-1)
            repeated = groups.add(keys, first + chosen)
            if duplicate is not None:
                duplicate[first + chosen] = repeated
        yield groups


def count_duplicates(source: RowSource, fields: Sequence[str] | None = None, *, max_hashes: int = MAX_HASHES,
                     progress: Progress | None = None) -> dict:
    """Exact duplicate transitions of a pool.

    Returns:
        ``rows``, ``distinct`` (different rows), ``duplicate_rows`` (rows equal to an older
        row: what ``convert --dedup`` drops), ``duplicate_fraction``, ``groups_with_duplicates``,
        ``largest_group`` (copies of the most repeated row), ``fields`` compared, ``passes``.
    """
    names = hashed_fields(source.schema, fields)
    distinct = groups_repeated = largest = 0
    passes = 0
    for groups in _scan_buckets(source, names, max_hashes, progress):
        distinct += len(groups.keys)
        groups_repeated += int((groups.counts > 1).sum())
        largest = max(largest, int(groups.counts.max()) if groups.counts.size else 0)
        passes += 1
    rows = len(source)
    # Rows of such a pool hold no next observation: equal rows may still differ in it.
    return {"rows": rows, "derived_not_compared": derived_fields(source), "distinct": distinct,
            "duplicate_rows": rows - distinct,
            "duplicate_fraction": (rows - distinct) / rows if rows else 0.0,
            "groups_with_duplicates": groups_repeated, "largest_group": largest, "fields": names,
            "passes": passes}


def duplicate_mask(source: RowSource, fields: Sequence[str] | None = None, *, max_hashes: int = MAX_HASHES,
                   progress: Progress | None = None) -> np.ndarray:
    """Bool [rows]: True where a row equals an older row (the first copy is kept)."""
    names = hashed_fields(source.schema, fields)
    duplicate = np.zeros(len(source), bool)
    for _groups in _scan_buckets(source, names, max_hashes, progress, duplicate):
        pass
    return duplicate


class DedupSource:
    """A row source without the exact duplicates of another (the oldest copy kept, in order).

    ``read(start, stop)`` counts kept rows; the rows behind them are read from the source in
    pieces of at most ``stop - start`` source rows, so memory stays bounded even where most
    rows are duplicates. Its kind is ``"deduplicated"``, not ``"pool"``: the kept rows no
    longer have consecutive step ids, so a copy made from it is tagged anew by ``extend``
    (episodes split at terminated/truncated rows, priorities reset), as a copy of an archive is.
    """

    kind = "deduplicated"

    def __init__(self, source: RowSource, fields: Sequence[str] | None = None, *, max_hashes: int = MAX_HASHES):
        derived = derived_fields(source)
        if derived:
            raise InvalidArgumentError(
                f"{source.path} stores no next observations ({derived} are derived from the following row), "
                "so dropping a row would change its predecessor's transition; dedup a pool that stores them")
        self.source = source
        self.path, self.schema, self.attrs = source.path, source.schema, dict(source.attrs)
        self.capacity, self.chunk_rows = source.capacity, source.chunk_rows
        self.first_step_id = source.first_step_id
        self.meta = dict(getattr(source, "meta", {}))
        self.duplicate = duplicate_mask(source, fields, max_hashes=max_hashes)
        self.dropped_rows = int(self.duplicate.sum())
        # Kept rows before each block of _BLOCK_ROWS source rows: finds where a read starts.
        per_block = [np.count_nonzero(~self.duplicate[first:first + _BLOCK_ROWS])
                     for first in range(0, len(self.duplicate), _BLOCK_ROWS)]
        self._kept_before = np.concatenate([[0], np.cumsum(per_block, dtype=np.int64)])
        self._length = int(self._kept_before[-1])

    def __len__(self) -> int:
        return self._length

    def _source_row(self, kept_index: int) -> int:
        """The source row of the ``kept_index``-th kept row (len(source) past the end)."""
        block = int(np.searchsorted(self._kept_before, kept_index, side="right")) - 1
        start = block * _BLOCK_ROWS
        kept = np.flatnonzero(~self.duplicate[start:start + _BLOCK_ROWS])
        offset = kept_index - int(self._kept_before[block])
        return start + int(kept[offset]) if offset < len(kept) else len(self.source)

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        wanted = max(0, stop - start)
        position, pieces, got = self._source_row(start), [], 0
        while got < wanted:
            chunk = self.source.read(position, min(len(self.source), position + wanted))
            keep = ~self.duplicate[position:position + wanted]
            keep &= np.cumsum(keep) <= wanted - got
            pieces.append({name: values[keep] for name, values in chunk.items()})
            got += int(keep.sum())
            position += wanted
        if not pieces:
            return self.source.read(0, 0)
        # Every column read, ragged fields' <name>_length too (a copy needs them to cut the padding).
        return {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}

    def close(self) -> None:
        self.source.close()


def derived_fields(source: RowSource) -> list[str]:
    """Fields whose ``next_`` values a pool derives from the following row instead of storing."""
    return [f"next_{name}" for name in getattr(getattr(source, "store", None), "_derived", ())]


def is_discrete(dtype: np.dtype) -> bool:
    """Integer and bool observations are discrete: equal values are the same state."""
    return np.dtype(dtype).kind in "biu"


def observation_clusters(source: RowSource, field: str = "obs", *, top: int = TOP_CLUSTERS,
                         max_hashes: int = MAX_HASHES, progress: Progress | None = None) -> dict:
    """Rows grouped by identical discrete observation: how concentrated the visited states are.

    For a discrete observation field (int or bool), rows with the same observation are
    near-duplicates: they differ at most in action and outcome. Reports the number of
    distinct observations, the rows in clusters of two or more, and the ``top`` largest
    clusters (observation value, rows, first logical row). A float field is not clustered
    (``skipped`` says why): equality of float states is not meaningful.
    """
    if field not in source.schema:
        return {"field": field, "skipped": f"the pool has no {field!r} field"}
    if not is_discrete(source.schema[field].dtype):
        return {"field": field, "skipped": f"{field!r} is {source.schema[field].dtype}, not discrete (int or bool)"}
    distinct, clustered = 0, 0
    largest: list[tuple[int, int]] = []  # (rows, -first logical row) of the biggest clusters so far
    for groups in _scan_buckets(source, [field], max_hashes, progress):
        sizes, firsts = groups.counts, groups.first
        distinct += len(firsts)
        clustered += int(sizes[sizes > 1].sum())
        order = np.argsort(-sizes, kind="stable")[:top]
        largest = heapq.nlargest(top, largest + [(int(sizes[i]), -int(firsts[i])) for i in order])
    clusters = [{"rows": size, "first_row": -negative_first,
                 "value": np.asarray(source.read(-negative_first, -negative_first + 1)[field])[0].tolist()}
                for size, negative_first in largest]
    return {"field": field, "rows": len(source), "distinct": distinct, "rows_in_clusters": clustered,
            "largest": clusters}


def duplicate_report(source: RowSource, fields: Sequence[str] | None = None, *, obs_field: str = "obs",
                     max_hashes: int = MAX_HASHES, progress: Progress | None = None) -> dict:
    """``{"exact": count_duplicates(...), "observation_clusters": observation_clusters(...)}``."""
    return {"exact": count_duplicates(source, fields, max_hashes=max_hashes, progress=progress),
            "observation_clusters": observation_clusters(source, obs_field, max_hashes=max_hashes,
                                                         progress=progress)}
