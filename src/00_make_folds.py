"""Stage 00: leave-one-participant-out folds.

Reads:  <data-dir>/training/sleep_{emo,neu}/S_<id>_cleaned.mat, <data-dir>/testing/*.mat
Writes: <out>/folds.json (one fold per training participant, data fingerprint, row order),
        <out>/config.yaml (resolved config)

The file is written once; later stages read it. Rerunning on the same data keeps it;
on other data it refuses unless --force.
"""
from sleepemo.cli import prepare, run, stage_parser
from sleepemo.folds import write_folds


def main() -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--force", action="store_true", help="replace folds.json for new data")
    args = ap.parse_args()
    stage = prepare(args)
    folds, written = write_folds(stage.dataset(), stage.out / "folds.json", force=args.force)
    print(f"{'wrote' if written else 'kept'} {stage.out / 'folds.json'}: {folds.n_folds} "
          f"LOPO folds, test participants {list(folds.test_subjects)}")


if __name__ == "__main__":
    run(main)
