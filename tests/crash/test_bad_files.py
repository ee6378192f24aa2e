"""Damaged and foreign files: every open ends in an ExpstoreError or a correct pool, never a hang.

core/test_errors.py checks the message of each error path one by one; this file throws many damaged
files at ``expstore.open`` (a pool cut short at many offsets, random bytes, foreign containers,
a newer format, missing arrays, flipped metadata bytes) and checks the outcome class only.
The opens run in a child process under a timeout, so a hang or a crash of the HDF5 library
fails the test instead of stalling or killing the suite.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import expstore
from expstore.core import commit
from tests.helpers.pools import BACKENDS, pendulum_schema, pool_files, rows_for

# Children run in the tests directory: they import conftest from it, and expstore as we do.
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

CAPACITY = 1000
CHILD_TIMEOUT_S = 120

# The child opens each case in every mode and prints one JSON line per (case, mode) at once,
# so that after a hang or a crash the parent knows which case did it.
OPEN_EACH = textwrap.dedent("""
    import json, sys
    import numpy as np
    import expstore
    from tests.helpers.pools import rows_for

    def attempt(path, mode):
        try:
            with expstore.open(path, mode) as pool:
                window = pool[:]
                expected = rows_for(window["step_id"])
                intact = all(window[name].tobytes() == expected[name].tobytes() for name in expected if name in window)
                return {"outcome": "opened", "rows": len(pool), "intact": intact}
        except Exception as exc:
            return {"outcome": "error", "class": type(exc).__name__, "message": str(exc),
                    "expstore": isinstance(exc, expstore.ExpstoreError)}

    for line in sys.stdin:
        case = json.loads(line)
        for mode in case["modes"]:
            print(json.dumps({"name": case["name"], "mode": mode, **attempt(case["path"], mode)}), flush=True)
