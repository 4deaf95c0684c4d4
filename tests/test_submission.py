"""Tests of building, validating and writing the submission file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sleepemo.data.submission import (SubmissionError, build_submission, main, make_ids,
                                 validate_submission, write_submission)

FULL_EXPECTED = {1: (372, 200), 7: (479, 200), 12: (883, 200)}
SMALL_EXPECTED = {1: (3, 4), 7: (2, 4)}


def small_rows() -> dict[str, str]:
    """id -> prediction text of a valid submission for SMALL_EXPECTED."""
    return {f"{s}_{trial}_{t}": f"{(trial * 4 + t) / 20:.2f}"
            for s, (n_trials, n_times) in SMALL_EXPECTED.items()
            for trial in range(n_trials) for t in range(n_times)}


def write_rows(path: Path, rows: list[tuple[str, str]], header: str = "id,prediction") -> Path:
    path.write_text("\n".join([header] + [f"{i},{v}" for i, v in rows]) + "\n")
    return path


def problems_of(path_or_df, expected=SMALL_EXPECTED) -> list[str]:
    with pytest.raises(SubmissionError) as info:
        validate_submission(path_or_df, expected)
    return info.value.problems


# --- ids and building -------------------------------------------------------------------

def test_make_ids_are_trial_major():
    assert make_ids(1, 2, 3).tolist() == ["1_0_0", "1_0_1", "1_0_2", "1_1_0", "1_1_1", "1_1_2"]
    ids = make_ids(12, 11, 200)
    assert (ids[199], ids[200], ids[-1]) == ("12_0_199", "12_1_0", "12_10_199")


@pytest.mark.parametrize("args", [(1, 0, 200), (1, 3, 0), (-1, 3, 4), (1, 2.0, 3)])
def test_make_ids_rejects_bad_sizes(args):
    with pytest.raises(ValueError, match="must be an integer"):
        make_ids(*args)


def test_full_size_submission_is_built_and_validated():
    rng = np.random.default_rng(0)
    preds = {s: rng.random(shape) for s, shape in reversed(FULL_EXPECTED.items())}
    df = build_submission(preds)
    validate_submission(df, FULL_EXPECTED)
    assert len(df) == 346_800 == 200 * (372 + 479 + 883)
    assert list(df.columns) == ["id", "prediction"]
    # Subjects ascending although the mapping was given as 12, 7, 1.
    assert df["id"].iloc[[0, 372 * 200, (372 + 479) * 200, -1]].tolist() == [
        "1_0_0", "7_0_0", "12_0_0", "12_882_199"]
    row = df.index[df["id"] == "7_5_17"][0]
    assert df["prediction"].iloc[row] == preds[7][5, 17]


def test_trial_level_predictions_are_broadcast():
    df = build_submission({7: np.array([[0.1, 0.2, 0.3]]), 1: np.array([0.2, 0.9])},
                          n_times=3)
    assert df["id"].tolist() == ["1_0_0", "1_0_1", "1_0_2", "1_1_0", "1_1_1", "1_1_2",
                                 "7_0_0", "7_0_1", "7_0_2"]
    assert df["prediction"].tolist() == [0.2, 0.2, 0.2, 0.9, 0.9, 0.9, 0.1, 0.2, 0.3]


@pytest.mark.parametrize("preds, n_times, message", [
    ({1: np.array([0.2, 0.9])}, None, "subject 1: 1-D .* need the n_times"),
    ({1: np.array([[0.5, 1.5]]), 4: np.array([[0.5, 0.5]])}, None,
     r"subject 1: 1 predictions are outside \[0, 1\]"),
    ({3: np.array([[0.5, -0.01]])}, None, r"subject 3: 1 predictions are outside \[0, 1\]"),
    ({5: np.array([[0.5, np.nan]])}, None, "subject 5: 1 predictions are not finite"),
    ({5: np.array([[0.5, 0.5]])}, 3, "subject 5: predictions have 2 timepoints, n_times is 3"),
    ({}, None, "no predictions"),
])
def test_build_submission_rejects_bad_predictions(preds, n_times, message):
    with pytest.raises(ValueError, match=message):
        build_submission(preds, n_times=n_times)


# --- validation ------------------------------------------------------------------------

def test_valid_file_and_frame_pass(tmp_path):
    validate_submission(write_rows(tmp_path / "s.csv", list(small_rows().items())),
                        SMALL_EXPECTED)
    validate_submission(build_submission({1: np.full((3, 4), 0.5), 7: np.zeros((2, 4))}),
                        SMALL_EXPECTED)


def mutate(rows: dict[str, str], case: str) -> list[tuple[str, str]]:
    """A valid submission's rows with one problem put in."""
    items = list(rows.items())
    if case == "missing id":
        return [(i, v) for i, v in items if i != "7_1_2"]
    if case == "duplicate":
        return items + [("1_2_3", "0.5")]
    if case == "extra subject":
        return items + [("9_0_0", "0.5")]
    value = {"NaN": "nan", "above 1": "1.2", "below 0": "-0.1", "non-numeric": "abc",
             "empty": ""}[case]
    return [(i, value if i == "1_2_1" else v) for i, v in items]


