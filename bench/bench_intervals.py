"""Benchmark: the participant-bootstrap intervals of lopo.csv at a real run's size.

    python bench/bench_intervals.py [--models 25] [--participants 33] [--times 200]
                                    [--repeats 3]

Random per-participant AUC curves (a shared bump plus noise) for ``--models`` results on
``--participants`` participants, scored like results; timed:
:func:`sleepemo.pipeline.intervals.add_intervals` with its default replicates (the whole
of what the report adds). Results go to ``bench/results/intervals.json`` and stdout.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from sleepemo.metric import WindowAUC, default_min_run, score_from_curve
from sleepemo.pipeline.intervals import N_BOOT, add_intervals

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=25)
    ap.add_argument("--participants", type=int, default=33)
    ap.add_argument("--times", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    t = np.arange(args.times)
    bump = np.exp(-0.5 * ((t - args.times / 2) / (args.times / 10)) ** 2)
    scores, rows = {}, []
    for m in range(args.models):
        curves = 0.5 + 0.05 * m / args.models * bump + 0.06 * rng.standard_normal(
            (args.participants, args.times))
        score, window = score_from_curve(curves.mean(0), default_min_run(200.0))
        scores[f"m{m}"] = WindowAUC(score, curves.mean(0), window, dict(enumerate(curves)))
        rows.append({"model": f"m{m}", "stage": "baselines", "overall": round(score, 4),
                     "window_ms": "", "diagnostic": False})
    table = pd.DataFrame(rows).set_index("model")
    seconds = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        add_intervals(table, scores, 200.0)
        seconds.append(time.perf_counter() - t0)
    result = {**vars(args), "replicates": N_BOOT, "seconds": [round(s, 3) for s in seconds],
              "median_seconds": round(float(np.median(seconds)), 3)}
    print(json.dumps(result))
    out = REPO / "bench" / "results" / "intervals.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
