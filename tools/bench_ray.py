"""Sampling throughput of a sharded pool on Ray, with 1, 2 and 3 shards.

On one local Ray cluster (``ray.init(num_cpus=2)``), for each workload it times, in
interleaved rounds so that machine noise hits all alike:

- ``local``: ``pool.sample(batch)`` on one pool, read-only, in this process: the baseline;
- ``shared-fs k``: :class:`expstore.sharding.SharedShards` over k shard files (no Ray);
- ``ray k``: :class:`expstore.sharding.ShardedPool` over k shard actors (one pool each), one
  ``sample`` call (one round trip) per batch;
- ``stream k``: the same pool's ``batches()`` stream: ``--per-request`` batches per round trip,
  ``--in-flight`` requests outstanding per shard.

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

import numpy as np
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


def calls_per_round(fn, round_s: float, probe_calls: int = 1) -> int:
    """Calls that take about ``round_s``, timed over ``probe_calls`` calls (a stream's batches
    come in bursts of one request: time several requests' worth)."""
    fn()  # warm: page cache, first Ray round trip
    start = time.perf_counter()
    for _ in range(probe_calls):
        fn()
    return max(3, int(round_s * probe_calls / max(time.perf_counter() - start, 1e-6)))


def bench_workload(folder: Path, schema: dict, rows_per_shard: int, batch: int, args):
    paths = make_shards(folder, schema, rows_per_shard)
    local = expstore.open(paths[0], "r")
    actors = create_shards(paths)
    fns = {"local": lambda: local.sample(batch)}
    streams = []
    for count in SHARD_COUNTS:
        shared = SharedShards(paths[:count], rng=count)
        client = ShardedPool(actors[:count], rng=count)
        fns[f"shared-fs {count}"] = lambda shared=shared: shared.sample(batch)
        fns[f"ray {count}"] = lambda client=client: client.sample(batch)
    for count in SHARD_COUNTS:
        stream = ShardedPool(actors[:count], rng=10 + count).batches(batch, per_request=args.per_request,
                                                                      in_flight=args.in_flight)
        streams.append(stream)
        fns[f"stream {count}"] = stream.__next__
    calls = calls_per_round(fns["ray 1"], args.round_s)
    stream_calls = calls_per_round(fns["stream 1"], args.round_s, 4 * args.per_request * args.in_flight)
    rates = interleaved_rates({name: fn for name, fn in fns.items() if not name.startswith("stream")},
                              calls, args.rounds)
    rates.update(interleaved_rates({name: fn for name, fn in fns.items() if name.startswith("stream")},
                                   stream_calls, args.rounds))
    for stream in streams:
        stream.close()
    local.close()
    for actor in actors:
        ray.kill(actor, no_restart=True)
    return rates


COST_ROWS = (256, 4096, 32768)


def call_costs(folder: Path, rounds: int) -> dict[str, float]:
    """The scaling model's two constants on one shard: seconds per Ray call (an empty round trip)
    and seconds per byte of a reply (the slope of sample round trips over their reply sizes), from
    medians of timed calls."""
    path = make_shards(folder, PENDULUM, 100_000)[0]
    actor = create_shards([path])[0]
    ray.get(actor.length.remote())
    empty = _median_s(lambda: ray.get(actor.length.remote()), 30 * rounds)
    sizes, times = [], []
    for rows in COST_ROWS:
        ray.get(actor.sample.remote(rows, 0, {}))
        times.append(_median_s(lambda rows=rows: ray.get(actor.sample.remote(rows, 0, {})), 4 * rounds))
        sizes.append(rows * (row_nbytes(PENDULUM) + 8))  # the fields and step_id
    with expstore.open(path, "r") as local:
        gathers = [_median_s(lambda rows=rows: local.sample(rows), 4 * rounds) for rows in COST_ROWS]
    ray.kill(actor, no_restart=True)
    slope = np.polyfit(sizes, np.subtract(times, gathers), 1)[0]
    return {"call_s": empty, "byte_s": float(slope), "gather_256_s": gathers[0], "sample_256_s": times[0]}


def _median_s(fn, calls: int) -> float:
    elapsed = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        elapsed.append(time.perf_counter() - start)
    return float(np.median(elapsed))


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
    parser.add_argument("--per-request", type=int, default=32, help="batches per stream request")
    parser.add_argument("--in-flight", type=int, default=2, help="stream requests outstanding per shard")
    parser.add_argument("--workloads", default="all", help="'all', or 'pendulum256' for the first only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for name, schema, rows_per_shard, batch in WORKLOADS[:1] if args.workloads == "pendulum256" else WORKLOADS:
            with tempfile.TemporaryDirectory(dir=".") as folder:
                rates = bench_workload(Path(folder), schema, rows_per_shard, batch, args)
            rows += table_rows(name, schema, batch, rates)
        with tempfile.TemporaryDirectory(dir=".") as folder:
            costs = call_costs(Path(folder), args.rounds)
    finally:
        ray.shutdown()
    print(markdown_table(["rows", "batch", "sampler", "batches/s", "bytes/s", "vs local"], rows))
    print(f"\nScaling model, one shard: {costs['call_s'] * 1e6:.0f} us per Ray call (an empty round trip), "
          f"{costs['byte_s'] * 1e9:.2f} ns per reply byte ({1 / max(costs['byte_s'], 1e-12) / 1e6:.0f} MB/s) "
          f"beyond the gather; a 256-row sample: {costs['sample_256_s'] * 1e6:.0f} us through Ray, "
          f"{costs['gather_256_s'] * 1e6:.0f} us local")
    print(f"\n{machine()}; local Ray cluster with {args.num_cpus} CPUs; "
          f"{versions(['numpy', 'h5py', 'ray'])}; stream: {args.per_request} batches per request, "
          f"{args.in_flight} requests in flight per shard")


if __name__ == "__main__":
    main()
