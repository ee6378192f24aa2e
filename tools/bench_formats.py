"""Round trips through the interchange formats, against each format's own writer and reader.

For every format and backend: pool -> format -> pool (export, then import back; every row is
checked equal) and format -> pool -> format (a dataset written by the format's own writer,
imported, exported again). Each step's time is given per million rows, with the time the
format's own tool takes to write and read the same rows in the same run, and the sizes on disk.

The formats' own tools: pyarrow's ``write_table``/``read_table`` (Parquet), h5py's datasets
(D4RL), Minari's ``DataCollector``/``load_dataset`` (its three storages), LeRobot's
``LeRobotDataset.create/add_frame/save_episode/finalize`` and ``LeRobotDataset[i]`` (states and
a 32x48 camera; with ``lerobot-dataset`` installed). A ragged field (token ids of their own
length) goes through Parquet as a list column, against pyarrow writing the same list column.

    python tools/bench_formats.py [--rows 200000] [--ragged-rows 200000] [--video-rows 600]
                                  [--only parquet,ragged,d4rl,minari,lerobot]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import expstore
from expstore.interchange import get_format
from tools.bench_common import disk_nbytes

BACKENDS = {"hdf5": ".h5", "zarr": ".zarr"}
SCHEMA = {"obs": ((17,), "float32"), "action": ((6,), "float32"), "reward": ((), "float32"),
          "next_obs": ((17,), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}


def _rows(n: int, episode: int = 1000) -> dict:
    rng = np.random.default_rng(0)
    observations = rng.normal(size=(n + 1, 17)).astype(np.float32)
    steps = np.arange(n)
    return {"obs": observations[:-1], "next_obs": observations[1:], "action": rng.normal(size=(n, 6)),
            "reward": rng.normal(size=n), "terminated": steps % episode == episode - 1,
            "truncated": np.zeros(n, bool)}


RAGGED_SCHEMA = {"tokens": ((None,), "int32"), "reward": ((), "float32"), "terminated": ((), "bool"),
                 "truncated": ((), "bool")}


def _ragged_rows(n: int, episode: int = 1000, longest: int = 128) -> dict:
    """Token ids of their own length (0 to ``longest``, 64 on average) per row."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, longest + 1, size=n)
    steps = np.arange(n)
    return {"tokens": [rng.integers(0, 50_000, size=k, dtype=np.int32) for k in lengths],
            "reward": rng.normal(size=n).astype(np.float32), "terminated": steps % episode == episode - 1,
            "truncated": np.zeros(n, bool)}


def _pool(path: str, rows: dict, schema: dict = SCHEMA) -> str:
    n = len(next(iter(rows.values())))
    ragged = sum(row.nbytes for value in rows.values() if isinstance(value, list) for row in value)
    heap = {"heap_bytes": 2 * ragged + (1 << 20)} if ragged else {}  # every row fits, with the heap's slack
    with expstore.open(path, "w", capacity=n, schema=schema, **heap) as pool:
        pool.extend(rows)
    return path


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _same(a: str, b: str) -> bool:
    with expstore.open(a) as left, expstore.open(b) as right:
        x, y = left[:], right[:]
    return list(x) == list(y) and all(np.array_equal(x[k], y[k]) for k in x)


def _per_million(seconds: float, rows: int) -> str:
    return f"{seconds / rows * 1e6:.2f} s"


def _size(path: str) -> str:
    return f"{disk_nbytes(path) / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------- the formats' own tools
