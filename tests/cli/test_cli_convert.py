"""expstore convert/merge: backends, capacity, archives, atomic writes, bounded memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import expstore
from expstore.backends import BACKENDS as REGISTERED
from expstore.backends import backend_names, register_backend, registry
from expstore.backends.hdf5 import HDF5Backend
from expstore.backends.zarr_v3 import ZarrBackend
from expstore.errors import BackendError
from expstore.inspect import streaming
from expstore.maintenance import convert as converting
from tests.helpers.cli import all_rows, assert_error, assert_same_rows, make_pool, run, run_json
from tests.helpers.pools import BACKENDS, pendulum_schema, rows_for


def other(backend: str) -> str:
    return "zarr" if backend == "hdf5" else "hdf5"


def test_convert_to_the_other_backend_keeps_rows_and_attrs(tmp_path, pool_path, backend):
    make_pool(pool_path, rows=300, capacity=200, attrs={"env_id": "Pendulum-v1", "gamma": 0.99})
    dst = str(tmp_path / f"out{BACKENDS[other(backend)]}")
    assert "wrote 200 rows" in run("convert", pool_path, dst).output
    assert_same_rows(all_rows(dst), all_rows(pool_path))
    facts = run_json("info", dst)
    assert facts["backend"] == other(backend) and facts["capacity"] == 200
    assert facts["attrs"] == {"env_id": "Pendulum-v1", "gamma": 0.99}
    assert run("verify", dst).exit_code == 0


@pytest.mark.parametrize("capacity, kept", [(50, 50), (1000, 200)])
def test_capacity_shrinks_keeping_the_newest_or_grows(tmp_path, pool_path, capacity, kept):
    make_pool(pool_path, rows=300, capacity=200)
    dst = str(tmp_path / "resized.h5")
    run("convert", pool_path, dst, "--capacity", capacity)
    with expstore.open(dst, "a") as pool:
        assert (pool.capacity, len(pool)) == (capacity, kept)
        assert pool[0]["reward"] == -(300 - kept) and pool[-1]["reward"] == -299
        pool.extend(rows_for(np.arange(300, 310)))  # a converted pool keeps recording
    assert run_json("info", dst)["length"] == min(capacity, kept + 10)


@pytest.mark.parametrize("codec", ["auto", "gzip", "zstd", "blosc"])
def test_compressed_archive_round_trip(tmp_path, backend, codec):
    src = make_pool(str(tmp_path / f"src{BACKENDS[backend]}"), rows=300, capacity=200)
    archive = str(tmp_path / f"archive{BACKENDS[backend]}")
    result = run("convert", src, archive, "--compress", codec, ok=False)
    if codec != "auto" and (codec == "gzip") != (backend == "hdf5"):
        assert_error(result, codec, "not available")
        return
    assert result.exit_code == 0, result.output
    facts = run_json("info", archive)
    assert facts["kind"] == "archive" and facts["length"] == 200 and facts["attrs"] == {"env_id": "Pendulum-v1"}
    assert "100" in run("head", archive, "-n", "1").output  # read-only tools read archives
    assert_error(run("sample", archive, ok=False), "archive", "expstore convert")
    back = str(tmp_path / f"back{BACKENDS[other(backend)]}")
    run("convert", archive, back)
    assert_same_rows(all_rows(back), all_rows(src))


def test_compress_flag_without_value_picks_the_backend_codec(tmp_path):
    src = make_pool(str(tmp_path / "src.zarr"))
    run("convert", src, str(tmp_path / "a.zarr"), "--compress")
    assert run_json("info", str(tmp_path / "a.zarr"))["codec"] == "zstd"


def test_merge_concatenates_in_order(tmp_path, backend):
    a = make_pool(str(tmp_path / f"a{BACKENDS[backend]}"), rows=100, capacity=100)
    b = make_pool(str(tmp_path / f"b{BACKENDS[other(backend)]}"), rows=50, capacity=50)
    out = str(tmp_path / f"all{BACKENDS[backend]}")
    run("merge", a, b, "-o", out)
    merged = all_rows(out)
    np.testing.assert_array_equal(merged["reward"], -np.concatenate([np.arange(100), np.arange(50)]).astype(np.float32))
    assert run_json("info", out)["attrs"]["merged_from"] == [a, b]
    run("merge", a, b, "-o", str(tmp_path / "newest.h5"), "--capacity", "60")
    np.testing.assert_array_equal(all_rows(str(tmp_path / "newest.h5"))["reward"][:10], -np.arange(90, 100))


def test_merge_refuses_other_schemas(tmp_path):
    a = make_pool(str(tmp_path / "a.h5"))
    with expstore.open(str(tmp_path / "b.h5"), "w", capacity=10, schema={"obs": ((4,), "float32")}) as pool:
        pool.extend({"obs": np.zeros((3, 4))})
    assert_error(run("merge", a, tmp_path / "b.h5", "-o", tmp_path / "m.h5", ok=False), "same schema")
    assert not (tmp_path / "m.h5").exists()


def test_destination_errors_are_one_line(tmp_path, pool_path):
    make_pool(pool_path)
    run("convert", pool_path, tmp_path / "d.h5")
    assert_error(run("convert", pool_path, tmp_path / "d.h5", ok=False), "already exists", "--overwrite")
    run("convert", pool_path, tmp_path / "d.h5", "--overwrite", "--capacity", "10")
    assert run_json("info", tmp_path / "d.h5")["capacity"] == 10
    assert_error(run("convert", pool_path, pool_path, "--overwrite", ok=False), "also a source")
    assert_error(run("convert", pool_path, tmp_path / "d.bin", ok=False), "backend")
    assert_error(run("convert", tmp_path / "none.h5", tmp_path / "e.h5", ok=False), "no pool at")
    assert_error(run("merge", "-o", tmp_path / "x.h5", ok=False), "SRCS", "expstore merge --help")


def test_interrupted_convert_leaves_no_destination_and_no_temporary(tmp_path, pool_path, backend):
    make_pool(pool_path, rows=300, capacity=200)
    dst = str(tmp_path / f"dst{BACKENDS[other(backend)]}")

    def interrupt(rows):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        converting.convert(pool_path, dst, progress=interrupt)
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(pool_path), os.path.basename(pool_path) + ".lock"])


def test_killed_convert_leaves_the_old_destination_intact(tmp_path, pool_path):
    """SIGKILL in the middle of a convert: DST is still the old pool, repair removes the temporary."""
    make_pool(pool_path, rows=300, capacity=200)
    dst = make_pool(str(tmp_path / "dst.h5"), rows=5, capacity=5)
    script = textwrap.dedent(f"""
        import os, signal
        from expstore.maintenance import convert
        def kill(rows):
            os.kill(os.getpid(), signal.SIGKILL)
        convert.convert({pool_path!r}, {dst!r}, overwrite=True, progress=kill, slice_nbytes=64)
    """)
    assert subprocess.run([sys.executable, "-c", script]).returncode == -9
    assert all_rows(dst)["reward"].tolist() == [-0.0, -1.0, -2.0, -3.0, -4.0]
    assert any(".expstore-tmp-" in name for name in os.listdir(tmp_path))
    assert "leftover temporary" in run("verify", dst, ok=False).output
    assert "removed leftover temporary" in run("repair", dst).output
    assert not any(".expstore-tmp-" in name for name in os.listdir(tmp_path))


_MEMORY_CHILD = """
import sys
import h5py, zarr, zarr.codecs, zarr.storage  # imported before the baseline: libraries are not rows
from expstore.maintenance import convert

