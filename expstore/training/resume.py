"""What running the trainer again on a run directory keeps, extends and refuses.

``config.json`` records the settings a run started with, and a resume keeps them: an option
given again with its recorded value is fine (that is "the same command"); one given with a
different value is refused with one line naming each difference, since silently ignoring it
would leave the user believing it applied, and applying it would make the record false.
The length is the exception: a larger ``--total-steps`` extends the run (the one change a
resume writes into ``config.json``); a smaller one is refused. A finished run (its
``summary.json`` covers the total) is left exactly as it is. Nothing in this module writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import InvalidArgumentError
from .progress import CONFIG_NAME, SUMMARY_NAME


@dataclass
class Invocation:
    """The settings of one command, not of the run: a resume may change them freely."""

    device: str = "cpu"
    log_interval_s: float = 5.0
    workers: int = 0  # offline: DataLoader worker processes (0: a prefetch thread)
    stop: Any = field(default=None)  # a StopRequest (interrupt.py); None: never asked to stop

    @property
    def stop_requested(self) -> bool:
        return self.stop is not None and self.stop.requested


RUN_KINDS = {"sac": "an online SAC run", "td3bc": "an offline TD3+BC run"}


def read_run_json(run_dir: str, name: str) -> dict | None:
    """One of the run directory's JSON records, or None if it has none (or a torn one)."""
    path = os.path.join(run_dir, name)
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        if name == CONFIG_NAME:  # the run's settings cannot be guessed
            raise InvalidArgumentError(f"{path} is not valid JSON; restore it, or start afresh with a new "
                                       "--run-dir") from None
        return None  # a summary is rewritten when the run finishes


def recorded_config(run_dir: str, agent: str) -> dict | None:
    """The run's saved config if it is a run of this ``agent`` ("sac" or "td3bc"); None if new."""
    config = read_run_json(run_dir, CONFIG_NAME)
    if config is None:
        return None
    kind = next((RUN_KINDS[key] for key in RUN_KINDS if key in config), "an unknown kind of run")
    if kind != RUN_KINDS[agent]:
        raise InvalidArgumentError(f"{run_dir} holds {kind}, not {RUN_KINDS[agent]}; pass another --run-dir")
    return config


def refuse_changes(run_dir: str, recorded: Mapping[str, Any], given: Mapping[str, tuple[str, Any]]) -> None:
    """Raise if an option given on the command line differs from the run's recorded value.

    ``given`` maps a config key (``"seed"``, or ``"sac.batch_size"`` inside a section) to the
    option's flag and its value as the config stores it.
    """
    differences = []
    for key, (flag, value) in given.items():
        before = _lookup(recorded, key)
        if before != value:
            differences.append(f"{flag} {_show(value)} (recorded: {_show(before)})")
    if differences:
        raise InvalidArgumentError(
            f"{', '.join(differences)}: a resume keeps the settings {os.path.join(run_dir, CONFIG_NAME)} records; "
            "drop these options to resume, or pass a new --run-dir to start a run with them")


def resumed_total(run_dir: str, recorded_total: int, given: int | None, flag: str = "--total-steps") -> int:
    """The run's length after this command: the recorded one, or a larger one that extends it."""
    if given is None or given == recorded_total:
        return recorded_total
    if given < recorded_total:
        raise InvalidArgumentError(f"{flag} {given}: the run in {run_dir} is recorded with {flag} {recorded_total}; "
                                   f"a resume can extend a run (a larger {flag}) but not shorten it; pass a new "
                                   "--run-dir for a shorter run")
    return given


def finished_message(run_dir: str, total: int, counter: str, unit: str) -> str | None:
    """A line saying the run is finished, if its summary covers ``total``; None otherwise."""
    summary = read_run_json(run_dir, SUMMARY_NAME)
    done = summary.get(counter) if isinstance(summary, dict) else None
    if not isinstance(done, int) or done < total:
        return None
    return (f"the run in {run_dir} is finished: {done:,} of {total:,} {unit} ({SUMMARY_NAME}); nothing to do. "
            f"Pass a larger --total-steps to extend it, or a new --run-dir to start another")


def from_record(cls, values: Mapping[str, Any]):
    """A dataclass from its recorded dict; keys an older version wrote and this one dropped are ignored."""
    names = {item.name for item in fields(cls)}
    return cls(**{key: value for key, value in values.items() if key in names})


def _lookup(values: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        if not isinstance(values, Mapping) or part not in values:
            return None
        values = values[part]
    return values


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
