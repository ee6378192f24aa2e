"""Core store benchmark: appends, extends, hot sampling and open time, for both backends.

In one run, on a pendulum-like pool (obs 3 float32, action 1, reward, next_obs 3, two flags):
single-transition appends, 1,000-row extends, uniform samples of 256 from a full pool, each
against in-RAM numpy and a raw ``np.memmap`` doing the same thing to the same arrays; then
open + first sample of a full pool in a fresh process at several sizes. Prints Markdown.

    python tools/bench_core.py                       # the published sizes
    python tools/bench_core.py --rows 200000 --open-rows 100000,1000000 --rounds 3   # quick
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc

import expstore

BACKENDS = {"hdf5": ".h5", "zarr": ".zarr"}
EXTEND_ROWS = 1000
SAMPLE_ROWS = 256
SOURCE_ROWS = 20_000  # distinct rows cycled through by every writer
BLOCKS_PER_ROUND = 10  # write blocks per --rounds, taken in turns by the systems

OPEN_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np, numpy.random, expstore, h5py, zarr  # lazily loaded modules: imports, not the open
t1 = time.perf_counter()
pool = expstore.open(sys.argv[1], "r")
t2 = time.perf_counter()
pool.sample(256, rng=np.random.default_rng(0))
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "open_sample_s": t3 - t1, "rows": len(pool),
                  "from_record": pool.layout.from_record}))
"""


