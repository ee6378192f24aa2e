"""Derived ``next_<obs>`` of ragged observations: the final-observation heap (core/finals.py).

A pool created with ``derive_next_obs=True`` keeps each episode's final observation in a table
of its own; for a ragged observation the table points into a byte heap, a circular log in the
order episodes end. These tests write episodes whose every observation is a function of its
step id, so any sampled row can be checked alone, and size the heaps so that final observations
are evicted by bytes as well as by the ring.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import expstore
from expstore.backends.internal import FINAL_HEAP_PREFIX, FINAL_OWNER, FINAL_PREFIX
from expstore.errors import SchemaError

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINAL = 1_000_000  # a final observation is the row of step FINAL + its episode's last step


def observation(step: int, width: int = 3) -> np.ndarray:
    """The observation of ``step``: 1 to 6 items of ``width`` float32, all derived from it."""
    count = (step * 7) % 6 + 1
    return (np.arange(count * width, dtype=np.float32).reshape(count, width) + step)


def schema(width: int = 3, codec: str | None = None) -> dict:
    return {"obs": expstore.Field((None, width), "float32", codec=codec), "obs_pos": ((2,), "float32"),
            "action": ((), "int64"), "reward": ((), "float32"),
            "terminated": ((), "bool"), "truncated": ((), "bool")}


def row(step: int, ends: bool, width: int = 3) -> dict:
    following = FINAL + step if ends else step + 1
    return {"obs": observation(step, width), "obs_pos": np.full(2, step, np.float32), "action": step,
            "reward": float(step), "terminated": ends, "truncated": False,
            "next_obs": observation(following, width), "next_obs_pos": np.full(2, following, np.float32)}


def ends_episode(step: int) -> bool:
    return step % 5 == 4


def assert_next_obs_match(batch: dict) -> None:
    """Every row's derived next_obs is the observation after its step (padded with lengths)."""
    for k, step in enumerate(np.asarray(batch["step_id"]).tolist()):
        following = FINAL + step if ends_episode(step) else step + 1
        expected = observation(following, batch["obs"].shape[-1])
        length = int(batch["next_obs_length"][k])
        assert length == len(expected), (step, length)
        np.testing.assert_array_equal(batch["next_obs"][k][:length], expected)
        assert not batch["next_obs"][k][length:].any(), "padding must be zeros"
        np.testing.assert_array_equal(batch["next_obs_pos"][k], np.full(2, following, np.float32))


@pytest.mark.parametrize("codec", [None, "lz4"])
def test_appended_and_extended_episodes_sample_their_next_ragged_obs(pool_path, codec):
    """Rows through both write paths; a codec field's final observations are kept raw."""
    with expstore.open(pool_path, "w", capacity=300, schema=schema(codec=codec), derive_next_obs=True) as pool:
        for step in range(120):
            pool.append(row(step, ends_episode(step)))
        rows = [row(step, ends_episode(step)) for step in range(120, 260)]
        pool.extend({name: [r[name] for r in rows] if name in ("obs", "next_obs") else
                     np.stack([np.asarray(r[name]) for r in rows]) for name in rows[0]})
        batch = pool.sample(256, rng=0)
        assert_next_obs_match(batch)
        assert ends_episode(batch["step_id"]).any(), "episode ends were sampled (their final observations)"
        listed = pool.sample(64, rng=1, ragged="list", pad_value=-1)
        for k, step in enumerate(listed["step_id"].tolist()):
            expected = observation(FINAL + step if ends_episode(step) else step + 1)
            np.testing.assert_array_equal(listed["next_obs"][k], expected)
    with expstore.open(pool_path) as reader:
        assert_next_obs_match(reader.sample(256, rng=2))
        padded = reader.sample(32, rng=3, pad_value=-1)
        for k, length in enumerate(padded["next_obs_length"].tolist()):
            assert (padded["next_obs"][k][length:] == -1).all()


