"""Tests of the window AUC metric against hand-computed curves and scores."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from sleepemo.metric import (default_min_run, find_window, main, per_timepoint_auc,
                             score_files, score_from_curve, window_auc)

SRC = Path(__file__).resolve().parents[1] / "src"

#: Labels of a four-trial participant used to design predictions with a known AUC.
Y4 = np.array([0, 0, 1, 1])
#: AUC -> predictions of the four trials of Y4 at one timepoint, AUC counted by hand
#: over the 4 (positive, negative) pairs.
COLUMN_FOR_AUC = {
    1.0: [0.1, 0.2, 0.8, 0.9],    # both positives above both negatives: 4/4
    0.75: [0.1, 0.5, 0.3, 0.8],   # positives 0.3, 0.8 vs negatives 0.1, 0.5: 3/4
    0.5: [0.4, 0.4, 0.4, 0.4],    # all tied: each pair counts 1/2
    0.25: [0.3, 0.8, 0.1, 0.5],   # positives 0.1, 0.5 vs negatives 0.3, 0.8: 1/4
    0.0: [0.9, 0.8, 0.2, 0.1],    # both positives below both negatives: 0/4
}


def designed_pred(aucs: list[float]) -> np.ndarray:
    """Predictions, shape (4, len(aucs)), whose AUC against Y4 at timepoint t is aucs[t]."""
    return np.column_stack([COLUMN_FOR_AUC[a] for a in aucs])


def segments(*parts: tuple[float, int]) -> list[float]:
    """Curve from (value, n_samples) pieces."""
    return [value for value, n in parts for _ in range(n)]


def write_pair(folder: Path, y_by_subject: dict, pred_by_subject: dict,
               shuffle_seed: int | None = 0) -> tuple[Path, Path]:
    """Write a submission (rows shuffled, floats exact) and its solution file."""
    rows = [(f"{s}_{trial}_{t}", value)
            for s, pred in pred_by_subject.items()
            for trial, row in enumerate(np.asarray(pred))
            for t, value in enumerate(row)]
    submission = pd.DataFrame(rows, columns=["id", "prediction"])
    if shuffle_seed is not None:
        submission = submission.sample(frac=1, random_state=shuffle_seed)
    solution = pd.DataFrame([(s, trial, int(label)) for s, y in y_by_subject.items()
                             for trial, label in enumerate(y)],
                            columns=["subject", "trial", "label"])
    submission_path, solution_path = folder / "submission.csv", folder / "solution.csv"
    submission.to_csv(submission_path, index=False)
    solution.to_csv(solution_path, index=False)
    return submission_path, solution_path


# --- per_timepoint_auc -------------------------------------------------------------

def test_designed_columns_have_their_hand_computed_auc():
    aucs = [1.0, 0.75, 0.5, 0.25, 0.0]
    np.testing.assert_array_equal(per_timepoint_auc(Y4, designed_pred(aucs)), aucs)


def test_per_timepoint_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=57)
    pred = rng.integers(0, 6, size=(57, 40)) / 5  # few distinct values: many ties
    expected = [roc_auc_score(y, pred[:, t]) for t in range(pred.shape[1])]
    np.testing.assert_allclose(per_timepoint_auc(y, pred), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("y, pred, message", [
    (np.ones(4), np.zeros((4, 3)), "both classes"),
    (Y4, np.zeros((5, 3)), "4 trials but pred has 5 rows"),
    (Y4, np.zeros(4), "2-D"),
    (np.array([0, 1, 2, 1]), np.zeros((4, 3)), "0/1"),
    (Y4, np.array([[0.1, np.nan]] * 4), "NaN"),
])
def test_per_timepoint_auc_rejects_bad_input(y, pred, message):
    with pytest.raises(ValueError, match=message):
        per_timepoint_auc(y, pred)


# --- window choice on hand-made curves ----------------------------------------------

@pytest.mark.parametrize("first, second, window, score", [
    (0.6, 0.7, (40, 52), 0.7),
    (0.7, 0.6, (10, 22), 0.7),
])
def test_equal_length_runs_higher_mean_wins(first, second, window, score):
    curve = np.array(segments((0.4, 10), (first, 12), (0.4, 18), (second, 12), (0.4, 8)))
    assert score_from_curve(curve, 10) == (pytest.approx(score), window)


def test_longer_run_beats_higher_mean():
    curve = np.array(segments((0.5, 5), (0.9, 12), (0.5, 5), (0.55, 15), (0.5, 3)))
    assert score_from_curve(curve, 10) == (pytest.approx(0.55), (22, 37))


def test_run_of_nine_never_qualifies_run_of_ten_does():
    nine_only = np.array(segments((0.5, 5), (0.95, 9), (0.5, 20)))
    assert score_from_curve(nine_only, 10) == (0.5, None)
    both = np.array(segments((0.5, 5), (0.95, 9), (0.5, 16), (0.6, 10), (0.5, 4)))
    assert score_from_curve(both, 10) == (pytest.approx(0.6), (30, 40))
    assert score_from_curve(nine_only, 9) == (pytest.approx(0.95), (5, 14))


@pytest.mark.parametrize("curve", [
    np.full(200, 0.5),
    np.array(segments((0.3, 50), (0.5, 100), (0.49, 50))),
])
def test_nothing_above_chance_scores_exactly_half(curve):
    score, window = score_from_curve(curve, 10)
    assert window is None
    assert score == 0.5


def test_exactly_half_breaks_a_run():
    curve = np.array(segments((0.7, 8), (0.5, 1), (0.7, 8), (0.4, 3)))
    assert find_window(curve, 10) is None
    curve[8] = 0.5 + 1e-9
    assert find_window(curve, 10) == (0, 17)


def test_find_window_rejects_bad_min_run():
    with pytest.raises(ValueError, match="min_run"):
        find_window(np.full(20, 0.7), 0)


@pytest.mark.parametrize("sfreq, min_run", [(200.0, 10), (180.0, 9), (256.0, 13), (100.0, 5)])
def test_default_min_run_is_50_ms_rounded(sfreq, min_run):
    assert default_min_run(sfreq) == min_run


# --- window_auc on designed predictions ---------------------------------------------

@pytest.mark.parametrize("early_is_better", [False, True])
def test_window_auc_equal_length_runs_on_designed_predictions(early_is_better):
    plain = segments((0.75, 12))                      # mean 0.75
    mixed = [1.0, 0.75] * 6                           # mean 0.875
    early, late = (mixed, plain) if early_is_better else (plain, mixed)
    aucs = segments((0.5, 5)) + early + segments((0.5, 13)) + late + segments((0.0, 18))
    result = window_auc({1: Y4}, {1: designed_pred(aucs)})
    np.testing.assert_array_equal(result.curve, aucs)
    assert result.window == ((5, 17) if early_is_better else (30, 42))
    assert result.score == pytest.approx(0.875)


def test_window_auc_min_run_follows_sfreq():
    aucs = segments((0.5, 5), (1.0, 9), (0.5, 16), (0.75, 10), (0.5, 4))
    pred = {1: designed_pred(aucs)}
    result = window_auc({1: Y4}, pred)
    assert (result.window, result.score) == ((30, 40), pytest.approx(0.75))
    nine_only = designed_pred(segments((0.5, 5), (1.0, 9), (0.5, 30)))
    assert window_auc({1: Y4}, {1: nine_only}).window is None
    at_180_hz = window_auc({1: Y4}, {1: nine_only}, sfreq=180.0)
    assert (at_180_hz.window, at_180_hz.score) == ((5, 14), 1.0)


def test_participants_are_averaged_before_windowing():
    curve_a = segments((0.75, 30), (0.5, 30))
    curve_b = segments((0.25, 15), (0.75, 30), (0.5, 15))
    result = window_auc({"a": Y4, "b": Y4},
                        {"a": designed_pred(curve_a), "b": designed_pred(curve_b)})
    # Mean curve: 0.5 on [0, 15), 0.75 on [15, 30), 0.625 on [30, 45), 0.5 on [45, 60).
    expected_curve = segments((0.5, 15), (0.75, 15), (0.625, 15), (0.5, 15))
    np.testing.assert_array_equal(result.curve, expected_curve)
    np.testing.assert_array_equal(result.per_subject["a"], curve_a)
    np.testing.assert_array_equal(result.per_subject["b"], curve_b)
    assert result.window == (15, 45)
    assert result.score == pytest.approx((15 * 0.75 + 15 * 0.625) / 30)  # 0.6875
    # Scoring each participant alone, then averaging, would give a different answer.
    alone = [score_from_curve(result.per_subject[s], 10) for s in ("a", "b")]
    assert alone == [(0.75, (0, 30)), (0.75, (15, 45))]
    assert np.mean([score for score, _ in alone]) != pytest.approx(result.score)


def test_flat_broadcast_scores_the_trial_auc():
    trial_prob = np.array(COLUMN_FOR_AUC[0.75])
    flat = np.repeat(trial_prob[:, None], 200, axis=1)
    result = window_auc({1: Y4}, {1: flat})
    assert (result.window, result.score) == ((0, 200), 0.75)
    reversed_labels = window_auc({1: 1 - Y4}, {1: flat})  # trial AUC 0.25
    assert (reversed_labels.window, reversed_labels.score) == (None, 0.5)


def test_flat_broadcast_of_several_participants_scores_mean_trial_auc():
    flat = {s: np.repeat(np.array(COLUMN_FOR_AUC[auc])[:, None], 200, axis=1)
            for s, auc in ((1, 0.75), (7, 1.0))}
    result = window_auc({1: Y4, 7: Y4}, flat)
    assert (result.window, result.score) == ((0, 200), 0.875)


def test_result_arrays_are_read_only():
    result = window_auc({1: Y4}, {1: designed_pred([0.75] * 20)})
    with pytest.raises(ValueError):
        result.curve[0] = 1.0
    with pytest.raises(ValueError):
        result.per_subject[1][0] = 1.0


@pytest.mark.parametrize("y, pred, message", [
    ({1: Y4, 2: Y4}, {1: designed_pred([0.5] * 20)}, r"no predictions for subject\(s\) \[2\]"),
    ({1: Y4}, {1: designed_pred([0.5] * 20), 3: designed_pred([0.5] * 20)},
     r"subject\(s\) \[3\] that have no labels"),
    ({1: Y4, 2: Y4}, {1: designed_pred([0.5] * 20), 2: designed_pred([0.5] * 21)},
     "different numbers of timepoints"),
    ({1: Y4, 2: np.ones(4)}, {1: designed_pred([0.5] * 20), 2: designed_pred([0.5] * 20)},
     "subject 2: AUC needs both classes"),
    ({}, {}, "no participants"),
])
def test_window_auc_rejects_bad_input(y, pred, message):
    with pytest.raises(ValueError, match=message):
        window_auc(y, pred)


# --- files and command line ---------------------------------------------------------

def random_task(seed: int = 0, n_times: int = 40) -> tuple[dict, dict]:
    """Three participants with a label effect on timepoints 10..24."""
    rng = np.random.default_rng(seed)
    y_by_subject, pred_by_subject = {}, {}
    for subject, n_trials in ((1, 12), (7, 15), (12, 9)):
        y = np.array([0, 1] * (n_trials // 2) + [1] * (n_trials % 2))
        pred = rng.random((n_trials, n_times))
        pred[:, 10:25] += 0.4 * y[:, None]
        y_by_subject[subject], pred_by_subject[subject] = y, pred
    return y_by_subject, pred_by_subject


def test_score_files_equals_window_auc_on_arrays(tmp_path):
    y_by_subject, pred_by_subject = random_task()
    from_files = score_files(*write_pair(tmp_path, y_by_subject, pred_by_subject))
    from_arrays = window_auc(y_by_subject, pred_by_subject)
    assert from_arrays.window is not None
    assert from_files.score == from_arrays.score
    assert from_files.window == from_arrays.window
    np.testing.assert_array_equal(from_files.curve, from_arrays.curve)
    assert list(from_files.per_subject) == [1, 7, 12]


def test_score_files_names_a_missing_id(tmp_path):
    y_by_subject, pred_by_subject = random_task()
    submission, solution = write_pair(tmp_path, y_by_subject, pred_by_subject)
    table = pd.read_csv(submission, dtype={"id": str})
    table[table["id"] != "7_2_13"].to_csv(submission, index=False)
    with pytest.raises(ValueError, match=r"1 ids are missing.*e\.g\. 7_2_13$"):
        score_files(submission, solution)


@pytest.mark.parametrize("drop_id, add_row, message", [
    (None, "7_99_0,0.5", r"1 ids belong to no \(subject, trial\).*7_99_0"),
    (None, "7_0_0,0.5", "1 rows repeat an earlier id, e.g. 7_0_0"),
    (None, "7_0_x,0.5", "1 ids are not.*7_0_x"),
    ("7_0_1", "7_0_1,abc", "1 predictions are missing, non-numeric.*7_0_1"),
])
def test_score_files_rejects_bad_rows(tmp_path, drop_id, add_row, message):
    submission, solution = write_pair(tmp_path, *random_task())
    lines = [line for line in submission.read_text().splitlines()
             if line.split(",")[0] != drop_id]
    submission.write_text("\n".join(lines + [add_row]) + "\n")
    with pytest.raises(ValueError, match=message):
        score_files(submission, solution)


def test_score_files_checks_solution_header(tmp_path):
    submission, solution = write_pair(tmp_path, *random_task())
    solution.write_text(solution.read_text().replace("subject,trial,label", "subject,trial,y"))
    with pytest.raises(ValueError, match="header must be 'subject,trial,label'"):
        score_files(submission, solution)


def test_score_files_full_size_is_fast(tmp_path):
    rng = np.random.default_rng(1)
    sizes = {1: 372, 7: 479, 12: 883}
    y_by_subject = {s: rng.integers(0, 2, n) for s, n in sizes.items()}
    pred_by_subject = {s: rng.random((n, 200)) for s, n in sizes.items()}
    ids = [f"{s}_{trial}_{t}" for s, n in sizes.items() for trial in range(n)
           for t in range(200)]
    values = np.concatenate([p.ravel() for p in pred_by_subject.values()])
    submission, solution = tmp_path / "submission.csv", tmp_path / "solution.csv"
    pd.DataFrame({"id": ids, "prediction": values}).to_csv(submission, index=False)
    pd.DataFrame([(s, trial, label) for s, y in y_by_subject.items()
                  for trial, label in enumerate(y)],
                 columns=["subject", "trial", "label"]).to_csv(solution, index=False)
    result = score_files(submission, solution)
    np.testing.assert_array_equal(result.curve,
                                  window_auc(y_by_subject, pred_by_subject).curve)


def test_cli_prints_hand_computed_report(tmp_path, capsys):
    curve_a = segments((0.75, 30), (0.5, 30))
    curve_b = segments((0.25, 15), (0.75, 30), (0.5, 15))
    submission, solution = write_pair(tmp_path, {1: Y4, 7: Y4},
                                      {1: designed_pred(curve_a), 7: designed_pred(curve_b)})
    assert main([str(submission), str(solution)]) == 0
    assert capsys.readouterr().out == ("window AUC: 0.68750\n"
                                       "window: samples 15-44 (75-220 ms)\n"
                                       "participants: 2\n")


def test_cli_reports_no_window(tmp_path, capsys):
    flat = np.repeat(np.array(COLUMN_FOR_AUC[0.25])[:, None], 200, axis=1)
    submission, solution = write_pair(tmp_path, {1: Y4}, {1: flat})
    assert main([str(submission), str(solution)]) == 0
    assert capsys.readouterr().out == ("window AUC: 0.50000\n"
                                       "window: none (no run of >= 10 samples above 0.5)\n"
                                       "participants: 1\n")


def test_cli_bad_input_exits_2(tmp_path, capsys):
    submission, solution = write_pair(tmp_path, *random_task())
    assert main([str(submission), str(tmp_path / "absent.csv")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and "absent.csv" in captured.err


def test_cli_runs_as_module(tmp_path):
    submission, solution = write_pair(tmp_path, {1: Y4}, {1: designed_pred([0.75] * 20)})
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-m", "sleepemo.metric", str(submission),
                           str(solution), "--sfreq", "100"],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["window AUC: 0.75000",
                                        "window: samples 0-19 (0-190 ms)",
                                        "participants: 1"]


def test_column_ranks_equal_scipys_average_ranks_with_and_without_ties():
    from scipy.stats import rankdata

    from sleepemo.metric import column_ranks

    rng = np.random.default_rng(0)
    cases = [rng.random((300, 40)), rng.integers(0, 4, (120, 30)).astype(float),
             np.c_[rng.random((25, 3)), np.ones((25, 2)), np.round(rng.random((25, 2)), 1)],
             rng.random((1, 5))]
    for x in cases:
        np.testing.assert_array_equal(column_ranks(x), rankdata(x, axis=0))
