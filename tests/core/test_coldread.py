"""Cold-read fast path: same rows with and without prefetch, and when it switches on and off.

Timing itself is measured in tools/bench_peers.py; here a fake clock makes gathers look slow
or fast so that the switch logic is checked deterministically.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import expstore
from expstore.core import coldread
from expstore.core.coldread import ColdReads
from expstore.errors import ExpstoreError
from tests.helpers.pools import pendulum_schema, rows_for

N_ROWS = 3000


@pytest.fixture
def pool(pool_path):
    with expstore.open(pool_path, "w", capacity=N_ROWS, schema=pendulum_schema(), fsync=False) as writer:
        writer.extend(rows_for(np.arange(N_ROWS + 500)))  # wrapped once: slots differ from step ids
    reader = expstore.open(pool_path, "r")
    yield reader
    reader.close()


class _FakeClock:
    """Stands in for the time module in coldread: every gather takes ``gather_s``."""

    def __init__(self):
        self.gather_s = 0.0
        self._now = 0.0
        self._calls = 0

    def perf_counter(self) -> float:
        self._calls += 1
        if self._calls % 2 == 0:
            self._now += self.gather_s
        return self._now


@pytest.fixture
def clock(monkeypatch) -> _FakeClock:
    fake = _FakeClock()
    monkeypatch.setattr(coldread, "time", fake)
    return fake


@pytest.fixture
def prefetches(monkeypatch) -> list:
    calls = []
    original = coldread._Plan.prefetch

    def counting(plan, slots):
        calls.append(len(slots))
        original(plan, slots)

    monkeypatch.setattr(coldread._Plan, "prefetch", counting)
    return calls


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, values in a.items():
        np.testing.assert_array_equal(values, b[name], err_msg=name)


def test_rows_identical_with_and_without_prefetch(pool):
    pool.cold_reads.mode = "off"
    plain = [pool.sample(256, rng=seed) for seed in range(3)] + [pool[:], pool[-5:], pool.read([N_ROWS + 499])]
    pool.cold_reads.mode = "on"
    prefetched = [pool.sample(256, rng=seed) for seed in range(3)] + [pool[:], pool[-5:], pool.read([N_ROWS + 499])]
    for a, b in zip(plain, prefetched, strict=True):
        _same(a, b)
    _same(pool[:], rows_for(np.arange(500, N_ROWS + 500)) | {"step_id": np.arange(500, N_ROWS + 500)})


def test_rows_identical_after_the_page_cache_is_dropped(pool, pool_path):
    expected = pool.sample(512, rng=7)
    paths = [os.path.join(root, name) for root, _, names in os.walk(pool_path) for name in names] \
        if os.path.isdir(pool_path) else [pool_path]
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    pool.cold_reads.mode = "on"
    _same(pool.sample(512, rng=7), expected)


def test_writer_sees_its_own_rows_with_prefetch(pool_path):
    with expstore.open(pool_path, "w", capacity=100, schema=pendulum_schema(), fsync=False) as writer:
        writer.cold_reads.mode = "on"
        writer.extend(rows_for(np.arange(150)))
        _same(writer[:], rows_for(np.arange(50, 150)) | {"step_id": np.arange(50, 150)})


def test_on_always_prefetches_and_off_never(pool, prefetches):
    pool.cold_reads.mode = "on"
    for seed in range(5):
        pool.sample(32, rng=seed)
    assert prefetches == [32] * 5
    pool.cold_reads.mode = "off"
    for seed in range(5):
        pool.sample(32, rng=seed)
    assert len(prefetches) == 5 and not pool.cold_reads.active


def test_derived_next_observations_are_prefetched_with_their_batch(pool_path, prefetches, monkeypatch):
    """A pool deriving next_obs gathers a second set of rows per batch (the next rows): cold,
    they are asked for at once as the batch's own rows are, not faulted in one page at a time."""
    schema = {name: spec for name, spec in pendulum_schema().items() if name != "next_obs"}
    rows = {name: values for name, values in rows_for(np.arange(N_ROWS)).items() if name in schema}
    with expstore.open(pool_path, "w", capacity=N_ROWS, schema=schema, derive_next_obs=True, fsync=False) as writer:
        writer.extend(rows)
    with expstore.open(pool_path, "r") as reader:
        reader.cold_reads.mode = "off"
        plain = reader.sample(256, rng=3)
        assert prefetches == []
        reader.cold_reads.mode = "on"
        companion = []
        original = ColdReads.gather_more

        def recording(cold_reads, views, slots):
            companion.append(len(slots))
            return original(cold_reads, views, slots)

        monkeypatch.setattr(ColdReads, "gather_more", recording)
        prefetched = reader.sample(256, rng=3)
        assert 256 in companion  # the batch's next rows went through the cold-read gather
        # and each such gather was prefetched, as the rows it follows were
        assert all(prefetches.count(n) >= 2 for n in companion)
    _same(plain, prefetched)


