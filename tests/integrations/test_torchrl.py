"""PoolStorage under TorchRL's own replay buffers, samplers and usage patterns, both backends."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchrl")
from tensordict import TensorDict
from torchrl.data import (
    PrioritizedSampler,
    ReplayBuffer,
    SliceSampler,
    TensorDictReplayBuffer,
)
from torchrl.data.replay_buffers.samplers import prioritized as torchrl_prioritized

import expstore
from expstore.integrations.torchrl_storage import PoolStorage


def transitions(first: int, count: int) -> TensorDict:
    """TensorDict rows whose values derive from their number, with nested ``next`` keys."""
    base = torch.arange(first, first + count, dtype=torch.float32)
    return TensorDict({
        "observation": torch.stack([base, base + 0.5], -1),
        "action": base[:, None] * 2,
        ("next", "observation"): torch.stack([base + 1, base + 1.5], -1),
        ("next", "reward"): -base[:, None],
        ("next", "done"): (torch.arange(first, first + count) % 10 == 9)[:, None],
    }, batch_size=[count])


class _NumpySegmentTree:
    """Stand-in for TorchRL's compiled segment trees, used when its extension does not load."""

    def __init__(self, size: int, reduce) -> None:
        self.values = np.zeros(size, np.float64) if reduce is np.sum else np.full(size, np.inf)
        self.reduce = reduce

    def __getitem__(self, index):
        return torch.as_tensor(self.values[np.asarray(index)])

    def __setitem__(self, index, value) -> None:
        index = torch.as_tensor(index).reshape(-1).numpy()
        self.values[index] = torch.as_tensor(value, dtype=torch.float64).reshape(-1).expand(len(index)).numpy()

    def query(self, start, stop):
        return float(self.reduce(self.values[int(start):int(stop)]))

    def scan_lower_bound(self, mass):
        cumulative = np.cumsum(self.values)
        found = np.searchsorted(cumulative, torch.as_tensor(mass).numpy(), side="right")
        return torch.as_tensor(np.minimum(found, len(self.values) - 1))


@pytest.fixture
def segment_trees(monkeypatch):
    """PrioritizedSampler needs TorchRL's C++ trees; released TorchRL builds lag new torch releases."""
    if torchrl_prioritized.SumSegmentTreeFp32 is not None:
        return
    for precision in ("Fp32", "Fp64"):
        monkeypatch.setattr(torchrl_prioritized, f"SumSegmentTree{precision}",
                            lambda size: _NumpySegmentTree(size, np.sum))
        monkeypatch.setattr(torchrl_prioritized, f"MinSegmentTree{precision}",
                            lambda size: _NumpySegmentTree(size, np.min))


def test_replay_buffer_of_tensors_add_extend_sample_len(pool_path):
    rb = ReplayBuffer(storage=PoolStorage(pool_path, max_size=8), batch_size=5)
    assert rb.extend(torch.arange(6)).tolist() == [0, 1, 2, 3, 4, 5]
    assert int(rb.add(torch.tensor(6))) == 6
    assert len(rb) == 7
    sample = rb.sample()
    assert sample.shape == (5,) and set(sample.tolist()) <= set(range(7))
    rb.extend(torch.arange(7, 12))  # wraps: keeps 4..11
    assert len(rb) == 8
    assert sorted(rb[:].tolist()) == list(range(4, 12))
    assert rb[0].item() == 8 and rb[3].item() == 11  # index i holds the newest step with i == step % 8


def test_tensordict_buffer_round_trips_nested_keys(pool_path):
    rb = TensorDictReplayBuffer(storage=PoolStorage(pool_path, max_size=100), batch_size=16)
    rb.extend(transitions(0, 30))
    batch = rb.sample()
    base = batch["action"][:, 0] / 2
    assert torch.equal(batch["observation"][:, 1], base + 0.5)
    assert torch.equal(batch["next", "reward"][:, 0], -base)
    assert torch.equal(batch["index"].to(torch.float32), base)
    assert batch["next", "done"].dtype == torch.bool
    assert set(expstore.open(pool_path).schema) >= {"observation", "next__observation", "next__done"}


