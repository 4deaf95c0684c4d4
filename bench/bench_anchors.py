"""Benchmark: one training step of each deep anchor, oneDNN off against on, in one run.

    python bench/bench_anchors.py [--repeats 5] [--steps 20] [--out FILE]

Each anchor (``sleepemo.baselines.deep``) takes optimiser steps on a batch of 128 crops
of 16 channels x 50 samples (the quick profile's shapes) on one torch thread, as a fold
worker does; ``off`` is the plain CPU kernels (how the anchors trained before 2026-12-02),
``on`` is oneDNN (how they train now). Both compute ShallowFBCSPNet's first layer with the
channels as input channels (:func:`sleepemo.baselines.deep._channels_as_input_conv`). The two settings alternate within each repeat, so the ratio is
measured under the same machine load; the median over repeats is reported. It also
checks that two trainings from the same seed give the same weights with oneDNN on
(``deterministic``).

Results go to ``bench/results/anchors-cpu.json`` and stdout.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sleepemo.baselines import make_model  # noqa: E402
from sleepemo.baselines.deep import ANCHORS, one_torch_thread  # noqa: E402


def train(name: str, onednn: bool, steps: int) -> tuple[float, str]:
    """Seconds per step and a hash of the weights after ``steps`` steps."""
    with one_torch_thread() as torch:
        before = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = onednn
        try:
            torch.manual_seed(0)
            model = make_model(name, random_state=0)
            net = model._build(model._net_kwargs(16)).train()
            opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
            gen = torch.Generator().manual_seed(1)
            batches = [(torch.randn(128, 16, 50, generator=gen),
                        torch.randint(0, 2, (128,), generator=gen)) for _ in range(steps)]
            t0 = time.perf_counter()
            for x, y in batches:
                loss = torch.nn.functional.cross_entropy(net(x).reshape(len(y), 2), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            seconds = (time.perf_counter() - t0) / steps
        finally:
            torch.backends.mkldnn.enabled = before
    digest = hashlib.sha256(b"".join(v.detach().numpy().tobytes()
                                     for v in net.state_dict().values())).hexdigest()
    return seconds, digest


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "anchors-cpu.json"))
    args = ap.parse_args(argv)
    rows = {}
    for name in ANCHORS:
        times = {"off": [], "on": []}
        digests = set()
        for _ in range(args.repeats):
            for mode in ("off", "on"):
                sec, digest = train(name, mode == "on", args.steps)
                times[mode].append(sec)
                if mode == "on":
                    digests.add(digest)
        off, on = (float(np.median(times[m])) * 1000 for m in ("off", "on"))
        rows[name] = {"ms_per_step_off": round(off, 2), "ms_per_step_on": round(on, 2),
                      "speedup": round(off / on, 2), "deterministic": len(digests) == 1}
        print(f"{name:>14}: oneDNN off {off:7.1f} ms/step, on {on:7.1f} ms/step, "
              f"x{off / on:.2f}, same weights every repeat: {len(digests) == 1}")
    result = {"settings": {"repeats": args.repeats, "steps": args.steps, "batch": 128,
                           "chans": 16, "crop": 50, "threads": 1}, "anchors": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
