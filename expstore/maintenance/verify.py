"""Integrity checks (``verify``) and recovery (``repair``) of a pool."""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..backends import files, get_backend, resolve_backend
from ..backends.internal import DICTIONARY_PREFIX, HEAP_PREFIX
from ..codecs.registry import uses_dictionary
from ..core import checksums, commit, lock
from ..core.heap_check import PAYLOAD_KEY, clipped, parse_positions, positions_from_index
from ..core.heap_dictionary import HeapDictionary
from ..core.opening import open as open_store
from ..errors import CorruptStoreError, ExpstoreError
from ..schema import HEAP_INDEX_COLUMNS

_SLOT_READS = 3


@dataclass
class VerifyReport:
    """What ``verify`` found. ``ok`` is True when there are no findings."""

    path: str
    findings: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict:
        return {"path": self.path, "ok": self.ok, "findings": list(self.findings), **self.facts}

    def __str__(self) -> str:
        if self.ok:
            checked = self.facts.get("chunks_checked", 0) + self.facts.get("partial_chunks_checked", 0)
            return f"{self.path}: healthy ({checked} chunk checksums verified)" + self._sparse_note()
        return "\n".join([f"{self.path}: {len(self.findings)} finding(s)"] + [f"  - {f}" for f in self.findings]) \
            + self._sparse_note()

    def _sparse_note(self) -> str:
        sparse = self.facts.get("sparse_files")
        return "" if not sparse else (f"\n  note: sparse files (disk blocks not allocated yet): {', '.join(sparse)}; a "
                                      "writer preallocates them when it opens the pool, or `expstore repair` does now")


@dataclass
class RepairReport:
    """What ``repair`` did, one sentence per action, and the damage it found but cannot undo
    (``remaining``: each finding says the way out). ``ok`` is True when none remains."""

    path: str
    actions: list[str] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.remaining

    def to_json(self) -> dict:
        return {"path": self.path, "ok": self.ok, "actions": list(self.actions), "remaining": list(self.remaining)}

    def __str__(self) -> str:
        if not self.actions:
            lines = [f"{self.path}: " + ("nothing to repair" if self.ok else "no repair made")]
        else:
            lines = [f"{self.path}: {len(self.actions)} repair(s)"] + [f"  - {a}" for a in self.actions]
        if self.remaining:
            lines.append(f"  left, which repair cannot undo ({len(self.remaining)}):")
            lines += [f"  - {finding}" for finding in self.remaining]
        return "\n".join(lines)


