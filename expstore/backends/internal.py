"""The bookkeeping arrays a pool gets at creation, beside the user's fields.

Per row (``slots`` rows, indexed like the fields):

- ``_episode_id`` int64: the episode the row belongs to;
- ``_episode_step`` int64: the row's index inside its episode (0 for the first row);
- ``_episode_return`` float64: the episode's summed reward up to and including the row;
- ``_next_delta`` int64: step-id distance to the next row of the same episode, 0 while there
  is none (episode end, or the next row not appended yet). Readers trust a link only when
  its target is committed and carries the same episode id;
- ``_priority`` float32: the row's priority for prioritized replay (new rows get the max).

Per episode (``episode_rows`` rows, indexed by ``episode_id % episode_rows``):

- ``_episodes`` int64 (rows, 4): episode id, first step id, last step id (-1 while open),
  the entry's *info* word ``env_id * 8 + 4 * (final observation stored) + status`` (an
  ``EpisodeStatus``: 0 open, 1 terminated, 2 truncated, 3 cut off by a crash; packed and read
  with ``episode_info``, ``info_status`` and ``info_env``); in a pool that derives ``next_obs``, a fifth column: the
  number of the episode's final observation (see below).

Only in pools created with ``derive_next_obs=True``, a ring of ``final_rows`` rows in the order
episodes end (the ``k``-th final observation kept is in row ``k % final_rows``; finals.py):

- ``_finals_owner`` int64: the number ``k`` of the final observation the row holds;
- ``_final_<obs>``, for each observation field stored without its ``next_<obs>`` field: the
  observation that followed the episode's last row;
- for a ragged observation, ``_final_<obs>`` is instead an index of heap entries
  (schema.HEAP_INDEX_COLUMNS), and ``_finals_heap_<obs>`` uint8 the byte heap they point into:
  a circular log of its own, written in the order of the ring (finals.py).

Pools created before the final-observation table had a size of its own have neither
``_finals_owner`` nor the fifth column; their ``_final_<obs>`` rows are the episode table's
(row ``episode_id % episode_rows``).

Per heap field (ragged, or with a codec; core/heap.py), the heap itself:

- ``_heap_<name>`` uint8 (heap bytes): the rows' stored bytes, a circular log. The field's own
  array is then its index, one entry per slot (schema.HEAP_INDEX_COLUMNS);
- with a ``zstd:N+dict`` codec, ``_dict_<name>`` uint8 (``DICTIONARY_ARRAY_NBYTES``): the zstd
  dictionary the writer trains on the field's first rows (core/heap_dictionary.py): int64 length
  (0 until trained), int64 crc32 of the dictionary, then its bytes.

All start zeroed. Names starting with ``_`` are never user fields, so they cannot collide.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import overload

import numpy as np

from ..codecs.registry import uses_dictionary
from ..errors import SchemaError
from ..schema import HEAP_INDEX_COLUMNS, HEAP_INDEX_DTYPE, Schema

ROW_ARRAYS = {
    "_episode_id": "int64",
    "_episode_step": "int64",
    "_episode_return": "float64",
    "_next_delta": "int64",
    "_priority": "float32",
}
EPISODE_TABLE = "_episodes"
EPISODE_COLUMNS = 4  # a fifth in pools whose final-observation table is a ring of its own
FINAL_PREFIX = "_final_"
FINAL_OWNER = "_finals_owner"  # outside FINAL_PREFIX: it is no observation's table
FINAL_HEAP_PREFIX = "_finals_heap_"  # likewise: the bytes of a ragged observation's final table
HEAP_PREFIX = "_heap_"
DICTIONARY_PREFIX = "_dict_"
DICTIONARY_HEADER_NBYTES = 16  # int64 length, int64 crc32
DICTIONARY_NBYTES = 64 << 10  # what the trainer is asked for, at most
DICTIONARY_ARRAY_NBYTES = DICTIONARY_HEADER_NBYTES + DICTIONARY_NBYTES


class EpisodeStatus(IntEnum):
    """How an episode stands, in the low two bits of its table entry's info word."""

    OPEN = 0
    TERMINATED = 1
    TRUNCATED = 2
    CUT_OFF = 3  # open when its writer stopped without closing it


FINAL_STORED = 4  # flag in an entry's info word: the final observation is in the final-obs table
_STATUS_BITS = 4  # the status values and FINAL_STORED fit below this
_ENV_STRIDE = 8  # info = env_id * _ENV_STRIDE + FINAL_STORED flag + status

@overload
def episode_info(env_id: int, status: int = EpisodeStatus.OPEN) -> int: ...
@overload
def episode_info(env_id: np.ndarray, status: int | np.ndarray = EpisodeStatus.OPEN) -> np.ndarray: ...
@overload
def episode_info(env_id: int, status: np.ndarray) -> np.ndarray: ...
def episode_info(env_id, status=EpisodeStatus.OPEN):
    """The info word of an entry of ``env_id`` with ``status`` (ints or arrays of them)."""
    return env_id * _ENV_STRIDE + status


