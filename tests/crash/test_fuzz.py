"""Seeded byte-level fuzzing: every damaged pool gives a result or an ExpstoreError, never a crash.

Copies of small pools on both backends are damaged the way disks and people damage them: bits
flipped anywhere and in the metadata, ranges zeroed, files truncated, files inside a ``.zarr``
deleted, JSON metadata values edited (dtypes, shapes, numbers, types). Each copy is then opened,
sampled (uniform, n-step, sequences), listed, verified, shown with the CLI, appended to and
repaired. Every API call must return or raise an ExpstoreError; every CLI command must exit 0 or
1 with its message on one ``Error:`` line (verify: its findings), never a traceback.

The copies are damaged and used in child processes with a deadline per copy, so that a hang or
a crash of the HDF5 library fails the test and names the copy. Every copy is reproducible from
its seed (see ``damage``). A fast seeded subset runs by default; ``pytest --full`` runs the
long one (FULL_COPIES per backend) and prints the outcome counts.
"""

from __future__ import annotations

import collections
import json
import os
import random
import selectors
import shutil
import subprocess
import sys
import tempfile
import traceback
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import expstore
from tests.helpers.pools import BACKENDS, pendulum_schema, pool_files, rows_for

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SEED = 15
FAST_COPIES = 12  # per backend, a few seconds
FULL_COPIES = 1800  # per backend
CASE_DEADLINE_S = 60  # one copy normally takes well under a second; only a hang gets near this
CAPACITY = 200


# ---------------------------------------------------------------------------- the pools
def make_pools(workdir: str, backend: str) -> dict[str, str]:
    """Small pools that have wrapped: one with checksums, one deriving next_obs from the next row,
    and for HDF5 the first one with its metadata stored as earlier versions did."""
    suffix = BACKENDS[backend]
    plain = os.path.join(workdir, f"plain{suffix}")
    with expstore.open(plain, "w", capacity=CAPACITY, schema=pendulum_schema(), chunk_rows=16,
                       checksums=True, attrs={"env_id": "Pendulum-v1"}) as pool:
        pool.extend(rows_for(np.arange(450)))
    derived = os.path.join(workdir, f"derived{suffix}")
    schema = {name: spec for name, spec in pendulum_schema().items() if name != "next_obs"}
    with expstore.open(derived, "w", capacity=CAPACITY, schema=schema, chunk_rows=32, max_episodes=24,
                       derive_next_obs=True) as pool:
        pool.extend(rows_for(np.arange(330)), env_ids=np.arange(330) % 2)
    pools = {"plain": plain, "derived": derived}
    if backend == "hdf5":
        pools["legacy"] = _as_legacy(copy_pool(plain, os.path.join(workdir, "legacy.h5")))
    return pools


def _as_legacy(path: str) -> str:
    """The metadata rewritten as earlier versions stored it: a variable-length string, whose
    bytes HDF5 keeps in an unchecked global heap (see expstore/backends/hdf5_heap.py)."""
    import h5py

    with h5py.File(path, "r+", libver="latest", locking=False) as f:
        text = json.dumps(json.loads(f.attrs["expstore"]))
        del f.attrs["expstore"]
        f.attrs["expstore"] = text
    return path


def copy_pool(source: str, target: str) -> str:
    (shutil.copytree if os.path.isdir(source) else shutil.copyfile)(source, target)
    return target


# ---------------------------------------------------------------------------- damage
def _relative(path: str, file: str) -> str:
    return "the file" if file == path else os.path.relpath(file, path)


def _byte_anywhere(path: str, rng: random.Random) -> tuple[str, int]:
    """A byte drawn uniformly over all the pool's bytes."""
    files = [file for file in pool_files(path) if os.path.getsize(file)]
    sizes = [os.path.getsize(file) for file in files]
    file = rng.choices(files, weights=sizes)[0]
    return file, rng.randrange(os.path.getsize(file))


