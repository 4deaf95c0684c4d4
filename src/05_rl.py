"""Stage 05: reinforcement-learning heads, each against its supervised twin, under
leave-one-participant-out: a DQN after RLEEGNet (trial features with a CSP fitted in the
fold) and a SAC after EEGDancer (per-token decisions over VQ prototypes of the MAE's
embeddings).

Reads:  <data-dir>, <out>/folds.json, <out>/02_mae/ and <out>/cache/band_features/ (SAC),
        the profile's `rl:` section
Writes: <out>/05_rl/rl_{dqn,dqn_twin,sac,sac_twin}/  per fold fold<k>.npz, then
            oof.npy, test.npy, oof_trial.npy, test_trial.npy, score.json, meta.json
            (results of the predictions contract)
        <out>/05_rl/{rl_fold<k>.pt, sac_fold<k>.pt} (weights as tensors, curves:
            the resume points), prototypes.pt, learning_curves.png, metrics.json,
            evidence.md

Fold k trains on its training participants only (two of them fit the temperatures, the
smoothness weight and the curves); held-out and test participants are only predicted.
`--set rl.shuffle_labels=true` runs the label-shuffled check.
"""
from sleepemo import cli

if __name__ == "__main__":
    cli.run_stage("rl", doc=__doc__)
