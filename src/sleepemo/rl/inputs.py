"""The SAC head's input, label-free: one builder for stage 05 and sleepemo predict.

The SAC reads per-token embeddings of one of two sources (``rl.sac_inputs``), turned
into per-decision embeddings and then code vectors by the same code, whoever calls it
(:class:`SacInputs`):

- the stage-02 MAE's per-channel token embeddings (n_trials, n_chans, T, d) at
  ``rl.sac_stride`` samples per token, all channels side by side (n_trials, T,
  n_chans * d); one set of prototypes per run;
- fold k's stage-04 fused per-token embeddings (n_trials, T_f, d) of variant
  ``rl.sac_fusion``, at ``fusion.stride``, mean-pooled to ``rl.sac_stride``; one set of
  prototypes per fold.

The prototypes (:mod:`sleepemo.rl.prototypes`) turn the embeddings into code vectors.
The tokens come from the stage's caches (:class:`SacSource`: the MAE's
:class:`~sleepemo.mae.model.TokenCache`, stage 04's
:class:`~sleepemo.fusion.inputs.FusedTokens`) or, for a new participant, from the same
families' predictors (:func:`sleepemo.mae.predict.mae_tokens`,
:meth:`sleepemo.fusion.predict.FusionPredictor.fused`) in :mod:`sleepemo.rl.predict`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sleepemo.features import pool_time
from sleepemo.fusion.inputs import FusedTokens
from sleepemo.mae.inputs import built_band_cache
from sleepemo.mae.model import TokenCache, load_mae_weights
from sleepemo.pipeline.stage import Stage, stage_dir
from sleepemo.rl.prototypes import code_vectors


def channel_embeddings(tokens: np.ndarray) -> np.ndarray:
    """The MAE's per-channel token embeddings (n_trials, n_chans, T, d) side by side,
    (n_trials, T, n_chans * d): what the run-level prototypes quantise."""
    return np.ascontiguousarray(tokens.transpose(0, 2, 1, 3).reshape(
        tokens.shape[0], tokens.shape[2], -1))


@dataclass(frozen=True)
class SacInputs:
    """One participant's tokens -> the SAC's per-decision embeddings -> its code vectors.

    ``fused``: the tokens are fold k's fused ones (else the MAE's); ``ratio``: fused
    tokens per decision (``rl.sac_stride // fusion.stride``)."""

    fused: bool
    ratio: int = 1

    @classmethod
    def of(cls, cfg, fused: bool) -> SacInputs:
        """The builder of a run's config (``cfg``: the whole :class:`~sleepemo.config.Config`)."""
        return cls(fused, cfg.rl.sac_stride // cfg.fusion.stride if fused else 1)

    def embeddings(self, tokens: np.ndarray) -> np.ndarray:
        """(n_trials, n_decisions, n_in): what the prototypes are trained on and quantise."""
        if self.fused:
            return pool_time(tokens, self.ratio)
        return channel_embeddings(np.asarray(tokens))

    def codes(self, prototypes, tokens: np.ndarray) -> np.ndarray:
        """The code vectors (n_trials, n_decisions, rl.sac_dim) the SAC and its twin read."""
        return code_vectors(prototypes, self.embeddings(tokens))[0]


def source_key(fused_fp: str | None, mae_fp: str | None) -> str:
    """:attr:`SacSource.key`: the stage-04 result's fingerprint when the SAC reads its
    fused tokens, else the stage-02 encoder's."""
    return f"fusion:{fused_fp}" if fused_fp else f"mae:{mae_fp}"


class SacSource:
    """Stage 05's source of the SAC's embeddings (``rl.sac_inputs``): fold k's stage-04
    fused per-token embeddings (:class:`~sleepemo.fusion.inputs.FusedTokens` of variant
    ``rl.sac_fusion``: prototypes per fold), or the stage-02 MAE's embeddings of all
    channels (one set of prototypes per run), which are also the fall-back when stage 04
    has no such result; every participant's, through :class:`SacInputs`. Everything here
    is label-free."""

    def __init__(self, stage: Stage, ds, folds):

        self.stage, self.ds, self.folds = stage, ds, folds
        cfg = stage.cfg.rl
        self.mae_fp = load_mae_weights(stage_dir(stage.out, "mae"))[2]["fingerprint"]
        self.fused = None
        if cfg.sac_inputs == "fusion":
            fused = FusedTokens(stage, ds, folds, cfg.sac_fusion)
            self.fused = fused if fused.result is not None else None
        self.inputs = SacInputs.of(stage.cfg, self.fused is not None)

    @property
    def name(self) -> str:
        return f"fusion_{self.stage.cfg.rl.sac_fusion}" if self.fused else "mae"

    @property
    def key(self) -> str:
        """Identifies the embeddings (in the SAC's fingerprint)."""
        return source_key(self.fused.key if self.fused else None, self.mae_fp)

    def note(self) -> str | None:
        """Why the MAE's embeddings are used though the fused ones were asked for."""
        cfg = self.stage.cfg.rl
        if cfg.sac_inputs == "fusion" and self.fused is None:
            return (f"stage 04 has no finished fusion_{cfg.sac_fusion}: the SAC's prototypes "
                    "use the MAE's embeddings")
        return None

    def prepare(self) -> None:
        """Build the run-level caches the folds read (in the stage's own process)."""
        if self.fused:
            self.fused.prepare()
        else:
            self._mae_cache()

    def _mae_cache(self):
        """The MAE token cache at ``rl.sac_stride`` (built where missing)."""

        mcfg, folds = self.stage.cfg.mae, self.folds
        band = built_band_cache(self.stage.out, self.ds, folds, mcfg, self.stage.progress)
        return TokenCache.for_run(self.stage.out, band, self.subjects,
                                  self.stage.cfg.rl.sac_stride, self.stage.progress)

    @property
    def subjects(self) -> list:
        return list(self.folds.train_subjects) + list(self.folds.test_subjects)

    def mae_embeddings(self) -> dict:
        """participant -> (n_trials, n_decisions, n_chans * d) from the MAE token cache."""

        cache = self._mae_cache()
        return {s: self.inputs.embeddings(cache.load(s)) for s in self.subjects}

    def fused_embeddings(self, k: int) -> dict:
        """participant -> (n_trials, n_decisions, d) from fold k's fusion."""

        return {s: self.inputs.embeddings(e) for s, e in self.fused.fold(k).items()}
