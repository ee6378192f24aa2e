"""Make data/format1/: small pools of on-disk format 1, to check that later code still opens them.

Each pool holds rows whose values are derived from their step id (see ``rows_for``), written
by two envs with episodes that end, are cut off by a reopen and wrap the ring, so that a test
can check every row, the episode table, n-step sampling and appends after the pool was made.
Made once by the code of the format's first release and committed; rerun only to add a
fixture for a new format version.

    python tools/make_format_fixtures.py            # writes data/format1/{plain,derived}.{h5,zarr}
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import expstore

CAPACITY = 48
ROWS = 100  # wraps the ring twice


def schema(with_next_obs: bool) -> dict:
    fields = {"obs": ((3,), "float32"), "action": ((), "int64"), "reward": ((), "float32"),
              "next_obs": ((3,), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}
    if not with_next_obs:
        del fields["next_obs"]
    return fields


def rows_for(step_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Values of each row from its step id; env = step % 2; an episode of an env ends every 5 of its rows."""
    steps = np.asarray(step_ids, dtype=np.int64)
    base = steps.astype(np.float32)
    return {"obs": np.stack([base, base + 0.25, base + 0.5], axis=1), "action": steps * 3,
            "reward": -base, "next_obs": np.stack([base + 2, base + 2.25, base + 2.5], axis=1),
            "terminated": (steps // 2) % 5 == 4, "truncated": np.zeros(len(steps), bool)}


def write(path: str, derived: bool) -> None:
    fields = schema(with_next_obs=not derived)
    opts = {"derive_next_obs": True} if derived else {"checksums": True}
    with expstore.open(path, "w", capacity=CAPACITY, schema=fields, chunk_rows=16,
                       attrs={"made_by": "tools/make_format_fixtures.py"}, **opts) as pool:
        first = rows_for(np.arange(56))
        pool.extend({name: first[name] for name in fields}, env_ids=np.arange(56) % 2)
    with expstore.open(path, "a") as pool:  # the reopen cuts off the episodes left open
        for step in range(56, ROWS):
            row = rows_for(np.array([step]))
            pool.append({name: row[name][0] for name in fields}, env_id=step % 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/format1")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for kind in ("plain", "derived"):
        for suffix in (".h5", ".zarr"):
            path = os.path.join(args.out, kind + suffix)
            write(path, derived=kind == "derived")
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
