"""expstore export/import: D4RL and Minari, round trips, and Minari's own reader and writer."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import expstore
from tests.helpers.cli import all_rows, assert_error, assert_same_rows, make_pool, run
from tests.helpers.pools import BACKENDS


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def test_d4rl_round_trip_gives_identical_rows(tmp_path, pool_path, backend):
    make_pool(pool_path, rows=300, capacity=200, attrs={"env_id": "Pendulum-v1"})
    file = tmp_path / "d4rl.hdf5"
    run("export", pool_path, file)
    with h5py.File(file, "r") as f:
        assert {"observations", "actions", "rewards", "next_observations", "terminals", "timeouts"} <= set(f)
        np.testing.assert_array_equal(f["rewards"][:3], [-100, -101, -102])
    back = str(tmp_path / f"back{BACKENDS[backend]}")
    run("import", file, back)
    assert_same_rows(all_rows(back), all_rows(pool_path))
    assert expstore.open(back).attrs == {"env_id": "Pendulum-v1"}


def test_d4rl_import_of_a_foreign_file(tmp_path):
    """A D4RL file as D4RL ships it: float terminals, no timeouts, per-step infos."""
    file = tmp_path / "hopper.hdf5"
    with h5py.File(file, "w") as f:
        f["observations"] = np.arange(20, dtype=np.float32).reshape(10, 2)
        f["actions"] = np.ones((10, 1), np.float32)
        f["rewards"] = np.arange(10, dtype=np.float32)
        f["terminals"] = (np.arange(10) == 9).astype(np.float32)
        f["infos/qpos"] = np.zeros((10, 3))
        f["infos/note"] = np.zeros(4)  # not one row per step: skipped
    run("import", file, tmp_path / "hopper.zarr", "--capacity", "100")
    rows = all_rows(str(tmp_path / "hopper.zarr"))
    assert list(rows) == ["obs", "action", "reward", "terminated", "qpos", "truncated"]
    assert rows["terminated"].dtype == np.float32 and rows["truncated"].sum() == 0
    assert expstore.open(str(tmp_path / "hopper.zarr")).capacity == 100


def test_minari_export_is_read_by_minari(tmp_path, pool_path, minari_root):
    minari = pytest.importorskip("minari")
    make_pool(pool_path, rows=300, capacity=200)
    out = run("export", pool_path, minari_root / "pendulum" / "demo-v0", "--format", "minari",
              "--dataset-id", "pendulum/demo-v0").output
    dataset = minari.load_dataset("pendulum/demo-v0")
    rows = all_rows(pool_path)
    assert dataset.total_steps == 200 and f"in {dataset.total_episodes} episodes" in out
    steps = 0
    for episode in dataset.iterate_episodes():
        n = len(episode.rewards)
        np.testing.assert_array_equal(episode.observations[:-1], rows["obs"][steps:steps + n])
        np.testing.assert_array_equal(episode.observations[1:], rows["next_obs"][steps:steps + n])
        np.testing.assert_array_equal(episode.actions, rows["action"][steps:steps + n])
        np.testing.assert_array_equal(episode.terminations, rows["terminated"][steps:steps + n])
        steps += n
    assert steps == 200


def test_minari_round_trip_splits_at_gaps_and_gives_identical_rows(tmp_path, backend, minari_root):
    """Rows whose next_obs is not the next obs (no flag either) still come back bit for bit."""
    src = str(tmp_path / f"src{BACKENDS[backend]}")
    rng = np.random.default_rng(0)
    with expstore.open(src, "w", capacity=50, schema={
        "obs": ((2,), "float32"), "action": ((), "int64"), "reward": ((), "float64"), "next_obs": ((2,), "float32"),
        "terminated": ((), "bool"), "truncated": ((), "bool"), "log_prob": ((), "float32")}) as pool:
        pool.extend({"obs": rng.normal(size=(40, 2)), "action": rng.integers(0, 4, 40), "reward": rng.normal(size=40),
                     "next_obs": rng.normal(size=(40, 2)), "terminated": np.arange(40) % 9 == 8,
                     "truncated": np.zeros(40, bool), "log_prob": rng.normal(size=40)})
    run("export", src, minari_root / "gaps-v1")
    metadata = json.loads((minari_root / "gaps-v1" / "data" / "metadata.json").read_text())
    assert metadata["total_episodes"] == 40 and json.loads(metadata["action_space"])["type"] == "Discrete"
    back = str(tmp_path / f"back{BACKENDS[backend]}")
    run("import", "gaps-v1", back)  # a dataset id under MINARI_DATASETS_PATH
    assert_same_rows(all_rows(back), all_rows(src))


def test_minari_data_collector_dataset_imports_row_for_row(tmp_path, backend, minari_root):
    minari = pytest.importorskip("minari")
    gym = pytest.importorskip("gymnasium")
    env = minari.DataCollector(gym.make("Pendulum-v1", max_episode_steps=30))
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(75):
        _obs, _reward, terminated, truncated, _info = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    dataset = env.create_dataset("pendulum/collected-v0", algorithm_name="random", author="tests",
                                 author_email="tests@example.org", code_permalink="none", description="tests",
                                 eval_env="Pendulum-v1")
    pool = str(tmp_path / f"collected{BACKENDS[backend]}")
    run("import", minari_root / "pendulum" / "collected-v0", pool)
    rows = all_rows(pool)
    assert len(rows["reward"]) == dataset.total_steps
    steps = 0
    for episode in dataset.iterate_episodes():
        n = len(episode.rewards)
        np.testing.assert_array_equal(rows["obs"][steps:steps + n], episode.observations[:-1])
        np.testing.assert_array_equal(rows["next_obs"][steps:steps + n], episode.observations[1:])
        np.testing.assert_array_equal(rows["action"][steps:steps + n], episode.actions)
        np.testing.assert_array_equal(rows["reward"][steps:steps + n], episode.rewards)
        np.testing.assert_array_equal(rows["truncated"][steps:steps + n], episode.truncations)
        steps += n
    assert steps == len(rows["reward"]) and rows["truncated"].sum() >= 2
    attrs = expstore.open(pool).attrs
    assert attrs["minari"]["dataset_id"] == "pendulum/collected-v0"
    run("export", pool, tmp_path / "again-v0")  # the spaces and env spec go back out
    again = json.loads((tmp_path / "again-v0" / "data" / "metadata.json").read_text())
    assert again["observation_space"] == attrs["minari"]["observation_space"] and "env_spec" in again


def test_interchange_errors_are_one_line(tmp_path, pool_path, minari_root):
    make_pool(pool_path)
    assert_error(run("export", pool_path, tmp_path / "bad name", "--format", "minari", ok=False), "name-v0")
    run("export", pool_path, tmp_path / "x.hdf5")
    assert_error(run("export", pool_path, tmp_path / "x.hdf5", ok=False), "already exists")
    assert_error(run("import", tmp_path / "x.hdf5", pool_path, ok=False), "already exists")
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f["something"] = np.zeros(3)
    assert_error(run("import", tmp_path / "other.hdf5", tmp_path / "o.h5", ok=False), "not a D4RL file")
    (tmp_path / "dir").mkdir()
    assert_error(run("import", tmp_path / "dir", tmp_path / "o.h5", ok=False), "not a Minari dataset")
    assert_error(run("import", "nobody/none-v0", tmp_path / "o.h5", ok=False), "no Minari dataset")
    with expstore.open(str(tmp_path / "few.h5"), "w", capacity=5, schema={"obs": ((2,), "float32")}):
        pass
    assert_error(run("export", tmp_path / "few.h5", tmp_path / "few.hdf5", ok=False), "lacks the fields")


# ---------------------------------------------------------------------- Minari image datasets (JPEG)
def _block_frame(emitted: int) -> np.ndarray:
    """A bright 8x8 block on a grey 48x48 frame; block-aligned, so every frame JPEG-encodes to the
    same length and decodes exactly (the first block position encodes shorter, so it is skipped)."""
    frame = np.full((48, 48), 40, np.uint8)
    row, col = divmod(emitted % 29 + 1, 5)
    frame[8 * row:8 * row + 8, 8 * col:8 * col + 8] = 220
    return frame


def _noisy_frame(emitted: int) -> np.ndarray:
    """A gradient with noise: encoded lengths differ from frame to frame, and JPEG loses a little."""
    gradient = np.add.outer(np.arange(48), np.arange(48)) * 2 + emitted
    noise = np.random.default_rng(emitted).integers(0, 24, (48, 48))
    return np.clip(gradient + noise, 0, 255).astype(np.uint8)


def _collect_image_dataset(dataset_id: str, frame, steps: int = 30, episode_steps: int = 12):
    """A dataset written by Minari's own DataCollector (jpeg_encoding at its default) from an env
    with a 48x48 image Box space; returns the dataset and every frame the env emitted, in order."""
    minari = pytest.importorskip("minari")
    gym = pytest.importorskip("gymnasium")

    class ImageEnv(gym.Env):
        observation_space = gym.spaces.Box(0, 255, (48, 48), np.uint8)
        action_space = gym.spaces.Discrete(3)

        def __init__(self):
            self.frames = []

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return self._emit(), {}

        def step(self, action):
            self.t += 1
            return self._emit(), float(action), False, self.t >= episode_steps, {}

        def _emit(self):
            self.frames.append(frame(len(self.frames)))
            return self.frames[-1]

    image_env = ImageEnv()
    env = minari.DataCollector(image_env)
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(steps):
        _obs, _reward, terminated, truncated, _info = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    with pytest.warns(UserWarning):  # Minari: "env_spec is None" for an unregistered env
        dataset = env.create_dataset(dataset_id, algorithm_name="random", author="tests",
                                     author_email="tests@example.org", code_permalink="none", description="tests")
    return dataset, image_env.frames


@pytest.mark.parametrize("frames", ["equal-lengths", "varied-lengths"])
def test_minari_jpeg_image_dataset_imports_as_frames(tmp_path, backend, minari_root, frames):
    frame = _block_frame if frames == "equal-lengths" else _noisy_frame
    dataset, emitted = _collect_image_dataset(f"images/{frames}-v0", frame)
    data = minari_root / "images" / f"{frames}-v0" / "data"
    assert json.loads((data / "metadata.json").read_text())["jpeg_encoding"] is True
    with h5py.File(data / "main_data.hdf5", "r") as f:  # the layout this case is about
        stored = f["episode_0/observations"]
        assert (stored.dtype == np.uint8 and stored.ndim == 2) if frames == "equal-lengths" else \
            h5py.check_vlen_dtype(stored.dtype) is not None
    pool = str(tmp_path / f"images{BACKENDS[backend]}")
    run("import", minari_root / "images" / f"{frames}-v0", pool)

    with expstore.open(pool) as opened:
        assert (opened.schema["obs"].shape, opened.schema["obs"].dtype) == ((48, 48), np.uint8)
    rows = all_rows(pool)
    steps, frames_used = 0, 0
    for episode in dataset.iterate_episodes():  # Minari's own reader decodes the stored JPEG
        n = len(episode.rewards)
        np.testing.assert_array_equal(rows["obs"][steps:steps + n], episode.observations[:-1])
        np.testing.assert_array_equal(rows["next_obs"][steps:steps + n], episode.observations[1:])
        np.testing.assert_array_equal(rows["action"][steps:steps + n], episode.actions)
        env_frames = np.stack(emitted[frames_used:frames_used + n + 1]).astype(np.int16)
        error = np.abs(rows["obs"][steps:steps + n].astype(np.int16) - env_frames[:-1])
        if frames == "equal-lengths":
            assert error.max() == 0  # block-aligned flat frames survive JPEG exactly
        else:
            assert 0 < error.mean() < 8 and error.max() <= 64  # lossy, but the env's frames
        steps, frames_used = steps + n, frames_used + n + 1
    assert steps == len(rows["reward"]) == dataset.total_steps and frames_used == len(emitted)


def test_minari_damaged_jpeg_frame_is_an_error_and_writes_nothing(tmp_path, minari_root):
    _collect_image_dataset("images/damaged-v0", _block_frame)
    with h5py.File(minari_root / "images" / "damaged-v0" / "data" / "main_data.hdf5", "a") as f:
        f["episode_1/observations"][4] = 7  # no JPEG marker left in this frame
    pool = tmp_path / "damaged.h5"
    assert_error(run("import", minari_root / "images" / "damaged-v0", pool, ok=False),
                 "episode_1/observations[4]", "not a readable JPEG frame")
    assert not pool.exists() and not list(tmp_path.glob("damaged.h5*"))


def _minari_export(tmp_path, minari_root) -> str:
    src = make_pool(str(tmp_path / "src.h5"), rows=60, capacity=60)
    run("export", src, minari_root / "edited-v0")
    return str(minari_root / "edited-v0")


@pytest.mark.parametrize("edit, words", [
    ({"observation_space": {"type": "Box", "dtype": "float32", "shape": [4], "low": [0] * 4, "high": [1] * 4}},
     ["episode_0/observations holds float32 of shape (", "3)", "(", "4)", "does not match its metadata.json"]),
    ({"observation_space": {"type": "Box", "dtype": "float64", "shape": [3], "low": [0] * 3, "high": [1] * 3}},
     ["holds float32", "needs float64"]),
    ({"action_space": {"type": "Dict", "subspaces": {}}}, ["Dict space", "only Box, Discrete"]),
    ({"observation_space": "{not json"}, ["observation_space in metadata.json is not JSON"]),
])
def test_minari_fields_that_contradict_the_declared_spaces_are_errors(tmp_path, minari_root, edit, words):
    dataset = _minari_export(tmp_path, minari_root)
    metadata_path = f"{dataset}/data/metadata.json"
    with open(metadata_path) as fh:
        metadata = json.load(fh)
    metadata.update({key: value if isinstance(value, str) else json.dumps(value) for key, value in edit.items()})
    with open(metadata_path, "w") as fh:
        json.dump(metadata, fh)
    pool = tmp_path / "out.zarr"
    assert_error(run("import", dataset, pool, ok=False), *words)
    assert not pool.exists()


def test_minari_episode_unlike_episode_0_is_an_error(tmp_path, minari_root):
    dataset = _minari_export(tmp_path, minari_root)
    with h5py.File(f"{dataset}/data/main_data.hdf5", "a") as f:
        episode = f[f"episode_{len(f) - 1}"]
        steps = episode["rewards"].shape[0]
        del episode["truncations"]
        episode["truncations"] = np.zeros(steps + 1, bool)
    assert_error(run("import", dataset, tmp_path / "out.h5", ok=False), "truncations holds bool of shape",
                 "booleans, one per step")


def test_minari_multi_discrete_and_multi_binary_spaces_import(tmp_path, minari_root):
    minari = pytest.importorskip("minari")
    gym = pytest.importorskip("gymnasium")

    class SwitchEnv(gym.Env):
        observation_space = gym.spaces.MultiBinary(5)
        action_space = gym.spaces.MultiDiscrete([3, 4])

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return self.observation_space.sample(), {}

        def step(self, action):
            self.t += 1
            return self.observation_space.sample(), float(action.sum()), self.t >= 7, False, {}

    env = minari.DataCollector(SwitchEnv())
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(20):
        *_, terminated, truncated, _info = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    with pytest.warns(UserWarning):
        dataset = env.create_dataset("switch/random-v0", algorithm_name="random", author="tests",
                                     author_email="tests@example.org", code_permalink="none", description="tests")
    run("import", "switch/random-v0", tmp_path / "switch.h5")
    rows = all_rows(str(tmp_path / "switch.h5"))
    assert rows["obs"].shape == (20, 5) and rows["obs"].dtype == np.int8 and rows["action"].shape == (20, 2)
    episodes = list(dataset.iterate_episodes())
    np.testing.assert_array_equal(rows["obs"], np.concatenate([ep.observations[:-1] for ep in episodes]))
    np.testing.assert_array_equal(rows["action"], np.concatenate([ep.actions for ep in episodes]))
