"""Read-only commands: info, head, tail, show, stats, episodes, sample."""

from __future__ import annotations

from contextlib import closing
from typing import Any

import click
import numpy as np

from ..backends.archive import is_archive
from ..core.opening import open as open_store
from ..errors import InvalidArgumentError, NotAPoolError
from ..inspect import summary
from ..inspect.age import age_distribution
from ..inspect.duplicates import duplicate_report
from ..inspect.streaming import open_source, read_backend
from ..schema import Field
from .common import cell, check_count, echo_json, parse_fields, progress_bar, rows_table, table
from .images import summarised

JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
FIELDS = click.option("--fields", help="Comma-separated fields to show (default: all).")


@click.command()
@click.argument("path")
@JSON
def info(path: str, as_json: bool) -> None:
    """Backend, format, schema, capacity, window, episodes, size, last commit, writer, attrs.

    \b
    Example:
      expstore info data/demo_pool.h5 --json
    """
    with closing(open_source(path)) as source:
        facts = summary.source_info(source)
    if as_json:
        echo_json(facts)
        return
    for key, value in facts.items():
        if key == "schema":
            click.echo("schema:")
            for name, spec in value.items():
                shape = "(" + ", ".join("N" if n is None else str(n) for n in spec["shape"]) + \
                    ("," if len(spec["shape"]) == 1 else "") + ")"
                codec = f" codec {spec['codec']}" if "codec" in spec else ""
                layout = Field.from_json(spec).image_layout
                marker = f" (image, {layout})" if layout else ""
                click.echo(f"  {name}: {shape} {spec['dtype']}{codec}{marker}")
        elif key == "heaps":
            click.echo("heaps:")
            for name, heap in value.items():
                click.echo(f"  {name}: {summary.heap_line(heap)}")
        elif key == "apparent_nbytes":
            click.echo(_size_line(facts))
        elif key == "episodes" and value is None and facts["kind"] == "pool":
            click.echo("episodes: not indexed by this pool (`expstore episodes` scans the flags)")
        elif key not in ("last_commit_unix", "disk_nbytes", "sparse"):
            click.echo(f"{key.replace('_', ' ')}: {'none' if value is None else value}")


def _size_line(facts: dict) -> str:
    """The size of the files, and the disk blocks they hold: less after a sparse copy."""
    line = f"size: {facts['apparent_nbytes'] / 2**20:.1f} MiB ({facts['disk_nbytes'] / 2**20:.1f} MiB allocated on disk"
    if facts["sparse"]:
        line += "; sparse, as after a git checkout or `cp --sparse`: a writer allocates the rest when it opens it"
    return line + ")"


def _show(path: str, start: int, count: int, fields: str | None) -> None:
    with closing(open_source(path)) as source:
        length = len(source)
        first = start + length if start < 0 else start
        if not 0 <= first <= length:
            raise InvalidArgumentError(f"--start {start} is outside the pool's {length} rows")
        last = min(length, first + count)
        names = parse_fields(fields, source.schema)
        batch = source.read(first, last)
        batch["step_id"] = np.arange(source.first_step_id + first, source.first_step_id + last)
        shown: dict[str, Any] = summarised(batch, source.schema)
        for name in names:  # ragged rows as their own elements, not padded to the longest row shown
            lengths = shown.get(f"{name}_length")
            if lengths is not None and source.schema[name].ragged:
                shown[name] = [row[:length] for row, length in zip(shown[name], lengths.tolist(), strict=True)]
    click.echo(rows_table(shown, names) if last > first else f"(no rows: the pool holds {length})")


@click.command()
@click.argument("path")
@click.option("--count", "-n", default=10, show_default=True, help="Rows to show.")
@FIELDS
def head(path: str, count: int, fields: str | None) -> None:
    """The oldest rows as a table.

    \b
    Example:
      expstore head data/demo_pool.h5 -n 5 --fields obs,reward
    """
    check_count(count, "-n")
    _show(path, 0, count, fields)


