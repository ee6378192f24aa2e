"""DiskReplayBuffer against SB3's own buffers: same adds and seeds give the same samples."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")
import torch
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer

import expstore
from expstore.integrations.sb3_buffers import DiskDictReplayBuffer, DiskReplayBuffer

BOX = spaces.Box(-5, 5, (3,), np.float32)
DICT = spaces.Dict({"position": spaces.Box(-1, 1, (2,), np.float32), "goal": spaces.Discrete(4)})
ACTION = spaces.Box(-1, 1, (2,), np.float32)

CASES = {
    "box": {"observation_space": BOX, "action_space": ACTION, "n_envs": 3},
    "timeouts-ignored": {"observation_space": BOX, "action_space": ACTION, "handle_timeout_termination": False},
    "optimize-memory": {"observation_space": BOX, "action_space": ACTION, "n_envs": 2, "optimize_memory_usage": True,
                            "handle_timeout_termination": False},
    "discrete-actions": {"observation_space": BOX, "action_space": spaces.Discrete(5), "n_envs": 2},
    "dict": {"observation_space": DICT, "action_space": ACTION, "n_envs": 2},
}


def random_step(rng: np.random.Generator, config: dict):
    """One vector-env step: obs, next_obs, action, reward, done, infos."""
    n_envs = config.get("n_envs", 1)

    def observation():
        space = config["observation_space"]
        if isinstance(space, spaces.Dict):
            return {"position": rng.uniform(-1, 1, (n_envs, 2)).astype(np.float32),
                    "goal": rng.integers(0, 4, n_envs)}
        return rng.uniform(-5, 5, (n_envs, 3)).astype(np.float32)

    if isinstance(config["action_space"], spaces.Discrete):
        action = rng.integers(0, 5, (n_envs, 1))
    else:
        action = rng.uniform(-1, 1, (n_envs, 2)).astype(np.float32)
    done = rng.random(n_envs) < 0.2
    infos = [{"TimeLimit.truncated": bool(d and rng.random() < 0.5)} for d in done]
    return observation(), observation(), action, rng.normal(size=n_envs).astype(np.float32), done, infos


def filled(config: dict, path: str, buffer_size: int, steps: int):
    """SB3's buffer and a disk buffer fed the same steps."""
    reference_class = DictReplayBuffer if isinstance(config["observation_space"], spaces.Dict) else ReplayBuffer
    disk_class = DiskDictReplayBuffer if reference_class is DictReplayBuffer else DiskReplayBuffer
    reference = reference_class(buffer_size, device="cpu", **config)
    disk = disk_class(buffer_size, device="cpu", path=path, **config)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        step = random_step(rng, config)
        reference.add(*step)
        disk.add(*step)
    return reference, disk


def assert_same_samples(reference, disk, seed: int, batch_size: int = 32) -> None:
    np.random.seed(seed)
    expected = reference.sample(batch_size)
    np.random.seed(seed)
    got = disk.sample(batch_size)
    for name, value in expected._asdict().items():
        if isinstance(value, dict):
            for key in value:
                assert torch.equal(value[key], got._asdict()[name][key]), (name, key)
        elif value is not None:
            assert torch.equal(value, got._asdict()[name]), name


@pytest.mark.parametrize("case", sorted(CASES))
def test_samples_equal_sb3_buffers_before_and_after_the_ring_wraps(case, pool_path):
    config = CASES[case]
    reference, disk = filled(config, pool_path, buffer_size=24, steps=5)
    assert (disk.pos, disk.full, disk.size()) == (reference.pos, reference.full, reference.size())
    assert_same_samples(reference, disk, seed=1)
    for _ in range(17):  # past buffer_size // n_envs env steps: the ring wraps
        step = random_step(np.random.default_rng(len(disk.pool)), config)
        reference.add(*step)
        disk.add(*step)
    assert (disk.pos, disk.full) == (reference.pos, reference.full)
    assert_same_samples(reference, disk, seed=2)


@pytest.mark.parametrize("case", ["box", "optimize-memory"])
def test_a_reopened_buffer_holds_every_transition(case, pool_path):
    config = CASES[case]
    reference, disk = filled(config, pool_path, buffer_size=40, steps=30)
    disk.close()
    reopened = DiskReplayBuffer(40, device="cpu", path=pool_path, mode="a", **config)
    assert (reopened.pos, reopened.full, reopened.size()) == (reference.pos, reference.full, reference.size())
    if not config.get("optimize_memory_usage"):
        assert_same_samples(reference, reopened, seed=3)
    batch = reopened.sample(64)  # with optimize_memory_usage the newest step waits for its next obs
    assert batch.observations.shape == (64, 3)


