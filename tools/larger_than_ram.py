"""Sample a pool several times larger than the memory a process may use, with its memory capped.

The cap is a memory cgroup made below this process's own (cgroup v2 ``memory.max`` or v1
``memory.limit_in_bytes``; it counts page cache too, so the sampler really cannot keep the
pool in memory). Where no cgroup can be made (not root, no memory controller), the sampler
runs uncapped and its anonymous RSS is checked against the budget instead: file pages of a
memory map are reclaimable cache, anonymous memory is what an OOM killer counts.

Used by bench_peers.py; ``python tools/larger_than_ram.py`` runs it alone, and
``python tools/larger_than_ram.py --sample POOL SECONDS MODE`` is the capped child.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc

SCHEMA = bc.without_next_obs(bc.ATARI)  # 7 KB rows, the frame-stacking layout of pixel agents
SAMPLE_SECONDS = 8.0
# "random" is the reference of issue 7: a plain gather (no prefetch) from mappings advised
# MADV_RANDOM, so that a fault reads its own page and not megabytes of read-around.
MODES = ("auto", "off", "random")
MAX_BATCHES = 3000


def run(args) -> dict:
    """Build the pool, sample it in capped children (cold reads auto and off), report."""
    budget = args.budget_mb * 2**20
    pool_nbytes = (args.pool_mb or 4 * args.budget_mb) * 2**20
    rows = pool_nbytes // bc.row_nbytes(SCHEMA)
    directory = tempfile.mkdtemp(prefix="expstore-big-", dir=args.dir)
    try:
        path = os.path.join(directory, "big.h5")
        build(path, rows)
        results = {"rows": int(rows), "pool_mb": bc.disk_nbytes(path) / 2**20, "budget_mb": args.budget_mb}
        for mode in MODES:
            bc.evict(path)
            results[mode] = capped_child(path, mode, budget)
        return results
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def build(path: str, rows: int) -> None:
    import expstore
    source = bc.make_rows({k: v for k, v in SCHEMA.items() if k != "obs"}, 2000, seed=4)
    source["obs"] = np.random.default_rng(5).integers(0, 256, (2000, 84, 84), dtype=np.uint8)
    with expstore.open(path, "w", capacity=int(rows), schema=SCHEMA, fsync=False) as pool:
        for start in range(0, rows, 2000):
            take = min(2000, rows - start)
            pool.extend({name: column[:take] for name, column in source.items()})


def capped_child(path: str, mode: str, budget_nbytes: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--sample", path, str(SAMPLE_SECONDS), mode]
    cgroup = make_cgroup(budget_nbytes)
    if cgroup is None:
        result = _run(command)
        result["cap"] = "none (no memory cgroup could be made): anonymous RSS checked against the budget"
        result["within_budget"] = result.get("rss_anon_mb", 1e9) * 2**20 <= budget_nbytes
        return result
    directory, version = cgroup
    try:
        result = _run(["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', directory] + command)
        result["cap"] = f"cgroup {version} memory limit {budget_nbytes >> 20} MiB"
        peak = _read_int(os.path.join(directory, "memory.peak" if version == "v2" else "memory.max_usage_in_bytes"))
        result["cgroup_peak_mb"] = peak / 2**20 if peak is not None else None
        result["within_budget"] = "error" not in result and (peak is None or peak <= budget_nbytes)
        return result
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def _run(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        killed = done.returncode in (-9, 137)
        return {"error": "killed (out of memory)" if killed else (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_cgroup(limit_nbytes: int) -> tuple[str, str] | None:
    """A fresh memory cgroup below this process's own, limited to ``limit_nbytes``."""
    try:
        with open("/proc/self/cgroup") as cgroups:
            lines = [line.strip().split(":", 2) for line in cgroups if line.strip()]
    except OSError:
        return None
    name = f"expstore-bench-{os.getpid()}"
    for _, controllers, path in lines:
        if "memory" in controllers.split(","):
            candidate = (f"/sys/fs/cgroup/memory{path}/{name}", "memory.limit_in_bytes", "v1")
        elif controllers == "" and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            candidate = (f"/sys/fs/cgroup{path}/{name}", "memory.max", "v2")
        else:
            continue
        directory, limit_file, version = candidate
        try:
            os.mkdir(directory)
        except OSError:
            continue
        try:
            with open(os.path.join(directory, limit_file), "w") as limit:
                limit.write(str(limit_nbytes))
            return directory, version
        except OSError:
            os.rmdir(directory)
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def sample_child(path: str, seconds: float, mode: str) -> dict:
    import expstore
    start = time.perf_counter()
    pool = expstore.open(path, "r")
    pool.cold_reads.mode = "off" if mode == "random" else mode
    if mode == "random":
        for view in pool._views:  # the store's own mappings (a benchmark may look inside)
            view.base.madvise(mmap.MADV_RANDOM)
    rng = np.random.default_rng(0)
    batches = 0
    while batches < MAX_BATCHES and time.perf_counter() - start < seconds:
        pool.sample(256, rng=rng)
        batches += 1
    elapsed = time.perf_counter() - start
    status = _proc_status()
    result = {"batches": batches, "batches_per_s": batches / elapsed, "mode": mode,
              "active": pool.cold_reads.active, "peak_rss_mb": bc.peak_rss_mb(),
              "rss_anon_mb": status.get("RssAnon", 0) / 1024, "rss_file_mb": status.get("RssFile", 0) / 1024}
    pool.close()
    return result


def _proc_status() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                values[key] = int(rest.split()[0])
    return values


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--sample":
        print(json.dumps(sample_child(sys.argv[2], float(sys.argv[3]), sys.argv[4])))
        return
    import argparse

    import peer_report
    parser = argparse.ArgumentParser(description="the larger-than-RAM run of bench_peers.py, alone")
    parser.add_argument("--budget-mb", type=int, default=512)
    parser.add_argument("--pool-mb", type=int, default=0, help="default: 4x the budget")
    parser.add_argument("--dir", default=None)
    print("\n".join(peer_report.larger_than_ram_table(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
