"""Stage 07: the run's report and the submission, from the best model by LOPO score.

Reads:  <data-dir> (test trial counts, solution.csv if present), <out>/folds.json,
        every result of the predictions contract under <out>/NN_*/<model>/ (oof.npy,
        test.npy, score.json, meta.json), each stage's metrics.json and evidence.md
Writes: <out>/{lopo.csv, lopo_curves.png, lopo_bars.png, report.md} (the run's report,
        written only here), <out>/07_submission/{metrics.json, evidence.md},
        submissions/<run>/submission.csv (validated; never overwrites an earlier run),
        submissions/latest.csv (a copy), and beside the submission: the report with its
        pictures, config.yaml, summary.json (chosen model, LOPO score, whether the choice
        is within noise, local leaderboard score when solution.csv exists, inputs)

Until the ensemble stage (06) exists, the submitted model is the non-diagnostic model
with the highest overall LOPO window AUC (--model picks one by name).
"""
from sleepemo import cli

if __name__ == "__main__":
    cli.run_stage("submission", doc=__doc__)
