"""The heap fields of one Store handle (heap.py's HeapField each): a write's rows encoded and
placed in every heap, the commit's tail and payload, and a gather's index entries decoded."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..backends.internal import DICTIONARY_PREFIX, HEAP_PREFIX
from ..errors import FOUND_IN_USE_ADVICE, REBUILD_POSITIONS_ADVICE, CorruptStoreError
from ..schema import Schema
from .heap import BOUND_KEY, EncodedRows, HeapField, length_key
from .heap_check import PAYLOAD_KEY, parse_payload_positions


class Heaps:
    """The heap fields of one Store handle."""

    def __init__(self, views: Mapping[str, np.ndarray], schema: Schema, slots: int, checksums: bool,
                 payload: Mapping):
        entries = payload.get(PAYLOAD_KEY, {})
        if not isinstance(entries, Mapping):
            parse_payload_positions(payload, {})  # raises, saying what is wrong
        self.fields = [HeapField(name, schema[name], views[name], views[HEAP_PREFIX + name], slots, checksums,
                                 entries.get(name), views.get(DICTIONARY_PREFIX + name))
                       for name in schema.heap_fields()]
        self.by_name = {heap.name: heap for heap in self.fields}
        self._heap_nbytes = {heap.name: heap.heap_nbytes for heap in self.fields}
        # The checked positions of the last commit payload asked about: checked once per commit, not per read.
        self._parsed_payload: Mapping | None = None
        self._parsed_positions: dict[str, tuple[int, int, int]] = {}
        self.bad_steps: list[np.ndarray] = []  # steps whose rows failed the checks in a reader's gathers
        self.nbytes = sum(heap.heap_nbytes for heap in self.fields)

    def positions(self, payload: Mapping) -> dict[str, tuple[int, int, int]]:
        """Every heap field's entry of the commit ``payload``, checked (parse_payload_positions)."""
        if payload is not self._parsed_payload:  # a new commit record: a handful of checks, once
            self._parsed_positions = parse_payload_positions(payload, self._heap_nbytes)
            self._parsed_payload = payload
        return self._parsed_positions

    @classmethod
    def of(cls, views: Mapping[str, np.ndarray], schema: Schema, slots: int, checksums: bool,
           payload: Mapping) -> Heaps | None:
        return cls(views, schema, slots, checksums, payload) if schema.heap_fields() else None

    # ------------------------------------------------------------------ writing
    def encode(self, values: Mapping[str, Any], n_rows: int | None) -> dict[str, EncodedRows]:
        """Check and encode every heap field of an append or extend; raises before any write."""
        return {heap.name: heap.encode(heap.check_rows(values[heap.name], n_rows)) for heap in self.fields}

    def rows_that_fit(self, rows: Mapping[str, EncodedRows], first: int, count: int
                      ) -> tuple[int, dict[str, int]]:
        """How many rows every heap takes before a commit, and the floors that commit needs."""
        limits = {heap.name: heap.rows_that_fit(rows[heap.name], first, count) for heap in self.fields}
        fitting = min(fits for fits, _ in limits.values())
        # The heaps that stop first need their floor for the commit before the next row.
        floors = {name: floor for name, (fits, floor) in limits.items() if fits == fitting and floor is not None}
        return fitting, floors

    def write(self, rows: Mapping[str, EncodedRows], first: int, count: int, first_step: int) -> None:
        for heap in self.fields:
            heap.write(rows[heap.name], first, count, first_step)

    def tail_for(self, tail: int, head: int, floors: Mapping[str, int] | None = None) -> int:
        """The commit's tail: past every row whose bytes were, or are about to be, overwritten.
        ``tail`` is the ring's; which heap moved it past that is remembered for ``payload``."""
        self._moved_by: str | None = None
        for heap in self.fields:
            floor = max(heap.head_position - heap.heap_nbytes, (floors or {}).get(heap.name, 0))
            kept = heap.first_kept(tail, head, floor)
            if kept > tail:
                tail, self._moved_by = kept, heap.name
        return tail

    def payload(self, payload: dict, ring_tail: int, previous_tail: int, tail: int, head: int) -> dict:
        """The commit payload with every heap's positions, and which bound evicted rows last."""
        bound = payload.get(BOUND_KEY)
        if tail > ring_tail:
            bound = getattr(self, "_moved_by", None)
        elif ring_tail > previous_tail:
            bound = None
        return {**payload, PAYLOAD_KEY: {heap.name: heap.committed(tail, head) for heap in self.fields},
                BOUND_KEY: bound}

    # ------------------------------------------------------------------ reading
    def decode(self, batch: dict[str, np.ndarray], steps: np.ndarray, payload: Mapping, writable: bool,
               names: Sequence[str] | None = None, prefetch: bool = False) -> None:
        """Replace each heap field's index entries in ``batch`` by its rows (and ``<name>_length``);
        of the fields ``names`` only, when given."""
        entries = None if writable else self.positions(payload)
        heaps = self.fields if names is None else [self.by_name[name] for name in names]
        # The writer reads its own rows, pending ones too; the Store keeps it inside its window.
        positions = {heap.name: (0, heap.head_position, heap.max_length) if entries is None
                     else entries[heap.name] for heap in heaps}
        if prefetch:  # every field's pages asked for before any is read: one round of disk reads, not one per field
            for heap in heaps:
                heap.prefetch(batch[heap.name], positions[heap.name])
        for heap in heaps:
            values, lengths, bad = heap.read(steps, batch[heap.name], positions[heap.name])
            batch[heap.name] = values
            if lengths is not None:
                batch[length_key(heap.name)] = lengths
            if bad.any():
                if writable:  # the writer's own rows never change under it
                    raise CorruptStoreError(f"field {heap.name!r}: the heap bytes of step {int(steps[bad][0])} "
                                            f"do not decode; {FOUND_IN_USE_ADVICE}")
                self.bad_steps.append(steps[bad])

    def read(self, names: Sequence[str], steps: np.ndarray, payload: Mapping, writable: bool,
             prefetch: bool = False) -> dict:
        """The rows of ``steps`` of the heap fields ``names`` (and their ``<name>_length``)."""
        if prefetch:  # these index entries are not in the Store's prefetched gather: ask for their pages first
            for name in names:
                self.by_name[name].prefetch_index(steps % self.by_name[name].slots)
        batch = {name: self.by_name[name].index[steps % self.by_name[name].slots] for name in names}
        self.decode(batch, steps, payload, writable, names, prefetch)
        return batch

    def usage(self, tail: int, head: int, payload: Mapping, writable: bool) -> dict[str, dict]:
        entries = None if writable else self.positions(payload)
        return {heap.name: heap.usage(tail, head, (0 if heap.protected is None else heap.protected,
                                                   heap.head_position) if entries is None
                                      else entries[heap.name])
                for heap in self.fields}

    def check(self, tail: int, head: int, payload: Mapping, progress: Callable[[int], None] | None = None
              ) -> tuple[int, list[str]]:
        """``HeapField.check`` of every heap field against the commit ``payload``."""
        try:
            positions = self.positions(payload)
        except CorruptStoreError as exc:
            return 0, [str(exc)]
        entries = payload.get(PAYLOAD_KEY, {})
        checked, findings = 0, []
        for heap in self.fields:
            if heap.name not in entries and head > tail:
                findings.append(f"field {heap.name!r}: the commit record has no heap positions for it, so its rows "
                                f"cannot be read; {REBUILD_POSITIONS_ADVICE}")
                continue
            rows, found = heap.check(tail, head, positions[heap.name], progress)
            checked, findings = checked + rows, findings + found
        return checked, findings

    def take_bad_steps(self) -> np.ndarray | None:
        if not self.bad_steps:
            return None
        found, self.bad_steps = np.concatenate(self.bad_steps), []
        return found