def test_rows_record_env_index_and_both_end_flags(pool_path):
    disk = DiskReplayBuffer(30, BOX, ACTION, device="cpu", n_envs=3, path=pool_path)
    observation = np.zeros((3, 3), np.float32)
    infos = [{}, {"TimeLimit.truncated": True}, {}]
    disk.add(observation, observation + 1, np.zeros((3, 2)), np.ones(3), np.array([True, True, False]), infos)
    rows = disk.pool[:]
    assert rows["env_index"].tolist() == [0, 1, 2]
    assert rows["terminated"].tolist() == [True, False, False]
    assert rows["truncated"].tolist() == [False, True, False]
    assert rows["next_obs"].tolist() == [[1.0] * 3] * 3


def test_pickling_keeps_the_path_not_the_data(pool_path):
    reference, disk = filled(CASES["box"], pool_path, buffer_size=300, steps=100)
    blob = pickle.dumps(disk)
    assert len(blob) < 4096
    restored = pickle.loads(blob)  # takes the pool over from `disk`, as load_replay_buffer does
    assert restored.size() == 100
    assert_same_samples(reference, restored, seed=4)
    with pytest.raises(expstore.ClosedStoreError):
        disk.sample(4)


_CRASHING_WRITER = """
import os, numpy as np
from gymnasium import spaces
from expstore.integrations.sb3_buffers import DiskReplayBuffer
box = spaces.Box(-5, 5, (3,), np.float32)
buffer = DiskReplayBuffer(100, box, spaces.Box(-1, 1, (2,), np.float32), n_envs=2, path={path!r}, commit_every=10)
for step in range(23):
    obs = np.full((2, 3), step, np.float32)
    buffer.add(obs, obs + 1, np.zeros((2, 2)), np.zeros(2), np.zeros(2, bool), [{{}}, {{}}])
buffer.pool.wait_for_commits()  # the last automatic commit's sync may still run in the background
os._exit(1)  # dies without closing: only the automatic commits count
"""


def test_a_crashed_writer_leaves_its_committed_steps(pool_path):
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(_CRASHING_WRITER.format(path=pool_path))],
                           capture_output=True, text=True, check=False, timeout=120)
    assert child.returncode == 1, child.stderr
    buffer = DiskReplayBuffer(100, BOX, ACTION, device="cpu", n_envs=2, path=pool_path, mode="a", commit_every=10)
    assert buffer.size() == 20  # commits every 10 rows = 5 env steps; steps 20..22 were never committed
    assert buffer.pool[-1]["obs"].tolist() == [19.0] * 3
    obs = np.full((2, 3), 99, np.float32)
    buffer.add(obs, obs, np.zeros((2, 2)), np.zeros(2), np.zeros(2, bool), [{}, {}])
    assert buffer.size() == 21 and buffer.pool[-2]["obs"].tolist() == [99.0] * 3