@pytest.mark.parametrize("case, expected_problems", [
    ("missing id", ["19 rows, expected 20",
                    "1 expected ids are missing, e.g. 7_1_2"]),
    ("duplicate", ["21 rows, expected 20",
                   "1 ids appear more than once (1 surplus rows), e.g. 1_2_3 (2 times)"]),
    ("extra subject", ["21 rows, expected 20",
                       "1 ids are not expected, e.g. 9_0_0; subjects not expected: 9 "
                       "(expected 1, 7)"]),
    ("NaN", ["1 predictions are not finite (NaN or inf), e.g. 1_2_1=nan"]),
    ("above 1", ["1 predictions are > 1, e.g. 1_2_1=1.2"]),
    ("below 0", ["1 predictions are < 0, e.g. 1_2_1=-0.1"]),
    ("non-numeric", ["1 predictions are not numeric, e.g. 1_2_1='abc'"]),
    ("empty", ["1 predictions are not numeric, e.g. 1_2_1=''"]),
])
def test_validation_reports_each_problem(tmp_path, case, expected_problems):
    path = write_rows(tmp_path / "s.csv", mutate(small_rows(), case))
    assert problems_of(path) == expected_problems


def test_validation_checks_raw_header(tmp_path):
    rows = list(small_rows().items())
    problems = problems_of(write_rows(tmp_path / "s.csv", rows, header="Id,Prediction"))
    assert problems[0] == "header must be exactly 'id,prediction', found 'Id,Prediction'"
    spaced = problems_of(write_rows(tmp_path / "t.csv", rows, header="id,prediction "))
    assert spaced == ["header must be exactly 'id,prediction', found 'id,prediction '",
                      "cannot check rows without 'id' and 'prediction' columns"]


def test_validation_checks_frame_columns():
    df = build_submission({1: np.full((3, 4), 0.5), 7: np.zeros((2, 4))})
    problems = problems_of(df.rename(columns={"prediction": "pred"}))
    assert problems[0] == "columns must be exactly ['id', 'prediction'], found ['id', 'pred']"


def test_validation_lists_several_problems_at_once(tmp_path):
    rows = [(i, "nan" if i == "1_0_0" else v) for i, v in mutate(small_rows(), "missing id")]
    problems = problems_of(write_rows(tmp_path / "s.csv", rows))
    assert problems == ["19 rows, expected 20",
                        "1 expected ids are missing, e.g. 7_1_2",
                        "1 predictions are not finite (NaN or inf), e.g. 1_0_0=nan"]
    with pytest.raises(SubmissionError, match=r"(?s)^invalid submission:\n- 19 rows.*\n- 1 "):
        validate_submission(tmp_path / "s.csv", SMALL_EXPECTED)


def test_validation_counts_and_quotes_first_examples(tmp_path):
    rows = [(i, v) for i, v in small_rows().items() if not i.startswith("7_")]
    problems = problems_of(write_rows(tmp_path / "s.csv", rows))
    assert problems[1] == "8 expected ids are missing, e.g. 7_0_0, 7_0_1, 7_0_2, 7_0_3, 7_1_0"


# --- writing ------------------------------------------------------------------------------

def test_write_submission_never_overwrites_and_updates_latest(tmp_path):
    first = build_submission({1: np.full((3, 4), 0.25), 7: np.zeros((2, 4))})
    path = write_submission(first, tmp_path / "run1")
    assert path == tmp_path / "run1" / "submission.csv"
    written = path.read_text()
    assert written.splitlines()[:2] == ["id,prediction", "1_0_0,0.250000"]
    assert (tmp_path / "latest.csv").read_text() == written
    validate_submission(path, SMALL_EXPECTED)

    second = build_submission({1: np.full((3, 4), 0.75), 7: np.ones((2, 4))})
    with pytest.raises(FileExistsError, match="run1/submission.csv already exists"):
        write_submission(second, tmp_path / "run1")
    assert path.read_text() == written
    assert (tmp_path / "latest.csv").read_text() == written
    assert sorted(p.name for p in (tmp_path / "run1").iterdir()) == ["submission.csv"]

    path2 = write_submission(second, tmp_path / "run2")
    assert path2.read_text().splitlines()[1] == "1_0_0,0.750000"
    assert (tmp_path / "latest.csv").read_text() == path2.read_text()
    assert path.read_text() == written


# --- command line ---------------------------------------------------------------------------

def test_cli_valid_and_invalid(tmp_path, capsys):
    args = ["--expected", "1:3:4", "--expected", "7:2:4"]
    good = write_rows(tmp_path / "good.csv", list(small_rows().items()))
    assert main(["validate", str(good), *args]) == 0
    assert capsys.readouterr().out == "valid: 20 rows, 2 participants\n"

    bad = write_rows(tmp_path / "bad.csv", mutate(small_rows(), "above 1"))
    assert main(["validate", str(bad), *args]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "invalid:\n- 1 predictions are > 1, e.g. 1_2_1=1.2\n"


def test_cli_rejects_malformed_expected(tmp_path, capsys):
    good = write_rows(tmp_path / "good.csv", list(small_rows().items()))
    with pytest.raises(SystemExit) as info:
        main(["validate", str(good), "--expected", "1:3"])
    assert info.value.code == 2
    assert "SUBJECT:N_TRIALS:N_TIMES" in capsys.readouterr().err


def test_cli_reads_expected_shapes_from_the_data_folder(make_folder, tmp_path, capsys):
    root = make_folder(test={1: 5, 7: 3})
    good = tmp_path / "good.csv"
    build_submission({1: np.full(5, 0.3), 7: np.full(3, 0.6)}, n_times=200).to_csv(
        good, index=False)
    assert main(["validate", str(good), "--data-dir", str(root)]) == 0
    assert capsys.readouterr().out.strip() == "valid: 1600 rows, 2 participants"
    short = tmp_path / "short.csv"
    build_submission({1: np.full(4, 0.3), 7: np.full(3, 0.6)}, n_times=200).to_csv(
        short, index=False)
    assert main(["validate", str(short), "--data-dir", str(root)]) == 1
    assert "missing" in capsys.readouterr().err
