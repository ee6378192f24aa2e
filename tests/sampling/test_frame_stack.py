"""Frame stacks rebuilt from one frame per row, against a slow reference, on both backends.

The reference (``expected_stack``) walks the episode model of tests/helpers/episode_model.py: a
row's stack is the observations of the k newest rows of its episode, padded at the episode
start, so stacks across episode starts, the ring edge, vector-env interleaving and reopened
(cut off) episodes are all checked against the obvious answer.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import expstore
from tests.helpers.episode_model import DERIVED_SCHEMA, SCHEMA, Model, ops, run_ops

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
SUFFIX = {"hdf5": ".h5", "zarr": ".zarr"}


def arrange(frames: list[np.ndarray], axis: int) -> np.ndarray:
    stacked = np.stack(frames)
    return stacked if axis == 0 else np.concatenate(frames, axis=-1)


def history_rows(model: Model, step: int, k: int):
    """The k newest rows of the step's episode up to it, None where before the episode start."""
    row = model.rows[step]
    rows = model.episode_rows(row.episode)
    return [rows[row.index - back] if row.index - back >= 0 else None for back in range(k - 1, -1, -1)]


def expected_stack(model: Model, step: int, k: int, axis: int, padding: str) -> tuple[np.ndarray | None, np.ndarray]:
    """(obs stack or None when it needs evicted rows, next_obs stack)."""
    rows = history_rows(model, step, k)
    first = next(r for r in rows if r is not None)

    def frame(row):
        if row is not None:
            return row.values()["obs"]
        return first.values()["obs"] if padding == "reset" else np.zeros(2, np.float32)

    frames = [frame(r) for r in rows]
    complete = all(r is None or r.step >= model.tail for r in rows)
    next_frames = frames[1:] + [model.rows[step].values()["next_obs"]]
    return (arrange(frames, axis) if complete else None), arrange(next_frames, axis)


def _pool(tmp_path_factory, backend, capacity, derived):
    path = str(tmp_path_factory.mktemp("fs") / ("pool" + SUFFIX[backend]))
    schema = DERIVED_SCHEMA if derived else SCHEMA
    expstore.open(path, "w", capacity=capacity, schema=schema, commit_every=5, derive_next_obs=derived).close()
    return path


def check_rows(batch, model, k, axis, padding, derived, last_steps=None):
    for i, step in enumerate(batch["step_id"]):
        obs, _ = expected_stack(model, int(step), k, axis, padding)
        assert obs is not None, f"step {step} was returned although its stack needs evicted rows"
        assert np.array_equal(batch["obs"][i], obs)
        last = int(step) if last_steps is None else int(last_steps[i])
        if "next_obs" in batch:
            assert np.array_equal(batch["next_obs"][i], expected_stack(model, last, k, axis, padding)[1])


# Two envs interleave, env 1's rows follow at strides 1 and 3: the stride guess misses and the scan finds them.
INTERLEAVED = [("extend", [(0, 0, 0), (1, 0, 0), (0, 0, 0), (0, 0, 0), (1, 0, 0), (1, 0, 0), (0, 0, 0)]),
               ("append", (1, 0, 0)), ("append", (1, 1, 0))]


@SETTINGS
@given(capacity=st.integers(3, 30), operations=ops, k=st.integers(1, 4), axis=st.sampled_from([0, -1]),
       padding=st.sampled_from(["reset", "zero"]), derived=st.booleans())