def test_sac_learns_the_same_with_the_disk_buffer_and_resumes_from_it(tmp_path):
    def train(**kwargs):
        torch.manual_seed(0)
        model = SAC("MlpPolicy", "Pendulum-v1", seed=5, learning_starts=50, batch_size=32, device="cpu",
                    policy_kwargs={"net_arch": [16, 16]}, **kwargs)
        return model.learn(100)

    pool = str(tmp_path / "sac.h5")
    with_sb3 = train()
    with_disk = train(replay_buffer_class=DiskReplayBuffer, replay_buffer_kwargs={"path": pool})
    for a, b in zip(with_sb3.policy.parameters(), with_disk.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    with_disk.save(tmp_path / "sac")
    with_disk.save_replay_buffer(tmp_path / "buffer.pkl")
    assert (tmp_path / "buffer.pkl").stat().st_size < 8192
    with pytest.raises(expstore.StoreExistsError, match="'mode': 'a'"):  # the saved kwargs start a new pool
        SAC.load(tmp_path / "sac", env=with_disk.get_env(), device="cpu")
    assert with_disk.replay_buffer.size() == 100  # the refusal left the pool and its buffer alone
    resumed = SAC.load(tmp_path / "sac", env=with_disk.get_env(), device="cpu",
                       replay_buffer_kwargs={"path": pool, "mode": "a"})
    assert isinstance(resumed.replay_buffer, DiskReplayBuffer) and resumed.replay_buffer.size() == 100
    resumed.load_replay_buffer(tmp_path / "buffer.pkl")
    assert resumed.replay_buffer.size() == 100
    resumed.learn(10, reset_num_timesteps=False)
    assert resumed.replay_buffer.size() == 110


def test_bad_arguments_say_what_to_do(pool_path):
    with pytest.raises(expstore.InvalidArgumentError, match="handle_timeout_termination=False"):
        DiskReplayBuffer(10, BOX, ACTION, optimize_memory_usage=True, path=pool_path)
    with pytest.raises(expstore.InvalidArgumentError, match="Dict observation space"):
        DiskDictReplayBuffer(10, BOX, ACTION, path=pool_path)
    buffer = DiskReplayBuffer(10, BOX, ACTION, path=pool_path)
    with pytest.raises(expstore.EmptyStoreError):
        buffer.sample(4)
    with pytest.raises(expstore.InvalidArgumentError, match="not emptied"):
        buffer.reset()


def test_a_new_buffer_adopts_an_existing_pool_only_when_asked(pool_path, caplog):
    _reference, disk = filled(CASES["box"], pool_path, buffer_size=60, steps=10)
    disk.close()
    with pytest.raises(expstore.StoreExistsError, match=r"already holds 30 transitions.*'mode': 'a'"):
        DiskReplayBuffer(60, device="cpu", path=pool_path, **CASES["box"])
    with pytest.raises(expstore.StoreExistsError):
        DiskReplayBuffer(60, device="cpu", path=pool_path, mode="w-", **CASES["box"])
    with caplog.at_level(logging.INFO, logger="expstore.sb3"):
        adopted = DiskReplayBuffer(60, device="cpu", path=pool_path, mode="a", **CASES["box"])
    assert adopted.size() == 10 and len(adopted.pool) == 30
    assert any("adopted 30 transitions" in record.getMessage() and pool_path in record.getMessage()
               for record in caplog.records)
    with pytest.raises(expstore.InvalidArgumentError, match="'x'.*'a'"):
        DiskReplayBuffer(60, device="cpu", path=pool_path, mode="w", **CASES["box"])


def test_a_pool_left_empty_is_reused_by_a_new_buffer(pool_path):
    DiskReplayBuffer(60, device="cpu", path=pool_path, **CASES["box"]).close()  # created, never written
    buffer = DiskReplayBuffer(60, device="cpu", path=pool_path, **CASES["box"])
    assert buffer.size() == 0


def test_a_buffer_refuses_a_pool_another_buffer_of_this_process_fills(pool_path):
    _reference, disk = filled(CASES["box"], pool_path, buffer_size=60, steps=4)  # not committed yet
    with pytest.raises(expstore.StoreExistsError, match="12 transitions"):
        DiskReplayBuffer(60, device="cpu", path=pool_path, **CASES["box"])
    assert disk.size() == 4 and len(disk.sample(2).rewards) == 2  # still open and usable


def test_readme_sb3_example_runs(tmp_path, monkeypatch):
    """The README's SB3 block as written, with fewer steps: train, save, close, SAC.load continues."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"<!-- sb3-example -->\s*```python\n(.*?)```", readme, re.DOTALL).group(1)
    assert "model.learn(20_000)" in block and "model.learn(5_000," in block
    block = block.replace("model.learn(20_000)", "model.learn(110)").replace("model.learn(5_000,", "model.learn(10,")
    block = block.replace('"Pendulum-v1", seed=0,', '"Pendulum-v1", seed=0, learning_starts=100, batch_size=16,')
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README sb3 example", "exec"), namespace)  # the README's own code
    assert namespace["model"].replay_buffer.size() == 120
    assert (tmp_path / "runs" / "sac_pendulum.zip").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs"]  # nothing else in the working directory
    namespace["model"].replay_buffer.close()


@pytest.mark.parametrize("case", ["box", "optimize-memory", "dict"])
def test_compressed_observations_sample_as_sb3s_buffer_does(case, pool_path):
    config = CASES[case]
    reference, disk = filled(config, pool_path, buffer_size=24, steps=17)  # wrapped once
    disk.close()
    reference_class = DiskDictReplayBuffer if case == "dict" else DiskReplayBuffer
    compressed_path = pool_path.replace("pool", "compressed")
    compressed = reference_class(24, device="cpu", path=compressed_path, codec="zstd:5", **config)
    rng = np.random.default_rng(0)
    for _ in range(17):
        compressed.add(*random_step(rng, config))
    observation_fields = [name for name in compressed.pool.schema if "obs" in name]
    assert observation_fields and all(compressed.pool.schema[name].codec == "zstd:5" for name in observation_fields)
    assert compressed.pool.schema["reward"].codec is None
    assert_same_samples(reference, compressed, seed=5)
    compressed.close()


def frame_stack_buffer(path: str, codec) -> DiskReplayBuffer:
    """A frame_stack=4 buffer of (4, 12, 12) uint8 stacks fed frames numbered by step, episodes of 7."""
    space = spaces.Box(0, 255, (4, 12, 12), np.uint8)
    buffer = DiskReplayBuffer(40, space, spaces.Discrete(3), device="cpu", n_envs=2, path=path, frame_stack=4,
                              handle_timeout_termination=False, codec=codec)
    stacks = np.zeros((2, 4, 12, 12), np.uint8)
    rng = np.random.default_rng(0)
    for step in range(45):  # the 40-row ring wraps
        frame = rng.integers(0, 255, (2, 1, 12, 12), dtype=np.uint8)
        done = np.array([step % 7 == 6, step % 5 == 4])
        next_stacks = np.concatenate([stacks[:, 1:], frame], axis=1)
        buffer.add(stacks, next_stacks, rng.integers(0, 3, (2, 1)), np.ones(2), done, [{}, {}])
        stacks = np.where(done[:, None, None, None], 0, next_stacks)
    return buffer


def test_frame_stacks_sample_the_same_with_and_without_a_codec(pool_path):
    raw = frame_stack_buffer(pool_path, codec=None)
    compressed = frame_stack_buffer(pool_path.replace("pool", "compressed"), codec={"obs": "lz4"})
    assert compressed.pool.schema["obs"].codec == "lz4" and raw.pool.schema["obs"].codec is None
    for seed in range(3):
        assert_same_samples(raw, compressed, seed=seed, batch_size=64)
    raw.close()
    compressed.close()
    with expstore.open(pool_path.replace("pool", "compressed")) as reopened:
        assert reopened.schema["obs"].codec == "lz4"


def test_heap_bytes_sizes_the_compressed_observations_on_disk(pool_path):
    space = spaces.Box(0, 255, (4, 12, 12), np.uint8)
    sized = DiskReplayBuffer(40, space, spaces.Discrete(3), device="cpu", path=pool_path, frame_stack=4,
                             handle_timeout_termination=False, codec="zstd", heap_bytes=8 << 10)
    assert sized.pool.heap_usage()["obs"]["heap_nbytes"] == 8 << 10
    sized.close()
    default_path = pool_path.replace("pool", "default")
    default = DiskReplayBuffer(40, space, spaces.Discrete(3), device="cpu", path=default_path, frame_stack=4,
                               handle_timeout_termination=False, codec="zstd")
    assert default.pool.heap_usage()["obs"]["heap_nbytes"] >= 40 * 144  # raw rows: any frame fits
    default.close()
    with pytest.raises(expstore.InvalidArgumentError, match="heap_bytes sizes the heaps"):
        DiskReplayBuffer(10, BOX, ACTION, path=pool_path.replace("pool", "raw"), heap_bytes=1 << 20)


def test_bad_codecs_are_refused_before_any_pool_is_made(tmp_path):
    path = tmp_path / "pool.h5"
    with pytest.raises(expstore.ExpstoreError, match="zstd"):
        DiskReplayBuffer(10, BOX, ACTION, path=str(path), codec="brotli")
    with pytest.raises(expstore.InvalidArgumentError, match="the fields are obs_goal, obs_position"):
        DiskDictReplayBuffer(10, DICT, ACTION, path=str(path), codec={"position": "zstd"})
    with pytest.raises(expstore.InvalidArgumentError, match="codec name"):
        DiskReplayBuffer(10, BOX, ACTION, path=str(path), codec=3)
    assert not path.exists()
