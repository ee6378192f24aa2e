"""The shared recorder of real ALE frames in tools/ (benchmarks and the frame-stack tests use it)."""

import numpy as np
import pytest

pytest.importorskip("ale_py", reason='needs ale-py: pip install -e ".[atari]"')

from tools.atari_frames import load, record


def test_record_columns_and_next_frames(tmp_path):
    recording = record("Breakout", 600, seed=3, max_episode_steps=150, cache_dir=tmp_path)
    assert recording.frames.shape == (600, 84, 84) and recording.frames.dtype == np.uint8
    assert recording.actions.max() < recording.n_actions
    ends = np.flatnonzero(recording.done)
    assert ends.tolist() == recording.final_steps.tolist() and len(ends) >= 3  # truncations at 150 at the latest
    assert np.diff(np.r_[-1, ends]).max() <= 150
    nxt = recording.next_frames()
    continuing = ~recording.done[:-1]
    assert np.array_equal(nxt[:-1][continuing], recording.frames[1:][continuing])
    assert np.array_equal(nxt[recording.final_steps], recording.final_frames)
    assert np.array_equal(nxt[-1], recording.after_last)


def test_cache_round_trip_and_determinism(tmp_path):
    first = record("Pong", 200, seed=1, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*.npz")
    again = load(cached)
    replayed = record("Pong", 200, seed=1)  # no cache: plays again, same seed, same frames
    for other in (again, replayed):
        assert np.array_equal(other.frames, first.frames)
        assert np.array_equal(other.actions, first.actions)
        assert np.array_equal(other.next_frames(), first.next_frames())
    assert not list(tmp_path.glob("*.tmp"))
    shorter = record("Pong", 150, seed=1, cache_dir=tmp_path)  # the first 150 steps of the cached 200
    assert len(list(tmp_path.glob("*.npz"))) == 1
    assert np.array_equal(shorter.frames, first.frames[:150])
    assert np.array_equal(shorter.next_frames(), first.next_frames()[:150])