@example(capacity=30, operations=INTERLEAVED, k=4, axis=0, padding="reset", derived=True)
@example(capacity=4, operations=INTERLEAVED, k=3, axis=-1, padding="zero", derived=False)
def test_read_and_sample_match_the_reference(tmp_path_factory, backend, capacity, operations, k, axis, padding,
                                             derived):
    path = _pool(tmp_path_factory, backend, capacity, derived)
    model = Model(capacity)
    (writer,) = run_ops(model, lambda: [expstore.open(path, "a", commit_every=5)], operations)
    options = {"frame_stack": k, "stack_axis": axis, "stack_padding": padding}
    with expstore.open(path, "r") as reader:
        for handle in (writer, reader):
            window = range(model.tail, len(model.rows))
            complete = [s for s in window if expected_stack(model, s, k, axis, padding)[0] is not None]
            for step in set(window) - set(complete):
                with pytest.raises(expstore.StepNotFoundError, match="evicted"):
                    handle.read([step], **options)
            if complete:
                batch = handle.read(complete, **options)
                assert batch["obs"].shape[0] == len(complete)
                check_rows(batch, model, k, axis, padding, derived)
                assert ("next_obs" in batch) == (not derived or all(model.next_obs_known(s) for s in complete))
            usable = [s for s in complete if not derived or model.next_obs_known(s)]
            if not usable:
                continue
            batch = handle.sample(64, rng=3, **options)
            assert set(batch["step_id"].tolist()) <= set(usable)
            check_rows(batch, model, k, axis, padding, derived)
            epoch = list(handle.iter_epoch(7, rng=1, **options))
            assert sorted(np.concatenate([b["step_id"] for b in epoch]).tolist()) == usable
            for part in epoch:
                check_rows(part, model, k, axis, padding, derived)
    writer.close()


@SETTINGS
@given(capacity=st.integers(3, 30), operations=ops, k=st.integers(2, 4), n=st.integers(2, 4),
       padding=st.sampled_from(["reset", "zero"]))
def test_n_step_stacks_next_obs_of_the_last_row(tmp_path_factory, backend, capacity, operations, k, n, padding):
    path = _pool(tmp_path_factory, backend, capacity, derived=True)
    model = Model(capacity)
    run_ops(model, lambda: [expstore.open(path, "a", commit_every=5)], operations)[0].close()
    with expstore.open(path, "r") as reader:
        usable = [s for s in range(model.tail, len(model.rows))
                  if expected_stack(model, s, k, 0, padding)[0] is not None
                  and model.next_obs_known(model.following(s, n)[-1].step)]
        if not usable:
            return
        batch = reader.sample(64, rng=5, n_step=n, gamma=0.9, frame_stack=k, stack_padding=padding)
    last = [model.following(int(s), n)[-1].step for s in batch["step_id"]]
    check_rows(batch, model, k, 0, padding, True, last_steps=last)


@SETTINGS
@given(capacity=st.integers(3, 30), operations=ops, k=st.integers(1, 4), length=st.integers(1, 4))
def test_sequences_stack_every_row(tmp_path_factory, backend, capacity, operations, k, length):
    path = _pool(tmp_path_factory, backend, capacity, derived=False)
    model = Model(capacity)
    run_ops(model, lambda: [expstore.open(path, "a", commit_every=5)], operations)[0].close()
    with expstore.open(path, "r") as reader:
        if not any(expected_stack(model, s, k, 0, "reset")[0] is not None for s in range(model.tail, len(model.rows))):
            return
        batch = reader.sample_sequences(16, length, rng=2, frame_stack=k)
    assert batch["obs"].shape == (16, length, k, 2)
    for i in range(16):
        for j in np.flatnonzero(batch["mask"][i]):
            step = int(batch["step_id"][i, j])
            obs, next_obs = expected_stack(model, step, k, 0, "reset")
            assert np.array_equal(batch["obs"][i, j], obs) and np.array_equal(batch["next_obs"][i, j], next_obs)


@pytest.mark.parametrize("derived", [False, True])
def test_episode_stacks_and_evicted_starts(tmp_path, backend, derived):
    path = str(tmp_path / ("pool" + SUFFIX[backend]))
    model = Model(12)
    with expstore.open(path, "w", capacity=12, schema=DERIVED_SCHEMA if derived else SCHEMA,
                       derive_next_obs=derived) as pool:
        for end in [0] * 5 + [1] + [0] * 9:  # episode 0: 6 rows; episode 1: 9 rows, still running
            values = model.add(0, end, 1.0).values()
            pool.append(values)
        first = pool.episode(1, frame_stack=3, stack_padding="zero")
        assert first["step_id"].tolist() == list(range(6, 15))
        for i, step in enumerate(first["step_id"]):
            assert np.array_equal(first["obs"][i], expected_stack(model, int(step), 3, 0, "zero")[0])
        assert ("next_obs" in first) == (not derived)  # a running episode's newest next obs is not known yet
        evicted_start = pool.episode(0, frame_stack=3)  # its rows 0..2 were evicted (window 3..14)
        assert evicted_start["step_id"].tolist() == [5]
        assert np.array_equal(evicted_start["obs"][0], expected_stack(model, 5, 3, 0, "reset")[0])
        assert np.array_equal(evicted_start["next_obs"][0], expected_stack(model, 5, 3, 0, "reset")[1])


