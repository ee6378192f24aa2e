"""A pool several times larger than the memory a process may use reads and samples in slices.

A ~470 MiB pool (wide rows of 1024 float32) is read end to end in slices and sampled many times
by a child process whose memory is capped two ways:

* ``RLIMIT_DATA`` (always): the kernel refuses the child's heap and other private writable
  memory beyond 128 MiB, a quarter of the pool. Shared read-only file mappings do not count,
  so reading through the memory maps is allowed and loading a whole field is not.
* a cgroup v2 ``memory.max`` (where this host offers the memory controller to us): the same
  run in a cgroup whose whole memory, page cache included, is capped below the pool size;
  clean page-cache pages are reclaimed, anonymous memory would end in the OOM killer.

In both the child also tracks its peak ``RssAnon`` (anonymous memory: file-backed mapped pages
are page cache, not process memory) and the test bounds its growth while reading.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import BACKENDS

import expstore

WIDTH = 1024                      # float32 per row: 4 KiB rows
ROWS = 120_000                    # 469 MiB of obs
BATCH_ROWS = 8_192
DATA_LIMIT_NBYTES = 128 << 20     # RLIMIT_DATA of the child: a quarter of the pool
ANON_GROWTH_LIMIT_NBYTES = 64 << 20
CGROUP_LIMIT_NBYTES = 160 << 20

CHILD = r"""
import json, os, resource, sys

path, data_limit, slice_rows, n_batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))

import numpy as np
import expstore


def rss_anon_nbytes():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


# Proof that the cap bites: a copy of the whole obs field does not fit in it.
try:
    np.empty(data_limit, dtype=np.uint8).fill(1)
    whole_copy_refused = False
except MemoryError:
    whole_copy_refused = True

with expstore.open(path, "r") as pool:
    base = peak = rss_anon_nbytes()
    rows_read = 0
    for start in range(0, len(pool), slice_rows):
        batch = pool[start:start + slice_rows]
        steps = batch["step_id"].astype(np.float32)
        if not (np.array_equal(batch["obs"][:, 0], steps) and np.array_equal(batch["obs"][:, -1], steps)
                and np.array_equal(batch["reward"], -steps)):
            raise SystemExit(f"wrong rows in slice at {start}")
        rows_read += len(steps)
        peak = max(peak, rss_anon_nbytes())
        del batch, steps
    for seed in range(n_batches):
        batch = pool.sample(256, rng=seed)
        if not (batch["obs"] == batch["step_id"][:, None].astype(np.float32)).all():
            raise SystemExit(f"wrong rows in sample {seed}")
        peak = max(peak, rss_anon_nbytes())
        del batch
    print(json.dumps({"rows_read": rows_read, "pool_len": len(pool), "base": base, "peak": peak,
                      "whole_copy_refused": whole_copy_refused}))
"""


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def big_pool(request, tmp_path_factory):
    """A full pool of ROWS rows whose obs row ``s`` is ``s`` repeated; removed afterwards."""
    backend = request.param
    path = str(tmp_path_factory.mktemp("big") / f"pool{BACKENDS[backend]}")
    schema = {"obs": ((WIDTH,), "float32"), "reward": ((), "float32")}
    with expstore.open(path, "w", capacity=ROWS, schema=schema, fsync=False, commit_every=BATCH_ROWS) as pool:
        for start in range(0, ROWS, BATCH_ROWS):
            steps = np.arange(start, min(start + BATCH_ROWS, ROWS), dtype=np.float32)
            pool.extend({"obs": np.broadcast_to(steps[:, None], (len(steps), WIDTH)), "reward": -steps})
        obs_nbytes = ROWS * WIDTH * 4
    yield path, obs_nbytes
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def run_reader(path: str, preexec_fn=None) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    args = [path, str(DATA_LIMIT_NBYTES), "2048", "300"]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                          timeout=300, env=env, preexec_fn=preexec_fn)
    assert done.returncode == 0, f"reader child failed ({done.returncode}): {done.stderr[-3000:]}"
    return json.loads(done.stdout)


def check_report(report: dict, obs_nbytes: int) -> None:
    assert report["whole_copy_refused"], "the memory cap did not bite: the test would prove nothing"
    assert obs_nbytes >= 3 * DATA_LIMIT_NBYTES
    assert report["rows_read"] == report["pool_len"] == ROWS
    growth = report["peak"] - report["base"]
    assert growth < ANON_GROWTH_LIMIT_NBYTES, f"anonymous memory grew by {growth / 2**20:.1f} MiB while reading"


def test_reads_and_samples_within_a_data_limit(big_pool):
    path, obs_nbytes = big_pool
    check_report(run_reader(path), obs_nbytes)


# ---------------------------------------------------------------------------- cgroup v2 variant
def _cgroup_v2_parent() -> str:
    """The cgroup v2 directory of this process, if a child cgroup with memory.max can live there."""
    mounts = [line.split()[1] for line in open("/proc/self/mounts") if line.split()[2] == "cgroup2"]
    own = [line.strip()[3:] for line in open("/proc/self/cgroup") if line.startswith("0::")]
    if not mounts or not own:
        pytest.skip("no cgroup v2 hierarchy on this host")
    parent = os.path.join(mounts[0], own[0].lstrip("/"))
    try:
        controllers = open(os.path.join(parent, "cgroup.controllers")).read().split()
    except OSError as exc:
        pytest.skip(f"cannot read the cgroup v2 controllers of {parent}: {exc}")
    if "memory" not in controllers:
        pytest.skip(f"the cgroup v2 memory controller is not available here (controllers: {controllers or 'none'})")
    if not os.access(parent, os.W_OK):
        pytest.skip(f"no permission to create a cgroup under {parent}")
    return parent


@pytest.fixture
def memory_cgroup():
    parent = _cgroup_v2_parent()
    path = os.path.join(parent, f"expstore-test-{os.getpid()}")
    try:
        os.mkdir(path)
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup under {parent}: {exc}")
    try:
        if not os.path.exists(os.path.join(path, "memory.max")):
            pytest.skip(f"memory is not enabled in {parent}/cgroup.subtree_control")
        with open(os.path.join(path, "memory.max"), "w") as fh:
            fh.write(str(CGROUP_LIMIT_NBYTES))
        yield path
    finally:
        os.rmdir(path)


def _drop_from_page_cache(path: str) -> None:
    files = [path] if os.path.isfile(path) else [os.path.join(root, name)
                                                 for root, _dirs, names in os.walk(path) for name in names]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _oom_kills(cgroup: str) -> int:
    for line in open(os.path.join(cgroup, "memory.events")):
        name, value = line.split()
        if name == "oom_kill":
            return int(value)
    return 0


def test_reads_and_samples_within_a_cgroup_memory_limit(big_pool, memory_cgroup):
    path, obs_nbytes = big_pool
    procs = os.path.join(memory_cgroup, "cgroup.procs")

    def join_cgroup():
        with open(procs, "w") as fh:
            fh.write(str(os.getpid()))

    _drop_from_page_cache(path)  # cached pages stay charged to our cgroup: make the child read them
    report = run_reader(path, preexec_fn=join_cgroup)
    check_report(report, obs_nbytes)
    assert obs_nbytes >= 2 * CGROUP_LIMIT_NBYTES
    assert _oom_kills(memory_cgroup) == 0

