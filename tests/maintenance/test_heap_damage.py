"""Damaged heap fields: what verify finds, what repair undoes, and what every open says.

Each case damages one part of a pool with heap fields (a row's bytes, an index entry, the commit
record's heap positions, a zstd dictionary's length) and checks that verify names the damaged
step or field, that repair undoes what can be undone and says the way out for the rest, and
that no open, read or CLI command ends in anything but a result or an ExpstoreError.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

import expstore
from expstore.backends.internal import DICTIONARY_PREFIX
from expstore.core import commit
from expstore.core.heap_dictionary import TRAIN_ROWS
from expstore.errors import CorruptStoreError
from tests.helpers.cli import run
from tests.helpers.heap_rows import assert_rows_match, heap_batch, heap_schema


def make(path: str, checksums: bool = False, rows: int = 400) -> tuple[int, int]:
    with expstore.open(path, "w", capacity=300, schema=heap_schema(), heap_bytes=60_000,
                       checksums=checksums) as pool:
        pool.extend(heap_batch(range(rows)))
        return pool.window


def xor_heap_bytes(path: str, name: str, step: int, count: int = 4) -> None:
    """XOR ``count`` bytes in the middle of the heap bytes of ``step``'s row."""
    with expstore.open(path) as pool:
        position, nbytes = (int(n) for n in pool.mapped.views[name][step % pool.ring.slots][:2])
        extent = pool.layout.internal[f"_heap_{name}"]
    offset = extent.offset + position % extent.nbytes + nbytes // 2
    with open(extent.path, "r+b") as fh:
        old = os.pread(fh.fileno(), count, offset)
        os.pwrite(fh.fileno(), bytes(b ^ 0x5A for b in old), offset)


def rewrite_payload(path: str, change) -> None:
    """Rewrite the newest commit record with ``change(payload)`` applied and a valid crc."""
    with expstore.open(path) as pool:
        record, extent = pool.commit_record, pool.layout.commit
    payload = json.loads(json.dumps(record.payload))
    change(payload)
    edited = commit.CommitRecord(record.seq, record.head, record.tail, record.time_unix, payload)
    with open(extent.path, "r+b") as fh:
        os.pwrite(fh.fileno(), edited.encode(), extent.offset + record.slot_index * commit.SLOT_NBYTES)


def read_all(path: str) -> dict:
    with expstore.open(path) as pool:
        return pool[:]


def test_verify_decodes_every_row_and_names_one_that_does_not_decode(pool_path):
    low, _high = make(pool_path)
    xor_heap_bytes(pool_path, "obs", low + 40)
    with pytest.raises(CorruptStoreError):
        read_all(pool_path)
    report = expstore.verify(pool_path)
    assert not report.ok
    assert any(f"'obs': the heap bytes of 1 row (step {low + 40}) do not decode" in f for f in report.findings), \
        report.findings
    assert any("expstore convert" in f for f in report.findings)


def test_verify_reports_heap_progress(pool_path):
    make(pool_path)
    calls = []
    assert expstore.verify(pool_path, progress=calls.append).ok
    assert calls and all(n > 0 for n in calls)


def test_repair_lists_undecodable_rows_with_the_way_out(pool_path):
    low, _high = make(pool_path)
    xor_heap_bytes(pool_path, "obs", low + 40)
    repaired = expstore.repair(pool_path)
    assert not repaired.ok and "nothing to repair" not in str(repaired)
    assert any(f"step {low + 40}" in f and "expstore convert" in f for f in repaired.remaining), repaired.remaining
    result = run("repair", pool_path, ok=False)
    assert result.exit_code == 1 and "expstore convert" in result.output
    assert isinstance(result.exception, SystemExit)


def test_a_copied_index_entry_is_blamed_on_the_step_it_was_copied_to(pool_path):
    low, _high = make(pool_path)
    victim = low + 30
    with expstore.open(pool_path, "r+") as pool:
        index, slots = pool.mapped.views["tokens"], pool.ring.slots
        index[victim % slots] = index[(victim + 1) % slots]
    findings = expstore.verify(pool_path).findings
    assert len(findings) == 1, findings
    assert f"'tokens': the heap index entries of 1 row (step {victim}) are damaged" in findings[0]
    assert str(victim + 1) not in findings[0]


def test_neighbouring_entries_that_do_not_fit_are_named_together(pool_path):
    low, _high = make(pool_path)
    step = low + 30
    with expstore.open(pool_path, "r+") as pool:  # a raw ragged row's bytes one item shorter, its length too
        entry = pool.mapped.views["tokens"][step % pool.ring.slots]
        if entry[2] == 0:
            pytest.skip("an empty row")
        entry[1] -= 4
        entry[2] -= 1
    findings = expstore.verify(pool_path).findings
    assert any(f"steps {step} and {step + 1}" in f for f in findings), findings


@pytest.mark.parametrize("entry", [
    "x", [1, 2], [1, 2, 3, 4], [True, 2, 3], [1.5, 2, 3], [-1, 2, 3], [10**30, 10**30, 1], ["1", "2", "3"],
    {"tail": 1}, [[1], 2, 3], [5, 3, 1], [0, 10**12, 1],
])
def test_a_malformed_heap_entry_is_an_error_naming_the_field_and_repair_rebuilds_it(pool_path, entry):
    make(pool_path)
    rewrite_payload(pool_path, lambda payload: payload["heap"].__setitem__("obs", entry))
    with pytest.raises(CorruptStoreError, match="field 'obs': the commit record's heap positions .* `expstore repair`"):
        expstore.open(pool_path)
    report = expstore.verify(pool_path)
    assert not report.ok and "field 'obs'" in report.findings[0], report.findings
    for command in ("verify", "info", "head"):
        result = run(command, pool_path, ok=False)
        assert result.exit_code != 0 and isinstance(result.exception, SystemExit), (command, result.exception)
        assert "field 'obs'" in result.output, (command, result.output)
    repaired = expstore.repair(pool_path)
    assert repaired.ok and any("rebuilt the commit record's heap positions" in a for a in repaired.actions)
    assert expstore.verify(pool_path).ok
    assert_rows_match(read_all(pool_path))


