"""The competition's "window AUC" metric.

The organisers score a submission as follows:

1. for each participant and each timepoint, the ROC AUC of the predictions across that
   participant's trials;
2. the per-timepoint AUC curves are averaged over the participants;
3. the maximal runs of consecutive timepoints where the mean AUC is strictly above 0.5
   are found;
4. runs shorter than 50 ms (10 samples at 200 Hz) are discarded and the longest
   remaining run is kept (between runs of equal length, the one with the higher mean);
5. the score is the mean AUC over that run, or 0.5 when no run qualifies.

A trial-level probability copied to every timepoint gives a flat curve, so it scores the
mean per-participant trial AUC when that is above 0.5, and 0.5 otherwise.

Run as a script to score a submission file against a solution file::

    python -m sleepemo.metric SUBMISSION.csv SOLUTION.csv [--sfreq 200]
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

#: Curve values must be strictly above this to belong to a run.
CHANCE = 0.5
#: Shortest run that counts, in seconds.
MIN_RUN_SECONDS = 0.05
SOLUTION_COLUMNS = ("subject", "trial", "label")
SUBMISSION_COLUMNS = ("id", "prediction")
#: How many offending ids an error message quotes.
N_EXAMPLES = 5


@dataclass(frozen=True, eq=False)
class WindowAUC:
    """Result of :func:`window_auc`.

    Attributes
    ----------
    score : float
        Mean of ``curve`` over ``window``, or 0.5 when there is no window.
    curve : np.ndarray, shape (n_times,)
        Per-timepoint AUC averaged over the participants (read-only).
    window : tuple of int or None
        Half-open sample range ``[start, stop)`` of the chosen run, None if no run
        qualified.
    per_subject : dict
        Subject -> its own per-timepoint AUC curve, shape (n_times,) (read-only).
    """

    score: float
    curve: np.ndarray
    window: tuple[int, int] | None
    per_subject: dict


def default_min_run(sfreq: float) -> int:
    """Shortest qualifying run in samples: 50 ms at ``sfreq``, rounded.

    Parameters
    ----------
    sfreq : float
        Sampling frequency in Hz, > 0.

    Returns
    -------
    int
        ``int(round(0.05 * sfreq))``, e.g. 10 at 200 Hz.
    """
    if not np.isfinite(sfreq) or sfreq <= 0:
        raise ValueError(f"sfreq must be a positive number of Hz, got {sfreq!r}")
    min_run = int(round(MIN_RUN_SECONDS * sfreq))
    if min_run < 1:
        raise ValueError(f"sfreq {sfreq:g} Hz is too low: {MIN_RUN_SECONDS * 1000:g} ms "
                         f"is less than one sample")
    return min_run


def per_timepoint_auc(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """ROC AUC of the predictions at each timepoint, across trials.

    Computed from ranks (ties get their average rank), which equals
    ``sklearn.metrics.roc_auc_score(y, pred[:, t])`` for every ``t``.

    Parameters
    ----------
    y : np.ndarray, shape (n_trials,)
        Binary labels (0/1 or bool); both classes must be present.
    pred : np.ndarray, shape (n_trials, n_times)
        Scores, higher meaning "label 1" more likely. NaN is not allowed.

    Returns
    -------
    np.ndarray, shape (n_times,)
        AUC in [0, 1] per timepoint.
    """
    y = np.asarray(y)
    pred = np.asarray(pred, dtype=float)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (n_trials,), got shape {y.shape}")
    if pred.ndim != 2:
        raise ValueError(f"pred must be 2-D (n_trials, n_times), got shape {pred.shape}")
    if pred.shape[0] != y.shape[0]:
        raise ValueError(f"y has {y.shape[0]} trials but pred has {pred.shape[0]} rows "
                         f"(pred shape {pred.shape})")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, found values {np.unique(y).tolist()}")
    positive = y.astype(bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes, got {n_pos} trials labelled 1 and "
                         f"{n_neg} labelled 0")
    if np.isnan(pred).any():
        rows, cols = np.nonzero(np.isnan(pred))
        raise ValueError(f"pred contains {rows.size} NaN values, first at trial {rows[0]}, "
                         f"timepoint {cols[0]}")
    ranks = column_ranks(pred)
    rank_sum = ranks[positive].sum(axis=0)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def column_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks (1-based, ties get their average rank) of each column of ``x`` (n, m): the
    same numbers as ``scipy.stats.rankdata(x, axis=0)``, faster for the metric's shapes:
    one argsort gives the ranks of the columns without ties; only columns with ties go
    through ``rankdata``."""
    n = x.shape[0]
    order = np.argsort(x, axis=0)
    ranks = np.empty(x.shape, dtype=float)
    np.put_along_axis(ranks, order, np.arange(1, n + 1, dtype=float)[:, None], axis=0)
    tied = (np.diff(np.take_along_axis(x, order, axis=0), axis=0) == 0).any(axis=0)
    if tied.any():
        ranks[:, tied] = rankdata(x[:, tied], axis=0)
    return ranks


