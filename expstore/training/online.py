"""Online SAC: act in the env, record every step into a pool on disk, learn from samples of it.

The run directory holds the pool, ``checkpoint.pt``, ``config.json``, ``metrics.jsonl``,
``train.log`` and ``learning_curve.png``. Starting on an existing run directory resumes: the
pool is reopened in place (mode ``a``, no copy, nothing loaded into RAM) and the agent continues
from the checkpoint. The environment step counter is the pool's ``next_step_id``, so
transitions committed after the last checkpoint count as collected and are trained on.

Episodes are counted from the pool, which records each one: a resume adds the episodes the
pool shows ended after the checkpoint to the checkpoint's count (all of them when there is no
checkpoint yet), so ``summary.json`` and the episode numbers in ``metrics.jsonl`` continue
across resumes. The pool commits at each episode end before its record is written, so no
record names an episode a crash took back; each record carries the pool's ``episode_id``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..core.opening import open as open_pool
from ..core.store import Store
from ..errors import SchemaError
from ..integrations.torch_feed import Prefetcher
from ..mixing.mix import mix
from ..sampling.recency import ERE_C_MIN, ERE_ETA, ERESchedule
from .checkpoint import (
    CHECKPOINT_NAME,
    capture_rng,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng,
    save_checkpoint,
)
from .envs import action_box, evaluate, make_env, obs_units, recording_env
from .interrupt import Interrupted
from .progress import (
    CONFIG_NAME,
    METRICS_NAME,
    PLOT_NAME,
    SUMMARY_NAME,
    MetricsFile,
    Progress,
    mean_last_eval_return,
    plot_learning_curve,
    write_run_json,
)
from .resume import Invocation, from_record
from .sac import SAC, SACConfig

logger = logging.getLogger("expstore.train")


@dataclass
class OnlineConfig:
    """What an online run does; saved in the run directory and reused on resume."""

    env_id: str = "Pendulum-v1"
    total_steps: int = 20_000
    learning_starts: int = 1_000
    updates_per_step: int = 1
    seed: int = 0
    pool_name: str = "pool.h5"
    capacity: int = 1_000_000
    checkpoint_every: int = 2_000
    eval_every: int = 2_000
    eval_episodes: int = 10
    prefetch_depth: int = 2
    sac: SACConfig = field(default_factory=SACConfig)
    ere: bool = False  # Emphasizing Recent Experience: sample the newest c_k rows (expstore/sampling/recency.py)
    ere_eta: float = ERE_ETA
    ere_c_min: int = ERE_C_MIN
    # RLPD's symmetric sampling (Ball et al. 2023): this share of every batch from a prior pool
    offline_data: str | None = None
    offline_ratio: float = 0.5

    @classmethod
    def from_dict(cls, values: dict) -> OnlineConfig:
        """A recorded config; keys of older versions (``device``, ``log_interval_s``) are dropped."""
        return from_record(cls, {**values, "sac": from_record(SACConfig, values["sac"])})


@dataclass
class RunState:
    """Counters a checkpoint carries besides the agent."""

    step: int = 0
    episodes: int = 0  # ended (terminated or truncated) before ``step``
    eval_count: int = 0
    last_eval: float | None = None


class OnlineRun:
    """One online run in a run directory (fresh or resumed)."""

    def __init__(self, run_dir: str, config: OnlineConfig, invocation: Invocation | None = None):
        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        remove_stale_temporaries(run_dir)
        self.checkpoint_path = os.path.join(run_dir, CHECKPOINT_NAME)
        self.config = config
        self.invocation = invocation or Invocation()
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.env = make_env(config.env_id)
        self.pool = open_pool(os.path.join(run_dir, config.pool_name), "a", capacity=config.capacity,
                              attrs={"env_id": config.env_id, "gamma": config.sac.gamma,
                                     "written_by": "expstore.train (SAC)"})
        self.recorder = recording_env(self.env, self.pool)
        self.offline = None if config.offline_data is None else open_offline(config.offline_data, self.env)
        space = action_box(self.env)
        self.agent = SAC(obs_units(self.env), space.low, space.high, config.sac, self.invocation.device)
        self.state = RunState()
        self.resumed_from: int | None = None
        self.progress = Progress(config.total_steps, config.sac.batch_size, self.invocation.log_interval_s)
        self._restore()
        self.metrics = MetricsFile(os.path.join(run_dir, METRICS_NAME))
        self.progress.restart(self.state.step, self.agent.updates)
        self.progress.episodes = self.state.episodes
        self.progress.last_eval = self.state.last_eval

    def _restore(self) -> None:
        checkpoint = load_checkpoint(self.checkpoint_path)
        if checkpoint is not None:
            self.agent.load_state_dict(checkpoint["agent"])
            restore_rng(checkpoint["rng"], self.rng)
            self.state = from_record(RunState, checkpoint["run_state"])
            self.resumed_from = self.state.step
        counted_until = self.state.step  # the checkpoint counted the episodes that ended before it
        ended = ended_episodes(self.pool)
        self.state.episodes += int((ended["last_step_id"] >= counted_until).sum())
        self.progress.recent_returns.extend(ended["return"].tolist())  # a bounded deque: the newest stay
        committed = self.pool.next_step_id
        if checkpoint is not None:
            logger.info("resuming in %s: checkpoint at step %d, updates %d; the pool holds %d committed steps "
                        "(%d episodes ended)", self.run_dir, self.resumed_from, self.agent.updates, committed,
                        self.state.episodes)
        elif committed:
            logger.info("resuming in %s: no checkpoint yet, so the agent starts afresh (0 updates); the pool "
                        "holds %d committed steps (%d episodes ended), kept and counted", self.run_dir, committed,
                        self.state.episodes)
        self.state.step = committed  # every committed transition was collected: count it
        self.recorder.policy_version = self.agent.updates

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict | Interrupted:
        """Train until ``total_steps`` environment steps; returns a summary.

        When a stop is requested (Ctrl-C) it returns Interrupted after the current step, with
        the pool committed and a checkpoint written, so the same command resumes from there.
        """
        config = self.config
        obs, _ = self.recorder.reset(seed=config.seed + self.state.episodes)
        self.env.action_space.seed(config.seed + self.state.step)
        episode_return, batches = 0.0, None
        start_time, start_updates = time.monotonic(), self.agent.updates
        try:
            while self.state.step < config.total_steps and not self.invocation.stop_requested:
                if batches is None and self.state.step >= config.learning_starts:
                    batches = self._prefetcher()
                obs, episode_return = self._env_step(obs, episode_return)
                if batches is not None:
                    self._learn(batches)
                self._periodic()
        finally:
            if batches is not None:
                batches.close()
        if self.state.step < config.total_steps:
            self.checkpoint()
            return Interrupted(self.state.step, "step")
        return self._finish(time.monotonic() - start_time, self.agent.updates - start_updates)

    def _prefetcher(self) -> Prefetcher:
        batch_size = self.config.sac.batch_size
        device = self.invocation.device
        source = self.pool.sample
        if self.offline is not None:  # every batch split exactly between the prior data and the run's own
            ratio = self.config.offline_ratio
            source = mix({self.offline: ratio, self.pool: 1.0 - ratio}).sample
        if not self.config.ere:
            return Prefetcher(lambda: source(batch_size, rng=self.rng), depth=self.config.prefetch_depth,
                              device=device)
        schedule = ERESchedule(self._ere_phase_updates(), self.config.ere_eta, self.config.ere_c_min)
        return Prefetcher(lambda: source(batch_size, rng=self.rng, recency=schedule.next()),
                          depth=self.config.prefetch_depth, device=device)

    def _ere_phase_updates(self) -> int:
        """K of ERE: the updates made during one episode (the paper's update phase); a resumed
        run starts a new phase."""
        spec = getattr(self.env, "spec", None)
        episode_steps = getattr(spec, "max_episode_steps", None) or 1_000
        return int(episode_steps) * self.config.updates_per_step

    def _env_step(self, obs: np.ndarray, episode_return: float) -> tuple[np.ndarray, float]:
        if self.state.step < self.config.learning_starts:
            action = self.env.action_space.sample()
        else:
            action = self.agent.act(obs)
        obs, reward, terminated, truncated, _ = self.recorder.step(action)
        self.state.step += 1
        episode_return += float(reward)
        if terminated or truncated:
            self._end_episode(episode_return)
            obs, _ = self.recorder.reset(seed=self.config.seed + self.state.episodes)
            episode_return = 0.0
        return obs, episode_return

    def _end_episode(self, episode_return: float) -> None:
        self.pool.flush(fsync=False)  # committed before its record is written (durable at the next checkpoint)
        self.state.episodes += 1
        self.progress.episodes = self.state.episodes
        self.progress.recent_returns.append(episode_return)
        self.metrics.write("episode", self.state.step, episode=self.state.episodes,
                           episode_id=self._last_episode_id(), **{"return": episode_return})

    def _last_episode_id(self) -> int | None:
        """The pool's id of the episode whose last row was just appended."""
        table = self.pool.episodes()
        ends_here = np.flatnonzero(table["last_step_id"] == self.pool.next_step_id - 1)
        return int(table["episode_id"][ends_here[-1]]) if ends_here.size else None

    def _learn(self, batches: Prefetcher) -> None:
        for _ in range(self.config.updates_per_step):
            losses = self.agent.update(next(batches))
        self.recorder.policy_version = self.agent.updates  # rows now come from this policy
        if self.agent.updates % 1_000 == 0:
            self.metrics.write("train", self.state.step, updates=self.agent.updates, **losses)

    def _periodic(self) -> None:
        step = self.state.step
        if step % self.config.eval_every == 0:
            self._evaluate()
        if step % self.config.checkpoint_every == 0:
            self.checkpoint()
        self.progress.last_eval = self.state.last_eval
        self.progress.maybe_log(step, self.agent.updates)

    def _evaluate(self) -> None:
        self.state.eval_count += 1
        returns = evaluate(lambda obs: self.agent.act(obs, deterministic=True), self.config.env_id,
                           self.config.eval_episodes, seed=10_000 + 100 * self.state.eval_count)
        self.state.last_eval = float(np.mean(returns))
        self.metrics.write("eval", self.state.step, mean_return=self.state.last_eval, returns=returns,
                           updates=self.agent.updates)
        logger.info("eval at step %d: mean return %.1f over %d episodes", self.state.step,
                    self.state.last_eval, len(returns))

    def checkpoint(self) -> None:
        """Commit the pool durably, then write the checkpoint atomically (in that order, so that
        the pool always holds at least the steps the checkpoint counts)."""
        self.pool.flush(fsync=True)
        save_checkpoint(self.checkpoint_path, {
            "agent": self.agent.state_dict(), "rng": capture_rng(self.rng), "run_state": asdict(self.state),
            "config": asdict(self.config), "pool_path": os.path.abspath(self.pool.path),
        })
        logger.info("checkpoint at step %d (updates %d, pool committed %d steps)", self.state.step,
                    self.agent.updates, self.pool.next_step_id)

    def _finish(self, elapsed_s: float, updates: int) -> dict:
        if self.state.step != (self.resumed_from or 0) and self.state.step % self.config.checkpoint_every:
            self.checkpoint()
        summary = {"steps": self.state.step, "episodes": self.state.episodes,
                   "episodes_cut_off": int(self.pool.episodes()["cut_off"].sum()), "updates": self.agent.updates,
                   "mean_return_last_eval_episodes": mean_last_eval_return(self.metrics.path),
                   "updates_per_s": updates / elapsed_s if elapsed_s > 0 else None,
                   "resumed_from": self.resumed_from, "pool": os.path.abspath(self.pool.path)}
        plot_learning_curve(self.metrics.path, os.path.join(self.run_dir, PLOT_NAME),
                            f"SAC on {self.config.env_id} (pool: {self.config.pool_name})", "environment steps")
        write_run_json(self.run_dir, SUMMARY_NAME, summary)
        return summary

    def close(self) -> None:
        self.metrics.close()
        self.recorder.close()
        self.pool.close()
        if self.offline is not None:
            self.offline.close()


OFFLINE_FIELDS = ("obs", "action", "reward", "next_obs", "terminated")  # what a SAC update reads


def open_offline(path: str, env) -> Store:
    """The prior-data pool of ``--offline-data``, opened read-only (it is never written), checked
    against the env: the fields SAC reads, with the env's observation and action shapes."""
    pool = open_pool(path, "r")
    schema = pool.schema
    names = list(schema) if schema is not None else []
    missing = [name for name in OFFLINE_FIELDS if name not in names]
    shapes = {"obs": env.observation_space.shape, "next_obs": env.observation_space.shape,
              "action": env.action_space.shape}
    wrong = [f"{name} {tuple(schema[name].shape)} (the env's: {tuple(shape)})" for name, shape in shapes.items()
             if schema is not None and name in names and int(np.prod(schema[name].shape)) != int(np.prod(shape))]
    if missing or wrong or not len(pool):
        pool.close()
        problem = (f"lacks the fields {missing}" if missing else f"has other shapes: {', '.join(wrong)}" if wrong
                   else "holds no committed transition")
        raise SchemaError(f"--offline-data {path} {problem}; mix in a pool recorded on the same env (it stores "
                          f"{names})")
    return pool


def ended_episodes(pool) -> dict[str, np.ndarray]:
    """The pool's episodes that ended (terminated or truncated), in the order they ended."""
    if pool.schema is None:  # nothing recorded yet: the episode table comes with the first row
        return {"episode_id": np.zeros(0, np.int64), "last_step_id": np.zeros(0, np.int64), "return": np.zeros(0)}
    table = pool.episodes()
    ended = table["terminated"] | table["truncated"]
    order = np.argsort(table["last_step_id"][ended], kind="stable")
    return {name: column[ended][order] for name, column in table.items()}


def save_config(run_dir: str, config) -> None:
    """Write the run's ``config.json`` (an OnlineConfig or OfflineConfig, or its dict)."""
    write_run_json(run_dir, CONFIG_NAME, config if isinstance(config, dict) else asdict(config))