""")


def open_in_child(cases: list[dict]) -> list[dict]:
    """Open every case in a child process; one result per (case, mode)."""
    stdin = "".join(json.dumps(case) + "\n" for case in cases)
    try:
        done = subprocess.run([sys.executable, "-c", OPEN_EACH], input=stdin, capture_output=True, text=True,
                              check=False, cwd=TESTS_DIR, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        finished = (exc.stdout or b"").decode().count("\n") if isinstance(exc.stdout, bytes) else 0
        pytest.fail(f"opening damaged pools hung: no answer within {CHILD_TIMEOUT_S} s after {finished} results")
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0, (
        f"the child died with {done.returncode} after {len(results)} results "
        f"(last: {results[-1] if results else None}):\n{done.stderr[-3000:]}")
    assert len(results) == sum(len(case["modes"]) for case in cases)
    return results


def snapshot(path: str) -> dict[str, bytes]:
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            return {"": fh.read()}
    out = {}
    for root, _dirs, names in os.walk(path):
        for name in names:
            with open(os.path.join(root, name), "rb") as fh:
                out[os.path.relpath(os.path.join(root, name), path)] = fh.read()
    return out


def make_pool(path: str, n_rows: int = 1700) -> None:
    with expstore.open(path, "w", capacity=CAPACITY, schema=pendulum_schema(), chunk_rows=100) as pool:
        pool.extend(rows_for(np.arange(n_rows)))


def copy_pool(source: str, target: str) -> str:
    (shutil.copytree if os.path.isdir(source) else shutil.copyfile)(source, target)
    return target


def check_results(results: list[dict], allowed_errors: tuple[str, ...], may_open: bool) -> None:
    for result in results:
        where = f"{result['name']} (mode {result['mode']!r})"
        if result["outcome"] == "opened":
            assert may_open, f"{where} opened as a pool of {result['rows']} rows"
            assert result["intact"], f"{where} opened and returned rows that do not match their step ids"
            continue
        assert result["expstore"], f"{where} raised a raw {result['class']}: {result['message']}"
        assert result["class"] in allowed_errors, f"{where} raised {result['class']}: {result['message']}"
        assert result["message"].strip(), f"{where} raised {result['class']} without a message"


# ---------------------------------------------------------------------------- pools cut short
def cut_points(size: int, many: bool, rng: random.Random) -> list[int]:
    """Where to cut a file: its ends, its middle, and (for a one-file pool) random offsets."""
    points = {0, size // 2, size - 1}
    if many:
        points |= {1, 8, 512, size // 3} | {rng.randrange(size) for _ in range(8)}
    return sorted(p for p in points if 0 <= p < size)


def truncation_cases(pool: str, workdir, rng: random.Random) -> list[dict]:
    suffix = os.path.splitext(pool)[1]
    files = pool_files(pool)
    cases = []
    for file in files:
        relative = os.path.relpath(file, pool) if file != pool else ""
        for cut in cut_points(os.path.getsize(file), many=len(files) == 1, rng=rng):
            damaged = copy_pool(pool, os.path.join(workdir, f"cut{len(cases)}{suffix}"))
            os.truncate(os.path.join(damaged, relative) if relative else damaged, cut)
            cases.append({"name": f"{relative or 'file'}@{cut}", "path": damaged, "modes": ["r", "a"]})
    return cases


def expstore_ignores(name: str) -> bool:
    """Zarr metadata of an internal array (``_priority/zarr.json``): expstore maps the shard
    by the layout recorded in the group metadata and never reads it, so a pool cut there
    still opens; `expstore verify` is the tool that reports it. And the layout record: a damaged
    one is passed over, the layout read from the documents (backends/layout_record.py)."""
    part = name.split("@")[0]
    return (name.startswith("_") and part.endswith("zarr.json")) or part == "_commit/expstore.layout"


def commit_slot_survives(name: str) -> bool:
    """A Zarr commit file cut after its first slot: the torn newer slot is ignored and the pool
    opens on the older one (the torn-commit guarantee), with its rows intact."""
    part, _, cut = name.partition("@")
    return part.startswith("_commit/") and int(cut) >= commit.SLOT_NBYTES


def test_truncated_pools(tmp_path, backend):
    pool = make_pool_at(tmp_path, backend)
    cases = truncation_cases(pool, tmp_path, random.Random(0))
    before = {case["path"]: snapshot(case["path"]) for case in cases}
    results = open_in_child(cases)
    may_open = [r for r in results if expstore_ignores(r["name"]) or commit_slot_survives(r["name"])]
    check_results([r for r in results if r not in may_open], ("CorruptStoreError", "NotAPoolError"), may_open=False)
    check_results(may_open, ("CorruptStoreError",), may_open=True)
    if backend == "zarr":
        assert any(r["outcome"] == "opened" for r in results if commit_slot_survives(r["name"]))
    assert_unchanged_where_refused(cases, results, before)


def assert_unchanged_where_refused(cases: list[dict], results: list[dict], before: dict) -> None:
    """A pool that no mode could open is byte for byte as it was (a writer that opened may commit)."""
    opened = {result["name"] for result in results if result["outcome"] == "opened"}
    for case in cases:
        if case["name"] not in opened:
            assert snapshot(case["path"]) == before[case["path"]], f"opening {case['name']} changed the files"


def make_pool_at(tmp_path, backend: str) -> str:
    path = str(tmp_path / f"pool{BACKENDS[backend]}")
    make_pool(path)
    return path


# ---------------------------------------------------------------------------- random and foreign files
def random_hdf5_files(workdir, rng: random.Random) -> list[dict]:
    cases = []
    for i, (prefix, nbytes) in enumerate([(b"", 0), (b"", 100), (b"", 1 << 16),
                                          (b"\x89HDF\r\n\x1a\n", 100), (b"\x89HDF\r\n\x1a\n", 1 << 16)]):
        path = os.path.join(workdir, f"random{i}.h5")
        with open(path, "wb") as fh:
            fh.write(prefix + rng.randbytes(nbytes))
        cases.append({"name": f"random bytes {prefix!r}+{nbytes}", "path": path, "modes": ["r", "r+", "a"]})
    return cases


def random_zarr_dirs(workdir, rng: random.Random) -> list[dict]:
    cases = []
    layouts = [
        ["zarr.json"],
        ["zarr.json", "obs/zarr.json", "obs/c/0/0"],
        ["obs/zarr.json", "junk.bin"],
        ["zarr.json", "_commit/c/0/0"],
    ]
    for i, names in enumerate(layouts):
        path = os.path.join(workdir, f"random{i}.zarr")
        for name in names:
            os.makedirs(os.path.dirname(os.path.join(path, name)), exist_ok=True)
            with open(os.path.join(path, name), "wb") as fh:
                fh.write(rng.randbytes(rng.choice([0, 7, 4096, 20_000])))
        cases.append({"name": f"random files {names}", "path": path, "modes": ["r", "r+", "a"]})
    json_not_pool = os.path.join(workdir, "jsonarray.zarr")
    os.makedirs(json_not_pool)
    with open(os.path.join(json_not_pool, "zarr.json"), "w") as fh:
        fh.write("[1, 2, 3]")
    cases.append({"name": "zarr.json holds a JSON list", "path": json_not_pool, "modes": ["r", "a"]})
    return cases


def test_random_bytes_are_not_pools(tmp_path, backend):
    rng = random.Random(1)
    cases = random_hdf5_files(tmp_path, rng) if backend == "hdf5" else random_zarr_dirs(tmp_path, rng)
    before = {case["path"]: snapshot(case["path"]) for case in cases}
    results = open_in_child(cases)
    check_results(results, ("NotAPoolError", "CorruptStoreError"), may_open=False)
    assert_unchanged_where_refused(cases, results, before)


def foreign_containers(workdir, backend: str) -> list[dict]:
    cases = []
    if backend == "hdf5":
        import h5py

        path = os.path.join(workdir, "plain.h5")
        with h5py.File(path, "w") as f:
            f["obs"] = np.zeros((10, 3), np.float32)
            f.attrs["expstore"] = "not json {"  # the attribute name alone does not make a pool
        cases.append({"name": "plain HDF5 with a bogus expstore attribute", "path": path, "modes": ["r", "a"]})
        empty = os.path.join(workdir, "empty.h5")
        h5py.File(empty, "w").close()
        cases.append({"name": "empty HDF5 file", "path": empty, "modes": ["r", "a"]})
    else:
        import zarr

        array_path = os.path.join(workdir, "array.zarr")
        zarr.create_array(array_path, shape=(10, 3), dtype="float32", chunks=(5, 3))
        cases.append({"name": "a Zarr array, not a group", "path": array_path, "modes": ["r", "a"]})
        v2_path = os.path.join(workdir, "v2.zarr")
        zarr.open_group(v2_path, mode="w", zarr_format=2).attrs["expstore"] = {"format_version": 1}
        cases.append({"name": "a Zarr v2 group", "path": v2_path, "modes": ["r", "a"]})
    return cases


def test_foreign_containers_are_not_pools(tmp_path, backend):
    cases = foreign_containers(tmp_path, backend)
    check_results(open_in_child(cases), ("NotAPoolError", "CorruptStoreError"), may_open=False)


# ---------------------------------------------------------------------------- edited pools
def edit_meta(path: str, change) -> None:
    """Apply ``change`` to the pool's metadata dict, in place, as another program would."""
    if path.endswith(".h5"):
        import h5py

        with h5py.File(path, "r+", locking=False) as f:
            f.attrs["expstore"] = json.dumps(change(json.loads(f.attrs["expstore"])))
        return
    group_json = os.path.join(path, "zarr.json")
    with open(group_json) as fh:
        group = json.load(fh)
    group["attributes"]["expstore"] = change(group["attributes"]["expstore"])
    with open(group_json, "w") as fh:
        json.dump(group, fh)


