"""The ``expstore`` command: inspect, check, convert, exchange and plot pools.

Each command is thin: it parses options, calls a library function, and prints. This module is
the single place that turns a user mistake (an ExpstoreError, a missing path or another OS
error, an unknown option or a bad value) into a one-line message and exit status 1, never a
traceback, with the advice in it given as the flag a command-line user types
(common.cli_advice); and that ends a command quietly when the reader of its output has gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import NoReturn

import click

from ..errors import ExpstoreError
from . import check, convert, inspect, interchange, plot, view
from .common import cli_advice


class _Group(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:  # `expstore --bogus`
            raise _one_line_usage(exc, "expstore") from None

    def invoke(self, ctx: click.Context):
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a reader that left shows here when the output fit the buffer
            return result
        except click.UsageError as exc:  # an unknown command, option or a bad value: a mistake like any other
            name = ctx.invoked_subcommand
            raise _one_line_usage(exc, "expstore" if name is None else f"expstore {name}") from None
        except BrokenPipeError:
            _end_on_closed_pipe()
        except (ExpstoreError, OSError) as exc:
            raise click.ClickException(cli_advice(_one_line(exc), self._invoked(ctx))) from None
        except ModuleNotFoundError as exc:
            advice = "" if "pip install" in str(exc) else \
                "; install the optional dependencies: pip install 'expstore[train]'"
            raise click.ClickException(f"{exc}{advice}") from None
        except Exception as exc:
            # Ctrl-C while a C extension initialises (matplotlib's first import) reaches us as its
            # ImportError, caused by the KeyboardInterrupt: the same one line as any Ctrl-C.
            if _caused_by_interrupt(exc):
                raise click.Abort() from None
            raise

    def _invoked(self, ctx: click.Context) -> click.Command | None:
        name = ctx.invoked_subcommand
        return None if name is None else self.get_command(ctx, name)


def _one_line_usage(exc: click.UsageError, command: str) -> click.ClickException:
    """A usage mistake as every other mistake: one line, exit status 1 (click's own is a usage
    block and status 2), naming where the options are listed."""
    return click.ClickException(f"{' '.join(exc.format_message().split())} (`{command} --help` lists what it takes)")


def _caused_by_interrupt(exc: BaseException) -> bool:
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _one_line(exc: BaseException) -> str:
    text = str(exc) if not isinstance(exc, OSError) or not exc.filename else \
        f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(text.split()) or type(exc).__name__


def _end_on_closed_pipe() -> NoReturn:
    """The reader of the output has gone (`expstore stats POOL | head -1`): stop quietly, with the
    status of a process that SIGPIPE ended, as Unix tools do (Python ignores SIGPIPE, so the
    write raised instead). Output still buffered goes to /dev/null, or the interpreter's last
    flush would fail again and print that it did."""
    with contextlib.suppress(OSError, ValueError):  # no file descriptor behind stdout (a test runner's capture)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(128 + signal.SIGPIPE)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="expstore", prog_name="expstore")
def cli() -> None:
    """Inspect, check, convert, exchange and plot expstore pools (.h5 / .zarr).

    \b
    Example:
      expstore info data/demo_pool.h5
    """


def _register() -> None:
    for module in (inspect, check, convert, interchange, plot, view):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="expstore")
