"""expstore against the replay buffers people use today, side by side, on the same data.

Every (system, workload) pair runs in its own process, one after another, so that peak RSS is
per system and every system sees the same machine; reopening runs in further fresh processes,
with the files in the page cache (hot) and evicted with posix_fadvise(DONTNEED) (cold). Then a
pool several times a memory budget is sampled by a process whose memory is capped. Prints
Markdown: one table per workload, ratios against raw memmap and against each peer, targets.

    pip install -e ".[bench]"
    python tools/bench_peers.py                       # the published run (about 15 minutes)
    python tools/bench_peers.py --quick               # smaller pools, shorter budgets
    python tools/bench_peers.py --systems numpy,memmap,expstore-hdf5 --workloads pendulum
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc
import peer_report
from peer_systems import PACKAGES, SYSTEMS

WORKLOADS = {"pendulum": (bc.PENDULUM, 1_000_000), "atari": (bc.ATARI, 100_000)}
EXTEND_ROWS = 1000
SOURCE_ROWS = {"pendulum": 20_000, "atari": 2_000}
COLD_VARIANTS = {"memmap": ["", "random"], "expstore-hdf5": ["", "cold_reads=off"], "expstore-zarr": [""]}
ATARI_ONLY = {"expstore-hdf5-derived-next-obs"}


# ---------------------------------------------------------------------- data
def source_rows(workload: str, schema: dict) -> dict[str, np.ndarray]:
    n_rows = SOURCE_ROWS[workload]
    if workload != "atari":
        return bc.make_rows(schema, n_rows, seed=1)
    rows = bc.make_rows({k: v for k, v in schema.items() if "obs" not in k}, n_rows, seed=1)
    frames = atari_frames(n_rows + 1)
    rows.update(obs=frames[:-1], next_obs=frames[1:])
    return {name: rows[name] for name in schema}


def atari_frames(n_frames: int) -> np.ndarray:
    """Frames that compress like games do: a textured playfield, a moving sprite, 2% noise."""
    rng = np.random.default_rng(2)
    playfield = (rng.integers(0, 4, (84, 84)) * 40).astype(np.uint8)
    frames = np.repeat(playfield[None], n_frames, axis=0)
    for i in range(n_frames):
        x, y = (3 * i) % 72, (7 * i) % 72
        frames[i, y:y + 12, x:x + 12] = 255
    noise = rng.random(frames.shape) < 0.02
    frames[noise] = rng.integers(0, 256, int(noise.sum()), dtype=np.uint8)
    return frames


def system_schema(system: str, workload: str) -> tuple[dict, int]:
    schema, capacity = WORKLOADS[workload]
    return schema, capacity  # a pool deriving next_obs is given it too, and keeps the final ones


# ---------------------------------------------------------------------- one system, in its own process
def run_system(system_name: str, workload: str, directory: str, args) -> dict:
    schema, capacity = system_schema(system_name, workload)
    capacity = args.capacity.get(workload, capacity)
    rows = source_rows(workload, schema)
    batches = [{k: v[i:i + EXTEND_ROWS] for k, v in rows.items()} for i in range(0, len(rows["reward"]), EXTEND_ROWS)]
    singles = bc.transitions(rows, len(rows["reward"]))
    start = time.perf_counter()
    system = SYSTEMS[system_name](schema, capacity, directory)
    result = {"create_s": time.perf_counter() - start, "rss_after_create_mb": bc.peak_rss_mb()}
    result["extend_fill"] = timed_calls(system.extend, batches, capacity // EXTEND_ROWS, args.budget_s,
                                        finish=True) * EXTEND_ROWS
    result["append"] = timed_calls(system.append, singles, args.appends, args.budget_s)
    result["extend"] = timed_calls(system.extend, batches, 10**9, args.budget_s / 2) * EXTEND_ROWS
    start = time.perf_counter()
    system.save()
    result["save_s"] = time.perf_counter() - start
    for n_rows in (32, 256):
        system.sample(n_rows)
        result[f"sample{n_rows}"] = timed_calls(system.sample, [n_rows], 10**9, args.budget_s)
    result["peak_rss_mb"] = bc.peak_rss_mb()
    system.close()
    result["disk_mb"] = sum(bc.disk_nbytes(os.path.join(directory, f)) for f in os.listdir(directory)) / 1e6
    result["row_nbytes"] = bc.row_nbytes(schema)
    return result


def timed_calls(method, items: list, max_calls: int, budget_s: float, finish: bool = False) -> float:
    """Calls/s over up to ``max_calls`` calls or ``budget_s``; ``finish`` makes the remaining
    calls untimed (to fill a pool whatever the budget)."""
    calls, start = 0, time.perf_counter()
    deadline = start + budget_s
    while calls < max_calls:
        method(items[calls % len(items)])
        calls += 1
        if calls % 8 == 0 and time.perf_counter() > deadline:
            break
    per_s = calls / (time.perf_counter() - start)
    if finish:
        for i in range(calls, max_calls):
            method(items[i % len(items)])
    return per_s


def reopen_system(system_name: str, workload: str, directory: str, variant: str, cold_batches: int, args) -> dict:
    schema, capacity = system_schema(system_name, workload)
    capacity = args.capacity.get(workload, capacity)
    cls = SYSTEMS[system_name]
    for module in (*cls.modules, "numpy.random"):  # numpy.random loads lazily: an import, not a reopen
        importlib.import_module(module)
    start = time.perf_counter()
    system = cls.reopen(schema, capacity, directory, variant)
    system.sample(256)
    result = {"reopen_s": time.perf_counter() - start}
    if cold_batches:
        start = time.perf_counter()
        for _ in range(cold_batches):
            system.sample(256)
        result["cold_rate"] = cold_batches / (time.perf_counter() - start)
    result["peak_rss_mb"] = bc.peak_rss_mb()
    system.close()
    return result


# ---------------------------------------------------------------------- orchestration
def child(mode: str, system: str, workload: str, directory: str, args, variant: str = "", cold: int = 0,
          prefix: list[str] | None = None) -> dict:
    command = [sys.executable, os.path.abspath(__file__), f"--{mode}", system, workload, directory,
               "--budget-s", str(args.budget_s), "--appends", str(args.appends),
               "--capacity-json", json.dumps(args.capacity), "--torch-threads", str(args.torch_threads),
               "--variant", variant, "--cold-batches", str(cold)]
    if args.quiet_wait:
        bc.wait_for_quiet(args.quiet_wait)
    busy, own, start = bc.cpu_busy_s(), bc.children_cpu_s(), time.monotonic()
    done = subprocess.run((prefix or []) + command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:200]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # CPU the rest of the machine used meanwhile: a busy machine explains an outlier
    other_s = (bc.cpu_busy_s() - busy) - (bc.children_cpu_s() - own)
    result["other_load_cores"] = max(0.0, other_s / (time.monotonic() - start))
    return result


def bench_pair(system: str, workload: str, args) -> dict:
    directory = tempfile.mkdtemp(prefix=f"peer-{system}-", dir=args.dir)
    try:
        result = child("run", system, workload, directory, args)
        if "error" in result:
            return result
        hot = [child("reopen", system, workload, directory, args) for _ in range(args.repeats)]
        result["reopen_hot_s"] = statistics.median(r.get("reopen_s", float("nan")) for r in hot)
        result["reopen_peak_rss_mb"] = max(r.get("peak_rss_mb", 0) for r in hot)
        for variant in COLD_VARIANTS.get(system, [""]):
            bc.evict(directory)
            cold = child("reopen", system, workload, directory, args, variant=variant,
                         cold=args.cold_batches if SYSTEMS[system].disk_backed else 0)
            result[f"cold{':' + variant if variant else ''}"] = cold
        return result
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def import_times(systems: list[str]) -> dict[str, float]:
    times = {}
    for system in systems:
        modules = ", ".join(SYSTEMS[system].modules)
        code = f"import time; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        times[system] = float(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else float("nan")
    return times


def available(system: str) -> str | None:
    """None if the system's packages import, else why not."""
    for package in PACKAGES.get(system, []):
        done = subprocess.run([sys.executable, "-c", f"import {package}"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"{package} is not installed (pip install -e '.[bench]')"
    return None


def main() -> None:
    args = parse_args()
    if args.run or args.reopen:
        name, workload, directory = args.run or args.reopen
        if "torch" in SYSTEMS[name].modules or name == "sb3":
            import torch
            torch.set_num_threads(args.torch_threads)
        result = (run_system(name, workload, directory, args) if args.run else
                  reopen_system(name, workload, directory, args.variant, args.cold_batches, args))
        print(json.dumps(result))
        return
    started = time.time()
    memcpy = bc.memcpy_nbytes_per_s()
    results, skipped = {}, {}
    for workload in args.workloads:
        for system in args.systems:
            if system in ATARI_ONLY and workload != "atari":
                continue
            why = available(system)
            if why:
                skipped[system] = why
                continue
            print(f"running {system} on {workload}", file=sys.stderr, flush=True)
            results[(system, workload)] = bench_pair(system, workload, args)
    import larger_than_ram
    big = larger_than_ram.run(args) if not args.no_larger_than_ram else None
    memcpy_end = bc.memcpy_nbytes_per_s()
    print(peer_report.render(args, results, skipped, (memcpy, memcpy_end), import_times(args.systems), big,
                             time.time() - started))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, from: " + ", ".join(SYSTEMS))
    parser.add_argument("--workloads", default="pendulum,atari")
    parser.add_argument("--quick", action="store_true", help="pendulum 200k and atari 20k rows, short budgets")
    parser.add_argument("--budget-s", type=float, default=4.0, help="seconds per timed measurement")
    parser.add_argument("--appends", type=int, default=50_000, help="single appends per system (or the budget)")
    parser.add_argument("--repeats", type=int, default=3, help="hot reopen processes per system")
    parser.add_argument("--cold-batches", type=int, default=20, help="batches of 256 timed after a cold reopen")
    parser.add_argument("--budget-mb", type=int, default=512, help="memory cap of the larger-than-RAM run")
    parser.add_argument("--pool-mb", type=int, default=0, help="larger-than-RAM pool size (default 4x budget)")
    parser.add_argument("--no-larger-than-ram", action="store_true")
    parser.add_argument("--dir", default=None, help="where pools go (default: the system temp dir)")
    parser.add_argument("--quiet-wait", type=float, default=10.0,
                        help="before each process, wait up to this many seconds for other load to drop")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch threads of the torch-based peers (OpenMP threads stall on a busy machine)")
    parser.add_argument("--run", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--reopen", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    parser.add_argument("--capacity-json", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.systems = args.systems.split(",") if isinstance(args.systems, str) else args.systems
    args.workloads = args.workloads.split(",")
    unknown = [s for s in args.systems if s not in SYSTEMS] + [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown systems or workloads: {unknown}")
    args.capacity = json.loads(args.capacity_json)
    if args.quick and not args.capacity:
        args.capacity = {"pendulum": 200_000, "atari": 20_000}
        args.budget_s, args.appends, args.repeats, args.cold_batches = 1.5, 10_000, 1, 10
        args.quiet_wait = min(args.quiet_wait, 5.0)
        args.budget_mb = min(args.budget_mb, 128)
    return args


if __name__ == "__main__":
    main()
