"""The process's allocator, tuned for batches of large rows: an opt-in, process-wide setting.

A batch of frames is a few fresh megabytes: the sampled arrays, and inside a codec's batch decode
its output buffers. glibc's malloc serves blocks that large with mmap, or from the top of its heap,
which it trims back to the kernel once enough is free there; either way the next batch's pages
fault in anew. glibc adjusts its threshold from the process's history of frees, so whether it
happens depends on the run: ``sample(256)`` of 84x84 frames with their next frames faulted about
1,100 pages per batch in a 100,000-frame pool (2.7 ms of kernel time per batch on the development
machine, a 2-core VM), and none on some runs of a small one. With ``tune_allocator()``, glibc keeps
blocks up to ``mmap_threshold`` on its heap and keeps up to ``trim_threshold`` of free heap, so a
batch reuses the pages the last one freed: no faults, and in one run (Breakout, hot, tuned
against not in turns) 2.0x the batches/s of a zstd pool, 1.8x with ``frame_stack=4``, 2.1-3.3x of
a raw pool. An in-RAM numpy gather gained nothing: its simpler pattern of blocks is one glibc
already keeps.

Process-wide, so opt-in: a library does not change its host's allocator behind its back. The cost
is memory: up to ``trim_threshold`` of freed heap stays with the process. The same settings can be
given without code, before Python starts: ``MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=67108864``.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Callable

from ..errors import InvalidArgumentError

# mallopt's parameters (glibc's malloc.h) and the largest mmap threshold it takes on 64-bit systems.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MAX_MMAP_THRESHOLD = 32 << 20
# tune_allocator's defaults: blocks up to 32 MiB from the heap, up to 64 MiB of it kept when free.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None in a process without glibc (macOS, Windows, musl)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Keep the memory of large batches in this process (see the module docstring): glibc serves
    blocks up to ``mmap_threshold`` bytes from its heap and returns free heap to the kernel only
    beyond ``trim_threshold``. Returns True when glibc took both settings, False in a process
    without glibc's allocator (nothing changes there). Call it once, early, in a training process."""
    for name, value, low, high in (("mmap_threshold", mmap_threshold, 1, _MAX_MMAP_THRESHOLD),
                                   ("trim_threshold", trim_threshold, 0, 1 << 40)):
        if type(value) is not int or not low <= value <= high:
            raise InvalidArgumentError(f"{name}={value!r} must be an int of bytes in {low}..{high}, "
                                       "e.g. tune_allocator() for the defaults (32 MiB and 64 MiB)")
    global _tuned
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    took = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    if took:  # a refused call leaves the settings, and so the answer, as they were
        _tuned = _keeps_batches(mmap_threshold, trim_threshold)
    return took


def keeps_large_blocks() -> bool:
    """Whether this process's allocator keeps the pages of freed blocks of a few megabytes, so that
    a batch's fresh buffers do not fault in anew: ``tune_allocator()`` set that here, or glibc was
    told so before Python started (its ``MALLOC_*`` variables or ``GLIBC_TUNABLES``)."""
    return _tuned


def _keeps_batches(mmap_threshold: int | None, trim_threshold: int | None) -> bool:
    return (mmap_threshold is not None and trim_threshold is not None
            and mmap_threshold >= MMAP_THRESHOLD // 4 and trim_threshold >= TRIM_THRESHOLD // 4)


def _thresholds_from_environment() -> tuple[int | None, int | None]:
    """The thresholds glibc took from the environment at start-up (it reads it once, then), if given."""
    tunables = dict(item.split("=", 1) for item in os.environ.get("GLIBC_TUNABLES", "").split(":") if "=" in item)
    found = []
    for variable, tunable in (("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),
                              ("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold")):
        text = tunables.get(tunable, os.environ.get(variable))
        try:
            found.append(None if text is None else int(text, 0))
        except ValueError:
            found.append(None)  # glibc ignores a value it cannot read too
    return found[0], found[1]


_tuned = _keeps_batches(*_thresholds_from_environment())
