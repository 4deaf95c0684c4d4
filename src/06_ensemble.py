"""Stage 06: an Optuna-tuned blend of every model's out-of-fold predictions, with a nested
leave-one-participant-out score (tune on 13 participants, score the 14th).

Reads:  <data-dir>, <out>/folds.json, every non-diagnostic result of stages 01-05
        (oof.npy, test.npy, meta.json), the profile's `ensemble:` section
Writes: <out>/06_ensemble/ensemble/  per fold fold<k>.npz (the held-out participant's
            nested prediction, the fold's tuned settings), then oof.npy (nested),
            test.npy (the final ensembler's), score.json, meta.json (a result of the
            predictions contract: its LOPO score is the nested score)
        <out>/06_ensemble/studies/<study>.db (one resumable SQLite study each; or
            `ensemble.storage`), ensembler.json (the final settings), metrics.json
            (tuned and nested scores), ensemble_curve.png, optimization_history.png,
            param_importances.png, evidence.md

Nothing fitted for fold k sees the held-out participant's labels. `--set
ensemble.shuffle_labels=true` runs the label-shuffled check.
"""
from sleepemo import cli

if __name__ == "__main__":
    cli.run_stage("ensemble", doc=__doc__)
