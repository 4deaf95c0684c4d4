"""Simulated stacks of out-of-fold predictions, to test the ensembler without a run.

:func:`simulated_stack` draws, for ``n_subjects`` participants with balanced labels, the
per-timepoint outputs of several models. Model ``m``'s output for a trial of class ``y``
(0/1) is the logistic of

    strength_m * a_{m,p} * (2y - 1) * profile(t)  +  trial offset  +  smooth noise(t)

- ``profile``: 1 over the middle 30 % of the trial (35-65 % of its timepoints), 0.5
  elsewhere (models whose outputs carry the class over the whole trial, more in a window,
  as a trial-level model's output does: the metric's window is then the whole trial);
- ``a_{m,p}`` ~ U(0.5, 1.5): how well model ``m`` works on participant ``p`` (strength
  varies per person, the sign does not);
- the trial offset ~ N(0, 1) (constant over time: real models' outputs move as a whole
  with the trial) and the noise N(0, 1) smoothed along time with a Gaussian of sigma 3
  samples and rescaled to sd 1 (real outputs are smooth in time);
- every model's noise is independent of the others'; ``strength_m = 0`` is pure noise.

So two informative models are complementary (their noises average out in a blend), and the
pure-noise ones only add variance. Everything is drawn from ``numpy.random.default_rng``
with ``seed``.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from sleepemo.ensemble.blend import Stack


def simulated_stack(strengths: dict, n_subjects: int = 14, n_trials: int = 40,
                    n_times: int = 60, seed: int = 0, shuffle_labels: bool = False
                    ) -> tuple[Stack, np.ndarray]:
    """A :class:`Stack` of models named by ``strengths`` (name -> effect size, 0: noise)
    and its labels ``y`` (see the module docstring). ``shuffle_labels``: the labels
    returned are permuted within each participant after the outputs were drawn (the
    label-shuffle alarm: no model then carries any information)."""
    rng = np.random.default_rng(seed)
    subjects = np.repeat(np.arange(n_subjects), n_trials)
    y = np.concatenate([rng.permutation(np.arange(n_trials) % 2) for _ in range(n_subjects)])
    t = np.arange(n_times)
    profile = 0.5 + 0.5 * ((t >= 0.35 * n_times) & (t < 0.65 * n_times))
    sign = (2 * y - 1)[:, None]
    preds = {}
    for name, strength in strengths.items():
        a = rng.uniform(0.5, 1.5, n_subjects)[subjects][:, None]
        noise = gaussian_filter1d(rng.normal(0, 1, (y.size, n_times)), 3.0, axis=1)
        noise /= noise.std()
        z = strength * a * sign * profile + rng.normal(0, 1, (y.size, 1)) + noise
        preds[name] = (1 / (1 + np.exp(-z))).astype(np.float32)
    if shuffle_labels:
        y = np.concatenate([rng.permutation(y[subjects == s]) for s in range(n_subjects)])
    return Stack(preds, subjects), y