def test_n_step_sequences_and_torch_get_the_derived_ragged_obs(pool_path):
    torch = pytest.importorskip("torch")
    with expstore.open(pool_path, "w", capacity=200, schema=schema(), derive_next_obs=True) as pool:
        for step in range(100):
            pool.append(row(step, ends_episode(step)))
        n_step = pool.sample(64, rng=0, n_step=3)
        for k, step in enumerate(n_step["step_id"].tolist()):
            last = min(step + 2, step + 4 - step % 5)  # the episode ends at its step 4
            following = FINAL + last if ends_episode(last) else last + 1
            length = int(n_step["next_obs_length"][k])
            np.testing.assert_array_equal(n_step["next_obs"][k][:length], observation(following))
        windows = pool.sample_sequences(16, 3, rng=1)
        mask = windows["mask"]
        for b, t in zip(*np.nonzero(mask), strict=True):
            step = int(windows["step_id"][b, t])
            expected = observation(FINAL + step if ends_episode(step) else step + 1)
            np.testing.assert_array_equal(windows["next_obs"][b, t][:int(windows["next_obs_length"][b, t])], expected)
        from expstore.integrations.torch_feed import to_tensors

        tensors = to_tensors(pool.sample(8, rng=2))
        assert isinstance(tensors["next_obs"], torch.Tensor)
        assert tensors["next_obs"].shape[1] == int(tensors["next_obs_length"].max())


def test_end_episodes_keeps_the_final_ragged_obs_of_a_vector_env(pool_path):
    """Rows of two sub-envs; ``end_episodes`` ends env 1's episode with the observation after it."""
    with expstore.open(pool_path, "w", capacity=100, schema=schema(), derive_next_obs=True) as pool:
        for step in range(20):
            env = step % 2
            pool.append({**row(step, False), "next_obs": observation(step + 2), "next_obs_pos": np.full(2, step + 2,
                                                                                                      np.float32)},
                        env_id=env)
        pool.end_episodes([1], next_obs={"next_obs": [observation(FINAL)], "next_obs_pos": np.zeros((1, 2))})
        batch = pool.sample(200, rng=0)
    seen_final = False
    for k, step in enumerate(batch["step_id"].tolist()):
        expected = observation(FINAL if step == 19 else step + 2)
        np.testing.assert_array_equal(batch["next_obs"][k][:int(batch["next_obs_length"][k])], expected)
        seen_final |= step == 19
    assert seen_final, "env 1's last row is sampled once its final observation is known"
    assert 18 not in batch["step_id"], "env 0's newest row has no next observation yet"


def test_final_heap_keeps_the_newest_final_observations_that_fit(pool_path):
    """Final observations of up to 48 KB into a heap that holds fewer than the ring's 40: the
    heap, not the ring, bounds them, and the last rows of the older episodes are never sampled,
    never returned with another episode's bytes."""
    width, ring = 2000, 40  # 1-6 items of 2,000 float32
    with expstore.open(pool_path, "w", capacity=400, schema=schema(width), derive_next_obs=True,
                       heap_bytes=16 << 20, max_final_obs=ring) as pool:
        heap_nbytes = pool._maps.views[FINAL_HEAP_PREFIX + "obs"].shape[0]
        for step in range(400):
            pool.append(row(step, ends_episode(step), width))
        batch = pool.sample(4000, rng=0)
        assert_next_obs_match(batch)
        sampled_ends = {step for step in batch["step_id"].tolist() if ends_episode(step)}
    # The model: finals laid out as the heap lays out rows; one is kept while it starts at most a
    # heap behind the end of the newest, and is among the ring's newest.
    position, starts = 0, {}
    for last in range(4, 400, 5):
        nbytes = observation(FINAL + last, width).nbytes
        offset = position % heap_nbytes
        start = position if offset + nbytes <= heap_nbytes else position + heap_nbytes - offset
        starts[last] = start
        position = start + nbytes
    newest = sorted(starts)[-ring:]
    kept = {last for last in newest if starts[last] >= position - heap_nbytes}
    assert len(kept) < ring - 5, "the heap must bound the final observations, not the ring"
    assert sampled_ends <= kept, sorted(sampled_ends - kept)
    assert len(sampled_ends) >= len(kept) - 1 >= 1, (sorted(sampled_ends), sorted(kept))


def test_bad_next_obs_writes_nothing(pool_path):
    with expstore.open(pool_path, "w", capacity=100, schema=schema(), derive_next_obs=True) as pool:
        pool.append(row(0, False))
        good = row(1, False)
        with pytest.raises(SchemaError, match="'next_obs' has shape"):
            pool.append({**good, "next_obs": np.zeros((2, 4), np.float32)})
        with pytest.raises(SchemaError, match="'next_obs'"):
            pool.append({**good, "next_obs": "tokens"})
        with pytest.raises(SchemaError, match="different lengths .*'next_obs': 1"):
            pool.extend({name: [value, value] if name in ("obs",) else np.stack([np.asarray(value)] * 2)
                         for name, value in good.items() if name != "next_obs"} | {"next_obs": [good["next_obs"]]})
        assert len(pool) == 1
        pool.append(good)
        assert len(pool) == 2


