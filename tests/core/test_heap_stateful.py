"""Heap fields against a model: a hypothesis state machine through wrap-around of the heaps.

The model is a deque of the rows appended (``collections.deque(maxlen=capacity)``), each row a
token count: the pool's rows derive from their step id and that count. Rows of random sizes
fill a small heap, so the window is bound by the heap at times and by the capacity at others;
the machine checks after every step that the window is a suffix of the model no longer than
the capacity, that every row in it reads back exactly (through the writer, a reader handle and
after reopening), that a heap-bound window still holds at least half the heap, and that it
never shrinks unless the heap needed the room.
"""

from __future__ import annotations

import collections
import shutil
import tempfile

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import expstore
from tests.helpers.pools import BACKENDS

CAPACITY = 24
HEAP_BYTES = 480  # int32 tokens: the window holds 120 tokens at most
MAX_TOKENS = HEAP_BYTES // 4 // 8  # a row takes at most an eighth of the heap

HDF5_SETTINGS = settings(max_examples=25, stateful_step_count=30, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])
ZARR_SETTINGS = settings(HDF5_SETTINGS, max_examples=12)


def schema() -> dict:
    return {"tokens": expstore.Field((None,), "int32", heap_bytes=HEAP_BYTES),
            "obs": expstore.Field((4, 4), "uint8", codec="zstd:1"),
            "reward": ((), "float32")}


def row(step: int, count: int) -> dict:
    return {"tokens": np.arange(step, step + count, dtype=np.int32),
            "obs": np.full((4, 4), step % 256, np.uint8), "reward": np.float32(count)}


def check_rows(batch: dict, counts: dict[int, int]) -> None:
    tokens = batch["tokens"]
    for k, step in enumerate(batch["step_id"].tolist()):
        count = counts[step]
        assert batch["tokens_length"][k] == count == batch["reward"][k]
        np.testing.assert_array_equal(tokens[k][:count], np.arange(step, step + count, dtype=np.int32))
        assert (batch["obs"][k] == step % 256).all()


class HeapMachine(RuleBasedStateMachine):
    backend = "hdf5"

    @initialize(slack=st.integers(1, 8), commit_every=st.integers(1, 10))
    def create(self, slack, commit_every):
        self.dir = tempfile.mkdtemp()
        self.path = f"{self.dir}/pool{BACKENDS[self.backend]}"
        self.options = {"commit_every": commit_every, "commit_interval_s": 3600.0, "fsync": False}
        self.pool = expstore.open(self.path, "w", capacity=CAPACITY, schema=schema(), slack=slack, **self.options)
        self.model: collections.deque[tuple[int, int]] = collections.deque(maxlen=CAPACITY)
        self.counts: dict[int, int] = {}
        self.head = 0
        self.tail_seen = 0

    def teardown(self):
        if hasattr(self, "pool"):
            self.pool.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _appended(self, count: int) -> None:
        self.model.append((self.head, count))
        self.counts[self.head] = count
        self.head += 1

    @rule(count=st.integers(0, MAX_TOKENS))
    def append(self, count):
        self.pool.append(row(self.head, count))
        self._appended(count)

    @rule(counts=st.lists(st.integers(0, MAX_TOKENS), min_size=1, max_size=40))
    def extend(self, counts):
        rows = [row(self.head + i, n) for i, n in enumerate(counts)]
        self.pool.extend({"tokens": [r["tokens"] for r in rows], "obs": np.stack([r["obs"] for r in rows]),
                          "reward": np.array([r["reward"] for r in rows])})
        for count in counts:
            self._appended(count)

    @rule()
    def reopen(self):
        self.pool.close()
        self.pool = expstore.open(self.path, "a", **self.options)

    @rule(seed=st.integers(0, 2**16))
    def sample_through_a_reader(self, seed):
        self.pool.flush(fsync=False)
        with expstore.open(self.path, "r") as reader:
            assert reader.window == self.pool.window
            if len(reader):
                check_rows(reader.sample(16, rng=seed), self.counts)
                check_rows(reader[:], self.counts)
                listed = reader.sample(4, rng=seed, ragged="list")
                for step, tokens in zip(listed["step_id"].tolist(), listed["tokens"], strict=True):
                    assert len(tokens) == self.counts[step]

    @invariant()
    def window_is_a_suffix_of_the_model(self):
        if not hasattr(self, "pool"):
            return
        low, high = self.pool.window
        assert high == self.head
        assert high - low <= CAPACITY and low >= self.head - len(self.model)
        assert low >= self.tail_seen  # the tail never moves back
        self.tail_seen = low
        if high > low:
            check_rows(self.pool[:], self.counts)
        window_bytes = 4 * sum(self.counts[step] for step in range(low, high))
        assert window_bytes <= HEAP_BYTES
        if high - low < min(CAPACITY, self.head):  # the heap evicted rows: it had needed the room
            assert window_bytes >= HEAP_BYTES // 2 - 4 * MAX_TOKENS, (low, high, window_bytes)
            assert self.pool.window_bound is None or self.pool.window_bound == "heap 'tokens'"


class HDF5HeapMachine(HeapMachine):
    backend = "hdf5"


class ZarrHeapMachine(HeapMachine):
    backend = "zarr"


TestHDF5Heap = HDF5HeapMachine.TestCase
TestHDF5Heap.settings = HDF5_SETTINGS
TestZarrHeap = ZarrHeapMachine.TestCase
TestZarrHeap.settings = ZARR_SETTINGS
