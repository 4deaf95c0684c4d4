"""Stage 01: baselines under LOPO.

Reads:  <data-dir> (the .mat files), <out>/folds.json
Writes: <out>/01_baselines/<model>/{fold<k>.npz, oof.npy, test.npy, meta.json}
        for every model in the profile's baselines.models;
        <out>/lopo.csv, <out>/lopo_curves.png, <out>/lopo_bars.png (all models so far)

oof.npy is (n_train_trials, n_times) in folds.json row order; test.npy is the mean of the
fold models' test predictions. Finished folds are reused (resume); an unchanged model is
skipped.
"""
from sleepemo.cli import prepare, run, stage_parser
from sleepemo.lopo import run_lopo
from sleepemo.report import write_report


def main() -> None:
    stage = prepare(stage_parser(__doc__).parse_args())
    ds = stage.dataset()
    folds = stage.folds(ds)
    cfg = stage.cfg
    for name in cfg.baselines.models:
        run_lopo(name, ds, folds, stage.out / "01_baselines" / name, seed=cfg.seed,
                 params=cfg.baselines.params.get(name, {}), progress=stage.progress)
    table, _, _ = write_report(stage.out, ds, folds)
    print(table.drop(columns="diagnostic").to_string())
    print(f"wrote {stage.out / 'lopo.csv'} and the pictures beside it")


if __name__ == "__main__":
    run(main)