def verify_store(store, progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Check an open store: commit record, window, preallocation, checksums, leftovers."""
    report = VerifyReport(store.path)
    layout = store.layout
    if layout is None:
        report.facts["state"] = "empty: no schema yet, nothing on disk"
        return report
    record, damaged = _newest_commit(store.mapped)
    if damaged:
        report.findings.append(f"commit slot {1 - record.slot_index} is damaged (a commit torn by a crash); "
                               f"the pool uses the older record seq {record.seq}; `expstore repair` rewrites it")
    tail, head = store.window
    if not 0 <= tail <= head or head - tail > store.capacity:
        report.findings.append(f"committed window {tail}..{head} does not fit capacity {store.capacity}")
    report.findings += get_backend(store.backend).container_findings(store.path, layout)
    sparse = [os.path.relpath(f, os.path.dirname(os.path.abspath(store.path))) for f in layout.files
              if files.is_sparse(f)]
    if sparse:  # harmless: a writer preallocates them when it opens the pool (core/opening.py)
        report.facts["sparse_files"] = sparse
    report.findings += [f"leftover temporary {name} from an interrupted create or convert; `expstore repair` "
                        "removes it" for name in leftover_temps(store.path)]
    report.facts.update(backend=store.backend, first_step_id=tail, next_step_id=head, commit_seq=record.seq,
                        writer=lock.holder(store.path), checksums=store.mapped.checksum_table is not None)
    if store.mapped.checksum_table is not None:
        _verify_checksums(store, report, progress)
    if store.schema is not None and store.schema.heap_fields():
        heap_rows, heap_findings = store.check_heaps(progress)
        report.facts["heap_rows_checked"] = heap_rows
        report.findings += heap_findings
    return report


def _verify_checksums(store, report: VerifyReport, progress: Callable[[int], None] | None) -> None:
    """The chunks wholly in the window against the table, then the partly covered chunks of its
    head and tail against the running crcs of the commit record (core/checksums.py)."""
    table, chunk_rows = store.mapped.checksum_table, store.layout.meta["chunk_rows"]
    checked, findings = checksums.verify_table(table, store.field_views, store.ring, chunk_rows,
                                               lambda: store.window, progress)

    def committed() -> commit.CommitRecord:
        _ = store.window  # a reader takes the newest commit as it reads the window
        return store.commit_record

    partial = checksums.verify_partial(table, store.field_views, store.ring, chunk_rows, list(store.schema),
                                       committed)
    report.facts.update(chunks_checked=checked, partial_chunks_checked=partial.checked,
                        rows_unchecked=partial.rows_unchecked)
    report.findings += findings + partial.findings


def verify(path: str | os.PathLike, *, backend: str | None = None,
           progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Open ``path`` read-only and verify it; a pool that cannot be opened is a finding too."""
    path = os.fspath(path)
    try:
        store = open_store(path, "r", backend=backend)
    except ExpstoreError as exc:
        report = VerifyReport(path, findings=[str(exc)])
        report.findings += [f"leftover temporary {name}" for name in leftover_temps(path)]
        return report
    with store:
        return verify_store(store, progress)


def repair(path: str | os.PathLike, *, backend: str | None = None, reset_window: bool = False) -> RepairReport:
    """Recover what can be recovered, and say what was done.

    Removes leftover temporaries of interrupted creates/converts, rewrites a damaged commit
    slot from the valid one, preallocates files that lost their disk blocks (a sparse copy),
    and rebuilds derived indexes. When both commit slots are damaged the committed window is
    unknown; ``reset_window=True`` then starts an empty window (the old rows are dropped).
    In a pool with heap fields it also rebuilds the commit record's heap positions from the
    index entries when they are malformed or do not match them, and restores a zstd
    dictionary's lost length from its crc32; then it checks the heaps as ``verify`` does and
    lists what is still damaged in ``remaining`` (rows no copy is left of: ``expstore
    convert`` copies the others into a new pool).

    Raises:
        StoreLockedError: a writer is running; stop it first.
    """
    path = os.fspath(path)
    report = RepairReport(path)
    for name in leftover_temps(path):
        files.remove_path(os.path.join(os.path.dirname(os.path.abspath(path)), name))
        report.actions.append(f"removed leftover temporary {name}")
    stale = lock.stale_record(path)
    had_lock_file = os.path.exists(lock.lock_path(path))
    writer_lock = lock.WriterLock(path)  # raises StoreLockedError while a writer runs
    if stale:
        report.actions.append(f"cleared the lock record of a writer that died ({stale}); "
                              "the kernel had already released its lock")
    try:
        chosen = resolve_backend(path, backend)
        report.actions += chosen.repair_container(path)
        layout = chosen.read_layout(path)
        writer_lock.hold_pool_file(layout.commit.path)  # a writer through a hard link too
        _repair_commit(layout, reset_window, report)
        sparse = files.preallocate_sparse(layout.files)
        if sparse:
            report.actions += [f"preallocated the disk blocks of {os.path.relpath(f, os.path.dirname(path))}"
                               for f in sparse]
        if layout.schema.heap_fields():
            _repair_dictionaries(layout, report)
            _repair_heap_positions(layout, report)
            report.remaining += _heap_damage(path, chosen.name)
    finally:
        # A lock file this repair made goes again: a path that is no pool keeps no trace of it.
        writer_lock.release(remove=not had_lock_file or not os.path.exists(path))
    return report


def _repair_commit(layout, reset_window: bool, report: RepairReport) -> None:
    extent = layout.commit
    fd = os.open(extent.path, os.O_RDWR)
    try:
        slots = os.pread(fd, 2 * commit.SLOT_NBYTES, extent.offset)
        try:
            record, damaged = commit.newest(slots)
        except CorruptStoreError:
            if not reset_window:
                raise CorruptStoreError(
                    f"{layout.commit.path}: both commit slots are damaged, so the committed window is unknown; "
                    "rerun with reset_window=True (CLI: --reset-window) to start an empty window, dropping "
                    "the old rows") from None
            os.pwrite(fd, commit.initial_slots(), extent.offset)
            report.actions.append("both commit slots were damaged: wrote an empty window (old rows dropped)")
        else:
            if damaged:
                healed = commit.CommitRecord(record.seq + 1, record.head, record.tail, time.time(), record.payload)
                os.pwrite(fd, healed.encode(), extent.offset + healed.slot_index * commit.SLOT_NBYTES)
                report.actions.append(f"rewrote the damaged commit slot from the valid record (seq {record.seq})")
        os.fsync(fd)
    finally:
        os.close(fd)


def _repair_dictionaries(layout, report: RepairReport) -> None:
    """Restore the length of each zstd dictionary whose length was lost or damaged, where its
    bytes match its crc32 at some length (core/heap_dictionary.py)."""
    for name in layout.schema.heap_fields():
        extent = layout.internal.get(DICTIONARY_PREFIX + name)
        if extent is None or not uses_dictionary(layout.schema[name].codec):
            continue
        fd = os.open(extent.path, os.O_RDWR)
        try:
            stored = HeapDictionary(name, np.frombuffer(os.pread(fd, extent.nbytes, extent.offset), np.uint8))
            length = stored.restorable_length()
            if length is not None:
                was, _crc = stored.header()
                os.pwrite(fd, np.int64(length).tobytes(), extent.offset)
                os.fsync(fd)
                report.actions.append(f"restored the length of the zstd dictionary of field {name!r}: {length} "
                                      f"bytes, where they match its crc32 (it read {was})")
        finally:
            os.close(fd)


def _repair_heap_positions(layout, report: RepairReport) -> None:
    """Rebuild the newest commit record's heap positions of the fields whose entry is malformed,
    missing or does not match the index entries, from those entries, when they lie one after
    the other as the writer places rows; the record goes into the other slot as the next seq,
    as a commit would write it."""
    extent = layout.commit
    fd = os.open(extent.path, os.O_RDWR)
    try:
        record, _ = commit.newest(os.pread(fd, 2 * commit.SLOT_NBYTES, extent.offset))
        entries = record.payload.get(PAYLOAD_KEY)
        rebuilt = dict(entries) if isinstance(entries, dict) else {}
        changed = []
        for name in layout.schema.heap_fields():
            found = _rebuilt_positions(layout, name, record, rebuilt.get(name))
            if found is not None:
                was = rebuilt.get(name) if isinstance(entries, dict) else entries
                rebuilt[name] = found
                changed.append(f"field {name!r} ({clipped(was)} -> {found})")
        if not changed:
            return
        healed = commit.CommitRecord(record.seq + 1, record.head, record.tail, time.time(),
                                     {**record.payload, PAYLOAD_KEY: rebuilt})
        os.pwrite(fd, healed.encode(), extent.offset + healed.slot_index * commit.SLOT_NBYTES)
        os.fsync(fd)
        report.actions.append("rebuilt the commit record's heap positions from the index entries: "
                              + ", ".join(changed))
    finally:
        os.close(fd)


def _rebuilt_positions(layout, name: str, record: commit.CommitRecord, entry) -> list[int] | None:
    """The field's rebuilt heap entry where its entry needs one and the index entries give it."""
    heap_nbytes = layout.internal[HEAP_PREFIX + name].nbytes
    if entry is None and record.head == record.tail:
        return None  # a pool with no rows yet has none
    try:
        current = parse_positions(name, entry, heap_nbytes)
    except CorruptStoreError:
        current = None
    extent, slots = layout.fields[name], int(layout.meta["slots"])
    index = np.memmap(extent.path, np.int64, "r", offset=extent.offset, shape=(slots, len(HEAP_INDEX_COLUMNS)))
    found = positions_from_index(layout.schema[name], index, slots, record.tail, record.head, heap_nbytes)
    del index
    if found is None or entry is not None and current is not None and list(current[:2]) == found[:2] \
            and current[2] >= found[2]:
        return None
    if current is not None:  # the longest row ever written, if the record knew one longer than the window's
        found[2] = max(found[2], current[2])
    return found


def _heap_damage(path: str, backend: str) -> list[str]:
    """What ``verify``'s heap checks still find after the repairs."""
    try:
        with open_store(path, "r", backend=backend) as store:
            return store.check_heaps()[1]
    except ExpstoreError as exc:
        return [str(exc)]


def _newest_commit(maps) -> tuple[commit.CommitRecord, bool]:
    """The newest record and whether a slot stays damaged over a few reads (a writer in
    another process may be mid-commit during one read; a torn slot stays torn)."""
    for _ in range(_SLOT_READS):
        record, damaged = commit.newest(maps.commit_slots())
        if not damaged:
            break
        time.sleep(0.002)
    return record, damaged


def leftover_temps(path: str | os.PathLike) -> list[str]:
    """Names of temporaries beside ``path`` left by an interrupted create or convert."""
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    pattern = os.path.join(glob.escape(parent), f".{glob.escape(name)}{files.TEMP_MARK}*")
    return sorted(os.path.basename(p) for p in glob.glob(pattern) if not _owned_by_live_process(p))


def _owned_by_live_process(temp: str) -> bool:
    """A temporary whose creator is still running is work in progress, not a leftover."""
    try:
        pid = int(os.path.basename(temp).split(files.TEMP_MARK, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
