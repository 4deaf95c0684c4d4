"""Stage 02's inputs for a new participant: its band token features (as the stage's
:class:`~sleepemo.features.BandFeatureCache` holds them) and the encoder's tokens (as
:class:`~sleepemo.mae.model.TokenCache` holds them), and the probes' feature recipes.
Every predictor that needs them (the probes, the fusion, the SAC heads) calls these."""
from __future__ import annotations

from typing import Callable

import numpy as np

from sleepemo.features import pool_time, token_features, zscore_trials
from sleepemo.mae.model import encode_tokens, load_encoder, load_mae_weights, window_means
from sleepemo.pipeline.stage import stage_dir
from sleepemo.predict.base import Run


def band_tokens(run: Run, X: np.ndarray, sfreq: float) -> np.ndarray:
    """Stage 02's token features of one participant (as its BandFeatureCache holds)."""

    m = run.cfg.mae
    return token_features(X, sfreq, m.bands, m.feature, m.evoked())


def mae_tokens(run: Run, X: np.ndarray, sfreq: float, stride: int) -> np.ndarray:
    """Stage 02's encoder output for one participant's trials, pooled to ``stride``
    samples per token: what :class:`~sleepemo.mae.model.TokenCache` holds for a
    participant of the run (the same computation, at the MAE's own stride)."""

    folder = stage_dir(run.out, "mae")
    enc = run.cached("mae_encoder", lambda: load_encoder(folder))
    mstride = run.cached("mae_stride",
                         lambda: int(load_mae_weights(folder)[2]["config"]["stride"]))
    tokens = encode_tokens(enc, pool_time(np.asarray(band_tokens(run, X, sfreq), np.float32),
                                          mstride))
    return np.ascontiguousarray(pool_time(tokens, stride // mstride), dtype=np.float32)


def mae_window(run: Run, X, sfreq, recipe) -> np.ndarray:

    stride = run.cfg.mae.stride
    return zscore_trials(window_means(mae_tokens(run, X, sfreq, stride),
                                      tuple(recipe["window"]), stride))


def band_window(run: Run, X, sfreq, recipe) -> np.ndarray:

    w = recipe["window"]
    feats = np.asarray(band_tokens(run, X, sfreq))
    return zscore_trials(feats[:, :, w[0]:w[1]].mean(2).reshape(len(X), -1))


#: how a LOPO result's features are computed for a new participant (``meta.recipe``)
FEATURES: dict[str, Callable] = {"mae_window": mae_window, "band_window": band_window}