def find_window(curve: np.ndarray, min_run: int) -> tuple[int, int] | None:
    """Choose the run of the metric: the longest run above 0.5 of >= ``min_run`` samples.

    Parameters
    ----------
    curve : np.ndarray, shape (n_times,)
        Mean per-timepoint AUC.
    min_run : int
        Shortest run that qualifies, in samples (>= 1).

    Returns
    -------
    tuple of int or None
        Half-open ``[start, stop)`` of the maximal run of samples strictly above 0.5
        that is longest among runs of at least ``min_run`` samples; between runs of
        equal length the one with the higher mean wins (then the earliest). None if no
        run is long enough.
    """
    curve = np.asarray(curve, dtype=float)
    if curve.ndim != 1:
        raise ValueError(f"curve must be 1-D (n_times,), got shape {curve.shape}")
    if np.isnan(curve).any():
        raise ValueError(f"curve contains NaN at samples "
                         f"{np.flatnonzero(np.isnan(curve))[:N_EXAMPLES].tolist()}")
    if isinstance(min_run, bool) or not isinstance(min_run, (int, np.integer)) or min_run < 1:
        raise ValueError(f"min_run must be an integer >= 1, got {min_run!r}")
    above = np.concatenate(([0], (curve > CHANCE).astype(np.int8), [0]))
    edges = np.diff(above)
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1)
    runs = [(int(a), int(b)) for a, b in zip(starts, stops) if b - a >= min_run]
    if not runs:
        return None
    # max() keeps the first of equal keys, so full ties go to the earliest run.
    return max(runs, key=lambda run: (run[1] - run[0], curve[run[0]:run[1]].mean()))


def score_from_curve(curve: np.ndarray, min_run: int) -> tuple[float, tuple[int, int] | None]:
    """Score one AUC curve: mean over the window of :func:`find_window`, else 0.5.

    Parameters
    ----------
    curve : np.ndarray, shape (n_times,)
        Per-timepoint AUC (of the participant mean, or of a single participant).
    min_run : int
        Shortest run that qualifies, in samples.

    Returns
    -------
    score : float
        Mean of ``curve`` over the window, 0.5 if there is none.
    window : tuple of int or None
        Half-open ``[start, stop)``, or None.
    """
    window = find_window(curve, min_run)
    if window is None:
        return CHANCE, None
    start, stop = window
    return float(np.mean(np.asarray(curve, dtype=float)[start:stop])), window


def window_auc(y_by_subject: Mapping[Hashable, np.ndarray],
               pred_by_subject: Mapping[Hashable, np.ndarray],
               sfreq: float = 200.0, min_run: int | None = None) -> WindowAUC:
    """The competition metric on arrays.

    Parameters
    ----------
    y_by_subject : mapping
        Subject -> labels, shape (n_trials_s,), 0/1 with both classes present.
    pred_by_subject : mapping
        Subject -> predictions, shape (n_trials_s, n_times); same subjects as
        ``y_by_subject`` and the same ``n_times`` for all of them.
    sfreq : float
        Sampling frequency in Hz, used for the default ``min_run``.
    min_run : int, optional
        Shortest qualifying run in samples; default :func:`default_min_run` of ``sfreq``.

    Returns
    -------
    WindowAUC
        Score, participant-mean curve, window and per-participant curves (in the order
        of ``y_by_subject``).
    """
    if min_run is None:
        min_run = default_min_run(sfreq)
    if not y_by_subject:
        raise ValueError("no participants given")
    missing = [s for s in y_by_subject if s not in pred_by_subject]
    if missing:
        raise ValueError(f"no predictions for subject(s) {missing}")
    extra = [s for s in pred_by_subject if s not in y_by_subject]
    if extra:
        raise ValueError(f"predictions for subject(s) {extra} that have no labels")
    per_subject: dict = {}
    for subject, y in y_by_subject.items():
        try:
            curve = per_timepoint_auc(y, pred_by_subject[subject])
        except ValueError as exc:
            raise ValueError(f"subject {subject}: {exc}") from exc
        curve.setflags(write=False)
        per_subject[subject] = curve
    n_times = {subject: curve.size for subject, curve in per_subject.items()}
    if len(set(n_times.values())) > 1:
        raise ValueError(f"participants have different numbers of timepoints: {n_times}")
    mean_curve = np.mean(np.stack(list(per_subject.values())), axis=0)
    mean_curve.setflags(write=False)
    score, window = score_from_curve(mean_curve, min_run)
    return WindowAUC(score=score, curve=mean_curve, window=window, per_subject=per_subject)