def rss_anon_kib():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("RssAnon"))

base = rss_anon_kib()
peak = [base]
convert.convert(sys.argv[1], sys.argv[2], progress=lambda rows: peak.append(rss_anon_kib()),
                slice_nbytes=int(sys.argv[3]))
print(base, max(peak))
"""


def test_convert_streams_in_bounded_memory(tmp_path, backend):
    """A pool larger than the memory budget converts with anonymous memory far below its size."""
    src = str(tmp_path / f"big{BACKENDS[backend]}")
    schema = {**pendulum_schema(), "obs": ((512,), "float32")}  # about 2 KiB per row
    rows = 48_000  # ~100 MB
    with expstore.open(src, "w", capacity=rows, schema=schema, fsync=False) as pool:
        block = rows_for(np.arange(4096))
        block["obs"] = np.ones((4096, 512), np.float32)
        for start in range(0, rows, 4096):
            pool.extend({k: v[:min(4096, rows - start)] for k, v in block.items()})
    pool_mib = rows * expstore.Schema(schema).row_nbytes / 2**20
    budget_mib = 16
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, src, str(tmp_path / f"out{BACKENDS[other(backend)]}"),
                          str(4 << 20)], capture_output=True, text=True, check=True).stdout
    base_kib, peak_kib = map(int, out.split())
    grown_mib = (peak_kib - base_kib) / 1024
    assert pool_mib > 4 * budget_mib
    print(f"anonymous memory grew {grown_mib:.1f} MiB for a {pool_mib:.0f} MiB pool")
    assert grown_mib < budget_mib, f"anonymous memory grew {grown_mib:.1f} MiB converting a {pool_mib:.0f} MiB pool"


def _user_files(tmp_path):
    """What a user keeps at paths that a mistyped --overwrite could hit."""
    notes = tmp_path / "mydata.zarr"
    notes.mkdir()
    (notes / "notes.txt").write_text("field notes\n")
    (tmp_path / "results.h5").write_bytes(b"my results, not HDF5\n")
    with h5py_file(tmp_path / "other.h5") as f:
        f["weights"] = np.zeros(3)
    (tmp_path / "empty.zarr").mkdir()
    return {"mydata.zarr": "notes.txt", "results.h5": "not an HDF5 file", "other.h5": "weights", "empty.zarr": "empty"}


def h5py_file(path):
    import h5py

    return h5py.File(path, "w")


@pytest.mark.parametrize("command", ["convert", "merge", "archive", "import-d4rl", "export-d4rl", "export-minari"])
def test_overwrite_replaces_only_what_expstore_wrote(tmp_path, pool_path, command):
    """--overwrite never deletes a user's files: anything but a pool or archive (or, for an
    export, a file of that format) that expstore wrote is refused, naming what is there."""
    make_pool(pool_path, rows=50, capacity=50)
    d4rl = tmp_path / "export.hdf5"
    run("export", pool_path, d4rl)
    for name, words in _user_files(tmp_path).items():
        dst = tmp_path / name
        if command == "export-d4rl" and name.endswith(".zarr") or command == "export-minari" and name.endswith(".h5"):
            continue  # D4RL files are files, Minari datasets directories
        args = {"convert": ["convert", pool_path, dst], "merge": ["merge", pool_path, "-o", dst],
                "archive": ["convert", pool_path, dst, "--compress"], "import-d4rl": ["import", d4rl, dst],
                "export-d4rl": ["export", pool_path, dst, "--format", "d4rl"],
                "export-minari": ["export", pool_path, dst, "--format", "minari", "--dataset-id", "x-v0"]}[command]
        before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
        assert_error(run(*args, "--overwrite", ok=False), str(dst), words, "expstore wrote")
        assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


def test_overwrite_replaces_pools_archives_and_exports(tmp_path, pool_path, backend):
    make_pool(pool_path, rows=50, capacity=50)
    suffix = BACKENDS[backend]
    pool, archive = str(tmp_path / f"copy{suffix}"), str(tmp_path / f"archive{suffix}")
    run("convert", pool_path, pool)
    run("convert", pool_path, archive, "--compress")
    run("convert", pool_path, pool, "--overwrite", "--compress")  # a pool replaced by an archive
    run("convert", pool_path, archive, "--overwrite")  # and an archive by a pool
    assert run_json("info", pool)["kind"] == "archive" and run_json("info", archive)["kind"] == "pool"
    run("merge", pool_path, pool_path, "-o", pool, "--overwrite")
    assert run_json("info", pool)["length"] == 100
    d4rl, minari = tmp_path / "export.hdf5", tmp_path / "minari-v0"
    for args in (["export", pool_path, d4rl], ["export", pool_path, minari, "--format", "minari"]):
        run(*args)
        run(*args, "--overwrite")
    run("import", d4rl, pool, "--overwrite")
    assert run_json("info", pool)["length"] == 50
    (tmp_path / "minari-v0" / "data" / "notes.txt").write_text("mine\n")
    assert_error(run("export", pool_path, minari, "--format", "minari", "--overwrite", ok=False), "notes.txt")
    (tmp_path / f"copy{suffix}.lock").unlink(missing_ok=True)
    if backend == "zarr":  # a file of the user's inside a Zarr pool stays too
        (tmp_path / "copy.zarr" / "README").write_text("what this pool is\n")
        assert_error(run("convert", pool_path, pool, "--overwrite", ok=False), "README")


# ---------------------------------------------------------------------------- a pool being written
def assert_rows_of_their_step_ids(path: str, first_step_id: int, next_step_id: int) -> None:
    """The copy holds exactly steps [first_step_id, next_step_id), each row as the writer wrote it."""
    with expstore.open(path) as pool:
        assert (pool.first_step_id, pool.next_step_id) == (first_step_id, next_step_id)
        rows = pool[:]
    steps = rows.pop("step_id")
    np.testing.assert_array_equal(steps, np.arange(first_step_id, next_step_id))
    assert_same_rows(rows, rows_for(steps))


def assert_episodes_follow_the_flags(path: str) -> None:
    """The copy's episodes tile its window, one after the other, and each ends at a flagged row
    (or where a writer reopened the pool: cut off), except the open last one."""
    with expstore.open(path) as pool:
        table = pool.episodes()
        first, head = pool.first_step_id, pool.next_step_id
    flags = rows_for(np.arange(first, head))
    ends = first + np.flatnonzero(flags["terminated"] | flags["truncated"])
    ended = ~table["open"] & ~table["cut_off"]
    np.testing.assert_array_equal(table["last_step_id"][ended], ends[ends <= table["last_step_id"][ended][-1]])
    np.testing.assert_array_equal(table["first_step_id"][1:], table["last_step_id"][:-1] + 1)
    assert table["first_step_id"][0] + table["evicted"][0] == first and table["last_step_id"][-1] == head - 1


class _EvictDuring:
    """A writer in this process that appends ``rows`` rows to the source (evicting as many of
    its oldest) whenever it is called, ``times`` times at most."""

    def __init__(self, path: str, rows: int, times: int = 1):
        self.pool = expstore.open(path, "a", fsync=False)
        self.rows, self.times = rows, times

    def __call__(self, *args, **kwargs):
        if self.times:
            self.times -= 1
            head = self.pool.next_step_id
            self.pool.extend(rows_for(np.arange(head, head + self.rows)))
            self.pool.flush()


def test_convert_copies_the_pool_as_it_is_once_the_destination_is_built(tmp_path, pool_path, backend,
                                                                        monkeypatch):
    """The writer evicts the first snapshot's oldest rows while the destination pool is built:
    the copy takes its snapshot again before reading, and keeps the source's step ids."""
    make_pool(pool_path, rows=3000, capacity=2000)
    writer = _EvictDuring(pool_path, rows=700)
    preallocate = expstore.backends.files.preallocate
    monkeypatch.setattr(expstore.backends.files, "preallocate", lambda files: (writer(), preallocate(files)))
    dst = str(tmp_path / f"copy{BACKENDS[other(backend)]}")
    try:
        result = converting.convert(pool_path, dst)
    finally:
        writer.pool.close()
    assert (result.rows, result.evicted_rows, result.first_step_id, result.next_step_id) == (2000, 0, 1700, 3700)
    assert_rows_of_their_step_ids(dst, 1700, 3700)
    assert_episodes_follow_the_flags(dst)
    assert expstore.verify(dst).ok


