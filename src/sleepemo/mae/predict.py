"""Stage 02's inputs for a new participant, from a finished run: the builders of
:mod:`sleepemo.mae.inputs` (which the stage's caches store) with the run's settings and
its saved encoder. Every predictor that needs them (the probes, the experts, the fusion,
the SAC heads) calls these; :func:`load` is the stage's predictor (its linear probes)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from sleepemo.baselines.predict import FoldAverage
from sleepemo.mae import inputs
from sleepemo.mae.model import load_encoder, load_mae_weights
from sleepemo.pipeline.artefacts import Result
from sleepemo.pipeline.stage import stage_dir
from sleepemo.predict.base import Predictor, Run


def band_tokens(run: Run, X: np.ndarray, sfreq: float, align: bool = False) -> np.ndarray:
    """The run's token features of one participant (:func:`sleepemo.mae.inputs.band_tokens`:
    what its band-feature cache holds; ``align``: its aligned cache)."""
    return inputs.band_tokens(X, sfreq, run.cfg.mae, align)


def encoder_tokens(run: Run, band: np.ndarray, stride: int) -> np.ndarray:
    """Stage 02's encoder output for one participant's token features ``band``
    (:func:`band_tokens`), pooled to ``stride`` samples per token
    (:func:`sleepemo.mae.inputs.encoder_tokens`: what the run's
    :class:`~sleepemo.mae.model.TokenCache` at ``stride`` holds)."""
    folder = stage_dir(run.out, "mae")
    enc = run.cached("mae_encoder", lambda: load_encoder(folder))
    mstride = run.cached("mae_stride",
                         lambda: int(load_mae_weights(folder)[2]["config"]["stride"]))
    return inputs.encoder_tokens(enc, band, mstride, stride)


def mae_tokens(run: Run, X: np.ndarray, sfreq: float, stride: int) -> np.ndarray:
    """:func:`encoder_tokens` of one participant's trials."""
    return encoder_tokens(run, band_tokens(run, X, sfreq), stride)


def mae_window(run: Run, X, sfreq, recipe) -> np.ndarray:
    stride = run.cfg.mae.stride
    return inputs.mae_window(mae_tokens(run, X, sfreq, stride), recipe["window"], stride)


def band_window(run: Run, X, sfreq, recipe) -> np.ndarray:
    return inputs.band_window(band_tokens(run, X, sfreq), recipe["window"])


#: how a LOPO result's features are computed for a new participant (``meta.recipe``)
FEATURES: dict[str, Callable] = {"mae_window": mae_window, "band_window": band_window}


def load(run: Run, result: Result) -> Predictor:
    """A stage-02 linear probe: a LOPO result
    (:class:`~sleepemo.baselines.predict.FoldAverage`) whose features are the run's MAE or
    band windows (:data:`FEATURES`)."""
    return FoldAverage(run, result, FEATURES)