def read_solution(path: str | os.PathLike) -> pd.DataFrame:
    """Read a trial-level solution file.

    Parameters
    ----------
    path : path
        CSV with header ``subject,trial,label``: integer subject and trial, label 0/1,
        one row per (subject, trial).

    Returns
    -------
    pandas.DataFrame, shape (n_rows, 3)
        Columns ``subject``, ``trial``, ``label`` (integers).
    """
    df = pd.read_csv(path)
    if tuple(df.columns) != SOLUTION_COLUMNS:
        raise ValueError(f"{path}: header must be {','.join(SOLUTION_COLUMNS)!r}, "
                         f"found {','.join(map(str, df.columns))!r}")
    if df.empty:
        raise ValueError(f"{path}: solution has no rows")
    for column in SOLUTION_COLUMNS:
        if not pd.api.types.is_integer_dtype(df[column]):
            raise ValueError(f"{path}: column {column!r} must hold integers without gaps, "
                             f"found dtype {df[column].dtype}")
    bad_label = ~df["label"].isin((0, 1))
    if bad_label.any():
        rows = df.index[bad_label][:N_EXAMPLES].tolist()
        raise ValueError(f"{path}: {int(bad_label.sum())} labels are not 0/1 "
                         f"(data rows {rows})")
    duplicated = df.duplicated(["subject", "trial"])
    if duplicated.any():
        pairs = [f"{s}_{t}" for s, t in df.loc[duplicated, ["subject", "trial"]]
                 .head(N_EXAMPLES).itertuples(index=False)]
        raise ValueError(f"{path}: {int(duplicated.sum())} repeated (subject, trial) rows, "
                         f"e.g. {pairs}")
    return df


def _examples(ids: Sequence[str]) -> str:
    """First few ids, comma-separated, for error messages."""
    return ", ".join(map(str, ids[:N_EXAMPLES]))


def _parse_ids(ids: pd.Series, path: str | os.PathLike) -> np.ndarray:
    """Split ``{subject}_{trial}_{timepoint}`` ids.

    Parameters
    ----------
    ids : pandas.Series of str, shape (n_rows,)
    path : path
        Named in error messages.

    Returns
    -------
    np.ndarray of int64, shape (n_rows, 3)
        Columns subject, trial, timepoint.
    """
    parts = ids.str.rsplit("_", n=2, expand=True).reindex(columns=range(3))
    numbers = np.column_stack([pd.to_numeric(parts[k], errors="coerce").to_numpy(dtype=float)
                               for k in range(3)])
    bad = (~np.isfinite(numbers).all(axis=1) | (numbers != np.floor(numbers)).any(axis=1)
           | (numbers < 0).any(axis=1))
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} ids are not "
                         f"'{{subject}}_{{trial}}_{{timepoint}}' with non-negative integers, "
                         f"e.g. {_examples(ids[bad].tolist())}")
    return numbers.astype(np.int64)


