"""Online SAC: act in the env, record every step into a pool on disk, learn from samples of it.

The run directory holds the pool, ``checkpoint.pt``, ``config.json``, ``metrics.jsonl``,
``train.log`` and ``learning_curve.png``. Starting on an existing run directory resumes: the
pool is reopened in place (mode ``a``, no copy, nothing loaded into RAM) and the agent continues
from the checkpoint. The environment step counter is the pool's ``next_step_id``, so
transitions committed after the last checkpoint count as collected and are trained on.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..opening import open as open_pool
from ..recency import ERE_C_MIN, ERE_ETA, ERESchedule
from ..sac import SAC, SACConfig
from ..torch_feed import Prefetcher
from .checkpoint import (
    CHECKPOINT_NAME,
    capture_rng,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng,
    save_checkpoint,
)
from .envs import evaluate, make_env, obs_units, recording_env
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
    log_interval_s: float = 5.0
    device: str = "cpu"
    sac: SACConfig = field(default_factory=SACConfig)
    ere: bool = False  # Emphasizing Recent Experience: sample the newest c_k rows (expstore/recency.py)
    ere_eta: float = ERE_ETA
    ere_c_min: int = ERE_C_MIN

    @classmethod
    def from_dict(cls, values: dict) -> OnlineConfig:
        return cls(**{**values, "sac": SACConfig(**values["sac"])})


@dataclass
class RunState:
    """Counters a checkpoint carries besides the agent."""

    step: int = 0
    episodes: int = 0
    eval_count: int = 0
    recent_returns: list = field(default_factory=list)
    last_eval: float | None = None


class OnlineRun:
    """One online run in a run directory (fresh or resumed)."""

    def __init__(self, run_dir: str, config: OnlineConfig):
        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        remove_stale_temporaries(run_dir)
        self.checkpoint_path = os.path.join(run_dir, CHECKPOINT_NAME)
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.env = make_env(config.env_id)
        self.pool = open_pool(os.path.join(run_dir, config.pool_name), "a", capacity=config.capacity,
                              attrs={"env_id": config.env_id, "gamma": config.sac.gamma,
                                     "written_by": "expstore.train (SAC)"})
        self.recorder = recording_env(self.env, self.pool)
        space = self.env.action_space
        self.agent = SAC(obs_units(self.env), space.low, space.high, config.sac, config.device)
        self.state = RunState()
        self.resumed_from: int | None = None
        self._restore()
        self.metrics = MetricsFile(os.path.join(run_dir, METRICS_NAME))
        self.progress = Progress(config.total_steps, config.sac.batch_size, config.log_interval_s,
                                 self.state.step, self.agent.updates)
        self.progress.episodes = self.state.episodes
        self.progress.recent_returns.extend(self.state.recent_returns)
        self.progress.last_eval = self.state.last_eval

    def _restore(self) -> None:
        checkpoint = load_checkpoint(self.checkpoint_path)
        if checkpoint is not None:
            self.agent.load_state_dict(checkpoint["agent"])
            restore_rng(checkpoint["rng"], self.rng)
            self.state = RunState(**checkpoint["run_state"])
            self.resumed_from = self.state.step
        committed = self.pool.next_step_id
        if checkpoint is not None or committed:
            logger.info("resuming in %s: checkpoint at step %s, updates %d; the pool holds %d committed steps",
                        self.run_dir, self.resumed_from, self.agent.updates, committed)
        self.state.step = committed  # every committed transition was collected: count it
        self.recorder.policy_version = self.agent.updates

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        """Train until ``total_steps`` environment steps; returns a summary."""
        config = self.config
        obs, _ = self.recorder.reset(seed=config.seed + self.state.episodes)
        self.env.action_space.seed(config.seed + self.state.step)
        episode_return, batches = 0.0, None
        start_time, start_updates = time.monotonic(), self.agent.updates
        try:
            while self.state.step < config.total_steps:
                if batches is None and self.state.step >= config.learning_starts:
                    batches = self._prefetcher()
                obs, episode_return = self._env_step(obs, episode_return)
                if batches is not None:
                    self._learn(batches)
                self._periodic()
        finally:
            if batches is not None:
                batches.close()
        return self._finish(time.monotonic() - start_time, self.agent.updates - start_updates)

    def _prefetcher(self) -> Prefetcher:
        batch_size = self.config.sac.batch_size
        if not self.config.ere:
            return Prefetcher(lambda: self.pool.sample(batch_size, rng=self.rng), depth=self.config.prefetch_depth,
                              device=self.config.device)
        schedule = ERESchedule(self._ere_phase_updates(), self.config.ere_eta, self.config.ere_c_min)
        return Prefetcher(lambda: self.pool.sample(batch_size, rng=self.rng, recency=schedule.next()),
                          depth=self.config.prefetch_depth, device=self.config.device)

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
        self.state.episodes += 1
        self.progress.episodes = self.state.episodes
        self.progress.recent_returns.append(episode_return)
        self.metrics.write("episode", self.state.step, episode=self.state.episodes, **{"return": episode_return})

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
        self.state.recent_returns = list(self.progress.recent_returns)
        save_checkpoint(self.checkpoint_path, {
            "agent": self.agent.state_dict(), "rng": capture_rng(self.rng), "run_state": asdict(self.state),
            "config": asdict(self.config), "pool_path": os.path.abspath(self.pool.path),
        })
        logger.info("checkpoint at step %d (updates %d, pool committed %d steps)", self.state.step,
                    self.agent.updates, self.pool.next_step_id)

    def _finish(self, elapsed_s: float, updates: int) -> dict:
        if self.state.step != (self.resumed_from or 0) and self.state.step % self.config.checkpoint_every:
            self.checkpoint()
        summary = {"steps": self.state.step, "episodes": self.state.episodes, "updates": self.agent.updates,
                   "mean_return_last_eval_episodes": mean_last_eval_return(self.metrics.path),
                   "updates_per_s": updates / elapsed_s if elapsed_s > 0 else None,
                   "resumed_from": self.resumed_from, "pool": os.path.abspath(self.pool.path)}
        plot_learning_curve(self.metrics.path, os.path.join(self.run_dir, PLOT_NAME),
                            f"SAC on {self.config.env_id} (pool: {self.config.pool_name})")
        write_run_json(self.run_dir, SUMMARY_NAME, summary)
        return summary

    def close(self) -> None:
        self.metrics.close()
        self.recorder.close()
        self.pool.close()


def save_config(run_dir: str, config: OnlineConfig | dict) -> None:
    write_run_json(run_dir, CONFIG_NAME, config if isinstance(config, dict) else asdict(config))