def test_a_final_obs_larger_than_its_heap_is_refused_before_any_write(pool_path):
    with expstore.open(pool_path, "w", capacity=64, schema=schema(), derive_next_obs=True,
                       heap_bytes={"obs": 1 << 20}, max_final_obs=1) as pool:
        heap_nbytes = pool._maps.views[FINAL_HEAP_PREFIX + "obs"].shape[0]
        too_large = np.zeros((heap_nbytes // 12 + 1, 3), np.float32)
        pool.append(row(0, False))
        before = pool.episodes()
        with pytest.raises(SchemaError, match="larger heap_bytes or max_final_obs"):
            pool.append({**row(1, True), "next_obs": too_large})
        assert len(pool) == 1
        after = pool.episodes()
        assert all(np.array_equal(before[key], after[key]) for key in before), "the episode stays open"
        pool.append(row(1, True))
        batch = pool.sample(16, rng=0, ragged="list")
        for step, next_obs in zip(batch["step_id"].tolist(), batch["next_obs"], strict=True):
            np.testing.assert_array_equal(next_obs, observation(FINAL + 1 if step == 1 else 1))


def test_plan_lays_out_the_final_heap_beside_its_index(pool_path):
    with expstore.open(pool_path, "w", capacity=100, schema=schema(), derive_next_obs=True, heap_bytes=1 << 20,
                       max_final_obs=10) as pool:
        views = pool._maps.views
        assert views[FINAL_PREFIX + "obs"].shape == (10, 4) and views[FINAL_PREFIX + "obs"].dtype == np.int64
        assert views[FINAL_PREFIX + "obs_pos"].shape == (10, 2)
        assert views[FINAL_HEAP_PREFIX + "obs"].shape == (64 << 10,)  # the floor: its share is smaller
        assert views[FINAL_OWNER].shape == (10,)


CRASHING_WRITER = textwrap.dedent("""
    import os, sys
    import numpy as np
    import expstore
    from tests.core.test_heap_derived import ends_episode, row

    path, committed, more = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    pool = expstore.open(path, "a", commit_every=10**9, commit_interval_s=3600, fsync=False)
    start = pool.next_step_id
    for step in range(start, start + committed):
        pool.append(row(step, ends_episode(step), 2000))
    pool.flush()
    for step in range(start + committed, start + committed + more):  # never committed: their finals
        pool.append(row(step, ends_episode(step), 2000))               # evict committed finals' bytes
    os._exit(0)
""")


def test_a_writer_killed_after_evicting_committed_finals_loses_only_their_last_rows(pool_path):
    """Uncommitted final observations write over committed ones' bytes (taking their owners
    first); after the crash every sampled row is still right, and a new writer's finals land past
    every byte the crashed writer wrote."""
    width = 2000
    with expstore.open(pool_path, "w", capacity=600, schema=schema(width), derive_next_obs=True,
                       heap_bytes=64 << 20, max_final_obs=300):
        pass
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", CRASHING_WRITER, pool_path, "100", "60"],
                                cwd=os.path.dirname(TESTS_DIR), capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        with expstore.open(pool_path) as pool:
            head = pool.next_step_id
            assert_next_obs_match(pool.sample(2000, rng=head))
    with expstore.open(pool_path, "a") as pool:
        assert pool.next_step_id == head >= 200
        for step in range(head, head + 50):
            pool.append(row(step, ends_episode(step), width))
        batch = pool.sample(2000, rng=1)
        assert_next_obs_match(batch)
        assert {step for step in batch["step_id"].tolist() if ends_episode(step) and step >= head}, \
            "the resumed writer's own finals are sampled"


def test_verify_checks_the_final_heap(pool_path):
    with expstore.open(pool_path, "w", capacity=100, schema=schema(), derive_next_obs=True, checksums=True) as pool:
        for step in range(40):
            pool.append(row(step, ends_episode(step)))
    report = expstore.verify(pool_path)
    assert report.ok, report.findings
    assert report.facts["heap_rows_checked"] == 40 + 8, "every row, and the 8 final observations"
    with expstore.open(pool_path, "r+") as pool:
        index = pool._maps.views[FINAL_PREFIX + "obs"]
        heap = pool._maps.views[FINAL_HEAP_PREFIX + "obs"]
        start, nbytes = int(index[3, 0]), int(index[3, 1])
        heap[start % len(heap) + nbytes - 1] ^= 0xFF  # one byte of final observation 3
    report = expstore.verify(pool_path)
    assert [finding for finding in report.findings if "final observation 3" in finding], report.findings
