"""Stage 00: leave-one-participant-out folds, written once to ``<out>/folds.json``."""
from __future__ import annotations

from ..folds import write_folds
from ..stage import Stage, StageOutput


def run(stage: Stage, force: bool = False) -> StageOutput:
    """Write ``folds.json`` (kept as it is for the same data; refused for other data
    unless ``force``)."""
    ds = stage.dataset()
    folds, written = write_folds(ds, stage.out / "folds.json", force=force)
    n_train = sum(folds.n_trials[s] for s in folds.train_subjects)
    n_test = sum(folds.n_trials[s] for s in folds.test_subjects)
    summary = (f"{'wrote' if written else 'kept'} {stage.out / 'folds.json'}: {folds.n_folds} "
               f"LOPO folds, test participants {list(folds.test_subjects)}")
    evidence = (f"Data: `{ds.root}`, {len(ds.ch_names)} channels at {ds.sfreq:g} Hz, "
                f"{ds.n_times} samples per trial. {folds.n_folds} training participants "
                f"({n_train} trials) give {folds.n_folds} folds; test participants "
                f"{', '.join(f'S{s}' for s in folds.test_subjects)} ({n_test} trials). "
                f"Data fingerprint `{folds.data_fingerprint[:12]}`.")
    return StageOutput({"n_folds": folds.n_folds, "written": written,
                        "train_trials": n_train, "test_trials": n_test,
                        "data_fingerprint": folds.data_fingerprint,
                        # what new recordings must match (sleepemo.predict checks them)
                        "channels": list(ds.ch_names), "sfreq": float(ds.sfreq),
                        "n_times": int(ds.n_times)}, summary, evidence)
