"""expstore video, decoded back: frame count, size and pixels against the pool's own frames."""

from __future__ import annotations

import os

import numpy as np
import pytest

import expstore
from expstore.errors import InvalidArgumentError, SchemaError
from expstore.inspect.frames import frame_fields, frame_layout
from expstore.inspect.video import write_video
from tests.helpers.cli import make_pool
from tests.helpers.image_pools import EPISODE_LENGTHS, SIDE, frames_for, make_image_pool

av = pytest.importorskip("av", reason="videos need PyAV: pip install 'expstore[video]'")


def decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def episode_steps(episode: int) -> np.ndarray:
    first = int(np.sum(EPISODE_LENGTHS[:episode]))
    return np.arange(first, first + EPISODE_LENGTHS[episode])


def rgb(frames: np.ndarray) -> np.ndarray:
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames[..., :3]


@pytest.fixture
def image_pool(pool_path) -> str:
    return make_image_pool(pool_path)


def test_gif_of_an_episode_is_the_pool_frames_exactly(image_pool, tmp_path):
    written = write_video(image_pool, tmp_path / "ep.gif", episode=3)
    frames = decode(tmp_path / "ep.gif")
    assert written["frames"] == len(frames) == EPISODE_LENGTHS[3]
    assert frames[0].shape == (SIDE, SIDE, 3) and (written["width"], written["height"]) == (SIDE, SIDE)
    np.testing.assert_array_equal(np.stack(frames), frames_for(episode_steps(3)))


def test_repeated_frames_stay_separate_frames(pool_path, tmp_path):
    """A still scene (the same frame twice) is two frames of the video, not one merged."""
    make_image_pool(pool_path, lengths=(4,))
    with expstore.open(pool_path, "a") as pool:
        pool.extend({"obs": frames_for([3, 3, 3]), "action": np.zeros(3, np.int64), "reward": np.zeros(3, np.float32),
                     "terminated": np.array([False, False, True]), "truncated": np.zeros(3, bool)})
    assert len(decode(write_video(pool_path, tmp_path / "still.gif", episode=1)["path"])) == 3


@pytest.mark.parametrize(("layout", "channels"), [("HW", 1), ("HWC", 1), ("HWC", 3), ("HWC", 4), ("CHW", 3)])
def test_every_layout_shows_the_stored_frame(pool_path, tmp_path, layout, channels):
    make_image_pool(pool_path, layout=layout, channels=channels)
    with expstore.open(pool_path) as pool:
        assert pool.schema["obs"].image_layout == layout
    frames = decode(write_video(pool_path, tmp_path / "ep.gif", episode=1)["path"])
    np.testing.assert_array_equal(np.stack(frames), rgb(frames_for(episode_steps(1), channels=channels)))


def test_a_frame_stack_shows_its_newest_frame(pool_path, tmp_path):
    steps = np.arange(10)
    stacks = np.stack([frames_for(np.maximum(steps - lag, 0), channels=1)[..., 0] for lag in (2, 1, 0)], axis=1)
    schema = {"obs": ((3, SIDE, SIDE), "uint8"), "reward": ((), "float32"), "terminated": ((), "bool"),
              "truncated": ((), "bool")}
    with expstore.open(pool_path, "w", capacity=20, schema=schema) as pool:
        pool.extend({"obs": stacks, "reward": np.ones(10, np.float32), "terminated": steps == 9,
                     "truncated": np.zeros(10, bool)})
        assert pool.schema["obs"].image_layout == "CHW"  # three channels: detected as colour, not a stack
    schema["obs"] = expstore.Field((3, SIDE, SIDE), "uint8", image=False)  # said to be a stack of 3 frames
    with expstore.open(pool_path, "w", capacity=20, schema=schema) as pool:
        pool.extend({"obs": stacks, "reward": np.ones(10, np.float32), "terminated": steps == 9,
                     "truncated": np.zeros(10, bool)})
        layout = frame_layout(pool.schema["obs"])
        assert layout is not None and layout.stacked and frame_fields(pool.schema) == ["obs"]
    frames = decode(write_video(pool_path, tmp_path / "stack.gif", episode=0)["path"])
    np.testing.assert_array_equal(np.stack(frames), rgb(frames_for(steps, channels=1)))


def test_step_range_and_fps(image_pool, tmp_path):
    written = write_video(image_pool, tmp_path / "part.gif", steps=(5, 20), fps=10)
    frames = decode(written["path"])
    np.testing.assert_array_equal(np.stack(frames), frames_for(np.arange(5, 20)))
    with av.open(written["path"]) as container:
        stream = container.streams.video[0]
        duration_s = float(stream.duration * stream.time_base) if stream.duration else None
    assert duration_s is None or abs(duration_s - 1.5) < 0.15


def test_open_ended_step_range_reaches_the_newest_row(image_pool, tmp_path):
    total = int(np.sum(EPISODE_LENGTHS))
    frames = decode(write_video(image_pool, tmp_path / "tail.gif", steps=(total - 4, None))["path"])
    np.testing.assert_array_equal(np.stack(frames), frames_for(np.arange(total - 4, total)))


def test_mp4_keeps_count_and_size_and_is_close(image_pool, tmp_path):
    written = write_video(image_pool, tmp_path / "ep.mp4", episode=1)
    frames = np.stack(decode(written["path"]))
    assert frames.shape == (EPISODE_LENGTHS[1], SIDE, SIDE, 3)
    error = np.abs(frames.astype(np.int16) - frames_for(episode_steps(1)).astype(np.int16))
    assert error.mean() < 12  # yuv420p halves the chroma resolution: close, not exact


