"""Plumbing shared by the stage scripts ``src/NN_*.py``: arguments, config, data, paths.

``python -m sleepemo.cli data --profile quick`` resolves the data folder (real data in
``input/<slug>/``, a Kaggle download when credentials exist, else the built-in synthetic
data) and prints its path; ``run.sh`` passes it to every stage.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import PROFILES, REPO, Config, ConfigError, load_config, save_config


def stage_parser(doc: str) -> argparse.ArgumentParser:
    """Arguments every stage accepts."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.
                                 RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=PROFILES, default="quick")
    ap.add_argument("--data-dir", help="data folder with training/ and testing/ "
                                       "(default: real data if present, else synthetic)")
    ap.add_argument("--out", help="artefact folder (default output/<profile>-<data name>)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="override a config value, e.g. seed=1")
    ap.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return ap


def synthetic_dir(cfg: Config) -> Path:
    d = cfg.data
    name = "synthetic" if (d.synthetic_scale, d.synthetic_seed) == (1.0, 0) else \
        f"synthetic-scale{d.synthetic_scale:g}-seed{d.synthetic_seed}"
    return Path(d.input_dir) / name


def resolve_data_dir(cfg: Config, data_dir: str | None = None, log=print) -> Path:
    """The data folder, first found of: given, configured, mounted in a Kaggle kernel,
    real in ``input/<slug>/``, downloaded with Kaggle credentials, built-in synthetic."""
    from . import synth
    from .download import find_data_root, get_data

    if data_dir or cfg.data.dir:
        return Path(data_dir or cfg.data.dir)
    kernel = Path(cfg.data.kaggle_input) / cfg.data.slug
    if kernel.is_dir() and (root := find_data_root(kernel)) is not None:
        log(f"using the competition data mounted at {root}")
        return root

    def make_synthetic() -> Path:
        out = synthetic_dir(cfg)
        return synth.generate(out, synth.SynthConfig(seed=cfg.data.synthetic_seed,
                                                     scale=cfg.data.synthetic_scale))

    return Path(get_data(cfg.data.input_dir, cfg.data.slug, synthetic=make_synthetic,
                         log=log))


@dataclass
class Stage:
    """What a stage script works with."""

    cfg: Config
    data_dir: Path
    out: Path
    progress: bool

    def dataset(self):
        from .data import load_dataset

        return load_dataset(self.data_dir, progress=self.progress)

    def folds(self, ds=None):
        from .folds import read_folds

        folds = read_folds(self.out / "folds.json")
        if ds is not None:
            folds.check(ds)
        return folds


def prepare(args: argparse.Namespace) -> Stage:
    """Load the config, resolve the data folder and the artefact folder."""
    cfg = load_config(args.profile, args.overrides)
    data_dir = resolve_data_dir(cfg, args.data_dir, log=lambda m: print(m, file=sys.stderr))
    out = Path(args.out) if args.out else REPO / "output" / f"{cfg.profile}-{data_dir.name}"
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    return Stage(cfg, data_dir, out, progress=not args.no_progress)


def run(stage_main) -> None:
    """Run a stage's main(); expected input problems end in one line, not a traceback."""
    from .data import DataError
    from .submission import SubmissionError

    try:
        stage_main()
    except (DataError, SubmissionError, ConfigError, FileExistsError,
            FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sleepemo.cli")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("data", help="resolve (download or generate) the data folder")
    p.add_argument("--profile", choices=PROFILES, default="quick")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    cfg = load_config(args.profile, args.overrides)
    print(resolve_data_dir(cfg, log=lambda m: print(m, file=sys.stderr)))
    return 0


if __name__ == "__main__":
    run(main)