# ---------------------------------------------------------------------- baselines
class ArrayRing:
    """The per-field numpy loop of SB3-style buffers, over in-RAM arrays or raw np.memmaps."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.capacity = len(next(iter(arrays.values())))
        self.pos = 0

    def append(self, transition: dict) -> None:
        pos = self.pos
        for name, array in self.arrays.items():
            array[pos] = transition[name]
        self.pos = pos + 1 if pos + 1 < self.capacity else 0

    def extend(self, batch: dict) -> None:
        n_rows = len(batch["reward"])
        pos = self.pos  # batches divide the capacity, so a batch never wraps
        for name, array in self.arrays.items():
            array[pos:pos + n_rows] = batch[name]
        self.pos = (pos + n_rows) % self.capacity


def in_ram(capacity: int) -> ArrayRing:
    return ArrayRing({name: np.zeros((capacity, *shape), dtype) for name, (shape, dtype) in bc.PENDULUM.items()})


def raw_memmap(directory: str, capacity: int) -> ArrayRing:
    return ArrayRing({name: np.memmap(os.path.join(directory, f"{name}.raw"), dtype=dtype, mode="w+",
                                      shape=(capacity, *shape))
                      for name, (shape, dtype) in bc.PENDULUM.items()})


def same_sampler(arrays: dict[str, np.ndarray], rng: np.random.Generator):
    """Uniform batches: one index array drawn per batch, shared by the fields, as the store does."""
    items = list(arrays.items())
    capacity = len(items[0][1])

    def sample():
        index = rng.integers(0, capacity, SAMPLE_ROWS)
        return {name: array[index] for name, array in items}
    return sample


# ---------------------------------------------------------------------- writes
def fill_rate(writer, capacity: int, source: dict) -> float:
    """Rows/s of filling an empty pool with 1,000-row extends (first touch of every page)."""
    batches = [{name: column[i:i + EXTEND_ROWS] for name, column in source.items()}
               for i in range(0, SOURCE_ROWS, EXTEND_ROWS)]
    start = time.perf_counter()
    for i in range(capacity // EXTEND_ROWS):
        writer.extend(batches[i % len(batches)])
    return capacity / (time.perf_counter() - start)


def write_rates(writers: dict, source: dict, rounds: int, appends: int) -> dict[str, dict[str, float]]:
    """Single appends and 1,000-row extends into full (ring) pools, systems taking turns."""
    batches = [{name: column[i:i + EXTEND_ROWS] for name, column in source.items()}
               for i in range(0, SOURCE_ROWS, EXTEND_ROWS)]
    singles = bc.transitions(source, SOURCE_ROWS)
    append_fns, extend_fns = {}, {}
    for name, writer in writers.items():
        append_fns[name] = _cycler(writer.append, singles)
        extend_fns[name] = _cycler(writer.extend, batches)
    appends_per_s = finely_interleaved_rates(append_fns, calls=appends, blocks=rounds * BLOCKS_PER_ROUND)
    extends_per_s = finely_interleaved_rates(extend_fns, calls=max(20 * rounds, 200_000 // EXTEND_ROWS),
                                             blocks=rounds * BLOCKS_PER_ROUND)
    return {name: {"append": appends_per_s[name], "extend": extends_per_s[name] * EXTEND_ROWS} for name in writers}


def finely_interleaved_rates(fns: dict, calls: int, blocks: int) -> dict[str, float]:
    """Calls/s per function over ``calls`` calls in ``blocks`` short blocks, the functions taking
    turns block by block: on a shared machine every system then meets the same load (a few blocks
    of tens of milliseconds each put one system's median in a quiet spell and the next one's in a
    busy one). The rate is all calls over all their time, so each system's commits and stage
    drains count in full (a median of short blocks would leave out the blocks that commit)."""
    per_block = max(1, calls // blocks)
    spent = dict.fromkeys(fns, 0.0)
    for _ in range(blocks):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(per_block):
                fn()
            spent[name] += time.perf_counter() - start
    return {name: per_block * blocks / seconds for name, seconds in spent.items()}


def _cycler(method, items: list):
    state = {"i": 0}

    def call():
        i = state["i"]
        method(items[i])
        state["i"] = i + 1 if i + 1 < len(items) else 0
    return call


# ---------------------------------------------------------------------- open + first sample
def open_times(directory: str, sizes: list[int], repeats: int) -> dict[tuple[str, int], dict[str, float]]:
    source = bc.make_rows(bc.PENDULUM, 100_000, seed=3)
    results = {}
    for rows in sizes:
        for backend, suffix in BACKENDS.items():
            path = os.path.join(directory, f"open-{rows}{suffix}")
            with expstore.open(path, "w", capacity=rows, schema=bc.PENDULUM, fsync=False) as pool:
                for start in range(0, rows, 100_000):
                    take = min(100_000, rows - start)
                    pool.extend({name: column[:take] for name, column in source.items()})
            hot = [_open_child(path) for _ in range(repeats)]
            cold = []
            for _ in range(repeats):
                bc.evict(path)
                cold.append(_open_child(path))
            results[(backend, rows)] = {"hot_s": float(np.median([r["open_sample_s"] for r in hot])),
                                        "cold_s": float(np.median([r["open_sample_s"] for r in cold])),
                                        "open_hot_s": float(np.median([r["open_s"] for r in hot])),
                                        "open_cold_s": float(np.median([r["open_s"] for r in cold])),
                                        "import_s": float(np.median([r["import_s"] for r in hot]))}
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return results


def _open_child(path: str) -> dict:
    done = subprocess.run([sys.executable, "-c", OPEN_CHILD, path], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- report
def report(args, fills, writes, samples, opens) -> str:
    numpy_w, memmap_w = writes["in-RAM numpy"], writes["raw np.memmap"]
    numpy_s, memmap_s = samples["in-RAM numpy"], samples["raw np.memmap"]
    out = [f"## expstore core benchmark ({datetime.date.today().isoformat()})", "",
           f"Machine: {bc.machine()}. {bc.versions(['numpy', 'h5py', 'zarr'])}.",
           f"Command: `{bc.command_line()}`", "",
           f"### Writes: pendulum-like rows ({bc.row_nbytes(bc.PENDULUM)} B), pool of {args.rows:,} rows", "",
           ("Appends and extends run on full pools (ring state). `expstore <backend>`: the defaults (a commit with "
            "fsync every 10,000 rows: power-loss safe); `fsync=False`: the same commits without fsync (kill -9 safe)."),
           ""]
    rows = []
    for name, rate in writes.items():
        rows.append([name, bc.human(rate["append"], "/s"), bc.ratio(rate["append"], numpy_w["append"]),
                     bc.ratio(rate["append"], memmap_w["append"]), bc.human(rate["extend"], " rows/s"),
                     bc.ratio(rate["extend"], numpy_w["extend"]), bc.ratio(rate["extend"], memmap_w["extend"]),
                     bc.human(fills[name], " rows/s")])
    out += [bc.markdown_table(["system", "single append", "vs numpy loop", "vs memmap loop", "extend x1000",
                               "vs numpy", "vs memmap", "first fill (extend x1000)"], rows), ""]
    out += [f"### Uniform sample of {SAMPLE_ROWS} from a full {args.rows:,}-row pool (hot page cache)", ""]
    rows = [[name, bc.human(rate, "/s"), f"{1e6 / rate:.1f}", bc.ratio(rate, numpy_s), bc.ratio(rate, memmap_s)]
            for name, rate in samples.items()]
    out += [bc.markdown_table(["system", "batches/s", "us/batch", "vs in-RAM numpy", "vs raw np.memmap"], rows), ""]
    out += [f"### Open, and open + first sample of 256, in a fresh process (imports excluded; median of "
            f"{args.repeats})", ""]
    def hot_cold(found: dict, hot: str, cold: str) -> str:
        return f"{found[hot] * 1e3:.2f} ms / {found[cold] * 1e3:.1f} ms"

    rows = [[f"{size:,}"] + [hot_cold(opens[(b, size)], "open_hot_s", "open_cold_s") for b in BACKENDS]
            + [hot_cold(opens[(b, size)], "hot_s", "cold_s") for b in BACKENDS] for size in args.open_rows]
    out += [bc.markdown_table(["rows", "open hdf5 (hot / cold)", "open zarr (hot / cold)",
                               "+ first sample hdf5 (hot / cold)", "+ first sample zarr (hot / cold)"], rows), ""]
    out += [targets(args, writes, samples, opens)]
    return "\n".join(out)


def targets(args, writes, samples, opens) -> str:
    largest = max(args.open_rows)
    rows = []
    for backend in BACKENDS:
        name = f"expstore {backend}"
        checks = [
            ("hot sample >= 0.9x in-RAM numpy", samples[name] / samples["in-RAM numpy"], 0.9, "x"),
            ("single append >= 0.8x per-field numpy loop", writes[name]["append"] / writes["in-RAM numpy"]["append"],
             0.8, "x"),
            ("extend x1000 >= 20M rows/s", writes[name]["extend"] / 1e6, 20, "M rows/s"),
            (f"open + first sample < 50 ms at {largest:,} rows (hot)", opens[(backend, largest)]["hot_s"] * 1e3,
             -50, "ms"),
        ]
        checks += [(f"open < 2 ms at {size:,} rows (hot)", opens[(backend, size)]["open_hot_s"] * 1e3, -2, "ms")
                   for size in args.open_rows]
        fast = f"{name} fsync=False"
        checks[2:2] = [
            ("single append >= 0.8x per-field numpy loop (fsync=False)",
             writes[fast]["append"] / writes["in-RAM numpy"]["append"], 0.8, "x"),
            ("extend x1000 >= 20M rows/s (fsync=False)", writes[fast]["extend"] / 1e6, 20, "M rows/s"),
        ]
        for label, value, goal, unit in checks:
            met = value <= -goal if goal < 0 else value >= goal
            rows.append([backend, label, f"{value:.2f} {unit}", "met" if met else "**missed**"])
    return "### Targets\n\n" + bc.markdown_table(["backend", "target", "measured", ""], rows) + "\n"


# ---------------------------------------------------------------------- main
def main() -> None:
    args = parse_args()
    directory = tempfile.mkdtemp(prefix="expstore-bench-", dir=args.dir)
    try:
        fills, writes, samples = write_and_sample(args, directory)
        opens = open_times(directory, args.open_rows, args.repeats)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(report(args, fills, writes, samples, opens))


def write_and_sample(args, directory: str):
    source = bc.make_rows(bc.PENDULUM, SOURCE_ROWS, seed=1)
    writers = {"in-RAM numpy": in_ram(args.rows), "raw np.memmap": raw_memmap(directory, args.rows)}
    for backend, suffix in BACKENDS.items():
        writers[f"expstore {backend}"] = expstore.open(os.path.join(directory, f"pool{suffix}"), "w",
                                                       capacity=args.rows, schema=bc.PENDULUM)
        # kill -9 safe without fsync: commits are ordered writes, only power loss can lose them
        writers[f"expstore {backend} fsync=False"] = expstore.open(
            os.path.join(directory, f"nosync{suffix}"), "w", capacity=args.rows, schema=bc.PENDULUM, fsync=False)
    fills = {name: fill_rate(writer, args.rows, source) for name, writer in writers.items()}
    writes = write_rates(writers, source, args.rounds, args.appends)
    readers = {}
    for backend in BACKENDS:
        writers[f"expstore {backend} fsync=False"].close()
        writers[f"expstore {backend}"].close()
        readers[backend] = expstore.open(writers[f"expstore {backend}"].path, "r")
    rng = np.random.default_rng(0)
    samplers = {"in-RAM numpy": same_sampler(writers["in-RAM numpy"].arrays, rng),
                "raw np.memmap": same_sampler(writers["raw np.memmap"].arrays, rng)}
    for backend, reader in readers.items():
        samplers[f"expstore {backend}"] = functools.partial(reader.sample, SAMPLE_ROWS, rng=rng)
    for sample in samplers.values():
        sample()
    samples = bc.interleaved_rates(samplers, calls=args.sample_calls, rounds=args.rounds)
    for reader in readers.values():
        reader.close()
    return fills, writes, samples


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="capacity of the write/sample pools")
    parser.add_argument("--open-rows", default="100000,1000000,10000000",
                        help="comma-separated pool sizes for open + first sample")
    parser.add_argument("--appends", type=int, default=200_000, help="single appends per system")
    parser.add_argument("--sample-calls", type=int, default=1000, help="sample calls per timed block")
    parser.add_argument("--rounds", type=int, default=5, help="timed blocks per system (taking turns)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per open measurement")
    parser.add_argument("--dir", default=None, help="where the pools go (default: the system temp dir)")
    args = parser.parse_args()
    args.open_rows = [int(size) for size in args.open_rows.split(",")]
    if args.rows % EXTEND_ROWS:
        parser.error(f"--rows must be a multiple of {EXTEND_ROWS}")
    return args


if __name__ == "__main__":
    main()
