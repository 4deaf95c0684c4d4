"""Stage 02: band features and masked-autoencoder pre-training on train + test, no labels.

Reads:  <data-dir> (the .mat files), <out>/folds.json, the profile's `mae:` section
Writes: <out>/cache/band_features/<key>/S<id>.npy  band features (n_trials, 16, 200, 5),
            float32, memory-mapped; the key hashes data, feature settings and code
        <out>/02_mae/ckpt/last.pt   checkpoint every epoch (resume after a kill)
        <out>/02_mae/encoder.pt     encoder weights for stage 03; run.json its config/seed
        <out>/02_mae/metrics.json   reconstruction error vs references, probe scores,
                                    throughput, peak memory
        <out>/02_mae/{mae_probe,band_probe}/  LOPO linear probes (oof.npy, test.npy)
        <out>/lopo.csv and pictures, updated with the probes

No label is used to train the encoder, so one encoder serves every LOPO fold; the
probes' logistic regressions are fitted inside each fold.
"""
import json

from sleepemo.cli import prepare, run, stage_parser
from sleepemo.pretrain import run_stage


def main() -> None:
    stage = prepare(stage_parser(__doc__).parse_args())
    m = run_stage(stage)
    r = m["reconstruction_mse_on_held_out_participants"]
    print(f"masked-point MSE on held-out participants {m['val_subjects']}: MAE {r['mae']:.4f}"
          f" | band mean {r['band_mean']:.4f} | linear interpolation "
          f"{r['linear_interpolation']:.4f}")
    print("linear probe LOPO window AUC:", json.dumps(m["linear_probe_lopo_window_auc"]))
    print(f"wrote {stage.out / '02_mae' / 'metrics.json'}")


if __name__ == "__main__":
    run(main)