def test_lossless_mp4_is_exact_for_any_number_of_colours(pool_path, tmp_path):
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (12, 17, 23, 3), dtype=np.uint8)  # thousands of colours, odd sides
    schema = {"obs": ((17, 23, 3), "uint8"), "terminated": ((), "bool"), "truncated": ((), "bool"),
              "reward": ((), "float32")}
    with expstore.open(pool_path, "w", capacity=20, schema=schema) as pool:
        pool.extend({"obs": noise, "terminated": np.arange(12) == 11, "truncated": np.zeros(12, bool),
                     "reward": np.zeros(12, np.float32)})
    exact = write_video(pool_path, tmp_path / "exact.mp4", episode=0, lossless=True)
    np.testing.assert_array_equal(np.stack(decode(exact["path"])), noise)
    playable = write_video(pool_path, tmp_path / "even.mp4", episode=0)
    assert np.stack(decode(playable["path"])).shape == (12, 18, 24, 3)  # 4:2:0 needs even sides
    reduced = np.stack(decode(write_video(pool_path, tmp_path / "noise.gif", episode=0)["path"]))
    assert reduced.shape == noise.shape and np.abs(reduced.astype(int) - noise).mean() < 20  # 256 colours


def test_grid_tiles_episodes_and_holds_the_last_frame_of_the_shorter(image_pool, tmp_path):
    chosen = [2, 0, 4]  # lengths 5, 7, 11
    written = write_video(image_pool, tmp_path / "grid.gif", episodes=chosen)
    frames = np.stack(decode(written["path"]))
    assert frames.shape == (11, 2 * SIDE, 2 * SIDE, 3) and written["clips"] == ["episode 2", "episode 0", "episode 4"]
    for cell, episode in enumerate(chosen):
        top, left = (cell // 2) * SIDE, (cell % 2) * SIDE
        steps = episode_steps(episode)
        shown = np.concatenate([steps, np.full(11 - len(steps), steps[-1])])
        np.testing.assert_array_equal(frames[:, top:top + SIDE, left:left + SIDE], frames_for(shown))
    assert not frames[:, SIDE:, SIDE:].any()  # the fourth cell stays black


def test_overlay_adds_a_strip_and_leaves_the_frame_untouched(image_pool, tmp_path):
    written = write_video(image_pool, tmp_path / "over.gif", episode=1, overlay=True)
    frames = np.stack(decode(written["path"]))
    assert frames.shape[1] > SIDE and frames.shape[2] >= SIDE
    left = (frames.shape[2] - SIDE) // 2
    np.testing.assert_array_equal(frames[:, :SIDE, left:left + SIDE], frames_for(episode_steps(1)))
    strips = frames[:, SIDE:]
    assert strips.any() and not np.array_equal(strips[0], strips[-1])  # the text changes with the step


def test_episodes_of_a_vector_env_are_their_own_rows(pool_path, tmp_path):
    """Two envs' steps interleave: an episode's video shows its env's frames only."""
    make_image_pool(pool_path, lengths=())
    steps = np.arange(16)
    with expstore.open(pool_path, "a") as pool:
        pool.extend({"obs": frames_for(steps), "action": steps % 4, "reward": np.ones(16, np.float32),
                     "terminated": np.isin(steps, [12, 15]), "truncated": np.zeros(16, bool)},
                    env_ids=steps % 2)
        table = pool.episodes()
        episode = int(table["episode_id"][table["env_id"] == 0][0])
    frames = np.stack(decode(write_video(pool_path, tmp_path / "env0.gif", episode=episode)["path"]))
    np.testing.assert_array_equal(frames, frames_for(np.arange(0, 13, 2)))


def test_a_pool_without_frames_names_its_fields_and_writes_nothing(pool_path, tmp_path):
    make_pool(pool_path)
    with pytest.raises(SchemaError, match=r"no image fields.*obs \(3,\) float32.*reward"):
        write_video(pool_path, tmp_path / "x.mp4", episode=0)
    assert "x.mp4" not in os.listdir(tmp_path) and not any(name.startswith(".x") for name in os.listdir(tmp_path))


@pytest.mark.parametrize(("options", "words"), [
    ({"episode": 99}, "episode 99 has no row"),
    ({"steps": (50, 500)}, "not inside the pool's window"),
    ({"steps": (9, 9)}, "not inside the pool's window"),
    ({"episode": 0, "steps": (1, 2)}, "exactly one of"),
    ({}, "exactly one of"),
    ({"episode": 0, "fps": 0}, "fps 0"),
    ({"episode": 0, "field": "reward"}, "holds no frames"),
    ({"episode": 0, "field": "nope"}, "has no field 'nope'"),
    ({"episodes": list(range(65))}, "1 to 64 episodes"),
])
def test_bad_requests_fail_clearly_and_write_nothing(image_pool, tmp_path, options, words):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InvalidArgumentError if "field" not in options else SchemaError, match=words):
        write_video(image_pool, out / "v.mp4", **options)
    assert os.listdir(out) == []


def test_lossless_gif_and_unknown_extensions_fail_before_reading(tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"\.mp4 \(H\.264 video\), \.gif"):
        write_video(tmp_path / "missing.h5", tmp_path / "v.avi", episode=0)
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        write_video(tmp_path / "missing.h5", tmp_path / "no" / "v.mp4", episode=0)


def test_ragged_fields_hold_no_frames():
    """A ragged uint8 field (None, H, W) has rows of their own lengths: not a stack of frames."""
    assert frame_layout(expstore.Field((None, SIDE, SIDE), "uint8")) is None
    assert frame_layout(expstore.Field((5, SIDE, SIDE), "uint8")).stacked