def test_shapes_of_both_axes(tmp_path, backend):
    path = str(tmp_path / ("pool" + SUFFIX[backend]))
    schema = {"obs": ((84, 84), "uint8"), "reward": ((), "float32"), "terminated": ((), "bool"),
              "truncated": ((), "bool"), "rgb": ((84, 84, 1), "uint8")}
    with expstore.open(path, "w", capacity=64, schema=schema, derive_next_obs=True) as pool:
        rng = np.random.default_rng(0)
        for step in range(20):
            pool.append({"obs": rng.integers(0, 255, (84, 84), np.uint8), "reward": 0.0, "terminated": step == 9,
                         "truncated": False, "rgb": rng.integers(0, 255, (84, 84, 1), np.uint8),
                         "next_obs": rng.integers(0, 255, (84, 84), np.uint8)})
        batch = pool.sample(8, rng=0, frame_stack=4)
        assert batch["obs"].shape == (8, 4, 84, 84) and batch["next_obs"].shape == (8, 4, 84, 84)
        assert batch["rgb"].shape == (8, 84, 84, 1)  # not an observation field: as stored
        with pytest.raises(expstore.SchemaError, match="stack_axis=0"):
            pool.sample(8, frame_stack=4, stack_axis=-1)  # (84, 84) frames have no channel axis


def test_bad_requests_are_clear_errors(tmp_path, backend):
    path = str(tmp_path / ("pool" + SUFFIX[backend]))
    with expstore.open(path, "w", capacity=16, schema={"state": ((3,), "float32"), "reward": ((), "float32")}) as bare:
        bare.append({"state": np.zeros(3, np.float32), "reward": 0.0})
        with pytest.raises(expstore.SchemaError, match="observation fields"):
            bare.sample(2, frame_stack=4)
    path = str(tmp_path / ("chw" + SUFFIX[backend]))
    schema = {"obs": ((3, 84, 84), "uint8"), "terminated": ((), "bool")}
    with expstore.open(path, "w", capacity=16, schema=schema) as pool:
        pool.append({"obs": np.zeros((3, 84, 84), np.uint8), "terminated": False})
        for bad, message in [({"frame_stack": 0}, "int >= 1"), ({"frame_stack": 2.5}, "int >= 1"),
                             ({"frame_stack": True}, "int >= 1"), ({"frame_stack": 2, "stack_axis": 1}, "stack_axis"),
                             ({"frame_stack": 2, "stack_padding": "edge"}, "'reset'"),
                             ({"frame_stack": 2, "stack_axis": -1}, "CHW")]:
            calls = (lambda o: pool.sample(2, **o), lambda o: pool.read([0], **o),
                     lambda o: next(pool.iter_epoch(2, **o)), lambda o: pool.sample_sequences(2, 2, **o))
            for call in calls:
                with pytest.raises(expstore.ExpstoreError, match=message):
                    call(bad)
        assert pool.read([0], frame_stack=2)["obs"].shape == (1, 2, 3, 84, 84)


def test_readme_frame_stack_example_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"<!-- frame-stack-example -->\s*```python\n(.*?)```", text, re.DOTALL).group(1)
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README frame-stack example", "exec"), namespace)  # the README's code
    assert namespace["batch"]["obs"].shape == (32, 4, 84, 84) == namespace["batch"]["next_obs"].shape
    frames = namespace["frames"]
    assert np.array_equal(namespace["first"], np.stack([np.zeros((84, 84), np.uint8)] * 3 + [frames[0]]))
    for i, step in enumerate(namespace["batch"]["step_id"]):
        expected = [frames[max(0, step - back)] for back in (3, 2, 1, 0)]
        assert np.array_equal(namespace["batch"]["obs"][i], np.stack(expected))


