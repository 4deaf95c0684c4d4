"""Benchmark: fold-parallel workers against one process, on the same folds of a real run.

    python bench/bench_workers.py --out output/quick-synthetic [--stages experts fusion]
                                  [--folds 0 1 2 3] [--workers 2]

For each stage, on a copy of a finished run folder (``--out``, e.g. after ``./run.sh``):
the chosen folds' files are removed from every result of the stage, and the stage script
is run twice on the same copy, first with ``<section>.workers=1`` (one process, torch's
default threads), then with ``--workers`` (one thread each), removing the same folds in
between. Reported: both wall times of the stage (from its ``metrics.json``), their ratio,
and whether the two runs' arrays are identical (they differ only in the last bits: one
process uses two threads for its reductions). Both runs are back to back in one process
tree: compare the ratio, not the seconds, across machines.

Results go to ``bench/results/workers-cpu.json`` and stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sleepemo.pipeline.artefacts import drop_folds  # noqa: E402

SCRIPTS = {"experts": ("03_experts", "03_experts.py"),
           "fusion": ("04_fusion", "04_fusion.py"),
           "rl": ("05_rl", "05_rl.py")}


def run_stage(stage: str, out: Path, profile: str, workers: int) -> float:
    folder, script = SCRIPTS[stage]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), MPLBACKEND="Agg")
    subprocess.run([sys.executable, str(REPO / "src" / script), "--profile", profile,
                    "--out", str(out), "--no-progress",
                    "--set", f"{stage}.workers={workers}"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return json.loads((out / folder / "metrics.json").read_text())["stage_seconds"]


def arrays(folder: Path) -> dict:
    return {f"{p.parent.name}/{p.name}": np.load(p) for p in sorted(folder.glob("*/oof.npy"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="a finished run folder")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--stages", nargs="+", default=["experts", "fusion"],
                    choices=list(SCRIPTS))
    ap.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    report = {"folds": args.folds, "workers": args.workers, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench_workers_") as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(args.out, run, ignore=shutil.ignore_patterns("*.png"))
        for stage in args.stages:
            folder = run / SCRIPTS[stage][0]
            times, outs = {}, {}
            for n in (1, args.workers):
                drop_folds(folder, args.folds)
                times[n] = run_stage(stage, run, args.profile, n)
                outs[n] = arrays(folder)
            diff = max(float(np.abs(outs[1][k] - outs[args.workers][k]).max())
                       for k in outs[1])
            report[stage] = {"seconds_one_process": times[1],
                             f"seconds_{args.workers}_workers": times[args.workers],
                             "speed-up": round(times[1] / times[args.workers], 2),
                             "max_abs_difference_of_oof": diff}
            print(f"{stage}: {len(args.folds)} folds, one process {times[1]:.0f} s, "
                  f"{args.workers} workers {times[args.workers]:.0f} s: "
                  f"{times[1] / times[args.workers]:.2f}x (largest oof difference {diff:.2g})")
    path = REPO / "bench" / "results" / "workers-cpu.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