def _metadata_byte(path: str, rng: random.Random) -> tuple[str, int]:
    """A byte of the metadata: the HDF5 headers and the pool's JSON attribute, or a zarr.json
    or a shard index of a Zarr pool."""
    if os.path.isfile(path):
        import h5py

        with h5py.File(path, "r", locking=False) as f:
            text = f.attrs["expstore"]
        with open(path, "rb") as fh:
            start = fh.read().find(text if isinstance(text, bytes) else text.encode())
        if start >= 0 and rng.random() < 0.5:
            return path, start + rng.randrange(len(text))
        return path, rng.randrange(min(4096, os.path.getsize(path)))
    jsons = [file for file in pool_files(path) if file.endswith("zarr.json")]
    shards = [file for file in pool_files(path) if not file.endswith("zarr.json") and not
              os.path.relpath(file, path).startswith("_")]
    if rng.random() < 0.3 and shards:  # the shard index and its crc32c lie at the end
        file = rng.choice(shards)
        size = os.path.getsize(file)
        return file, size - 1 - rng.randrange(min(size, 512))
    file = os.path.join(path, "zarr.json") if rng.random() < 0.5 else rng.choice(jsons)
    return file, rng.randrange(max(1, os.path.getsize(file)))


def _flip(file: str, offset: int, bit: int) -> None:
    with open(file, "r+b") as fh:
        (byte,) = os.pread(fh.fileno(), 1, offset) or b"\0"
        os.pwrite(fh.fileno(), bytes([byte ^ (1 << bit)]), offset)


def flip_bits(path: str, rng: random.Random) -> str:
    done = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        file, offset = _byte_anywhere(path, rng)
        bit = rng.randrange(8)
        _flip(file, offset, bit)
        done.append(f"bit {bit} of byte {offset} of {_relative(path, file)}")
    return "flip " + ", ".join(done)


def flip_metadata_bit(path: str, rng: random.Random) -> str:
    file, offset = _metadata_byte(path, rng)
    if not os.path.getsize(file):
        return f"nothing to flip in the empty {_relative(path, file)}"
    bit = rng.randrange(8)
    _flip(file, offset, bit)
    return f"flip bit {bit} of metadata byte {offset} of {_relative(path, file)}"


def zero_range(path: str, rng: random.Random) -> str:
    file, offset = _metadata_byte(path, rng) if rng.random() < 0.5 else _byte_anywhere(path, rng)
    count = rng.choice([1, 8, 64, 512, 4096])
    with open(file, "r+b") as fh:
        count = max(0, min(count, os.path.getsize(file) - offset))
        os.pwrite(fh.fileno(), bytes(count), offset)
    return f"zero {count} bytes from byte {offset} of {_relative(path, file)}"


def truncate_file(path: str, rng: random.Random) -> str:
    file = rng.choice(pool_files(path))
    size = os.path.getsize(file)
    cut = rng.choice([0, rng.randrange(size + 1), max(0, size - rng.randrange(1, 64))])
    os.truncate(file, cut)
    return f"truncate {_relative(path, file)} from {size} to {cut} bytes"


def delete_file(path: str, rng: random.Random) -> str:
    file = rng.choice(pool_files(path))
    os.remove(file)
    return f"delete {_relative(path, file)}"


