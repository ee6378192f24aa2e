"""The ``expstore`` command: inspect, check, convert, exchange and plot pools.

Each command is thin: it parses options, calls a library function, and prints. This module is
the single place that turns a user mistake (an ExpstoreError, a missing path or another OS
error) into a one-line message and exit status 1, never a traceback.
"""

from __future__ import annotations

import click

from ..errors import ExpstoreError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (ExpstoreError, OSError) as exc:
            raise click.ClickException(_one_line(exc)) from None
        except ModuleNotFoundError as exc:
            raise click.ClickException(f"{exc}; install the optional dependencies: pip install 'expstore[train]'") \
                from None


def _one_line(exc: BaseException) -> str:
    text = str(exc) if not isinstance(exc, OSError) or not exc.filename else \
        f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(text.split()) or type(exc).__name__


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="expstore", prog_name="expstore")
def cli() -> None:
    """Inspect, check, convert, exchange and plot expstore pools (.h5 / .zarr).

    \b
    Example:
      expstore info data/demo_pool.h5
    """


def _register() -> None:
    from . import check, convert, inspect, interchange, plot

    for module in (inspect, check, convert, interchange, plot):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="expstore")
