"""Submit a finished run (or a given file) to Kaggle, wait for its public score and log it.

Command line (``./run.sh submit [ARGS]`` sets up the environment and calls it)::

    python -m sleepemo.kaggle.submit [--run RUN] [--model MODEL] [-m MESSAGE] [--dry-run]
                              [--interval S] [--max-interval S] [--timeout S]
                              [--ref REF] [--submissions DIR]
    python -m sleepemo.kaggle.submit --file FILE [--data-dir DATA] [-m MESSAGE] [--dry-run]
                              [--interval S] [--max-interval S] [--timeout S]
                              [--submissions DIR]

Reads:  ``submissions/<run>/summary.json`` and ``submission.csv`` (written by stage 07;
        default run: the newest folder with a ``summary.json``); the ensemble's
        ``06_ensemble/metrics.json`` (its ``nested`` key) beside the submission or in the
        run's artefact folder, when it exists; with ``--model``: the run's artefact folder
        (``folds.json``, the model's result ``NN_stage/<model>/``) and its data folder
        (test shapes, ``solution.csv`` if present); with ``--file`` (typically a kernel's
        ``submission.csv``, ``./run.sh kaggle output``): that file, checked against the
        test files of ``--data-dir`` (default: the data found under ``input/``) before
        any upload, and a ``summary.json`` (and ``lopo.csv``) beside it if there is one;
        its row's ``run`` is ``file:<the file's folder>``, its ``model`` the summary's,
        else ``kernel``
Writes: with ``--model``: a new run folder ``submissions/<time>-<profile>-<model>/``
        (``submission.csv``, validated; ``summary.json``) and ``submissions/latest.csv``;
        one row appended to ``submissions/leaderboard.csv`` per submission Kaggle
        registered (not with ``--dry-run``)

The row's ``status`` is ``complete`` (with the public score), ``error`` (Kaggle could not
score the file: the row is kept, because the attempt counts against the daily limit and
the log should say why it has no score; ``error`` holds Kaggle's reason) or ``pending``
(``--timeout`` passed first: the row keeps the submission's ``ref``, and
``--ref REF`` later polls that submission again and appends its final row). A submission
that Kaggle refused outright (upload failed, rules not accepted, daily limit) leaves no
row: nothing was registered. Read the public scores from the ``complete`` rows.

Exit codes: 0 scored (or ``--dry-run`` done), 1 Kaggle refused, failed or timed out,
2 bad input or no usable Kaggle credentials (one line on standard error, no traceback,
never a secret).
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import io
import numbers
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from sleepemo import COMPETITION_SLUG
from sleepemo.config import project_dir
from sleepemo.data.download import (KaggleApiError, _short_message, find_data_root,
                                    kaggle_api, mask_secrets, require_credentials)
from sleepemo.data.folds import read_folds
from sleepemo.data.reader import DataError, load_dataset
from sleepemo.data.submission import (SubmissionError, expected_from_data, new_run_dir,
                                      run_name, validate_submission, write_test_submission)
from sleepemo.io import atomic_path, read_json, write_json
from sleepemo.metric import score_files
from sleepemo.pipeline.artefacts import find
from sleepemo.pipeline.stage import stage_dir

LEADERBOARD_NAME = "leaderboard.csv"
#: Columns of ``leaderboard.csv``, in order.
COLUMNS = ("run", "model", "lopo", "nested", "local_score", "public_score", "status",
           "submitted_at", "message", "ref", "error")
SUMMARY_NAME = "summary.json"
#: Statuses of a Kaggle submission (``kagglesdk`` ``SubmissionStatus`` names, lower case).
PENDING, COMPLETE, ERROR = "pending", "complete", "error"

#: Pauses between polls grow by this factor.
BACKOFF = 1.5
# The clock and the pause of the polling loop (tests replace them).
_now = time.monotonic
_sleep = time.sleep


class SubmitUsageError(ValueError):
    """Bad input (run folder, model, leaderboard file): exit code 2."""


class SubmitFailed(RuntimeError):
    """Kaggle refused or lost the submission: exit code 1."""


# ------------------------------------------------------------------ the run
def find_run(root: str | os.PathLike, run: str | None = None) -> Path:
    """The run folder: ``run`` (a path, or a folder name under ``root``), else the newest
    folder of ``root`` with a ``summary.json`` (by that file's time, then name)."""
    root = Path(root)
    if run:
        path = Path(run) if Path(run).is_dir() else root / run
        if not (path / SUMMARY_NAME).is_file():
            raise SubmitUsageError(f"{path}: no {SUMMARY_NAME}: not a finished run (stage 07 "
                                   "writes it beside the submission)")
        return path
    runs = [p.parent for p in root.glob(f"*/{SUMMARY_NAME}")]
    if not runs:
        raise SubmitUsageError(f"{root}: no finished run (a folder with {SUMMARY_NAME}, "
                               "written by stage 07): run ./run.sh first")
    return max(runs, key=lambda p: ((p / SUMMARY_NAME).stat().st_mtime, p.name))


def read_summary(run_dir: Path) -> dict:
    """The run's ``summary.json``, checked for what the leaderboard needs."""
    path = run_dir / SUMMARY_NAME
    try:
        summary = read_json(path)
    except (OSError, ValueError) as exc:
        raise SubmitUsageError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(summary, dict) or not summary.get("model"):
        raise SubmitUsageError(f"{path}: has no 'model' entry: not written by stage 07")
    return summary


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _lopo(run_dir: Path, summary: dict) -> float | None:
    """The submitted model's LOPO window AUC: ``summary.json``, else the run's
    ``lopo.csv`` (its ``overall`` column)."""
    value = _number(summary.get("lopo_window_auc"))
    table = run_dir / "lopo.csv"
    if value is None and table.is_file():
        with open(table, newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("model") == summary["model"]:
                    try:
                        return float(row["overall"])
                    except (KeyError, ValueError):
                        return None
    return value


def _nested(run_dir: Path, summary: dict) -> float | None:
    """The ensemble's nested score: key ``nested`` of ``06_ensemble/metrics.json`` beside
    the submission or in the run's artefact folder; None when the run has no ensemble."""
    places = [run_dir]
    if summary.get("artefacts"):
        places.append(_repo_path(summary["artefacts"]))
    for place in places:
        path = stage_dir(place, "ensemble") / "metrics.json"
        if not path.is_file():
            continue
        try:
            value = read_json(path).get("nested")
        except (OSError, ValueError, AttributeError):
            raise SubmitUsageError(f"{path}: not a JSON object") from None
        return _number(value)
    return None


def _repo_path(path: str) -> Path:
    """A path from a summary: relative ones are relative to the project folder
    (:func:`sleepemo.config.project_dir`: the checkout, where run.sh works), unless they
    exist relative to the current folder."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else project_dir() / p


def write_model_submission(run_dir: Path, summary: dict, model: str,
                           root: str | os.PathLike) -> Path:
    """A new run folder under ``root`` submitting ``model``'s test predictions from the
    artefacts of the finished run ``run_dir``.

    The file goes through the submission writer and validator stage 07 uses
    (:func:`sleepemo.data.submission.write_test_submission`); with ``solution.csv`` beside the
    data it is scored as stage 07 scores the local leaderboard. ``summary.json`` has the
    keys of stage 07's (model, stage, lopo_window_auc, submission, rows, data_dir,
    artefacts, profile, local_leaderboard when scored) and ``from_run``.
    """

    for key in ("artefacts", "data_dir"):
        if not summary.get(key):
            raise SubmitUsageError(f"{run_dir / SUMMARY_NAME}: has no {key!r} entry")
    artefacts = _repo_path(summary["artefacts"])
    try:
        result = find(artefacts, model)
    except KeyError as exc:
        raise SubmitUsageError(f"--model {model}: {exc.args[0]}") from None
    folds_path = artefacts / "folds.json"
    if not folds_path.is_file():
        raise SubmitUsageError(f"{folds_path}: missing (stage 00 writes it)")
    ds = load_dataset(_repo_path(summary["data_dir"]), progress=False,
                      bad_values=_run_bad_values(artefacts))
    folds = read_folds(folds_path)
    try:
        folds.check(ds)
    except ValueError as exc:
        raise SubmitUsageError(f"{folds_path}: {exc}") from None
    profile = str(summary.get("profile") or "run")
    new = new_run_dir(root, run_name(profile, result.label))
    path, n_rows = write_test_submission(result.test, ds, folds, new)
    out = {"model": result.label, "stage": result.stage,
           "lopo_window_auc": round(float(result.score()[0].score), 4),
           "submission": str(path), "rows": n_rows, "data_dir": str(ds.root),
           "artefacts": str(artefacts), "profile": profile, "from_run": run_dir.name}
    if ds.solution is not None:
        out["local_leaderboard"] = score_files(path, ds.solution, sfreq=ds.sfreq).score
    if (artefacts / "config.yaml").is_file():
        shutil.copyfile(artefacts / "config.yaml", new / "config.yaml")
    write_json(new / SUMMARY_NAME, out, overwrite=False)
    return new


def _run_bad_values(artefacts: Path) -> str:
    """The run's ``data.bad_values`` (its saved config.yaml), so that data the run repaired
    is read the same way again; ``error`` for runs saved without it."""
    import yaml

    path = artefacts / "config.yaml"
    cfg = yaml.safe_load(path.read_text()) if path.is_file() else None
    data = cfg.get("data") if isinstance(cfg, dict) else None
    return str((data or {}).get("bad_values", "error"))


# ------------------------------------------------------------------ --file
#: The row's ``model`` for a file without a ``summary.json`` beside it.
FILE_MODEL = "kernel"


def default_data_dir() -> Path | None:
    """The data a file is checked against: the competition's in ``input/<slug>/`` of the
    project (:func:`sleepemo.config.project_dir`), else any data folder under ``input/``
    (the synthetic data has the competition's test shapes); None if there is none."""
    inputs = project_dir() / "input"
    return find_data_root(inputs / COMPETITION_SLUG) or find_data_root(inputs)


def check_file(path: Path, data_dir: str | os.PathLike | None) -> tuple[Path, int]:
    """Validate the submission ``path`` against the test files of ``data_dir`` (default:
    :func:`default_data_dir`); returns ``(data folder, rows)``."""
    if not path.is_file():
        raise SubmitUsageError(f"--file {path}: no such file")
    data = Path(data_dir) if data_dir else default_data_dir()
    if data is None:
        raise SubmitUsageError(f"no data folder under {project_dir() / 'input'} to check "
                               f"{path} against: give --data-dir DATA (the competition "
                               "data: the folder with training/ and testing/)")
    expected = expected_from_data(data)
    try:
        validate_submission(path, expected)
    except SubmissionError as exc:
        raise SubmitUsageError(f"{path} does not fit the test data of {data}: "
                               f"{'; '.join(exc.problems)}; nothing was uploaded") from None
    return data, sum(n * t for n, t in expected.values())


def file_row(path: Path) -> dict:
    """The leaderboard cells a file gives before its upload: ``run`` ``file:<folder>``;
    ``model``, ``lopo``, ``nested`` and ``local_score`` from a stage-07 ``summary.json``
    beside it (else ``kernel`` and empty cells)."""
    folder = path.resolve().parent
    summary: dict = {}
    if (folder / SUMMARY_NAME).is_file():
        try:
            summary = read_summary(folder)
        except SubmitUsageError as exc:
            print(f"ignored: {exc}", file=sys.stderr)
    row = {"run": f"file:{folder.name}", "model": summary.get("model") or FILE_MODEL,
           "lopo": None, "nested": None, "local_score": None}
    if summary:
        row.update(lopo=_lopo(folder, summary), nested=_nested(folder, summary),
                   local_score=_number(summary.get("local_leaderboard")))
    return row


# ------------------------------------------------------------------ the leaderboard log
def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def append_row(path: str | os.PathLike, row: dict) -> None:
    """Append one row to the leaderboard CSV (header ``COLUMNS`` written first if the
    file is new).

    The earlier bytes are copied unchanged into a temporary file, the row added and the
    file renamed over the old one, under an exclusive lock (``.<name>.lock``), so that
    neither a killed process nor two processes appending at once loses a row.

    Raises
    ------
    SubmitUsageError
        The file exists with another header: it is left alone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = path.read_bytes() if path.exists() else b""
        if old:
            header = old.split(b"\n", 1)[0].rstrip(b"\r").decode(errors="replace")
            if header != ",".join(COLUMNS):
                raise SubmitUsageError(f"{path}: header is {header!r}, expected "
                                       f"{','.join(COLUMNS)!r}; not appending (move the "
                                       "file away to start a new log)")
            if not old.endswith(b"\n"):
                old += b"\n"
        else:
            writer.writerow(COLUMNS)
        writer.writerow([_cell(row.get(c)) for c in COLUMNS])
        with atomic_path(path) as tmp:
            tmp.write_bytes(old + buf.getvalue().encode())


def read_leaderboard(path: str | os.PathLike) -> list[dict]:
    """The rows of a leaderboard CSV (all values as str)."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ Kaggle
@dataclass
class Outcome:
    """A submission as last seen: status (pending / complete / error), public score (the
    string Kaggle gives, "" if none), Kaggle's error text, description and date."""

    status: str
    public_score: str = ""
    error: str = ""
    description: str = ""
    date: datetime | None = None


def _status(submission) -> str:
    """``SubmissionStatus.COMPLETE`` (kagglesdk enum) or ``"complete"`` -> ``complete``."""
    status = getattr(submission, "status", None)
    name = getattr(status, "name", status)
    return str(name or PENDING).lower()


def _find(submissions, ref: int | None, message: str):
    """The submission with ``ref`` (Kaggle's id), else the newest with ``message`` as its
    description (the list comes newest first)."""
    for s in submissions or []:
        if s is None:
            continue
        if ref:
            if getattr(s, "ref", None) == ref:
                return s
        elif getattr(s, "description", None) == message:
            return s
    return None


def poll_until(ask, done, interval: float, timeout: float, max_interval: float,
               backoff: float = BACKOFF, note=lambda seen, pause: None):
    """``ask()`` until ``done(answer)`` or ``timeout`` seconds passed; returns the last
    answer. The pause starts at ``interval`` and grows by ``backoff`` up to
    ``max_interval``; ``note(answer, pause)`` before each (the clock and the pause are
    this module's ``_now`` and ``_sleep``: tests replace them)."""
    deadline = _now() + timeout
    wait = interval
    while True:
        seen = ask()
        remaining = deadline - _now()
        if done(seen) or remaining <= 0:
            return seen
        pause = min(wait, remaining)
        note(seen, pause)
        _sleep(pause)
        wait = min(wait * backoff, max_interval)


def poll(api, competition: str, ref: int | None, message: str, interval: float,
         timeout: float, max_interval: float, backoff: float = BACKOFF,
         log=lambda m: print(m, file=sys.stderr)) -> Outcome:
    """Ask Kaggle for the submission until it is complete or failed, or ``timeout``
    seconds passed (:func:`poll_until`). A failed listing (network) is logged and
    retried."""
    seen = [Outcome(PENDING)]

    def ask() -> tuple[Outcome, bool]:
        try:
            sub = _find(api.competition_submissions(competition), ref, message)
        except Exception as exc:  # a network blip must not lose a registered submission
            log(f"listing the submissions failed ({_short_message(exc)}); retrying")
            sub = None
        if sub is not None:
            seen[0] = Outcome(_status(sub), str(getattr(sub, "public_score", "") or ""),
                              str(getattr(sub, "error_description", "") or ""),
                              str(getattr(sub, "description", "") or ""),
                              getattr(sub, "date", None))
        return seen[0], sub is not None

    def note(answer, pause):
        outcome, listed = answer
        log(f"submission {ref or message!r}: {outcome.status if listed else 'not listed yet'}"
            f"; next check in {pause:.0f} s")

    return poll_until(ask, lambda answer: answer[0].status != PENDING, interval, timeout,
                      max_interval, backoff, note)[0]


def _utc_iso(date: datetime | None = None) -> str:
    """``date`` (naive = UTC, as Kaggle's) or now, as ``YYYY-MM-DDTHH:MM:SS+00:00``."""
    date = date or datetime.now(timezone.utc)
    if date.tzinfo is None:
        date = date.replace(tzinfo=timezone.utc)
    return date.astimezone(timezone.utc).isoformat(timespec="seconds")


def submit_file(api, path: Path, message: str, competition: str) -> int | None:
    """Upload ``path``; return Kaggle's ``ref`` of the new submission (None if it gave
    none). Raises :class:`SubmitFailed` when Kaggle refused it (nothing registered)."""
    try:
        response = api.competition_submit(str(path), message, competition, quiet=True)
    except Exception as exc:
        text = _short_message(exc)
        hint = ""
        if "403" in text or "Forbidden" in text:
            hint = (f"; accept the rules at https://www.kaggle.com/competitions/"
                    f"{competition}/rules")
        raise SubmitFailed(f"Kaggle refused the submission of {path} ({text}){hint}") from None
    failed = getattr(api, "COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE", None)
    if failed and getattr(response, "message", None) == failed:
        raise SubmitFailed(f"uploading {path} to Kaggle failed ({failed})")
    return getattr(response, "ref", None) or None


# ------------------------------------------------------------------ command line
def add_poll_options(ap, interval: float, max_interval: float, timeout: float,
                     timeout_help: str, what: str = "checks", when: str = "") -> None:
    """``--interval``, ``--max-interval`` and ``--timeout`` of :func:`poll_until`, with
    these defaults (``when``: a prefix of the help texts, e.g. "with --wait: ")."""
    ap.add_argument("--interval", type=float, default=interval,
                    help=f"{when}first pause between {what}, s (default {interval:g})")
    ap.add_argument("--max-interval", type=float, default=max_interval,
                    help=f"{when}longest pause; pauses grow {BACKOFF:g}x (default "
                         f"{max_interval:g})")
    ap.add_argument("--timeout", type=float, default=timeout, help=timeout_help)


def poll_options_problem(args) -> str | None:
    """What is wrong with the options of :func:`add_poll_options`, if anything."""
    if args.interval <= 0 or args.max_interval <= 0 or args.timeout < 0:
        return "--interval and --max-interval must be > 0, --timeout >= 0"
    return None


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m sleepemo.kaggle.submit",
        description="Submit a finished run's submission.csv to Kaggle, wait for the public "
                    "score and append a row to <submissions>/leaderboard.csv.")
    ap.add_argument("--run", help="run folder (name under --submissions, or a path; "
                                  "default: the newest finished run)")
    ap.add_argument("--model", help="submit this model of the run's artefacts instead "
                                    "(writes a new run folder first), e.g. starter")
    ap.add_argument("-m", "--message", help="submission description (default: sleepemo "
                                            "<run> <model> LOPO <score>)")
    ap.add_argument("--submissions", default=str(project_dir() / "submissions"),
                    help="submissions folder (default: submissions/ of the checkout, else of "
                         "the current folder)")
    add_poll_options(ap, 30.0, 300.0, 1800.0, "stop waiting after this many seconds "
                     "(default 1800); the row is logged as pending", what="score checks")
    ap.add_argument("--ref", type=int, help="do not upload: wait for this earlier "
                                            "submission (a pending row's ref) and log it")
    ap.add_argument("--file", help="submit this file instead of a run's (e.g. a kernel's "
                                   "submission.csv from ./run.sh kaggle output); checked "
                                   "against --data-dir first")
    ap.add_argument("--data-dir", help="with --file: the data whose test files it must fit "
                                       "(default: the data found under input/)")
    ap.add_argument("--dry-run", action="store_true",
                    help="write the --model submission (check the --file) and show the "
                         "row; no Kaggle call")
    return ap


def _check_args(ap, args) -> None:
    if poll_options_problem(args):
        ap.error(poll_options_problem(args))
    if args.ref is not None and args.model:
        ap.error("--ref polls an earlier submission; it cannot be combined with --model")
    if args.file and (args.run or args.model):
        ap.error("--file submits that file; it cannot be combined with --run or --model")
    if args.data_dir and not args.file:
        ap.error("--data-dir is for --file (a run knows its data)")


def run(args) -> int:
    """The command's work (see the module docstring); raises the errors :func:`main`
    turns into messages."""
    root = Path(args.submissions)
    if args.file:
        return _run_file(args, root)
    run_dir = find_run(root, args.run)
    summary = read_summary(run_dir)
    _require_credentials(args)
    if args.model:
        run_dir = write_model_submission(run_dir, summary, args.model, root)
        summary = read_summary(run_dir)
        print(f"wrote {run_dir / 'submission.csv'} (model {summary['model']}, validated)",
              file=sys.stderr)
    path = run_dir / "submission.csv"
    if not path.is_file():
        raise SubmitUsageError(f"{path}: missing: the run has no submission file")
    lopo = _lopo(run_dir, summary)
    row = {"run": run_dir.name, "model": summary["model"], "lopo": lopo,
           "nested": _nested(run_dir, summary),
           "local_score": _number(summary.get("local_leaderboard"))}
    resume = f"wait for it later with: ./run.sh submit --run {row['run']} --ref " + "{ref}"
    return _submit_and_log(args, root, path, row, resume)


def _require_credentials(args) -> None:
    if not args.dry_run:
        require_credentials()


def _run_file(args, root: Path) -> int:
    """``--file``: check the file, then submit and log it as a run's."""
    path = Path(args.file)
    if not path.is_file():
        raise SubmitUsageError(f"--file {path}: no such file")
    _require_credentials(args)
    data, n_rows = check_file(path, args.data_dir)
    print(f"{path}: {n_rows} rows, fits the test data of {data}", file=sys.stderr)
    resume = f"wait for it later with: ./run.sh submit --file {path} --ref " + "{ref}"
    return _submit_and_log(args, root, path, file_row(path), resume)


def _submit_and_log(args, root: Path, path: Path, row: dict, resume: str) -> int:
    """Upload ``path`` (or, with ``--ref``, find that earlier submission), wait for its
    score and append ``row`` completed to the leaderboard; ``--dry-run``: show the row.
    ``resume`` (with ``{ref}``) says how to get a pending score later."""
    lopo = row["lopo"]
    message = args.message or (f"sleepemo {row['run']} {row['model']}"
                               + (f" LOPO {lopo:.4f}" if lopo is not None else ""))
    if args.dry_run:
        print(f"dry run: would submit {path} to {COMPETITION_SLUG} as {message!r}; "
              f"row: " + ", ".join(f"{k}={_cell(v)}" for k, v in row.items()))
        return 0

    api = kaggle_api()
    ref = args.ref
    submitted_at = None
    if ref is None:
        ref = submit_file(api, path, message, COMPETITION_SLUG)
        submitted_at = _utc_iso()
        print(f"submitted {path} (ref {ref}); waiting for the public score", file=sys.stderr)
    outcome = poll(api, COMPETITION_SLUG, ref, message if args.ref is None else "",
                   args.interval, args.timeout, args.max_interval)
    if args.ref is not None:
        if outcome.description:
            message = outcome.description
        submitted_at = _utc_iso(outcome.date) if outcome.date else _utc_iso()
    row.update(public_score=outcome.public_score if outcome.status == COMPLETE else "",
               status=outcome.status, submitted_at=submitted_at, message=message,
               ref=ref, error=outcome.error if outcome.status == ERROR else "")
    leaderboard = root / LEADERBOARD_NAME
    append_row(leaderboard, row)
    if outcome.status == COMPLETE:
        print(f"{row['run']} ({row['model']}): public score {outcome.public_score or '?'}"
              f", LOPO {_cell(lopo) or '?'}; logged in {leaderboard}")
        return 0
    if outcome.status == PENDING:
        raise SubmitFailed(f"no score after {args.timeout:g} s; logged as pending in "
                           f"{leaderboard}; {resume.replace('{ref}', str(ref))}")
    raise SubmitFailed(f"Kaggle could not score submission {ref} of {path} "
                       f"({outcome.status}: {outcome.error or 'no reason given'}); "
                       f"logged in {leaderboard}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit code (see the module docstring)."""

    ap = _parser()
    args = ap.parse_args(argv)
    _check_args(ap, args)
    try:
        return run(args)
    except (SubmitUsageError, KaggleApiError, DataError, SubmissionError,
            FileExistsError) as exc:
        _error(exc)
        return 2
    except SubmitFailed as exc:
        _error(exc)
        return 1


def _error(exc: BaseException) -> None:
    """``error: <message>`` on one line of standard error, secrets masked."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    print(f"error: {mask_secrets(text)}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
