"""The plot command."""

from __future__ import annotations

from contextlib import closing

import click

from ..inspect.plotting import image_path, plot_pool
from ..inspect.streaming import open_source
from .common import progress_bar


@click.command()
@click.argument("path")
@click.option("-o", "--output", "out", required=True,
              help="Image to write; the format follows the extension (.png, .svg, .pdf, ...; none: .png is added).")
def plot(path: str, out: str) -> None:
    """Plot episode return over time, the episode length and the reward histograms.

    \b
    Example:
      expstore plot data/demo_pool.h5 -o demo.png
    """
    image_path(out)  # a bad extension or directory fails before the pool is read
    with closing(open_source(path)) as source, progress_bar(2 * len(source), "plot") as progress:
        counts = plot_pool(source, out, progress)
    click.echo(f"wrote {counts['path']} ({counts['episodes']} complete episodes, {counts['rows']} rows)")


COMMANDS = [plot]