def test_prioritized_sampler_follows_updated_priorities(pool_path, segment_trees):
    sampler = PrioritizedSampler(64, alpha=1.0, beta=0.5)
    rb = TensorDictReplayBuffer(storage=PoolStorage(pool_path, max_size=64), sampler=sampler, batch_size=32)
    rb.extend(transitions(0, 40))
    rb.update_priority(torch.arange(40), torch.full((40,), 1e-6))
    rb.update_priority(torch.tensor([17]), torch.tensor([1e3]))
    batch = rb.sample()
    assert (batch["index"] == 17).float().mean() > 0.9
    heavy = batch["index"] == 17
    assert torch.equal(batch["observation"][heavy][:, 0], torch.full((heavy.sum(),), 17.0))
    assert "priority_weight" in batch


def test_slice_sampler_returns_pieces_of_one_trajectory(pool_path):
    sampler = SliceSampler(slice_len=5, end_key=("next", "done"))
    rb = TensorDictReplayBuffer(storage=PoolStorage(pool_path, max_size=100), sampler=sampler, batch_size=20)
    rb.extend(transitions(0, 60))  # trajectories of 10 steps: 0..9, 10..19, ...
    steps = rb.sample()["action"][:, 0].reshape(4, 5) / 2
    assert torch.equal(steps[:, 1:] - steps[:, :-1], torch.ones(4, 4))
    assert torch.equal(steps[:, 0] // 10, steps[:, -1] // 10)


_CONTINUE = """
import sys, torch
from torchrl.data import TensorDictReplayBuffer
from expstore.integrations.torchrl_storage import PoolStorage
sys.path.insert(0, {tests!r})
from test_torchrl import transitions
rb = TensorDictReplayBuffer(storage=PoolStorage({path!r}), batch_size=8)
print("LEN", len(rb))
first = int(rb.sample()["index"].max()) >= 0
index = rb.extend(transitions({first_new}, 20))
print("INDEX", index[0].item(), index[-1].item())
"""


def test_reopened_in_a_new_process_it_continues_the_ring(pool_path, tmp_path):
    storage = PoolStorage(pool_path, max_size=50)
    rb = TensorDictReplayBuffer(storage=storage, batch_size=8)
    rb.extend(transitions(0, 40))
    storage.close()
    script = _CONTINUE.format(tests=str(__import__("pathlib").Path(__file__).parent), path=pool_path, first_new=40)
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, check=False,
                           timeout=120)
    assert child.returncode == 0, child.stderr
    assert "LEN 40" in child.stdout
    assert "INDEX 40 9" in child.stdout  # 40..49 then wraps to 0..9
    rb = TensorDictReplayBuffer(storage=PoolStorage(pool_path), batch_size=8)
    assert len(rb) == 50
    everything = rb[:]
    assert sorted((everything["action"][:, 0] / 2).tolist()) == [float(step) for step in range(10, 60)]
    assert torch.equal(rb[0]["observation"], torch.tensor([50.0, 50.5]))
    assert int(rb.extend(transitions(60, 1))[0]) == 10


def test_priorities_of_a_reopened_pool_start_at_the_default(pool_path, segment_trees):
    storage = PoolStorage(pool_path, max_size=32)
    ReplayBuffer(storage=storage).extend(torch.arange(20))
    storage.close()
    rb = ReplayBuffer(storage=PoolStorage(pool_path), sampler=PrioritizedSampler(32, alpha=0.6, beta=0.4),
                      batch_size=64)
    drawn = set().union(*(rb.sample().tolist() for _ in range(5)))
    assert drawn == set(range(20))  # every old row is drawable (a miss has odds below 1e-6)
    assert int(rb.add(torch.tensor(20))) == 20


def test_state_dict_and_dumps_keep_the_rows_in_the_pool(pool_path, tmp_path):
    storage = PoolStorage(pool_path, max_size=16)
    rb = ReplayBuffer(storage=storage)
    rb.extend(torch.arange(5))
    rb.dumps(tmp_path / "checkpoint")
    assert not list((tmp_path / "checkpoint").rglob("*.memmap"))
    assert storage.state_dict()["path"].endswith(pool_path.rsplit("/", 1)[-1])
    assert len(expstore.open(pool_path)) == 5  # committed by dumps
    rb.loads(tmp_path / "checkpoint")
    assert len(rb) == 5


def test_append_only_pool_refuses_writes_at_other_indices(pool_path):
    storage = PoolStorage(pool_path, max_size=8)
    ReplayBuffer(storage=storage).extend(torch.arange(4))
    with pytest.raises(expstore.InvalidArgumentError, match="append-only"):
        storage[1] = torch.tensor(7)
    with pytest.raises(expstore.InvalidArgumentError, match="not emptied"):
        ReplayBuffer(storage=storage).empty()
    assert storage[:].tolist() == [0, 1, 2, 3]


