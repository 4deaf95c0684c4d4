"""Benchmark: MAE pre-training throughput and peak memory, quick vs full profile.

    python bench/bench_mae.py [--profiles quick full] [--steps 30] [--device auto]

Each profile is measured in a subprocess of its own (so its peak memory is its own): the
profile's model and AdamW, random band-feature sequences of the profile's batch size,
3 warm-up steps, then ``--steps`` timed training steps (forward, backward, optimiser).
Reported: median step time, channel-sequences per second (batch / median step time) and
peak memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's peak RSS
above its RSS after importing torch). Results go to ``bench/results/mae-<device>.json``
and a Markdown table on stdout. Numbers vary between runs on shared machines: compare
profiles within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(profile: str, steps: int, device: str) -> dict:
    import numpy as np
    import torch

    from sleepemo.config import load_config
    from sleepemo.mae.model import MaskedAutoencoder, encoder_config, random_mask
    from sleepemo.pipeline.stage import flush_denormals

    flush_denormals()  # as the stage does
    cfg = load_config(profile, [f"mae.device={device}"]).mae
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    base = _rss_mb()
    enc = encoder_config(cfg, n_times=200, n_chans=16)
    model = MaskedAutoencoder(enc).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.batch_size, enc.n_times, len(cfg.bands), generator=g).to(dev)
    c = torch.randint(0, 16, (cfg.batch_size,), generator=g).to(dev)
    times = []
    for i in range(3 + steps):
        mask = random_mask(cfg.batch_size, enc.n_times, cfg.mask_ratio, g).to(dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model.loss(x, mask, c)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    step = float(np.median(times))
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"profile": profile, "device": str(dev), "threads": torch.get_num_threads(),
            "batch_size": cfg.batch_size, "tokens": enc.n_times,
            "median_step_s": round(step, 4),
            "seqs_per_second": round(cfg.batch_size / step, 1),
            "peak_memory_mb": round(peak, 1), "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profiles", nargs="+", default=["quick", "full"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.device)))
        return
    rows = []
    for profile in args.profiles:
        out = subprocess.run([sys.executable, __file__, "--one", profile, "--steps",
                              str(args.steps), "--device", args.device], check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    dest = REPO / "bench" / "results" / f"mae-{rows[0]['device']}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(rows, indent=2) + "\n")
    print("| profile | device | threads | tokens | batch | median step (s) | sequences/s | "
          "peak memory (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['profile']} | {r['device']} | {r['threads']} | {r['tokens']} | "
              f"{r['batch_size']} | {r['median_step_s']} | {r['seqs_per_second']} | "
              f"{r['peak_memory_mb']} |")
    if len(rows) > 1:
        print(f"\nthroughput ratio {rows[1]['profile']}/{rows[0]['profile']}: "
              f"{rows[1]['seqs_per_second'] / rows[0]['seqs_per_second']:.2f}")
    print(f"wrote {dest.relative_to(REPO)}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    main()
