"""Stage 05's DQN head and its supervised twin applied to new recordings
(:mod:`sleepemo.predict`).

Results ``rl_dqn`` and ``rl_dqn_twin`` (``_shuffled`` with ``rl.shuffle_labels``). For a
new participant, as stage 05 computes a test participant's predictions:

1. the participant's label-free signals (:func:`sleepemo.rl.features.participant_signals`,
   run's ``rl.band`` and ``rl.decim``; z-scored on the participant's own trials);
2. per fold k, fold k's fitted CSP and scalings (``05_rl_heads/rl_features_fold<k>.joblib``,
   :class:`~sleepemo.rl.features.FoldFeatures`) transform them;
3. fold k's network (the DQN's Q-network or the twin, ``05_rl_heads/rl_fold<k>.pt``) gives
   two outputs per trial, turned into P(emotional) by the fold's softmax temperature (the
   result's ``fold<k>.npz``, :func:`sleepemo.rl.heads.trial_probability`) and copied to
   every timepoint;
4. the prediction is the folds' mean, as the stage's test predictions are.

The SAC heads (``rl_sac``, ``rl_sac_twin``) are refused: their inputs are code vectors of
stage 04's fused tokens (or of the MAE's embeddings) through the run's prototypes, which
this module does not rebuild for a new participant.
"""
from __future__ import annotations

import numpy as np

from .artefacts import Result, load_checkpoint
from .predict import PredictError, Predictor, Run
from .stage import stage_dir


class DqnPredictor(Predictor):
    """The DQN (``head="dqn"``) or its twin (``head="dqn_twin"``) of every fold."""

    def __init__(self, run: Run, result: Result):
        from .rl.env import observation_space
        from .rl.features import features_path, load_fold_features
        from .rl.heads import Twin, fold_checkpoint, q_network

        self.run, self.name, self.cfg = run, result.label, run.cfg.rl
        head = result.meta.get("head")
        folder = stage_dir(run.out, "rl_heads")
        self.folds = []  # (features, network, temperature) per fold
        for k in range(run.n_folds):
            feats = load_fold_features(features_path(folder, k), result.fingerprint)
            if feats is None:
                raise PredictError(f"{features_path(folder, k)}: fold {k}'s fitted features "
                                   "are missing or of another run (a run made before they "
                                   "were kept): rerun src/05_rl_heads.py")
            state = load_checkpoint(fold_checkpoint(folder, k), result.fingerprint)
            if state is None:
                raise PredictError(f"{fold_checkpoint(folder, k)}: fold {k}'s networks are "
                                   "missing or of another run")
            n_stats = len(feats.stats_mu_)
            if head == "dqn":
                net = q_network(observation_space(
                    (feats.n_csp, len(range(0, run.n_times, self.cfg.decim))), (n_stats,)),
                    self.cfg, state["dqn"])
            else:
                net = Twin(feats.n_csp, n_stats, self.cfg.lstm, self.cfg.dropout)
                net.load_state_dict(state["twin"])
            self.folds.append((feats, net, _temperature(result, k)))

    def predict(self, X, sfreq):
        from .rl.features import participant_signals
        from .rl.heads import broadcast, trial_probability

        sig = participant_signals(X, sfreq, tuple(self.cfg.band), self.cfg.decim)
        return np.mean([broadcast(trial_probability(net, feats.transform(sig), temp),
                                  X.shape[-1]) for feats, net, temp in self.folds],
                       axis=0).astype(np.float32)


def _temperature(result: Result, k: int) -> float:
    """Fold k's softmax temperature (fitted on the fold's inner participants)."""
    path = result.folder / f"fold{k}.npz"
    if not path.is_file():
        raise PredictError(f"{path}: fold {k} of {result.label} is missing")
    with np.load(path) as z:
        if str(z["fingerprint"]) != result.fingerprint or "temperature" not in z.files:
            raise PredictError(f"{path}: fold {k} is of another run or has no softmax "
                               "temperature")
        return float(z["temperature"])


def load(run: Run, result: Result) -> Predictor:
    head = result.meta.get("head")
    if head in ("dqn", "dqn_twin"):
        return DqnPredictor(run, result)
    if head in ("sac", "sac_twin"):
        raise PredictError(f"{result.label}: the SAC heads are not supported by sleepemo "
                           "predict yet (their inputs are stage 04's fused tokens or the "
                           "MAE's embeddings of the new participant, coded by the run's "
                           "prototypes, which are not rebuilt for new recordings)")
    raise PredictError(f"{result.label}: unknown stage-05 head {head!r}")