@click.command()
@click.argument("path")
@click.option("--count", "-n", default=10, show_default=True, help="Rows to show.")
@FIELDS
def tail(path: str, count: int, fields: str | None) -> None:
    """The newest rows as a table.

    \b
    Example:
      expstore tail data/demo_pool.h5 -n 5
    """
    check_count(count, "-n")
    with closing(open_source(path)) as source:
        length = len(source)
    _show(path, max(0, length - count), count, fields)


@click.command()
@click.argument("path")
@click.option("--start", default=0, show_default=True, help="First row (logical index; negative counts from the end).")
@click.option("--count", "-n", default=10, show_default=True, help="Rows to show.")
@FIELDS
def show(path: str, start: int, count: int, fields: str | None) -> None:
    """Rows START..START+COUNT as a table (0 is the oldest row).

    \b
    Example:
      expstore show data/demo_pool.h5 --start 195 --count 10 --fields reward,terminated,truncated
    """
    check_count(count, "--count")
    _show(path, start, count, fields)


@click.command()
@click.argument("path")
@click.option("--duplicates", "with_duplicates", is_flag=True,
              help="Also count exact duplicate rows and cluster discrete observations (more passes).")
@click.option("--obs-field", default=None, help="The observation field --duplicates clusters (default: obs).")
@JSON
def stats(path: str, as_json: bool, with_duplicates: bool, obs_field: str | None) -> None:
    """Per field min/max/mean/std and NaN/inf counts; episode return and length summaries;
    the age of the rows (in steps, and in policy versions when rows carry them).

    \b
    Examples:
      expstore stats data/demo_pool.h5 --json
      expstore stats runs/sac-pendulum/pool.h5 --duplicates
    """
    if obs_field is not None and not with_duplicates:
        raise InvalidArgumentError("--obs-field chooses the field that --duplicates clusters; pass --duplicates too")
    with closing(open_source(path)) as source:
        if obs_field is not None and obs_field not in source.schema:
            raise InvalidArgumentError(f"--obs-field {obs_field}: the pool has no such field; it stores "
                                       f"{list(source.schema)}")
        with progress_bar(len(source), "fields") as progress:
            fields = summary.field_stats(source, progress)
        with progress_bar(len(source), "episodes") as progress:
            episodes = summary.episode_summary(summary.episode_table(source, progress))
        result: dict[str, Any] = {"rows": len(source), "fields": {name: s.to_json() for name, s in fields.items()},
                                  "episodes": episodes, "age": age_distribution(source)}
        if with_duplicates:
            result["duplicates"] = _duplicates(source, obs_field or "obs")
    if as_json:
        echo_json(result)
        return
    keys = ["count", "min", "max", "mean", "std", "nan", "inf"]
    click.echo(table(["field"] + keys, [[name] + [_num(values[k]) for k in keys]
                                        for name, values in result["fields"].items()]))
    click.echo(f"\nepisodes: {episodes['episodes']} ({episodes['complete']} complete)")
    click.echo(table(["", "count", "mean", "std", "min", "max"],
                     [[what] + [_num(episodes[what][k]) for k in ("count", "mean", "std", "min", "max")]
                      for what in ("return", "length")]))
    _echo_age(result["age"])
    if with_duplicates:
        _echo_duplicates(result["duplicates"])


def _duplicates(source, obs_field: str) -> dict:
    with progress_bar(len(source), "duplicates") as progress:
        return duplicate_report(source, obs_field=obs_field, progress=progress)


def _echo_age(age: dict) -> None:
    keys = ["mean", "min", "p10", "median", "p90", "max"]
    rows = [[unit] + [_num(values.get(k)) for k in keys] for unit, values in age.items() if values]
    click.echo("\nage of the rows (0: newest)")
    click.echo(table(["unit"] + keys, rows))