@pytest.mark.parametrize("heap_payload", [None, "x", [1, 2, 3], 5])
def test_a_malformed_heap_payload_is_an_error_and_repair_rebuilds_it(pool_path, heap_payload):
    make(pool_path)
    rewrite_payload(pool_path, lambda payload: payload.__setitem__("heap", heap_payload))
    with pytest.raises(CorruptStoreError, match="the commit record's heap positions .* `expstore repair`"):
        expstore.open(pool_path)
    assert not expstore.verify(pool_path).ok
    result = run("convert", pool_path, pool_path + ".copy" + os.path.splitext(pool_path)[1], ok=False)
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.exception
    assert expstore.repair(pool_path).ok
    assert expstore.verify(pool_path).ok
    assert_rows_match(read_all(pool_path))


def test_extra_heap_payload_entries_are_ignored(pool_path):
    make(pool_path)
    rewrite_payload(pool_path, lambda payload: payload["heap"].__setitem__("no_such_field", [1, 2, 3]))
    assert expstore.verify(pool_path).ok
    assert_rows_match(read_all(pool_path))


@pytest.mark.parametrize("change", ["head_small", "tail_big", "longest_small", "missing"])
def test_heap_positions_that_do_not_match_the_index_are_found_and_rebuilt(pool_path, change):
    make(pool_path)

    def edit(payload):
        tail, head, longest = payload["heap"]["tokens"]
        payload["heap"]["tokens"] = {"head_small": [tail, head - 100, longest], "tail_big": [tail + 100, head, longest],
                                     "longest_small": [tail, head, 1], "missing": None}[change]
        if change == "missing":
            del payload["heap"]["tokens"]

    rewrite_payload(pool_path, edit)
    findings = expstore.verify(pool_path).findings
    assert len(findings) == 1 and "'tokens'" in findings[0] and "`expstore repair` rebuilds" in findings[0], findings
    repaired = expstore.repair(pool_path)
    assert repaired.ok and repaired.actions, str(repaired)
    assert expstore.verify(pool_path).ok
    assert_rows_match(read_all(pool_path))


def test_repair_leaves_damaged_index_entries_alone_and_says_so(pool_path):
    low, _high = make(pool_path)
    with expstore.open(pool_path, "r+") as pool:
        pool.mapped.views["tokens"][(low + 3) % pool.ring.slots, 0] = -5
    before = expstore.verify(pool_path).findings
    repaired = expstore.repair(pool_path)
    assert not repaired.actions and repaired.remaining == before


def _frames(steps) -> np.ndarray:
    steps = np.asarray(steps)
    frames = np.zeros((len(steps), 16, 16), np.uint8)
    frames[:, 4:8] = (steps % 7)[:, None, None] * 30
    frames[np.arange(len(steps)), steps % 16] = 200
    return frames


def _dictionary_pool(path: str) -> None:
    pytest.importorskip("zstandard")
    schema = {"obs": expstore.Field((16, 16), "uint8", codec="zstd:3+dict"), "reward": ((), "float32")}
    rows = TRAIN_ROWS + 300
    with expstore.open(path, "w", capacity=rows, schema=schema, checksums=True) as pool:
        pool.extend({"obs": _frames(np.arange(rows)), "reward": np.zeros(rows, np.float32)})


@pytest.mark.parametrize("length", [0, -7, 10**9, 1000])
def test_a_lost_dictionary_length_is_found_and_restored_from_its_crc(pool_path, length):
    _dictionary_pool(pool_path)
    with expstore.open(pool_path) as pool:
        extent = pool.layout.internal[DICTIONARY_PREFIX + "obs"]
    with open(extent.path, "r+b") as fh:
        os.pwrite(fh.fileno(), np.int64(length).tobytes(), extent.offset)
    report = expstore.verify(pool_path)
    assert not report.ok and any("dictionary" in f and "expstore repair" in f for f in report.findings), \
        report.findings
    repaired = expstore.repair(pool_path)
    assert repaired.ok and any("dictionary" in a for a in repaired.actions), str(repaired)
    assert expstore.verify(pool_path).ok
    with expstore.open(pool_path) as pool:
        np.testing.assert_array_equal(pool[:]["obs"], _frames(np.arange(TRAIN_ROWS + 300)))


def test_the_torn_slot_warning_is_logged_once_per_pool_and_record(pool_path, caplog):
    make(pool_path)
    with expstore.open(pool_path) as pool:
        record, extent = pool.commit_record, pool.layout.commit
    with open(extent.path, "r+b") as fh:
        os.pwrite(fh.fileno(), b"\xff\xfe\xfd", extent.offset + record.slot_index * commit.SLOT_NBYTES + 60)
    with caplog.at_level(logging.WARNING, logger="expstore"):
        for _ in range(3):
            with expstore.open(pool_path):
                pass
    assert sum("commit slot is damaged" in r.getMessage() for r in caplog.records) == 1

