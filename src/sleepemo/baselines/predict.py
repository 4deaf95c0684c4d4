"""Stage 01's predictor: a LOPO result (:mod:`sleepemo.baselines.lopo`) applied to a new
participant as its fold models' mean, as the stage made its test predictions.

:class:`FoldAverage` serves every LOPO result: stage 01's baselines (features from the
model's own ``transform``) and, with the MAE's feature recipes, stage 02's linear probes
(:func:`sleepemo.mae.predict.load`)."""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from sleepemo.baselines.lopo import _as_2d, load_fold_model
from sleepemo.baselines.models import make_model
from sleepemo.pipeline.artefacts import Result, fold_mean
from sleepemo.predict.base import PredictError, Predictor, Run


class FoldAverage(Predictor):
    """A LOPO result: its fold models' mean. Features come from the result's recipe
    (``meta.json`` ``recipe``): ``transform`` (the model's own) or one of ``features``
    (recipe kind -> ``f(run, X, sfreq, recipe)``)."""

    def __init__(self, run: Run, result: Result,
                 features: Mapping[str, Callable] | None = None):

        if result.meta.get("family") != "lopo":
            raise PredictError(f"{result.label} (stage {result.stage}): not a LOPO result "
                               "with fold models (meta.json family 'lopo')")
        self.name, self.run, self.recipes = result.label, run, dict(features or {})
        self.recipe = result.meta.get("recipe") or {"features": "transform"}
        kind = self.recipe["features"]
        if kind != "transform" and kind not in self.recipes:
            raise PredictError(f"{result.label}: unknown feature recipe {kind!r}")
        self.proto = make_model(result.meta["registry"], random_state=result.meta["seed"],
                                **result.meta.get("params", {}))
        self.online = kind != "transform" or bool(getattr(self.proto, "online", False))
        self.models = [load_fold_model(result.folder, k) for k in range(run.n_folds)]

    def features(self, X: np.ndarray, sfreq: float):
        kind = self.recipe["features"]
        if kind == "transform":
            return self.proto.transform(X, sfreq)
        return self.recipes[kind](self.run, X, sfreq, self.recipe)

    def predict(self, X, sfreq, subject=None):

        feats = self.features(X, sfreq)
        n, t = len(X), X.shape[-1]
        return fold_mean(_as_2d(m.predict_proba(feats), n, t) for m in self.models)


def load(run: Run, result: Result) -> Predictor:
    """A stage-01 result as a :class:`FoldAverage`."""
    return FoldAverage(run, result)
