"""Stage 03: 16 channel experts (one small Transformer per EEG channel), initialised from
the stage-02 encoder and meta-learned across participants with first-order MAML, under
leave-one-participant-out.

Reads:  <data-dir>, <out>/folds.json, <out>/cache/band_features/ (built if missing),
        <out>/02_mae/{encoder.pt,mae_head.pt,run.json} (MAE-initialised variants),
        the profile's `experts:` section
Writes: <out>/03_experts/experts_<variant>[_tta]/  per fold: fold<k>.pt (trained experts,
            resume point) and fold<k>.npz; then oof.npy, test.npy (per timepoint),
            oof_trial.npy, test_trial.npy, oof_experts.npy, score.json, meta.json
            (results of the predictions contract)
        <out>/03_experts/{metrics.json, evidence.md, expert_topomap.png}

Held-out and test participants are predicted zero-shot, and (`_tta` rows) after
unsupervised test-time adaptation with the MAE loss on their own trials; never with
their labels. `--set experts.shuffle_labels=true` runs the label-shuffled check.
"""
from sleepemo import cli

if __name__ == "__main__":
    cli.run_stage("experts", doc=__doc__)
