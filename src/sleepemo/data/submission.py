"""Building, checking and writing the competition submission file.

The file has header ``id,prediction`` and one row per test trial and timepoint, with
``id = {subject}_{trial}_{timepoint}`` (trial = 0-based index of the trial in the
participant's test file) and ``prediction`` = P(emotional) in [0, 1].

Run as a script to check a file::

    python -m sleepemo.data.submission validate SUBMISSION.csv --data-dir DATA
    python -m sleepemo.data.submission validate SUBMISSION.csv --expected 1:372:200 ...
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from sleepemo.data.reader import read_mat, scan
from sleepemo.errors import InputError
from sleepemo.io import atomic_path, copy_file

HEADER = "id,prediction"
COLUMNS = ("id", "prediction")
SUBMISSION_NAME = "submission.csv"
LATEST_NAME = "latest.csv"
#: How many offending ids a message quotes.
N_EXAMPLES = 5


class SubmissionError(InputError, ValueError):
    """A submission file or frame breaks the format.

    Attributes
    ----------
    problems : list of str
        One message per problem found.
    """

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("invalid submission:\n" + "\n".join(f"- {p}" for p in self.problems))


def _check_shape_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as int if it is an integer >= ``minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def make_ids(subject: int, n_trials: int, n_times: int) -> np.ndarray:
    """Row ids of one participant, trial-major then timepoint.

    Parameters
    ----------
    subject : int
        Participant number (>= 0).
    n_trials : int
        Number of test trials (>= 1).
    n_times : int
        Timepoints per trial (>= 1).

    Returns
    -------
    np.ndarray of str, shape (n_trials * n_times,)
        ``{subject}_{trial}_{timepoint}``: ``1_0_0, 1_0_1, ..., 1_0_199, 1_1_0, ...``.
    """
    subject = _check_shape_int("subject", subject, 0)
    n_trials = _check_shape_int("n_trials", n_trials, 1)
    n_times = _check_shape_int("n_times", n_times, 1)
    trial_prefix = np.char.add(f"{subject}_", np.arange(n_trials).astype(str))
    time_suffix = np.char.add("_", np.arange(n_times).astype(str))
    return np.char.add(np.repeat(trial_prefix, n_times), np.tile(time_suffix, n_trials))


def build_submission(pred_by_subject: Mapping[int, np.ndarray],
                     n_times: int | None = None) -> pd.DataFrame:
    """Assemble the submission table.

    Parameters
    ----------
    pred_by_subject : mapping
        Subject -> P(emotional), shape (n_trials, n_times), or shape (n_trials,) for a
        trial-level probability that is copied to all ``n_times`` timepoints. Values must
        be finite and in [0, 1]; nothing is clipped.
    n_times : int, optional
        Timepoints per trial; required for 1-D predictions, and checked against 2-D ones.

    Returns
    -------
    pandas.DataFrame, shape (sum of n_trials * n_times, 2)
        Columns ``id`` and ``prediction``, subjects in ascending order, then trials, then
        timepoints.
    """
    if not pred_by_subject:
        raise ValueError("no predictions given")
    if n_times is not None:
        n_times = _check_shape_int("n_times", n_times, 1)
    ids = []
    values = []
    for subject in sorted(pred_by_subject):
        try:
            pred = np.asarray(pred_by_subject[subject], dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"subject {subject}: predictions are not numeric ({exc})") from exc
        if pred.ndim == 1:
            if n_times is None:
                raise ValueError(f"subject {subject}: 1-D (trial-level) predictions need the "
                                 f"n_times argument to be broadcast to timepoints")
            pred = np.repeat(pred[:, None], n_times, axis=1)
        elif pred.ndim != 2:
            raise ValueError(f"subject {subject}: predictions must have shape (n_trials,) or "
                             f"(n_trials, n_times), got {pred.shape}")
        elif n_times is not None and pred.shape[1] != n_times:
            raise ValueError(f"subject {subject}: predictions have {pred.shape[1]} timepoints, "
                             f"n_times is {n_times}")
        not_finite = ~np.isfinite(pred)
        if not_finite.any():
            raise ValueError(f"subject {subject}: {int(not_finite.sum())} predictions are not "
                             f"finite (NaN or inf)")
        outside = (pred < 0) | (pred > 1)
        if outside.any():
            raise ValueError(f"subject {subject}: {int(outside.sum())} predictions are outside "
                             f"[0, 1] (min {pred.min():g}, max {pred.max():g})")
        ids.append(make_ids(subject, pred.shape[0], pred.shape[1]))
        values.append(pred.ravel())
    return pd.DataFrame({"id": np.concatenate(ids), "prediction": np.concatenate(values)})


def _examples(items: Sequence[object] | np.ndarray) -> str:
    """First few items, comma-separated."""
    return ", ".join(map(str, list(items[:N_EXAMPLES])))


def _expected_ids(expected: Mapping[int, tuple[int, int]]) -> np.ndarray:
    """All ids of ``expected`` (subject -> (n_trials, n_times)) in submission order."""
    if not expected:
        raise ValueError("expected must name at least one subject")
    blocks = []
    for subject in sorted(expected):
        shape = expected[subject]
        if len(shape) != 2:
            raise ValueError(f"expected[{subject}] must be (n_trials, n_times), got {shape!r}")
        blocks.append(make_ids(subject, *shape))
    return np.concatenate(blocks)


def _read_csv(path: str | os.PathLike) -> tuple[pd.DataFrame | None, list[str]]:
    """Read a submission file as strings and check its raw header line.

    Returns
    -------
    frame : pandas.DataFrame or None
        All cells as str (empty cells as ""), None if the file is empty or unparsable.
    problems : list of str
    """
    with open(path, newline="") as fh:
        first_line = fh.readline()
    if not first_line:
        return None, [f"{path} is empty"]
    problems = []
    header = first_line.rstrip("\r\n")
    if header != HEADER:
        problems.append(f"header must be exactly {HEADER!r}, found {header!r}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        return None, problems + [f"{path} is not a readable CSV: {exc}"]
    return frame, problems


def _prediction_problems(ids: pd.Series, raw: pd.Series) -> list[str]:
    """Non-numeric, non-finite and out-of-range predictions, one message per kind."""
    numbers = np.array(pd.to_numeric(raw, errors="coerce"), dtype=float)
    non_numeric = []
    # to_numeric turns every failure into NaN: tell literal "nan"/"inf" from garbage.
    for i in np.flatnonzero(np.isnan(numbers)):
        value = raw.iloc[i]
        if pd.isna(value):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            non_numeric.append(i)
        else:
            numbers[i] = number
    problems = []
    if non_numeric:
        examples = [f"{ids.iloc[i]}={raw.iloc[i]!r}" for i in non_numeric[:N_EXAMPLES]]
        problems.append(f"{len(non_numeric)} predictions are not numeric, "
                        f"e.g. {', '.join(examples)}")
    numeric = np.ones(numbers.size, dtype=bool)
    numeric[non_numeric] = False
    checks = (
        (numeric & ~np.isfinite(numbers), "are not finite (NaN or inf)"),
        (numbers > 1, "are > 1"),
        (numbers < 0, "are < 0"),
    )
    for mask, what in checks:
        if mask.any():
            examples = [f"{i}={v:g}" for i, v in zip(ids[mask][:N_EXAMPLES], numbers[mask])]
            problems.append(f"{int(mask.sum())} predictions {what}, e.g. {', '.join(examples)}")
    return problems


def _id_problems(ids: pd.Series, expected: Mapping[int, tuple[int, int]]) -> list[str]:
    """Row count, duplicated, missing and unexpected ids."""
    wanted = pd.Index(_expected_ids(expected))
    problems = []
    if len(ids) != len(wanted):
        problems.append(f"{len(ids)} rows, expected {len(wanted)}")
    counts = ids.value_counts(sort=False)
    repeated = counts[counts > 1]
    if len(repeated):
        examples = [f"{i} ({n} times)" for i, n in repeated.head(N_EXAMPLES).items()]
        problems.append(f"{len(repeated)} ids appear more than once "
                        f"({int(repeated.sum() - len(repeated))} surplus rows), "
                        f"e.g. {', '.join(examples)}")
    missing = wanted[~wanted.isin(ids)]
    if len(missing):
        problems.append(f"{len(missing)} expected ids are missing, e.g. {_examples(missing)}")
    unexpected = ids[~ids.isin(wanted)].unique()
    if len(unexpected):
        message = f"{len(unexpected)} ids are not expected, e.g. {_examples(unexpected)}"
        subjects = pd.Series(unexpected).str.split("_").str[0].unique()
        foreign = sorted(set(subjects) - {str(s) for s in expected})
        if foreign:
            message += (f"; subjects not expected: {', '.join(foreign[:N_EXAMPLES])} "
                        f"(expected {', '.join(map(str, sorted(expected)))})")
        problems.append(message)
    return problems


def validate_submission(path_or_df: str | os.PathLike | pd.DataFrame,
                        expected: Mapping[int, tuple[int, int]]) -> None:
    """Check a submission against the expected participants and shapes.

    Parameters
    ----------
    path_or_df : path or pandas.DataFrame
        A submission file (its raw first line must be exactly ``id,prediction``) or a
        table with exactly the columns ``id`` and ``prediction``.
    expected : mapping
        Subject -> (n_trials, n_times) of its test data.

    Raises
    ------
    SubmissionError
        Listing every problem found: header, row count, duplicated, missing and
        unexpected ids (with the unexpected subjects), non-numeric, non-finite and
        out-of-range predictions; with counts and the first few offending ids.
    """
    if isinstance(path_or_df, pd.DataFrame):
        frame = path_or_df
        problems = []
        if tuple(map(str, frame.columns)) != COLUMNS:
            problems.append(f"columns must be exactly {list(COLUMNS)}, "
                            f"found {list(frame.columns)}")
    else:
        frame, problems = _read_csv(path_or_df)
    if frame is None or not set(COLUMNS) <= set(frame.columns):
        raise SubmissionError(problems + ["cannot check rows without 'id' and 'prediction' "
                                          "columns"])
    ids = frame["id"].astype(str).reset_index(drop=True)
    problems += _id_problems(ids, expected)
    problems += _prediction_problems(ids, frame["prediction"].reset_index(drop=True))
    if problems:
        raise SubmissionError(problems)


def write_submission(df: pd.DataFrame, run_dir: str | os.PathLike) -> Path:
    """Write ``run_dir/submission.csv`` and refresh ``<run_dir.parent>/latest.csv``.

    Validates nothing: call :func:`validate_submission` first.

    Parameters
    ----------
    df : pandas.DataFrame, shape (n_rows, 2)
        Columns ``id``, ``prediction``; written with ``%.6f`` floats, no index.
    run_dir : path
        Folder of this run; created if needed.

    Returns
    -------
    Path
        The written ``submission.csv``.

    Raises
    ------
    FileExistsError
        If the run already has a ``submission.csv`` (earlier runs are never
        overwritten); nothing is written then.
    """
    run_dir = Path(run_dir)
    dest = run_dir / SUBMISSION_NAME
    try:
        with atomic_path(dest, overwrite=False) as tmp:
            df.to_csv(tmp, index=False, float_format="%.6f")
    except FileExistsError as exc:
        raise FileExistsError(f"{dest} already exists: an earlier run's submission is never "
                              f"overwritten; write to a new run folder") from exc
    copy_file(dest, run_dir.parent / LATEST_NAME)
    return dest


def run_name(profile: str, model: str) -> str:
    """Default name of a run folder: ``<YYYYmmdd-HHMMSS>-<profile>-<model>``."""
    return time.strftime(f"%Y%m%d-%H%M%S-{profile}-{model.replace('/', '-')}")


def new_run_dir(root: str | os.PathLike, name: str) -> Path:
    """Create and return ``root/name``, or ``root/name-2``, ``-3``, ... if it exists: a
    folder no other run uses. Creating it is the claim (``mkdir`` fails if the folder
    exists), so two runs that start in the same second get different folders."""
    Path(root).mkdir(parents=True, exist_ok=True)
    path, i = Path(root) / name, 2
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            path, i = Path(root) / f"{name}-{i}", i + 1


def write_test_submission(test: np.ndarray, ds, folds,
                          run_dir: str | os.PathLike) -> tuple[Path, int]:
    """Write one result's test predictions as ``run_dir/submission.csv``.

    The table is built and validated against the data's test shapes, written (never over
    an earlier run's file, ``latest.csv`` refreshed: :func:`write_submission`) and the
    file as written is validated again.

    Parameters
    ----------
    test : np.ndarray, shape (n_test_trials, n_times)
        P(emotional), rows in ``folds.json`` test order (a result's ``test.npy``).
    ds : sleepemo.data.reader.Dataset
        The data the result was made from (test participants and their trial counts).
    folds : sleepemo.data.folds.Folds
    run_dir : path
        The new run folder.

    Returns
    -------
    (Path, int)
        The written file and its number of rows.
    """
    df = build_submission(folds.split_rows(test, "test"))
    expected = {s: (ds.test[s].n_trials, ds.n_times) for s in ds.test}
    validate_submission(df, expected)
    try:
        path = write_submission(df, run_dir)
    except BaseException:
        with contextlib.suppress(OSError):  # the folder new_run_dir claimed, if empty
            Path(run_dir).rmdir()
        raise
    validate_submission(path, expected)  # the file as written, not just the table
    return path, len(df)


def _parse_expected(text: str) -> tuple[int, int, int]:
    """Parse ``subject:n_trials:n_times`` for argparse."""
    parts = text.split(":")
    try:
        subject, n_trials, n_times = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected SUBJECT:N_TRIALS:N_TIMES with integers, got {text!r}") from None
    return subject, n_trials, n_times


def expected_from_data(data_dir: str | os.PathLike) -> dict[int, tuple[int, int]]:
    """Subject -> (n_trials, n_times) of every test file in a data folder."""

    _, test = scan(data_dir)
    # shapes only: NaN/Inf samples do not change them (no policy drops a trial)
    return {s: read_mat(path, bad_values="interpolate").X.shape[::2]
            for s, path in test.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``validate SUBMISSION.csv (--data-dir DIR | --expected S:N:T ...)``.

    Returns
    -------
    int
        0 if valid (``valid: N rows, M participants`` on stdout), 1 if invalid
        (``invalid:`` and the problems on stderr), 2 on bad arguments or unreadable file.
    """
    parser = argparse.ArgumentParser(prog="python -m sleepemo.data.submission",
                                     description="Check competition submission files.")
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check a submission file")
    validate.add_argument("submission", help="CSV with header id,prediction")
    source = validate.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", help="data folder: expected shapes from its testing/")
    source.add_argument("--expected", type=_parse_expected, action="append",
                        metavar="SUBJECT:N_TRIALS:N_TIMES",
                        help="one per participant, e.g. 1:372:200")
    args = parser.parse_args(argv)
    expected: dict[int, tuple[int, int]] = {}
    if args.data_dir:
        try:
            expected = expected_from_data(args.data_dir)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    for subject, n_trials, n_times in args.expected or []:
        if subject in expected:
            parser.error(f"subject {subject} given twice in --expected")
        expected[subject] = (n_trials, n_times)
    try:
        validate_submission(args.submission, expected)
    except SubmissionError as exc:
        print("invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"- {problem}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_rows = sum(n_trials * n_times for n_trials, n_times in expected.values())
    print(f"valid: {n_rows} rows, {len(expected)} participants")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
