"""Helpers shared by the benchmark scripts in tools/: workloads, cache eviction, timing, tables.

Never imported by expstore/. Every number a benchmark prints is also shown as a ratio against
a baseline measured in the same run, because the disk and the CPU of a shared machine are noisy.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

PENDULUM = {"obs": ((3,), "float32"), "action": ((1,), "float32"), "reward": ((), "float32"),
            "next_obs": ((3,), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}
ATARI = {"obs": ((84, 84), "uint8"), "action": ((), "int64"), "reward": ((), "float32"),
         "next_obs": ((84, 84), "uint8"), "terminated": ((), "bool"), "truncated": ((), "bool")}


def tune_allocator_for_run(enabled: bool) -> bool:
    """``--tune-allocator``: ``expstore.tune_allocator()`` in this process, and glibc's same
    settings in the environment that every child process of the run starts with, so that both
    sides of each ratio run with them."""
    if not enabled:
        return False
    import expstore
    from expstore.core.allocator import MMAP_THRESHOLD, TRIM_THRESHOLD

    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    os.environ["MALLOC_TRIM_THRESHOLD_"] = str(TRIM_THRESHOLD)
    return expstore.tune_allocator()


def without_next_obs(schema: dict) -> dict:
    return {name: spec for name, spec in schema.items() if name != "next_obs"}


def row_nbytes(schema: dict) -> int:
    return sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in schema.values())


def make_rows(schema: dict, n_rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic rows: normal floats, uniform bytes for frames (incompressible), sparse flags."""
    rng = np.random.default_rng(seed)
    rows = {}
    for name, (shape, dtype) in schema.items():
        dtype = np.dtype(dtype)
        full = (n_rows, *shape)
        if dtype.kind == "f":
            rows[name] = rng.standard_normal(full, dtype=np.float32).astype(dtype)
        elif dtype.kind == "b":
            rows[name] = rng.random(full) < 0.005
        elif dtype == np.uint8:
            rows[name] = rng.integers(0, 256, size=full, dtype=np.uint8)
        else:
            rows[name] = rng.integers(0, 18, size=full).astype(dtype)
    return rows


def transitions(rows: dict[str, np.ndarray], count: int) -> list[dict]:
    """Single transitions as an env loop hands them over: arrays, a Python float, Python bools."""
    out = []
    for i in range(count):
        one = {}
        for name, column in rows.items():
            value = column[i]
            one[name] = value.item() if column.ndim == 1 and column.dtype.kind in "fbi" else value
        out.append(one)
    return out


def files_under(path: str) -> list[str]:
    if os.path.isdir(path):
        return [os.path.join(root, name) for root, _, names in os.walk(path) for name in names]
    return [path] if os.path.exists(path) else []


def evict(path: str) -> None:
    """Write back and drop a file's (or a directory's files') pages from the page cache."""
    for file_path in files_under(path):
        fd = os.open(file_path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_nbytes(path: str) -> int:
    return sum(os.stat(p).st_blocks * 512 for p in files_under(path))


def peak_rss_mb() -> float:
    """Peak resident set of this process (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rate(fn: Callable[[], object], calls: int, rounds: int = 5) -> float:
    """Median calls/s over ``rounds`` timed blocks of ``calls`` calls each."""
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rates.append(calls / (time.perf_counter() - start))
    return statistics.median(rates)


def interleaved_rates(fns: dict[str, Callable[[], object]], calls: int, rounds: int) -> dict[str, float]:
    """Median calls/s per function, the functions taking turns so that load hits all alike."""
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            rates[name].append(rate(fn, calls, rounds=1))
    return {name: statistics.median(values) for name, values in rates.items()}


def memcpy_nbytes_per_s(nbytes: int = 1 << 28) -> float:
    source = np.ones(nbytes, dtype=np.uint8)
    target = np.empty_like(source)
    np.copyto(target, source)
    return nbytes * rate(lambda: np.copyto(target, source), calls=3)


def human(value: float, unit: str = "") -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}{unit}"
    return f"{value:.3g}{unit}"


def ratio(value: float | None, base: float | None) -> str:
    if not value or not base:
        return "n/a"
    return f"{value / base:.2f}x"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def versions(packages: Sequence[str]) -> str:
    found = []
    for package in packages:
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return ", ".join([f"Python {platform.python_version()}"] + found)


def machine() -> str:
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, {memory_gib:.0f} GiB RAM"


def command_line() -> str:
    return " ".join(["python", *sys.argv])


def cpu_busy_s() -> float:
    """CPU-seconds every process on the machine has spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(max_wait_s: float, max_cores: float = 0.5) -> float:
    """Wait (at most ``max_wait_s``) until other processes use under ``max_cores``; return their load."""
    deadline = time.monotonic() + max_wait_s
    while True:
        start_busy, start = cpu_busy_s(), time.monotonic()
        time.sleep(0.5)
        load = (cpu_busy_s() - start_busy) / (time.monotonic() - start)
        if load < max_cores or time.monotonic() >= deadline:
            return load


def run_in_memory_cgroup(command: Sequence[str], limit_nbytes: int) -> tuple[subprocess.CompletedProcess, str]:
    """Run ``command`` in a fresh memory cgroup of ``limit_nbytes`` (page cache included; root
    only), and say which cap it ran under: ``"cgroup v1"``/``"cgroup v2"``, or ``"none"`` where no
    cgroup could be made (then it runs uncapped). The cgroup is removed afterwards."""
    from larger_than_ram import make_cgroup

    cgroup = make_cgroup(limit_nbytes)
    if cgroup is None:
        return subprocess.run(list(command), capture_output=True, text=True, check=False), "none"
    directory, version = cgroup
    try:  # the shell joins the cgroup, then becomes the command: every page it touches is charged
        done = subprocess.run(["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', directory, *command],
                              capture_output=True, text=True, check=False)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(directory)
    return done, f"cgroup {version}"

