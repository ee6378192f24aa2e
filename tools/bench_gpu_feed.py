"""GPU feed check: pool batches to a CUDA device, pinned and non_blocking, checked and timed.

For a pendulum-like pool (1,000,000 rows of 34 B) and an Atari-like pool (84x84 uint8 frames),
each feed runs ``--batches`` batches of ``--batch-size`` rows into a consumer that uses every
batch on the GPU (a reduction per field, so a late or torn copy would show), and reports
batches/s against the same gather from in-RAM numpy arrays moved the plain way:

- ``ram -> cuda``: numpy fancy indexing, ``torch.from_numpy(...).to("cuda")`` (the baseline);
- ``pool -> cuda``: ``pool.sample`` then ``to_tensors(device="cuda")`` (pageable, blocking);
- ``pool -> pinned -> cuda``: ``to_tensors(device="cuda", pin_memory=True)`` (non_blocking);
- ``prefetch pinned``: the same in the background ``Prefetcher`` thread (depth 3).

Correctness: every GPU batch of the pinned and prefetched feeds is copied back and compared
bit for bit with the numpy batch it came from (the same seed drawn again on the CPU), so a
pinned buffer reused before its asynchronous copy finished would fail the check.

    python tools/bench_gpu_feed.py                       # needs a CUDA device
    python tools/bench_gpu_feed.py --out results.json --batches 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch

import expstore
from expstore.integrations.torch_feed import Prefetcher, to_tensors

WORKLOADS = {
    "pendulum": ({"obs": ((3,), "float32"), "action": ((1,), "float32"), "reward": ((), "float32"),
                  "next_obs": ((3,), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}, 1_000_000),
    "atari": ({"obs": ((84, 84), "uint8"), "action": ((), "int64"), "reward": ((), "float32"),
               "next_obs": ((84, 84), "uint8"), "terminated": ((), "bool"), "truncated": ((), "bool")}, 50_000),
}


def fill(path: str, schema: dict, rows: int) -> dict[str, np.ndarray]:
    """Create the pool and return the same rows as in-RAM arrays (the baseline's data)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for name, (shape, dtype) in schema.items():
        if np.dtype(dtype).kind == "f":
            arrays[name] = rng.standard_normal((rows, *shape), dtype=np.float32).astype(dtype)
        elif np.dtype(dtype).kind == "b":
            arrays[name] = rng.random((rows, *shape)) < 0.005
        else:
            arrays[name] = rng.integers(0, 256, size=(rows, *shape)).astype(dtype)
    with expstore.open(path, "w", capacity=rows, schema=schema, fsync=False) as pool:
        for start in range(0, rows, 10_000):
            pool.extend({name: values[start:start + 10_000] for name, values in arrays.items()})
    return arrays


def consume(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Use every field on the GPU, as a training step would read it."""
    return sum(tensor.float().sum() for name, tensor in batch.items() if name != "step_id")


def timed(next_batch, batches: int) -> float:
    total = torch.zeros((), device="cuda")
    for _ in range(5):
        total += consume(next_batch())
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        total += consume(next_batch())
    torch.cuda.synchronize()
    return batches / (time.perf_counter() - start)


def check_copies(pool, next_gpu_batch, batches: int, batch_size: int, seed: int) -> int:
    """Compare GPU batches with the numpy batches of the same seed; returns batches checked."""
    reference = np.random.default_rng(seed)
    for _ in range(batches):
        on_gpu = next_gpu_batch()
        expected = pool.sample(batch_size, rng=reference)
        for name, values in expected.items():
            got = on_gpu[name].cpu().numpy()
            if not np.array_equal(got, values):
                raise AssertionError(f"field {name!r}: the GPU batch differs from the numpy batch it came from")
    return batches


def run_workload(name: str, directory: str, args) -> dict:
    schema, rows = WORKLOADS[name]
    path = os.path.join(directory, f"{name}.h5")
    arrays = fill(path, schema, rows)
    result = {"workload": name, "rows": rows, "row_nbytes": sum(v.nbytes for v in arrays.values()) // rows}
    with expstore.open(path, "r") as pool:
        ram_rng, pool_rng = np.random.default_rng(1), np.random.default_rng(1)

        def ram_batch():
            picks = ram_rng.integers(0, rows, size=args.batch_size)
            return {k: torch.from_numpy(v[picks]).to("cuda") for k, v in arrays.items()}

        rates = {
            "ram -> cuda": timed(ram_batch, args.batches),
            "pool -> cuda": timed(lambda: to_tensors(pool.sample(args.batch_size, rng=pool_rng), "cuda"),
                                  args.batches),
            "pool -> pinned -> cuda": timed(
                lambda: to_tensors(pool.sample(args.batch_size, rng=pool_rng), "cuda", pin_memory=True), args.batches),
        }
        prefetch_rng = np.random.default_rng(2)
        with Prefetcher(lambda: pool.sample(args.batch_size, rng=prefetch_rng), depth=3, device="cuda",
                        pin_memory=True) as batches:
            rates["prefetch pinned"] = timed(lambda: next(batches), args.batches)
        checked = check_pinned(pool, args)
    result["batches_per_s"] = rates
    result["vs_ram"] = {feed: rate / rates["ram -> cuda"] for feed, rate in rates.items()}
    result["batches_checked"] = checked
    return result


def check_pinned(pool, args) -> int:
    """Pinned non_blocking copies, direct and through the prefetch thread, against numpy."""
    direct = np.random.default_rng(7)
    checked = check_copies(pool, lambda: to_tensors(pool.sample(args.batch_size, rng=direct), "cuda",
                                                    pin_memory=True), args.check, args.batch_size, 7)
    threaded = np.random.default_rng(8)
    with Prefetcher(lambda: pool.sample(args.batch_size, rng=threaded), depth=3, device="cuda",
                    pin_memory=True) as batches:
        checked += check_copies(pool, lambda: next(batches), args.check, args.batch_size, 8)
    return checked


def report(results: list[dict], args) -> str:
    lines = [(f"GPU feed, batch {args.batch_size}, {args.batches} batches per feed "
             f"({torch.cuda.get_device_name()}, torch {torch.__version__}, {platform.python_version()})"), "",
             "| workload | feed | batches/s | vs ram -> cuda |", "|---|---|---|---|"]
    for result in results:
        for feed, rate in result["batches_per_s"].items():
            lines.append(f"| {result['workload']} ({result['row_nbytes']} B rows) | {feed} | {rate:,.0f} | "
                         f"{result['vs_ram'][feed]:.2f}x |")
    lines += ["", "batches compared bit for bit after pinned non_blocking copies: "
              + ", ".join(f"{r['workload']} {r['batches_checked']}" for r in results)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=500, help="timed batches per feed")
    parser.add_argument("--check", type=int, default=100, help="batches compared per pinned feed")
    parser.add_argument("--workloads", default="pendulum,atari")
    parser.add_argument("--dir", default=None, help="where the pools go (default: a temporary directory)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs one")
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        results = [run_workload(name, directory, args) for name in args.workloads.split(",")]
    print(report(results, args))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
