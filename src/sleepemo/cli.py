"""Where the data comes from.

``python -m sleepemo.cli data --profile quick`` resolves the data folder (real data in
``input/<slug>/``, a Kaggle download when credentials exist, else the built-in synthetic
data) and prints its path; ``run.sh`` passes it to every stage. The stages' own plumbing
(arguments, opening and closing work) is :mod:`sleepemo.pipeline.stage`.
"""
from __future__ import annotations

import argparse
import sys

from sleepemo.config import PROFILES, load_config
from sleepemo.data.location import resolve_data_dir
from sleepemo.errors import guarded


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
    guarded(main)
