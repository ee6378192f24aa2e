"""Bad input gets a clear error and writes nothing (issue 2), on both backends.

Every error is checked three ways: its class is an ``ExpstoreError`` and the builtin a caller
would catch; its message names the problem and says how to fix it; and the pool (or the file
that is not a pool) is byte for byte as it was, in the open writer and after a reopen.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

import expstore
from tests.helpers.pools import pendulum_schema, rows_for

SCHEMA = {**pendulum_schema(), "count": ((), "int32")}
CAPACITY = 8



# ---------------------------------------------------------------------------- helpers
def rows(step_ids) -> dict[str, np.ndarray]:
    steps = np.asarray(step_ids, dtype=np.int64)
    return {**rows_for(steps), "count": steps.astype(np.int32)}


def one_row(step_id: int) -> dict:
    return {name: values[0] for name, values in rows([step_id]).items()}


def assert_rows(batch: dict, step_ids) -> None:
    steps = np.asarray(step_ids, dtype=np.int64)
    np.testing.assert_array_equal(batch["step_id"], steps)
    for name, expected in rows(steps).items():
        np.testing.assert_array_equal(batch[name], expected, err_msg=name)


def check_error(excinfo, error_class, builtin, problem: list[str], fix: list[str] = ()) -> None:
    """The error is both classes, and its message holds the problem words and the fix words."""
    error = excinfo.value
    assert isinstance(error, error_class) and isinstance(error, expstore.ExpstoreError)
    assert isinstance(error, builtin), f"{type(error).__name__} is not a {builtin.__name__}"
    message = str(error)
    for word in problem:
        assert word in message, f"{word!r} not in {message!r}"
    for word in fix:
        assert word in message, f"fix hint {word!r} not in {message!r}"


def files_of(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(root, name) for root, _dirs, names in os.walk(path) for name in names)


def snapshot(path: str) -> dict[str, str]:
    """Every file of a pool (or of any file or directory) by its sha256."""
    return {file: hashlib.sha256(open(file, "rb").read()).hexdigest() for file in files_of(path)}


@pytest.fixture
def writer(pool_path):
    """A writer that has wrapped around (steps 5..12 held), with two rows not yet committed."""
    pool = expstore.open(pool_path, "w", capacity=CAPACITY, schema=SCHEMA, slack=4, chunk_rows=4,
                         commit_every=1000, commit_interval_s=3600)
    pool.extend(rows(range(11)))
    pool.flush()
    pool.extend(rows(range(11, 13)))
    yield pool
    pool.close()


def assert_writer_unchanged(pool, before: dict[str, str]) -> None:
    """The writer still holds steps 5..12, wrote nothing, and keeps appending from step 13."""
    assert snapshot(pool.path) == before
    assert (len(pool), pool.first_step_id, pool.next_step_id) == (CAPACITY, 5, 13)
    assert_rows(pool[:], range(5, 13))
    pool.append(one_row(13))
    pool.close()
    with expstore.open(pool.path) as again:
        assert_rows(again[:], range(6, 14))


# ---------------------------------------------------------------------------- bad rows and batches
def _replace(mapping: dict, **changes) -> dict:
    return {**mapping, **changes}


BAD_ROWS = {
    "wrong shape": (lambda r: _replace(r, obs=np.zeros(4, np.float32)), ["'obs'", "(4,)", "(3,)"], ["reshape"]),
    "row of a batch": (lambda r: _replace(r, obs=np.zeros((1, 3), np.float32)), ["'obs'", "(1, 3)"], ["reshape"]),
    "fraction into int": (lambda r: _replace(r, count=1.5), ["'count'", "int32", "whole numbers"], ["round"]),
    "int out of range": (lambda r: _replace(r, count=2**40), ["'count'", "int32", "range"], ["widen"]),
    "float overflow": (lambda r: _replace(r, reward=1e300), ["'reward'", "float32", "overflow"], ["wider"]),
    "float into bool": (lambda r: _replace(r, terminated=0.5), ["'terminated'", "bool"], ["pass booleans"]),
    "int into bool": (lambda r: _replace(r, terminated=2), ["'terminated'", "bool"], ["pass booleans"]),
    "string": (lambda r: _replace(r, obs="abc"), ["'obs'", "numbers only"], []),
    "complex": (lambda r: _replace(r, reward=1 + 2j), ["'reward'", "complex"], ["numbers only"]),
    "NaN into int": (lambda r: _replace(r, count=float("nan")), ["'count'", "NaN"], ["float"]),
    "inf into int": (lambda r: _replace(r, count=float("inf")), ["'count'", "int32"], ["round"]),
    "missing field": (lambda r: {k: v for k, v in r.items() if k != "count"}, ["missing", "'count'"],
                      ["the pool stores"]),
    "extra field": (lambda r: _replace(r, log_prob=0.5), ["unknown", "'log_prob'"], ["the pool stores"]),
    "step_id given": (lambda r: _replace(r, step_id=3), ["unknown", "'step_id'"], ["the pool stores"]),
}


@pytest.mark.parametrize("make, problem, fix", [
    pytest.param(*case.values, marks=case.marks, id=name) if hasattr(case, "marks") else pytest.param(*case, id=name)
    for name, case in BAD_ROWS.items()
])
def test_bad_append_writes_nothing(writer, make, problem, fix):
    before = snapshot(writer.path)
    with pytest.raises(expstore.SchemaError) as info:
        writer.append(make(one_row(13)))
    check_error(info, expstore.SchemaError, ValueError, problem, fix)
    assert_writer_unchanged(writer, before)


def _bad_batch(change: str):
    """A 20-row batch (larger than the ring and its slack) whose last row, or one field, is bad."""
    batch = rows(range(13, 33))
    if change == "wrong shape":
        batch["obs"] = np.zeros((20, 4), np.float32)
    elif change == "scalar field":
        batch["reward"] = np.float32(1.0)
    elif change == "NaN in the last row":
        batch["count"] = batch["count"].astype(np.float64)
        batch["count"][-1] = np.nan
    elif change == "out of range in the last row":
        batch["count"] = batch["count"].astype(np.int64)
        batch["count"][-1] = 2**40
    elif change == "overflow in the last row":
        batch["reward"] = batch["reward"].astype(np.float64)
        batch["reward"][-1] = 1e300
    elif change == "different lengths":
        batch["reward"] = batch["reward"][:-1]
    elif change == "missing field":
        del batch["count"]
    elif change == "extra field":
        batch["log_prob"] = np.zeros(20, np.float32)
    return batch


@pytest.mark.parametrize("change, problem, fix", [
    ("wrong shape", ["'obs'", "(20, 4)", "(20, 3)"], ["reshape"]),
    ("scalar field", ["'reward'", "scalar"], ["leading batch dimension"]),
    ("NaN in the last row", ["'count'", "NaN"], ["float"]),
    ("out of range in the last row", ["'count'", "range"], ["widen"]),
    ("overflow in the last row", ["'reward'", "overflow"], ["wider"]),
    ("different lengths", ["different lengths", "20", "19"], ["one row per transition"]),
    ("missing field", ["missing", "'count'"], ["the pool stores"]),
    ("extra field", ["unknown", "'log_prob'"], ["the pool stores"]),
])
def test_bad_extend_writes_nothing(writer, change, problem, fix):
    before = snapshot(writer.path)
    with pytest.raises(expstore.SchemaError) as info:
        writer.extend(_bad_batch(change))
    check_error(info, expstore.SchemaError, ValueError, problem, fix)
    assert_writer_unchanged(writer, before)


def test_bad_torch_batch_writes_nothing(writer):
    torch = pytest.importorskip("torch")
    batch = {name: torch.from_numpy(values) for name, values in rows(range(13, 16)).items()}
    batch["count"] = torch.tensor([1.0, 2.0, float("nan")])
    before = snapshot(writer.path)
    with pytest.raises(expstore.SchemaError, match="NaN"):
        writer.extend(batch)
    assert_writer_unchanged(writer, before)


def test_bad_first_write_creates_nothing(pool_path):
    """Without a schema the first write defines it; a bad first batch must not create the pool."""
    pool = expstore.open(pool_path, "w", capacity=4)
    for bad in ({"obs": np.zeros((3, 2)), "reward": np.zeros(2)},     # different lengths
                {"obs": np.zeros((3, 2)), "step_id": np.zeros(3)},    # reserved name
                {"obs": np.array(["a", "b"])},                       # not numbers
                {}):                                                  # no field at all
        with pytest.raises(expstore.SchemaError):
            pool.extend(bad)
    with pytest.raises(expstore.SchemaError):
        pool.append({"obs": "text"})
    assert pool.schema is None and len(pool) == 0
    pool.close()
    assert not os.path.exists(pool_path)


# ---------------------------------------------------------------------------- read-only
@pytest.mark.parametrize("write", ["append", "extend", "flush"])
def test_writing_to_a_read_only_store(writer, write):
    writer.flush()
    before = snapshot(writer.path)
    with expstore.open(writer.path, "r") as reader:
        call = {"append": lambda: reader.append(one_row(13)), "extend": lambda: reader.extend(rows([13])),
                "flush": reader.flush}[write]
        with pytest.raises(expstore.ReadOnlyError) as info:
            call()
        check_error(info, expstore.ReadOnlyError, PermissionError, ["read-only", writer.path], ["mode='a'"])
        assert len(reader) == CAPACITY
    assert snapshot(writer.path) == before


# ---------------------------------------------------------------------------- opening what is not a pool
@pytest.mark.parametrize("mode", ["r", "r+"])
def test_missing_path(pool_path, mode):
    with pytest.raises(expstore.StoreNotFoundError) as info:
        expstore.open(pool_path, mode)
    check_error(info, expstore.StoreNotFoundError, FileNotFoundError, ["no pool", pool_path], ["mode='w'"])
    assert not os.path.exists(pool_path)


@pytest.mark.parametrize("mode", ["w-", "x"])
def test_exclusive_create_of_an_existing_pool(writer, mode):
    writer.flush()
    before = snapshot(writer.path)
    with pytest.raises(expstore.StoreExistsError) as info:
        expstore.open(writer.path, mode, capacity=CAPACITY, schema=SCHEMA)
    check_error(info, expstore.StoreExistsError, FileExistsError, ["already exists", writer.path], ["mode='a'"])
    assert snapshot(writer.path) == before


def _plain_hdf5(path: str) -> None:
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        f["obs"] = np.arange(12, dtype=np.float32).reshape(4, 3)
        f.attrs["note"] = "made by plain h5py"


def _plain_zarr(path: str) -> None:
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(path, mode="w")
    group.attrs["note"] = "made by plain zarr"
    group.create_array("obs", shape=(4, 3), dtype="float32")[:] = np.arange(12, dtype=np.float32).reshape(4, 3)


@pytest.mark.parametrize("mode", ["r", "r+", "a"])
def test_non_pool_container(pool_path, backend, mode):
    (_plain_hdf5 if backend == "hdf5" else _plain_zarr)(pool_path)
    before = snapshot(pool_path)
    with pytest.raises(expstore.NotAPoolError) as info:
        expstore.open(pool_path, mode, capacity=CAPACITY, schema=SCHEMA)
    container = "HDF5 file" if backend == "hdf5" else "Zarr group"
    check_error(info, expstore.NotAPoolError, ValueError, [pool_path, container, "not an expstore pool"])
    assert snapshot(pool_path) == before


def test_non_pool_message_says_how_to_fix(pool_path, backend):
    (_plain_hdf5 if backend == "hdf5" else _plain_zarr)(pool_path)
    with pytest.raises(expstore.NotAPoolError) as info:
        expstore.open(pool_path, "a")
    check_error(info, expstore.NotAPoolError, ValueError, [], ["mode='w'"])


def test_empty_directory_is_not_a_zarr_pool(tmp_path):
    path = str(tmp_path / "pool.zarr")
    os.mkdir(path)
    with pytest.raises(expstore.NotAPoolError) as info:
        expstore.open(path)
    check_error(info, expstore.NotAPoolError, ValueError, [path, "zarr.json", "not a Zarr"])
    assert os.listdir(path) == []


@pytest.mark.parametrize("content, error_class", [
    (b"", expstore.NotAPoolError),
    (b"not an hdf5 file at all\n" * 100, expstore.NotAPoolError),
    (b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 20, expstore.CorruptStoreError),
])
def test_garbage_hdf5_file(tmp_path, content, error_class):
    path = str(tmp_path / "pool.h5")
    with open(path, "wb") as fh:
        fh.write(content)
    for mode in ("r", "r+", "a"):
        with pytest.raises(error_class) as info:
            expstore.open(path, mode)
        check_error(info, error_class, ValueError, [path])
    with open(path, "rb") as fh:
        assert fh.read() == content


@pytest.mark.parametrize("mode", ["r", "a"])
def test_garbage_file_where_a_zarr_directory_should_be(tmp_path, mode):
    path = str(tmp_path / "pool.zarr")
    with open(path, "wb") as fh:
        fh.write(b"\x00garbage" * 100)
    with pytest.raises(expstore.ExpstoreError) as info:
        expstore.open(path, mode)
    check_error(info, expstore.NotAPoolError, ValueError, [path])


@pytest.mark.parametrize("mode", ["r", "a"])
def test_directory_where_an_hdf5_file_should_be(tmp_path, mode):
    path = str(tmp_path / "pool.h5")
    os.mkdir(path)
    with pytest.raises(expstore.ExpstoreError) as info:
        expstore.open(path, mode)
    check_error(info, expstore.NotAPoolError, ValueError, [path])


# ---------------------------------------------------------------------------- damaged and newer pools
def _edit_meta(path: str, backend: str, change) -> None:
    """Apply ``change`` to the pool's metadata dict in place, as another program would."""
    if backend == "hdf5":
        import h5py

        with h5py.File(path, "r+") as f:
            meta = json.loads(f.attrs["expstore"])
            change(meta)
            f.attrs["expstore"] = json.dumps(meta)
    else:
        group_json = os.path.join(path, "zarr.json")
        with open(group_json) as fh:
            group = json.load(fh)
        change(group["attributes"]["expstore"])
        with open(group_json, "w") as fh:
            json.dump(group, fh)