@pytest.mark.parametrize("codec", [None, "auto"])
def test_convert_starts_again_ahead_of_a_writer_that_outran_it(tmp_path, pool_path, backend, codec):
    """After the first slice, the writer evicts more rows than were copied: the copy starts
    again, ahead of the writer by what the first attempt measured, and keeps the newest rows."""
    make_pool(pool_path, rows=3000, capacity=2000)
    writer = _EvictDuring(pool_path, rows=1500)
    dst = str(tmp_path / f"copy{BACKENDS[backend]}")
    try:
        result = converting.convert(pool_path, dst, progress=writer, slice_nbytes=100 * 34, compress=codec)
    finally:
        writer.pool.close()
    assert result.next_step_id == 4500 and 0 < result.rows <= 500 and result.evicted_rows == 2000 - result.rows
    if codec:  # an archive: back to a pool to read it
        archive, dst = dst, str(tmp_path / f"back{BACKENDS[other(backend)]}")
        converting.convert(archive, dst)
    assert_rows_of_their_step_ids(dst, result.first_step_id, result.next_step_id)
    if not codec:
        assert_episodes_follow_the_flags(dst)


def test_cli_reports_the_rows_a_writer_evicted_before_they_were_read(tmp_path, pool_path, monkeypatch):
    make_pool(pool_path, rows=3000, capacity=2000)
    writer = _EvictDuring(pool_path, rows=700, times=3)  # after each snapshot: the CLI's count, the open, the copy's
    snapshot = streaming.PoolSource.snapshot
    monkeypatch.setattr(streaming.PoolSource, "snapshot", lambda source: (snapshot(source), writer()))
    try:
        output = run("convert", pool_path, tmp_path / "copy.zarr").output
    finally:
        writer.pool.close()
    assert output.startswith("wrote 1300 rows (steps 3100..4399) to pool (capacity 2000)"), output
    assert "a writer evicted 700 rows of the snapshot before they were copied, so the copy starts later" in output
    assert_rows_of_their_step_ids(str(tmp_path / "copy.zarr"), 3100, 4400)


