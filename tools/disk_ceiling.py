"""The disk's random-read ceiling, the bound on cold sampling.

A cold sample costs one read per row (expstore advises each row's pages as one range), so its
rate cannot beat the rate of small random reads the disk serves at high queue depth, and a plain
gather runs at about the queue-depth-1 rate. This measures both with O_DIRECT reads (no page
cache) of a scratch file: one thread, and many threads at once.

    python tools/disk_ceiling.py                       # a 2 GiB scratch file in the temp dir
    python tools/disk_ceiling.py --dir /data --gib 8 --read-kib 12
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import tempfile
import threading
import time


def make_scratch(path: str, nbytes: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        fh.writelines(block for _ in range(nbytes >> 20))
        fh.flush()
        os.fsync(fh.fileno())


def reads_per_second(path: str, threads: int, read_nbytes: int, seconds: float) -> float:
    """Random aligned O_DIRECT reads of ``read_nbytes`` by ``threads`` threads at once."""
    file_nbytes = os.path.getsize(path)
    counts = [0] * threads
    deadline = time.monotonic() + seconds

    def reader(index: int) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        buffer = mmap.mmap(-1, read_nbytes)  # page-aligned, as O_DIRECT needs
        rng = random.Random(index)
        try:
            while time.monotonic() < deadline:
                os.preadv(fd, [buffer], rng.randrange((file_nbytes - read_nbytes) // 4096) * 4096)
                counts[index] += 1
        finally:
            os.close(fd)

    workers = [threading.Thread(target=reader, args=(i,)) for i in range(threads)]
    start = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=None, help="a directory on the disk to measure")
    parser.add_argument("--gib", type=int, default=2, help="scratch file size")
    parser.add_argument("--read-kib", type=int, default=12, help="read size (a 7 KB row spans 2-3 pages)")
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        path = os.path.join(scratch, "scratch.bin")
        make_scratch(path, args.gib << 30)
        nbytes = args.read_kib << 10
        single = reads_per_second(path, 1, nbytes, args.seconds)
        many = reads_per_second(path, args.threads, nbytes, args.seconds)
    print(f"{args.read_kib} KiB random O_DIRECT reads: 1 thread {single / 1e3:.1f}k/s, "
          f"{args.threads} threads {many / 1e3:.1f}k/s ({many * nbytes / 1e6:.0f} MB/s): "
          f"at most {many / single:.1f}x from concurrency")


if __name__ == "__main__":
    main()
