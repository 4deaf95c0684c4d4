"""Stage 03: 16 channel experts (one small Transformer per EEG channel), initialised from
the stage-02 encoder and meta-learned across participants with first-order MAML, under
leave-one-participant-out.

Reads:  <data-dir>, <out>/folds.json, <out>/cache/band_features/ (built if missing),
        <out>/02_mae/{encoder.pt,mae_head.pt,run.json} (MAE-initialised variants),
        the profile's `experts:` section
Writes: <out>/03_experts/experts_<variant>[_tta]/  per fold: fold<k>.pt (trained experts,
            resume point) and fold<k>.npz; then oof.npy, test.npy (per timepoint),
            oof_trial.npy, test_trial.npy, oof_experts.npy, meta.json
        <out>/03_experts/metrics.json, expert_topomap.png
        <out>/lopo.csv and pictures, updated with the expert rows

Held-out and test participants are predicted zero-shot, and (`_tta` rows) after
unsupervised test-time adaptation with the MAE loss on their own trials; never with
their labels. `--set experts.shuffle_labels=true` runs the label-shuffled check.
"""
import json

from sleepemo.cli import prepare, run, stage_parser
from sleepemo.metatrain import run_stage


def main() -> None:
    stage = prepare(stage_parser(__doc__).parse_args())
    m = run_stage(stage)
    print("experts LOPO window AUC:", json.dumps({k: round(v, 4) for k, v in
                                                  m["lopo_window_auc"].items()}))
    print(f"{m['parameters_per_expert']} parameters per expert, "
          f"{m['parameters_all_experts']} in all; stage {m['stage_seconds']} s")
    print(f"wrote {stage.out / '03_experts' / 'metrics.json'}")


if __name__ == "__main__":
    run(main)
