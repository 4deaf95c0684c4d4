"""Benchmark: the ensembler's nested score against the best single model, on simulated stacks.

    python bench/bench_ensemble.py [--seeds 0 1 2 3 4] [--n-trials 40] [--top-k 6]
                                   [--designs weak strong shuffled]
                                   [--searches compact full] [--out FILE]
    python bench/bench_ensemble.py --merge FILE [FILE ...]   (summarise earlier runs' rows)

No run folder is needed: :func:`sleepemo.ensemble.sim.simulated_stack` draws the
out-of-fold outputs of 14 participants (40 trials, 60 timepoints at 100 Hz) for

- ``weak``: two weakly informative models (effect 0.20 and 0.16) among 18 pure-noise ones;
- ``strong``: two informative, complementary models (effect 0.7 each, independent noise)
  among 8 pure-noise ones;
- ``shuffled``: the ``weak`` stack with its labels permuted within participant.

For each design and seed, the nested score (outer leave-one-participant-out around
``OptunaBlend.fit``, :func:`sleepemo.ensemble.blend.nested_predict`, the loop stage 06 runs)
of each search (``compact``: the default, with its one-standard-error choice; ``full``: the
per-model search) and the best single model's LOPO score (the highest of the stack's
models, chosen on all 14 participants, as stage 06's report and stage 07 compare: in
hindsight, so optimistic), and the *nested best single model*'s score
(:func:`sleepemo.ensemble.blend.nested_best_single`: per fold, the model with the best
score on the 13 tuning participants; numpy only, the like-for-like reference). The
simulation's settings were fixed from the single models' scores only (informative models
at about 0.55-0.60 on ``weak``, the noise models' maximum at about 0.53-0.56), before any
blend was run. Each study is seeded, so the numbers are reproducible.

Results go to ``bench/results/ensemble-sim.json`` and stdout (medians across seeds).
``--merge`` summarises the rows of several outputs (seeds or searches run in separate
processes): rows of the same design and seed are combined, a later file's search replacing
an earlier one's (so one search can be rerun after its code changed, the other kept). It
adds the nested best single model to earlier rows without it (recomputed from the design
and seed; refused if the stack's best single score is not the row's).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sleepemo.ensemble.blend import (OptunaBlend, curves_of, nested_best_single,  # noqa: E402
                                     nested_predict, score)
from sleepemo.metric import default_min_run  # noqa: E402
from sleepemo.ensemble.sim import simulated_stack  # noqa: E402

SFREQ = 100.0
SEARCHES = ("compact", "full")
DESIGNS = {
    "weak": ({"inf_a": 0.2, "inf_b": 0.16, **{f"noise{i:02d}": 0.0 for i in range(18)}}, False),
    "strong": ({"inf_a": 0.7, "inf_b": 0.7, **{f"noise{i:02d}": 0.0 for i in range(8)}}, False),
    "shuffled": ({"inf_a": 0.2, "inf_b": 0.16, **{f"noise{i:02d}": 0.0 for i in range(18)}},
                 True),
}


def nested(stack, y, search: str, n_trials: int, top_k: int, folder: Path) -> dict:
    """The nested score of one search, and how often its folds kept 1 model."""
    kept = []

    def make(held):
        est = OptunaBlend(folder / search, f"n{held}", n_trials=n_trials, top_k=top_k,
                          seed=0, sfreq=SFREQ, search=search)
        kept.append(est)
        return est

    t0 = time.perf_counter()
    pred = nested_predict(make, stack, y, curves_of(stack, y))
    n_models = [len(e.params_["models"]) for e in kept]
    return {"nested": score(y, pred, stack.subjects, SFREQ),
            "fold_models_median": float(np.median(n_models)),
            "folds_with_one_model": int(sum(n == 1 for n in n_models)),
            "wider_than_best": int(sum(bool(e.guard_ and e.guard_["kept_n"] >
                                            e.guard_["best_n"]) for e in kept)),
            "seconds": round(time.perf_counter() - t0, 1)}


def singles(design: str, seed: int) -> dict:
    """The hindsight and the nested best single model of one design and seed."""
    strengths, shuffle = DESIGNS[design]
    stack, y = simulated_stack(strengths, seed=seed, shuffle_labels=shuffle)
    alone = {m: score(y, p, stack.subjects, SFREQ) for m, p in stack.preds.items()}
    best = max(alone, key=alone.get)
    pred, chosen = nested_best_single(stack, y, default_min_run(SFREQ), curves_of(stack, y))
    return {"best_single": best, "best_single_lopo": alone[best],
            "nested_best_single": score(y, pred, stack.subjects, SFREQ),
            "nested_best_single_models": sorted(set(chosen.values()))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--n-trials", type=int, default=40)
    ap.add_argument("--top-k", type=int, default=6)
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    ap.add_argument("--searches", nargs="+", default=list(SEARCHES), choices=list(SEARCHES))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" /
                    "ensemble-sim.json")
    ap.add_argument("--merge", type=Path, nargs="+", default=[],
                    help="instead of running: the rows of earlier outputs (e.g. seeds run "
                    "in separate processes), summarised together")
    args = ap.parse_args(argv)
    rows = []
    if args.merge:
        combined: dict = {}
        for path in args.merge:
            for r in json.loads(path.read_text())["rows"]:
                combined.setdefault((r["design"], r["seed"]), {}).update(r)
        rows = sorted(combined.values(),
                      key=lambda r: (list(DESIGNS).index(r["design"]), r["seed"]))
        args.searches = [s for s in SEARCHES if any(s in r for r in rows)]
        args.designs = [d for d in DESIGNS if any(r["design"] == d for r in rows)]
        args.seeds = sorted({r["seed"] for r in rows})
        for r in rows:
            if "nested_best_single" not in r:
                again = singles(r["design"], r["seed"])
                if abs(again["best_single_lopo"] - r["best_single_lopo"]) > 1e-9:
                    raise SystemExit(f"{r['design']} seed {r['seed']}: the simulated stack "
                                     "is not the one of this row")
                r.update(again)
    for design in args.designs if not args.merge else []:
        strengths, shuffle = DESIGNS[design]
        for seed in args.seeds:
            stack, y = simulated_stack(strengths, seed=seed, shuffle_labels=shuffle)
            row = {"design": design, "seed": seed, **singles(design, seed)}
            with tempfile.TemporaryDirectory() as tmp:
                for search in args.searches:
                    row[search] = nested(stack, y, search, args.n_trials, args.top_k,
                                         Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for design in args.designs:
        mine = [r for r in rows if r["design"] == design]
        summary[design] = {"seeds": [r["seed"] for r in mine]}
        best = np.array([r["best_single_lopo"] for r in mine])
        summary[design]["best_single_lopo"] = float(np.median(best))
        nested_single = np.array([r["nested_best_single"] for r in mine])
        summary[design]["nested_best_single"] = float(np.median(nested_single))
        summary[design]["best_single_minus_nested_best_single"] = float(
            np.median(best - nested_single))
        for search in args.searches:  # (over the seeds that ran it)
            has = np.array([search in r for r in mine])
            if not has.any():
                continue
            got = np.array([r[search]["nested"] for r in mine if search in r])
            summary[design][search] = {
                "seeds": [r["seed"] for r in mine if search in r],
                "nested": float(np.median(got)),
                "nested_minus_best_single": float(np.median(got - best[has])),
                "nested_minus_nested_best_single": float(np.median(got - nested_single[has])),
                "seeds_at_or_above_best_single_minus_0.01": int(np.sum(got >= best[has] - 0.01)),
                "folds_with_one_model": float(np.median(
                    [r[search]["folds_with_one_model"] for r in mine if search in r]))}
    result = {"settings": {"seeds": args.seeds, "n_trials": args.n_trials,
                           "top_k": args.top_k, "n_subjects": 14, "n_trials_per_subject": 40,
                           "n_times": 60, "sfreq": SFREQ,
                           "designs": {d: {"strengths": DESIGNS[d][0],
                                           "shuffled_labels": DESIGNS[d][1]}
                                       for d in args.designs}},
              "medians": summary, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
