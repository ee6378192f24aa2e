"""One batch from several pools at fixed or scheduled ratios: ``expstore.mix``.

Offline-to-online training (RLPD's symmetric sampling, Ball et al. 2023: half of every batch
from the prior data, half from the online pool) and annealed mixes::

    offline = expstore.open("d4rl-hopper.h5", "r")      # read-only: mix never writes to a pool
    online = expstore.open("run/pool.h5", "a")
    mixed = expstore.mix({offline: 0.5, online: 0.5})
    batch = mixed.sample(256, rng=0, n_step=3)             # every Store.sample option, per source
    batch["source"]                                        # 0: offline row, 1: online row

    annealed = expstore.mix({offline: lambda batches: max(0.1, 1 - batches / 10_000), online: 1.0})

Each batch is split between the sources in proportion to their weights (normalised per batch):
exactly, by largest remainders (``exact=True``, the default: ``round(0.5 * 256) = 128`` rows
from each), or by a multinomial draw (``exact=False``). Each source's rows are drawn with that
source's own ``Store.sample`` and the same options (``per_source`` adds or overrides options
for one source), then concatenated in the order of the mapping, with a ``source`` column.
Columns every source returns are kept; ``weights`` (prioritized sources) is 1.0 for rows of a
source without it, ``relabeled`` (HER) False; other columns only some sources have are left out.
A ragged field comes padded to the longest row of the whole batch (the rows of each source
widened with the ``pad_value`` it was sampled with, ``<name>_length`` kept), or with
``ragged="list"`` as one list of all the sources' rows (``join_batches``, expstore/core/ragged.py).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..core.ragged import PadValue, join_batches
from ..core.store import Store
from ..errors import EmptyStoreError, InvalidArgumentError, SchemaError

Weight = float | Callable[[int], float]
FILLED = {"weights": np.float32(1.0), "relabeled": False}  # the value of a column a source does not add


class Mix:
    """Draws batches from several pools at once; build it with :func:`mix`.

    Attributes:
        sources: the pools, in the order of the mapping (``source`` indexes this tuple).
        batches: batches drawn so far (the argument of callable weights); saved and restored
            with ``state_dict``/``load_state_dict`` so that a resumed run continues a schedule.
    """

    def __init__(self, weights: Mapping[Store, Weight], exact: bool = True):
        if not isinstance(weights, Mapping) or not weights:
            raise InvalidArgumentError("expstore.mix takes a mapping {pool: weight, ...} with at least one pool, "
                                       "e.g. expstore.mix({offline: 0.5, online: 0.5})")
        for pool, weight in weights.items():
            if not isinstance(pool, Store):
                raise InvalidArgumentError(f"expstore.mix: {pool!r} is not an open pool; pass the Stores that "
                                           "expstore.open returns as the keys")
            if not callable(weight):
                _check_weight(weight, pool)
        if not isinstance(exact, bool):
            raise InvalidArgumentError(f"exact={exact!r} must be True (the exact split) or False (multinomial)")
        self.sources: tuple[Store, ...] = tuple(weights)
        self._weights = tuple(weights.values())
        self.exact = exact
        self.batches = 0

    def weights(self, batch_count: int | None = None) -> np.ndarray:
        """The normalised weights for batch number ``batch_count`` (default: the next batch)."""
        count = self.batches if batch_count is None else int(batch_count)
        values = np.array([_check_weight(weight(count) if callable(weight) else weight, pool)
                           for pool, weight in zip(self.sources, self._weights, strict=True)], np.float64)
        if not values.sum() > 0:
            raise InvalidArgumentError(f"expstore.mix: every weight is 0 at batch {count}; at least one pool "
                                       "needs a positive weight")
        return values / values.sum()

    def split(self, batch_size: int, rng: np.random.Generator, batch_count: int | None = None) -> np.ndarray:
        """Rows per source for one batch."""
        p = self.weights(batch_count)
        if not self.exact:
            return rng.multinomial(batch_size, p).astype(np.int64)
        return largest_remainders(batch_size, p)

    def sample(self, batch_size: int, *, rng: int | np.random.Generator | None = None,
               per_source: Mapping[Store | int, Mapping[str, Any]] | None = None, **options) -> dict[str, np.ndarray]:
        """A batch of ``batch_size`` rows from the sources, plus ``step_id`` and ``source``.

        Args:
            batch_size: rows in all.
            rng: a seed or a ``numpy.random.Generator`` (the split and every source draw from it).
            per_source: options for one source (by pool or index), added to ``options``.
            options: any keyword of ``Store.sample`` (``n_step``, ``gamma``, ``prioritized``,
                ``max_age``, ``recency``, ``frame_stack``, ``her``, ``ragged``, ``pad_value``, ...),
                applied to every source.
        """
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
            raise InvalidArgumentError(f"batch_size={batch_size!r} must be a positive int")
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        extra = self._per_source(per_source)
        counts = self.split(int(batch_size), generator)
        parts, pad_values = [], []
        for index, (pool, count) in enumerate(zip(self.sources, counts, strict=True)):
            if count == 0:
                continue
            chosen = {**options, **extra[index]}
            try:
                part = pool.sample(int(count), rng=generator, **chosen)
            except EmptyStoreError as exc:
                raise EmptyStoreError(f"mix source {index} ({pool.path}): {exc}") from None
            part["source"] = np.full(int(count), index, np.int64)
            parts.append(part)
            pad_values.append(chosen.get("pad_value", 0))
        self.batches += 1
        return concatenate(parts, pad_values)

    def update_priorities(self, batch: Mapping[str, np.ndarray], priorities) -> int:
        """Set the priorities of a mixed batch's rows in their own pools (writable ones only:
        a read-only source keeps the priorities it was recorded with). Returns how many were set."""
        priorities = np.asarray(priorities, np.float64).reshape(-1)
        sources, steps = np.asarray(batch["source"]), np.asarray(batch["step_id"])
        if len(priorities) != len(steps):
            raise InvalidArgumentError(f"{len(priorities)} priorities for a batch of {len(steps)} rows")
        updated = 0
        for index, pool in enumerate(self.sources):
            rows = sources == index
            if rows.any() and pool.writable:
                updated += pool.update_priorities(steps[rows], priorities[rows])
        return updated

    def state_dict(self) -> dict:
        return {"batches": self.batches}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.batches = int(state["batches"])

    def _per_source(self, per_source) -> list[dict]:
        extra: list[dict] = [{} for _ in self.sources]
        for key, values in (per_source or {}).items():
            if isinstance(key, Store):
                matches = [i for i, pool in enumerate(self.sources) if pool is key]
                if not matches:
                    raise InvalidArgumentError(f"per_source names {key.path}, which is not a source of this mix")
                index = matches[0]
            elif isinstance(key, numbers.Integral) and 0 <= int(key) < len(self.sources):
                index = int(key)
            else:
                raise InvalidArgumentError(f"per_source key {key!r}: use a source pool or its index "
                                           f"0..{len(self.sources) - 1}")
            if "rng" in values:
                raise InvalidArgumentError("per_source options cannot set rng; the mix draws every source from one")
            extra[index] = dict(values)
        return extra

    def __repr__(self) -> str:
        return f"<Mix of {len(self.sources)} pools, exact={self.exact}, batches={self.batches}>"


def mix(weights: Mapping[Store, Weight], *, exact: bool = True) -> Mix:
    """A :class:`Mix` drawing from the pools of ``weights`` (pool -> weight or ``f(batch_count)``).

    See the module docstring (expstore/mixing/mix.py) for the split and the columns.
    """
    return Mix(weights, exact=exact)


def largest_remainders(total: int, p: np.ndarray) -> np.ndarray:
    """``total`` split in proportion to ``p`` (sums to 1): floors, then one more row for the
    largest fractional parts (ties to the earlier source)."""
    quotas = total * np.asarray(p, np.float64)
    # Normalising in floating point leaves quotas a few ulps off the exact ratio (94 rows at
    # 1/3 : 1 : 2 give 9.3999... and 56.4000...1): floors and remainders within a tolerance of
    # the rational result, so that equal remainders tie to the earlier source as they should.
    tolerance = 1e-9 * max(1, total)
    counts = np.floor(quotas + tolerance).astype(np.int64)
    missing = total - int(counts.sum())
    if missing > 0:
        remainders = np.round(np.maximum(quotas - counts, 0.0) / tolerance) * tolerance
        order = np.lexsort((np.arange(len(p)), -remainders))
        counts[order[:missing]] += 1
    return counts


def concatenate(parts: list[dict[str, Any]], pad_values: list[PadValue] | None = None) -> dict[str, Any]:
    """The sources' batches one after the other (see the module docstring for the columns);
    ``pad_values``: the ``pad_value`` each was sampled with, that widened ragged rows hold."""
    if len(parts) == 1:
        return parts[0]
    names = [name for name in parts[0] if all(name in part for part in parts)]
    names += [name for name in FILLED if name not in names and any(name in part for part in parts)]
    filled = [{**{name: np.full(len(part["source"]), FILLED[name]) for name in FILLED if name in names}, **part}
              for part in parts]
    try:
        return join_batches(filled, names, pad_values, what="sources")
    except SchemaError as exc:
        raise SchemaError(f"mix: {exc}; mix pools that store the same fields") from None


def _check_weight(weight: Any, pool: Store) -> float:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not (0 <= float(weight) < float("inf")):
        raise InvalidArgumentError(f"expstore.mix: the weight of {pool.path} is {weight!r}; weights are numbers "
                                   ">= 0 (or callables of the batch count returning them)")
    return float(weight)