@overload
def info_status(info: int) -> int: ...
@overload
def info_status(info: np.ndarray) -> np.ndarray: ...
def info_status(info):
    """The ``EpisodeStatus`` values of info words (ints or arrays)."""
    return info % _STATUS_BITS


@overload
def info_env(info: int) -> int: ...
@overload
def info_env(info: np.ndarray) -> np.ndarray: ...
def info_env(info):
    """The env ids of info words (ints or arrays)."""
    return info // _ENV_STRIDE


def derived_fields(schema: Schema) -> list[str]:
    """Observation fields (``obs``, ``obs_*``) whose ``next_`` field the pool does not store."""
    return [name for name in schema if (name == "obs" or name.startswith("obs_")) and f"next_{name}" not in schema]


def plan(schema: Schema, slots: int, episode_rows: int | None, derive_next_obs: bool = False,
         final_rows: int | None = None, heap_nbytes: Mapping[str, int] | None = None,
         final_heap_nbytes: Mapping[str, int] | None = None) -> dict:
    """The ``internal`` entry of a new pool's metadata: name -> {shape, dtype}.

    ``final_rows``: rows of the final-observation table, with its owner column; None plans the
    layout of pools made before it had a size of its own (``episode_rows`` rows, no owner).
    ``heap_nbytes``: the heap size of each heap field (1 byte where not given: a plan for checks);
    ``final_heap_nbytes`` likewise for the final-observation heap of each ragged observation.
    """
    episode_rows = slots if episode_rows is None else episode_rows
    ring = derive_next_obs and final_rows is not None
    arrays = {name: {"shape": [slots], "dtype": dtype} for name, dtype in ROW_ARRAYS.items()}
    arrays[EPISODE_TABLE] = {"shape": [episode_rows, EPISODE_COLUMNS + ring], "dtype": "int64"}
    if derive_next_obs and not derived_fields(schema):
        raise SchemaError(f"derive_next_obs=True needs an observation field ('obs' or 'obs_*') stored without "
                          f"its 'next_' field; the schema has {list(schema)}")
    if ring:
        arrays[FINAL_OWNER] = {"shape": [final_rows], "dtype": "int64"}
    for name in derived_fields(schema) if derive_next_obs else []:
        field = schema[name]
        if field.ragged:
            if not ring:  # pools of that older layout were never made with ragged fields
                raise SchemaError(f"derive_next_obs=True cannot derive next_{name} ({name!r} is ragged) in the "
                                  "final-observation layout without an owner column")
            arrays[FINAL_PREFIX + name] = {"shape": [final_rows, len(HEAP_INDEX_COLUMNS)],
                                           "dtype": HEAP_INDEX_DTYPE.name}
            arrays[FINAL_HEAP_PREFIX + name] = {"shape": [int((final_heap_nbytes or {}).get(name, 1))],
                                                "dtype": "uint8"}
            continue
        rows = episode_rows if final_rows is None else final_rows
        arrays[FINAL_PREFIX + name] = {"shape": [rows, *field.shape], "dtype": field.dtype.name}
    for name in schema.heap_fields():
        arrays[HEAP_PREFIX + name] = {"shape": [int((heap_nbytes or {}).get(name, 1))], "dtype": "uint8"}
        if uses_dictionary(schema[name].codec):
            arrays[DICTIONARY_PREFIX + name] = {"shape": [DICTIONARY_ARRAY_NBYTES], "dtype": "uint8"}
    return arrays


def planned_heap_nbytes(arrays: dict, prefix: str = HEAP_PREFIX) -> dict[str, int]:
    """The ``heap_nbytes`` that ``plan`` was given for a pool's ``internal`` arrays."""
    sizes = {}
    for name, spec in arrays.items():
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if name.startswith(prefix) and isinstance(shape, list) and shape:
            sizes[name[len(prefix):]] = shape[0]
    return sizes


def planned_final_heap_nbytes(arrays: dict) -> dict[str, int]:
    """The ``final_heap_nbytes`` that ``plan`` was given for a pool's ``internal`` arrays."""
    return planned_heap_nbytes(arrays, FINAL_HEAP_PREFIX)


def planned_final_rows(arrays: dict) -> int | None:
    """The ``final_rows`` that ``plan`` was given for a pool's ``internal`` arrays (None: the
    layout without an owner column)."""
    owner = arrays.get(FINAL_OWNER)
    if not isinstance(owner, dict) or not isinstance(owner.get("shape"), list) or not owner["shape"]:
        return None
    return owner["shape"][0]


def final_fields(views: Mapping) -> list[str]:
    """The observation fields whose next value a pool derives (it has their final-obs table)."""
    return [name[len(FINAL_PREFIX):] for name in views if name.startswith(FINAL_PREFIX)]


def has_bookkeeping(views: dict) -> bool:
    return all(name in views for name in ROW_ARRAYS) and EPISODE_TABLE in views