def test_a_writer_that_outruns_the_copy_is_a_clear_error(tmp_path, pool_path, monkeypatch):
    make_pool(pool_path, rows=3000, capacity=2000)
    writer = _EvictDuring(pool_path, rows=2000, times=1000)  # a whole ring
    snapshot = streaming.PoolSource.snapshot
    try:
        with monkeypatch.context() as patch:  # the ring turns over before the first read, every time
            patch.setattr(streaming.PoolSource, "snapshot", lambda source: (snapshot(source), writer()))
            with pytest.raises(expstore.WriterOutranError, match="evicted all 2000 rows.*capacity"):
                converting.convert(pool_path, str(tmp_path / "copy.h5"))
            result = run("convert", pool_path, tmp_path / "copy.h5", ok=False)
            assert_error(result, "evicted all 2000 rows", "smaller --capacity N")
            assert "capacity=" not in result.output
        monkeypatch.setattr(converting, "_ATTEMPTS", 1)
        writer.rows = 500  # after the first slice: outruns the copy, and there is no second attempt
        with pytest.raises(expstore.WriterOutranError, match="attempts: 1.*capacity=N"):
            converting.convert(pool_path, str(tmp_path / "again.h5"), progress=writer, slice_nbytes=100 * 34)
    finally:
        writer.pool.close()
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(pool_path), os.path.basename(pool_path) + ".lock"])


