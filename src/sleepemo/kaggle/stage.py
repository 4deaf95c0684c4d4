"""Stage 07: the run's report and the submission, from the best model by LOPO score.

The run-level report (``lopo.csv``, pictures, ``report.md``) is written here, by its one
owner (:func:`sleepemo.pipeline.report.write_report`), from the results every stage left through
the predictions contract. The submitted model is the non-diagnostic result with the
highest overall LOPO window AUC (or ``--model``); its ``test`` array becomes the
competition CSV, which is validated as a table and again as the file written. Stage 06's
ensemble is one of those results, scored by its nested LOPO score, so it is submitted
exactly when its nested score beats the best single model's LOPO; the summary says which
was chosen and why (:func:`ensemble_choice`), and whether the choice is within noise
(:func:`choice_noise`: the paired bootstrap interval of ``lopo.csv`` contains 0).
"""
from __future__ import annotations

from pathlib import Path

from sleepemo.config import project_dir
from sleepemo.data.submission import (new_run_dir, run_name as default_run_name,
                                      write_test_submission)
from sleepemo.io import copy_file, write_json
from sleepemo.metric import format_report, score_files
from sleepemo.pipeline.artefacts import results
from sleepemo.pipeline.choice import best_single
from sleepemo.pipeline.report import copy_report, scored_table, write_report
from sleepemo.pipeline.stage import Stage, StageOutput, peak_rss_mb


def add_arguments(ap) -> None:
    """The stage's own options (``sleepemo stage submission``, src/07_submission.py)."""
    ap.add_argument("--model", help="submit this model instead of the best by LOPO")
    ap.add_argument("--submissions", default=None,
                    help="submissions folder (default: submissions/ of the checkout, else "
                         "of the current folder)")
    ap.add_argument("--run-name", help="name of the run folder (default: time-profile-model)")


def options(args) -> dict:
    """:func:`run`'s keyword arguments from the stage's own options."""
    return {"model": args.model, "submissions": args.submissions, "run_name": args.run_name}


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


def ensemble_choice(table, listed) -> str | None:
    """Why the ensemble (stage 06) was or was not submitted: its nested score (its LOPO
    score) against the best single model's LOPO score; None without an ensemble."""
    ens = next((r for r in listed if r.stage == "ensemble" and not r.diagnostic), None)
    single = best_single(table)
    if ens is None or single is None:
        return None
    best, lopo = single
    nested = float(table.loc[ens.label, "overall"])
    tuned = ens.meta.get("tuned_score")
    tuned_txt = f" (tuned {tuned:.4f}, optimistic)" if tuned is not None else ""
    if nested > lopo:
        return (f"The ensemble's nested score {nested:.4f}{tuned_txt} beats the best single "
                f"model `{best}` (LOPO {lopo:.4f}): the ensemble is the candidate.")
    return (f"The ensemble's nested score {nested:.4f}{tuned_txt} does not beat the best "
            f"single model `{best}` (LOPO {lopo:.4f}): the single model is the candidate.")


def choice_noise(table, name: str) -> tuple[str, bool] | None:
    """Whether submitting ``name`` rather than its closest rival is within noise.

    The rival is the best single model (:func:`~sleepemo.pipeline.choice.best_single`)
    when ``name`` is not that model (e.g. the ensemble), else the runner-up (the next
    non-diagnostic result by ``overall``). The difference and its paired 95% interval
    are ``lopo.csv``'s (:mod:`sleepemo.pipeline.intervals`), read from ``table``.

    Returns
    -------
    (str, bool) or None
        The sentence for the log, summary and report, and whether the interval contains
        0; None when there is no rival.
    """
    best = best_single(table)
    if best is None:
        return None
    if name != best[0]:
        rival = best[0]
        diff, low, high = (float(table.loc[name, c])
                           for c in ("diff_to_best", "diff_low", "diff_high"))
    else:
        others = table[~table["diagnostic"].astype(bool)].drop(index=name)
        if others.empty:
            return None
        rival = str(others["overall"].astype(float).idxmax())
        # name minus rival = -(rival minus name): the interval mirrored
        diff, low, high = (-float(table.loc[rival, c]) + 0.0
                           for c in ("diff_to_best", "diff_high", "diff_low"))
    within = low <= 0 <= high
    text = (f"`{name}` minus `{rival}`: {diff:+.4f}, 95% interval [{low:+.4f}, "
            f"{high:+.4f}] (paired participant bootstrap), which "
            + ("contains 0: the choice is within noise, these participants cannot tell "
               "the two apart." if within else "excludes 0: the choice is not within "
                                                "noise."))
    return text, within


