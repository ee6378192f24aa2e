"""Record real preprocessed Atari frames (84x84 grayscale, frame skip 4) for benchmarks and tests.

Never imported by expstore/. The frames come from ale-py, whose wheel ships the ROMs, so nothing
downloads at run time (`pip install -e ".[atari]"`). Preprocessing is gymnasium's
`AtariPreprocessing` with its defaults (up to 30 no-op starts, frame skip 4, max over the last two
frames, 84x84 grayscale), on the v5 environments (sticky actions with probability 0.25).

A recording holds one row per agent step: `frames[t]` is the observation the policy saw before
`actions[t]`, `rewards[t]`, `terminated[t]` and `truncated[t]` come from that step. When step t
ends an episode, the observation the env returned with it (the final observation) is kept in
`final_frames`, in the order of `final_steps`; `frames[t + 1]` is then the first frame of the
next episode. `next_frames()` builds the full next-observation column from both.

Used as a library (`from tools.atari_frames import record`) or from the command line:

    python tools/atari_frames.py --game Pong --steps 10000 --cache-dir runs/atari-cache
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GAMES = ("Pong", "Breakout", "Seaquest", "MsPacman")
FRAME_SHAPE = (84, 84)
_CACHE_FORMAT = 1

log = logging.getLogger(__name__)

Policy = Callable[[np.ndarray], int]


@dataclass(frozen=True)
class AtariRecording:
    """Per-step columns of one recorded run (see the module docstring for their meaning)."""

    game: str
    frames: np.ndarray  # (n, 84, 84) uint8
    actions: np.ndarray  # (n,) int64
    rewards: np.ndarray  # (n,) float32
    terminated: np.ndarray  # (n,) bool
    truncated: np.ndarray  # (n,) bool
    final_steps: np.ndarray  # (m,) int64, the steps that ended an episode
    final_frames: np.ndarray  # (m, 84, 84) uint8, the observation returned with each of them
    after_last: np.ndarray  # (84, 84) uint8, the observation the env returned with the last step
    n_actions: int
    seed: int

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated

    def next_frames(self) -> np.ndarray:
        """The observation after every step: the next row's frame, or the final one at episode ends."""
        nxt = np.empty_like(self.frames)
        nxt[:-1] = self.frames[1:]
        if len(self.frames):
            nxt[-1] = self.after_last
        nxt[self.final_steps] = self.final_frames
        return nxt


def make_env(game: str, *, seed: int = 0, max_episode_steps: int | None = None,
             frame_skip: int = 4, noop_max: int = 30, terminal_on_life_loss: bool = False,
             render_mode: str | None = None):
    """A v5 ALE env with gymnasium's standard Atari preprocessing: (84, 84) uint8 observations."""
    try:
        import ale_py
        import gymnasium
        from gymnasium.wrappers import AtariPreprocessing, TimeLimit
    except ImportError as exc:  # pragma: no cover - the message is the point
        raise ImportError('recording Atari frames needs ale-py: pip install -e ".[atari]"') from exc
    gymnasium.register_envs(ale_py)
    env = gymnasium.make(f"ALE/{game}-v5", frameskip=1, render_mode=render_mode)
    env = AtariPreprocessing(env, noop_max=noop_max, frame_skip=frame_skip, screen_size=84,
                             terminal_on_life_loss=terminal_on_life_loss, grayscale_obs=True)
    if max_episode_steps is not None:
        env = TimeLimit(env, max_episode_steps=max_episode_steps)
    env.action_space.seed(seed)
    return env


def record(game: str, n_steps: int, *, seed: int = 0, epsilon: float = 1.0, policy: Policy | None = None,
           max_episode_steps: int | None = None, cache_dir: str | os.PathLike | None = None,
           progress: bool = False) -> AtariRecording:
    """Play `game` for `n_steps` agent steps and return every frame, action, reward and episode end.

    Args:
        game: an ALE game name such as "Pong", "Breakout", "Seaquest" or "MsPacman".
        n_steps: agent steps (transitions) to record; episodes reset as they end.
        seed: seeds the env's first reset, its action space and the policy's coin flips.
        epsilon: with probability epsilon the action is uniform random, else `policy(frame)`.
            The default 1.0 (or `policy=None`) is a uniformly random policy.
        policy: the greedy part of an epsilon-greedy policy, given the current (84, 84) frame.
        max_episode_steps: truncate episodes after this many agent steps (None: the game's own limit).
        cache_dir: when given, the recording is loaded from / saved to a .npz file there, keyed by
            every argument above except `policy` (pass a cache only with the default policy or a
            deterministic one).
        progress: log a line every 10,000 steps.
    """
    path = _cache_path(cache_dir, game, n_steps, seed, epsilon, max_episode_steps, policy) if cache_dir else None
    if path is not None and path.exists():
        return _first(load(path), n_steps)
    recording = _play(game, n_steps, seed=seed, epsilon=epsilon, policy=policy,
                      max_episode_steps=max_episode_steps, progress=progress)
    if path is not None:
        save(recording, path)
    return recording


