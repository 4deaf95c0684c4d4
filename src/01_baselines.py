"""Stage 01: baselines under LOPO.

Reads:  <data-dir> (the .mat files), <out>/folds.json, the profile's `baselines:` section
Writes: <out>/01_baselines/<model>/{fold<k>.npz, oof.npy, test.npy, score.json, meta.json}
        for every model in baselines.models (results of the predictions contract,
        sleepemo.pipeline.artefacts); <out>/01_baselines/{metrics.json, evidence.md}

oof.npy is (n_train_trials, n_times) in folds.json row order; test.npy is the mean of the
fold models' test predictions. Finished folds are reused (resume); an unchanged model is
skipped.
"""
from sleepemo import cli

if __name__ == "__main__":
    cli.run_stage("baselines", doc=__doc__)
