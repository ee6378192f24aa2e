"""Commands that exchange data with other tools: export and import (D4RL, Minari)."""

from __future__ import annotations

import os

import click

from .. import interchange
from ..inspect.streaming import open_source
from .common import progress_bar

FORMAT = click.option("--format", "fmt", type=click.Choice(["d4rl", "minari"]), default=None,
                      help="d4rl (one HDF5 file) or minari (a dataset directory); default: from the path.")
OVERWRITE = click.option("--overwrite", is_flag=True, help="Replace an existing destination.")


@click.command(name="export")
@click.argument("pool")
@click.argument("dst")
@FORMAT
@click.option("--dataset-id", help="Minari dataset id, e.g. pendulum/random-v0 (default: DST's name).")
@OVERWRITE
def export_cmd(pool: str, dst: str, fmt, dataset_id, overwrite: bool) -> None:
    """Export POOL as a D4RL HDF5 file or a Minari dataset directory.

    \b
    Examples:
      expstore export data/demo_pool.h5 runs/demo.hdf5 --format d4rl
      expstore export data/demo_pool.h5 "$MINARI_DATASETS_PATH/pendulum/demo-v0" --format minari
    """
    fmt = fmt or ("d4rl" if dst.lower().endswith((".h5", ".hdf5")) else "minari")
    source = open_source(pool)
    rows = len(source)
    source.close()
    passes = 2 if fmt == "minari" else 1
    with progress_bar(rows * passes, f"export {fmt}") as progress:
        if fmt == "d4rl":
            interchange.export_d4rl(pool, dst, overwrite=overwrite, progress=progress)
            click.echo(f"wrote {rows} rows to the D4RL file {dst}")
        else:
            rows, episodes = interchange.export_minari(pool, dst, dataset_id=dataset_id, overwrite=overwrite,
                                                       progress=progress)
            click.echo(f"wrote {rows} rows in {episodes} episodes to the Minari dataset {dst}")


@click.command(name="import")
@click.argument("src")
@click.argument("pool")
@FORMAT
@click.option("--capacity", type=click.IntRange(min=1), default=None, help="Capacity (default: the rows imported).")
@click.option("--backend", type=click.Choice(["hdf5", "zarr"]), default=None, help="Default: from POOL's suffix.")
@OVERWRITE
def import_cmd(src: str, pool: str, fmt, capacity, backend, overwrite: bool) -> None:
    """Create POOL from a D4RL HDF5 file or a Minari dataset (directory or id).

    \b
    Examples:
      expstore import hopper-medium-v2.hdf5 runs/hopper.h5
      expstore import mujoco/pusher/expert-v0 runs/pusher.zarr --format minari
    """
    fmt = fmt or (interchange.detect_format(src) if _exists(src) else "minari")
    with progress_bar(0, f"import {fmt}") as progress:
        run = interchange.import_d4rl if fmt == "d4rl" else interchange.import_minari
        rows = run(src, pool, capacity=capacity, backend=backend, overwrite=overwrite, progress=progress)
    click.echo(f"imported {rows} rows into {pool}")


def _exists(path: str) -> bool:
    return os.path.exists(path)


COMMANDS = [export_cmd, import_cmd]
