"""Benchmark: fold stages on one Ray node against two, on the same folds of a real run.

    python bench/bench_ray_nodes.py --out output/quick-synthetic [--stages 01 03]
                                    [--nodes 1 2] [--profile quick]
                                    [--data-dir input/synthetic]

For each cluster size in ``--nodes``: a cluster of that many nodes is started on this
machine with ``ray start`` (bench/raynodes.py: one CPU each, their own process groups and
temporary folders, as on a cluster's machines), a copy of the finished run folder
``--out`` loses the chosen stages' folders, and ``sleepemo run --stages ...`` recomputes
them with ``executor=ray`` and ``<section>.workers=0`` (one fold worker per CPU of the
cluster) through ``RAY_ADDRESS``. Reported: each stage's wall time (its
``metrics.json``'s ``stage_seconds``: the driver's own work, e.g. stage 01's features,
included) for each cluster size, the speed-up against the first size, and whether every
recomputed array equals the original run's byte for byte. All sizes run back to back on
one machine: compare the ratios, not the seconds, across machines.

Results go to ``bench/results/ray-nodes-cpu.json`` and stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from raynodes import clean_env, cluster  # noqa: E402

#: stage number -> its folder and config section
STAGES = {"01": ("01_baselines", "baselines"), "03": ("03_experts", "experts"),
          "04": ("04_fusion", "fusion"), "05": ("05_rl", "rl"), "06": ("06_ensemble", "ensemble")}


def arrays(run: Path, folders: list[str]) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes()
            for f in folders for p in sorted((run / f).glob("**/*.npy"))}


def run_stages(run: Path, stages: list[str], args, address: str) -> dict[str, float]:
    sets = ["executor=ray", *(f"{STAGES[s][1]}.workers=0" for s in stages)]
    cmd = [sys.executable, "-m", "sleepemo", "run", "--profile", args.profile, "--data-dir",
           args.data_dir, "--out", str(run), "--stages", ",".join(stages), "--no-progress",
           *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run(cmd, env=clean_env(PYTHONPATH=str(REPO / "src"),
                                             RAY_ADDRESS=address),
                          cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"stages {stages} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return {s: json.loads((run / STAGES[s][0] / "metrics.json").read_text())["stage_seconds"]
            for s in stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="a finished run folder")
    ap.add_argument("--data-dir", default="input/synthetic")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--stages", nargs="+", default=["01", "03"], choices=list(STAGES))
    ap.add_argument("--nodes", nargs="+", type=int, default=[1, 2])
    args = ap.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    source = Path(args.out).resolve()
    folders = [STAGES[s][0] for s in args.stages]
    original = arrays(source, folders)
    if not original:
        raise SystemExit(f"{source}: no arrays of stages {args.stages}: a finished run?")
    report = {"date": time.strftime("%Y-%m-%d"), "profile": args.profile,
              "stages": args.stages, "cpus_per_node": 1, "machine_cpus": os.cpu_count(),
              "seconds": {}, "identical_to_the_run": {}}
    for n in args.nodes:
        with tempfile.TemporaryDirectory(prefix="bench_ray_nodes_") as tmp:
            run = Path(tmp) / "run"
            shutil.copytree(source, run, ignore=shutil.ignore_patterns("*.png", ".sleepemo.lock*"))
            for f in folders:
                shutil.rmtree(run / f, ignore_errors=True)
            with cluster(n) as (address, _):
                seconds = run_stages(run, args.stages, args, address)
            again = arrays(run, folders)
        same = sorted(again) == sorted(original) and all(again[k] == original[k]
                                                         for k in original)
        report["seconds"][str(n)] = seconds
        report["identical_to_the_run"][str(n)] = same
        print(f"{n} node(s): " + ", ".join(f"stage {s} {t:.0f} s" for s, t in seconds.items())
              + f"; {len(again)} arrays, identical to the run's: {same}", flush=True)
    first = str(args.nodes[0])
    report["speed_up"] = {str(n): {s: round(report["seconds"][first][s] /
                                            report["seconds"][str(n)][s], 2)
                                   for s in args.stages} for n in args.nodes[1:]}
    print("speed-up against", first, "node(s):", report["speed_up"])
    path = REPO / "bench" / "results" / "ray-nodes-cpu.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
