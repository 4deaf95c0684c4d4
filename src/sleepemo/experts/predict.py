"""``sleepemo predict`` for stage 03's channel experts (results ``experts_<variant>`` and
``experts_<variant>_tta``).

Per fold k the stage saved the experts' stacked parameters (``<zero-shot result>/fold<k>.pt``;
the ``_tta`` result uses its zero-shot twin's) and the combination weights
(``<result>/fold<k>.npz``, ``weights``). A new participant's trials are turned into the
stage's inputs with the run's settings (band features of its own trials, pooled to
``experts.stride``: :func:`sleepemo.mae.inputs.band_tokens` and
:func:`~sleepemo.mae.inputs.band_at`, as the stage pools its cache's; an aligned variant,
``mae_fomaml_ea``: of the participant's Euclidean-aligned trials, as its cache
``band_features_ea`` holds them, which needs all of its trials, so it is not online), each
fold's experts predict them (``_tta``: after the unsupervised
test-time adaptation on the participant's own trials, seeded by its id as in the stage),
the fold's weights combine the 16 experts, and the 14 folds' probabilities are averaged
as the stage's test predictions are. All of it runs through
:mod:`sleepemo.experts.infer`, the code the stage itself uses.
"""
from __future__ import annotations

import numpy as np
import torch

from sleepemo.config import ExpertsConfig
from sleepemo.experts.infer import (ExpertInference, VARIANTS, expert_encoder_config,
                                    load_expert_params, output_names, tta_seed)
from sleepemo.mae.inputs import band_at
from sleepemo.mae.model import load_mae_weights
from sleepemo.mae.predict import band_tokens
from sleepemo.pipeline.artefacts import Result, fold_mean
from sleepemo.pipeline.stage import stage_dir
from sleepemo.predict.base import PredictError, Predictor, Run


class ExpertsPredictor(Predictor):
    """A stage-03 result: the mean over folds of the combined experts' probabilities."""

    def __init__(self, run: Run, result: Result):

        meta = result.meta
        self.name, self.run = result.label, run
        try:  # the settings that made the result
            self.cfg = cfg = ExpertsConfig(**meta["params"])
        except TypeError as exc:
            raise PredictError(f"{result.folder / 'meta.json'}: experts settings this version "
                               f"cannot read ({exc}); run src/03_experts.py again"
                               ) from None
        self.variant, self.tta = meta["variant"], bool(meta["test_time_adaptation"])
        # the adaptation and the Euclidean alignment need the participant's trials
        self.align = VARIANTS[self.variant].align
        self.online = not self.tta and not self.align
        self.seed = int(meta["seed"])
        self.mask_ratio = run.cfg.mae.mask_ratio
        zero_shot = result.folder.parent / output_names(cfg, self.variant)[0]
        self.params = [load_expert_params(zero_shot / f"fold{k}.pt")
                       for k in range(run.n_folds)]
        self.weights = []
        for k in range(run.n_folds):
            path = result.folder / f"fold{k}.npz"
            if not path.is_file():
                raise PredictError(f"{path} is missing: stage 03 did not finish")
            with np.load(path) as z:
                self.weights.append(z["weights"])
        mae_info = None
        if any(VARIANTS[v].init == "mae" for v in cfg.variants):
            mae_info = run.cached("mae_weights",
                                  lambda: load_mae_weights(stage_dir(run.out, "mae")))[2]
        enc_cfg = expert_encoder_config(cfg, run.cfg.mae, run.n_times, len(run.channels),
                                        mae_info)
        self.infer = ExpertInference(cfg, enc_cfg, len(run.channels), run.n_times,
                                     torch.device("cpu"))

    def predict(self, X: np.ndarray, sfreq: float, subject: int | None = None) -> np.ndarray:
        if self.tta and subject is None:
            raise PredictError(f"{self.name}: test-time adaptation is seeded by the "
                               "participant's id; give it (subject=<id>; sleepemo predict "
                               "reads it from the file name)")
        feats = band_at(band_tokens(self.run, X, sfreq, self.align),  # as the stage's
                        self.cfg.stride)
        probs = []
        for k, (params, weights) in enumerate(zip(self.params, self.weights)):
            if self.tta:
                params, _, _ = self.infer.adapt(params, feats, self.mask_ratio,
                                                tta_seed(self.seed, k, self.variant, subject))
            probs.append(self.infer.combine(*self.infer.predict(params, feats), weights)[0])
        return fold_mean(probs)


def load(run: Run, result: Result) -> Predictor:
    """Stage 03's result ``result`` of ``run`` as a :class:`~sleepemo.predict.base.Predictor`."""
    if result.meta.get("registry") != "experts":
        raise PredictError(f"{result.label}: not a stage-03 experts result")
    return ExpertsPredictor(run, result)