def _play(game: str, n_steps: int, *, seed: int, epsilon: float, policy: Policy | None,
          max_episode_steps: int | None, progress: bool) -> AtariRecording:
    env = make_env(game, seed=seed, max_episode_steps=max_episode_steps)
    n_actions = int(env.action_space.n)
    rng = np.random.default_rng(seed)
    frames = np.empty((n_steps, *FRAME_SHAPE), np.uint8)
    actions = np.empty(n_steps, np.int64)
    rewards = np.empty(n_steps, np.float32)
    terminated = np.zeros(n_steps, bool)
    truncated = np.zeros(n_steps, bool)
    final_steps: list[int] = []
    final_frames: list[np.ndarray] = []
    obs, _ = env.reset(seed=seed)
    returned = obs
    started = time.monotonic()
    for step in range(n_steps):
        frames[step] = obs
        explore = policy is None or rng.random() < epsilon
        actions[step] = int(rng.integers(n_actions)) if explore else int(policy(obs))
        obs, reward, terminated[step], truncated[step], _ = env.step(actions[step])
        rewards[step] = reward
        returned = obs
        if terminated[step] or truncated[step]:
            final_steps.append(step)
            final_frames.append(obs)
            obs, _ = env.reset()
        if progress and (step + 1) % 10_000 == 0:
            rate_per_s = (step + 1) / (time.monotonic() - started)
            log.info("%s: %d/%d steps, %.0f steps/s", game, step + 1, n_steps, rate_per_s)
    env.close()
    return AtariRecording(
        game=game, frames=frames, actions=actions, rewards=rewards, terminated=terminated, truncated=truncated,
        final_steps=np.asarray(final_steps, np.int64),
        final_frames=np.asarray(final_frames, np.uint8).reshape(-1, *FRAME_SHAPE),
        after_last=np.asarray(returned if n_steps else obs, np.uint8),
        n_actions=n_actions, seed=seed)


def save(recording: AtariRecording, path: str | os.PathLike) -> None:
    """Write `recording` to a compressed .npz at `path`, atomically (a killed save leaves no half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(
                handle, frames=recording.frames, actions=recording.actions, rewards=recording.rewards,
                terminated=recording.terminated, truncated=recording.truncated,
                final_steps=recording.final_steps, final_frames=recording.final_frames,
                after_last=recording.after_last,
                meta=np.asarray(json.dumps({"game": recording.game, "n_actions": recording.n_actions,
                                            "seed": recording.seed, "format": _CACHE_FORMAT})))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike) -> AtariRecording:
    """Read a recording written by `save`."""
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        recording = AtariRecording(
            game=meta["game"], frames=data["frames"], actions=data["actions"], rewards=data["rewards"],
            terminated=data["terminated"], truncated=data["truncated"], final_steps=data["final_steps"],
            final_frames=data["final_frames"], after_last=data["after_last"], n_actions=int(meta["n_actions"]),
            seed=int(meta["seed"]))
    return recording


def _cache_path(cache_dir, game, n_steps, seed, epsilon, max_episode_steps, policy) -> Path:
    import ale_py  # the ALE version is part of the key: another release may emulate differently

    key = json.dumps([_CACHE_FORMAT, game, seed, float(epsilon if policy is not None else 1.0),
                      max_episode_steps, getattr(policy, "__qualname__", None), ale_py.__version__])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    # A longer recording with the same key starts with this one (same seeds, same emulator): reuse it.
    for cached in sorted(Path(cache_dir).glob(f"atari-{game}-*-{digest}.npz")):
        if int(cached.name.split("-")[2]) >= n_steps:
            return cached
    return Path(cache_dir) / f"atari-{game}-{n_steps}-{digest}.npz"


def _first(recording: AtariRecording, n_steps: int) -> AtariRecording:
    """The first ``n_steps`` steps of a longer recording."""
    if len(recording) == n_steps:
        return recording
    ends = recording.final_steps < n_steps
    last_done = bool(recording.done[n_steps - 1])
    after = recording.final_frames[ends][-1] if last_done else recording.frames[n_steps]
    return AtariRecording(
        game=recording.game, frames=recording.frames[:n_steps], actions=recording.actions[:n_steps],
        rewards=recording.rewards[:n_steps], terminated=recording.terminated[:n_steps],
        truncated=recording.truncated[:n_steps], final_steps=recording.final_steps[ends],
        final_frames=recording.final_frames[ends], after_last=after, n_actions=recording.n_actions,
        seed=recording.seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--game", action="append", choices=GAMES, help="repeatable; default: all four")
    parser.add_argument("--steps", type=int, default=10_000, help="agent steps per game")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-episode-steps", type=int, default=None)
    parser.add_argument("--cache-dir", default=None, help="save the recordings there as .npz (reused next time)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for game in args.game or GAMES:
        recording = record(game, args.steps, seed=args.seed, max_episode_steps=args.max_episode_steps,
                           cache_dir=args.cache_dir, progress=True)
        print(f"{game}: {len(recording)} steps, {len(recording.final_steps)} episode ends, "
              f"{int(recording.terminated.sum())} terminated, {int(recording.truncated.sum())} truncated, "
              f"reward sum {float(recording.rewards.sum()):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
