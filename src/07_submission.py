"""Stage 07: the run's report and the submission, from the best model by LOPO score.

Reads:  <data-dir> (test trial counts, solution.csv if present), <out>/folds.json,
        every result of the predictions contract under <out>/NN_*/<model>/ (oof.npy,
        test.npy, score.json, meta.json), each stage's metrics.json and evidence.md
Writes: <out>/{lopo.csv, lopo_curves.png, lopo_bars.png, report.md} (the run's report,
        written only here), <out>/07_submission/{metrics.json, evidence.md},
        submissions/<run>/submission.csv (validated; never overwrites an earlier run),
        submissions/latest.csv (a copy), and beside the submission: the report with its
        pictures, config.yaml, summary.json (chosen model, LOPO score, local leaderboard
        score when solution.csv exists, inputs)

Until the ensemble stage (06) exists, the submitted model is the non-diagnostic model
with the highest overall LOPO window AUC (--model picks one by name).
"""
from sleepemo.pipeline import stage
from sleepemo.kaggle.stage import run


def add_arguments(ap):
    ap.add_argument("--model", help="submit this model instead of the best by LOPO")
    ap.add_argument("--submissions", default=None, help="submissions folder "
                                                        "(default: <repo>/submissions)")
    ap.add_argument("--run-name", help="name of the run folder (default: time-profile-model)")


if __name__ == "__main__":
    stage.main("submission", __doc__, lambda s, args: run(
        s, model=args.model, submissions=args.submissions, run_name=args.run_name),
        add_arguments)