def _paths(value, prefix=()) -> list[tuple]:
    """Every key path inside a JSON document (the document itself excluded)."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    found = []
    for key, child in children:
        found.append((*prefix, key))
        found += _paths(child, (*prefix, key))
    return found


_DTYPES = ["int65", "int32", "int64", "float64", "float32", "float16", "bool", "uint8", "<f4", "|b1",
           "complex64", "object", "S4", ""]


def _mutated(value, rng: random.Random):
    """Another value for a JSON node, of the kinds a bit flip or an editor would leave."""
    generic = [None, True, False, 1.5, -1, 0, 1, 2**63, 10**30, "x", [], {}, float("nan")]
    if isinstance(value, bool):
        specific = [not value, int(value)]
    elif isinstance(value, int):
        specific = [value + 1, value - 1, value * 2, value // 2, -value, float(value), str(value),
                    value ^ (1 << rng.randrange(20)), int(str(value).replace(str(value)[0], "1", 1))]
    elif isinstance(value, float):
        specific = [value * 2, -value, int(value), float("inf")]
    elif isinstance(value, str):
        flipped = list(value or "a")
        position = rng.randrange(len(flipped))
        flipped[position] = chr(ord(flipped[position]) ^ (1 << rng.randrange(7)))
        specific = [rng.choice(_DTYPES), rng.choice(_DTYPES), "".join(flipped), value.upper(), value + "x"]
    elif isinstance(value, list):
        specific = [value[:-1], value + [1], [*value[:-1], 0], [-1] * len(value), [1072] * len(value),
                    [str(n) for n in value], value * 2, [[n] for n in value]]
    else:
        keys = sorted(value)
        specific = [{}, {k: value[k] for k in keys[1:]}, {**value, "extra": 1}] if keys else [{"a": 1}]
    return rng.choice(specific if rng.random() < 0.8 else generic)


def _edit(document, rng: random.Random) -> str:
    """Change or delete one node of ``document`` in place; say what changed."""
    paths = _paths(document)
    if not paths:
        return "nothing to edit"
    key_path = rng.choice(paths)
    parent = document
    for key in key_path[:-1]:
        parent = parent[key]
    where = ".".join(map(str, key_path))
    if isinstance(parent, dict) and rng.random() < 0.15:
        del parent[key_path[-1]]
        return f"delete {where}"
    old = parent[key_path[-1]]
    parent[key_path[-1]] = new = _mutated(old, rng)
    return f"set {where}: {json.dumps(old)[:40]} -> {json.dumps(new)[:40]}"


def edit_json(path: str, rng: random.Random) -> str:
    if os.path.isfile(path):
        import h5py

        with h5py.File(path, "r+", locking=False) as f:
            meta = json.loads(f.attrs["expstore"])
            done = _edit(meta, rng)
            f.attrs["expstore"] = json.dumps(meta)
        return f"edit the expstore attribute: {done}"
    jsons = [file for file in pool_files(path) if file.endswith("zarr.json")]
    file = os.path.join(path, "zarr.json") if rng.random() < 0.7 else rng.choice(jsons)
    with open(file) as fh:
        document = json.load(fh)
    if file.endswith(os.path.join(path, "zarr.json")) and rng.random() < 0.8:
        done = _edit(document["attributes"]["expstore"], rng)
    else:
        done = _edit(document, rng)
    with open(file, "w") as fh:
        json.dump(document, fh)
    return f"edit {_relative(path, file)}: {done}"


DAMAGES = {"flip_bits": (flip_bits, 2), "flip_metadata_bit": (flip_metadata_bit, 3), "zero_range": (zero_range, 1),
           "truncate_file": (truncate_file, 1), "delete_file": (delete_file, 1), "edit_json": (edit_json, 3)}


def damage(path: str, seed: int) -> str:
    """Damage the pool at ``path`` in one way drawn from ``seed``; the same seed, the same damage."""
    rng = random.Random(seed)
    names = [name for name in DAMAGES if name != "delete_file" or os.path.isdir(path)]
    name = rng.choices(names, weights=[DAMAGES[n][1] for n in names])[0]
    return DAMAGES[name][0](path, rng)


# ---------------------------------------------------------------------------- what is done with a copy
def attempt(call) -> tuple[str, object]:
    """("ok", value), ("E:<class>", None) for an ExpstoreError, or ("RAW:...", None) naming where."""
    try:
        return "ok", call()
    except expstore.ExpstoreError as exc:
        return f"E:{type(exc).__name__}", None
    except Exception as exc:  # any other exception is what this test looks for
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{os.path.relpath(frame.filename, os.path.dirname(TESTS_DIR))}:{frame.lineno} in {frame.name}"
        return f"RAW:{type(exc).__name__}: {' '.join(str(exc).split())[:200]} at {where}", None


def cli_outcome(args: list[str]) -> str:
    """"ok" (exit 0), "E:cli" (exit 1 with one Error line, or verify's findings), or "BAD:..."."""
    from click.testing import CliRunner

    from expstore.cli import cli

    result = CliRunner().invoke(cli, args)
    lines = result.output.strip().splitlines()
    clean = isinstance(result.exception, (SystemExit, type(None))) and "Traceback" not in result.output
    if result.exit_code == 0 and clean:
        return "ok"
    if result.exit_code == 1 and clean and lines:
        if args[0] == "verify" and not lines[-1].startswith("Error: "):
            return "E:cli"  # the report of a pool with findings
        errors = [line for line in lines if line.startswith("Error: ")]
        if len(errors) == 1 and lines[-1] == errors[0]:
            return "E:cli"
    detail = "".join(traceback.format_exception(result.exception)[-1:]) if result.exception else lines[-3:]
    return f"BAD:exit {result.exit_code}: {' '.join(str(detail).split())[:300]}"


def read_outcomes(path: str) -> dict[str, str]:
    outcomes = {}
    outcomes["open"], store = attempt(lambda: expstore.open(path, "r"))
    if store is not None:
        with store:
            calls = {
                "len": lambda: len(store), "rows": lambda: store[:], "sample": lambda: store.sample(8, rng=0),
                "n_step": lambda: store.sample(8, rng=0, n_step=3),
                "sequences": lambda: store.sample_sequences(4, 3, rng=0),
                "prioritized": lambda: store.sample(8, rng=0, prioritized=True),
                "episodes": store.episodes, "stats": store.stats, "store_verify": store.verify,
            }
            for name, call in calls.items():
                outcomes[name] = attempt(call)[0]
    outcomes["verify"] = attempt(lambda: expstore.verify(path))[0]
    for command in (["info"], ["info", "--json"], ["verify"], ["sample", "-n", "4", "--seed", "0"], ["episodes"],
                    ["head"], ["stats"]):
        outcomes["cli " + " ".join(command)] = cli_outcome([command[0], path, *command[1:]])
    return outcomes


def write_outcomes(path: str) -> dict[str, str]:
    """A writer appends a row and closes (commits); then repair. Last, as they change the copy."""
    def append_one():
        with expstore.open(path, "a") as pool:
            schema = pool.schema
            row = {name: value[0] for name, value in rows_for([pool.next_step_id]).items() if name in schema}
            pool.append(row)

    return {"append": attempt(append_one)[0], "cli repair": cli_outcome(["repair", path])}


def child_main() -> None:
    """A worker: one case per stdin line. It says what it damaged before using the copy, so
    that a hang or a crash is reported with its damage; then one JSON result line."""
    import logging

    logging.disable(logging.WARNING)  # torn-slot warnings of damaged pools are expected here
    for line in sys.stdin:
        case = json.loads(line)
        target = os.path.join(case["workdir"], f"case{case['index']}{BACKENDS[case['backend']]}")
        copy_pool(case["base"], target)
        what = damage(target, case["seed"])
        print(json.dumps({"started": case["index"], "damage": what}), flush=True)
        result = {"index": case["index"], "damage": what, **read_outcomes(target), **write_outcomes(target)}
        shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
        print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------- the parent
def run_in_children(cases: list[dict]) -> list[dict]:
    """Every case in a child process, restarted after a hang or a crash (which become results)."""
    results, pending = [], list(cases)
    while pending:
        finished = _run_child(pending)
        results += finished
        done = {result["index"] for result in finished}
        pending = [case for case in pending if case["index"] not in done]
    return results


def _run_child(cases: list[dict]) -> list[dict]:
    """One child over ``cases`` until it finishes, hangs or dies. Its input and its stderr are
    files, not pipes: a pipe left full (the parent waiting on stdout) would stall the child."""
    with tempfile.TemporaryFile("w+") as stdin, tempfile.TemporaryFile("w+") as stderr:
        stdin.write("".join(json.dumps(case) + "\n" for case in cases))
        stdin.seek(0)
        child = subprocess.Popen([sys.executable, "-c", "import test_fuzz; test_fuzz.child_main()"],
                                 cwd=TESTS_DIR, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr, text=True)
        results, started, what, hung = _read_results(child)
        stderr.seek(0)
        errors = stderr.read()
    if not hung and started is None and child.returncode == 0:
        return results
    index = started if started is not None else _first_unfinished(cases, results)
    if hung:
        return results + [{"index": index, "damage": what, "hang": f"no result within {CASE_DEADLINE_S} s"}]
    return results + [{"index": index, "damage": what, "crash": f"child exited {child.returncode}: {errors[-1500:]}"}]


def _read_results(child: subprocess.Popen) -> tuple[list[dict], int | None, str | None, bool]:
    """The child's results, the case it had started when it stopped (None: between cases), that
    case's damage, and whether it hung: gave no line within the deadline (it is then killed)."""
    results, started, what = [], None, None
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        while True:
            if not selector.select(timeout=CASE_DEADLINE_S):
                child.kill()
                child.wait()
                return results, started, what, True
            line = child.stdout.readline()
            if not line:
                child.wait()
                return results, started, what, False
            message = json.loads(line)
            if "started" in message:
                started, what = message["started"], message["damage"]
            else:
                results.append(message)
                started, what = None, None


def _first_unfinished(cases: list[dict], results: list[dict]) -> int:
    done = {result["index"] for result in results}
    return next(case["index"] for case in cases if case["index"] not in done)


def failures_of(result: dict) -> list[str]:
    if "hang" in result or "crash" in result:
        return [result.get("hang") or result["crash"]]
    return [f"{op}: {outcome}" for op, outcome in result.items() if isinstance(outcome, str)
            and outcome.startswith(("RAW:", "BAD:"))]


def fuzz(tmp_path, backend: str, copies: int, workers: int = 1) -> list[dict]:
    bases = make_pools(str(tmp_path), backend)
    workdir = tmp_path / "copies"
    workdir.mkdir()
    kinds = sorted(bases)
    cases = [{"index": i, "seed": SEED * 1_000_003 + i * 7919 + (backend == "zarr"), "backend": backend,
              "base": bases[kinds[i % len(kinds)]], "kind": kinds[i % len(kinds)], "workdir": str(workdir)}
             for i in range(copies)]
    shares = [cases[w::workers] for w in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        results = [result for share in pool.map(run_in_children, shares) for result in share]
    by_index = {case["index"]: case for case in cases}
    for result in results:
        result.setdefault("kind", by_index[result["index"]]["kind"])
        result.setdefault("seed", by_index[result["index"]]["seed"])
    return sorted(results, key=lambda result: result["index"])


def summary(backend: str, results: list[dict]) -> str:
    """Counts: copies, and per operation how many succeeded / raised each ExpstoreError / failed."""
    per_op: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for result in results:
        for op, outcome in result.items():
            if op in ("hang", "crash"):
                per_op[op]["failed"] += 1
            elif op not in ("index", "damage", "kind", "seed"):
                per_op[op]["failed" if outcome.startswith(("RAW:", "BAD:")) else outcome] += 1
    opened = sum(result.get("open") == "ok" for result in results)
    failed = sum(bool(failures_of(result)) for result in results)
    lines = [f"{backend}: {len(results)} damaged copies, {opened} still opened, {failed} with a failure"]
    lines += [f"  {op}: {dict(sorted(counts.items()))}" for op, counts in per_op.items()]
    return "\n".join(lines)


def assert_no_failures(results: list[dict]) -> None:
    failed = [(result, failures_of(result)) for result in results if failures_of(result)]
    report = [f"copy {r['index']} ({r['kind']}, seed {r['seed']}: {r.get('damage', '?')}): {f}" for r, f in failed[:20]]
    assert not failed, f"{len(failed)} of {len(results)} damaged copies failed:\n" + "\n".join(report)


def test_damaged_copies_fail_cleanly(tmp_path, backend):
    results = fuzz(tmp_path, backend, FAST_COPIES)
    assert len(results) == FAST_COPIES
    assert_no_failures(results)


@pytest.mark.slow
def test_many_damaged_copies_fail_cleanly(tmp_path, backend):
    results = fuzz(tmp_path, backend, FULL_COPIES, workers=2)
    print("\n" + summary(backend, results))
    assert len(results) == FULL_COPIES
    assert_no_failures(results)


# ---------------------------------------------------------------------------- the damage is real
def test_damage_is_reproducible_and_changes_the_pool(tmp_path, backend):
    """Each kind of damage, from the same seed, damages two copies identically; each kind
    changes bytes (a single draw may not: zeroing bytes that were zero already)."""
    base = make_pools(str(tmp_path), backend)["plain"]
    original = _contents(base)
    changed = collections.Counter()
    for name in [name for name in DAMAGES if name != "delete_file" or backend == "zarr"]:
        for seed in range(3):
            copies = [copy_pool(base, str(tmp_path / f"{name}{seed}-{i}{BACKENDS[backend]}")) for i in range(2)]
            described = [DAMAGES[name][0](copy, random.Random(seed)) for copy in copies]
            assert described[0] == described[1]
            contents = [_contents(copy) for copy in copies]
            assert contents[0] == contents[1], described[0]
            changed[name] += contents[0] != original
    assert min(changed.values()) >= 1, changed
    assert damage(copies[0], 7) == damage(copies[1], 7)


def _contents(path: str) -> dict[str, bytes]:
    return {os.path.relpath(file, path) if file != path else "": open(file, "rb").read() for file in pool_files(path)}
