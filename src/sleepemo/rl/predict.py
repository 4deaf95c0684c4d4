"""Stage 05's heads and their supervised twins applied to new recordings
(:mod:`sleepemo.predict`).

Results ``rl_dqn`` and ``rl_dqn_twin`` (``_shuffled`` with ``rl.shuffle_labels``). For a
new participant, as stage 05 computes a test participant's predictions:

1. the participant's label-free signals (:func:`sleepemo.rl.features.dqn_signals`, the
   run's ``rl.band`` and ``rl.decim``; z-scored on the participant's own trials);
2. per fold k, fold k's fitted CSP and scalings (``05_rl/rl_features_fold<k>.joblib``,
   :class:`~sleepemo.rl.features.FoldFeatures`) transform them;
3. fold k's network (the DQN's Q-network or the twin, ``05_rl/rl_fold<k>.pt``) gives
   two outputs per trial, turned into P(emotional) by the fold's softmax temperature (the
   result's ``fold<k>.npz``, :func:`sleepemo.rl.heads.trial_probability`) and copied to
   every timepoint;
4. the prediction is the folds' mean, as the stage's test predictions are.

The SAC heads (``rl_sac``, ``rl_sac_twin``) read code vectors built by the stage's own
builder (:class:`sleepemo.rl.inputs.SacInputs`). Prototypes over the MAE's embeddings
(``rl.sac_inputs: mae``, or no stage-04 ``fusion_<rl.sac_fusion>`` in the run): the
stage-02 encoder's token embeddings of the participant's band features (as
:class:`sleepemo.mae.model.TokenCache` holds them, pooled to ``rl.sac_stride``), coded by
the run's prototypes (``05_rl/prototypes.pt``); per fold the SAC's policy (run along each
trial, :func:`sleepemo.rl.sac.rollout`) or the GRU twin (``sac_fold<k>.pt``) gives
per-token probabilities, interpolated to every timepoint; the folds' mean. SAC heads on
stage 04's fused tokens (``rl.sac_inputs: fusion``, the result's ``sac_source`` names the
stage-04 result by its fingerprint): per fold k, fold k's fusion network
(:meth:`sleepemo.fusion.predict.FusionPredictor.fused`) embeds the participant's rebuilt
fusion input, coded by fold k's prototypes (``prototypes_fold<k>.pt``, checked against
the fingerprint recorded beside it), then fold k's policy or twin as above.
"""
from __future__ import annotations

import numpy as np

from sleepemo.fusion.predict import FusionPredictor
from sleepemo.io import read_json
from sleepemo.mae.model import load_mae_weights
from sleepemo.mae.predict import mae_tokens
from sleepemo.pipeline.artefacts import Result, fold_mean, load_checkpoint, results
from sleepemo.pipeline.stage import stage_dir
from sleepemo.predict.base import PredictError, Predictor, Run
from sleepemo.rl.env import observation_space
from sleepemo.rl.features import dqn_signals, features_path, load_fold_features
from sleepemo.rl.heads import Twin, broadcast, fold_checkpoint, q_network, trial_probability
from sleepemo.rl.inputs import SacInputs
from sleepemo.rl.prototypes import load_prototypes, prototypes_path
from sleepemo.rl.sac import (GruTwin, sac_checkpoint, sac_policy, token_probability,
                             tokens_to_timepoints)


class DqnPredictor(Predictor):
    """The DQN (``head="dqn"``) or its twin (``head="dqn_twin"``) of every fold."""

    online = True  # per participant: zscore_participant only

    def __init__(self, run: Run, result: Result):

        self.run, self.name, self.cfg = run, result.label, run.cfg.rl
        head = result.meta.get("head")
        folder = stage_dir(run.out, "rl")
        self.folds = []  # (features, network, temperature) per fold
        for k in range(run.n_folds):
            feats = load_fold_features(features_path(folder, k), result.fingerprint)
            if feats is None:
                raise PredictError(f"{features_path(folder, k)}: fold {k}'s fitted features "
                                   "are missing or of another run (a run made before they "
                                   "were kept): rerun src/05_rl.py")
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

    def predict(self, X, sfreq, subject=None):

        sig = dqn_signals(X, sfreq, self.cfg)
        return fold_mean(broadcast(trial_probability(net, feats.transform(sig), temp),
                                   X.shape[-1]) for feats, net, temp in self.folds)


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


