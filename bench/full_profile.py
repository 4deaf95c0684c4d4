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

#: Per stage: what one step is, the cut settings of run (a) as {key: value}, the step
#: count of (a) per unit, and the full profile's count of the same unit. Run (b) doubles
#: every value of (a)'s settings (warm-ups included, so that the fraction stays the same).
CUTS = {
    "mae": ("optimiser step of 1024 channel-sequences",
            {"mae.epochs": 1, "mae.seqs_per_epoch": 2048, "mae.eval_seqs": 2048}, 2, None),
    "experts": ("meta-step (4 tasks, 32+32 trials) per fold and variant",
                {"experts.meta_steps": 2, "experts.tta_steps": 1}, 2, 300),
    "fusion": ("training step per fold and variant",
               {"fusion.steps": 4, "fusion.eval_every": 2}, 4, 1500),
    "rl": ("environment step per fold and head (prototype steps and warm-up scaled alike)",
           {"rl.env_steps": 150, "rl.learning_starts": 25, "rl.eval_every": 50,
            "rl.sac_env_steps": 150, "rl.sac_learning_starts": 25, "rl.proto_steps": 15},
           150, 3000),
    "ensemble": ("Optuna trial per study", {"ensemble.n_trials": 10}, 10, 300),
}
#: The real data's MAE steps per epoch: every channel-sequence of the 11,943 trials
#: (10,209 training, 1,734 test) but those of the 2 validation participants (about 2/14 of
#: the training trials), 16 channels, batch 1024.
REAL_FOLDS = 14
REAL_MAE_STEPS = 100 * math.ceil((11943 - 10209 * 2 / 14) * 16 / 1024)


def make_data(folder: Path, scale: float, train, test) -> Path:
    import pandas as pd

    from sleepemo.data.synth import SynthConfig, generate

    shutil.rmtree(folder, ignore_errors=True)
    root = generate(folder, SynthConfig(seed=0, scale=scale), progress=False)
    for f in (root / "training").glob("*/S_*_cleaned.mat"):
        if int(f.name.split("_")[1]) not in train:
            f.unlink()
    for f in (root / "testing").glob("test_subject_*.mat"):
        if int(f.stem.split("_")[2]) not in test:
            f.unlink()
    sol = pd.read_csv(root / "solution.csv")
    sol[sol["subject"].isin(test)].to_csv(root / "solution.csv", index=False)
    return root


def run(out: Path, data: Path, factor: int) -> float:
    sets = [f"{k}={v * factor}" for cut in CUTS.values() for k, v in cut[1].items()]
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "sleepemo", "run", "--profile", "full", "--data-dir",
           str(data), "--out", str(out), "--submissions", str(out.parent / "submissions"),
           "--no-progress", "--quiet", *[a for s in sets for a in ("--set", s)]]
    print("$", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONPATH=str(REPO / "src"),
                                              MPLBACKEND="Agg"))
    return time.monotonic() - t0


def stage_metrics(out: Path) -> dict[str, dict]:
    from sleepemo.pipeline.stage import STAGES, stage_dir

    rows = {}
    for spec in STAGES:
        path = stage_dir(out, spec.name) / "metrics.json"
        if path.is_file():
            m = json.loads(path.read_text())
            rows[spec.name] = {"seconds": m.get("seconds"), "peak_rss_mb": m.get("peak_rss_mb")}
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
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    data = make_data(out / "data", args.scale, set(args.train), set(args.test))
    walls = {"a": run(out / "a", data, 1), "b": run(out / "b", data, 2)}
    ma, mb = stage_metrics(out / "a"), stage_metrics(out / "b")
    size = sizes(out / "a")
    rows = []
    for name in ma:
        row = {"stage": name, "a_s": ma[name]["seconds"], "b_s": mb.get(name, {}).get("seconds"),
               "peak_rss_mb": max(ma[name]["peak_rss_mb"] or 0,
                                  mb.get(name, {}).get("peak_rss_mb") or 0),
               "sizes": size.get(name, "")}
        if name in CUTS:
            unit, _, steps_a, full = CUTS[name]
            if name == "mae":
                full = REAL_MAE_STEPS
            per_step = (row["b_s"] - row["a_s"]) / steps_a
            folds = 1 if name == "mae" else REAL_FOLDS / len(args.train)
            row.update(unit=unit, steps_a=steps_a, steps_b=2 * steps_a, full_steps=full,
                       s_per_step=round(per_step, 3),
                       real_projection_h=round(per_step * full * folds / 3600, 2))
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
    lines = [f"Full profile on {report['cpus']} CPU cores, synthetic data at "
             f"{report['scale']:g} of the real trial counts, training participants "
             f"{report['train']} ({len(report['train'])} folds); runs (a) and (b) took "
             f"{report['run_wall_s']['a']:.0f} s and {report['run_wall_s']['b']:.0f} s.", "",
             "| stage | sizes | wall (a) s | wall (b) s | peak MB | step | steps (a) | s per "
             "step (all folds here) | full steps | full on real data, training (h) |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['stage']} | {r['sizes']} | {r['a_s']} | {r['b_s']} | "
                     f"{r['peak_rss_mb']} | {r.get('unit', '-')} | {r.get('steps_a', '-')} | "
                     f"{r.get('s_per_step', '-')} | {r.get('full_steps', '-')} | "
                     f"{r.get('real_projection_h', '-')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
