"""The DQN head's environment: one training trial per step, the action is the class.

An episode presents ``episode_len`` trials of the fold's training participants in an
order drawn by the environment's seeded generator (``reset(seed=...)``); the
observation is the trial's features (:class:`sleepemo.rl.features.FoldFeatures`: a
``series`` array and a ``stats`` vector), never its label; the reward is 1 for the right
class and 0 otherwise. The next trial does not depend on the action (the EEG does not
react to the prediction): this is a contextual bandit, which is why the stage trains
DQN with ``gamma = 0`` by default and why RL can at best match its supervised twin.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def observation_space(series_shape, stats_shape) -> spaces.Dict:
    """What the DQN sees of one trial: ``series`` (n_series, n_times) and ``stats``
    (n_stats,); also what a saved DQN's network is rebuilt on
    (:func:`sleepemo.rl.heads.q_network`)."""
    return spaces.Dict({
        "series": spaces.Box(-np.inf, np.inf, tuple(series_shape), np.float32),
        "stats": spaces.Box(-np.inf, np.inf, tuple(stats_shape), np.float32)})


class TrialEnv(gym.Env):
    """See the module docstring.

    Parameters
    ----------
    series : array (n_trials, n_series, n_times)
    stats : array (n_trials, n_stats)
    labels : array (n_trials,) of 0/1
    episode_len : int
        Trials per episode (at most ``n_trials``).
    """

    metadata = {"render_modes": []}

    def __init__(self, series: np.ndarray, stats: np.ndarray, labels: np.ndarray,
                 episode_len: int = 64):
        super().__init__()
        labels = np.asarray(labels)
        if not len(series) == len(stats) == len(labels) > 0:
            raise ValueError(f"{len(series)} series, {len(stats)} stats and {len(labels)} "
                             "labels: one of each per trial, at least one trial")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("labels must be 0 (neutral) or 1 (emotional)")
        self.series = np.ascontiguousarray(series, dtype=np.float32)
        self.stats = np.ascontiguousarray(stats, dtype=np.float32)
        self.labels = labels.astype(np.int64)
        self.episode_len = int(min(episode_len, len(labels)))
        self.observation_space = observation_space(self.series.shape[1:],
                                                   self.stats.shape[1:])
        self.action_space = spaces.Discrete(2)
        self._order = np.arange(self.episode_len)
        self._i, self._total = 0, 0.0

    def _obs(self, i: int) -> dict:
        # copies: a caller may keep or modify what it was given (gymnasium's rule)
        return {"series": self.series[i].copy(), "stats": self.stats[i].copy()}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._order = self.np_random.permutation(len(self.labels))[:self.episode_len]
        self._i, self._total = 0, 0.0
        return self._obs(self._order[0]), {}

    def step(self, action):
        trial = self._order[self._i]
        reward = float(int(action) == self.labels[trial])
        self._i += 1
        self._total += reward
        terminated = self._i >= self.episode_len
        # after the last trial the observation is never acted on: repeat the last one
        nxt = trial if terminated else self._order[self._i]
        info = {"trial": int(trial)}
        if terminated:
            info["episode_reward"] = self._total
        return self._obs(nxt), reward, terminated, False, info