def test_merge_reads_a_later_source_as_its_writer_left_it(tmp_path, backend):
    """A writer evicts rows of the second source while the first is copied: the second is read as
    it is when its turn comes (as many rows as planned, its newest), renumbered after the first."""
    a = make_pool(str(tmp_path / f"a{BACKENDS[backend]}"), rows=500, capacity=500)
    b = make_pool(str(tmp_path / f"b{BACKENDS[backend]}"), rows=900, capacity=600)
    writer = _EvictDuring(b, rows=250)  # runs after the first source's only slice
    out = str(tmp_path / f"all{BACKENDS[other(backend)]}")
    try:
        result = converting.merge([a, b], out, progress=writer)
    finally:
        writer.pool.close()
    assert (result.rows, result.evicted_rows, result.first_step_id, result.next_step_id) == (1100, 0, 0, 1100)
    merged = all_rows(out)
    np.testing.assert_array_equal(merged["reward"], -np.concatenate([np.arange(500), np.arange(550, 1150)]))
    with expstore.open(out) as pool:
        assert pool.episodes()["first_step_id"][-1] > 500  # the second source's episodes follow the first's


LIVE_CAPACITY = 100_000


def _while_writing(writer, work) -> None:
    """Run ``work`` in a thread while reading the writer's output, so that it never blocks."""
    import threading

    thread = threading.Thread(target=work)
    thread.start()
    while thread.is_alive():
        writer.run_for(0.02)
    thread.join()