def test_creation_needs_max_size_and_reopening_checks_it(pool_path):
    with pytest.raises(expstore.InvalidArgumentError, match="max_size"):
        PoolStorage(pool_path)
    storage = PoolStorage(pool_path, max_size=8)
    ReplayBuffer(storage=storage).extend(torch.arange(3))
    storage.close()
    with pytest.raises(expstore.InvalidArgumentError, match="holds 8 rows"):
        PoolStorage(pool_path, max_size=9)


def test_a_reader_samples_what_a_writer_committed(pool_path):
    writer = PoolStorage(pool_path, max_size=32)
    ReplayBuffer(storage=writer).extend(torch.arange(10))
    writer.flush()
    reader = ReplayBuffer(storage=PoolStorage(pool_path, mode="r"), batch_size=6)
    assert len(reader) == 10 and set(reader.sample().tolist()) <= set(range(10))


def test_readme_example_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"<!-- torchrl-example -->\s*```python\n(.*?)```", text, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README torchrl example", "exec"), namespace)
    steps = namespace["batch"]["observation"]
    assert steps.shape == (64, 4)
    assert len(expstore.open(tmp_path / "runs" / "trl_pool.zarr")) == 1000


def pixel_transitions(first: int, count: int) -> TensorDict:
    """Rows of 16x16 uint8 'frames' with nested next frames; values derive from the row number."""
    base = torch.arange(first, first + count)
    frames = ((base[:, None, None] * 7 + torch.arange(256).reshape(16, 16)) % 251).to(torch.uint8)
    return TensorDict({"pixels": frames, "action": base[:, None], ("next", "pixels"): frames + 1,
                       ("next", "reward"): base[:, None].float()}, batch_size=[count])


def test_compressed_fields_sample_the_same_tensors(pool_path):
    compressed_path = pool_path.replace("pool", "compressed")
    buffers = [TensorDictReplayBuffer(storage=PoolStorage(path, max_size=50, codec=codec), batch_size=40)
               for path, codec in ((pool_path, None),
                                   (compressed_path, {"pixels": "zstd", "next__pixels": "lz4"}))]
    for rb in buffers:
        rb.extend(pixel_transitions(0, 70))  # wraps
    schema = buffers[1].storage.pool.schema
    assert (schema["pixels"].codec, schema["next__pixels"].codec, schema["action"].codec) == ("zstd:3", "lz4", None)
    assert buffers[0].storage.pool.schema["pixels"].codec is None
    index = torch.randint(0, 50, (40,), generator=torch.Generator().manual_seed(0))
    plain, packed = (rb.storage.get(index) for rb in buffers)
    for key in (("pixels",), ("next", "pixels"), ("action",), ("next", "reward")):
        assert torch.equal(plain[key], packed[key]), key
    assert torch.equal(packed["pixels"], pixel_transitions(0, 70)["pixels"][20:][(index - 20) % 50])
    for rb in buffers:
        rb.storage.close()
    assert PoolStorage(compressed_path, codec={"pixels": "zstd:3"}).pool.schema["pixels"].codec == "zstd:3"


def test_codecs_that_do_not_fit_are_refused(pool_path):
    with pytest.raises(expstore.ExpstoreError, match="zstd"):
        PoolStorage(pool_path, max_size=10, codec={"pixels": "brotli"})
    with pytest.raises(expstore.InvalidArgumentError, match="mapping"):
        PoolStorage(pool_path, max_size=10, codec="zstd")
    rb = TensorDictReplayBuffer(storage=PoolStorage(pool_path, max_size=10, codec={"pixel": "zstd"}))
    with pytest.raises(expstore.SchemaError, match=r"\['pixel'\].*pixels"):
        rb.extend(pixel_transitions(0, 3))
    assert len(rb) == 0
    rb = TensorDictReplayBuffer(storage=PoolStorage(pool_path.replace("pool", "other"), max_size=10))
    rb.extend(pixel_transitions(0, 3))
    rb.storage.close()
    with pytest.raises(expstore.InvalidArgumentError, match="convert --codec pixels=zstd:3"):
        PoolStorage(pool_path.replace("pool", "other"), codec={"pixels": "zstd"})
