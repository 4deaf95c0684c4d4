"""Stage 04's fusion results applied to new recordings (:mod:`sleepemo.predict`).

A fusion result (``fusion_<variant>``) keeps fold k's trained network in ``fold<k>.pt``.
For a new participant its input is rebuilt from the trials exactly as
:class:`sleepemo.fusion.inputs.Inputs` builds a test participant's from the run's caches:
stage 02's band features (:func:`sleepemo.features.token_features`, run's ``mae:``
settings), then per variant

- ``raw``: the band envelopes pooled to ``fusion.stride``, z-scored on the participant;
- ``mae``: stage 02's encoder on the features pooled to ``mae.stride``
  (:func:`sleepemo.mae.model.encode_tokens`), pooled to ``fusion.stride``, z-scored;
- ``experts*``: fold k's 16 experts (stage 03's ``fold<k>.pt``,
  :func:`sleepemo.experts.model.embed_tokens`) on the features pooled to
  ``experts.stride``, pooled to ``fusion.stride``, z-scored;

plus the evoked tokens (``fusion.evoked_band`` waveform, pooled) where the variant has
them. Each fold's network predicts the participant (:func:`sleepemo.fusion.model.predict`,
interpolated to timepoints); the prediction is the folds' mean, as the stage's test
predictions are. ``experts_finetune``: fold k's fine-tuned experts (in its ``fold<k>.pt``
with the fusion) embed the experts' own inputs (the features pooled to
``experts.stride``, the evoked tokens repeated to that rate), z-scored over the
participant's trials, then fold k's fusion.
"""
from __future__ import annotations

import numpy as np

from sleepemo.config import FusionConfig
from sleepemo.experts.model import embed_tokens
from sleepemo.features import pool_time, token_features
from sleepemo.fusion.inputs import new_model, new_tuned_model, tuned_input
from sleepemo.fusion.model import (electrode_positions, fused_tokens, predict, standardise,
                                   to_timepoints)
from sleepemo.mae.predict import band_tokens, mae_tokens
from sleepemo.pipeline.artefacts import Result, fold_mean, load_checkpoint, results
from sleepemo.predict.base import PredictError, Predictor, Run

VARIANTS = FusionConfig.VARIANTS


class FusionPredictor(Predictor):
    online = True  # per participant: the z-scores of the features and tokens only

    def __init__(self, run: Run, result: Result):
        import torch

        self.run, self.name = run, result.label
        self.variant = result.meta.get("variant")
        if self.variant not in VARIANTS:
            raise PredictError(f"{result.label}: unknown fusion variant {self.variant!r}")
        self.kind, self.evoked, _ = VARIANTS[self.variant]
        # the fine-tuned experts' embeddings are z-scored over the participant in torch
        # (models.fusion.zscore_groups), which running statistics do not reach
        self.online = self.kind != "experts_tuned"
        self.cfg = run.cfg.fusion
        self.positions = electrode_positions(run.channels)
        self.states, self._models = [], {}
        for k in range(run.n_folds):
            path = result.folder / f"fold{k}.pt"
            state = load_checkpoint(path, result.fingerprint, "cpu")
            if state is None:
                raise PredictError(f"{path}: fold {k}'s fusion is missing or of another run")
            self.states.append(state["model"])
        self.experts = []
        if self.kind in ("experts", "experts_tuned"):
            found = [r for r in _results(run, "experts") if r.name == self.cfg.expert_result]
            if not found:
                raise PredictError(f"{result.label} reads stage 03's {self.cfg.expert_result}"
                                   ", which the run no longer has")
            for k in range(run.n_folds):
                path = found[0].folder / f"fold{k}.pt"
                if not path.is_file():
                    raise PredictError(f"{path}: fold {k}'s experts are missing")
                params = torch.load(path, map_location="cpu", weights_only=True)["params"]
                self.experts.append(params)

    def _model(self, k: int, n_in: int, n_chans: int):
        """Fold k's network, built once (a streamed trial would otherwise rebuild 14);
        ``experts_finetune``: fold k's fine-tuned experts in front of it
        (:class:`~sleepemo.fusion.model.TunedFusion`, as stage 04 builds it)."""
        key = (k, n_in, n_chans)
        if key not in self._models:
            if self.kind == "experts_tuned":
                model = new_tuned_model(self.cfg, self.experts[k], n_in, n_chans,
                                        self.positions, self.run.cfg.mae.n_heads,
                                        self.cfg.stride // self.run.cfg.experts.stride)
            else:
                model = new_model(self.cfg, n_in, n_chans, self.positions)
            model.load_state_dict(self.states[k])
            self._models[key] = model
        return self._models[key]

    def _base(self, X, sfreq, band: np.ndarray, k: int) -> np.ndarray:
        """The variant's input without evoked tokens (fold k's, for the experts)."""
        stride = self.cfg.stride
        if self.kind == "experts_tuned":  # the experts' own inputs (evoked: fold_inputs)
            return pool_time(band, self.run.cfg.experts.stride)
        if self.kind == "raw":
            return standardise(pool_time(band, stride)[..., :len(self.run.cfg.mae.bands)])
        if self.kind == "mae":
            return standardise(mae_tokens(self.run, X, sfreq, stride))

        estride = self.run.cfg.experts.stride
        return standardise(pool_time(embed_tokens(self.experts[k], pool_time(band, estride),
                                                  self.run.cfg.mae.n_heads),
                                     stride // estride))

    def fold_inputs(self, X, sfreq):
        """Fold k's input (n_trials, n_chans, n_tokens, n_features) for k = 0, 1, ...: one
        array for every fold, or built fold by fold when the variant reads fold k's
        experts."""
        import itertools

        m = self.run.cfg.mae
        band = np.asarray(band_tokens(self.run, X, sfreq), np.float32)
        ev = None
        if self.evoked:
            ev = pool_time(np.asarray(token_features(X, sfreq, (), m.feature,
                                                     self.cfg.evoked_band), np.float32),
                           self.cfg.stride)

        def build(k: int) -> np.ndarray:
            x = self._base(X, sfreq, band, k)
            if ev is None:
                return x
            if self.kind == "experts_tuned":
                return tuned_input(x, ev, self.cfg.stride // self.run.cfg.experts.stride)
            return np.concatenate([x, ev], axis=-1)

        if self.kind == "experts":
            return (build(k) for k in range(len(self.states)))
        return itertools.repeat(build(0), len(self.states))

    def fused(self, k: int, x: np.ndarray) -> np.ndarray:
        """Fold k's fused per-token embeddings (n_trials, n_tokens, d) of input ``x``
        (what stage 05's SAC reads: :class:`sleepemo.fusion.inputs.FusedTokens`)."""

        return fused_tokens(self._model(k, x.shape[-1], x.shape[1]), x, self.cfg.predict_batch)

    def predict(self, X, sfreq, subject=None):
        preds = []
        for k, x in enumerate(self.fold_inputs(X, sfreq)):
            tok, _, _ = predict(self._model(k, x.shape[-1], x.shape[1]), x,
                                self.cfg.predict_batch)
            preds.append(to_timepoints(tok, X.shape[-1]))
        return fold_mean(preds)


def _results(run: Run, stage: str):

    return results(run.out, stage)


def load(run: Run, result: Result) -> Predictor:
    return FusionPredictor(run, result)
