"""Benchmark: one FOMAML meta-step for the 16 channel experts, vmap vs loop vs folded.

    python bench/bench_experts.py [--repeats 5] [--batch 16] [--tasks 3] [--stride 4]

The three batchings of ``sleepemo.experts.model.make_forward`` run the same first-order MAML
meta-step (per task: 3 SGD steps on a support batch, the query gradient at the adapted
weights; Adam on the meta-parameters) on the same random band features, with the stage's
loss (per-timepoint and trial BCE):

- ``vmap``: one ``torch.func.vmap`` over ``functional_call`` on the stacked parameters
  (``stack_module_state``); attention as plain matrix products, because PyTorch's fused
  CPU attention has no vmap batching rule;
- ``loop``: a Python loop over the 16 experts, each ``functional_call``-ed with its slice;
- ``folded``: the experts' forward written out on the stacked parameters with the experts
  folded into the batch, so that attention runs in the fused kernel.

It also times what the stage does most besides training: predicting ``--predict-trials``
trials without gradients, 256 per call. Gradients are checked to agree before timing.
Defaults are the quick profile's stage-03 settings (16 trials per split, 3 tasks, 200
samples pooled by 4 into 50 tokens); the median over ``--repeats`` meta-steps and the
ratios come from one run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sleepemo.experts.fomaml import fomaml_step  # noqa: E402
from sleepemo.experts.model import (  # noqa: E402
    ExpertBank, classification_loss, make_experts, make_forward, token_window)
from sleepemo.mae.model import EncoderConfig  # noqa: E402
from sleepemo.pipeline.stage import flush_denormals  # noqa: E402


def main() -> None:
    flush_denormals()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16, help="trials per support/query batch")
    ap.add_argument("--tasks", type=int, default=3, help="tasks per meta-batch")
    ap.add_argument("--stride", type=int, default=4, help="timepoints pooled per token")
    ap.add_argument("--predict-trials", type=int, default=768,
                    help="trials predicted (no gradients) in the prediction timing")
    args = ap.parse_args()
    n_tokens = 200 // args.stride
    window = token_window((70, 130), args.stride)
    g = torch.Generator().manual_seed(0)

    def batch():
        return (torch.randn(args.batch, 16, n_tokens, 5, generator=g),
                torch.randint(0, 2, (args.batch,), generator=g).float())

    tasks = [(batch(), batch()) for _ in range(args.tasks)]
    bank = ExpertBank(make_experts(16, EncoderConfig(n_times=n_tokens), window=window))
    forwards = {name: make_forward(bank, name, 4, window) for name in ("vmap", "loop", "folded")}
    fns = {name: classification_loss(forward) for name, forward in forwards.items()}
    grads = {name: torch.func.grad(fn)(bank.params, tasks[0][0]) for name, fn in fns.items()}
    err = max(float((grads[n][k] - grads["loop"][k]).detach().abs().max())
              for n in ("vmap", "folded") for k in grads[n])
    rows = {}
    for name, fn in fns.items():
        params = {k: v.detach().clone().requires_grad_(True) for k, v in bank.params.items()}
        opt = torch.optim.Adam(params.values(), lr=1e-3)
        fomaml_step(fn, params, opt, tasks)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fomaml_step(fn, params, opt, tasks)
            times.append(time.perf_counter() - t0)
        rows[name] = float(np.median(times))
    # prediction as the stage does it: no gradients, 256 trials per call
    x = torch.randn(args.predict_trials, 16, n_tokens, 5, generator=g)
    pred = {}
    for name, forward in forwards.items():
        times = []
        for _ in range(args.repeats + 1):
            t0 = time.perf_counter()
            with torch.no_grad():
                for i in range(0, len(x), 256):
                    forward(bank.params, x[i:i + 256])
            times.append(time.perf_counter() - t0)
        pred[name] = float(np.median(times[1:]))
    result = {"threads": torch.get_num_threads(), "batch": args.batch, "tasks": args.tasks,
              "inner_steps": 3, "stride": args.stride, "tokens": n_tokens,
              "median_meta_step_s": rows,
              "predict_trials": args.predict_trials, "median_predict_s": pred,
              "loop_over_vmap": rows["loop"] / rows["vmap"],
              "folded_over_vmap": rows["folded"] / rows["vmap"],
              "max_grad_difference": err}
    dest = REPO / "bench" / "results" / f"experts-cpu-stride{args.stride}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(f"one FOMAML meta-step, 16 experts, {args.tasks} tasks x (3 inner + 1 query) "
          f"steps, {args.batch} trials per batch, {n_tokens} tokens, "
          f"{torch.get_num_threads()} threads:")
    print(f"  vmap: {rows['vmap']:.3f} s   loop: {rows['loop']:.3f} s   folded: "
          f"{rows['folded']:.3f} s   loop/vmap = {result['loop_over_vmap']:.2f}   "
          f"folded/vmap = {result['folded_over_vmap']:.2f}   "
          f"(max gradient difference to the loop {err:.1e})")
    print(f"predicting {args.predict_trials} trials without gradients: " + "   ".join(
        f"{n}: {t:.3f} s" for n, t in pred.items()))
    print(f"wrote {dest.relative_to(REPO)}")


if __name__ == "__main__":
    main()
