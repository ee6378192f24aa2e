"""The interchange seam: a format registered from outside the package (here a small .npz
layout written in this test) is offered by ``expstore export/import --format`` and chosen by
its suffix, with nothing changed in the CLI; registering a name twice or naming an unknown
format is a one-line error that lists the registered formats."""

from __future__ import annotations

import json
import os
from contextlib import closing

import numpy as np
import pytest

import expstore
from expstore.errors import InvalidArgumentError, StoreExistsError
from expstore.inspect.streaming import iter_slices, open_source, read_backend
from expstore.interchange import FORMATS, ExportResult, format_names, get_format, register_format
from expstore.interchange.d4rl import D4RLFormat
from expstore.schema import Schema
from tests.helpers.cli import all_rows, assert_error, assert_same_rows, make_pool, run
from tests.helpers.pools import BACKENDS

_SCHEMA_KEY = "expstore_schema"


class NpzFormat:
    """A pool's rows, oldest first, as one NumPy array per field in a .npz file."""

    name = "npz"
    description = "NumPy .npz file"
    suffixes = (".npz",)
    export_passes = 1
    export_options = ()

    def recognises(self, path: str) -> bool:
        return os.path.isfile(path) and path.endswith(".npz")

    def export_pool(self, src, dst, *, overwrite=False, progress=None, **options) -> ExportResult:
        if os.path.exists(dst) and not overwrite:
            raise StoreExistsError(f"{dst} already exists; pass overwrite=True to replace it")
        with closing(open_source(src)) as source:
            slices = [rows for _first, rows in iter_slices(source, progress=progress)]
            columns = {name: np.concatenate([rows[name] for rows in slices]) for name in source.schema}
            schema = json.dumps(source.schema.to_json())
        with open(dst, "wb") as fh:
            np.savez(fh, **{_SCHEMA_KEY: np.array(schema)}, **columns)
        return ExportResult(len(columns["reward"]))

    def import_pool(self, src, dst, *, capacity=None, backend=None, overwrite=False, progress=None) -> int:
        with np.load(src) as data:
            schema = Schema.from_json(json.loads(str(data[_SCHEMA_KEY])))
            rows = {name: data[name] for name in schema}
        count = len(rows["reward"])
        with expstore.open(dst, "w" if overwrite else "w-", capacity=capacity or count, schema=schema,
                           backend=backend) as pool:
            pool.extend(rows)
        return count


@pytest.fixture
def npz_format():
    fmt = register_format("npz", NpzFormat())
    yield fmt
    FORMATS.pop("npz")


def test_a_registered_format_exports_and_imports_through_the_cli(tmp_path, pool_path, backend, npz_format):
    make_pool(pool_path, rows=300, capacity=200)
    assert "npz" in run("export", "--help").output and "npz" in run("import", "--help").output
    file = tmp_path / "rows.npz"
    result = run("export", pool_path, file)  # chosen by its suffix
    assert result.output == f"wrote 200 rows to the NumPy .npz file {file}\n"
    with np.load(file) as data:
        np.testing.assert_array_equal(data["reward"], -np.arange(100, 300, dtype=np.float32))
    run("export", pool_path, file, "--format", "npz", "--overwrite")
    back = str(tmp_path / f"back{BACKENDS[backend]}")
    assert run("import", file, back).output == f"imported 200 rows into {back}\n"  # told by its suffix
    assert_same_rows(all_rows(back), all_rows(pool_path))
    again = str(tmp_path / "again.pool")
    run("import", file, again, "--format", "npz", "--backend", backend)
    assert read_backend(again) == backend  # the contents (a file, a directory) tell the backend chosen


def test_an_option_of_another_format_is_refused(tmp_path, pool_path, npz_format):
    make_pool(pool_path)
    result = run("export", pool_path, tmp_path / "rows.npz", "--dataset-id", "x-v0", ok=False)
    assert_error(result, "--dataset-id does not apply to --format npz")
    assert not (tmp_path / "rows.npz").exists()


def test_registering_a_format_name_twice_is_an_error(npz_format):
    with pytest.raises(InvalidArgumentError, match="'npz' is registered already"):
        register_format("npz", NpzFormat())
    with pytest.raises(InvalidArgumentError, match="calls itself 'd4rl'"):
        register_format("d4rl-copy", D4RLFormat())
    names = format_names()
    assert names[:2] == ["d4rl", "minari"] and names[-1] == "npz" and names.count("npz") == 1


def test_an_unknown_format_is_one_line_listing_the_registered_ones(tmp_path, pool_path, npz_format):
    make_pool(pool_path)
    known = ", ".join(format_names())
    assert known.startswith("d4rl, minari") and known.endswith("npz")
    with pytest.raises(InvalidArgumentError, match=f"unknown format 'csv'; choose one of {known}"):
        get_format("csv")
    for command in (("export", pool_path, tmp_path / "out"), ("import", tmp_path / "in.npz", tmp_path / "o.h5")):
        assert_error(run(*command, "--format", "csv", ok=False), f"unknown format 'csv'; choose one of {known}")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o.h5").exists()
    (tmp_path / "data.csv").write_text("1,2\n")
    assert_error(run("import", tmp_path / "data.csv", tmp_path / "o.h5", ok=False),
                 "pass " + " or ".join(f"--format {name}" for name in format_names()))