def test_convert_of_a_pool_that_a_writer_fills_at_full_speed(tmp_path, backend):
    """A writer process wraps a full ring at full speed while convert copies it three ways (the
    other backend, an archive, the same backend through the CLI): each copy holds a contiguous
    run of the newest rows, bit for bit as written, and counts what the writer took as evicted."""
    from tests.helpers.crash_writer import WriterProcess

    src = str(tmp_path / f"live{BACKENDS[backend]}")
    copies = {"pool": str(tmp_path / f"copy{BACKENDS[other(backend)]}"),
              "archive": str(tmp_path / f"archive{BACKENDS[backend]}")}
    cli_copy = str(tmp_path / f"cli{BACKENDS[backend]}")
    results, heads = {}, []
    writer = WriterProcess(src, backend, LIVE_CAPACITY, commit_every=500, batch=100)
    try:
        writer.wait_committed()
        while writer.last_committed < 2 * LIVE_CAPACITY:  # a full ring, wrapped once
            writer.run_for(0.05)
        heads.append(writer.last_committed)
        for name, dst in copies.items():
            codec = "auto" if name == "archive" else None
            _while_writing(writer, lambda n=name, d=dst, c=codec: results.update({n: converting.convert(src, d,
                                                                                                        compress=c)}))
        _while_writing(writer, lambda: results.update(cli=run("convert", src, cli_copy)))
        heads.append(writer.last_committed)
    finally:
        writer.kill()
    assert results["cli"].output.startswith("wrote ") and "steps" in results["cli"].output
    assert heads[1] - heads[0] > LIVE_CAPACITY // 10, heads  # the writer kept writing throughout
    archive_back = str(tmp_path / f"back{BACKENDS[other(backend)]}")
    converting.convert(copies["archive"], archive_back)
    for name, dst in {"pool": copies["pool"], "archive": archive_back}.items():
        result = results[name]
        print(f"{name}: {result.rows} rows copied, {result.evicted_rows} evicted first; writer at {heads}")
        assert result.rows > 0 and result.rows + result.evicted_rows == LIVE_CAPACITY, result
        assert result.next_step_id - result.first_step_id == result.rows
        assert_rows_of_their_step_ids(dst, result.first_step_id, result.next_step_id)
    assert_episodes_follow_the_flags(copies["pool"])
    with expstore.open(cli_copy) as pool:
        assert_rows_of_their_step_ids(cli_copy, pool.first_step_id, pool.next_step_id)
    assert expstore.verify(copies["pool"]).ok


