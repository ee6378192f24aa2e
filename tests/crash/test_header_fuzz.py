"""One flipped bit in the first 4 KiB of a pool or an archive (where HDF5 keeps its superblock and
object headers, after a pool's layout record, and a Zarr group its zarr.json): the archive probe
never raises, and every CLI read command either works or prints one line and exits 1, never a
traceback.

By default a seeded sample of offsets (and the ones known to have broken the probe); ``--full``
sweeps every offset.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from click.testing import CliRunner

import expstore
from expstore.backends.archive import ArchiveSource, is_archive
from expstore.cli import cli
from expstore.maintenance.convert import convert
from tests.helpers.pools import BACKENDS, pendulum_schema, rows_for

HEADER_NBYTES = 4096
SAMPLED_OFFSETS = 48
KNOWN_OFFSETS = [48, 53]  # bad object header version; bad metadata checksum (found by fuzzing)
POOL_COMMANDS = [["info"], ["head", "-n", "2"], ["stats"], ["sample", "-n", "2", "--seed", "0"]]
ARCHIVE_COMMANDS = POOL_COMMANDS[:3]  # an archive cannot be sampled in place (a clean refusal)


def offsets_to_flip(request, nbytes: int, start: int = 0) -> list[int]:
    """Offsets in the first ``start + HEADER_NBYTES`` bytes (``start``: where HDF5's own bytes
    begin, after a pool's layout record); the known ones counted from ``start``."""
    every = range(min(start + HEADER_NBYTES, nbytes))
    if request.config.getoption("--full"):
        return list(every)
    sample = random.Random(15).sample(every, min(SAMPLED_OFFSETS, len(every)))
    return sorted({*sample, *(start + offset for offset in KNOWN_OFFSETS if start + offset < len(every))})


def hdf5_start(path: str) -> int:
    """Where HDF5's superblock lies: after the user block that holds a pool's layout record."""
    with open(path, "rb") as fh:
        data = fh.read(1 << 16)
    return next(offset for offset in (0, 512, 1024, 2048, 4096, 8192, 16384, 32768)
                if data[offset:offset + 8] == b"\x89HDF\r\n\x1a\n")


def make_pool(path: str) -> str:
    with expstore.open(path, "w", capacity=64, schema=pendulum_schema()) as pool:
        pool.extend(rows_for(np.arange(40)))
    return path


def make_archive(pool: str, path: str) -> str:
    convert(pool, path, compress="auto")
    return path


def header_file(path: str) -> str:
    """The file whose first bytes the probe reads: the HDF5 file, or a Zarr group's zarr.json."""
    return os.path.join(path, "zarr.json") if os.path.isdir(path) else path


def failures_after_flips(path: str, offsets: list[int], commands: list[list[str]]) -> list[str]:
    """Flip bit 0 of each offset in turn (restored after), probe the path and run each command."""
    runner = CliRunner()
    failures = []
    with open(header_file(path), "r+b") as fh:
        original = fh.read()
        for offset in offsets:
            os.pwrite(fh.fileno(), bytes([original[offset] ^ 1]), offset)
            try:
                failures += probe_failures(path, offset)
                for command in commands:
                    result = runner.invoke(cli, [*command, path])
                    if result.exit_code not in (0, 1) or not isinstance(result.exception, (SystemExit, type(None))):
                        failures.append(f"offset {offset}: `expstore {command[0]}` raised {result.exception!r}")
                    elif result.exit_code == 1 and len(result.output.strip().splitlines()) != 1:
                        failures.append(f"offset {offset}: `expstore {command[0]}` printed {result.output!r}")
            finally:
                os.pwrite(fh.fileno(), original[offset:offset + 1], offset)
    return failures


def probe_failures(path: str, offset: int) -> list[str]:
    try:
        found = is_archive(path)
    except Exception as exc:  # any exception is the failure being looked for
        return [f"offset {offset}: is_archive raised {exc!r}"]
    return [] if isinstance(found, bool) else [f"offset {offset}: is_archive returned {found!r}"]


def test_flipped_bits_in_an_hdf5_pool_header_give_one_line_errors(tmp_path, request):
    path = make_pool(str(tmp_path / "pool.h5"))
    offsets = offsets_to_flip(request, os.path.getsize(path), hdf5_start(path))  # the layout record too
    assert failures_after_flips(path, offsets, POOL_COMMANDS) == []
    assert not is_archive(path)


def test_flipped_bits_in_a_zarr_pool_group_document_never_break_the_probe(tmp_path, request):
    # The probe only: what the pool opener makes of a damaged zarr.json is the metadata checks' part.
    path = make_pool(str(tmp_path / "pool.zarr"))
    offsets = offsets_to_flip(request, os.path.getsize(header_file(path)))
    assert failures_after_flips(path, offsets, []) == []


def test_flipped_bits_in_an_archive_header_give_one_line_errors(tmp_path, backend, request):
    pool = make_pool(str(tmp_path / f"pool{BACKENDS[backend]}"))
    path = make_archive(pool, str(tmp_path / f"archive{BACKENDS[backend]}"))
    assert is_archive(path)
    offsets = offsets_to_flip(request, os.path.getsize(header_file(path)))
    assert failures_after_flips(path, offsets, ARCHIVE_COMMANDS) == []
    assert CliRunner().invoke(cli, ["info", path]).exit_code == 0  # restored, it reads again


@pytest.mark.parametrize("offset", KNOWN_OFFSETS)
def test_damaged_hdf5_header_is_one_line_in_every_read_command(tmp_path, offset):
    path = make_pool(str(tmp_path / "pool.h5"))
    offset += hdf5_start(path)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 1]))
    for command in POOL_COMMANDS:
        result = CliRunner().invoke(cli, [*command, path])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (command, result.exception)
        assert "HDF5 cannot read the pool's metadata" in result.output and "expstore verify" in result.output


def first_chunk(path: str, field: str) -> tuple[str, int]:
    """The file and byte offset of the first compressed chunk of ``field`` in an archive."""
    if os.path.isdir(path):
        return os.path.join(path, field, "c", "0", "0"), 0
    import h5py

    with h5py.File(path, "r") as f:
        return path, f[field].id.get_chunk_info(0).byte_offset


def test_damaged_archive_chunk_is_a_corrupt_store_error(tmp_path, backend):
    pool = make_pool(str(tmp_path / f"pool{BACKENDS[backend]}"))
    path = make_archive(pool, str(tmp_path / f"archive{BACKENDS[backend]}"))
    file, offset = first_chunk(path, "obs")
    with open(file, "r+b") as fh:
        os.pwrite(fh.fileno(), b"\xff" * 16, offset)  # the start of the compressed stream
    source = ArchiveSource(path)
    try:
        with pytest.raises(expstore.CorruptStoreError, match="the archive is damaged: rows 0..40"):
            source.read(0, 40)
    finally:
        source.close()
    result = CliRunner().invoke(cli, ["head", path])
    assert result.exit_code == 1 and "the archive is damaged" in result.output, result.output
