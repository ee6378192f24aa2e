"""Atari replay on disk: bytes per transition and stacked sampling, real ALE frames, one run.

Records (or loads from --cache-dir) real preprocessed frames of each game with a random policy
(tools/atari_frames.py: 84x84 gray, frame skip 4), then measures:

- bytes per transition of a 4-frame-stack replay: SB3's ReplayBuffer (stacked obs + next_obs, and
  with optimize_memory_usage), TorchRL's LazyMemmapStorage with stacked observations, a raw
  expstore pool with stacked fields, an expstore pool of single frames with derived next_obs,
  and the same with the frames compressed (Field(..., codec=CODEC) for each --codec). Fixed-size
  layouts are measured on pools of --layout-rows rows (their bytes per row do not depend on the
  count); the compressed pools hold every recorded frame, and the 1M-transition figures
  extrapolate the measured bytes per transition (said so in the output);
- each codec's bytes and CPU cost per frame (one frame per call, as a pool codes its rows; a
  ``+dict`` codec with a dictionary trained on the first 2,000 frames, as a pool trains it);
- sampling batches of 32 and 256 stacked transitions (obs and next_obs (4, 84, 84)) from one game,
  hot (page cache warm) and cold (the pool's pages dropped from the page cache before each
  batch), against SB3's in-RAM buffer, TorchRL's memmap storage and the raw stacked pool;
- with --budget F: cold sampling under a memory budget of 1/F of the raw stacked pool of every
  recorded transition of that game: each pool sampled by a fresh process in a memory cgroup of
  that size (page cache included), after the page cache was dropped, for a fixed number of
  batches (root only; elsewhere the samplers run uncapped and the table says so);

    python tools/bench_atari.py --steps 100000 --budget 4 --cache-dir runs/atari-cache
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import expstore
from expstore.schema import Field
from tools.atari_frames import GAMES, AtariRecording, record
from tools.bench_common import disk_nbytes, evict, machine, markdown_table, tune_allocator_for_run, versions

K = 4


def stacked(frames: np.ndarray, done: np.ndarray, k: int = K) -> np.ndarray:
    """(n, k, 84, 84) zero-padded stacks (VecFrameStack's padding), newest frame last."""
    starts = np.maximum.accumulate(np.where(np.r_[True, done[:-1]], np.arange(len(frames)), 0))
    back = np.arange(k - 1, -1, -1)
    ids = np.arange(len(frames))[:, None] - back[None, :]
    present = ids >= starts[:, None]
    out = frames[np.maximum(ids, 0)]
    out[~present] = 0
    return out


def next_stacked(rec: AtariRecording, obs_stacks: np.ndarray) -> np.ndarray:
    return np.concatenate([obs_stacks[:, 1:], rec.next_frames()[:, None]], axis=1)


# ---------------------------------------------------------------------------------------- bytes
def sb3_bytes_per_transition(optimize: bool, rows: int) -> float:
    from gymnasium import spaces
    from stable_baselines3.common.buffers import ReplayBuffer

    space = spaces.Box(0, 255, (K, 84, 84), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buffer = ReplayBuffer(rows, space, spaces.Discrete(18), device="cpu", optimize_memory_usage=optimize,
                              handle_timeout_termination=not optimize)
    arrays = [buffer.observations, buffer.actions, buffer.rewards, buffer.dones, buffer.timeouts]
    if not optimize:
        arrays.append(buffer.next_observations)
    return sum(a.nbytes for a in arrays) / rows


def torchrl_bytes_per_transition(rows: int, where: str) -> float:
    import torch
    from tensordict import TensorDict
    from torchrl.data import LazyMemmapStorage

    storage = LazyMemmapStorage(rows, scratch_dir=where)
    one = TensorDict({"observation": torch.zeros(rows, K, 84, 84, dtype=torch.uint8),
                      "action": torch.zeros(rows, dtype=torch.int64), "reward": torch.zeros(rows),
                      "done": torch.zeros(rows, dtype=torch.bool), "terminated": torch.zeros(rows, dtype=torch.bool),
                      "next": {"observation": torch.zeros(rows, K, 84, 84, dtype=torch.uint8),
                               "reward": torch.zeros(rows), "done": torch.zeros(rows, dtype=torch.bool)}},
                     batch_size=[rows])
    storage.set(torch.arange(rows), one)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(where) for f in fs) / rows


def scalar_fields() -> dict:
    return {"action": ((), "int64"), "reward": ((), "float32"), "terminated": ((), "bool"),
            "truncated": ((), "bool")}


def expstore_pool(path: str, kind: str, capacity: int, episodes: int, heap_bytes: int | None = None,
                  codec: str = "zstd:3", slot_chunks: bool = False):
    """A pool as a user would size it for this run: commits (and slack) every 1% of the capacity,
    as 10,000-row commits are for 1M rows, and episode and final-observation tables for twice the
    run's episodes (the defaults, one entry per slot and one final frame per 16 slots, are sized for
    short episodes). ``slot_chunks`` (compressed pools, which hold every recorded transition):
    chunks of the slack's rows, so that the arrays have capacity + slack slots as a 1M pool's
    nearly have (default chunks of 32,768 index rows round a 100,000-row pool up to 131,072 slots,
    a 1M one only to 1,015,808)."""
    schema = scalar_fields()
    slack = max(64, capacity // 100)
    sizing = {"slack": slack, "commit_every": slack, "max_episodes": max(64, 2 * episodes), "fsync": False}
    if slot_chunks and kind == "zstd":
        sizing["chunk_rows"] = slack
    if kind == "stacked":
        schema = {"obs": ((K, 84, 84), "uint8"), "next_obs": ((K, 84, 84), "uint8"), **schema}
        return expstore.open(path, "w", capacity=capacity, schema=schema, **sizing)
    frame = Field((84, 84), "uint8", codec=codec) if kind == "zstd" else Field((84, 84), "uint8")
    options = {"heap_bytes": heap_bytes} if heap_bytes else {}
    return expstore.open(path, "w", capacity=capacity, schema={"obs": frame, **schema}, derive_next_obs=True,
                         max_final_obs=max(64, 2 * episodes), **sizing, **options)


def episodes_in(rec: AtariRecording, rows: int) -> int:
    return int(rec.done[:rows].sum()) + 1


def fill(pool, rec: AtariRecording, kind: str, rows: int) -> None:
    batch_rows = 2000
    nxt = rec.next_frames()
    for start in range(0, rows, batch_rows):
        part = slice(start, min(rows, start + batch_rows))
        batch = {"action": rec.actions[part], "reward": rec.rewards[part], "terminated": rec.terminated[part],
                 "truncated": rec.truncated[part]}
        if kind == "stacked":
            obs = stacked_slice(rec, part)
            batch["obs"], batch["next_obs"] = obs, np.concatenate([obs[:, 1:], nxt[part][:, None]], axis=1)
        else:
            batch["obs"], batch["next_obs"] = rec.frames[part], nxt[part]
        pool.extend(batch)
    pool.flush()


def stacked_slice(rec: AtariRecording, part: slice) -> np.ndarray:
    first = max(0, part.start - K)
    return stacked(rec.frames[first:part.stop], rec.done[first:part.stop])[part.start - first:]


def expstore_bytes(rec: AtariRecording, kind: str, rows: int, where: str, codec: str = "zstd:3") -> float:
    path = os.path.join(where, f"{kind}.h5")
    if kind != "zstd":
        with expstore_pool(path, kind, rows, episodes_in(rec, rows)) as pool:
            fill(pool, rec, kind, rows)
        return disk_nbytes(path) / rows
    # A heap as large as the raw frames holds any row; the bytes a replay needs are the fixed
    # arrays plus the heap bytes its rows take (a pool is then created with that heap_bytes).
    with expstore_pool(path, kind, rows, episodes_in(rec, rows), heap_bytes=rows * 84 * 84, codec=codec,
                       slot_chunks=True) as pool:
        fill(pool, rec, kind, rows)
        usage = pool.heap_usage()["obs"]
    heap_size = int(usage["heap_nbytes"])
    stored = int(usage["stored_nbytes"])
    return (disk_nbytes(path) - heap_size + stored) / rows


def codec_cost(rec: AtariRecording, codec_name: str, every: int = 10) -> tuple[float, float, float]:
    """Bytes per frame, and CPU microseconds to encode and to decode one, over every ``every``-th
    frame of the recording (one frame per call, as a pool codes its rows)."""
    from expstore.backends.internal import DICTIONARY_NBYTES
    from expstore.codecs import get_codec
    from expstore.codecs.registry import train_dictionary, uses_dictionary, with_dictionary
    from expstore.core.heap_dictionary import TRAIN_ROWS

    codec = get_codec(codec_name)
    if uses_dictionary(codec_name):  # trained as a pool trains it: on the first rows it stores
        samples = [np.ascontiguousarray(frame).tobytes() for frame in rec.frames[:TRAIN_ROWS]]
        codec = with_dictionary(codec, train_dictionary(samples, DICTIONARY_NBYTES))
    frames = [np.ascontiguousarray(frame).tobytes() for frame in rec.frames[::every]]
    start = time.process_time()
    encoded = [codec.encode(frame) for frame in frames]
    encode_s = time.process_time() - start
    start = time.process_time()
    for data in encoded:
        codec.decode(data, 84 * 84)
    decode_s = time.process_time() - start
    n = len(frames)
    return sum(map(len, encoded)) / n, encode_s / n * 1e6, decode_s / n * 1e6


# ---------------------------------------------------------------------------------------- sampling
def rate_per_s(fn, calls: int, cold_paths: list[str] | None = None) -> float:
    """Batches per second. Hot: per CPU second of this process (threads included), because on a
    shared machine wall time mostly measures the other jobs; cold: per wall second, which waits on
    the disk."""
    fn()
    clock = time.perf_counter if cold_paths else time.process_time
    elapsed = 0.0
    for _ in range(calls):
        if cold_paths:
            for path in cold_paths:
                evict(path)
        start = clock()
        fn()
        elapsed += clock() - start
    return calls / elapsed


def sampling_table(rec: AtariRecording, rows: int, where: str, calls: int, codec: str) -> list[list[object]]:
    import torch
    from gymnasium import spaces
    from stable_baselines3.common.buffers import ReplayBuffer
    from tensordict import TensorDict
    from torchrl.data import LazyMemmapStorage

    obs = stacked(rec.frames[:rows], rec.done[:rows])
    nxt = np.concatenate([obs[:, 1:], rec.next_frames()[:rows, None]], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sb3 = ReplayBuffer(rows, spaces.Box(0, 255, (K, 84, 84), np.uint8), spaces.Discrete(18), device="cpu")
    sb3.observations[:, 0], sb3.next_observations[:, 0] = obs, nxt
    sb3.actions[:, 0, 0], sb3.rewards[:, 0], sb3.dones[:, 0] = rec.actions[:rows], rec.rewards[:rows], rec.done[:rows]
    sb3.full = True
    trl_dir = os.path.join(where, "torchrl")
    storage = LazyMemmapStorage(rows, scratch_dir=trl_dir)
    storage.set(torch.arange(rows), TensorDict({"observation": torch.from_numpy(obs),
                                                "next": {"observation": torch.from_numpy(nxt)},
                                                "action": torch.from_numpy(rec.actions[:rows])}, batch_size=[rows]))
    del obs, nxt
    pools = {}
    for kind in ("stacked", "frames", "zstd"):
        path = os.path.join(where, f"sample-{kind}.h5")
        pool = expstore_pool(path, kind, rows, episodes_in(rec, rows),
                             heap_bytes=rows * 84 * 84 if kind == "zstd" else None, codec=codec)
        fill(pool, rec, kind, rows)
        pool.close()
        pools[kind] = (path, expstore.open(path, "r"))
    rng = np.random.default_rng(0)
    table = []
    for batch in (32, 256):
        systems = {
            "SB3 ReplayBuffer (in RAM, stacked)": (lambda b=batch: sb3.sample(b), None),
            "TorchRL LazyMemmapStorage (stacked)": (lambda b=batch: storage.get(torch.from_numpy(
                rng.integers(0, rows, b))), [trl_dir]),
            "expstore raw stacked": (lambda b=batch: pools["stacked"][1].sample(b, rng=rng), [pools["stacked"][0]]),
            "expstore frames, frame_stack=4": (lambda b=batch: pools["frames"][1].sample(
                b, rng=rng, frame_stack=K, stack_padding="zero"), [pools["frames"][0]]),
            f"expstore {codec} frames, frame_stack=4": (lambda b=batch: pools["zstd"][1].sample(
                b, rng=rng, frame_stack=K, stack_padding="zero"), [pools["zstd"][0]]),
        }
        hot = {name: rate_per_s(fn, calls) for name, (fn, _) in systems.items()}
        cold = {name: rate_per_s(fn, max(3, calls // 10), paths) for name, (fn, paths) in systems.items() if paths}
        base_hot = hot["SB3 ReplayBuffer (in RAM, stacked)"]
        base_cold = cold["expstore raw stacked"]
        for name in systems:
            table.append([batch, name, f"{hot[name]:,.0f}", f"{hot[name] / base_hot:.2f}x",
                          f"{cold[name]:,.0f}" if name in cold else "-",
                          f"{cold[name] / base_cold:.2f}x" if name in cold else "-"])
    for _, pool in pools.values():
        pool.close()
    return table


# ---------------------------------------------------------------------------------------- under a budget
def budget_table(rec: AtariRecording, where: str, codec: str, fraction: int, batches: int) -> tuple[str, list]:
    """Cold sampling under a memory budget: the raw stacked pool of every transition of ``rec`` is
    ``fraction`` times the budget; each sampler is a fresh process in a memory cgroup of that size
    (page cache included), started after the page cache was dropped, and times ``batches``
    batches (its open included)."""
    from tools.larger_than_ram import make_cgroup

    rows = len(rec)
    per_frame = codec_cost(rec, codec, every=50)[0]
    paths = {}
    for kind in ("stacked", "frames", "zstd"):
        paths[kind] = os.path.join(where, f"budget-{kind}.h5")
        heap = int(rows * per_frame * 1.25) + (1 << 20) if kind == "zstd" else None
        with expstore_pool(paths[kind], kind, rows, episodes_in(rec, rows), heap_bytes=heap, codec=codec) as pool:
            fill(pool, rec, kind, rows)
    budget = disk_nbytes(paths["stacked"]) // fraction
    names = {"stacked": "expstore raw stacked", "frames": "expstore frames, frame_stack=4",
             "zstd": f"expstore {codec} frames, frame_stack=4"}
    table, caps = [], set()
    for batch in (32, 256):
        rates = {}
        for kind, path in paths.items():
            drop_page_cache(list(paths.values()))
            cgroup = make_cgroup(budget)
            command = [sys.executable, os.path.abspath(__file__), "--budget-child", path, kind, str(batch),
                       str(batches)]
            if cgroup is None:
                caps.add("none (no memory cgroup could be made)")
                done = subprocess.run(command, capture_output=True, text=True, check=False)
            else:
                directory, version = cgroup
                caps.add(f"cgroup {version}")
                try:
                    done = subprocess.run(["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', directory, *command],
                                          capture_output=True, text=True, check=False)
                finally:
                    with contextlib.suppress(OSError):
                        os.rmdir(directory)
            if done.returncode == 0:
                rates[kind] = json.loads(done.stdout.strip().splitlines()[-1])
            else:  # an OOM kill is a result too: the sampler did not fit the budget
                reason = "killed (out of memory)" if done.returncode in (-9, 137) else done.stderr.strip()[-200:]
                rates[kind] = {"error": reason}
        base = rates["stacked"].get("batches_per_s", float("nan"))
        for kind, result in rates.items():
            size = disk_nbytes(paths[kind])
            timing = [result["error"], "-", "-"] if "error" in result else [
                f"{result['seconds']:.1f}", f"{result['batches_per_s']:,.0f}", f"{result['batches_per_s'] / base:.2f}x"]
            table.append([batch, names[kind], f"{size / 2**20:,.0f} MiB", f"{size / budget:.2f}x", *timing])
    title = (f"{rows:,} {rec.game} transitions, memory budget {budget / 2**20:,.0f} MiB "
             f"(1/{fraction} of the raw stacked pool; {', '.join(sorted(caps))}), {batches} batches per run")
    return title, table


def drop_page_cache(paths: list[str]) -> None:
    """Drop the whole page cache (root), else at least these pools' pages."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write("3\n")
    except OSError:
        for path in paths:
            evict(path)


def budget_child(path: str, kind: str, batch: int, batches: int) -> dict:
    """The capped sampler: open the pool, sample ``batches`` batches, report the wall time."""
    import numpy.random  # noqa: F401  loads lazily: an import, not the sampler's work (as in bench_peers.py)

    start = time.perf_counter()
    pool = expstore.open(path, "r")
    options = {} if kind == "stacked" else {"frame_stack": K, "stack_padding": "zero"}
    rng = np.random.default_rng(0)
    for _ in range(batches):
        pool.sample(batch, rng=rng, **options)
    seconds = time.perf_counter() - start
    pool.close()
    return {"seconds": seconds, "batches_per_s": batches / seconds}


def check_stacks(rec: AtariRecording, where: str, codec: str) -> None:
    """The compressed single-frame pool returns SB3's stacks bit for bit (a sanity check of the run)."""
    rows = min(len(rec), 3000)
    path = os.path.join(where, "check.h5")
    with expstore_pool(path, "zstd", rows, episodes_in(rec, rows), heap_bytes=rows * 84 * 84, codec=codec) as pool:
        fill(pool, rec, "zstd", rows)
        steps = np.arange(rows - 1)
        got = pool.read(steps, frame_stack=K, stack_padding="zero")
    expected = stacked(rec.frames[:rows], rec.done[:rows])
    assert np.array_equal(got["obs"], expected[:-1])
    assert np.array_equal(got["next_obs"], next_stacked(rec, expected)[:-1] if rows == len(rec) else
                          np.concatenate([expected[:-1, 1:], rec.next_frames()[:rows - 1, None]], axis=1))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--budget-child"]:  # the capped sampler of --budget (see budget_table)
        path, kind, batch, batches = argv[1:5]
        print(json.dumps(budget_child(path, kind, int(batch), int(batches))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000, help="transitions recorded per game")
    parser.add_argument("--game", action="append", choices=GAMES, help="repeatable; default: all four")
    parser.add_argument("--game-steps", action="append", default=[], metavar="GAME=N",
                        help="another transition count for one game (repeatable), e.g. MsPacman=30000")
    parser.add_argument("--cache-dir", default=None, help="recordings are kept there as .npz and reused")
    parser.add_argument("--codec", action="append", default=None, metavar="CODEC",
                        help="frame codecs measured (repeatable); default: zstd:3 and zstd:12")
    parser.add_argument("--sample-codec", default="zstd:12", help="the frame codec of the sampling pools")
    parser.add_argument("--layout-rows", type=int, default=5000, help="rows of the fixed-size layouts measured")
    parser.add_argument("--sample-game", default="Breakout", choices=GAMES)
    parser.add_argument("--sample-rows", type=int, default=20_000, help="transitions of the hot sampling pools")
    parser.add_argument("--calls", type=int, default=200, help="batches per hot measurement")
    parser.add_argument("--budget", type=int, default=0, metavar="FRACTION",
                        help="also sample every transition of --sample-game cold under a memory budget of "
                             "1/FRACTION of the raw stacked pool (e.g. 4; needs root for the cgroup)")
    parser.add_argument("--budget-batches", type=int, default=1000, help="batches per capped sampler")
    parser.add_argument("--skip-bytes", action="store_true", help="only the sampling tables")
    parser.add_argument("--tune-allocator", action="store_true",
                        help="run every measurement with expstore.tune_allocator() (glibc keeps the pages of "
                             "large batches)")
    args = parser.parse_args(argv)
    tune_allocator_for_run(args.tune_allocator)
    codecs = args.codec or ["zstd:3", "zstd:12"]
    logging.basicConfig(level=logging.WARNING)
    where = tempfile.mkdtemp(prefix="bench-atari-")
    try:
        print(f"# Atari replay, real frames ({machine()})\n")
        print(versions(["numpy", "h5py", "zarr", "ale-py", "stable-baselines3", "torchrl", "zstandard"]) + "\n")
        steps_of = {game: int(count) for game, count in (item.split("=") for item in args.game_steps)}
        recordings = {}
        if not args.skip_bytes:
            recordings = bytes_tables(args, codecs, steps_of, where)
        game = args.sample_game
        rec = recordings.get(game) or record(game, steps_of.get(game, args.steps), cache_dir=args.cache_dir)
        check_stacks(rec, where, args.sample_codec)
        sample_rows = min(args.sample_rows, len(rec))
        print(f"\n## Sampling stacked batches from {game}, {sample_rows:,} transitions "
              "(batches per CPU second hot, page cache warm; per wall second cold, the pool's pages dropped "
              "before every batch)\n")
        print(markdown_table(["batch", "system", "hot batches/s", "vs SB3 in RAM", "cold batches/s",
                              "vs expstore raw stacked (cold)"],
                             sampling_table(rec, sample_rows, where, args.calls, args.sample_codec)))
        if args.budget:
            title, table = budget_table(rec, where, args.sample_codec, args.budget, args.budget_batches)
            print(f"\n## Cold sampling under a memory budget: {title}\n")
            print(markdown_table(["batch", "pool", "on disk", "vs budget", "seconds", "batches/s",
                                  "vs raw stacked"], table))
    finally:
        shutil.rmtree(where, ignore_errors=True)
    return 0


def bytes_tables(args, codecs: list[str], steps_of: dict[str, int], where: str) -> dict[str, AtariRecording]:
    """The bytes-per-transition table of every game, and the frame codecs' cost per frame."""
    layout_rows = args.layout_rows
    fixed = {
        "SB3 ReplayBuffer (stacked obs + next_obs)": sb3_bytes_per_transition(False, layout_rows),
        "SB3 ReplayBuffer optimize_memory_usage": sb3_bytes_per_transition(True, layout_rows),
        "TorchRL LazyMemmapStorage (stacked obs + next obs)": torchrl_bytes_per_transition(
            layout_rows, os.path.join(where, "trl-bytes")),
    }
    rows, costs, recordings = [], [], {}
    for game in args.game or GAMES:
        rec = record(game, steps_of.get(game, args.steps), cache_dir=args.cache_dir, progress=True)
        recordings[game] = rec
        measured = dict(fixed)
        n_fixed = min(layout_rows, len(rec))
        measured["expstore raw stacked fields"] = expstore_bytes(rec, "stacked", n_fixed, where)
        measured["expstore single frames + derived next_obs"] = expstore_bytes(rec, "frames", n_fixed, where)
        for codec in codecs:
            measured[f"expstore {codec} single frames + derived next_obs"] = expstore_bytes(
                rec, "zstd", len(rec), where, codec)
            per_frame, encode_us, decode_us = codec_cost(rec, codec)
            costs.append([game, codec, f"{per_frame:,.0f}", f"{84 * 84 / per_frame:.1f}x", f"{encode_us:,.0f}",
                          f"{decode_us:,.1f}"])
        base = measured["SB3 ReplayBuffer optimize_memory_usage"]
        for name, value in measured.items():
            rows.append([game, len(rec), name, f"{value:,.0f}", f"{value * 1e6 / 2**30:.2f}", f"{base / value:.1f}x"])
        for name in ("stacked", "frames", "zstd"):
            Path(where, f"{name}.h5").unlink(missing_ok=True)
    print("## Bytes per transition (4-frame stacks; 1M column: extrapolated from the measured bytes per "
          "transition)\n")
    print(markdown_table(["game", "transitions recorded", "layout", "bytes/transition", "GiB at 1M",
                          "SB3 optimize_memory_usage / this"], rows))
    print("\n## Frame codecs: one 84x84 frame per call (every 10th recorded frame; CPU microseconds)\n")
    print(markdown_table(["game", "codec", "bytes/frame", "ratio", "encode us/frame", "decode us/frame"], costs))
    return recordings


if __name__ == "__main__":
    sys.exit(main())
