"""Stage 02: band features and masked-autoencoder pre-training on train + test, no labels.

Reads:  <data-dir> (the .mat files), <out>/folds.json, the profile's `mae:` section
Writes: <out>/cache/band_features/<key>/S<id>.npy  band features (n_trials, 16, 200, 5),
            float32, memory-mapped; the key hashes data, feature settings and code
        <out>/02_mae/ckpt/last.pt   checkpoint every epoch (resume after a kill)
        <out>/02_mae/{encoder.pt, mae_head.pt, run.json}  the trained MAE (stage 03 reads
            it with sleepemo.mae.model.load_mae_weights)
        <out>/02_mae/{metrics.json, evidence.md}  reconstruction error vs references,
            probe scores, throughput, wall time, peak memory
        <out>/02_mae/{mae_probe,band_probe}/  LOPO linear probes (predictions contract)

No label is used to train the encoder, so one encoder serves every LOPO fold; the
probes' logistic regressions are fitted inside each fold.
"""
from sleepemo import cli

if __name__ == "__main__":
    cli.run_stage("mae", doc=__doc__)