def with_key(key, value):
    return lambda meta: {**meta, key: value}


def without_key(key):
    return lambda meta: {k: v for k, v in meta.items() if k != key}


META_EDITS = {
    "newer format_version": (with_key("format_version", 99), ("FormatVersionError",)),
    "format_version far in the future": (with_key("format_version", 2**40), ("FormatVersionError",)),
    "format_version missing": (without_key("format_version"), ("CorruptStoreError",)),
    "capacity above slots": (with_key("capacity", 10**9), ("CorruptStoreError",)),
    "negative chunk_rows": (with_key("chunk_rows", -5), ("CorruptStoreError",)),
    "schema is a string": (with_key("schema", "obs"), ("CorruptStoreError",)),
    "schema lost a field": (lambda m: {**m, "schema": {k: v for k, v in m["schema"].items() if k != "obs"}}
                            if isinstance(m["schema"], dict) else {**m, "schema": m["schema"][1:]}, None),
    "metadata is a list": (lambda meta: [meta], ("CorruptStoreError", "NotAPoolError")),
}


def test_edited_metadata(tmp_path, backend):
    pool = make_pool_at(tmp_path, backend)
    cases, expected = [], {}
    for i, (name, (change, error_class)) in enumerate(META_EDITS.items()):
        damaged = copy_pool(pool, str(tmp_path / f"edit{i}{BACKENDS[backend]}"))
        edit_meta(damaged, change)
        cases.append({"name": name, "path": damaged, "modes": ["r", "a"]})
        expected[name] = error_class
    for result in open_in_child(cases):
        # A pool with a field dropped from its schema is still a consistent pool of the other fields.
        allowed = expected[result["name"]]
        check_results([result], allowed or ("CorruptStoreError",), may_open=allowed is None)


