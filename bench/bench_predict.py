"""Benchmark: sleepemo predict's latency, throughput and memory, per model of a finished run.

    python bench/bench_predict.py --run output/quick-synthetic [--trials 64] [--repeats 5]
                                  [--models a,b] [--json bench/results/predict-cpu.json]

Every model of the run that :func:`sleepemo.predict.load.load_predictor` supports is measured in
its own process (so that its peak memory is its own), on one thread, on the trials of the
run's first test participant:

- **stream, per trial**: one streamed trial (:class:`sleepemo.predict.stream.Stream`: the new
  trial predicted with the normalisation of every trial seen so far) when ``n`` trials
  have been seen, for n = 1x, 2x, 4x ``--trials``: the latency of a closed-loop decision
  at batch 1. An online predictor (``Predictor.online``) is timed pushing the trials one
  by one (median of the ``--repeats`` pushes up to the n-th); the others recompute the n
  trials at each push, timed as that call;
- **batch, per trial**: one participant's ``n`` trials predicted at once, divided by n,
  for the same n (the throughput at large batch);
- **peak RSS** of the process after loading the model and predicting (and before loading
  it: the imports and the participant's data), and the time to load the model (its 14
  fold models, or the ensemble's members).

Times are medians over ``--repeats``; the doubling ratios (2x/1x, 4x/1x) come from the same
process. Models the predictor does not support are listed with the reason.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"  # one thread, before numpy is imported

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def one_model(run: Path, model: str, trials: int, repeats: int) -> dict:
    """Measure ``model`` in this process (called in a child process by :func:`main`)."""
    import torch

    from sleepemo.data.reader import read_mat
    from sleepemo.data.folds import read_folds
    from sleepemo.predict.base import PredictError, Run
    from sleepemo.predict.stream import Stream
    from sleepemo.predict.load import load_predictor
    from sleepemo.predict.cli import recordings

    torch.set_num_threads(1)
    r = Run.open(run)
    folds = read_folds(run / "folds.json")
    subject = folds.test_subjects[0]
    path = recordings([Path(folds.data_root) / "testing"])[subject]
    X = read_mat(path, bad_values=r.cfg.data.bad_values).X
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    try:
        predictor = load_predictor(run, model, r)
    except PredictError as exc:
        return {"model": model, "supported": False, "reason": str(exc)}
    load_s = time.perf_counter() - t0
    sizes = [n for n in (trials, 2 * trials, 4 * trials) if n <= len(X)]
    predictor.predict(X[:trials], r.sfreq, subject)  # first calls pay for imports and caches
    calls = {n: 1e3 * _median_time(lambda: predictor.predict(X[:n], r.sfreq, subject),
                                   repeats) for n in sizes}
    batch_ms = {n: calls[n] / n for n in sizes}
    if predictor.online:  # each push computes the new trial alone
        stream, pushes = Stream(predictor, r.sfreq, subject=subject), []
        for trial in X[:max(sizes)]:
            t0 = time.perf_counter()
            stream.push(trial)
            pushes.append(1e3 * (time.perf_counter() - t0))
        stream_ms = {n: float(np.median(pushes[max(0, n - repeats):n])) for n in sizes}
    else:  # a push recomputes the trials seen: the cost of predicting n trials
        stream_ms = calls
    full = 1e3 * _median_time(lambda: predictor.predict(X, r.sfreq, subject), repeats) / len(X)
    return {"model": model, "supported": True, "online": bool(predictor.online),
            "participant": int(subject),
            "participant_trials": int(len(X)), "load_s": round(load_s, 3),
            "stream_ms_per_trial": {str(n): round(v, 2) for n, v in stream_ms.items()},
            "batch_ms_per_trial": {str(n): round(v, 3) for n, v in batch_ms.items()},
            "batch_ms_per_trial_all": round(full, 3),
            "stream_ratio_2x": round(stream_ms[sizes[1]] / stream_ms[sizes[0]], 2)
            if len(sizes) > 1 else None,
            "stream_ratio_4x": round(stream_ms[sizes[2]] / stream_ms[sizes[0]], 2)
            if len(sizes) > 2 else None,
            "rss_before_model_mb": round(base_rss, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def table(rows: list[dict], submitted: str, trials: int) -> str:
    lines = [f"| model | stream | stream, ms per trial at {trials} / {2 * trials} / "
             f"{4 * trials} trials seen (ratio 2x, 4x) | batch, ms per trial (all trials) | "
             "load s | peak RSS MB (before loading the model) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        name = f"`{r['model']}`" + (" (submitted)" if r["model"] == submitted else "")
        if not r["supported"]:
            lines.append(f"| {name} | | not supported: {r['reason'].split(': ', 1)[-1]} "
                         "| | | |")
            continue
        s = r["stream_ms_per_trial"]
        kind = "online" if r.get("online") else "recomputed"
        lines.append(f"| {name} | {kind} | {' / '.join(f'{v:.1f}' for v in s.values())} "
                     f"({r['stream_ratio_2x']}, {r['stream_ratio_4x']}) | "
                     f"{r['batch_ms_per_trial_all']:.2f} ({r['participant_trials']}) | "
                     f"{r['load_s']:.2f} | {r['peak_rss_mb']:.0f} "
                     f"({r['rss_before_model_mb']:.0f}) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, type=Path, help="a finished run's folder")
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", help="comma-separated (default: every result of the run)")
    ap.add_argument("--json", type=Path, help="write the measurements here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # (the child process)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_model(args.run, args.one, args.trials, args.repeats)))
        return
    from sleepemo.pipeline.artefacts import results
    from sleepemo.predict.load import submitted_model

    models = args.models.split(",") if args.models else [r.label for r in results(args.run)]
    try:
        submitted = submitted_model(args.run)
    except ValueError:
        submitted = None
    rows = []
    for m in models:
        proc = subprocess.run([sys.executable, __file__, "--run", str(args.run), "--one", m,
                               "--trials", str(args.trials), "--repeats", str(args.repeats)],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{m}: {proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(table(rows, submitted, args.trials))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"run": str(args.run), "submitted": submitted,
                                         "trials": args.trials, "repeats": args.repeats,
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
