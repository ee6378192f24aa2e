"""Commands that write new pools from old ones: convert and merge."""

from __future__ import annotations

from contextlib import closing

import click

from ..backends import archive, backend_names, get_backend
from ..core.heap_check import LISTED_STEPS, listed_steps
from ..inspect.streaming import open_source
from ..maintenance import convert as converting
from ..maintenance.recode import parse_assignments, parse_nbytes
from .common import RegisteredChoice, progress_bar

COMPRESS = click.option(
    "--compress", type=RegisteredChoice(archive.all_codecs, "auto"), default=None, is_flag=False,
    flag_value="auto",
    help="Write a compressed archive instead of a pool (" + "; ".join(
        f"{name}: {' or '.join(archive.codecs(name))}" for name in backend_names()) + "; auto: the first). "
    "Archives are for storage and transfer: convert them back to a pool to sample.")
CAPACITY = click.option("--capacity", type=click.IntRange(min=1), default=None,
                        help="Capacity of the new pool; smaller than the rows keeps the newest.")
BACKEND = click.option("--backend", type=RegisteredChoice(backend_names, lookup=get_backend), default=None,
                       help="Backend of the destination (default: from its suffix).")
OVERWRITE = click.option("--overwrite", is_flag=True, help="Replace an existing destination.")
CODEC = click.option("--codec", "codecs", multiple=True, metavar="NAME=CODEC",
                     help="Store field NAME with CODEC in the copy: zstd, zstd:LEVEL, zstd:LEVEL+dict, lz4, or raw "
                     "(none); repeat for more fields. Default: the (first) source's codec.")
HEAP_BYTES = click.option("--heap-bytes", "heap_bytes", multiple=True, metavar="[NAME=]SIZE",
                          help="Heap size of the copy's ragged and compressed fields (e.g. 8G): all together, or "
                          "NAME=SIZE for one field. A field not named keeps the source's size where codec and "
                          "capacity stay, else gets a heap sized for the copy's rows.")


def _recoding(codecs: tuple[str, ...], heap_bytes: tuple[str, ...]) -> dict:
    """The convert keywords of --codec and --heap-bytes."""
    chosen = {name: None if codec.lower() in ("raw", "none") else codec
              for name, codec in parse_assignments(codecs, "--codec", "obs=zstd:3").items()}
    total = [value for value in heap_bytes if "=" not in value]
    per_field = parse_assignments(tuple(v for v in heap_bytes if "=" in v), "--heap-bytes", "obs=512M")
    sizes: dict | int | None = {name: parse_nbytes(size) for name, size in per_field.items()}
    if total:
        if sizes or len(total) > 1:
            raise click.UsageError("--heap-bytes takes one total SIZE or NAME=SIZE per field, not both")
        sizes = parse_nbytes(total[0])
    return {"codecs": chosen or None, "heap_bytes": sizes or None}


def _total_rows(paths) -> int:
    total = 0
    for path in paths:
        with closing(open_source(path)) as source:
            total += len(source)
    return total


@click.command()
@click.argument("src")
@click.argument("dst")
@CAPACITY
@COMPRESS
@BACKEND
@OVERWRITE
@click.option("--dedup", is_flag=True,
              help="Leave out exact duplicate rows (the oldest copy is kept, order unchanged).")
