"""Stage 07: the submission, from the best model by LOPO score.

Reads:  <data-dir> (test trial counts, solution.csv if present), <out>/folds.json,
        <out>/NN_*/<model>/{oof.npy, test.npy, meta.json} of every stage run so far
Writes: submissions/<run>/submission.csv (validated; never overwrites an earlier run),
        submissions/latest.csv (a copy), and beside the submission: lopo.csv,
        lopo_curves.png, lopo_bars.png, summary.json (chosen model, LOPO score, local
        leaderboard score when solution.csv exists, inputs)

Until the ensemble stage (06) exists, the submitted model is the non-diagnostic model
with the highest overall LOPO window AUC (--model picks one by name).
"""
from sleepemo.cli import prepare, run, stage_parser
from sleepemo.submit import make_submission


def main() -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--model", help="submit this model instead of the best by LOPO")
    ap.add_argument("--submissions", default=None, help="submissions folder "
                                                        "(default: <repo>/submissions)")
    ap.add_argument("--run-name", help="name of the run folder (default: time-profile-model)")
    args = ap.parse_args()
    stage = prepare(args)
    summary = make_submission(stage, model=args.model, submissions=args.submissions,
                              run_name=args.run_name)
    print(summary["text"])


if __name__ == "__main__":
    run(main)
