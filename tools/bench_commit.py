"""Commit cost benchmark: what durability costs, with and without fsync, at several cadences.

For both backends, a writer appends single transitions (as an env loop does) and commits with
an explicit ``flush()`` every N rows, N in 1, 100, 10,000; once with ``fsync=False`` (survives a
killed process, not a power cut) and once with ``fsync=True`` (fdatasync of the rows, then of
the commit record). It reports the time per commit, the appends per second at that
cadence (append CPU time plus commit wall time), and that rate against the same appends with
no commit at all, measured in the same run. Each case is the fastest of ``--repeats`` runs
(commit time: their median) on a fresh pool whose ring was written once before timing
(steady state, no first-touch page faults).

fsync cost depends entirely on the device under ``--dir``: run it on the disk the pools will
live on (a tmpfs or a disk with a volatile write cache makes fsync look free).

``--checksums`` creates the pools with ``checksums=True``. ``--compare-with DIR`` measures another
expstore source tree too (say a checkout of an earlier commit), in the same run: child processes
import one tree or the other, alternating round by round, and the table shows appends per second
before (DIR) and after (this tree) with their ratio.

    python tools/bench_commit.py                     # in a temporary directory under .
    python tools/bench_commit.py --dir /data --seconds 2 --repeats 5
    git worktree add ../before HEAD~1 && python tools/bench_commit.py --checksums --compare-with ../before
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc

import expstore

CADENCES = (1, 100, 10_000)
CAPACITY = 100_000
THIS_TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FSYNCS = {"off": (False,), "on": (True,), "both": (False, True)}


def filesystem_of(path: str) -> str:
    """The type and mount point of the file system holding ``path``, from /proc/mounts (Linux)."""
    path = os.path.realpath(path)
    best = ("", "unknown file system")
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                _device, mount_point, fs_type, *_ = line.split()
                inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best[0]):
                    best = (mount_point, fs_type)
    except OSError:
        pass
    return f"{best[1]} at {best[0] or '?'}"


def measure(path: str, rows_per_commit: int | None, fsync: bool, seconds: float, stream: list[dict],
            warm_rows: dict, checksums: bool) -> dict:
    """Append for about ``seconds`` with a flush every ``rows_per_commit`` rows (None: never)."""
    cadence = rows_per_commit or len(stream)
    # slack=capacity: no commit is forced before the explicit flush, at any cadence here.
    with expstore.open(path, "w", capacity=CAPACITY, schema=bc.PENDULUM, slack=CAPACITY, checksums=checksums,
                       commit_every=10**12, commit_interval_s=1e9, fsync=fsync) as pool:
        pool.extend(warm_rows)  # steady state: every page of the ring touched once, then synced
        pool.flush(fsync=True)
        append_s = commit_s = 0.0
        rows = commits = 0
        while append_s + commit_s < seconds or commits < 3:
            # Appends are pure CPU: count this process's CPU time, which other jobs on a shared
            # machine barely disturb. A commit waits on the disk: count wall time.
            started = time.process_time()
            for transition in stream[:cadence]:
                pool.append(transition)
            append_s += time.process_time() - started
            flushed = time.perf_counter()
            if rows_per_commit is not None:
                pool.flush()
            commit_s += time.perf_counter() - flushed
            rows, commits = rows + cadence, commits + 1
    return {"rows": rows, "commits": commits if rows_per_commit else 0,
            "ms_per_commit": 1e3 * commit_s / commits if rows_per_commit else None,
            "appends_per_s": rows / (append_s + commit_s)}


def best_of(repeats: int, *args) -> dict:
    """The fastest of ``repeats`` runs (other jobs only ever slow a run down), with the median
    commit time (an fsync's cost swings with the disk's other traffic; the median is typical)."""
    results = [measure(*args) for _ in range(repeats)]
    best = max(results, key=lambda result: result["appends_per_s"])
    commit_costs = [r["ms_per_commit"] for r in results if r["ms_per_commit"] is not None]
    return {**best, "ms_per_commit": statistics.median(commit_costs) if commit_costs else None}


def run(directory: str, seconds: float, repeats: int, checksums: bool, fsyncs: tuple[bool, ...]) -> list[dict]:
    """Every case on both backends: a dict per case, ``appends_per_s`` against ``no_commit_per_s``."""
    stream = bc.transitions(bc.make_rows(bc.PENDULUM, max(CADENCES)), max(CADENCES))
    warm_rows = bc.make_rows(bc.PENDULUM, 2 * CAPACITY, seed=1)
    cases = []
    for backend, suffix in (("hdf5", ".h5"), ("zarr", ".zarr")):
        path = os.path.join(directory, f"bench{suffix}")
        baseline = best_of(repeats, path, None, False, seconds, stream, warm_rows, checksums)
        cases.append({"backend": backend, "commit": "no commit", "fsync": "-", **baseline})
        for fsync in fsyncs:
            for cadence in CADENCES:
                result = best_of(repeats, path, cadence, fsync, seconds, stream, warm_rows, checksums)
                cases.append({"backend": backend, "commit": f"every {cadence:,} rows",
                              "fsync": "on" if fsync else "off",
                              **result, "no_commit_per_s": baseline["appends_per_s"]})
        expstore.backends.files.remove_path(path)
    return cases


def cost_table(cases: list[dict]) -> str:
    rows = [[c["backend"], c["commit"], c["fsync"],
             _ms(c), bc.human(c["appends_per_s"]),
             bc.ratio(c["appends_per_s"], c.get("no_commit_per_s", c["appends_per_s"]))] for c in cases]
    header = ["backend", "commit", "fsync", "ms per commit (median)", "appends/s", "vs no commit"]
    return bc.markdown_table(header, rows)


def run_tree(tree: str, args: argparse.Namespace) -> list[dict]:
    """One round of every case in a child process that imports expstore from ``tree``."""
    command = [sys.executable, os.path.abspath(__file__), "--json", "--dir", args.dir, "--seconds", str(args.seconds),
               "--repeats", "1", "--fsync", args.fsync] + (["--checksums"] if args.checksums else [])
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    out = json.loads(subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout)
    if os.path.commonpath([out["expstore"], os.path.abspath(tree)]) != os.path.abspath(tree):
        raise SystemExit(f"the child imported {out['expstore']}, not the expstore of {tree}")
    return out["cases"]


def compare(args: argparse.Namespace) -> str:
    """Both trees, alternating round by round; per case the fastest round of each."""
    rounds: dict[str, list[list[dict]]] = {"before": [], "after": []}
    for _ in range(args.repeats):
        rounds["before"].append(run_tree(args.compare_with, args))
        rounds["after"].append(run_tree(THIS_TREE, args))
    best = {side: [max(case_rounds, key=lambda c: c["appends_per_s"]) for case_rounds in zip(*runs, strict=True)]
            for side, runs in rounds.items()}
    rows = [[b["backend"], b["commit"], b["fsync"], _ms(b), _ms(a), bc.human(b["appends_per_s"]),
             bc.human(a["appends_per_s"]), bc.ratio(a["appends_per_s"], b["appends_per_s"])]
            for b, a in zip(best["before"], best["after"], strict=True)]
    return bc.markdown_table(["backend", "commit", "fsync", "ms per commit before", "ms per commit after",
                              "appends/s before", "appends/s after", "after vs before"], rows)


def _ms(case: dict) -> str:
    return "-" if case["ms_per_commit"] is None else f"{case['ms_per_commit']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=".", help="where to put the pools (the disk whose fsync to measure)")
    parser.add_argument("--seconds", type=float, default=1.0, help="appending time per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; the fastest counts")
    parser.add_argument("--checksums", action="store_true", help="create the pools with checksums=True")
    parser.add_argument("--fsync", choices=("off", "on", "both"), default="both", help="which commit cases to run")
    parser.add_argument("--compare-with", metavar="DIR", help="another expstore source tree to measure alternately")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # a child of --compare-with
    args = parser.parse_args()
    title = (f"Commit cost, single-transition appends of a pendulum row ({bc.row_nbytes(bc.PENDULUM)} B), "
             f"capacity {CAPACITY:,}, checksums {'on' if args.checksums else 'off'}\n")
    if args.compare_with:
        print(title + f"before: {os.path.abspath(args.compare_with)}, after: {THIS_TREE}\n")
        print(compare(args))
    else:
        directory = tempfile.mkdtemp(prefix="bench-commit-", dir=args.dir)
        try:
            cases = run(directory, args.seconds, args.repeats, args.checksums, FSYNCS[args.fsync])
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        if args.json:
            print(json.dumps({"expstore": os.path.abspath(expstore.__file__), "cases": cases}))
            return
        print(title)
        print(cost_table(cases))
    print(f"\n{bc.machine()}; pools on {filesystem_of(args.dir)}; {bc.versions(['numpy', 'h5py', 'zarr'])}")
    print(f"`{bc.command_line()}`")


if __name__ == "__main__":
    main()
