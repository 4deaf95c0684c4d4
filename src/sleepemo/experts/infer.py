"""Stage 03's channel experts at prediction time: the code that turns a fold's trained
experts into probabilities, shared by the stage (:mod:`sleepemo.experts.stage`)
and by ``sleepemo predict`` (:mod:`sleepemo.experts.predict`), so that both compute the
same numbers.

- :meth:`ExpertInference.predict`: every expert's time and trial logits for pooled band
  features, in batches of ``experts.predict_batch`` trials;
- :meth:`ExpertInference.adapt`: unsupervised test-time adaptation on one participant's
  own trials (SGD on the MAE loss, no labels), seeded by :func:`tta_seed`;
- :meth:`ExpertInference.combine`: the fold's weighted mean of the experts' logits,
  interpolated back to timepoints, as probabilities.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sleepemo.config import ExpertsConfig
from sleepemo.experts.fomaml import sgd
from sleepemo.experts.model import ExpertBank, make_experts, make_forward, reconstruction_loss
from sleepemo.features import token_window
from sleepemo.mae.model import EncoderConfig, encoder_config, random_mask

VARIANTS = ExpertsConfig.VARIANTS


def uses_tta(cfg: ExpertsConfig, variant: str) -> bool:
    return variant in cfg.tta_variants and cfg.tta_steps > 0


def output_names(cfg: ExpertsConfig, variant: str) -> tuple[str, str | None]:
    """Table names of a variant's zero-shot and (MAE init + ``tta``) adapted results."""
    suffix = "_shuffled" if cfg.shuffle_labels else ""
    tta = uses_tta(cfg, variant)
    return f"experts_{variant}{suffix}", (f"experts_{variant}_tta{suffix}" if tta else None)


def tta_seed(seed: int, k: int, variant: str, subject: int) -> tuple:
    """The seed of participant ``subject``'s test-time adaptation in fold ``k``."""
    return seed, k, list(VARIANTS).index(variant), subject


def expert_encoder_config(cfg: ExpertsConfig, mcfg, n_times: int, n_chans: int,
                          mae_info: dict | None) -> EncoderConfig:
    """The experts' encoder: the stage-02 MAE's (``mae_info``, its ``run.json``) when the
    stage ran an MAE-initialised variant, else the ``mae:`` section's; on tokens of
    ``experts.stride`` samples."""
    values = mae_info["encoder"] if mae_info is not None else \
        dataclasses.asdict(encoder_config(mcfg, n_times, n_chans))
    return EncoderConfig(**{**values, "n_times": n_times // cfg.stride})


def load_expert_params(path: str | Path, device="cpu") -> dict:
    """A fold's trained experts (stacked parameters) from stage 03's ``fold<k>.pt``."""
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True) \
        if path.is_file() else None
    if state is None or "params" not in state:
        raise FileNotFoundError(f"{path}: the fold's experts are missing; run "
                                "src/03_experts.py again")
    return {n: v.to(device) for n, v in state["params"].items()}


class ExpertInference:
    """The experts' forward passes without labels: prediction, test-time adaptation and
    the combination of the 16 experts (see the module docstring)."""

    def __init__(self, cfg: ExpertsConfig, enc_cfg: EncoderConfig, n_chans: int,
                 n_times: int, device: torch.device):
        self.cfg, self.n_times, self.dev = cfg, n_times, device
        self.window = token_window(tuple(cfg.window), cfg.stride)
        self.enc_cfg = enc_cfg
        self.n_experts = n_chans
        self.bank = ExpertBank(make_experts(n_chans, enc_cfg, window=self.window))
        self.forward = make_forward(self.bank, cfg.batching, enc_cfg.n_heads, self.window)
        self.forward_no_grad = make_forward(self.bank, cfg.predict_batching, enc_cfg.n_heads,
                                            self.window)
        self.rec_loss = reconstruction_loss(self.forward)

    @torch.no_grad()
    def predict(self, params: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits of every expert for trials ``x`` (n_trials, n_experts, n_tokens,
        n_bands): time (n_experts, n_trials, n_tokens), trial (n_experts, n_trials)."""
        times, trials = [], []
        b = self.cfg.predict_batch
        for i in range(0, len(x), b):
            t, r, _ = self.forward_no_grad(params, torch.from_numpy(
                np.ascontiguousarray(x[i:i + b])).to(self.dev))
            times.append(t.cpu().numpy())
            trials.append(r.cpu().numpy())
        return np.concatenate(times, 1), np.concatenate(trials, 1)

    def adapt(self, params: dict, x: np.ndarray, ratio: float, seed: tuple
              ) -> tuple[dict, float, float]:
        """Test-time adaptation: SGD on the MAE loss over one participant's own trials
        ``x`` (pooled band features; no labels). Returns the adapted parameters and the
        MAE loss on the first batch before and after (label-free evidence that the
        adaptation did something)."""
        cfg = self.cfg
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        n = len(x)
        batches = []
        for _ in range(cfg.tta_steps):
            idx = rng.choice(n, size=min(cfg.tta_trials, n), replace=False)
            xb = torch.from_numpy(np.ascontiguousarray(x[idx])).to(self.dev)
            mask = random_mask(len(xb) * xb.shape[1], xb.shape[2], ratio, gen)
            batches.append((xb, mask.reshape(xb.shape[:3]).to(self.dev)))
        fast = sgd(self.rec_loss, params, batches, cfg.tta_lr)
        with torch.no_grad():
            before, after = (self.rec_loss(p, batches[0]).item() / self.n_experts
                             for p in (params, fast))
        return fast, before, after

    def combine(self, time_logits: np.ndarray, trial_logits: np.ndarray,
                weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean of the experts' logits -> probabilities per timepoint (tokens
        interpolated back to samples) and per trial."""
        t = torch.from_numpy(weighted_sum(weights, time_logits))[:, None]
        if t.shape[-1] != self.n_times:
            t = F.interpolate(t, size=self.n_times, mode="linear", align_corners=False)
        p_time = torch.sigmoid(t[:, 0]).numpy().astype(np.float32)
        p_trial = torch.sigmoid(torch.from_numpy(weighted_sum(weights, trial_logits)))
        return p_time, p_trial.numpy().astype(np.float32)


def weighted_sum(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``sum_i weights[i] * x[i]``, expert by expert with element-wise operations: the
    same numbers for any number of BLAS threads (``np.tensordot`` splits a long product
    over the threads and rounds a few elements 1 ulp differently, so that a stage run on
    2 threads and ``sleepemo predict`` on one disagreed in the last digit)."""
    w = np.asarray(weights)
    out = w[0] * x[0]
    for i in range(1, len(w)):
        out = out + w[i] * x[i]
    return out
