"""expstore info/head/tail/show/stats/episodes/sample, on both backends, and their error paths."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.cli import assert_error, make_pool, run, run_json
from tests.helpers.pools import rows_for


def test_help_of_every_command_has_an_example():
    from expstore.cli import cli

    for name in cli.commands:
        output = run(name, "--help").output
        assert "Example" in output and f"expstore {name}" in output, name


def test_info_json_describes_the_pool(pool_path, backend):
    make_pool(pool_path, rows=300, capacity=200)
    facts = run_json("info", pool_path)
    assert facts["backend"] == backend and facts["kind"] == "pool"
    assert (facts["capacity"], facts["length"]) == (200, 200)
    assert (facts["first_step_id"], facts["next_step_id"]) == (100, 300)
    assert facts["schema"]["obs"] == {"shape": [3], "dtype": "float32"}
    assert facts["attrs"] == {"env_id": "Pendulum-v1"} and facts["writer"] is None
    assert facts["disk_nbytes"] > 0 and facts["last_commit"].startswith("20")
    text = run("info", pool_path).output
    assert "capacity: 200" in text and "obs: (3,) float32" in text


def test_info_names_a_running_writer(pool_path):
    import expstore

    make_pool(pool_path)
    with expstore.open(pool_path, "a"):
        assert "pid=" in run_json("info", pool_path)["writer"]


def test_head_tail_show_print_the_right_rows(pool_path):
    make_pool(pool_path, rows=300, capacity=200)
    head = run("head", pool_path, "-n", "2", "--fields", "obs,reward").output.splitlines()
    assert head[0].split() == ["step_id", "obs", "reward"] and len(head) == 3
    assert head[1].split()[0] == "100" and head[1].split()[-1] == "-100"
    tail = run("tail", pool_path, "-n", "3").output.splitlines()
    assert [line.split()[0] for line in tail[1:]] == ["297", "298", "299"]
    shown = run("show", pool_path, "--start", "-5", "--count", "2").output.splitlines()
    assert [line.split()[0] for line in shown[1:]] == ["295", "296"]


def test_show_prints_ragged_rows_as_their_own_elements(pool_path):
    import expstore

    schema = {"tokens": expstore.Field((None,), "int32"), "reward": ((), "float32")}
    with expstore.open(pool_path, "w", capacity=10, schema=schema) as pool:
        for n in (0, 1, 3):
            pool.append({"tokens": np.arange(10, 10 + n, dtype=np.int32), "reward": 1.0})
    lines = run("show", pool_path, "--fields", "tokens").output.splitlines()
    assert [line.split(None, 1)[1] for line in lines[1:]] == ["[]", "[10]", "[10, 11, 12]"]


@pytest.mark.parametrize("args, words", [
    (["show", "{p}", "--start", "500"], ["--start 500", "200 rows"]),
    (["show", "{p}", "--count", "-1"], ["--count -1"]),
    (["head", "{p}", "--fields", "obs,nope"], ["nope", "obs"]),
    (["sample", "{p}", "-n", "0"], ["-n 0"]),
])
def test_bad_options_give_one_line(pool_path, args, words):
    make_pool(pool_path)
    assert_error(run(*[a.format(p=pool_path) for a in args], ok=False), *words)


@pytest.mark.parametrize("command", ["info", "head", "tail", "show", "stats", "episodes", "sample", "plot"])
def test_missing_path_and_non_pool_give_one_line(tmp_path, command):
    extra = ["-o", str(tmp_path / "x.png")] if command == "plot" else []
    assert_error(run(command, tmp_path / "missing.h5", *extra, ok=False), "no pool at")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    assert_error(run(command, junk, *extra, ok=False), "not an HDF5 file")
    (tmp_path / "empty.zarr").mkdir()
    assert_error(run(command, tmp_path / "empty.zarr", *extra, ok=False), "zarr.json")


def test_corrupt_pool_gives_one_line(pool_path, backend):
    import expstore

    make_pool(pool_path)
    with expstore.open(pool_path, "r") as pool:
        extent = pool._layout.commit
    with open(extent.path, "r+b") as fh:
        fh.seek(extent.offset)
        fh.write(b"\xff" * 8192)
    assert_error(run("info", pool_path, ok=False), "commit slots are damaged", "expstore repair")


def test_stats_json_matches_numpy(pool_path):
    make_pool(pool_path, rows=300, capacity=200)
    stats = run_json("stats", pool_path)
    expected = rows_for(np.arange(100, 300))
    obs = stats["fields"]["obs"]
    assert obs["count"] == 600 and obs["nan"] == 0
    assert obs["min"] == pytest.approx(expected["obs"].min()) and obs["max"] == pytest.approx(expected["obs"].max())
    assert obs["mean"] == pytest.approx(expected["obs"].mean()) and obs["std"] == pytest.approx(expected["obs"].std())
    episodes = stats["episodes"]
    assert episodes["episodes"] > 40 and episodes["complete"] == episodes["episodes"] - 2  # evicted start, open end
    assert episodes["length"]["max"] <= 5
    assert "reward" in run("stats", pool_path).output


def test_stats_counts_nan_and_inf(tmp_path, backend):
    import expstore

    path = str(tmp_path / f"nan{'.h5' if backend == 'hdf5' else '.zarr'}")
    with expstore.open(path, "w", capacity=10, schema={"x": ((), "float32")}) as pool:
        pool.extend({"x": np.array([1, np.nan, np.inf, -np.inf, 3], dtype=np.float32)})
    x = run_json("stats", path)["fields"]["x"]
    assert (x["nan"], x["inf"], x["count"], x["min"], x["max"]) == (1, 2, 2, 1.0, 3.0)


def test_episodes_table_follows_the_flags(pool_path):
    make_pool(pool_path, rows=30, capacity=100)
    table = run_json("episodes", pool_path)["episodes"]
    ends = [e["first_step_id"] + e["length"] - 1 for e in table if not e["open"]]
    flags = rows_for(np.arange(30))
    assert ends == list(np.flatnonzero(flags["terminated"] | flags["truncated"]))
    assert table[0]["return"] == pytest.approx(0.0) and table[1]["return"] == pytest.approx(-(1 + 2 + 3 + 4 + 5))
    assert table[-1]["open"] and not any(e["evicted"] for e in table)
    assert len(run_json("episodes", pool_path, "--limit", "2")["episodes"]) == 2
    assert "episode_id" in run("episodes", pool_path).output


def test_sample_is_seeded(pool_path):
    make_pool(pool_path, rows=300, capacity=200)
    first = run_json("sample", pool_path, "-n", "5", "--seed", "3")
    assert first == run_json("sample", pool_path, "-n", "5", "--seed", "3")
    assert all(100 <= s < 300 for s in first["step_id"])
    assert first["reward"] == [-float(s) for s in first["step_id"]]
    assert len(run("sample", pool_path, "-n", "2").output.splitlines()) == 3


def test_sample_shows_ragged_rows_at_their_own_lengths(pool_path):
    import expstore

    schema = {"tokens": expstore.Field((None,), "int32", codec="lz4"), "reward": ((), "float32")}
    lengths = [0, 2, 9, 3]
    with expstore.open(pool_path, "w", capacity=10, schema=schema) as pool:
        for i, n in enumerate(lengths):  # tokens of row i: i*100, i*100 + 1, ...: never 0 past row 0
            pool.append({"tokens": np.arange(i * 100 + 1, i * 100 + 1 + n, dtype=np.int32), "reward": float(i)})
    drawn = run_json("sample", pool_path, "-n", "16", "--seed", "0")
    assert "tokens_length" not in drawn and len(set(drawn["step_id"])) == 4
    for step, tokens in zip(drawn["step_id"], drawn["tokens"], strict=True):
        assert tokens == list(range(step * 100 + 1, step * 100 + 1 + lengths[step]))
    lines = run("sample", pool_path, "-n", "16", "--seed", "0", "--fields", "tokens").output.splitlines()[1:]
    shown = {int(line.split(None, 1)[0]): line.split(None, 1)[1] for line in lines}
    assert shown == {0: "[]", 1: "[101, 102]", 2: "[201, 202, 203, 204, ... (9)]", 3: "[301, 302, 303]"}


def test_episodes_command_shows_evicted_rows_cut_off_and_env(pool_path):
    make_pool(pool_path, rows=300, capacity=200)
    found = run_json("episodes", pool_path)["episodes"]
    first = found[0]
    assert {"evicted", "cut_off", "env_id"} <= first.keys()
    assert isinstance(first["evicted"], int) and first["evicted"] > 0  # rows the ring dropped, not a flag
    assert all(row["evicted"] == 0 for row in found[1:])


CLI_MAIN = "import sys; from expstore.cli import main; sys.argv[0] = 'expstore'; main()"


@pytest.mark.parametrize("args", [["info"], ["head", "-n", "3"], ["stats", "--duplicates"], ["episodes"],
                                  ["sample", "--json"], ["verify"], ["repair"], ["convert", "{out}"]])
def test_a_closed_pipe_ends_quietly(tmp_path, pool_path, args):
    """`expstore stats POOL | head -1`: when the reader of the output has gone, the command stops
    quietly with the status of a process that SIGPIPE ended, as Unix tools do."""
    import os
    import signal
    import subprocess
    import sys

    make_pool(pool_path, rows=300, capacity=200)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: deterministic, no race
    command = [a.format(out=tmp_path / "out.h5") for a in args]
    child = subprocess.run([sys.executable, "-c", CLI_MAIN, command[0], pool_path, *command[1:]],
                           stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    os.close(write_end)
    assert (child.returncode, child.stderr) == (128 + signal.SIGPIPE, "")


@pytest.mark.parametrize("args, words", [
    (["episodes", "{p}", "--limit", "-2"], ["--limit -2", "not be negative"]),
    (["head", "{p}", "-n", "-3"], ["-n -3", "not be negative"]),
    (["tail", "{p}", "-n", "-3"], ["-n -3", "not be negative"]),
    (["sample", "{p}", "-n", "-1"], ["-n -1"]),
])
def test_negative_counts_and_limits_are_errors(pool_path, args, words):
    make_pool(pool_path)
    assert_error(run(*[a.format(p=pool_path) for a in args], ok=False), *words)
    assert run_json("episodes", pool_path, "--limit", "0")["episodes"] == []  # like head -n 0


def test_stats_obs_field_must_name_a_field(pool_path):
    make_pool(pool_path)
    result = run("stats", pool_path, "--obs-field", "nonexistent", "--duplicates", ok=False)
    assert_error(result, "nonexistent", "'obs'", "'terminated'")
    assert_error(run("stats", pool_path, "--obs-field", "terminated", ok=False), "--duplicates")
    clusters = run_json("stats", pool_path, "--obs-field", "terminated", "--duplicates")["duplicates"]
    assert clusters["observation_clusters"]["distinct"] == 2  # a bool field: two states


def test_info_shows_apparent_and_allocated_size(pool_path, backend):
    import subprocess

    import expstore

    make_pool(pool_path, rows=10, capacity=100_000)  # mostly zeros: holes once dug
    with expstore.open(pool_path) as pool:
        data_file = pool._layout.fields["obs"].path
    subprocess.run(["fallocate", "--dig-holes", data_file], check=True)
    if not expstore.backends.files.is_sparse(data_file):
        pytest.skip("this file system keeps zero blocks allocated")
    facts = run_json("info", pool_path)
    assert facts["apparent_nbytes"] > facts["disk_nbytes"] + 1_000_000
    text = run("info", pool_path).output
    apparent, allocated = facts["apparent_nbytes"] / 2**20, facts["disk_nbytes"] / 2**20
    assert f"size: {apparent:.1f} MiB ({allocated:.1f} MiB allocated on disk" in text, text
    assert "sparse" in text


def test_read_only_commands_tell_the_backend_from_the_contents(tmp_path, backend):
    make_pool(str(tmp_path / f"pool{'.h5' if backend == 'hdf5' else '.zarr'}"), rows=30)
    renamed = tmp_path / "backup.pool"
    (tmp_path / f"pool{'.h5' if backend == 'hdf5' else '.zarr'}").rename(renamed)
    assert run_json("info", renamed)["backend"] == backend
    assert run_json("sample", renamed, "-n", "2", "--seed", "0")["step_id"]
    assert run("verify", renamed).exit_code == 0


@pytest.mark.parametrize("args, words", [
    (["info", "{pool}", "--bogus"], ["No such option '--bogus'", "`expstore info --help`"]),
    (["head", "{pool}", "-n", "x"], ["'--count' / '-n'", "not a valid integer", "`expstore head --help`"]),
    (["info"], ["Missing argument 'PATH'"]),
    (["bogus"], ["No such command 'bogus'", "`expstore --help`"]),
    (["--bogus"], ["No such option '--bogus'", "`expstore --help`"]),
])
def test_usage_mistakes_are_one_line_and_exit_1_like_every_other_mistake(pool_path, args, words):
    make_pool(pool_path)
    assert_error(run(*[arg.format(pool=pool_path) for arg in args], ok=False), *words)
