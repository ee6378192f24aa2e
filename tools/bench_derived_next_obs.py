"""What derive_next_obs=True saves: an Atari-shaped pool that derives next_obs against one that stores it.

Both pools get the same rows (84x84 uint8 frames, episodes ending with probability 0.005 per
row as in the peer benchmark, so about 100 rows each), then the script reports, in one run and
per backend: the bytes on disk (allocated blocks, as ``du`` counts them), the final-observation
table's rows, the hot sampling rate of 256-row batches, and whether the two pools' samples are
identical (they must be: the frames of a row's next observation are the next row's).

    python tools/bench_derived_next_obs.py                   # capacity 10,000 and 100,000
    python tools/bench_derived_next_obs.py --capacity 10000 --backends hdf5
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc

import expstore

SCHEMA = bc.ATARI
FILL_ROWS = 1000  # rows per extend while filling


def frames_and_rows(n_rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows whose next_obs is the next row's obs inside an episode; a new episode starts with a
    fresh frame, and the frame after an episode's last row is one no row holds."""
    rng = np.random.default_rng(seed)
    rows = bc.make_rows({name: spec for name, spec in SCHEMA.items() if "obs" not in name}, n_rows, seed)
    frames = rng.integers(0, 256, (n_rows + 1, 84, 84), dtype=np.uint8)
    rows["obs"], rows["next_obs"] = frames[:-1], frames[1:].copy()
    ends = np.flatnonzero(rows["terminated"] | rows["truncated"])
    rows["next_obs"][ends] = rng.integers(0, 256, (len(ends), 84, 84), dtype=np.uint8)  # the final frames
    return rows


def fill(path: str, capacity: int, rows: dict, derive: bool) -> None:
    schema = bc.without_next_obs(SCHEMA) if derive else SCHEMA
    with expstore.open(path, "w", capacity=capacity, schema=schema, derive_next_obs=derive, fsync=False) as pool:
        for start in range(0, len(rows["reward"]), FILL_ROWS):
            pool.extend({name: values[start:start + FILL_ROWS] for name, values in rows.items()})


def sample_rate(pool, budget_s: float) -> float:
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        pool.sample(256, rng=calls)
        calls += 1
    return calls / (time.perf_counter() - start)


def measure(directory: str, backend: str, capacity: int, budget_s: float) -> dict:
    suffix = ".h5" if backend == "hdf5" else ".zarr"
    rows = frames_and_rows(capacity + capacity // 2)  # the ring wraps: the oldest half is evicted
    paths = {derive: os.path.join(directory, f"{'derived' if derive else 'stored'}-{capacity}{suffix}")
             for derive in (False, True)}
    for derive, path in paths.items():
        fill(path, capacity, rows, derive)
    with expstore.open(paths[False]) as stored, expstore.open(paths[True]) as derived:
        one, two = stored.sample(4096, rng=7), derived.sample(4096, rng=7)
        identical = one.keys() == two.keys() and all(np.array_equal(one[name], two[name]) for name in one)
        rates = {}
        for _ in range(3):  # taking turns, so both see the same machine
            for name, pool in (("stored", stored), ("derived", derived)):
                rates.setdefault(name, []).append(sample_rate(pool, budget_s))
        result = {"backend": backend, "capacity": capacity, "identical": identical,
                  "final_rows": derived.bookkeeping.book.final_table.rows, "slots": derived._ring.slots,
                  "episodes": len(derived.episodes()["episode_id"])}
    for derive, path in paths.items():
        result["derived_mb" if derive else "stored_mb"] = bc.disk_nbytes(path) / 1e6
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    result.update({f"{name}_rate": float(np.median(values)) for name, values in rates.items()})
    return result


def report(results: list[dict]) -> str:
    header = ("| backend | capacity | stores next_obs | derives it | derived / stored | final rows (slots) "
              "| episodes in pool | sample 256 stored | derived | derived / stored | identical samples |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['backend']} | {r['capacity']:,} | {r['stored_mb']:.1f} MB | {r['derived_mb']:.1f} MB "
                     f"| {r['derived_mb'] / r['stored_mb']:.3f} | {r['final_rows']:,} ({r['slots']:,}) "
                     f"| {r['episodes']:,} | {r['stored_rate']:,.0f}/s | {r['derived_rate']:,.0f}/s "
                     f"| {r['derived_rate'] / r['stored_rate']:.2f} | {'yes' if r['identical'] else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", default="10000,100000", help="comma-separated pool capacities")
    parser.add_argument("--backends", default="hdf5,zarr")
    parser.add_argument("--budget-s", type=float, default=1.0, help="seconds per timed sampling block")
    parser.add_argument("--dir", default=None, help="where the pools go (default: the system temp dir)")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="expstore-derived-", dir=args.dir)
    try:
        results = [measure(directory, backend, int(capacity), args.budget_s)
                   for capacity in args.capacity.split(",") for backend in args.backends.split(",")]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(report(results))


if __name__ == "__main__":
    main()
