"""A pool several times larger than the memory a process may use reads and samples in slices.

A ~470 MiB pool (wide rows of 1024 float32) is read end to end in slices and sampled many times
by a child process whose memory is capped two ways:

* ``RLIMIT_DATA`` (always): the kernel refuses the child's heap and other private writable
  memory beyond 128 MiB, a quarter of the pool. Shared read-only file mappings do not count,
  so reading through the memory maps is allowed and loading a whole field is not.
* a memory cgroup (cgroup v2 ``memory.max`` where this host offers v2's memory controller,
  else cgroup v1 ``memory.limit_in_bytes``, as tools/larger_than_ram.py does; skipped only
  where neither can be made): the same run in a cgroup whose whole memory, page cache
  included, is capped below the pool size; clean page-cache pages are reclaimed, anonymous
  memory would end in the OOM killer.

In both the child also tracks its peak ``RssAnon`` (anonymous memory: file-backed mapped pages
are page cache, not process memory) and the test bounds its growth while reading.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

import expstore
from tests.helpers.pools import BACKENDS, drop_from_page_cache

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
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=False,
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


# ---------------------------------------------------------------------------- cgroup variant
@dataclass(frozen=True)
class MemoryCgroup:
    """A memory cgroup made for one test: v2 (``memory.max``) or v1 (``memory.limit_in_bytes``)."""

    version: str
    path: str

    @property
    def limit_file(self) -> str:
        return os.path.join(self.path, "memory.max" if self.version == "v2" else "memory.limit_in_bytes")

    def oom_kills(self) -> int:
        """OOM kills inside the cgroup (v2 memory.events, v1 memory.oom_control)."""
        events = "memory.events" if self.version == "v2" else "memory.oom_control"
        counts = dict(line.split() for line in _read(os.path.join(self.path, events)).splitlines())
        return int(counts.get("oom_kill", 0))

    def peak_nbytes(self) -> int | None:
        """The most memory (page cache included) the cgroup was charged, where the kernel tells."""
        name = "memory.peak" if self.version == "v2" else "memory.max_usage_in_bytes"
        try:
            return int(_read(os.path.join(self.path, name)))
        except (OSError, ValueError):
            return None


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _mounts():
    """(root, mount point, fs type, super options) of each mount, from /proc/self/mountinfo."""
    for line in _read("/proc/self/mountinfo").splitlines():
        fields, _, fs = line.partition(" - ")
        fields, fs = fields.split(), fs.split()
        yield fields[3], fields[4], fs[0], fs[2].split(",")


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup per hierarchy: "" for the v2 one, else its v1 controllers."""
    own = {}
    for line in _read("/proc/self/cgroup").splitlines():
        _id, controllers, path = line.split(":", 2)
        own[controllers] = path
    return own


def _directory(mount_root: str, mount_point: str, cgroup: str) -> str | None:
    """Where ``cgroup`` appears under a mount of its hierarchy (None if the mount does not reach it)."""
    relative = os.path.relpath(cgroup, mount_root)
    return None if relative.startswith("..") else os.path.normpath(os.path.join(mount_point, relative))


def _v2_parent(own: dict[str, str]) -> tuple[str | None, str]:
    """This process's cgroup v2 directory if its memory controller is offered, else a reason."""
    mounts = [(root, point) for root, point, fs_type, _options in _mounts() if fs_type == "cgroup2"]
    if not mounts or "" not in own:
        return None, "no cgroup v2 hierarchy"
    parent = _directory(*mounts[0], own[""])
    try:
        controllers = _read(os.path.join(parent, "cgroup.controllers")).split() if parent else []
    except OSError as exc:
        return None, f"cgroup v2 controllers unreadable ({exc})"
    if "memory" not in controllers:
        return None, f"no cgroup v2 memory controller (controllers: {controllers or 'none'})"
    return parent, ""


def _v1_parent(own: dict[str, str]) -> tuple[str | None, str]:
    """This process's cgroup v1 memory directory, else a reason."""
    cgroup = next((path for controllers, path in own.items() if "memory" in controllers.split(",")), None)
    mounts = [(root, point) for root, point, fs_type, options in _mounts()
              if fs_type == "cgroup" and "memory" in options]
    if cgroup is None or not mounts:
        return None, "no cgroup v1 memory hierarchy"
    parent = _directory(*mounts[0], cgroup)
    if parent is None or not os.path.isdir(parent):
        return None, f"cgroup v1 memory cgroup {cgroup} not under its mount {mounts[0][1]}"
    return parent, ""


def _make_memory_cgroup(limit_nbytes: int) -> MemoryCgroup:
    """A fresh memory cgroup below this process's own: v2 where it offers memory, else v1; or skip."""
    own = _own_cgroups()
    reasons = []
    for version, find in (("v2", _v2_parent), ("v1", _v1_parent)):
        parent, reason = find(own)
        if parent is None:
            reasons.append(reason)
            continue
        cgroup = MemoryCgroup(version, os.path.join(parent, f"expstore-test-{os.getpid()}"))
        try:
            os.mkdir(cgroup.path)
        except OSError as exc:
            reasons.append(f"cannot create a cgroup {version} under {parent}: {exc}")
            continue
        try:
            with open(cgroup.limit_file, "w") as fh:
                fh.write(str(limit_nbytes))
            return cgroup
        except OSError as exc:
            os.rmdir(cgroup.path)
            reasons.append(f"cannot set {os.path.basename(cgroup.limit_file)} in a cgroup {version}: {exc}")
    pytest.skip("no memory cgroup can be made here: " + "; ".join(reasons))


@pytest.fixture
def memory_cgroup():
    cgroup = _make_memory_cgroup(CGROUP_LIMIT_NBYTES)
    try:
        yield cgroup
    finally:
        os.rmdir(cgroup.path)


def test_reads_and_samples_within_a_cgroup_memory_limit(big_pool, memory_cgroup):
    path, obs_nbytes = big_pool
    procs = os.path.join(memory_cgroup.path, "cgroup.procs")

    def join_cgroup():
        with open(procs, "w") as fh:
            fh.write(str(os.getpid()))

    drop_from_page_cache(path)  # cached pages stay charged to our cgroup: make the child read them
    report = run_reader(path, preexec_fn=join_cgroup)
    check_report(report, obs_nbytes)
    assert obs_nbytes >= 2 * CGROUP_LIMIT_NBYTES
    assert memory_cgroup.oom_kills() == 0
    peak = memory_cgroup.peak_nbytes()
    assert peak is None or peak <= CGROUP_LIMIT_NBYTES, f"cgroup {memory_cgroup.version} peak {peak} over its limit"