# ------------------------------------------------------------------------- the backend registry
class _ZarrUnderAnotherName(ZarrBackend):
    """The Zarr backend registered again under another name and suffix: what a new backend in
    backends/ does, without writing a container format for the test."""

    name = "zarr2"


@pytest.fixture
def zarr2():
    backend = register_backend("zarr2", _ZarrUnderAnotherName(), suffixes=(".zarr2",))
    yield backend
    REGISTERED.pop("zarr2")
    registry._SUFFIXES.pop(".zarr2")


def test_a_registered_backend_is_chosen_by_suffix_and_offered_by_the_cli(tmp_path, zarr2):
    src = make_pool(str(tmp_path / "src.h5"), rows=120, capacity=100)
    assert "[hdf5|zarr|zarr2]" in run("convert", "--help").output
    out = tmp_path / "out.zarr2"
    run("convert", src, out)  # by its suffix
    with expstore.open(str(out)) as pool:
        assert pool.backend == "zarr2"
    assert_same_rows(all_rows(str(out)), all_rows(src))
    named = tmp_path / "named.pool"
    run("convert", src, named, "--backend", "zarr2")
    assert_same_rows(all_rows_of(str(named), "zarr2"), all_rows(src))
    archive = tmp_path / "archive.zarr2"
    assert f"to archive {archive}" in run("convert", src, archive, "--compress").output  # zarr2's default: zstd
    back = tmp_path / "back.h5"
    run("convert", archive, back)
    assert_same_rows(all_rows(str(back)), all_rows(src))
    assert_error(run("convert", src, tmp_path / "bad.zarr2", "--compress", "gzip", ok=False),
                 "codec 'gzip' is not available for zarr2 archives; choose one of zstd, blosc")


def all_rows_of(path: str, backend: str) -> dict:
    with expstore.open(path, "r", backend=backend) as pool:
        batch = pool[:]
    batch.pop("step_id")
    return batch


def test_registering_a_backend_name_or_suffix_twice_is_an_error():
    with pytest.raises(BackendError, match="a backend named 'hdf5' is registered already"):
        register_backend("hdf5", HDF5Backend())
    with pytest.raises(BackendError, match=r"taken already: \.zarr \(zarr\)"):
        register_backend("zarr2", _ZarrUnderAnotherName(), suffixes=(".zarr",))
    with pytest.raises(BackendError, match="calls itself 'zarr'"):
        register_backend("zarr3", ZarrBackend(), suffixes=(".zarr3",))
    assert backend_names() == ["hdf5", "zarr"]
    assert streaming.read_backend("x.zarr2") is None and "zarr2" not in REGISTERED


def test_an_unknown_backend_is_one_line_listing_the_registered_ones(tmp_path):
    src = make_pool(str(tmp_path / "src.h5"))
    with pytest.raises(BackendError, match="unknown backend 'lmdb'; choose one of hdf5, zarr"):
        expstore.open(str(tmp_path / "new.h5"), "w", capacity=4, schema=pendulum_schema(), backend="lmdb")
    for command in (("convert", src, tmp_path / "out.h5"), ("merge", src, "-o", tmp_path / "out.h5"),
                    ("import", tmp_path / "in.hdf5", tmp_path / "out.h5")):
        assert_error(run(*command, "--backend", "lmdb", ok=False), "unknown backend 'lmdb'; choose one of hdf5, zarr")
    assert not (tmp_path / "out.h5").exists() and not (tmp_path / "new.h5").exists()
    assert_error(run("convert", src, tmp_path / "out.lmdb", ok=False), "(.h5 -> hdf5, .hdf5 -> hdf5, .zarr -> zarr)",
                 "pass --backend hdf5 or --backend zarr")