def _episodes_of_frames(count: int, length: int) -> dict:
    return {"reward": np.zeros(count, np.float32), "terminated": np.arange(count) % length == length - 1,
            "truncated": np.zeros(count, bool)}


def test_ragged_observations_are_refused_before_any_draw(pool_path):
    schema = {"obs": expstore.Field((None,), "int32"), "reward": ((), "float32"), "terminated": ((), "bool"),
              "truncated": ((), "bool")}
    with expstore.open(pool_path, "w", capacity=64, schema=schema, heap_bytes=1 << 16) as pool:
        pool.extend({"obs": [np.arange(i % 4, dtype=np.int32) + 10 * i for i in range(20)],
                     **_episodes_of_frames(20, 5)})
        calls = (lambda: pool.sample(4, rng=0, frame_stack=4), lambda: pool.read([10], frame_stack=4),
                 lambda: pool.sample(4, rng=0, frame_stack=4, ragged="list"),
                 lambda: pool.episode(1, frame_stack=2), lambda: next(pool.iter_epoch(4, frame_stack=4)),
                 lambda: pool.sample_sequences(2, 3, frame_stack=2))
        for call in calls:
            with pytest.raises(expstore.SchemaError, match=r"fixed-shape frames.*'obs' of shape \(None,\)"):
                call()
        assert pool.sample(4, rng=0)["obs_length"].shape == (4,)  # without frame_stack: as stored
    pytest.importorskip("torch")
    from expstore.integrations.torch_feed import PoolDataset

    with pytest.raises(expstore.SchemaError, match="fixed-shape frames"):
        PoolDataset(pool_path, frame_stack=4)


def test_ragged_observations_beside_frames_come_back_unstacked(pool_path):
    schema = {"obs": expstore.Field((3, 3), "uint8", codec="zstd"), "obs_instruction": expstore.Field((None,), "int32"),
              "reward": ((), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}
    frames = np.arange(20 * 9, dtype=np.uint8).reshape(20, 3, 3)
    with expstore.open(pool_path, "w", capacity=64, schema=schema) as pool:
        pool.extend({"obs": frames, "obs_instruction": [np.full(i % 3 + 1, i, np.int32) for i in range(20)],
                     **_episodes_of_frames(20, 5)})
        batch = pool.sample(8, rng=0, frame_stack=2, ragged="list")
    for k, step in enumerate(batch["step_id"].tolist()):
        previous = step - 1 if step % 5 else step  # "reset" padding repeats the episode's first frame
        assert np.array_equal(batch["obs"][k], frames[[previous, step]])
        assert batch["obs_instruction"][k].tolist() == [step] * (step % 3 + 1)


def test_compressed_frames_stack_as_raw_ones(tmp_path, backend):
    suffix = SUFFIX[backend]
    frames = np.random.default_rng(3).integers(0, 255, (30, 6, 6), np.uint8)
    stacks = {}
    for codec in (None, "zstd", "lz4"):
        schema = {"obs": expstore.Field((6, 6), "uint8", codec=codec), "reward": ((), "float32"),
                  "terminated": ((), "bool"), "truncated": ((), "bool")}
        with expstore.open(str(tmp_path / f"{codec}{suffix}"), "w", capacity=64, schema=schema) as pool:
            pool.extend({"obs": frames, **_episodes_of_frames(30, 10)})
            stacks[codec] = pool.sample(16, rng=0, frame_stack=4)
    assert stacks[None]["obs"].shape == (16, 4, 6, 6)
    for codec in ("zstd", "lz4"):
        assert np.array_equal(stacks[codec]["step_id"], stacks[None]["step_id"])
        assert np.array_equal(stacks[codec]["obs"], stacks[None]["obs"])
