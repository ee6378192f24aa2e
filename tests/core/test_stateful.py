"""The store against ``collections.deque(maxlen=capacity)``: a hypothesis state machine.

Rows derive from their step ids (``rows_for``), so the model only tracks step ids. Small
capacities, slacks, chunk sizes and commit intervals make commits and wrap-around happen within
a few steps; reopening and a reader handle check that what was committed is what the writer saw.
"""

from __future__ import annotations

import collections
import shutil
import tempfile

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import expstore
from tests.helpers.pools import BACKENDS, pendulum_schema, rows_for

# Creating a Zarr pool costs ~10x an HDF5 one (zarr-python's async machinery, more files to fsync),
# and each example creates one: fewer Zarr examples keep both near 10 s.
HDF5_SETTINGS = settings(max_examples=30, stateful_step_count=25, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])
ZARR_SETTINGS = settings(HDF5_SETTINGS, max_examples=15)


def assert_rows(batch: dict, step_ids) -> None:
    steps = np.asarray(step_ids, dtype=np.int64)
    np.testing.assert_array_equal(batch["step_id"], steps)
    for name, expected in rows_for(steps).items():
        np.testing.assert_array_equal(batch[name], expected, err_msg=name)


class StoreMachine(RuleBasedStateMachine):
    backend = "hdf5"

    def __init__(self):
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="expstore-stateful-")
        self.path = f"{self.directory}/pool{BACKENDS[self.backend]}"
        self.pool = None

    @initialize(capacity=st.integers(1, 40), slack=st.integers(1, 12), chunk_rows=st.integers(1, 16),
                commit_every=st.integers(1, 12))
    def create(self, capacity, slack, chunk_rows, commit_every):
        self.options = {"commit_every": commit_every, "commit_interval_s": 3600.0, "fsync": False}
        self.pool = expstore.open(self.path, "w", capacity=capacity, schema=pendulum_schema(), slack=slack,
                                  chunk_rows=chunk_rows, **self.options)
        self.model: collections.deque[int] = collections.deque(maxlen=capacity)
        self.next_step = 0

    # ------------------------------------------------------------------ writes
    @rule()
    def append(self):
        self.pool.append({name: values[0] for name, values in rows_for([self.next_step]).items()})
        self.model.append(self.next_step)
        self.next_step += 1

    @rule(data=st.data())
    def extend(self, data):
        size = data.draw(st.integers(0, 3 * self.model.maxlen), label="size")
        steps = range(self.next_step, self.next_step + size)
        self.pool.extend(rows_for(steps))
        self.model.extend(steps)
        self.next_step += size

    @rule()
    def flush(self):
        self.pool.flush()
        with expstore.open(self.path, "r") as reader:  # everything flushed is committed
            assert_rows(reader[:], list(self.model))
            assert reader.next_step_id == self.next_step

    @rule(mode=st.sampled_from(["a", "r+"]))
    def close_and_reopen(self, mode):
        self.pool.close()
        self.pool = expstore.open(self.path, mode, **self.options)

    # ------------------------------------------------------------------ reads
    @precondition(lambda self: len(self.model) > 0)
    @rule(batch_size=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
    def sample(self, batch_size, seed):
        batch = self.pool.sample(batch_size, rng=seed)
        steps = batch["step_id"]
        assert steps.shape == (batch_size,) and steps.dtype == np.int64
        assert set(steps.tolist()) <= set(self.model)
        assert_rows(batch, steps)
        np.testing.assert_array_equal(self.pool.sample(batch_size, rng=seed)["step_id"], steps)

    @precondition(lambda self: len(self.model) == 0)
    @rule()
    def sample_empty(self):
        try:
            self.pool.sample(1)
        except expstore.EmptyStoreError:
            return
        raise AssertionError("sampling an empty pool did not raise EmptyStoreError")

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def index_and_read(self, data):
        index = data.draw(st.integers(-len(self.model), len(self.model) - 1), label="index")
        assert self.pool[index]["step_id"] == self.model[index]
        steps = data.draw(st.lists(st.sampled_from(list(self.model)), max_size=8), label="steps")
        assert_rows(self.pool.read(steps), steps)

    @invariant()
    def matches_the_model(self):
        if self.pool is None:
            return
        assert len(self.pool) == len(self.model)
        assert self.pool.next_step_id == self.next_step
        assert self.pool.first_step_id == (self.model[0] if self.model else self.next_step)
        assert_rows(self.pool[:], list(self.model))

    def teardown(self):
        if self.pool is not None:
            self.pool.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class HDF5Machine(StoreMachine):
    backend = "hdf5"


class ZarrMachine(StoreMachine):
    backend = "zarr"


TestHDF5Store = HDF5Machine.TestCase
TestHDF5Store.settings = HDF5_SETTINGS
TestZarrStore = ZarrMachine.TestCase
TestZarrStore.settings = ZARR_SETTINGS
