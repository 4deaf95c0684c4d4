"""Stage 00: leave-one-participant-out folds, written once to ``<out>/folds.json``, and the
table of NaN/Inf samples repaired under ``data.bad_values=interpolate``
(``<out>/00_folds/repairs.csv``)."""
from __future__ import annotations

import csv
import io

from sleepemo.data.folds import write_folds
from sleepemo.data.reader import Repair
from sleepemo.io import write_text
from sleepemo.pipeline.stage import Stage, StageOutput


def add_arguments(ap) -> None:
    """The stage's own option (``sleepemo stage folds``, ``src/00_folds.py``)."""
    ap.add_argument("--force", action="store_true", help="replace folds.json for new data")


def options(args) -> dict:
    """:func:`run`'s keyword arguments from the stage's own options."""
    return {"force": args.force}


def repairs_csv(repairs: list[Repair]) -> str:
    """The repair table: one row per (file, trial, channel) changed."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(Repair.FIELDS)
    w.writerows([getattr(r, k) for k in Repair.FIELDS] for r in repairs)
    return buf.getvalue()


def repairs_line(ds) -> str:
    """One sentence for the evidence: the policy and what it changed."""
    if not ds.repairs:
        return f"Bad values (`data.bad_values={ds.bad_values}`): none found."
    files = {r.file for r in ds.repairs}
    trials = {(r.file, r.trial) for r in ds.repairs}
    return (f"Bad values (`data.bad_values={ds.bad_values}`): "
            f"{sum(r.samples for r in ds.repairs)} NaN/Inf samples repaired in "
            f"{len(ds.repairs)} (trial, channel) pairs of {len(trials)} trials in "
            f"{len(files)} files; no trial dropped (`00_folds/repairs.csv`).")


def run(stage: Stage, force: bool = False) -> StageOutput:
    """Write ``folds.json`` (kept as it is for the same data; refused for other data
    unless ``force``) and ``00_folds/repairs.csv`` (header only when nothing was
    repaired)."""
    ds = stage.dataset()
    folds, written = write_folds(ds, stage.out / "folds.json", force=force)
    write_text(stage.dir / "repairs.csv", repairs_csv(ds.repairs))
    n_train = sum(folds.n_trials[s] for s in folds.train_subjects)
    n_test = sum(folds.n_trials[s] for s in folds.test_subjects)
    summary = (f"{'wrote' if written else 'kept'} {stage.out / 'folds.json'}: {folds.n_folds} "
               f"LOPO folds, test participants {list(folds.test_subjects)}")
    evidence = (f"Data: `{ds.root}`, {len(ds.ch_names)} channels at {ds.sfreq:g} Hz, "
                f"{ds.n_times} samples per trial. {folds.n_folds} training participants "
                f"({n_train} trials) give {folds.n_folds} folds; test participants "
                f"{', '.join(f'S{s}' for s in folds.test_subjects)} ({n_test} trials). "
                f"Data fingerprint `{folds.data_fingerprint[:12]}`.\n\n{repairs_line(ds)}")
    return StageOutput({"n_folds": folds.n_folds, "written": written,
                        "train_trials": n_train, "test_trials": n_test,
                        "data_fingerprint": folds.data_fingerprint,
                        "bad_values": ds.bad_values,
                        "repaired_samples": sum(r.samples for r in ds.repairs),
                        # what new recordings must match (sleepemo.predict.base.Run.check checks them)
                        "channels": list(ds.ch_names), "sfreq": float(ds.sfreq),
                        "n_times": int(ds.n_times)}, summary, evidence)
