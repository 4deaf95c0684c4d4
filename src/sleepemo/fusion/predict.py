"""Stage 04's fusion results applied to new recordings (:mod:`sleepemo.predict`).

A fusion result (``fusion_<variant>``) keeps fold k's trained network in ``fold<k>.pt``.
A new participant's input is built by the function that builds the stage's,
:func:`sleepemo.fusion.inputs.participant_input`, from what the stage's caches hold for a
participant of the run, computed here on the new participant's trials by the caches' own
builders: its token features (:func:`sleepemo.mae.inputs.band_tokens`, run's ``mae:``
settings), its evoked waveform where the variant has evoked tokens
(:func:`sleepemo.fusion.inputs.evoked_features`), the stage-02 encoder's tokens for the
``mae`` variant (:func:`sleepemo.mae.predict.encoder_tokens`), and fold k's experts
(stage 03's ``fold<k>.pt``) for the ``experts`` variants. Each fold's network predicts
the participant (:func:`sleepemo.fusion.model.predict`, interpolated to timepoints); the
prediction is the folds' mean, as the stage's test predictions are.
``experts_finetune``: fold k's fine-tuned experts (in its ``fold<k>.pt`` with the fusion)
embed the experts' own inputs and z-score them over the participant's trials, then fold
k's fusion. An aligned variant (``experts_pairwise_ea``, ``raw_ea``) computes those of
its inputs that :func:`sleepemo.fusion.inputs.aligned` names from the participant's
Euclidean-aligned waveform, as its caches hold them; the alignment needs all of the
participant's trials, so it is not online.
"""
from __future__ import annotations

import itertools

import numpy as np

from sleepemo.config import FusionConfig
from sleepemo.experts.infer import load_expert_params
from sleepemo.fusion.inputs import (aligned, evoked_features, new_model, new_tuned_model,
                                    participant_input)
from sleepemo.fusion.model import electrode_positions, fused_tokens, predict, to_timepoints
from sleepemo.mae.predict import band_tokens, encoder_tokens
from sleepemo.pipeline.artefacts import Result, fold_mean, load_checkpoint, results
from sleepemo.predict.base import PredictError, Predictor, Run

VARIANTS = FusionConfig.VARIANTS


class FusionPredictor(Predictor):
    online = True  # per participant: the z-scores of the features and tokens only

    def __init__(self, run: Run, result: Result):
        self.run, self.name = run, result.label
        self.variant = result.meta.get("variant")
        if self.variant not in VARIANTS:
            raise PredictError(f"{result.label}: unknown fusion variant {self.variant!r}")
        self.kind = VARIANTS[self.variant].inputs
        self.evoked = VARIANTS[self.variant].evoked
        # the fine-tuned experts' embeddings are z-scored over the participant in torch
        # (models.fusion.zscore_groups), and the Euclidean alignment is over all of its
        # trials: running statistics reach neither
        self.online = self.kind != "experts_tuned" and not VARIANTS[self.variant].align
        self.align = aligned(self.variant)  # (band features, evoked waveform)
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
                self.experts.append(load_expert_params(path))

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

    def fold_inputs(self, X, sfreq):
        """Fold k's input (n_trials, n_chans, n_tokens, n_features) for k = 0, 1, ...
        (:func:`~sleepemo.fusion.inputs.participant_input`): one array for every fold, or
        built fold by fold when the variant reads fold k's experts."""
        band = band_tokens(self.run, X, sfreq, self.align[0])
        evoked = evoked_features(X, sfreq, self.cfg, self.align[1]) if self.evoked else None
        tokens = encoder_tokens(self.run, band, self.cfg.stride) if self.kind == "mae" \
            else None

        def build(k: int) -> np.ndarray:
            return participant_input(self.variant, self.run.cfg, band, evoked, tokens,
                                     self.experts[k] if self.kind == "experts" else None)

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
