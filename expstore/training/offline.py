"""Offline TD3+BC: learn only from an existing pool (opened read-only); the env only evaluates.

Batches come from a background prefetch thread (``workers=0``) or from a ``DataLoader`` whose
worker processes each open the pool read-only. Checkpoints, resume and Ctrl-C work as online;
the step counter is the number of gradient updates.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..core.opening import open as open_pool
from ..errors import InvalidArgumentError
from ..integrations.torch_feed import Prefetcher, pool_loader
from .checkpoint import (
    CHECKPOINT_NAME,
    capture_rng,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng,
    save_checkpoint,
)
from .envs import action_box, evaluate, make_env, obs_units
from .interrupt import Interrupted, ignore_interrupts
from .progress import (
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
from .td3bc import TD3BC, TD3BCConfig

logger = logging.getLogger("expstore.train")
_STATS_ROWS = 200_000  # observation statistics from at most this many rows


@dataclass
class OfflineConfig:
    pool_path: str
    env_id: str = "Pendulum-v1"
    total_updates: int = 10_000
    seed: int = 0
    checkpoint_every: int = 2_000
    eval_every: int = 2_000
    eval_episodes: int = 10
    prefetch_depth: int = 2
    td3bc: TD3BCConfig = field(default_factory=TD3BCConfig)

    @classmethod
    def from_dict(cls, values: dict) -> OfflineConfig:
        """A recorded config; keys of older versions (``device``, ``workers``, ...) are dropped."""
        return from_record(cls, {**values, "td3bc": from_record(TD3BCConfig, values["td3bc"])})


def observation_stats(pool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of ``obs`` (TD3+BC normalises states with them)."""
    if len(pool) == 0:
        raise InvalidArgumentError(f"{pool.path} holds no transition to train from")
    obs = pool.sample(_STATS_ROWS, rng=0)["obs"] if len(pool) > _STATS_ROWS else pool[0:len(pool)]["obs"]
    obs = obs.reshape(obs.shape[0], -1).astype(np.float64)
    return obs.mean(axis=0), obs.std(axis=0) + 1e-3


class OfflineRun:
    def __init__(self, run_dir: str, config: OfflineConfig, invocation: Invocation | None = None):
        self.run_dir, self.config = run_dir, config
        self.invocation = invocation or Invocation()
        os.makedirs(run_dir, exist_ok=True)
        remove_stale_temporaries(run_dir)
        self.checkpoint_path = os.path.join(run_dir, CHECKPOINT_NAME)
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.pool = open_pool(config.pool_path, "r")
        env = make_env(config.env_id)
        space, n_obs = action_box(env), obs_units(env)
        env.close()
        mean, std = observation_stats(self.pool)
        self.agent = TD3BC(n_obs, space.low, space.high, mean, std, config.td3bc, self.invocation.device)
        self.eval_count = 0
        checkpoint = load_checkpoint(self.checkpoint_path)
        if checkpoint is not None:
            self.agent.load_state_dict(checkpoint["agent"])
            restore_rng(checkpoint["rng"], self.rng)
            self.eval_count = checkpoint["eval_count"]
            logger.info("resuming offline run in %s at update %d", run_dir, self.agent.updates)
        self.metrics = MetricsFile(os.path.join(run_dir, METRICS_NAME))
        self.progress = Progress(config.total_updates, config.td3bc.batch_size, self.invocation.log_interval_s,
                                 self.agent.updates, self.agent.updates)
        logger.info("offline TD3+BC from %s (%d transitions, %s), evaluating on %s", config.pool_path,
                    len(self.pool), self.pool.backend, config.env_id)

    def batches(self) -> Generator[dict[str, torch.Tensor], None, None]:
        """Endless batches: prefetched uniform samples, or shuffled epochs from DataLoader workers."""
        size, workers = self.config.td3bc.batch_size, self.invocation.workers
        if workers == 0:
            with Prefetcher(lambda: self.pool.sample(size, rng=self.rng), depth=self.config.prefetch_depth,
                            device=self.invocation.device) as prefetcher:
                yield from prefetcher
            return
        loader = pool_loader(self.config.pool_path, size, num_workers=workers, drop_last=True,
                             fields=["obs", "action", "reward", "next_obs", "terminated"],
                             seed=self.config.seed + self.agent.updates, worker_init_fn=ignore_interrupts)
        while True:
            yield from loader

    def run(self) -> dict | Interrupted:
        """Train until ``total_updates``; a summary, or Interrupted (with a checkpoint) on Ctrl-C."""
        start_time, start_updates = time.monotonic(), self.agent.updates
        stream = self.batches()
        try:
            while self.agent.updates < self.config.total_updates and not self.invocation.stop_requested:
                losses = self.agent.update(next(stream))
                self._periodic(losses)
        finally:
            stream.close()
        if self.agent.updates < self.config.total_updates:
            self.checkpoint()
            return Interrupted(self.agent.updates, "update")
        return self._finish(time.monotonic() - start_time, self.agent.updates - start_updates)

    def _periodic(self, losses: dict) -> None:
        updates = self.agent.updates
        if updates % 1_000 == 0:
            self.metrics.write("train", updates, updates=updates, **losses)
        if updates % self.config.eval_every == 0:
            self._evaluate()
        if updates % self.config.checkpoint_every == 0:
            self.checkpoint()
        self.progress.maybe_log(updates, updates, label="update")

    def _evaluate(self) -> None:
        self.eval_count += 1
        returns = evaluate(self.agent.act, self.config.env_id, self.config.eval_episodes,
                           seed=10_000 + 100 * self.eval_count)
        self.progress.last_eval = float(np.mean(returns))
        self.metrics.write("eval", self.agent.updates, mean_return=self.progress.last_eval, returns=returns,
                           updates=self.agent.updates)
        logger.info("eval at update %d: mean return %.1f over %d episodes", self.agent.updates,
                    self.progress.last_eval, len(returns))

    def checkpoint(self) -> None:
        save_checkpoint(self.checkpoint_path, {
            "agent": self.agent.state_dict(), "rng": capture_rng(self.rng), "eval_count": self.eval_count,
            "config": asdict(self.config), "pool_path": self.config.pool_path})
        logger.info("checkpoint at update %d", self.agent.updates)

    def _finish(self, elapsed_s: float, updates: int) -> dict:
        if updates and self.agent.updates % self.config.checkpoint_every:
            self.checkpoint()
        summary = {"updates": self.agent.updates, "pool": self.config.pool_path, "transitions": len(self.pool),
                   "mean_return_last_eval_episodes": mean_last_eval_return(self.metrics.path),
                   "updates_per_s": updates / elapsed_s if elapsed_s > 0 else None}
        plot_learning_curve(self.metrics.path, os.path.join(self.run_dir, PLOT_NAME),
                            f"TD3+BC on {self.config.env_id} from {os.path.basename(self.config.pool_path)}",
                            "gradient updates")
        write_run_json(self.run_dir, SUMMARY_NAME, summary)
        return summary

    def close(self) -> None:
        self.metrics.close()
        self.pool.close()
