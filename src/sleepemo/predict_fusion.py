"""Stage 04's fusion results applied to new recordings (:mod:`sleepemo.predict`).

A fusion result (``fusion_<variant>``) keeps fold k's trained network in ``fold<k>.pt``.
For a new participant its input is rebuilt from the trials exactly as
:class:`sleepemo.fusion_inputs.Inputs` builds a test participant's from the run's caches:
stage 02's band features (:func:`sleepemo.features.token_features`, run's ``mae:``
settings), then per variant

- ``raw``: the band envelopes pooled to ``fusion.stride``, z-scored on the participant;
- ``mae``: stage 02's encoder on the features pooled to ``mae.stride``
  (:func:`sleepemo.models.mae.encode_tokens`), pooled to ``fusion.stride``, z-scored;
- ``experts*``: fold k's 16 experts (stage 03's ``fold<k>.pt``,
  :func:`sleepemo.models.experts.embed_tokens`) on the features pooled to
  ``experts.stride``, pooled to ``fusion.stride``, z-scored;

plus the evoked tokens (``fusion.evoked_band`` waveform, pooled) where the variant has
them. Each fold's network predicts the participant (:func:`sleepemo.models.fusion.predict`,
interpolated to timepoints); the prediction is the folds' mean, as the stage's test
predictions are. ``experts_finetune`` (experts fine-tuned inside the fusion) is not
supported yet.
"""
from __future__ import annotations

import numpy as np

from .artefacts import Result, load_checkpoint
from .config import FusionConfig
from .features import pool_time, token_features
from .fusion_inputs import new_model
from .models.fusion import electrode_positions, predict, standardise, to_timepoints
from .predict import PredictError, Predictor, Run, _band, mae_tokens

VARIANTS = FusionConfig.VARIANTS


class FusionPredictor(Predictor):
    def __init__(self, run: Run, result: Result):
        import torch

        self.run, self.name = run, result.label
        self.variant = result.meta.get("variant")
        if self.variant not in VARIANTS:
            raise PredictError(f"{result.label}: unknown fusion variant {self.variant!r}")
        self.kind, self.evoked, _ = VARIANTS[self.variant]
        if self.kind == "experts_tuned":
            raise PredictError(f"{result.label}: the fine-tuned experts variant is not "
                               "supported by sleepemo predict yet")
        self.cfg = run.cfg.fusion
        self.positions = electrode_positions(run.channels)
        self.states = []
        for k in range(run.n_folds):
            path = result.folder / f"fold{k}.pt"
            state = load_checkpoint(path, result.fingerprint, "cpu")
            if state is None:
                raise PredictError(f"{path}: fold {k}'s fusion is missing or of another run")
            self.states.append(state["model"])
        self.experts = []
        if self.kind == "experts":
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

    def _base(self, X, sfreq, band: np.ndarray, k: int) -> np.ndarray:
        """The variant's input without evoked tokens (fold k's, for the experts)."""
        stride = self.cfg.stride
        if self.kind == "raw":
            return standardise(pool_time(band, stride)[..., :len(self.run.cfg.mae.bands)])
        if self.kind == "mae":
            return standardise(mae_tokens(self.run, X, sfreq, stride))
        from .models.experts import embed_tokens

        estride = self.run.cfg.experts.stride
        return standardise(pool_time(embed_tokens(self.experts[k], pool_time(band, estride),
                                                  self.run.cfg.mae.n_heads),
                                     stride // estride))

    def predict(self, X, sfreq, subject=None):
        m = self.run.cfg.mae
        band = np.asarray(_band(self.run, X, sfreq), np.float32)
        ev = None
        if self.evoked:
            ev = pool_time(np.asarray(token_features(X, sfreq, (), m.feature,
                                                     self.cfg.evoked_band), np.float32),
                           self.cfg.stride)
        shared = None if self.kind == "experts" else self._base(X, sfreq, band, 0)
        preds = []
        for k, state in enumerate(self.states):
            x = shared if shared is not None else self._base(X, sfreq, band, k)
            if ev is not None:
                x = np.concatenate([x, ev], axis=-1)
            model = new_model(self.cfg, x.shape[-1], x.shape[1], self.positions)
            model.load_state_dict(state)
            tok, _, _ = predict(model, x, self.cfg.predict_batch)
            preds.append(to_timepoints(tok, X.shape[-1]))
        return np.mean(preds, axis=0).astype(np.float32)


def _results(run: Run, stage: str):
    from .artefacts import results

    return results(run.out, stage)


def load(run: Run, result: Result) -> Predictor:
    return FusionPredictor(run, result)
