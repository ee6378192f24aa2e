"""Helpers the commands share: progress bars on stderr, JSON and table output, CLI advice."""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import click
import numpy as np

from ..backends import backend_names, primary_suffix
from ..backends.base import NOT_A_POOL_FIX
from ..errors import InvalidArgumentError
from ..inspect.streaming import Progress

# The library's messages tell a Python caller which argument to pass (``backend='zarr'``,
# ``mode='w'``); a command-line user needs the flag instead, or other advice where the command
# has no such flag. Each entry: the library's words, the option the CLI form needs, the CLI form
# (a re.sub template), and the words to use where the command lacks that option.
_CLI_ADVICE: list[tuple[re.Pattern, str | None, str | Callable[[re.Match], str], str | Callable[[], str]]] = [
    (re.compile(r"pass ((?:backend='\w+', )*backend='\w+' or backend='\w+')"), "backend",
     lambda found: "pass " + re.sub(r"backend='(\w+)'", r"--backend \1", found.group(1)),
     lambda: "rename it to end in " + " or ".join(primary_suffix(name) for name in backend_names())),
    (re.compile(r" or backend='(\w+)'"), "backend", r" or --backend \1", ""),
    (re.compile(re.escape(" ".join(NOT_A_POOL_FIX.split()))), None,
     "; check the path (`expstore import` reads D4RL and Minari datasets)", ""),
    (re.compile(r"; create one with mode='w' or 'a' and a capacity"), None, "; check the path", ""),
    (re.compile(r"; use mode='a' to open it or 'w' to replace it"), "overwrite",
     "; choose another path or pass --overwrite", "; choose another path"),
    (re.compile(r"stop that writer, or open with mode='r' to read while it writes"), None,
     ("stop that writer first; read-only commands (`expstore info`, `stats`, `verify`, `convert` from it) "
      "work while it writes"), ""),
    (re.compile(r"pass overwrite=True"), "overwrite", "pass --overwrite", "move it away"),
    (re.compile(r"\S+=\S+ \(CLI: ([^)]+)\)"), None, r"\1", ""),  # messages that carry both: keep the CLI's
    (re.compile(r"create the pool with a larger heap_bytes\b"), "heap_bytes", "pass a larger --heap-bytes",
     "create the pool with a larger heap_bytes"),
    (re.compile(r"\bheap_bytes\b(?![=\[\w])"), "heap_bytes", "--heap-bytes", "heap_bytes"),  # convert, merge
    (re.compile(r"; open it with mode='r' to read it"), None,
     "; read-only commands (`expstore info`, `stats`, `verify`, `convert` from it) still work", ""),
]


def cli_advice(text: str, command: click.Command | None = None) -> str:
    """``text`` (a library message) with its API advice in the words of the command line."""
    options = set() if command is None else {param.name for param in command.params}
    for pattern, option, with_option, without in _CLI_ADVICE:
        if option is None or option in options:
            text = pattern.sub(with_option, text)
        else:  # advice without the flag may depend on the registry: built when needed
            text = pattern.sub(without() if callable(without) else without, text)
    return text


class RegisteredChoice(click.Choice):
    """A click choice of the names a registry holds when the command runs (backends, formats),
    so that one registered after the CLI was built is offered too. With ``lookup`` (the
    registry's getter), an unknown name is the registry's own one-line error listing the
    registered names, as the library gives it."""

    def __init__(self, names: Callable[[], list[str]], *extra: str, lookup: Callable[[str], object] | None = None):
        self._names, self._extra, self._lookup = names, extra, lookup
        super().__init__(())

    def convert(self, value, param, ctx):
        if self._lookup is not None and value not in self.choices:
            self._lookup(value)  # raises the ExpstoreError that main() prints as one line
        return super().convert(value, param, ctx)

    @property  # click.Choice stores a tuple; this reads the registry instead
    def choices(self) -> tuple[str, ...]:
        return (*self._extra, *self._names())

    @choices.setter
    def choices(self, value) -> None:
        pass  # set by click.Choice.__init__; the registry is the source


def check_count(value: int | None, option: str, minimum: int = 0) -> None:
    """A row or episode count from the command line: at least ``minimum`` (``head -n -3`` errs too)."""
    if value is not None and value < minimum:
        needs = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
        raise InvalidArgumentError(f"{option} {value} {needs}")


@contextlib.contextmanager
def progress_bar(length: int, label: str) -> Iterator[Progress]:
    """A click progress bar on stderr; yields the ``progress(rows)`` callback.

    Only drawn on a terminal: scripts and logs that capture stderr get no bar noise.
    """
    if not sys.stderr.isatty():
        yield lambda rows: None
        return
    with click.progressbar(length=max(0, int(length)), label=label, file=sys.stderr) as bar:
        yield bar.update


def echo_json(value) -> None:
    click.echo(json.dumps(value, indent=2, default=_jsonable, allow_nan=False))


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def cell(value, precision: int = 6) -> str:
    """One table cell: a number, or a short rendering of a vector."""
    value = np.asarray(value)
    if value.ndim == 0:
        if value.dtype.kind == "f":
            return f"{float(value):.{precision}g}"
        return str(value.item())
    flat = value.reshape(-1)
    items = [cell(x, precision) for x in (flat if flat.size <= 6 else flat[:4])]
    more = "" if flat.size <= 6 else f", ... ({'x'.join(map(str, value.shape))})"
    return "[" + ", ".join(items) + more + "]"


def table(columns: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell."""
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def rows_table(batch: Mapping[str, Any], fields: list[str]) -> str:
    """Rows as a table: each column an array or a list of per-row values (ragged rows)."""
    n = len(batch["step_id"])
    columns = ["step_id"] + fields
    return table(columns, [[cell(batch[name][i]) for name in columns] for i in range(n)])


def parse_fields(text: str | None, schema) -> list[str]:
    if not text:
        return list(schema)
    fields = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in fields if name not in schema]
    if unknown:
        raise InvalidArgumentError(f"unknown fields {unknown}; the pool stores {list(schema)}")
    return fields
