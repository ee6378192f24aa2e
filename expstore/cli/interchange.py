"""Commands that exchange data with other tools: export and import, one ``--format`` per
registered interchange format (expstore/interchange: D4RL, Minari, and any registered later)."""

from __future__ import annotations

import os

import click

from .. import interchange
from ..backends import backend_names, get_backend
from ..errors import InvalidArgumentError
from ..inspect.streaming import open_source
from .common import RegisteredChoice, progress_bar, table

FORMATS = RegisteredChoice(interchange.format_names, lookup=interchange.get_format)
FORMAT = click.option("--format", "fmt", type=FORMATS, default=None,
                      help="The dataset's format (d4rl: one HDF5 file, minari: a dataset directory, or any "
                           "registered format); default: from the path.")
OVERWRITE = click.option("--overwrite", is_flag=True, help="Replace an existing destination.")


def _format_options(command):
    """The export options of the formats registered now (minari's --dataset-id), as click options."""
    for fmt in reversed(list(interchange.FORMATS.values())):
        for option in fmt.export_options:
            flag = "--" + option.name.replace("_", "-")
            command = click.option(flag, option.name, default=None, help=f"{fmt.name}: {option.help}")(command)
    return command


@click.command(name="export")
@click.argument("pool")
@click.argument("dst")
@FORMAT
@_format_options
@OVERWRITE
def export_cmd(pool: str, dst: str, fmt, overwrite: bool, **options) -> None:
    """Export POOL as a D4RL HDF5 file, a Minari dataset directory, or another registered format.

    \b
    Examples:
      expstore export data/demo_pool.h5 runs/demo.hdf5 --format d4rl
      expstore export data/demo_pool.h5 "$MINARI_DATASETS_PATH/pendulum/demo-v0" --format minari
    """
    chosen = interchange.get_format(fmt) if fmt else interchange.format_for_destination(dst)
    source = open_source(pool)
    rows = len(source)
    source.close()
    # Only the options this format takes and the user gave: another format's are refused below.
    given = {name: value for name, value in options.items() if value is not None}
    _refuse_foreign_options(chosen, given)
    with progress_bar(rows * chosen.export_passes, f"export {chosen.name}") as progress:
        result = chosen.export_pool(pool, dst, overwrite=overwrite, progress=progress, **given)
    episodes = "" if result.episodes is None else f" in {result.episodes} episodes"
    click.echo(f"wrote {result.rows} rows{episodes} to the {chosen.description} {dst}")


def _refuse_foreign_options(chosen: interchange.Format, given: dict) -> None:
    taken = {option.name for option in chosen.export_options}
    foreign = sorted(set(given) - taken)
    if foreign:
        flags = ", ".join("--" + name.replace("_", "-") for name in foreign)
        raise InvalidArgumentError(f"{flags} does not apply to --format {chosen.name}; see `expstore formats` for "
                                   "each format's options")


@click.command(name="import")
@click.argument("src")
@click.argument("pool")
@FORMAT
@click.option("--capacity", type=click.IntRange(min=1), default=None, help="Capacity (default: the rows imported).")
@click.option("--backend", type=RegisteredChoice(backend_names, lookup=get_backend), default=None,
              help="Default: from POOL's suffix.")
@OVERWRITE
def import_cmd(src: str, pool: str, fmt, capacity, backend, overwrite: bool) -> None:
    """Create POOL from a D4RL HDF5 file, a Minari dataset (directory or id), or another registered format.

    \b
    Examples:
      expstore import hopper-medium-v2.hdf5 runs/hopper.h5
      expstore import mujoco/pusher/expert-v0 runs/pusher.zarr --format minari
    """
    if fmt:
        chosen = interchange.get_format(fmt)
    elif os.path.exists(src):
        chosen = interchange.get_format(interchange.detect_format(src))
    else:  # a file's suffix names its format; a dataset id (mujoco/pusher/expert-v0): the directory format
        chosen = interchange.format_for_destination(src)
    with progress_bar(0, f"import {chosen.name}") as progress:
        rows = chosen.import_pool(src, pool, capacity=capacity, backend=backend, overwrite=overwrite,
                                  progress=progress)
    click.echo(f"imported {rows} rows into {pool}")


@click.command(name="formats")
def formats_cmd() -> None:
    """List the interchange formats that export and import know (the --format choices).

    \b
    Example:
      expstore formats
    """
    rows = []
    for fmt in interchange.FORMATS.values():
        dataset = ", ".join(fmt.suffixes) if fmt.suffixes else "a directory"
        options = " ".join("--" + option.name.replace("_", "-") for option in fmt.export_options) or "-"
        rows.append([fmt.name, fmt.description, dataset, options])
    click.echo(table(["format", "what", "dataset", "export options"], rows))


COMMANDS = [export_cmd, import_cmd, formats_cmd]