def run(stage: Stage, model: str | None = None, submissions: str | Path | None = None,
        run_name: str | None = None) -> StageOutput:
    """Write the report and ``submissions/<run>/submission.csv``; return the summary."""
    ds = stage.dataset()
    folds = stage.folds(ds)
    listed = results(stage.out)
    if not listed:
        raise FileNotFoundError(f"no model results under {stage.out}: run the stages first")
    scored = scored_table(listed)
    table = scored[0]
    name = choose_model(table, model)
    result = next(r for r in listed if r.label == name)
    root = Path(submissions) if submissions else project_dir() / "submissions"
    run_dir = new_run_dir(root, run_name or default_run_name(stage.cfg.profile, name))
    path, n_rows = write_test_submission(result.test, ds, folds, run_dir)

    summary = {"model": name, "stage": result.stage,
               "lopo_window_auc": float(table.loc[name, "overall"]),
               "submission": str(path), "rows": n_rows, "data_dir": str(ds.root),
               "artefacts": str(stage.out), "profile": stage.cfg.profile}
    lines = ["LOPO window AUC (held-out training participants; overall = competition "
             "metric over all of them)",
             table.drop(columns="diagnostic").to_string(), "",
             f"submitted model: {name} (LOPO {summary['lopo_window_auc']:.4f})",
             f"submission: {path} ({n_rows} rows, validated); copied to "
             f"{root / 'latest.csv'}",
             f"report: {stage.out / 'report.md'} (copied beside the submission)"]
    evidence = [f"Submitted `{name}` (stage {result.stage}, LOPO window AUC "
                f"{summary['lopo_window_auc']:.4f}), "
                + ("the requested model" if model else "the best non-diagnostic result")
                + f": {n_rows} rows, validated."]
    why = ensemble_choice(table, listed)
    if why:
        summary["ensemble_choice"] = why
        lines.append(why)
        evidence.append(why)
    noise = choice_noise(table, name)
    if noise:
        summary["choice_noise"], summary["choice_within_noise"] = noise
        lines.append(noise[0])
        evidence.append(noise[0])
    if ds.solution is not None:
        res = score_files(path, ds.solution, sfreq=ds.sfreq)
        summary["local_leaderboard"] = res.score
        lines += [f"local leaderboard (scored against {ds.solution}):",
                  format_report(res, ds.sfreq)]
        evidence.append(f"Scored against `solution.csv` beside the data (local "
                        f"leaderboard): **{res.score:.5f}**.")
    else:
        lines.append("no solution.csv beside the data: submit the file to Kaggle to score it")
        evidence.append("No `solution.csv` beside the data: the test set is unscored here.")
    summary["text"] = "\n".join(lines)
    write_json(run_dir / "summary.json", summary, overwrite=False)
    # the report last, so that it holds this stage's evidence and (almost all) its time
    stage.write_evidence("\n".join(evidence))
    write_report(stage.out, extra_times={stage.spec.name: {
        "stage_seconds": round(stage.seconds(), 1), "peak_rss_mb": peak_rss_mb()}},
        scored=scored)
    copy_report(stage.out, run_dir)
    copy_file(stage.out / "config.yaml", run_dir / "config.yaml")
    return StageOutput({k: v for k, v in summary.items() if k != "text"}, summary["text"],
                       "\n".join(evidence))
