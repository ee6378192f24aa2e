"""tune_allocator: glibc keeps the pages of large batches, so a batch no longer faults them in anew."""

import json
import platform
import subprocess
import sys

import pytest

import expstore
from expstore.core import allocator

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="tune_allocator sets glibc's malloc; this process has another allocator")

# Samples a zstd frame pool deriving next_obs and prints the page faults per batch, after warm-up.
_FAULTS_PER_BATCH = """
import json, os, resource, sys, tempfile
import numpy as np, expstore
import ctypes
# glibc's default mmap threshold, made static: glibc's own adjustment of it follows the process's
# history of frees, so an untuned process faults its batches in on some runs and not on others.
ctypes.CDLL(None).mallopt(-3, 128 << 10)
tuned = expstore.tune_allocator() if sys.argv[1] == "tuned" else None
rng = np.random.default_rng(0)
frames = (rng.integers(0, 4, (2000, 84, 84)) * 60).astype(np.uint8)
frames[:, 20:60] = 0
flags = np.zeros(2000, bool)
schema = {"obs": expstore.Field((84, 84), "uint8", codec="zstd"), "action": ((), "int64"),
          "reward": ((), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}
with tempfile.TemporaryDirectory() as directory, expstore.open(
        os.path.join(directory, "frames.h5"), "w", capacity=2000, schema=schema, derive_next_obs=True,
        fsync=False) as pool:
    pool.extend({"obs": frames, "action": np.zeros(2000, np.int64), "reward": np.zeros(2000, np.float32),
                 "terminated": flags, "truncated": flags})
    for _ in range(10):
        pool.sample(256, rng=rng)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        pool.sample(256, rng=rng)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
print(json.dumps({"tuned": tuned, "faults": faults}))
"""


def _faults_per_batch(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _FAULTS_PER_BATCH, mode], capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc_only
def test_a_tuned_process_samples_frames_without_faulting_their_pages_in_each_batch():
    """About 1,000 faults per batch of 256 frame pairs (3.8 MB of fresh pages) at glibc's default
    threshold; a handful once tuned. (Left to adjust its threshold itself, glibc faults the pages
    in on some runs and keeps them on others: 1,094 and 0.2 faults per batch were both measured.)"""
    plain, tuned = _faults_per_batch("plain"), _faults_per_batch("tuned")
    assert tuned["tuned"] is True
    assert plain["faults"] > 200  # the batch's pages, faulted in anew
    assert tuned["faults"] * 10 < plain["faults"]


def test_without_glibc_it_changes_nothing_and_returns_false(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: None)
    assert expstore.tune_allocator() is False


def test_a_setting_glibc_refuses_returns_false(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: lambda option, value: calls.append(option) or 0)
    assert expstore.tune_allocator() is False
    assert calls == [allocator._M_MMAP_THRESHOLD]


@pytest.mark.parametrize("kwargs", [{"mmap_threshold": 0}, {"mmap_threshold": 64 << 20},
                                    {"mmap_threshold": 1.5e6}, {"mmap_threshold": True},
                                    {"trim_threshold": -1}, {"trim_threshold": "64M"}])
def test_a_bad_threshold_is_one_error_and_sets_nothing(monkeypatch, kwargs):
    calls = []
    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: lambda option, value: calls.append(option) or 1)
    with pytest.raises(expstore.InvalidArgumentError, match="must be an int of bytes"):
        expstore.tune_allocator(**kwargs)
    assert calls == []


_KEEPS = "import expstore, sys; from expstore.core.allocator import keeps_large_blocks; " \
         "before = keeps_large_blocks(); expstore.tune_allocator(*map(int, sys.argv[1:])); " \
         "print(before, keeps_large_blocks())"


@glibc_only
@pytest.mark.parametrize(("args", "env", "expected"), [
    ([], {}, "False True"),
    (["4096", "8192"], {}, "False False"),  # thresholds too small to keep a batch's blocks
    ([], {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "67108864"}, "True True"),
    ([], {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864"},
     "True True"),
    ([], {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}, "False True"),  # glibc's defaults
    ([], {"MALLOC_MMAP_THRESHOLD_": "lots", "MALLOC_TRIM_THRESHOLD_": "67108864"}, "False True"),
])
def test_keeps_large_blocks_says_whether_the_allocator_was_tuned(args, env, expected):
    """The batch decoder asks it: its threads gain only where the output's pages fault in."""
    import os

    done = subprocess.run([sys.executable, "-c", _KEEPS, *args], capture_output=True, text=True, timeout=60,
                          check=True, env={**os.environ, **env})
    assert done.stdout.split() == expected.split()


def test_a_refused_tune_leaves_the_answer_as_it_was(monkeypatch):
    monkeypatch.setattr(allocator, "_tuned", True)
    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: lambda option, value: 0)
    assert expstore.tune_allocator(mmap_threshold=4096) is False
    assert allocator.keeps_large_blocks() is True
