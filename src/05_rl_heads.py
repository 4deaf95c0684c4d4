"""Stage 05: reinforcement-learning heads, each against its supervised twin, under
leave-one-participant-out (built so far: the DQN head after RLEEGNet and its twin).

Reads:  <data-dir>, <out>/folds.json, the profile's `rl:` section
Writes: <out>/05_rl_heads/rl_<head>/ and rl_<head>_twin/  per fold: fold<k>.npz; then
            oof.npy, test.npy (broadcast over the trial), oof_trial.npy, test_trial.npy,
            score.json, meta.json (results of the predictions contract)
        <out>/05_rl_heads/rl_fold<k>.pt (both networks' weights as tensors: resume point),
            learning_curves.png, metrics.json, evidence.md

Fold k fits its features (CSP) and heads on its training participants only.
`--set rl.shuffle_labels=true` runs the label-shuffled check.
"""
from sleepemo import stage
from sleepemo.stages import rl_heads

if __name__ == "__main__":
    stage.main("rl_heads", __doc__, rl_heads.run)
