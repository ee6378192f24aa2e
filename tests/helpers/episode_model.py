"""A slow, obviously correct model of a pool's rows and episodes, and random layouts for it.

Rows carry values derived from (episode id, index in episode), so the observation after a
row is known in advance: ``obs = [1000 * episode + index, env]``, ``next_obs`` the same with
index + 1. That makes a pool that stores next_obs and one that derives it comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

SCHEMA = {"obs": ((2,), "float32"), "action": ((), "int64"), "reward": ((), "float32"),
          "next_obs": ((2,), "float32"), "terminated": ((), "bool"), "truncated": ((), "bool")}
DERIVED_SCHEMA = {name: spec for name, spec in SCHEMA.items() if name != "next_obs"}


@dataclass
class Row:
    step: int
    env: int
    episode: int
    index: int
    reward: float
    terminated: bool
    truncated: bool

    def values(self) -> dict:
        obs = np.array([1000 * self.episode + self.index, self.env], np.float32)
        return {"obs": obs, "action": self.step, "reward": self.reward,
                "next_obs": obs + np.array([1, 0], np.float32),
                "terminated": self.terminated, "truncated": self.truncated}


@dataclass
class Model:
    capacity: int
    rows: list[Row] = field(default_factory=list)
    open: dict = field(default_factory=dict)  # env -> (episode, next index)
    cut_off: set = field(default_factory=set)
    next_episode: int = 0

    def add(self, env: int, end: int, reward: float) -> Row:
        """end: 0 continue, 1 terminated, 2 truncated."""
        episode, index = self.open.get(env, (None, 0))
        if episode is None:
            episode, index = self.next_episode, 0
            self.next_episode += 1
        row = Row(len(self.rows), env, episode, index, reward, end == 1, end == 2)
        self.rows.append(row)
        if end:
            self.open.pop(env, None)
        else:
            self.open[env] = (episode, index + 1)
        return row

    def reopen(self) -> None:
        self.cut_off |= {episode for episode, _ in self.open.values()}
        self.open = {}

    @property
    def tail(self) -> int:
        return max(0, len(self.rows) - self.capacity)

    def episode_rows(self, episode: int) -> list[Row]:
        return [row for row in self.rows if row.episode == episode]

    def episodes(self) -> list[dict]:
        table = []
        for episode in sorted({row.episode for row in self.rows[self.tail:]}):
            rows = self.episode_rows(episode)
            last = rows[-1]
            open_now = episode in {e for e, _ in self.open.values()}
            table.append({
                "episode_id": episode, "first_step_id": rows[0].step, "length": len(rows),
                "return": sum(r.reward for r in rows), "terminated": last.terminated,
                "truncated": last.truncated, "open": open_now, "cut_off": episode in self.cut_off,
                "evicted": sum(r.step < self.tail for r in rows), "env_id": last.env,
            })
        return table

    def following(self, step: int, count: int) -> list[Row]:
        """Up to ``count`` rows of step's episode from step on, stopping after an end."""
        row = self.rows[step]
        later = [r for r in self.episode_rows(row.episode) if r.step >= step][:count]
        chain = []
        for r in later:
            chain.append(r)
            if r.terminated or r.truncated:
                break
        return chain

    def n_step(self, step: int, n: int, gamma: float) -> dict:
        chain = self.following(step, n)
        last = chain[-1]
        return {"reward": sum(gamma ** k * r.reward for k, r in enumerate(chain)),
                "next_obs": last.values()["next_obs"], "terminated": last.terminated,
                "truncated": last.truncated, "discount": gamma ** len(chain)}

    def next_obs_known(self, step: int, final_rows: int | None = None) -> bool:
        """Whether a pool deriving next_obs knows the observation after this row; with a
        final-observation table of ``final_rows`` rows, only the newest ends keep theirs."""
        row = self.rows[step]
        if row.terminated or row.truncated:
            ends = [r.step for r in self.rows if r.terminated or r.truncated]
            return final_rows is None or step in ends[-final_rows:]
        return any(r.step > step for r in self.episode_rows(row.episode))


# One op: ("append", env, end, reward) | ("extend", [(env, end, reward), ...]) | ("reopen",)
_row = st.tuples(st.integers(0, 2), st.sampled_from([0, 0, 0, 1, 2]), st.integers(-3, 3))
ops = st.lists(st.one_of(
    st.tuples(st.just("append"), _row),
    st.tuples(st.just("extend"), st.lists(_row, min_size=1, max_size=12)),
    st.tuples(st.just("reopen")),
), min_size=1, max_size=25)


def run_ops(model: Model, open_pool, operations, close_all: bool = False):
    """Apply operations to the model and to the pools ``open_pool()`` returns (a list)."""
    pools = open_pool()
    for op in operations:
        if op[0] == "append":
            env, end, reward = op[1]
            values = model.add(env, end, float(reward)).values()
            for pool in pools:
                pool.append(values, env_id=env)
        elif op[0] == "extend":
            rows = [model.add(env, end, float(reward)) for env, end, reward in op[1]]
            batch = {name: np.stack([np.asarray(r.values()[name]) for r in rows]) for name in SCHEMA}
            for pool in pools:
                pool.extend(batch, env_ids=[r.env for r in rows])
        elif op[0] == "reopen":
            for pool in pools:
                pool.close()
            model.reopen()
            pools = open_pool()
    if close_all:
        for env in sorted(model.open):
            values = model.add(env, 1, 0.0).values()
            for pool in pools:
                pool.append(values, env_id=env)
    for pool in pools:
        pool.flush()
    return pools