class SacPredictor(Predictor):
    """The SAC (``head="sac"``) or its GRU twin (``head="sac_twin"``) of every fold, on
    code vectors built by :class:`~sleepemo.rl.inputs.SacInputs` (see the module docstring)."""

    online = True  # per participant: the band features' z-scores only

    def __init__(self, run: Run, result: Result):

        self.run, self.name, self.cfg = run, result.label, run.cfg.rl
        self.head = result.meta["head"]
        source = str(result.meta.get("sac_source"))
        folder, mae = stage_dir(run.out, "rl"), stage_dir(run.out, "mae")
        self.fusion = None
        if source.startswith("fusion:"):
            self.fusion = self._fusion(run, source[len("fusion:"):], result.label)
            self.prototypes = [self._prototypes(prototypes_path(folder, k), None)
                               for k in range(run.n_folds)]
        elif source.startswith("mae:"):
            info = load_mae_weights(mae)[2]
            if info["fingerprint"] != source[len("mae:"):]:
                raise PredictError(f"{mae}: not the MAE {result.label} was trained on")
            self.prototypes = self._prototypes(prototypes_path(folder, None),
                                               result.meta.get("prototypes_fingerprint", ""))
        else:
            raise PredictError(
                f"{result.label}: the result does not record its embeddings' source (a run "
                "made before sleepemo predict read SAC heads): rerun src/05_rl.py")
        self.inputs = SacInputs.of(run.cfg, self.fusion is not None)
        self.nets = []
        for k in range(run.n_folds):
            path = sac_checkpoint(folder, k)
            state = load_checkpoint(path, result.fingerprint)
            if state is None:
                raise PredictError(f"{path}: fold {k}'s SAC networks are missing or of "
                                   "another run")
            if self.head == "sac":
                self.nets.append(sac_policy(self.cfg.sac_dim, self.cfg, state["sac"]))
            else:
                twin = GruTwin(self.cfg.sac_dim)
                twin.load_state_dict(state["twin"])
                self.nets.append(twin)

    @staticmethod
    def _fusion(run: Run, fp: str, label: str):
        """The stage-04 result (by fingerprint) whose fused tokens the SAC read."""

        found = [r for r in results(run.out, "fusion") if r.fingerprint == fp]
        if not found:
            raise PredictError(f"{label} read the fused tokens of a stage-04 result the run "
                               "no longer has: rerun src/05_rl.py")
        return FusionPredictor(run, found[0])

    def _prototypes(self, path, fp: str | None):
        """The prototypes in ``path``; ``fp`` None: the fingerprint recorded beside them
        (per-fold prototypes, whose fingerprint names the code that made them)."""

        if fp is None:
            record = path.with_suffix(".json")
            fp = read_json(record).get("fingerprint", "") if record.is_file() else ""
        found = load_prototypes(path, fp, self.cfg)
        if found is None:
            raise PredictError(f"{path}: the SAC's prototypes are missing or of another run")
        return found[0]

    def fold_codes(self, X, sfreq):
        """Fold k's code vectors (n_trials, n_decisions, rl.sac_dim) for k = 0, 1, ..."""

        if self.fusion is None:
            codes = self.inputs.codes(self.prototypes,
                                      mae_tokens(self.run, X, sfreq, self.cfg.sac_stride))
            yield from (codes for _ in self.nets)
            return
        for k, x in enumerate(self.fusion.fold_inputs(X, sfreq)):
            yield self.inputs.codes(self.prototypes[k], self.fusion.fused(k, x))

    def predict(self, X, sfreq, subject=None):

        return fold_mean(tokens_to_timepoints(token_probability(net, codes), X.shape[-1])
                         for net, codes in zip(self.nets, self.fold_codes(X, sfreq)))


def load(run: Run, result: Result) -> Predictor:
    head = result.meta.get("head")
    if head in ("dqn", "dqn_twin"):
        return DqnPredictor(run, result)
    if head in ("sac", "sac_twin"):
        return SacPredictor(run, result)
    raise PredictError(f"{result.label}: unknown stage-05 head {head!r}")
