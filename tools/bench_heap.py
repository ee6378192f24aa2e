"""Heap fields against raw storage and the peers: bytes per transition, hot and cold sampling.

Workload 1, pixels: real Atari frames (84x84 gray, recorded with ale-py by tools/atari_frames.py)
of Pong, Breakout, Seaquest and MsPacman in a pool that derives next_obs, with ``obs`` raw and
with ``Field((84, 84), "uint8", codec="zstd")``. Per game: the bytes the pool uses per
transition (fixed fields, the heap index and the heap bytes its window spans) against zstd-3 on
the same frames one at a time, against the raw pool and against SB3's ReplayBuffer (obs and
next_obs arrays); then sample(256) of both pools hot (files in the page cache), and cold (the
files dropped from the page cache with posix_fadvise before each batch, cold reads on).

Workload 2, tokens: rollouts of a prompt (32-512 tokens), a response (16-4,096 tokens) and the
response's log-probs, appended one at a time and sampled 64 at a time, with ragged fields,
against a Python list of numpy arrays in RAM (the in-memory limit: a sample is 64 picks padded
into a batch) and against fixed-width fields padded to the longest prompt and response (plus
length columns); disk bytes of the ragged pool against the padded one.

Every ratio is measured in one run, the variants taking turns (bench_common.interleaved_rates).

With --budget F (alone): cold sampling under a memory budget, as tools/bench_atari.py's --budget
measures it. Per game, every recorded frame in a raw pool and in a zstd pool (both deriving
next_obs) and in a raw pool that stores next_obs as a field (twice the frames); the budget is
1/F of the raw pool on disk; each pool is sampled (unstacked obs and next_obs, sample(256)) by
a fresh process in a memory cgroup of the budget (page cache included), started after the page
cache was dropped, for --budget-batches batches, its open included. The variants take turns
for --budget-rounds rounds; the medians are reported.

With --compare-code ROOT (alone): cold batches/s (files dropped from the page cache before each
batch) of the expstore at ROOT, another checkout, against this one, in fresh processes taking
turns: sample(256) of the first game's zstd pool and sample(64) of the token rollouts.

    python tools/bench_heap.py --steps 3000 --rollouts 2000 --json heap.json
    python tools/bench_heap.py --budget 4 --steps 100000 --cache-dir runs/atari-cache
    python tools/bench_heap.py --compare-code ../expstore-before --games Pong --budget-batches 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_common import disk_nbytes, evict, interleaved_rates, run_in_memory_cgroup, tune_allocator_for_run, versions

import expstore

FRAME = (84, 84)
BATCH = 256


# ---------------------------------------------------------------------------- workload 1: frames
def atari_pool(path: str, recording, codec: str | None, heap_bytes: int | None) -> None:
    schema = {"obs": expstore.Field(FRAME, "uint8", codec=codec), "action": ((), "int64"),
              "reward": ((), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}
    n = len(recording.frames)
    with expstore.open(path, "w", capacity=n, schema=schema, derive_next_obs=True, heap_bytes=heap_bytes,
                       fsync=False) as pool:
        pool.extend({"obs": recording.frames, "action": recording.actions, "reward": recording.rewards,
                     "terminated": recording.terminated, "truncated": recording.truncated})


def stored_next_pool(path: str, recording) -> None:
    """The raw layout without derived next_obs: next_obs a field of its own (twice the frames),
    gathered with obs in one prefetched read."""
    schema = {"obs": (FRAME, "uint8"), "next_obs": (FRAME, "uint8"), "action": ((), "int64"),
              "reward": ((), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}
    n = len(recording.frames)
    with expstore.open(path, "w", capacity=n, schema=schema, fsync=False) as pool:
        pool.extend({"obs": recording.frames, "next_obs": recording.next_frames(), "action": recording.actions,
                     "reward": recording.rewards, "terminated": recording.terminated,
                     "truncated": recording.truncated})


def used_nbytes_per_row(pool) -> float:
    """Bytes the window's rows take: each fixed field's row, each heap field's index entry and the
    heap bytes its window spans."""
    rows = len(pool)
    fixed = sum(field.stored_row_nbytes for field in pool.schema.values())
    heap = sum(usage["used_nbytes"] for usage in pool.heap_usage().values())
    return fixed + heap / rows


def sb3_nbytes_per_row(n: int) -> float | None:
    try:
        from gymnasium import spaces
        from stable_baselines3.common.buffers import ReplayBuffer
    except ImportError:
        return None
    buffer = ReplayBuffer(n, spaces.Box(0, 255, FRAME, np.uint8), spaces.Discrete(18), device="cpu",
                          optimize_memory_usage=False, handle_timeout_termination=True)
    arrays = [buffer.observations, buffer.next_observations, buffer.actions, buffer.rewards, buffer.dones,
              buffer.timeouts]
    return sum(array.nbytes for array in arrays) / n


def cold_rate(path: str, batches: int, seed: int, batch: int = BATCH) -> float:
    """Batches/s of sample(batch) with every file dropped from the page cache before each batch."""
    rng = np.random.default_rng(seed)
    times = []
    with expstore.open(path) as pool:
        pool.cold_reads.mode = "on"
        for _ in range(batches):
            evict(path)
            start = time.perf_counter()
            pool.sample(batch, rng=rng)
            times.append(time.perf_counter() - start)
    return 1 / statistics.median(times)


def frames_workload(games: list[str], steps: int, cache_dir: str, work: str, rounds: int) -> list[dict]:
    from atari_frames import record

    from expstore.codecs import get_codec

    zstd = get_codec("zstd:3")
    results = []
    for game in games:
        recording = record(game, steps, cache_dir=cache_dir)
        frame_nbytes = [len(zstd.encode(frame.tobytes())) for frame in recording.frames]
        mean_zstd = float(np.mean(frame_nbytes))
        raw_path, heap_path = os.path.join(work, f"{game}-raw.h5"), os.path.join(work, f"{game}-zstd.h5")
        atari_pool(raw_path, recording, None, None)
        # The heap a user sizes from a sample of frames: 25% over their zstd-3 size.
        atari_pool(heap_path, recording, "zstd:3", int(1.25 * sum(frame_nbytes)) + (1 << 16))
        with expstore.open(raw_path) as raw, expstore.open(heap_path) as heap:
            assert len(heap) == len(raw) == steps, "the heap evicted rows: size it larger"
            check = raw.read(np.arange(steps))["obs"], heap.read(np.arange(steps))["obs"]
            assert np.array_equal(*check), "heap frames differ from the raw ones"
            raw_row, heap_row = used_nbytes_per_row(raw), used_nbytes_per_row(heap)
            heap_frame = heap.heap_usage()["obs"]["used_nbytes"] / steps
            hot = interleaved_rates({"raw": lambda: raw.sample(BATCH), "zstd": lambda: heap.sample(BATCH)},
                                    calls=20, rounds=rounds)
        cold = {"raw": cold_rate(raw_path, 3 * rounds, 1), "zstd": cold_rate(heap_path, 3 * rounds, 1)}
        sb3 = sb3_nbytes_per_row(steps)
        results.append({
            "game": game, "steps": steps, "zstd3_frame_nbytes": mean_zstd, "heap_frame_nbytes": heap_frame,
            "heap_frame_over_zstd3": heap_frame / mean_zstd, "raw_row_nbytes": raw_row, "heap_row_nbytes": heap_row,
            "raw_over_heap_row_nbytes": raw_row / heap_row, "sb3_row_nbytes": sb3,
            "sb3_over_heap_row_nbytes": None if sb3 is None else sb3 / heap_row,
            "raw_disk_nbytes": disk_nbytes(raw_path), "heap_disk_nbytes": disk_nbytes(heap_path),
            "hot_batches_per_s": hot, "hot_heap_over_raw": hot["zstd"] / hot["raw"],
            "cold_batches_per_s": cold, "cold_heap_over_raw": cold["zstd"] / cold["raw"],
        })
        print(json.dumps(results[-1]), flush=True)
    return results


# ---------------------------------------------------------------------------- frames under a budget
def budget_workload(games: list[str], steps: int, cache_dir: str, work: str, fraction: int, batches: int,
                    rounds: int, codec: str) -> list[dict]:
    from atari_frames import record

    from expstore.codecs import get_codec
    from tools.bench_atari import drop_page_cache

    coder = get_codec(codec)
    results = []
    timing_priority = os.getpriority(os.PRIO_PROCESS, 0)
    for game in games:
        os.setpriority(os.PRIO_PROCESS, 0, 19)  # building the pools yields to other work; the timing does not
        recording = record(game, steps, cache_dir=cache_dir)
        n = len(recording.frames)
        compressed = sum(len(coder.encode(frame.tobytes())) for frame in recording.frames[::20]) * 20
        paths = {"raw": os.path.join(work, f"{game}-budget-raw.h5"),
                 "raw, next_obs stored": os.path.join(work, f"{game}-budget-raw-next.h5"),
                 codec: os.path.join(work, f"{game}-budget-zstd.h5")}
        atari_pool(paths["raw"], recording, None, None)
        stored_next_pool(paths["raw, next_obs stored"], recording)
        atari_pool(paths[codec], recording, codec, int(1.25 * compressed) + (1 << 20))
        with expstore.open(paths[codec]) as pool:
            assert len(pool) == n, "the heap evicted rows: size it larger"
        budget = disk_nbytes(paths["raw"]) // fraction
        with contextlib.suppress(OSError):  # back to the run's own priority: root only
            os.setpriority(os.PRIO_PROCESS, 0, timing_priority)
        runs: dict[str, list[dict]] = {kind: [] for kind in paths}
        caps = set()
        for _ in range(rounds):
            for kind, path in paths.items():
                drop_page_cache(list(paths.values()))
                command = [sys.executable, os.path.abspath(__file__), "--budget-child", path, str(batches)]
                done, cap = run_in_memory_cgroup(command, budget)
                caps.add(cap)
                if done.returncode == 0:
                    runs[kind].append(json.loads(done.stdout.strip().splitlines()[-1]))
                else:  # an OOM kill is a result too: the sampler did not fit the budget
                    runs[kind].append({"error": "killed (out of memory)" if done.returncode in (-9, 137)
                                       else done.stderr.strip()[-300:]})
        rates = {kind: statistics.median(run["batches_per_s"] for run in kind_runs) if
                 all("batches_per_s" in run for run in kind_runs) else None for kind, kind_runs in runs.items()}
        result = {"game": game, "rows": n, "codec": codec, "budget_nbytes": budget, "fraction": fraction,
                  "cap": sorted(caps), "batches": batches, "rounds": rounds,
                  "disk_nbytes": {kind: disk_nbytes(path) for kind, path in paths.items()},
                  "batches_per_s": rates, "runs": runs,
                  "codec_over_raw": None if None in rates.values() else rates[codec] / rates["raw"],
                  "codec_over_raw_stored_next": (None if None in rates.values()
                                                 else rates[codec] / rates["raw, next_obs stored"])}
        print(json.dumps(result), flush=True)
        results.append(result)
        for path in paths.values():
            os.remove(path)
    return results


def budget_child(path: str, batches: int) -> dict:
    """The capped sampler: open the pool, sample ``batches`` batches of 256 (obs and next_obs),
    report the wall time."""
    start = time.perf_counter()
    with expstore.open(path, "r") as pool:
        rng = np.random.default_rng(0)
        for _ in range(batches):
            batch = pool.sample(BATCH, rng=rng)
        assert batch["next_obs"].shape == (BATCH, *FRAME)
        seconds = time.perf_counter() - start
        cold_reads = pool.cold_reads.active
    return {"seconds": seconds, "batches_per_s": batches / seconds, "cold_reads_active": bool(cold_reads)}


# ---------------------------------------------------------------------------- one code against another
# The cold sampler of --compare-code, run by the interpreter with a given expstore first on its path.
_COLD_CHILD = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import expstore  # the checkout under test: imported before bench_heap puts its own on the path
from bench_heap import cold_rate
path, batch, batches = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
print(json.dumps({"expstore": expstore.__file__, "batches_per_s": cold_rate(path, batches, 0, batch)}))
"""


