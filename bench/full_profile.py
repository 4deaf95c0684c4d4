"""The full profile end to end on the CPU, its sizes kept and its step counts cut.

    python bench/full_profile.py [--out DIR] [--scale 0.1] [--train 2 3 4 5] [--test 1]

The full profile has never fitted a 2-core machine's time; this runs every stage of it
(`sleepemo run --profile full`) on built-in synthetic data scaled down (``--scale`` of the
real trial counts, the training participants ``--train``: one LOPO fold each) with the
step counts cut by ``--set`` and every size kept: 200 MAE tokens (stride 1) with batch
1024, the experts at stride 1, the fusion's d_model 64, every variant and head. It runs
twice, at the cut step counts (a) and at twice them (b), so that the difference gives each
stage's marginal time per step; the full profile's step counts then give a projection of its training steps on the real
data (14 folds; the MAE's 100 epochs of every channel-sequence), evaluation and
prediction not included (they are in the measured times).

Writes ``<out>/full_profile.json`` and prints a Markdown table: per stage the wall time of
(a) and (b), peak memory, the sizes, the steps, seconds per step and the projected time of
the full profile's training steps on the real data (same CPU). Numbers vary between runs on
shared machines; the projection is a linear extrapolation in the step count.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

#: The step counts of the three runs, per stage: what one step is, the settings of each
#: run, and the full profile's steps. (b) doubles the experts' meta-steps; (c) starts
#: from a copy of (b) (its folds, MAE and experts are reused: same settings) and takes
#: the later stages' steps eight or four times further, so that each difference is large
#: against run-to-run noise. What is counted in steps alongside them (evaluation
#: intervals, RL's warm-up) scales with them: a difference is training steps only.
#: The MAE's step comes from bench/bench_mae.py (full-profile shapes), not from here.
STEPS = {
    "experts": ("meta-step (4 tasks, 32+32 trials) per fold and variant", "ab",
                {"experts.meta_steps": (2, 4, 4)}, {"experts.tta_steps": 1}, 300),
    "fusion": ("training step per fold and variant", "bc",
               {"fusion.steps": (4, 8, 64), "fusion.eval_every": (2, 4, 32)}, {}, 1500),
    "rl": ("environment step per fold and head (prototype steps, warm-up alike)", "bc",
           {"rl.env_steps": (150, 300, 1200), "rl.learning_starts": (25, 50, 200),
            "rl.eval_every": (50, 100, 400), "rl.sac_env_steps": (150, 300, 1200),
            "rl.sac_learning_starts": (25, 50, 200), "rl.proto_steps": (15, 30, 120)},
           {}, 3000),
    "ensemble": ("Optuna trial per study", "bc", {"ensemble.n_trials": (10, 20, 80)}, {},
                 300),
}
MAE_SETTINGS = {"mae.epochs": (1, 1, 1), "mae.seqs_per_epoch": (2048, 4096, 4096),
                "mae.eval_seqs": (2048, 2048, 2048)}
RUNS = "abc"


def settings(run: str) -> list[str]:
    i = RUNS.index(run)
    out = [f"{k}={v[i]}" for k, v in MAE_SETTINGS.items()]
    for _, _, varied, fixed, _ in STEPS.values():
        out += [f"{k}={v[i]}" for k, v in varied.items()]
        out += [f"{k}={v}" for k, v in fixed.items()]
    return out


#: The real data's MAE steps per epoch: every channel-sequence of the 11,943 trials
#: (10,209 training, 1,734 test) but those of the 2 validation participants (about 2/14 of
#: the training trials), 16 channels, batch 1024.
REAL_FOLDS = 14
REAL_MAE_STEPS = 100 * math.ceil((11943 - 10209 * 2 / 14) * 16 / 1024)


def make_data(folder: Path, scale: float, train, test) -> Path:
    from sleepemo.data.synth import generate_subset

    shutil.rmtree(folder, ignore_errors=True)
    return generate_subset(folder, scale, train, test)


def run(out: Path, data: Path, name: str, keep: bool = False) -> float:
    folder, sets = out / name, settings(name)
    if keep and (folder / "07_submission" / "metrics.json").is_file() and \
            (folder / "sets.json").is_file() and \
            json.loads((folder / "sets.json").read_text()) == sets:
        print(f"kept: {folder} (same settings)", flush=True)
        return json.loads((folder / "wall.json").read_text())
    shutil.rmtree(folder, ignore_errors=True)
    if name == "c":  # (b)'s folds, MAE and experts are reused: their settings are the same
        later = ("04_", "05_", "06_", "07_", "lopo", "report", "sets.json", "wall.json",
                 ".sleepemo.lock")
        shutil.copytree(out / "b", folder, ignore=lambda d, names: [
            n for n in names if Path(d) == out / "b" and n.startswith(later)])
    cmd = [sys.executable, "-m", "sleepemo", "run", "--profile", "full", "--data-dir",
           str(data), "--out", str(folder), "--submissions", str(out / "submissions"),
           "--no-progress", "--quiet", *[a for s in sets for a in ("--set", s)]]
    print("$", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONPATH=str(REPO / "src"),
                                              MPLBACKEND="Agg"))
    wall = time.monotonic() - t0
    (folder / "sets.json").write_text(json.dumps(sets))
    (folder / "wall.json").write_text(json.dumps(wall))
    return wall


def stage_metrics(out: Path) -> dict[str, dict]:
    from sleepemo.pipeline.stage import STAGES, stage_dir

    rows = {}
    for spec in STAGES:
        path = stage_dir(out, spec.name) / "metrics.json"
        if path.is_file():
            m = json.loads(path.read_text())
            rows[spec.name] = {"seconds": m.get("stage_seconds"),
                              "peak_rss_mb": m.get("peak_rss_mb")}
    return rows


def sizes(out: Path) -> dict[str, str]:
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    mae, ex, fu, rl = cfg["mae"], cfg["experts"], cfg["fusion"], cfg["rl"]
    return {
        "mae": f"{200 // mae['stride']} tokens, d_model {mae['d_model']}, batch "
               f"{mae['batch_size']}",
        "experts": f"{200 // ex['stride']} tokens, {len(ex['variants'])} variants, "
                   f"{ex['tasks_per_step']} tasks x {ex['n_support']}+{ex['n_query']} trials",
        "fusion": f"{200 // fu['stride']} tokens, d_model {fu['d_model']}, "
                  f"{len(fu['variants'])} variants",
        "rl": f"heads {', '.join(rl['heads'])}, LSTM {rl['lstm']}, batch {rl['batch_size']}",
        "ensemble": f"top_k {cfg['ensemble']['top_k']}",
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "output" / "full-profile-cpu"))
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--train", type=int, nargs="+", default=[2, 3, 4, 5])
    ap.add_argument("--test", type=int, nargs="+", default=[1])
    ap.add_argument("--keep", action="store_true",
                    help="reuse a finished run (a) or (b) of the same settings and data")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    if not (args.keep and (out / "data").is_dir()):
        make_data(out / "data", args.scale, set(args.train), set(args.test))
    data = next(p.parent for p in (out / "data").rglob("training"))
    walls = {name: run(out, data, name, args.keep) for name in RUNS}
    metrics = {name: stage_metrics(out / name) for name in RUNS}
    size = sizes(out / "a")
    mae_bench = json.loads((REPO / "bench" / "results" / "mae-cpu.json").read_text())
    mae_step = next(r["median_step_s"] for r in mae_bench if r["profile"] == "full")
    rows = []
    for name in metrics["a"]:
        row = {"stage": name, "sizes": size.get(name, ""),
               **{f"{r}_s": metrics[r].get(name, {}).get("seconds") for r in RUNS},
               "peak_rss_mb": max(metrics[r].get(name, {}).get("peak_rss_mb") or 0
                                  for r in RUNS)}
        if name == "mae":
            row.update(unit="optimiser step, batch 1024 (bench/bench_mae.py)",
                       s_per_step=mae_step, full_steps=REAL_MAE_STEPS,
                       real_projection_h=round(mae_step * REAL_MAE_STEPS / 3600, 2))
        elif name in STEPS:
            unit, pair, varied, _, full = STEPS[name]
            first = next(iter(varied.values()))
            i, j = RUNS.index(pair[0]), RUNS.index(pair[1])
            per_step = (row[f"{pair[1]}_s"] - row[f"{pair[0]}_s"]) / (first[j] - first[i])
            row.update(unit=unit, compared=f"{pair[0]} {first[i]} -> {pair[1]} {first[j]}",
                       s_per_step=round(per_step, 3), full_steps=full,
                       real_projection_h=round(per_step * full * REAL_FOLDS
                                               / len(args.train) / 3600, 2))
        rows.append(row)
    report = {"scale": args.scale, "train": args.train, "test": args.test,
              "cpus": os.cpu_count(), "run_wall_s": {k: round(v, 1) for k, v in walls.items()},
              "rows": rows}
    (out / "full_profile.json").write_text(json.dumps(report, indent=2) + "\n")
    dest = REPO / "bench" / "results" / "full-profile-cpu.json"
    dest.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    walls = ", ".join(f"({k}) {v:.0f} s" for k, v in report["run_wall_s"].items())
    lines = [f"Full profile on {report['cpus']} CPU cores, synthetic data at "
             f"{report['scale']:g} of the real trial counts, training participants "
             f"{report['train']} ({len(report['train'])} folds); runs: {walls}.", "",
             "| stage | sizes | (a) s | (b) s | (c) s | peak MB | step | compared | s per step "
             "(all folds here) | full steps | full, real data, training only (h) |",
             "|---|---|---:|---:|---:|---:|---|---|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['stage']} | {r['sizes']} | {r['a_s']} | {r['b_s']} | "
                     f"{r['c_s']} | {r['peak_rss_mb']} | {r.get('unit', '-')} | "
                     f"{r.get('compared', '-')} | {r.get('s_per_step', '-')} | "
                     f"{r.get('full_steps', '-')} | {r.get('real_projection_h', '-')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
