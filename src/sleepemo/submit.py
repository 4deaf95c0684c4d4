"""Stage 07 logic: choose the model, write and validate the submission, score it locally."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from .config import REPO
from .io import write_json
from .metric import format_report, score_files
from .report import split_by_subject, write_report
from .submission import build_submission, validate_submission, write_submission


def choose_model(table, requested: str | None = None) -> str:
    """The requested model, else the non-diagnostic one with the best overall LOPO score."""
    if requested:
        if requested not in table.index:
            raise KeyError(f"model {requested!r} has no results; have {list(table.index)}")
        return requested
    candidates = table[~table["diagnostic"].astype(bool)]
    if candidates.empty:
        raise ValueError("no non-diagnostic model has results to submit")
    return str(candidates["overall"].astype(float).idxmax())


def _run_dir(root: Path, name: str) -> Path:
    """A run folder that does not exist yet (suffix -2, -3, ... if needed)."""
    path, i = root / name, 2
    while path.exists():
        path, i = root / f"{name}-{i}", i + 1
    return path


def make_submission(stage, model: str | None = None, submissions: str | Path | None = None,
                    run_name: str | None = None) -> dict:
    """Write ``submissions/<run>/submission.csv`` and its report; return the summary."""
    ds = stage.dataset()
    folds = stage.folds(ds)
    table, _, paths = write_report(stage.out, ds, folds)
    name = choose_model(table, model)
    test = np.load(paths[name] / "test.npy")
    preds = split_by_subject(test, folds.test_subjects, folds.n_trials)
    df = build_submission(preds)
    expected = {s: (ds.test[s].n_trials, ds.n_times) for s in ds.test}
    validate_submission(df, expected)

    root = Path(submissions) if submissions else REPO / "submissions"
    run = _run_dir(root, run_name or time.strftime(f"%Y%m%d-%H%M%S-{stage.cfg.profile}-{name}"))
    path = write_submission(df, run)
    validate_submission(path, expected)  # the file as written, not just the table
    for f in ("lopo.csv", "lopo_curves.png", "lopo_bars.png", "config.yaml"):
        shutil.copyfile(stage.out / f, run / f)

    summary = {"model": name, "lopo_window_auc": float(table.loc[name, "overall"]),
               "submission": str(path), "rows": int(len(df)), "data_dir": str(ds.root),
               "artefacts": str(stage.out), "profile": stage.cfg.profile}
    lines = ["LOPO window AUC (held-out training participants; overall = competition "
             "metric over all of them)",
             table.drop(columns="diagnostic").to_string(), "",
             f"submitted model: {name} (LOPO {summary['lopo_window_auc']:.4f})",
             f"submission: {path} ({len(df)} rows, validated); copied to "
             f"{root / 'latest.csv'}"]
    if ds.solution is not None:
        res = score_files(path, ds.solution, sfreq=ds.sfreq)
        summary["local_leaderboard"] = res.score
        lines += [f"local leaderboard (scored against {ds.solution}):",
                  format_report(res, ds.sfreq)]
    else:
        lines.append("no solution.csv beside the data: submit the file to Kaggle to score it")
    summary["text"] = "\n".join(lines)
    write_json(run / "summary.json", summary, overwrite=False)
    return summary
