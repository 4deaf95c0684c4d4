"""How sure a LOPO score is: participant-bootstrap intervals of the window AUC.

A result's LOPO score averages its held-out participants' per-timepoint AUC curves and
scores the mean curve's window (:mod:`sleepemo.metric`). Its uncertainty comes mostly
from which participants happen to be in the data, so the bootstrap resamples
*participants*: each replicate draws ``n`` of the ``n`` participants with replacement,
averages their curves (the curves are computed once, never the AUCs again) and scores
that mean curve with :func:`~sleepemo.metric.score_from_curve`, so the window search is
inside the bootstrap. The 95% interval is the 2.5th and 97.5th percentile of the
replicates (numpy's default linear interpolation).

Two results compared on the same replicates (the same drawn participants for both) give
a paired difference and its interval: narrower than either score's interval, since what
is common to both models on a participant cancels. Every result of a run is compared
with the best single model (:func:`sleepemo.pipeline.choice.best_single`).

The draws are seeded with a fixed constant (:data:`SEED`), not the run's seed, so the
same results always give the same table; a result's own interval depends only on its
curves and the number of participants, not on the other results of the run.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from sleepemo.metric import default_min_run, score_from_curve
from sleepemo.pipeline.choice import best_single

#: Bootstrap replicates of every interval.
N_BOOT = 2000
#: Seed of the participant draws (``numpy.random.default_rng(SEED)``).
SEED = 0
#: Coverage of the percentile intervals.
CONFIDENCE = 0.95
#: ``lopo.csv``'s interval columns, in order, placed after ``overall``.
COLUMNS = ("ci_low", "ci_high", "diff_to_best", "diff_low", "diff_high")


def resample(n_participants: int, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """Participant draws of the bootstrap.

    Parameters
    ----------
    n_participants : int
        Participants to draw from (>= 1).
    n_boot : int
        Replicates (>= 1).
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    np.ndarray of int, shape (n_boot, n_participants)
        Row b: the participants (indices) of replicate b, drawn with replacement.
    """
    if n_participants < 1 or n_boot < 1:
        raise ValueError(f"need at least one participant and one replicate, got "
                         f"{n_participants} participants and {n_boot} replicates")
    return np.random.default_rng(seed).integers(0, n_participants,
                                                size=(n_boot, n_participants))


def bootstrap_scores(curves: np.ndarray, min_run: int, draws: np.ndarray) -> np.ndarray:
    """The window AUC of every replicate.

    Parameters
    ----------
    curves : np.ndarray, shape (n_participants, n_times) or (n_models, n_participants, n_times)
        Per-participant AUC curves (of one model, or of several on the same participants).
    min_run : int
        Shortest qualifying run in samples (:func:`~sleepemo.metric.default_min_run`).
    draws : np.ndarray of int, shape (n_boot, n_participants)
        Participants of each replicate (:func:`resample`); the same for every model, so
        the replicates of two models are paired.

    Returns
    -------
    np.ndarray, shape (n_boot,) or (n_models, n_boot)
        Replicate b's score: :func:`~sleepemo.metric.score_from_curve` of the mean of the
        curves of ``draws[b]``.
    """
    curves = np.asarray(curves, dtype=float)
    draws = np.asarray(draws)
    if curves.ndim not in (2, 3):
        raise ValueError(f"curves must be (n_participants, n_times) or (n_models, "
                         f"n_participants, n_times), got shape {curves.shape}")
    n = curves.shape[-2]
    if draws.ndim != 2 or draws.shape[1] != n or draws.size == 0:
        raise ValueError(f"draws must be (n_boot, {n}) participant indices, got shape "
                         f"{draws.shape}")
    if draws.min() < 0 or draws.max() >= n:
        raise ValueError(f"draws must index the {n} participants (0..{n - 1})")
    # how often each participant is drawn: the replicate's mean curve is counts @ curves / n
    counts = np.zeros(draws.shape)
    np.add.at(counts, (np.arange(draws.shape[0])[:, None], draws), 1.0)
    means = counts @ curves / n  # (n_boot, n_times) or (n_models, n_boot, n_times)
    scores = np.array([score_from_curve(mean, min_run)[0]
                       for mean in means.reshape(-1, means.shape[-1])])
    return scores.reshape(means.shape[:-1])


def percentile_interval(replicates: np.ndarray, confidence: float = CONFIDENCE
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap replicates (along the last axis).

    Returns
    -------
    low, high : np.ndarray (or float for 1-D ``replicates``)
        The ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles, numpy's
        default (linear) interpolation.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail], axis=-1)
    return low, high


def add_intervals(table: pd.DataFrame, scores: dict, sfreq: float, n_boot: int = N_BOOT,
                  seed: int = SEED) -> pd.DataFrame:
    """``table`` with the interval columns :data:`COLUMNS` after ``overall``.

    Parameters
    ----------
    table : pandas.DataFrame
        A LOPO table (:func:`sleepemo.pipeline.evidence.results_table`), one row per result.
    scores : dict
        Row label -> :class:`~sleepemo.metric.WindowAUC` of that result (its
        ``per_subject`` curves; every result on the same participants).
    sfreq : float
        Sampling rate (the shortest run of the metric).

    Returns
    -------
    pandas.DataFrame
        A copy with ``ci_low``, ``ci_high`` (the score's interval), ``diff_to_best`` (the
        score minus the best single model's, unrounded scores), ``diff_low`` and
        ``diff_high`` (its paired interval), rounded to 4 decimals like ``overall``; the
        difference columns are empty when the run has no single model.
    """
    models = list(table.index)
    subjects = list(scores[models[0]].per_subject)
    for m in models:
        if list(scores[m].per_subject) != subjects:
            raise ValueError(f"{m} is scored on participants {list(scores[m].per_subject)}, "
                             f"{models[0]} on {subjects}: intervals need the same ones")
    curves = np.stack([np.stack([scores[m].per_subject[s] for s in subjects])
                       for m in models])
    reps = bootstrap_scores(curves, default_min_run(sfreq), resample(len(subjects), n_boot,
                                                                     seed))
    low, high = percentile_interval(reps)
    columns = {"ci_low": low, "ci_high": high}
    best = best_single(table)
    if best is None:
        columns |= {c: np.full(len(models), np.nan) for c in COLUMNS[2:]}
    else:
        b = models.index(best[0])
        point = np.array([scores[m].score for m in models]) - scores[best[0]].score
        diff_low, diff_high = percentile_interval(reps - reps[b])
        columns |= {"diff_to_best": point, "diff_low": diff_low, "diff_high": diff_high}
    out = table.copy()
    at = list(out.columns).index("overall") + 1
    for i, c in enumerate(COLUMNS):
        out.insert(at + i, c, np.round(columns[c], 4) + 0.0)  # + 0.0: no "-0.0"
    return out


def paired_difference(scores: dict, a: str, b: str, sfreq: float, n_boot: int = N_BOOT,
                      seed: int = SEED) -> tuple[float, float, float]:
    """Result ``a``'s score minus ``b``'s, with the 95% interval of that difference over
    the same participant draws (:func:`resample`) as the table's intervals.

    ``scores``: label -> :class:`~sleepemo.metric.WindowAUC` (both on the same
    participants). Returns ``(difference, low, high)``.
    """
    subjects = list(scores[a].per_subject)
    if list(scores[b].per_subject) != subjects:
        raise ValueError(f"{a} and {b} are scored on different participants")
    curves = np.stack([np.stack([scores[m].per_subject[s] for s in subjects])
                       for m in (a, b)])
    reps = bootstrap_scores(curves, default_min_run(sfreq), resample(len(subjects), n_boot,
                                                                     seed))
    low, high = percentile_interval(reps[0] - reps[1])
    return float(scores[a].score - scores[b].score), float(low), float(high)
