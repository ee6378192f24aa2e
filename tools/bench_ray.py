"""Sampling throughput of a sharded pool on Ray, with 1, 2 and 3 shards.

On one local Ray cluster (``ray.init(num_cpus=2)``), for each workload it times, in
interleaved rounds so that machine noise hits all alike:

- ``local``: ``pool.sample(batch)`` on one pool, read-only, in this process: the baseline;
- ``shared-fs k``: :class:`expstore.sharding.SharedShards` over k shard files (no Ray);
- ``ray k``: :class:`expstore.sharding.ShardedPool` over k shard actors (one pool each).

Every shard holds the same number of rows. Rates are batches/s, and ratios against ``local``.

Usage::

    python tools/bench_ray.py                      # Pendulum rows, batches of 256 and 4096; Atari frames, 64
    python tools/bench_ray.py --rounds 7 --round-s 1.0
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import ray
from bench_common import (
    ATARI,
    PENDULUM,
    human,
    interleaved_rates,
    machine,
    make_rows,
    markdown_table,
    ratio,
    row_nbytes,
    versions,
)

import expstore
from expstore.integrations.sharding import ShardedPool, SharedShards, create_shards

WORKLOADS = [("pendulum", PENDULUM, 100_000, 256), ("pendulum", PENDULUM, 100_000, 4096),
             ("atari", ATARI, 5_000, 64)]
SHARD_COUNTS = (1, 2, 3)


def make_shards(folder: Path, schema: dict, rows_per_shard: int) -> list[str]:
    paths = []
    for index in range(max(SHARD_COUNTS)):
        path = str(folder / f"shard{index}.h5")
        with expstore.open(path, "w", capacity=rows_per_shard, schema=schema) as pool:
            pool.extend(make_rows(schema, rows_per_shard, seed=index))
        paths.append(path)
    return paths


def calls_per_round(fn, round_s: float) -> int:
    fn()  # warm: page cache, first Ray round trip
    start = time.perf_counter()
    fn()
    return max(3, int(round_s / max(time.perf_counter() - start, 1e-6)))


def bench_workload(folder: Path, schema: dict, rows_per_shard: int, batch: int, rounds: int, round_s: float):
    paths = make_shards(folder, schema, rows_per_shard)
    local = expstore.open(paths[0], "r")
    actors = create_shards(paths)
    fns = {"local": lambda: local.sample(batch)}
    for count in SHARD_COUNTS:
        shared = SharedShards(paths[:count], rng=count)
        client = ShardedPool(actors[:count], rng=count)
        fns[f"shared-fs {count}"] = lambda shared=shared: shared.sample(batch)
        fns[f"ray {count}"] = lambda client=client: client.sample(batch)
    calls = calls_per_round(fns["ray 1"], round_s)
    rates = interleaved_rates(fns, calls, rounds)
    local.close()
    for actor in actors:
        ray.kill(actor, no_restart=True)
    return rates


def table_rows(name: str, schema: dict, batch: int, rates: dict[str, float]) -> list[list[str]]:
    batch_nbytes = row_nbytes(schema) * batch
    rows = []
    for mode, value in rates.items():
        rows.append([name, batch, mode, f"{value:,.0f}", human(value * batch_nbytes, "B/s"),
                     ratio(value, rates["local"])])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median reported)")
    parser.add_argument("--round-s", type=float, default=0.5, help="about how long each timed block runs")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for name, schema, rows_per_shard, batch in WORKLOADS:
            with tempfile.TemporaryDirectory(dir=".") as folder:
                rates = bench_workload(Path(folder), schema, rows_per_shard, batch, args.rounds, args.round_s)
            rows += table_rows(name, schema, batch, rates)
    finally:
        ray.shutdown()
    print(markdown_table(["rows", "batch", "sampler", "batches/s", "bytes/s", "vs local"], rows))
    print(f"\n{machine()}; local Ray cluster with {args.num_cpus} CPUs; "
          f"{versions(['numpy', 'h5py', 'ray'])}")


if __name__ == "__main__":
    main()
