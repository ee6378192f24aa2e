"""The seam for an interchange format: a small protocol and the registry of formats.

A format reads other tools' datasets into a pool (import) and writes a pool's rows in their
layout (export). ``expstore import/export --format`` take their choices from this registry, and
a path's format is told from it (a file suffix, or a directory a format recognises), so a new
format is one module in this folder registered in ``__init__.py`` (or by a caller with
``register_format``), with nothing to change in the CLI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from ..errors import InvalidArgumentError, NotAPoolError
from ..inspect.streaming import Progress


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: ``rows`` rows, in ``episodes`` episodes where the format has them."""

    rows: int
    episodes: int | None = None


@dataclass(frozen=True)
class ExportOption:
    """An export keyword a format takes beyond the common ones (the CLI offers it as ``--<flag>``)."""

    name: str  # the keyword, e.g. dataset_id (CLI: --dataset-id)
    help: str


class Format(Protocol):
    """An interchange format, registered with :func:`register_format` under ``name``."""

    name: str
    description: str  # what one dataset of it is, for messages: "D4RL file"
    suffixes: tuple[str, ...]  # file suffixes of its datasets; empty: a dataset is a directory
    export_passes: int  # reads of the pool an export makes (the CLI's progress bar length)
    export_options: tuple[ExportOption, ...]

    def recognises(self, path: str) -> bool:
        """Whether the existing ``path`` is a dataset of this format (cheap; never raises)."""

    def export_pool(self, src: str, dst: str, *, overwrite: bool = False, progress: Progress | None = None,
                    **options) -> ExportResult:
        """Write the rows of pool ``src`` (oldest first) as a dataset ``dst`` of this format."""

    def import_pool(self, src: str, dst: str, *, capacity: int | None = None, backend: str | None = None,
                    overwrite: bool = False, progress: Progress | None = None) -> int:
        """Create pool ``dst`` from the dataset ``src``; return the rows imported."""


FORMATS: dict[str, Format] = {}


def register_format(name: str, fmt: Format) -> Format:
    """Make ``fmt`` known as ``name`` to the import/export API and ``expstore import/export --format``.

    Raises:
        InvalidArgumentError: a format of that name is registered already, or ``fmt.name`` differs.
    """
    if name in FORMATS:
        raise InvalidArgumentError(f"a format named {name!r} is registered already; choose another name")
    if getattr(fmt, "name", name) != name:
        raise InvalidArgumentError(f"format {fmt!r} calls itself {fmt.name!r}, not {name!r}; register it under "
                                   "its own name")
    FORMATS[name] = fmt
    return fmt


def format_names() -> list[str]:
    """The registered formats' names, in the order registered (the CLI's ``--format`` choices)."""
    return list(FORMATS)


def get_format(name: str) -> Format:
    """The format registered as ``name``; InvalidArgumentError listing the registered ones otherwise."""
    if name not in FORMATS:
        raise InvalidArgumentError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def format_for_destination(dst: str) -> Format:
    """The format an export to ``dst`` writes when none is named: the one whose suffix ``dst``
    ends with, else the first that writes directories."""
    return _by_suffix(dst) or directory_format(dst)


def directory_format(path: str) -> Format:
    """The first registered format whose datasets are directories: the one a path that is
    neither a known file nor there yet (a Minari dataset id) is read or written in."""
    directory = next((fmt for fmt in FORMATS.values() if not fmt.suffixes), None)
    if directory is None:
        raise InvalidArgumentError(f"cannot tell the format of {path}; {_pass_one()}")
    return directory


def detect_format(path: str) -> str:
    """The name of the format of the existing dataset ``path``: a directory one of them
    recognises, or a file by its suffix."""
    if os.path.isdir(path):
        directories = [fmt for fmt in FORMATS.values() if not fmt.suffixes]
        found = next((fmt for fmt in directories if fmt.recognises(path)), None)
        if found is not None:
            return found.name
        kinds = " or ".join(f"a {fmt.description}" for fmt in directories) or "a dataset directory"
        files = " or ".join(f"a {fmt.description} ({', '.join(fmt.suffixes)})" for fmt in FORMATS.values()
                            if fmt.suffixes)
        raise NotAPoolError(f"{path} is a directory but not {kinds}; "
                            f"pass {kinds} directory" + (f" or {files}" if files else ""))
    by_suffix = _by_suffix(path)
    if by_suffix is None:
        raise InvalidArgumentError(f"cannot tell the format of {path}; {_pass_one()}")
    return by_suffix.name


def _by_suffix(path: str) -> Format | None:
    suffix = os.path.splitext(path)[1].lower()
    return next((fmt for fmt in FORMATS.values() if suffix in fmt.suffixes), None)


def _pass_one() -> str:
    return "pass " + " or ".join(f"--format {name}" for name in FORMATS)