def _set_format_version(path: str, backend: str, version) -> None:
    _edit_meta(path, backend, lambda meta: meta.update(format_version=version))


@pytest.mark.parametrize("mode", ["r", "r+", "a"])
def test_pool_from_a_newer_format_version(writer, backend, mode):
    writer.close()
    _set_format_version(writer.path, backend, 99)
    before = snapshot(writer.path)
    with pytest.raises(expstore.FormatVersionError) as info:
        expstore.open(writer.path, mode)
    check_error(info, expstore.FormatVersionError, ValueError, [writer.path, "format_version 99"], ["upgrade"])
    assert snapshot(writer.path) == before


def test_pool_metadata_without_format_version(writer, backend):
    writer.close()
    _set_format_version(writer.path, backend, "one")
    with pytest.raises(expstore.CorruptStoreError) as info:
        expstore.open(writer.path)
    check_error(info, expstore.CorruptStoreError, ValueError, ["format_version", "damaged"])


def _truncate_targets(path: str, backend: str) -> list[tuple[str, int]]:
    """(file, new size) pairs that cut a pool short in different places."""
    if backend == "hdf5":
        size = os.path.getsize(path)
        return [(path, size - 1), (path, size // 2), (path, 100)]
    shard = os.path.join(path, "obs", "c", "0", "0")
    commit_file = os.path.join(path, "_commit", "c", "0", "0")
    # A commit file cut after its first slot is a torn newer commit: it opens on the older slot
    # (tests/crash/test_crash.py); cut inside the first slot, no valid record is left.
    return [(shard, os.path.getsize(shard) - 1), (shard, 0), (commit_file, 4000), (commit_file, 0)]


@pytest.mark.parametrize("cut", [0, 1, 2, 3])
@pytest.mark.parametrize("mode", ["r", "a"])
def test_truncated_pool(writer, backend, cut, mode):
    writer.close()
    targets = _truncate_targets(writer.path, backend)
    if cut >= len(targets):
        pytest.skip(f"{backend} has {len(targets)} truncation points")
    file, size = targets[cut]
    os.truncate(file, size)
    before = snapshot(writer.path)
    with pytest.raises(expstore.CorruptStoreError) as info:
        expstore.open(writer.path, mode)
    check_error(info, expstore.CorruptStoreError, ValueError, [writer.path, "truncated"])
    assert snapshot(writer.path) == before


@pytest.mark.parametrize("damage", ["zeroed", "garbage"])
def test_both_commit_slots_damaged(writer, backend, damage):
    writer.close()
    layout = expstore.backends.BACKENDS[backend].read_layout(writer.path)
    filler = bytes(8192) if damage == "zeroed" else os.urandom(8192)
    with open(layout.commit.path, "r+b") as fh:
        os.pwrite(fh.fileno(), filler, layout.commit.offset)
    for mode in ("r", "a"):
        with pytest.raises(expstore.CorruptStoreError) as info:
            expstore.open(writer.path, mode)
        check_error(info, expstore.CorruptStoreError, ValueError, ["both commit slots"], ["expstore repair"])


def test_one_torn_commit_slot_falls_back_to_the_other(writer, backend):
    writer.close()  # commits: the newest slot holds steps 5..12, the other slot the flush of 3..10
    layout = expstore.backends.BACKENDS[backend].read_layout(writer.path)
    with expstore.open(writer.path) as pool:
        newest_slot = expstore.core.commit.newest(pool._maps.commit_slots())[0].slot_index
    with open(layout.commit.path, "r+b") as fh:
        os.pwrite(fh.fileno(), b"\xff" * 64, layout.commit.offset + newest_slot * 4096 + 40)
    with expstore.open(writer.path) as pool:
        assert_rows(pool[:], range(3, 11))


@pytest.mark.parametrize("broken", ["group json", "array json missing", "array json wrong shape"])
def test_damaged_zarr_metadata(tmp_path, broken):
    path = str(tmp_path / "pool.zarr")
    expstore.open(path, "w", capacity=CAPACITY, schema=SCHEMA).close()
    if broken == "group json":
        with open(os.path.join(path, "zarr.json"), "w") as fh:
            fh.write("{not json")
    elif broken == "array json missing":
        os.remove(os.path.join(path, "obs", "zarr.json"))
    else:
        array_json = os.path.join(path, "obs", "zarr.json")
        with open(array_json) as fh:
            meta = json.load(fh)
        meta["shape"] = [3, 3]
        with open(array_json, "w") as fh:
            json.dump(meta, fh)
    with pytest.raises(expstore.CorruptStoreError) as info:
        expstore.open(path)
    check_error(info, expstore.CorruptStoreError, ValueError, [path, "damaged"])


def _setting(*keys, value):
    """A change that sets meta[keys[0]][keys[1]]... to ``value`` (``DELETE``: removes the key)."""
    def change(meta: dict) -> None:
        parent = meta
        for key in keys[:-1]:
            parent = parent[key]
        if value is DELETE:
            del parent[keys[-1]]
        else:
            parent[keys[-1]] = value
    return change


DELETE = object()
SLOTS = 12  # of the writer fixture's pool: capacity 8 + slack 4, in chunks of 4 rows

# Values this version never writes: the pool's metadata is damaged (issue 15, point 2), and the key is named.
DAMAGED_METADATA = {
    "dtype flipped to int65": (("internal", "_episode_step", "dtype"), "int65",
                               ["internal._episode_step.dtype", "'int65'", "int64"]),
    # HDF5 names the missing offset key; Zarr the missing table file (its message has no backup hint).
    "checksums claimed by a pool without them": (("checksums",), True, ["checksums"], []),
    "attrs a number": (("attrs",), 1.5, ["attrs", "1.5", "JSON object"]),
    "bookkeeping shape empty": (("internal", "_episode_step", "shape"), [], ["internal._episode_step.shape", "[]"]),
    "field dtype unknown": (("schema", "obs", "dtype"), "float33", ["schema.obs.dtype", "'float33'"]),
    "field shape of strings": (("schema", "obs", "shape"), ["3"], ["schema.obs.shape", "['3']"]),
    "checksums a string": (("checksums",), "yes", ["checksums", "'yes'", "true or false"]),
    "bookkeeping a list": (("internal",), [], ["internal", "[]"]),
    "bookkeeping dtype another valid one": (("internal", "_next_delta", "dtype"), "int32",
                                            ["internal._next_delta.dtype", "'int32'", "'int64'"]),
}
# Bookkeeping arrays whose shape does not fit the ring or the episode table (issue 15, point 3).
MISFIT_BOOKKEEPING = {
    "row array shorter than the ring": (("internal", "_episode_step", "shape"), [4],
                                        ["internal._episode_step.shape", "[4]", f"[{SLOTS}]"]),
    "row array longer than the ring": (("internal", "_priority", "shape"), [SLOTS + 1],
                                       ["internal._priority.shape", f"[{SLOTS + 1}]", f"[{SLOTS}]"]),
    "row array two-dimensional": (("internal", "_episode_id", "shape"), [SLOTS, 1], ["internal._episode_id.shape"]),
    "episode table larger than the ring": (("internal", "_episodes", "shape"), [2 * SLOTS, 4],
                                           ["internal._episodes.shape", f"at most {SLOTS} rows"]),
    "episode table without its columns": (("internal", "_episodes", "shape"), [SLOTS], ["internal._episodes.shape"]),
    "bookkeeping array missing": (("internal", "_next_delta"), DELETE, ["internal", "'_next_delta'"]),
    "unknown bookkeeping array": (("internal", "_extra"), {"shape": [SLOTS], "dtype": "int64"}, ["internal._extra"]),
}


@pytest.mark.parametrize("keys, value, problem, fix", [
    pytest.param(*case, *([["backup"]] if len(case) == 3 else []), id=name)
    for name, case in {**DAMAGED_METADATA, **MISFIT_BOOKKEEPING}.items()
])
@pytest.mark.parametrize("mode", ["r", "a"])
def test_damaged_metadata_is_named_at_open(writer, backend, mode, keys, value, problem, fix):
    writer.close()
    _edit_meta(writer.path, backend, _setting(*keys, value=value))
    before = snapshot(writer.path)
    with pytest.raises(expstore.CorruptStoreError) as info:
        expstore.open(writer.path, mode)
    check_error(info, expstore.CorruptStoreError, ValueError, [writer.path, "damaged", *problem], fix)
    assert snapshot(writer.path) == before
    report = expstore.verify(writer.path)  # verify reports what open refuses, and raises nothing
    assert not report.ok and any(problem[0] in finding for finding in report.findings), report.findings


@pytest.mark.parametrize("keys, value", [
    pytest.param(*DAMAGED_METADATA[name][:2], id=name) for name in
    ("dtype flipped to int65", "checksums claimed by a pool without them", "attrs a number", "bookkeeping shape empty")
] + [pytest.param(*MISFIT_BOOKKEEPING["row array shorter than the ring"][:2], id="row array shorter than the ring")])
def test_damaged_metadata_is_one_line_in_the_cli(writer, backend, keys, value):
    from tests.helpers.cli import assert_error, run

    writer.close()
    _edit_meta(writer.path, backend, _setting(*keys, value=value))
    for command in (["info"], ["verify"], ["sample"], ["episodes"], ["head"], ["stats"], ["repair"]):
        result = run(command[0], writer.path, ok=False)
        if command == ["verify"]:
            assert result.exit_code == 1 and "Traceback" not in result.output and "damaged" in result.output
        else:
            assert_error(result, "damaged")


@pytest.mark.parametrize("key, value", [("offsets", "4096"), ("commit_offset", 1.5), ("commit_offset", 10**12),
                                        ("checksums_offset", 0), ("internal_offsets", 7)])
def test_damaged_hdf5_offsets(tmp_path, key, value):
    """The byte offsets recorded in an HDF5 pool's metadata: ints, inside the file, and where the
    datasets really are (a wrong one within the file would map another array's bytes)."""
    path = str(tmp_path / "pool.h5")
    with expstore.open(path, "w", capacity=CAPACITY, schema=SCHEMA, checksums=True) as pool:
        pool.extend(rows(range(5)))

    def change(meta):
        if key == "offsets":
            meta["offsets"]["obs"] = value
        elif key == "internal_offsets":
            meta["internal_offsets"]["_priority"] = meta["internal_offsets"]["_priority"] + 8 * value
        else:
            meta[key] = value
    _edit_meta(path, "hdf5", change)
    with pytest.raises(expstore.CorruptStoreError) as info:
        expstore.open(path)
    check_error(info, expstore.CorruptStoreError, ValueError, [path, "damaged"], ["backup"])


# ---------------------------------------------------------------------------- creation arguments
@pytest.mark.parametrize("kwargs, error_class, problem, fix", [
    ({"capacity": None}, expstore.InvalidArgumentError, ["needs a capacity"], ["capacity="]),
    ({"capacity": 0}, expstore.InvalidArgumentError, ["capacity=0", "positive int"], []),
    ({"capacity": 2.5}, expstore.InvalidArgumentError, ["capacity=2.5"], []),
    ({"capacity": True}, expstore.InvalidArgumentError, ["capacity=True"], []),
    ({"chunk_rows": 0}, expstore.InvalidArgumentError, ["chunk_rows=0"], []),
    ({"slack": 0}, expstore.InvalidArgumentError, ["slack=0"], []),
    ({"commit_every": 0}, expstore.InvalidArgumentError, ["commit_every=0"], []),
    ({"commit_interval_s": -1}, expstore.InvalidArgumentError, ["commit_interval_s=-1"], []),
    ({"attrs": {"f": object()}}, expstore.InvalidArgumentError, ["attrs", "JSON"], []),
    ({"attrs": [1, 2]}, expstore.InvalidArgumentError, ["attrs must be a dict"], []),
    ({"schema": {"step_id": ((), "int64")}}, expstore.SchemaError, ["'step_id'", "reserved"], ["rename"]),
    ({"schema": {"2obs": ((), "int64")}}, expstore.SchemaError, ["'2obs'", "identifier"], []),
    ({"schema": {"obs": ((3,), "U10")}}, expstore.SchemaError, ["<U10", "not supported"], ["float32"]),
    ({"schema": {"obs": ((3,), "object")}}, expstore.SchemaError, ["object", "not supported"], ["float32"]),
    ({"schema": {"obs": ((0,), "float32")}}, expstore.SchemaError, ["positive ints"], []),
    ({"schema": {"obs": "float32"}}, expstore.SchemaError, ["'obs'", "not a Field"], ["expstore.Field"]),
    ({"schema": {}}, expstore.SchemaError, ["non-empty"], []),
])
def test_bad_creation_arguments_create_nothing(pool_path, kwargs, error_class, problem, fix):
    arguments = {"capacity": CAPACITY, "schema": SCHEMA, **kwargs}
    with pytest.raises(error_class) as info:
        expstore.open(pool_path, "w", **arguments)
    check_error(info, error_class, ValueError, problem, fix)
    assert not os.path.exists(pool_path)
    assert os.listdir(os.path.dirname(pool_path)) == []


def test_unknown_mode(pool_path):
    with pytest.raises(expstore.InvalidArgumentError) as info:
        expstore.open(pool_path, "rw", capacity=CAPACITY, schema=SCHEMA)
    check_error(info, expstore.InvalidArgumentError, ValueError, ["'rw'"], ["r, r+, a, w, w-, x"])
    assert not os.path.exists(pool_path)


def test_pool_the_disk_cannot_hold_fails_at_creation(pool_path):
    with pytest.raises(expstore.DiskFullError) as info:
        expstore.open(pool_path, "w", capacity=10**13, schema=SCHEMA)
    check_error(info, expstore.DiskFullError, OSError, [pool_path, "MiB", "free"], ["smaller capacity"])
    leftovers = [name for name in os.listdir(os.path.dirname(pool_path)) if not name.endswith(".lock")]
    assert leftovers == []


def test_reopen_with_another_capacity_or_schema(writer):
    writer.close()
    before = snapshot(writer.path)
    with pytest.raises(expstore.InvalidArgumentError) as info:
        expstore.open(writer.path, "r+", capacity=CAPACITY + 1)
    check_error(info, expstore.InvalidArgumentError, ValueError, [f"capacity {CAPACITY}", str(CAPACITY + 1)],
                ["omit capacity"])
    with pytest.raises(expstore.SchemaError) as info:
        expstore.open(writer.path, "a", schema=pendulum_schema())
    check_error(info, expstore.SchemaError, ValueError, [writer.path], ["without a schema"])
    assert snapshot(writer.path) == before
    with expstore.open(writer.path, "a") as pool:  # the refused opens released the writer lock
        assert_rows(pool[:], range(5, 13))


# ---------------------------------------------------------------------------- misuse of an open store
def test_second_writer_is_refused(writer):
    with pytest.raises(expstore.StoreLockedError) as info:
        expstore.open(writer.path, "a")
    check_error(info, expstore.StoreLockedError, BlockingIOError, [writer.path, f"pid={os.getpid()}"],
                ["mode='r'"])
    writer.append(one_row(13))  # the first writer is unaffected
    with expstore.open(writer.path, "r") as reader:  # readers are always welcome
        assert len(reader) == CAPACITY


def test_index_outside_the_pool(writer):
    for key in (CAPACITY, -CAPACITY - 1):
        with pytest.raises(expstore.StepNotFoundError) as info:
            writer[key]
        check_error(info, expstore.StepNotFoundError, IndexError, [str(key), str(CAPACITY)])
    with pytest.raises(expstore.StepNotFoundError) as info:
        writer.read([4])
    check_error(info, expstore.StepNotFoundError, IndexError, ["step id 4", "5..12"])
    with pytest.raises(TypeError):
        writer["obs"]


def test_sampling_an_empty_pool(pool_path):
    with expstore.open(pool_path, "w", capacity=CAPACITY, schema=SCHEMA) as pool:
        with pytest.raises(expstore.EmptyStoreError) as info:
            pool.sample(3)
        check_error(info, expstore.EmptyStoreError, ValueError, [pool_path, "no committed transition"],
                    ["append"])


def test_using_a_closed_store(writer):
    writer.close()
    with pytest.raises(expstore.ClosedStoreError) as info:
        writer.sample(2)
    check_error(info, expstore.ClosedStoreError, ValueError, [writer.path, "closed"], ["open it again"])


def test_pool_directory_replaced_by_a_copy_is_still_read(tmp_path, writer):
    """Not an error: a pool copied elsewhere (cp -r / cp) opens and reads the same rows."""
    writer.close()
    copy = str(tmp_path / ("copy" + os.path.splitext(writer.path)[1]))
    (shutil.copytree if os.path.isdir(writer.path) else shutil.copy)(writer.path, copy)
    with expstore.open(copy) as pool:
        assert_rows(pool[:], range(5, 13))


# ---------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize("batch_size", [-1, 2.5, "8"])
def test_bad_batch_size(writer, batch_size):
    with pytest.raises(expstore.InvalidArgumentError, match="batch_size"):
        writer.sample(batch_size, rng=0)


def test_fractional_step_ids_are_refused(writer):
    with pytest.raises(expstore.ExpstoreError):
        writer.read([5.5])


@pytest.mark.parametrize("call", ["append", "extend"])
def test_values_that_are_not_a_mapping(writer, call):
    before = snapshot(writer.path)
    with pytest.raises(expstore.SchemaError):
        getattr(writer, call)([one_row(13)])
    assert_writer_unchanged(writer, before)