def compare_code(before: str, game: str, steps: int, count: int, cache_dir: str, work: str, batches: int,
                 rounds: int) -> dict:
    """Cold batches/s (every file dropped from the page cache before each batch, cold reads on) of the
    expstore at ``before`` (a checkout's root) against this one, in fresh processes taking turns:
    sample(256) of a zstd frame pool deriving next_obs, and sample(64) of the token rollouts."""
    from atari_frames import record

    from expstore.codecs import get_codec

    os.setpriority(os.PRIO_PROCESS, 0, 19)  # building yields to other work
    recording = record(game, steps, cache_dir=cache_dir)
    coder = get_codec("zstd:3")
    compressed = sum(len(coder.encode(frame.tobytes())) for frame in recording.frames[::20]) * 20
    frames_path = os.path.join(work, f"{game}-compare-zstd.h5")
    atari_pool(frames_path, recording, "zstd:3", int(1.25 * compressed) + (1 << 20))
    data = rollouts(count, 0)
    tokens_path = os.path.join(work, "compare-rollouts.h5")
    raw_nbytes = sum(r["prompt_ids"].nbytes + r["response_ids"].nbytes + r["logprobs"].nbytes for r in data)
    with expstore.open(tokens_path, "w", capacity=count, schema=ragged_schema(), heap_bytes=int(1.1 * raw_nbytes),
                       fsync=False) as pool:
        for row in data:
            pool.append(row)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tools = os.path.dirname(os.path.abspath(__file__))
    cases = {"frames": (frames_path, BATCH), "tokens": (tokens_path, 64)}
    runs: dict[str, dict[str, list[float]]] = {case: {"before": [], "after": []} for case in cases}
    for _ in range(rounds):
        for case, (path, batch) in cases.items():
            for label, root in (("before", before), ("after", here)):
                done = subprocess.run([sys.executable, "-c", _COLD_CHILD, root, tools, path, str(batch), str(batches)],
                                      capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": ""})
                result = json.loads(done.stdout.strip().splitlines()[-1])
                assert result["expstore"].startswith(os.path.abspath(root)), result
                runs[case][label].append(result["batches_per_s"])
    medians = {case: {label: statistics.median(rates) for label, rates in by_label.items()}
               for case, by_label in runs.items()}
    result = {"before": before, "game": game, "frames": steps, "rollouts": count, "batches": batches, "rounds": rounds,
              "runs": runs, "batches_per_s": medians,
              "after_over_before": {case: rates["after"] / rates["before"] for case, rates in medians.items()}}
    print(json.dumps(result), flush=True)
    return result


# ---------------------------------------------------------------------------- workload 2: tokens
MAX_PROMPT, MAX_RESPONSE = 512, 4096


def rollouts(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for version in range(count):
        prompt, response = int(rng.integers(32, MAX_PROMPT + 1)), int(rng.integers(16, MAX_RESPONSE + 1))
        out.append({"prompt_ids": rng.integers(0, 50_000, prompt, dtype=np.int32),
                    "response_ids": rng.integers(0, 50_000, response, dtype=np.int32),
                    "logprobs": -rng.random(response, dtype=np.float32), "reward": np.float32(rng.random()),
                    "policy_version": np.int64(version)})
    return out


def ragged_schema() -> dict:
    return {"prompt_ids": expstore.Field((None,), "int32"), "response_ids": expstore.Field((None,), "int32"),
            "logprobs": expstore.Field((None,), "float32"), "reward": ((), "float32"),
            "policy_version": ((), "int64")}


def padded_schema() -> dict:
    return {"prompt_ids": ((MAX_PROMPT,), "int32"), "prompt_length": ((), "int64"),
            "response_ids": ((MAX_RESPONSE,), "int32"), "response_length": ((), "int64"),
            "logprobs": ((MAX_RESPONSE,), "float32"), "reward": ((), "float32"), "policy_version": ((), "int64")}


def padded_row(rollout: dict) -> dict:
    row = {"reward": rollout["reward"], "policy_version": rollout["policy_version"]}
    for name, width in (("prompt_ids", MAX_PROMPT), ("response_ids", MAX_RESPONSE), ("logprobs", MAX_RESPONSE)):
        values = np.zeros(width, rollout[name].dtype)
        values[:len(rollout[name])] = rollout[name]
        row[name] = values
    row["prompt_length"] = np.int64(len(rollout["prompt_ids"]))
    row["response_length"] = np.int64(len(rollout["response_ids"]))
    return row


def pad_batch(rows: list[dict]) -> dict:
    """What a sample of the in-RAM list gives: each ragged field padded to the batch's longest row."""
    batch = {}
    for name in ("prompt_ids", "response_ids", "logprobs"):
        lengths = np.array([len(row[name]) for row in rows])
        values = np.zeros((len(rows), int(lengths.max())), rows[0][name].dtype)
        for k, row in enumerate(rows):
            values[k, :len(row[name])] = row[name]
        batch[name], batch[f"{name}_length"] = values, lengths
    batch["reward"] = np.array([row["reward"] for row in rows])
    return batch


def tokens_workload(count: int, work: str, rounds: int) -> dict:
    data = rollouts(count, 0)
    raw_nbytes = sum(r["prompt_ids"].nbytes + r["response_ids"].nbytes + r["logprobs"].nbytes for r in data)
    ragged_path, padded_path = os.path.join(work, "rollouts.zarr"), os.path.join(work, "padded.zarr")
    ragged = expstore.open(ragged_path, "w", capacity=count, schema=ragged_schema(),
                           heap_bytes=int(1.1 * raw_nbytes), fsync=False)
    padded = expstore.open(padded_path, "w", capacity=count, schema=padded_schema(), fsync=False)
    padded_rows = [padded_row(r) for r in data]
    kept: list[dict] = []
    cursor = {"ragged": 0, "padded": 0, "list": 0}

    def append(kind: str):
        def run():
            i = cursor[kind] % count
            cursor[kind] += 1
            if kind == "ragged":
                ragged.append(data[i])
            elif kind == "padded":
                padded.append(padded_rows[i])
            else:
                kept.append(data[i])
        return run

    appends = interleaved_rates({kind: append(kind) for kind in cursor}, calls=max(1, count // (3 * rounds)),
                                rounds=rounds)
    for kind, store in (("ragged", ragged), ("padded", padded)):  # fill both to count rows
        while cursor[kind] < count:
            append(kind)()
        store.flush()
    kept = kept[-count:]
    rng = np.random.default_rng(1)
    samples = interleaved_rates({
        "ragged": lambda: ragged.sample(64, rng=rng),
        "padded": lambda: padded.sample(64, rng=rng),
        "list": lambda: pad_batch([kept[i] for i in rng.integers(0, len(kept), 64)]),
    }, calls=10, rounds=rounds)
    ragged.close()
    padded.close()
    result = {"rollouts": count, "raw_token_nbytes": raw_nbytes, "appends_per_s": appends, "samples_per_s": samples,
              "append_ragged_over_list": appends["ragged"] / appends["list"],
              "append_ragged_over_padded": appends["ragged"] / appends["padded"],
              "sample_ragged_over_list": samples["ragged"] / samples["list"],
              "sample_ragged_over_padded": samples["ragged"] / samples["padded"],
              "ragged_disk_nbytes": disk_nbytes(ragged_path), "padded_disk_nbytes": disk_nbytes(padded_path)}
    result["padded_over_ragged_disk"] = result["padded_disk_nbytes"] / result["ragged_disk_nbytes"]
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--budget-child"]:  # the capped sampler of --budget (see budget_workload)
        print(json.dumps(budget_child(argv[1], int(argv[2]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", default="Pong,Breakout,Seaquest,MsPacman")
    parser.add_argument("--steps", type=int, default=3000, help="recorded agent steps per game")
    parser.add_argument("--rollouts", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per measurement (medians)")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "expstore-atari-cache"))
    parser.add_argument("--workdir", default=None, help="where the pools go (default: a temporary directory)")
    parser.add_argument("--skip-frames", action="store_true")
    parser.add_argument("--skip-tokens", action="store_true")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--budget", type=int, default=0, metavar="FRACTION",
                        help="only cold sampling under a memory budget of 1/FRACTION of the raw pool (root, for "
                             "the memory cgroup and dropping the page cache)")
    parser.add_argument("--budget-batches", type=int, default=300, help="batches per capped sampler")
    parser.add_argument("--budget-rounds", type=int, default=3, help="capped samplers per pool, in turns")
    parser.add_argument("--codec", default="zstd:3", help="the compressed pool's codec (--budget)")
    parser.add_argument("--tune-allocator", action="store_true",
                        help="run every measurement with expstore.tune_allocator() (glibc keeps the pages of "
                             "large batches)")
    parser.add_argument("--compare-code", default=None, metavar="ROOT",
                        help="only cold sampling of this expstore against the one at ROOT (another checkout)")
    args = parser.parse_args(argv)
    tune_allocator_for_run(args.tune_allocator)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        results: dict = {"versions": versions(["expstore", "numpy", "h5py", "zstandard", "ale-py"])}
        if args.compare_code:
            results["compare_code"] = compare_code(os.path.abspath(args.compare_code), args.games.split(",")[0],
                                                   args.steps, args.rollouts, args.cache_dir, work,
                                                   args.budget_batches, args.budget_rounds)
        elif args.budget:
            results["budget"] = budget_workload(args.games.split(","), args.steps, args.cache_dir, work, args.budget,
                                                args.budget_batches, args.budget_rounds, args.codec)
        elif not args.skip_frames:
            results["frames"] = frames_workload(args.games.split(","), args.steps, args.cache_dir, work, args.rounds)
        if not args.skip_tokens and not args.budget and not args.compare_code:
            results["tokens"] = tokens_workload(args.rollouts, work, args.rounds)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