@CODEC
@HEAP_BYTES
def convert(src: str, dst: str, capacity, compress, backend, overwrite: bool, dedup: bool, codecs,
            heap_bytes) -> None:
    """Copy pool SRC into DST: HDF5 <-> Zarr, resize, or compress into an archive.

    Rows keep their order, step ids, episodes, priorities and attrs (with --dedup, episodes
    are rebuilt from the flags); DST is written aside and renamed, so a killed convert never
    leaves a half-written DST. SRC may be a pool that a writer is appending to: the copy is
    its rows when convert started, less the oldest ones the writer evicted before they were read.
    Heap rows that can no longer be read (damaged) are left out, with a warning naming them.

    \b
    Examples:
      expstore convert data/demo_pool.h5 runs/demo.zarr
      expstore convert runs/pool.h5 runs/small.h5 --capacity 10000
      expstore convert runs/pool.zarr runs/archive.zarr --compress zstd
      expstore convert runs/pool.h5 runs/unique.h5 --dedup
      expstore convert runs/atari.h5 runs/small.h5 --codec obs=zstd:3 --heap-bytes 2G
    """
    recoding = _recoding(codecs, heap_bytes)
    with progress_bar(_total_rows([src]), "convert") as progress:
        result = converting.convert(src, dst, capacity=capacity, backend=backend, compress=compress,
                                    overwrite=overwrite, progress=progress, dedup=dedup, **recoding)
    _report(result)


@click.command()
@click.argument("srcs", nargs=-1, required=True)
@click.option("-o", "--output", "dst", required=True, help="The merged pool to create.")
@CAPACITY
@COMPRESS
@BACKEND
@OVERWRITE
@CODEC
@HEAP_BYTES
def merge(srcs, dst: str, capacity, compress, backend, overwrite: bool, codecs, heap_bytes) -> None:
    """Concatenate pools with the same fields, in the order given, into a new pool.

    The pools may store a field with different codecs: the merged pool takes the first pool's,
    or the --codec given.

    \b
    Examples:
      expstore merge runs/a.h5 runs/b.zarr -o runs/all.h5
      expstore merge runs/a.h5 runs/b.h5 -o runs/all.h5 --codec obs=zstd:3 --heap-bytes obs=4G
    """
    recoding = _recoding(codecs, heap_bytes)
    with progress_bar(_total_rows(srcs), "merge") as progress:
        result = converting.merge(list(srcs), dst, capacity=capacity, backend=backend, compress=compress,
                                  overwrite=overwrite, progress=progress, **recoding)
    _report(result)


def _report(result: converting.CopyResult) -> None:
    what = "archive" if result.compressed else f"pool (capacity {result.capacity})"
    steps = f" (steps {result.first_step_id}..{result.next_step_id - 1})" if result.rows else ""
    dropped = f"; dropped the {result.dropped_rows} oldest rows" if result.dropped_rows else ""
    dropped += f"; left out {result.duplicate_rows} exact duplicate rows" if result.duplicate_rows else ""
    if result.evicted_rows:
        dropped += (f"; a writer evicted {result.evicted_rows} rows of the snapshot before they were copied, "
                    "so the copy starts later")
    if result.heap_evicted_rows:
        dropped += (f"; its {result.window_bound} evicted the {result.heap_evicted_rows} oldest rows copied: "
                    "pass a larger --heap-bytes to keep them")
    if result.damaged_rows:
        dropped += f"; left out {result.damaged_rows} rows whose heap bytes cannot be read"
    click.echo(f"wrote {result.rows} rows{steps} to {what} {result.path}{dropped}")
    if result.damaged_rows:
        counts = _damaged_counts(result)
        where = ", ".join(f"steps {listed_steps(steps, counts[path])} of {path}"
                          for path, steps in result.damaged_steps.items())
        click.echo(f"warning: left out {result.damaged_rows} rows whose heap bytes cannot be read (damaged, or "
                   f"failing their crc32): {where}; `expstore verify` lists the damage", err=True)


def _damaged_counts(result: converting.CopyResult) -> dict[str, int]:
    """The damaged rows each source lost, as far as the total tells: a source that lists fewer
    than LISTED_STEPS lost just those; the ones listing that many share the rest (each counted
    as more than it lists, unless the rest is exactly what they list)."""
    listed = result.damaged_steps
    full = [path for path, steps in listed.items() if len(steps) >= LISTED_STEPS]
    rest = result.damaged_rows - sum(len(steps) for path, steps in listed.items() if path not in full)
    return {path: rest - LISTED_STEPS * (len(full) - 1) if path in full else len(steps)
            for path, steps in listed.items()}


COMMANDS = [convert, merge]
