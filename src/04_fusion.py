"""Stage 04: spatiotemporal fusion of the 16 channels (attention across channels with
electrode-position embeddings, then dilated temporal convolutions), under
leave-one-participant-out, with its ablations in the same run.

Reads:  <data-dir>, <out>/folds.json, <out>/cache/band_features/ and <out>/cache/evoked/
        (built if missing), <out>/03_experts/<fusion.expert_result>/fold<k>.pt (experts
        variants), <out>/02_mae/ (mae variant), the profile's `fusion:` section
Writes: <out>/04_fusion/fusion_<variant>/  per fold: fold<k>.pt (early-stopped weights,
            resume point) and fold<k>.npz; then oof.npy, test.npy (per timepoint),
            oof_trial.npy, test_trial.npy, oof_attention.npy, score.json, meta.json
            (results of the predictions contract)
        <out>/04_fusion/{metrics.json, evidence.md, fusion_curves.png,
            channel_attention.png}

Fold k trains on its training participants only, early-stopped on an inner split of
them; held-out and test participants are only predicted.
`--set fusion.shuffle_labels=true` runs the label-shuffled check.
"""
from sleepemo import cli

if __name__ == "__main__":
    cli.run_stage("fusion", doc=__doc__)
