"""Stage 02's inputs of one participant: the one place they are computed.

Each function is a pure function of one participant's trials (or of what an earlier
function here made of them) and the run's settings, label-free. The stage's caches store
their output per participant and a predictor calls them on a new participant, so the two
never keep copies that must agree:

- :func:`band_tokens`: the token features (band envelopes, and the evoked waveform when
  ``mae.evoked_tokens``), what :class:`~sleepemo.features.BandFeatureCache` of
  :func:`band_cache` holds (its entries are ``band_spec(mcfg)(X, sfreq)``); with
  ``align=True`` the same features of the participant's Euclidean-aligned waveform
  (:class:`Aligned`, cached apart by :class:`AlignedFeatureCache`);
- :func:`band_at`: those features pooled to a token rate (the MAE's, the experts');
- :func:`encoder_tokens`: the encoder's per-token output, pooled to a coarser token rate,
  what :class:`~sleepemo.mae.model.TokenCache` holds; :func:`pool_tokens` pools one
  stride's tokens to a coarser one (the same numbers as encoding again);
- :func:`mae_window` and :func:`band_window`: the linear probes' features (a window's
  mean, z-scored over the participant's trials).

:mod:`sleepemo.mae.predict` wraps them for a finished run (its saved encoder).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from sleepemo.config import MAEConfig
from sleepemo.features import (BandFeatureCache, TokenSpec, euclidean_align, pool_time,
                               token_window, zscore_trials)


# ------------------------------------------------------------------ Euclidean alignment
@dataclasses.dataclass(frozen=True)
class Aligned:
    """A feature spec (:class:`~sleepemo.features.TokenSpec`) applied to the participant's
    Euclidean-aligned waveform: ``Aligned(spec)(X, sfreq) == spec(euclidean_align(X),
    sfreq)`` (:func:`sleepemo.features.euclidean_align`: label-free, from all of the
    participant's own trials)."""

    spec: TokenSpec

    def __call__(self, X: np.ndarray, sfreq: float) -> np.ndarray:
        return self.spec(euclidean_align(X), sfreq)


class AlignedFeatureCache(BandFeatureCache):
    """A :class:`~sleepemo.features.BandFeatureCache` of the same features of the
    Euclidean-aligned waveform (entries ``Aligned(spec)(X, sfreq)``): its key adds
    ``align`` to the settings, and its callers give it a folder name of its own
    (:data:`ALIGNED`), so that it and the unaligned cache coexist in one run."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = {**self.settings, "align": "euclidean"}
        self.key = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()
                                  ).hexdigest()[:16]
        self.dir = self.root / self.key
        self.spec = Aligned(self.spec)


#: the suffix of an aligned cache's folder name (``<out>/cache/<name>_ea``)
ALIGNED = "_ea"


def cache_class(align: bool) -> type[BandFeatureCache]:
    return AlignedFeatureCache if align else BandFeatureCache


# ------------------------------------------------------------------ band token features
def band_spec(mcfg: MAEConfig, align: bool = False) -> TokenSpec | Aligned:
    """The token features of a ``mae:`` section (stage 02's, the experts' and the
    fusion's input); ``align``: of the Euclidean-aligned waveform."""
    spec = TokenSpec.of(mcfg.bands, mcfg.feature, mcfg.evoked())
    return Aligned(spec) if align else spec


def band_tokens(X: np.ndarray, sfreq: float, mcfg: MAEConfig, align: bool = False
                ) -> np.ndarray:
    """One participant's token features (n_trials, n_chans, n_times, n_features), float32:
    what :func:`band_cache` (of the same ``align``) holds for it."""
    return band_spec(mcfg, align)(X, sfreq)


def band_cache(out: str | Path, data_fingerprint: str, mcfg: MAEConfig,
               align: bool = False) -> BandFeatureCache:
    """The run's cache of :func:`band_tokens` (``<out>/cache/band_features``, aligned:
    ``band_features_ea``), not built: its :attr:`~sleepemo.features.BandFeatureCache.key`."""
    spec = band_spec(mcfg)
    return cache_class(align).of_run(out, data_fingerprint, spec.bands, spec.kind,
                                     spec.evoked, name="band_features" + ALIGNED * align)


def built_band_cache(out: str | Path, ds, folds, mcfg: MAEConfig,
                     progress: bool = True, align: bool = False) -> BandFeatureCache:
    """:func:`band_cache` with every training and test participant of ``folds`` built."""
    spec = band_spec(mcfg)
    return cache_class(align).for_run(out, ds, folds, spec.bands, spec.kind, progress,
                                      evoked=spec.evoked,
                                      name="band_features" + ALIGNED * align)


def band_at(band, stride: int) -> np.ndarray:
    """Token features (a cache entry or :func:`band_tokens`) pooled to ``stride`` samples
    per token, float32."""
    return pool_time(np.asarray(band, dtype=np.float32), stride)


# ------------------------------------------------------------------ encoder tokens
#: Channel-sequences per forward pass when encoding without gradients: small enough that
#: the MLP's activations stay in the CPU cache (512 encodes ~2x faster than 4096 on 2 cores,
#: ``bench/bench_mae.py --encode``).
ENCODE_BATCH = 512


def encode_tokens(encoder, feats, batch: int = ENCODE_BATCH) -> np.ndarray:
    """The encoder's (:class:`~sleepemo.mae.model.ChannelEncoder`) per-token output (no
    masking) for every channel of every trial.

    feats (n_trials, n_chans, n_tokens, n_bands), already at the encoder's token rate ->
    (n_trials, n_chans, n_tokens, d_model), numpy float32.
    """
    dev = next(encoder.parameters()).device
    n_trials, n_chans = feats.shape[:2]
    flat = np.ascontiguousarray(feats, dtype=np.float32).reshape(
        n_trials * n_chans, *feats.shape[2:])
    chans = torch.from_numpy(np.tile(np.arange(n_chans), n_trials)).to(dev)
    out = []
    encoder.eval()
    with torch.no_grad():
        for i in range(0, len(flat), batch):
            out.append(encoder(torch.from_numpy(flat[i:i + batch]).to(dev), None,
                               chans[i:i + batch]).cpu().numpy())
    if not out:
        return np.zeros((0, n_chans, feats.shape[2], encoder.embed.out_features), np.float32)
    return np.concatenate(out).reshape(n_trials, n_chans, feats.shape[2], -1)


def pool_tokens(tokens, ratio: int) -> np.ndarray:
    """Encoder tokens averaged ``ratio`` at a time (a coarser token rate), contiguous
    float32: pooling the MAE's own tokens gives what :func:`encoder_tokens` at the coarser
    stride gives."""
    return np.ascontiguousarray(pool_time(np.asarray(tokens), ratio), dtype=np.float32)


def encoder_tokens(encoder, band, mae_stride: int, stride: int | None = None) -> np.ndarray:
    """One participant's encoder tokens: its token features (``band``: a cache entry or
    :func:`band_tokens`) pooled to the encoder's ``mae_stride``, encoded, and pooled to
    ``stride`` samples per token (default: ``mae_stride``, every token);
    (n_trials, n_chans, n_times // stride, d_model), float32."""
    stride = mae_stride if stride is None else stride
    if stride % mae_stride:
        raise ValueError(f"token stride {stride} is not a multiple of the MAE's {mae_stride}")
    return pool_tokens(encode_tokens(encoder, band_at(band, mae_stride)), stride // mae_stride)


# ------------------------------------------------------------------ the probes' features
def window_means(tokens, window: tuple[int, int], stride: int) -> np.ndarray:
    """Token embeddings (n_trials, n_chans, n_tokens, d) of ``stride`` samples each,
    averaged over the tokens overlapping ``window`` (samples), channels concatenated:
    (n_trials, n_chans * d)."""
    w = token_window(window, stride)
    x = np.asarray(tokens[:, :, w[0]:w[1]]).mean(2)
    return x.reshape(len(x), -1)


def mae_window(tokens, window, stride: int) -> np.ndarray:
    """The ``mae_probe``'s features of one participant: its encoder tokens (of ``stride``
    samples) averaged over ``window``, z-scored over its trials."""
    return zscore_trials(window_means(tokens, tuple(window), stride))


def band_window(band, window) -> np.ndarray:
    """The ``band_probe``'s features of one participant: its token features averaged over
    ``window`` (samples), channels concatenated, z-scored over its trials."""
    return zscore_trials(np.asarray(band[:, :, window[0]:window[1]]).mean(2).reshape(
        len(band), -1))
