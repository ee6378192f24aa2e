"""A writer child for the crash and concurrency tests, and the parent's handle on it.

Run as a script, it opens a pool with mode 'a' and appends rows derived from their step ids
(``tests.helpers.pools.rows_for``) at full speed, for ever, wrapping around the ring many times. After
each explicit ``flush()`` it prints ``COMMITTED <head>``: every step below that head was
committed, so it must survive a SIGKILL. The parent kills it whenever it likes.

    python crash_writer.py PATH --backend hdf5 --capacity 1500 --commit-every 100 --batch 1 \
        --seed -1 --fsync 0

``--batch 1`` appends one row at a time (``append``); a larger batch uses ``extend``. With
``--flush 0`` it never flushes: it prints ``COMMITTED <head>`` whenever the newest commit record on
disk (``commit_record``) moved on, which with ``--fsync 1`` its automatic commits reach on the
commit pipeline's thread (core/commit_pipeline.py). A seed
>= 0 draws each batch's length from 1..batch instead (ragged batches). ``--schema heap`` writes
the rows of ``tests.helpers.heap_rows`` (a codec field and two ragged ones) into heaps of
``--heap-bytes``; ``--schema heap-derived`` its derived variant, with next observations, into a
pool created with ``derive_next_obs=True``.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import subprocess
import sys
import time

WRITER_SCRIPT = os.path.abspath(__file__)


# ---------------------------------------------------------------------------- the child
def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--backend", required=True, choices=("hdf5", "zarr"))
    parser.add_argument("--capacity", type=int, required=True)
    parser.add_argument("--commit-every", type=int, required=True, help="rows between flushes")
    parser.add_argument("--batch", type=int, default=1, help="rows per append/extend call")
    parser.add_argument("--seed", type=int, default=-1, help=">= 0: ragged batch lengths from this seed")
    parser.add_argument("--fsync", type=int, default=0, choices=(0, 1))
    parser.add_argument("--flush", type=int, default=1, choices=(0, 1),
                        help="0: no flushes; report the automatic commits that reached the disk")
    parser.add_argument("--schema", default="pendulum", choices=("pendulum", "heap", "heap-derived"))
    parser.add_argument("--heap-bytes", type=int, default=None, help="heap bytes of a heap schema's pool")
    return parser.parse_args(argv)


def _batch_lengths(args: argparse.Namespace):
    import numpy as np

    rng = np.random.default_rng(args.seed) if args.seed >= 0 else None
    while True:
        yield int(rng.integers(1, args.batch + 1)) if rng is not None else args.batch


def _write_forever(pool, args: argparse.Namespace) -> None:
    import numpy as np

    from tests.helpers.heap_rows import heap_batch, heap_derived_batch, heap_derived_row, heap_row
    from tests.helpers.pools import rows_for

    names = list(pool.schema)
    head = last_flushed = pool.next_step_id
    row, batch = (heap_derived_row, heap_derived_batch) if args.schema == "heap-derived" else (heap_row, heap_batch)
    for n_rows in _batch_lengths(args):
        if args.schema != "pendulum":
            if n_rows == 1 and args.batch == 1:
                pool.append(row(head))
            else:
                pool.extend(batch(range(head, head + n_rows)))
        else:
            rows = rows_for(np.arange(head, head + n_rows))
            if n_rows == 1 and args.batch == 1:
                pool.append({name: rows[name][0] for name in names})
            else:
                pool.extend(rows)
        head += n_rows
        if not args.flush:
            on_disk = pool.commit_record.head
            if on_disk != last_flushed:
                last_flushed = on_disk
                print(f"COMMITTED {on_disk}", flush=True)
        elif head - last_flushed >= args.commit_every:
            pool.flush()
            last_flushed = head
            print(f"COMMITTED {head}", flush=True)


def main(argv: list[str]) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(WRITER_SCRIPT))))  # the checkout
    import expstore
    from tests.helpers.heap_rows import heap_derived_schema, heap_schema
    from tests.helpers.pools import pendulum_schema

    args = _parse(argv)
    schema = {"heap": heap_schema, "heap-derived": heap_derived_schema, "pendulum": pendulum_schema}[args.schema]()
    pool = expstore.open(args.path, "a", capacity=args.capacity, schema=schema,
                         backend=args.backend, commit_every=args.commit_every,
                         commit_interval_s=3600.0, fsync=bool(args.fsync), heap_bytes=args.heap_bytes)
    print(f"OPENED {pool.next_step_id}", flush=True)
    _write_forever(pool, args)


# ---------------------------------------------------------------------------- the parent
class WriterProcess:
    """A running writer child: reads its ``COMMITTED`` lines and SIGKILLs it on demand."""

    def __init__(self, path: str, backend: str, capacity: int, commit_every: int,
                 batch: int = 1, seed: int = -1, fsync: bool = False, schema: str = "pendulum",
                 heap_bytes: int | None = None, flush: bool = True):
        command = [sys.executable, WRITER_SCRIPT, path, "--backend", backend, "--capacity", str(capacity),
                   "--commit-every", str(commit_every), "--batch", str(batch), "--seed", str(seed),
                   "--fsync", str(int(fsync)), "--schema", schema, "--flush", str(int(flush))]
        if heap_bytes is not None:
            command += ["--heap-bytes", str(heap_bytes)]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.opened_at: int | None = None
        self.last_committed: int | None = None
        self.commits_seen = 0
        self._buffer = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)

    def wait_committed(self, timeout_s: float = 30.0) -> int:
        """Block until the child printed its first COMMITTED line; its head."""
        deadline = time.monotonic() + timeout_s
        while self.last_committed is None:
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"the writer printed no COMMITTED line in {timeout_s} s")
            if not self._read_some(deadline - time.monotonic()) and self.proc.poll() is not None:
                raise RuntimeError(f"the writer exited with {self.proc.returncode}:\n{self.stderr()}")
        return self.last_committed

    def run_for(self, seconds: float) -> None:
        """Let the child write for ``seconds``, reading its output so that it never blocks on the pipe."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not self._read_some(left) and self.proc.poll() is not None:
                raise RuntimeError(f"the writer exited with {self.proc.returncode}:\n{self.stderr()}")

    def kill(self) -> int | None:
        """SIGKILL the child, reap it and read what it printed; the last committed head (or None)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        while self._read_some(0.0):
            pass
        self._selector.close()
        self.proc.stdout.close()
        return self.last_committed

    def stderr(self) -> str:
        return self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""

    def _read_some(self, timeout_s: float) -> bool:
        """Read whatever output is ready within ``timeout_s``; False at EOF or when nothing came."""
        if not self._selector.select(max(timeout_s, 0.0)):
            return False
        data = os.read(self.proc.stdout.fileno(), 1 << 16)
        if not data:
            return False
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._parse_line(line.decode())
        return True

    def _parse_line(self, line: str) -> None:
        word, _, value = line.partition(" ")
        if word == "COMMITTED":
            self.last_committed = int(value)
            self.commits_seen += 1
        elif word == "OPENED":
            self.opened_at = int(value)


if __name__ == "__main__":
    main(sys.argv[1:])
