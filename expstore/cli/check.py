"""Integrity commands: verify and repair."""

from __future__ import annotations

import sys

import click

from ..inspect.streaming import read_backend
from ..maintenance.verify import repair as repair_pool
from ..maintenance.verify import verify as verify_pool
from .common import cli_advice, echo_json, progress_bar


@click.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(path: str, as_json: bool) -> None:
    """Check a pool; exit 0 when healthy, 1 with the findings otherwise.

    Checks the commit record, the committed window, preallocation, leftover temporaries, every
    heap field's index entries and rows (each codec row decoded) and, for pools created with
    checksums, every chunk's checksum.

    \b
    Example:
      expstore verify data/demo_pool.h5 && echo healthy
    """
    with progress_bar(0, "checking") as progress:
        report = verify_pool(path, backend=read_backend(path), progress=progress)
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(cli_advice(str(report), verify))
    if not report.ok:
        sys.exit(1)


@click.command()
@click.argument("path")
@click.option("--reset-window", is_flag=True,
              help="When both commit slots are damaged, start an empty window (drops the old rows).")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
def repair(path: str, reset_window: bool, as_json: bool) -> None:
    """Recover a pool: remove leftover temporaries, rewrite a torn commit slot, preallocate,
    rebuild heap positions and a lost dictionary length; exit 1 when damage it cannot undo
    remains (listed, each with the way out).

    \b
    Example:
      expstore repair runs/pool.h5 && expstore verify runs/pool.h5
    """
    report = repair_pool(path, backend=read_backend(path), reset_window=reset_window)
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(str(report))
    if not report.ok:
        sys.exit(1)


COMMANDS = [verify, repair]
