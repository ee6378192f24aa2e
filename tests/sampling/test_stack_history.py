"""sampling/stacks.py's history against a model that walks each episode back row by row."""

import numpy as np
import pytest

from expstore.sampling.stacks import history


def _layout(seed: int, envs: int, rows: int, slots: int):
    """Rows of ``envs`` sub-envs in a random interleaving, episodes of random lengths; the
    bookkeeping arrays indexed by slot (step % slots) for steps [rows - slots, rows)."""
    rng = np.random.default_rng(seed)
    env_of = rng.integers(0, envs, rows) if envs > 1 else np.zeros(rows, np.int64)
    episode_id, episode_step = np.zeros(rows, np.int64), np.zeros(rows, np.int64)
    next_id, open_episode, index = 0, {}, {}
    for step, env in enumerate(env_of.tolist()):
        if env not in open_episode or rng.random() < 0.08:
            open_episode[env], index[env] = next_id, 0
            next_id += 1
        episode_id[step], episode_step[step] = open_episode[env], index[env]
        index[env] += 1
    next_delta = np.zeros(rows, np.int64)
    last_of: dict[int, int] = {}
    for step in range(rows):
        previous = last_of.get(int(episode_id[step]))
        if previous is not None:
            next_delta[previous] = step - previous
        last_of[int(episode_id[step])] = step
    views = [np.zeros(slots, np.int64) for _ in range(3)]
    for step in range(max(0, rows - slots), rows):
        for view, values in zip(views, (next_delta, episode_id, episode_step), strict=True):
            view[step % slots] = values[step]
    return views, episode_id, episode_step


def _model(steps, length, low, episode_id, episode_step):
    out = np.full((len(steps), length), -1, np.int64)
    complete = np.ones(len(steps), bool)
    for row, step in enumerate(steps.tolist()):
        out[row, -1] = step
        episode, index = episode_id[step], episode_step[step]
        for back in range(1, length):
            if index - back < 0:
                break
            found = [t for t in range(low, step) if episode_id[t] == episode and episode_step[t] == index - back]
            if not found:
                complete[row] = False
                out[row, :-1] = -1
                break
            out[row, -1 - back] = found[0]
    return out, complete


@pytest.mark.parametrize("envs", [1, 3])
@pytest.mark.parametrize("seed", range(6))
def test_history_equals_walking_each_episode_back(envs, seed):
    rows, slots, length = 900, 600, 4
    (next_delta, episode_id_view, episode_step_view), episode_id, episode_step = _layout(seed, envs, rows, slots)
    low = rows - slots + 37  # the window's oldest step: stacks reaching below it are incomplete
    steps = np.random.default_rng(seed + 100).integers(low, rows - 1, 200)
    got = history(steps, length, low, slots, next_delta, episode_id_view, episode_step_view)
    expected = _model(steps, length, low, episode_id, episode_step)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])