def _echo_duplicates(report: dict) -> None:
    exact = report["exact"]
    click.echo(f"\nexact duplicates over {', '.join(exact['fields'])}: {exact['duplicate_rows']} of "
               f"{exact['rows']} rows ({100 * exact['duplicate_fraction']:.2f}%), {exact['distinct']} distinct, "
               f"{exact['groups_with_duplicates']} of them occur more than once, the most repeated "
               f"{exact['largest_group']} times")
    if exact["derived_not_compared"]:
        click.echo(f"  (not compared: {', '.join(exact['derived_not_compared'])}, derived from the next row)")
    clusters = report["observation_clusters"]
    if "skipped" in clusters:
        click.echo(f"observation clusters: skipped, {clusters['skipped']}")
        return
    click.echo(f"observation clusters of {clusters['field']!r}: {clusters['distinct']} distinct observations, "
               f"{clusters['rows_in_clusters']} rows share theirs with another row; largest:")
    click.echo(table(["rows", "first row", "observation"],
                     [[cell(c["rows"]), cell(c["first_row"]), str(c["value"])] for c in clusters["largest"]]))


def _num(value) -> str:
    return "-" if value is None else cell(value)


@click.command()
@click.argument("path")
@click.option("--limit", default=None, type=int, help="Show only the last LIMIT episodes.")
@JSON
def episodes(path: str, limit: int | None, as_json: bool) -> None:
    """The episode table: id, first step, length, return, how it ended.

    \b
    Example:
      expstore episodes data/demo_pool.h5 --limit 5
    """
    check_count(limit, "--limit")
    with closing(open_source(path)) as source, progress_bar(len(source), "episodes") as progress:
        found = summary.episode_table(source, progress)
    if limit is not None:
        found = {key: values[max(0, len(values) - limit):] for key, values in found.items()}
    if as_json:
        rows = zip(*(values.tolist() for values in found.values()), strict=True)
        echo_json({"episodes": [dict(zip(found, row, strict=True)) for row in rows]})
        return
    columns = list(found)
    click.echo(table(columns, [[cell(found[k][i]) for k in columns] for i in range(len(found["length"]))]))


@click.command()
@click.argument("path")
@click.option("-n", "--batch-size", "count", default=8, show_default=True, help="Rows to draw (with replacement).")
@click.option("--seed", type=int, default=None, help="Seed: the same seed on the same pool draws the same rows.")
@click.option("--max-age", type=click.IntRange(min=0), default=None,
              help="Only rows at most this old (policy versions when rows carry them, else steps).")
@click.option("--age-unit", type=click.Choice(["auto", "policy_versions", "steps"]), default="auto",
              show_default=True, help="What --max-age counts.")
@FIELDS
@JSON
def sample(path: str, count: int, seed: int | None, max_age: int | None, age_unit: str, fields: str | None,
           as_json: bool) -> None:
    """A uniform random batch of committed rows (of the newest ones, with --max-age).

    \b
    Examples:
      expstore sample data/demo_pool.h5 -n 4 --seed 0
      expstore sample data/demo_pool.h5 -n 4 --max-age 200 --fields policy_version
    """
    if is_archive(path):
        raise NotAPoolError(f"{path} is a compressed archive, which cannot be sampled in place; "
                            f"`expstore convert {path} POOL` makes a pool of it")
    check_count(count, "-n", minimum=1)
    with open_store(path, "r", backend=read_backend(path)) as store:
        names = parse_fields(fields, store.schema)
        # Ragged rows as their own elements: padded to the batch's longest row, padding could
        # not be told from a stored 0.
        if max_age is None:
            batch = store.sample(count, rng=seed, ragged="list")
        else:
            batch = store.sample(count, rng=seed, max_age=max_age, age_unit=age_unit, ragged="list")
    if as_json:
        shown = summarised(batch, store.schema, as_json=True)
        echo_json({name: shown[name] for name in ["step_id"] + names})
        return
    click.echo(rows_table(summarised(batch, store.schema), names))


COMMANDS = [info, head, tail, show, stats, episodes, sample]