def missing_parts(pool: str, workdir, backend: str) -> list[dict]:
    if backend == "hdf5":
        import h5py

        damaged = copy_pool(pool, os.path.join(workdir, "nodataset.h5"))
        with h5py.File(damaged, "r+", locking=False) as f:
            del f["obs"]
        return [{"name": "dataset obs deleted", "path": damaged, "modes": ["r", "a"]}]
    cases = []
    for i, part in enumerate(["obs", "obs/c", "obs/zarr.json", "reward/c/0", "_commit", "_commit/c/0/0"]):
        damaged = copy_pool(pool, os.path.join(workdir, f"missing{i}.zarr"))
        target = os.path.join(damaged, part)
        shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
        cases.append({"name": f"{part} missing", "path": damaged, "modes": ["r", "a"]})
    return cases


def test_missing_arrays(tmp_path, backend):
    pool = make_pool_at(tmp_path, backend)
    cases = missing_parts(pool, tmp_path, backend)
    results = open_in_child(cases)
    check_results(results, ("CorruptStoreError",), may_open=False)
    for result in results:
        assert "damaged" in result["message"] or "missing" in result["message"], result


# ---------------------------------------------------------------------------- flipped metadata bytes
def test_flipped_bytes_in_hdf5_metadata(tmp_path):
    """Random byte flips in the HDF5 metadata: an ExpstoreError, or a pool whose rows still check out."""
    pool = make_pool_at(tmp_path, "hdf5")
    meta = json.loads(_h5_attr(pool))
    first_data = min(meta["offsets"].values())
    rng = random.Random(3)
    cases = []
    for i in range(24):
        damaged = copy_pool(pool, str(tmp_path / f"flip{i}.h5"))
        with open(damaged, "r+b") as fh:
            for offset in rng.sample(range(8, first_data), 4):  # keep the signature, hit the metadata
                os.pwrite(fh.fileno(), bytes([rng.randrange(256)]), offset)
        cases.append({"name": f"flip{i}", "path": damaged, "modes": ["r"]})
    check_results(open_in_child(cases), ("CorruptStoreError", "NotAPoolError", "FormatVersionError"), may_open=True)


