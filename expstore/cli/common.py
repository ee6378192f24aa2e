"""Helpers the commands share: progress bars on stderr, JSON and table output."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator

import click
import numpy as np

from ..streaming import Progress


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
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def rows_table(batch: dict[str, np.ndarray], fields: list[str]) -> str:
    n = len(batch["step_id"])
    columns = ["step_id"] + fields
    return table(columns, [[cell(batch[name][i]) for name in columns] for i in range(n)])


def parse_fields(text: str | None, schema) -> list[str]:
    if not text:
        return list(schema)
    fields = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in fields if name not in schema]
    if unknown:
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(f"unknown fields {unknown}; the pool stores {list(schema)}")
    return fields
