"""A flipped byte in a pool's layout record never gives wrong rows: the record fails its checks
and the pool opens from its container (h5py, the zarr.json documents), or a clean ExpstoreError.

By default a seeded sample of the record's bytes, every one of its first 32 (the header);
``--full`` sweeps every byte, with each of three flips.
"""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import pytest

import expstore
from expstore.backends.zarr_v3 import RECORD_FILE
from tests.helpers.pools import BACKENDS, pendulum_schema, rows_for

ROWS = 40
SAMPLED = 40


def record_span(path: str) -> tuple[str, int]:
    file = os.path.join(path, RECORD_FILE) if os.path.isdir(path) else path
    with open(file, "rb") as fh:
        head = fh.read(28)
    return file, 28 + int.from_bytes(head[20:24], "little")


def rows_or_clean_error(path: str) -> str:
    try:
        with expstore.open(path, "r") as pool:
            batch = pool[:]
            sample = pool.sample(64, rng=0)
    except expstore.ExpstoreError:
        return "refused"
    expected = rows_for(np.arange(ROWS))
    for name, values in expected.items():
        np.testing.assert_array_equal(batch[name], values, err_msg=name)
        np.testing.assert_array_equal(sample[name], rows_for(sample["step_id"])[name], err_msg=name)
    return "opened"


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_flipped_byte_in_the_layout_record_never_gives_wrong_rows(tmp_path, backend, request, caplog):
    path = str(tmp_path / f"pool{BACKENDS[backend]}")
    with expstore.open(path, "w", capacity=64, schema=pendulum_schema()) as pool:
        pool.extend(rows_for(np.arange(ROWS)))
    file, nbytes = record_span(path)
    every = list(range(nbytes))
    full = request.config.getoption("--full")
    offsets = every if full else sorted({*range(32), *random.Random(21).sample(every, min(SAMPLED, nbytes))})
    masks = (0x01, 0x10, 0x80) if full else (0x01,)
    outcomes = []
    with open(file, "r+b") as fh, caplog.at_level(logging.ERROR):
        original = fh.read()
        for offset in offsets:
            for mask in masks:
                os.pwrite(fh.fileno(), bytes([original[offset] ^ mask]), offset)
                try:
                    outcomes.append(rows_or_clean_error(path))
                finally:
                    os.pwrite(fh.fileno(), original[offset:offset + 1], offset)
    assert outcomes.count("opened") == len(outcomes)  # the container still holds the truth
    with expstore.open(path, "r") as pool:
        assert pool.layout.from_record  # restored, the record is used again
