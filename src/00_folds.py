"""Stage 00: leave-one-participant-out folds.

Reads:  <data-dir>/training/sleep_{emo,neu}/S_<id>_cleaned.mat, <data-dir>/testing/*.mat
Writes: <out>/folds.json (one fold per training participant, data fingerprint, row order),
        <out>/00_folds/repairs.csv (NaN/Inf samples repaired under data.bad_values=interpolate),
        <out>/config.yaml (resolved config), <out>/00_folds/{metrics.json, evidence.md}

The file is written once; later stages read it. Rerunning on the same data keeps it;
on other data it refuses unless --force.
"""
from sleepemo.pipeline import stage
from sleepemo.pipeline.folds import run


def add_arguments(ap):
    ap.add_argument("--force", action="store_true", help="replace folds.json for new data")


if __name__ == "__main__":
    stage.main("folds", __doc__, lambda s, args: run(s, force=args.force),
               add_arguments)