def score_files(submission_csv: str | os.PathLike, solution_csv: str | os.PathLike,
                sfreq: float = 200.0) -> WindowAUC:
    """The competition metric on files.

    Parameters
    ----------
    submission_csv : path
        CSV with header ``id,prediction``, ``id = {subject}_{trial}_{timepoint}``; it
        must hold every timepoint ``0..n_times-1`` (``n_times`` = largest timepoint + 1)
        of every (subject, trial) in the solution exactly once, and nothing else.
    solution_csv : path
        CSV with header ``subject,trial,label`` (see :func:`read_solution`).
    sfreq : float
        Sampling frequency in Hz (sets the shortest run, 50 ms).

    Returns
    -------
    WindowAUC
        As :func:`window_auc`, participants in ascending subject order.
    """
    solution = read_solution(solution_csv)
    submission = pd.read_csv(submission_csv, dtype={"id": str})
    if tuple(submission.columns) != SUBMISSION_COLUMNS:
        raise ValueError(f"{submission_csv}: header must be {','.join(SUBMISSION_COLUMNS)!r}, "
                         f"found {','.join(map(str, submission.columns))!r}")
    if submission.empty:
        raise ValueError(f"{submission_csv}: submission has no rows")
    ids = submission["id"]
    keys = _parse_ids(ids, submission_csv)
    prediction = pd.to_numeric(submission["prediction"], errors="coerce").to_numpy(dtype=float)
    not_finite = ~np.isfinite(prediction)
    if not_finite.any():
        raise ValueError(f"{submission_csv}: {int(not_finite.sum())} predictions are missing, "
                         f"non-numeric or infinite, e.g. ids "
                         f"{_examples(ids[not_finite].tolist())}")
    repeated = pd.DataFrame(keys).duplicated().to_numpy()
    if repeated.any():
        raise ValueError(f"{submission_csv}: {int(repeated.sum())} rows repeat an earlier id, "
                         f"e.g. {_examples(ids[repeated].tolist())}")

    trial_index = pd.MultiIndex.from_frame(solution[["subject", "trial"]])
    row = trial_index.get_indexer(pd.MultiIndex.from_arrays([keys[:, 0], keys[:, 1]]))
    unknown = row < 0
    if unknown.any():
        raise ValueError(f"{submission_csv}: {int(unknown.sum())} ids belong to no "
                         f"(subject, trial) of the solution, e.g. "
                         f"{_examples(ids[unknown].tolist())}")
    n_times = int(keys[:, 2].max()) + 1
    grid = np.full((len(solution), n_times), np.nan)
    grid[row, keys[:, 2]] = prediction
    absent_row, absent_time = np.nonzero(np.isnan(grid))
    if absent_row.size:
        subjects = solution["subject"].to_numpy()[absent_row]
        trials = solution["trial"].to_numpy()[absent_row]
        missing = [f"{s}_{t}_{p}" for s, t, p in
                   zip(subjects[:N_EXAMPLES], trials[:N_EXAMPLES], absent_time[:N_EXAMPLES])]
        n_trials = np.unique(absent_row).size
        raise ValueError(f"{submission_csv}: {absent_row.size} ids are missing (timepoints "
                         f"0..{n_times - 1} expected for each of {len(solution)} solution "
                         f"trials; {n_trials} trials incomplete), e.g. {', '.join(missing)}")

    subject_of_row = solution["subject"].to_numpy()
    labels = solution["label"].to_numpy()
    y_by_subject = {}
    pred_by_subject = {}
    for subject in np.unique(subject_of_row):
        mask = subject_of_row == subject
        y_by_subject[int(subject)] = labels[mask]
        pred_by_subject[int(subject)] = grid[mask]
    return window_auc(y_by_subject, pred_by_subject, sfreq=sfreq)


def format_report(result: WindowAUC, sfreq: float) -> str:
    """The command-line report of a score.

    Parameters
    ----------
    result : WindowAUC
    sfreq : float
        Sampling frequency in Hz, to express the window in ms.

    Returns
    -------
    str
        Three lines: score (5 decimals), window (inclusive sample range and ms, or why
        there is none) and the number of participants.
    """
    lines = [f"window AUC: {result.score:.5f}"]
    if result.window is None:
        lines.append(f"window: none (no run of >= {default_min_run(sfreq)} samples "
                     f"above {CHANCE})")
    else:
        first, last = result.window[0], result.window[1] - 1
        lines.append(f"window: samples {first}-{last} "
                     f"({1000 * first / sfreq:g}-{1000 * last / sfreq:g} ms)")
    lines.append(f"participants: {len(result.per_subject)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the window AUC of a submission file against a solution file.

    Returns
    -------
    int
        0 on success, 2 on bad input (message on stderr).
    """
    parser = argparse.ArgumentParser(prog="python -m sleepemo.metric",
                                     description="Score a submission with the window AUC.")
    parser.add_argument("submission", help="CSV with header id,prediction")
    parser.add_argument("solution", help="CSV with header subject,trial,label")
    parser.add_argument("--sfreq", type=float, default=200.0,
                        help="sampling frequency in Hz (default 200)")
    args = parser.parse_args(argv)
    try:
        result = score_files(args.submission, args.solution, sfreq=args.sfreq)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(result, args.sfreq))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