def _h5_attr(path: str) -> str:
    import h5py

    with h5py.File(path, "r", locking=False) as f:
        return f.attrs["expstore"]


# ---------------------------------------------------------------------------- where HDF5 keeps the metadata
def test_hdf5_metadata_is_under_a_checksum(tmp_path):
    """A pool keeps its metadata JSON in the root group's object header, which HDF5 checksums: one
    digit changed in it is refused, although the value it makes (capacity 1001) would be valid."""
    pool = make_pool_at(tmp_path, "hdf5")
    with open(pool, "rb") as fh:
        data = fh.read()
    digits = data.index(b'"capacity": 1000') + len(b'"capacity": 100')
    with open(pool, "r+b") as fh:
        os.pwrite(fh.fileno(), b"1", digits)
    check_results(open_in_child([{"name": "capacity 1000 -> 1001", "path": pool, "modes": ["r", "a"]}]),
                  ("CorruptStoreError",), may_open=False)


def legacy_hdf5_pool(tmp_path) -> str:
    """A pool as earlier versions wrote it: the metadata a variable-length string, whose bytes HDF5
    keeps in a global heap collection (no checksum there)."""
    import h5py

    pool = make_pool_at(tmp_path, "hdf5")
    with h5py.File(pool, "r+", locking=False) as f:
        text = json.loads(f.attrs["expstore"])
        del f.attrs["expstore"]
        f.attrs["expstore"] = json.dumps(text)
        assert h5py.check_string_dtype(f.attrs.get_id("expstore").dtype).length is None
    return pool


def global_heap_damage(pool: str, workdir) -> list[dict]:
    """Copies whose metadata heap collection is damaged after the JSON object, where HDF5 looks
    for the free-space record; zeroed, HDF5 reads a record of size 0 and loops forever."""
    with open(pool, "rb") as fh:
        data = fh.read()
    json_at = data.index(b'{"format_version": ')  # the attribute's JSON (the layout record's has no spaces)
    heap = data.rindex(b"GCOL", 0, json_at)
    size = int.from_bytes(data[heap + 8:heap + 16], "little")
    json_nbytes = int.from_bytes(data[json_at - 8:json_at], "little")  # from the object's record
    after_json = json_at + -(-json_nbytes // 8) * 8
    damages = {"free-space record zeroed": (after_json, bytes(heap + size - after_json)),
               "free-space record of size 0": (after_json, bytes(16)),
               "free-space record too large": (after_json + 8, (1 << 40).to_bytes(8, "little")),
               "JSON object record zeroed": (json_at - 16, bytes(16)),
               "collection zeroed after its header": (heap + 16, bytes(size - 16))}
    cases = []
    for i, (name, (offset, content)) in enumerate(damages.items()):
        damaged = copy_pool(pool, os.path.join(workdir, f"heap{i}.h5"))
        with open(damaged, "r+b") as fh:
            os.pwrite(fh.fileno(), content, offset)
        cases.append({"name": name, "path": damaged, "modes": ["r", "a"]})
    return cases


def test_legacy_hdf5_metadata_still_opens(tmp_path):
    pool = legacy_hdf5_pool(tmp_path)
    check_results(open_in_child([{"name": "legacy", "path": pool, "modes": ["r", "a"]}]), (), may_open=True)
    with expstore.open(pool) as opened:
        assert len(opened) == CAPACITY


def test_damaged_legacy_hdf5_metadata_heap_is_refused_without_a_hang(tmp_path):
    pool = legacy_hdf5_pool(tmp_path)
    cases = global_heap_damage(pool, tmp_path)
    results = open_in_child(cases)
    check_results(results, ("CorruptStoreError", "NotAPoolError"), may_open=False)
    zeroed = [result for result in results if result["name"] == "free-space record zeroed"]
    assert all("global heap" in result["message"] for result in zeroed), zeroed
