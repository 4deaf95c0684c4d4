"""Benchmark: stage 04's costs, and the batch sizes its no-gradient passes use.

    python bench/bench_fusion.py [--repeats 5] [--trials 1024]

With random weights of the quick profile's shapes (16 channels, 50 encoder tokens, 25
fusion tokens), in one process and one run, the median over ``--repeats`` of:

- the 16 experts' per-token embeddings (``embed_tokens``) of ``--trials`` trials, per
  batch size (stage 04 embeds every trial of every fold with its fold's experts);
- the MAE encoder's (``encode_tokens``), per batch size of channel-sequences;
- the fusion's prediction, per batch size of trials;
- one fusion training step (forward, backward, AdamW) at the quick profile's 64 trials.

Reported as trials per second and as the ratio to the largest batch (the old default).
Results go to ``bench/results/fusion-cpu.json`` and stdout. Numbers vary between runs on
shared machines: compare within one run.
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

from sleepemo.features import token_window  # noqa: E402
from sleepemo.experts.model import ExpertBank, embed_tokens, make_experts  # noqa: E402
from sleepemo.fusion.model import FusionNet, fusion_loss, predict  # noqa: E402
from sleepemo.mae.inputs import encode_tokens  # noqa: E402
from sleepemo.mae.model import ChannelEncoder, EncoderConfig  # noqa: E402
from sleepemo.pipeline.stage import flush_denormals  # noqa: E402


def median_rate(fn, n: int, repeats: int) -> float:
    """Items per second: ``n`` over the median time of ``fn()`` after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / float(np.median(times))


def sweep(name: str, fn, sizes, n: int, repeats: int) -> dict:
    rates = {b: median_rate(lambda b=b: fn(b), n, repeats) for b in sizes}
    ref = rates[sizes[0]]
    print(f"{name}: " + "   ".join(f"batch {b}: {r:,.0f}/s ({r / ref:.2f}x)"
                                    for b, r in rates.items()))
    return {str(b): r for b, r in rates.items()}


def main() -> None:
    flush_denormals()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--trials", type=int, default=1024)
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, tokens = args.trials, 50
    feats = rng.standard_normal((n, 16, tokens, 5)).astype(np.float32)
    enc_cfg = EncoderConfig(n_times=tokens, n_chans=16)
    bank = ExpertBank(make_experts(16, enc_cfg, window=token_window((70, 130), 4)))
    params = {k: v.detach() for k, v in bank.params.items()}
    encoder = ChannelEncoder(enc_cfg)
    fused_in = rng.standard_normal((n, 16, 25, 21)).astype(np.float32)
    net = FusionNet(21, 16, rng.standard_normal((16, 3)), window=(9, 17))
    result = {"threads": torch.get_num_threads(), "trials": n, "trials_per_second": {
        "experts_embedding": sweep(
            "experts' embeddings (trials/s)",
            lambda b: embed_tokens(params, feats, enc_cfg.n_heads, batch=b),
            [512, 256, 128, 64, 32], n, args.repeats),
        "mae_embedding": sweep(
            "MAE embeddings (trials/s; batch in channel-sequences)",
            lambda b: encode_tokens(encoder, feats, batch=b), [4096, 1024, 512, 256], n,
            args.repeats),
        "fusion_predict": sweep(
            "fusion prediction (trials/s)", lambda b: predict(net, fused_in, b),
            [512, 256, 128, 64], n, args.repeats)}}
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = fusion_loss("bce")
    x = torch.from_numpy(fused_in[:64])
    y = torch.from_numpy(rng.integers(0, 2, 64).astype(np.float32))
    groups = torch.arange(64) // 16

    def step():
        t, r, _ = net(x)
        loss = loss_fn(t, r, y, groups)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    result["train_step_ms"] = 1000 / median_rate(step, 1, args.repeats * 4)
    print(f"fusion training step, 64 trials: {result['train_step_ms']:.1f} ms "
          f"({torch.get_num_threads()} threads)")
    dest = REPO / "bench" / "results" / "fusion-cpu.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {dest.relative_to(REPO)}")


if __name__ == "__main__":
    main()