def test_auto_stays_off_while_gathers_are_fast(pool, clock, prefetches):
    clock.gather_s = 1e-5
    for seed in range(200):
        pool.sample(256, rng=seed)
    assert not pool.cold_reads.active and prefetches == []


def test_auto_ignores_a_single_slow_gather(pool, clock, prefetches):
    for seed in range(50):
        clock.gather_s = 1.0 if seed % 10 == 0 else 1e-5
        pool.sample(256, rng=seed)
    assert not pool.cold_reads.active and prefetches == []


def test_auto_switches_on_after_slow_gathers(pool, clock, prefetches):
    clock.gather_s = 1.0
    pool.sample(256, rng=0)
    pool.sample(256, rng=1)
    assert pool.cold_reads.active
    pool.sample(256, rng=2)
    assert prefetches == [256]


def test_auto_switches_off_when_a_probe_is_fast(pool, clock, prefetches):
    clock.gather_s = 1.0
    for seed in range(2):
        pool.sample(64, rng=seed)
    clock.gather_s = 1e-6  # the pool became hot
    for seed in range(coldread._FIRST_PROBE_EVERY):
        pool.sample(64, rng=seed)
    assert not pool.cold_reads.active
    assert len(prefetches) == coldread._FIRST_PROBE_EVERY - 1  # the last gather was the probe


def test_slow_probes_back_off(pool, clock, prefetches):
    clock.gather_s = 1.0
    first = coldread._FIRST_PROBE_EVERY
    for seed in range(2 + first + 2 * first):  # switch on, one slow probe, then a probe twice as late
        pool.sample(16, rng=seed)
    assert pool.cold_reads.active
    assert len(prefetches) == 3 * first - 2


def test_auto_starts_on_when_the_pool_exceeds_available_memory(pool_path, monkeypatch, prefetches):
    with expstore.open(pool_path, "w", capacity=100, schema=pendulum_schema(), fsync=False) as writer:
        writer.extend(rows_for(np.arange(100)))
    monkeypatch.setattr(coldread, "available_memory_nbytes", lambda: 1000)
    with expstore.open(pool_path, "r") as reader:
        reader.sample(8, rng=0)
        assert reader.cold_reads.active and prefetches == [8]


def test_bad_mode_is_a_clear_error():
    reads = ColdReads()
    with pytest.raises(ValueError, match="'fast' is not one of auto, on, off") as info:
        reads.mode = "fast"
    assert isinstance(info.value, ExpstoreError)
    assert reads.mode == "auto"


def test_plain_arrays_gather_without_prefetch():
    reads = ColdReads("on")
    data = np.arange(40, dtype=np.float32).reshape(20, 2)
    (column,) = reads.gather([data], np.array([3, 1, 3]))
    np.testing.assert_array_equal(column, data[[3, 1, 3]])


@pytest.mark.parametrize("seed", range(5))
def test_page_runs_cover_exactly_the_pages_of_the_rows(seed):
    rng = np.random.default_rng(seed)
    page = coldread._PAGE_NBYTES
    fields = [(int(rng.integers(0, 3 * page)), int(rng.integers(1, 3 * page))) for _ in range(3)]
    slots = rng.integers(0, 200, size=int(rng.integers(1, 60)))
    first, stop = coldread._page_runs(slots, fields)
    expected = {p for offset, nbytes in fields for s in slots.tolist()
                for p in range((offset + s * nbytes) // page, (offset + (s + 1) * nbytes - 1) // page + 1)}
    covered = [p for a, b in zip(first.tolist(), stop.tolist(), strict=True) for p in range(a, b)]
    assert sorted(covered) == sorted(expected)  # no page twice, none missing, none extra
    assert np.all(first[1:] > stop[:-1])  # runs that touch are merged


def test_available_memory_is_positive_or_unknown():
    available = coldread.available_memory_nbytes()
    assert available is None or available > 0


def test_reading_a_pool_that_has_no_schema_yet_returns_no_rows(pool_path):
    with expstore.open(pool_path, "w", capacity=10) as empty:
        assert empty[:]["step_id"].size == 0
        assert empty.read([])["step_id"].size == 0


def test_page_runs_of_a_slice_read_are_one_range_per_field():
    page = coldread._PAGE_NBYTES
    fields = [(0, 12), (100 * page, 4)]
    slots = np.arange(1000, 1000 + 2 * coldread._DENSE_MIN_ROWS)
    first, stop = coldread._page_runs(slots, fields)
    assert len(first) == 2
    for offset, nbytes in fields:
        lo, hi = (offset + 1000 * nbytes) // page, (offset + int(slots[-1] + 1) * nbytes - 1) // page
        assert any(a <= lo and hi < b for a, b in zip(first.tolist(), stop.tolist(), strict=True))
