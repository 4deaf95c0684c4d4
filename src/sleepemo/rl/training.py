"""What both heads' fold training shares (:func:`sleepemo.rl.heads.run_dqn_fold`,
:func:`sleepemo.rl.sac.run_sac_fold`): the refusal of the held-out participant's labels,
the inner split, the learning curves (one :class:`Curve` per network: the SB3 head's
through the callback :class:`Curves`, the twin's as its step callback) and the curves
as checkpoint tensors.
"""
from __future__ import annotations

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger


def quiet_logger() -> Logger:
    """An SB3 logger with no output: without one, every ``learn`` creates an empty
    ``$TMPDIR/SB3-<date>`` folder (SB3's default logger, even at ``verbose=0``); the
    learning curves are recorded by :class:`Curves` instead."""
    return Logger(folder=None, output_formats=[])


def refuse_held_out(labels: dict, held: int, k: int) -> None:
    """A fold's training labels must not include its held-out participant's."""
    if held in labels:
        raise ValueError(f"participant {held} is held out in fold {k}: its labels must not "
                         "reach the training")


def inner_split(cfg, labels: dict, seed: int, k: int) -> tuple[list, list]:
    """Fold k's inner participants (``rl.n_inner_val`` of its training participants,
    drawn by the fold's seed; the same for both heads) and the others."""
    rng = np.random.default_rng([seed, k, 5])
    subjects = sorted(labels)
    inner = sorted(int(s) for s in rng.choice(subjects, size=min(cfg.n_inner_val,
                                                                  len(subjects) - 1),
                                              replace=False))
    return inner, [s for s in subjects if s not in inner]


class Curve:
    """A learning curve: ``[step, evaluate(model)]`` every ``every`` steps and at the
    last one, ``total``. Called as ``curve(step, model)``: a twin's training callback
    as it is, an SB3 head's through :class:`Curves`."""

    def __init__(self, evaluate, every: int, total: int):
        self.evaluate, self.every, self.total = evaluate, every, total
        self.points: list = []

    def __call__(self, step: int, model) -> None:
        if step % self.every == 0 or step == self.total:
            self.points.append([step, self.evaluate(model)])


class Curves(BaseCallback):
    """The SB3 callback of both heads: every finished episode's reward (divided by
    ``per_step``), the head's :class:`Curve` at its environment step, a tick of
    ``progress`` per step."""

    def __init__(self, curve: Curve, per_step: int = 1, progress=None):
        super().__init__()
        self.curve, self.per_step, self.progress = curve, per_step, progress
        self.episode_reward: list = []

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"]):
            if done and "episode_reward" in info:
                self.episode_reward.append([self.num_timesteps,
                                            info["episode_reward"] / self.per_step])
        self.curve(self.num_timesteps, self.model)
        if self.progress:
            self.progress()
        return True


def curve_tensors(curves: dict) -> dict:
    """Curves (lists of ``[x, y]``) as float64 tensors (n, 2): a checkpoint's entries."""
    return {key: torch.tensor(v, dtype=torch.float64).reshape(-1, 2)
            for key, v in curves.items()}
