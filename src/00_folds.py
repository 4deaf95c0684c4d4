"""Stage 00: leave-one-participant-out folds.

Reads:  <data-dir>/training/sleep_{emo,neu}/S_<id>_cleaned.mat, <data-dir>/testing/*.mat
Writes: <out>/folds.json (one fold per training participant, data fingerprint, row order),
        <out>/00_folds/repairs.csv (NaN/Inf samples repaired under data.bad_values=interpolate),
        <out>/config.yaml (resolved config), <out>/00_folds/{metrics.json, evidence.md}

The file is written once; later stages read it. Rerunning on the same data keeps it;
on other data it refuses unless --force.
"""
from sleepemo import cli

if __name__ == "__main__":
    cli.run_stage("folds", doc=__doc__)