def own_parquet(rows: dict, path: str) -> tuple[float, float]:
    """pyarrow writing the same columns (a ragged field: a list column of each row's values) and
    reading them back to numpy (each column's flat values, and a list column's offsets)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from expstore.interchange.arrow_columns import to_arrow

    def column(values):
        if isinstance(values, list):  # rows of their own length
            offsets = np.concatenate([[0], np.cumsum([len(row) for row in values])]).astype(np.int32)
            return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(values)))
        return to_arrow(np.asarray(values))

    def numpy(array):
        array = array.combine_chunks()
        offsets = array.offsets.to_numpy() if pa.types.is_list(array.type) else None
        while pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type):
            array = array.flatten()
        return array.to_numpy(zero_copy_only=False), offsets

    write = _timed(lambda: pq.write_table(pa.table({k: column(v) for k, v in rows.items()}), path,
                                          compression="zstd"))
    def read():
        table = pq.read_table(path)
        return {name: numpy(table.column(name)) for name in table.column_names}

    return write, _timed(read)


def own_d4rl(rows: dict, path: str) -> tuple[float, float]:
    import h5py

    from expstore.interchange.common import D4RL_NAMES

    def write():
        with h5py.File(path, "w") as f:
            for name, values in rows.items():
                f[D4RL_NAMES[name]] = values

    def read():
        with h5py.File(path, "r") as f:
            return {name: f[name][:] for name in f}

    return _timed(write), _timed(read)


def own_minari(rows: dict, root: str, storage: str, episode: int = 1000) -> tuple[float, float, str]:
    import gymnasium as gym
    import minari

    n = len(rows["reward"])

    class Replay(gym.Env):
        observation_space = gym.spaces.Box(-np.inf, np.inf, (17,), np.float32)
        action_space = gym.spaces.Box(-np.inf, np.inf, (6,), np.float32)

        def __init__(self):
            self.t = 0

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            return rows["obs"][min(self.t, n - 1)], {}

        def step(self, action):
            t = self.t
            self.t += 1
            return rows["next_obs"][t], float(rows["reward"][t]), bool(rows["terminated"][t]), False, {}

    os.environ["MINARI_DATASETS_PATH"] = root
    dataset_id = f"bench/{storage}-v0"

    def write():
        env = minari.DataCollector(Replay(), data_format=storage)
        env.reset(seed=0)
        for t in range(n):
            *_, terminated, truncated, _ = env.step(rows["action"][t].astype(np.float32))
            if terminated or truncated:
                env.reset()
        env.create_dataset(dataset_id, algorithm_name="bench", code_permalink="none", author="bench",
                           author_email="bench@example.org", description="bench")

    def read():
        return [episode.rewards for episode in minari.load_dataset(dataset_id).iterate_episodes()]

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _timed(write), _timed(read), os.path.join(root, "bench", f"{storage}-v0")


def own_lerobot(n: int, root: str, video: bool) -> tuple[float, float]:
    from tests.helpers.lerobot import gradient_frame, import_lerobot_dataset

    module = import_lerobot_dataset()
    features = {"observation.state": {"dtype": "float32", "shape": (17,), "names": None},
                "action": {"dtype": "float32", "shape": (6,), "names": None}}
    if video:
        features["observation.images.cam"] = {"dtype": "video", "shape": (32, 48, 3),
                                              "names": ["height", "width", "channels"]}
    rng = np.random.default_rng(0)

    def write():
        dataset = module.LeRobotDataset.create("bench/own", fps=30, root=root, features=features,
                                               use_videos=video)
        for t in range(n):
            frame = {"observation.state": rng.normal(size=17).astype(np.float32),
                     "action": rng.normal(size=6).astype(np.float32), "task": "bench"}
            if video:
                frame["observation.images.cam"] = gradient_frame(t)
            dataset.add_frame(frame)
            if t % 200 == 199 or t == n - 1:
                dataset.save_episode()
        dataset.finalize()

    def read():
        dataset = module.LeRobotDataset("bench/own", root=root)
        return [dataset[k] for k in range(len(dataset))]

    return _timed(write), _timed(read)


# ---------------------------------------------------------------------------- the table
_PARTS = ("parquet", "ragged", "d4rl", "minari", "lerobot")


def run(fmt: str, backend: str, rows: dict, work: str, dest: str, options: dict, own, schema=SCHEMA, *,
        fmt_name: str | None = None) -> list[str]:
    """One table row; ``fmt`` labels it, ``fmt_name`` (default ``fmt``) is the registered format."""
    n = len(next(iter(rows.values())))
    suffix = BACKENDS[backend]
    label = fmt
    fmt = fmt_name or fmt
    src = _pool(os.path.join(work, f"src-{dest}{suffix}"), rows, schema)
    chosen = get_format(fmt)
    out = os.path.join(work, dest)
    export = _timed(lambda: chosen.export_pool(src, out, **options))
    back = os.path.join(work, f"back-{dest}{suffix}")
    imported = _timed(lambda: chosen.import_pool(out, back))
    equal = _same(src, back)
    own_write, own_read, own_path = own(out + ".own")
    again_pool = os.path.join(work, f"again-{dest}{suffix}")
    again_import = _timed(lambda: chosen.import_pool(own_path, again_pool))
    again = os.path.join(work, "again-" + dest)
    again_export = _timed(lambda: chosen.export_pool(again_pool, again, **options))
    line = [label + (f" ({options})" if options else ""), backend, str(n), _size(src), _size(out),
            _per_million(export, n), _per_million(own_write, n), _per_million(imported, n),
            _per_million(own_read, n), "yes" if equal else "NO", _size(own_path),
            _per_million(again_import, n), _per_million(again_export, n), _size(again)]
    for path in (src, out, back, own_path, again_pool, again):
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.path.exists(path) and os.remove(path)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--minari-rows", type=int, default=50_000)
    parser.add_argument("--lerobot-rows", type=int, default=2_000)
    parser.add_argument("--video-rows", type=int, default=600)
    parser.add_argument("--ragged-rows", type=int, default=200_000)
    parser.add_argument("--only", default=",".join(_PARTS),
                        help=f"comma-separated, of {', '.join(_PARTS)} (default: all)")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    if not parts <= set(_PARTS):
        parser.error(f"--only {args.only}: the parts are {', '.join(_PARTS)}")
    work = tempfile.mkdtemp(prefix="bench-formats-")
    rows = _rows(args.rows)
    header = ["format", "backend", "rows", "pool", "export size", "export /1M", "own writer /1M", "import /1M",
              "own reader /1M", "bit for bit", "own file", "own->pool /1M", "pool->format /1M", "re-export size"]
    table = []
    for backend in BACKENDS:
        def own_file(path, writer):
            write, read = writer(rows, path)
            return write, read, path

        if "parquet" in parts:
            table.append(run("parquet", backend, rows, work, f"rows-{backend}.parquet", {},
                             lambda path: own_file(path + ".parquet", own_parquet)))
        if "ragged" in parts:
            tokens = _ragged_rows(args.ragged_rows)
            table.append(run("parquet, ragged tokens", backend, tokens, work, f"ragged-{backend}.parquet", {},
                             lambda path, tokens=tokens: (*own_parquet(tokens, path + ".parquet"),
                                                          path + ".parquet"), RAGGED_SCHEMA, fmt_name="parquet"))
        if "d4rl" in parts:
            table.append(run("d4rl", backend, rows, work, f"rows-{backend}.hdf5", {},
                             lambda path: own_file(path + ".hdf5", own_d4rl)))
        small = {k: v[:args.minari_rows] for k, v in rows.items()}
        for storage in ("hdf5", "arrow", "parquet") if "minari" in parts else ():
            table.append(run("minari", backend, small, work, f"minari-{storage}-{backend}-v0",
                             {"data_format": storage},
                             lambda path, storage=storage, small=small: own_minari(small, path, storage)))
        if "lerobot" not in parts:
            continue
        try:
            states = {k: v[:args.lerobot_rows] for k, v in rows.items()}
            table.append(run("lerobot", backend, states, work, f"lerobot-{backend}", {},
                             lambda path: (*own_lerobot(args.lerobot_rows, path, video=False), path)))
            camera = dict(SCHEMA, cam=((32, 48, 3), "uint8"))
            from tests.helpers.lerobot import gradient_frame

            frames = {k: v[:args.video_rows] for k, v in rows.items()}
            frames["cam"] = np.stack([gradient_frame(t) for t in range(args.video_rows)])
            for codec in ("libsvtav1", "lossless"):
                table.append(run("lerobot", backend, frames, work, f"lerobot-video-{codec}-{backend}",
                                 {"video_codec": codec},
                                 lambda path: (*own_lerobot(args.video_rows, path, video=True), path), camera))
        except BaseException as exc:  # pytest's skip when lerobot-dataset is missing
            print(f"LeRobot rows skipped: {exc}", file=sys.stderr)
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for line in table:
        print("| " + " | ".join(line) + " |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
