"""The fusion's inputs (stage 04) and its trained folds' fused tokens (read by stage 05).

One participant's input of a variant is built by one function, :func:`participant_input`
(:func:`base_input`, then :func:`with_evoked`), from what the participant's trials give
label-free: its token features (:func:`sleepemo.mae.inputs.band_tokens`), its evoked
waveform (:func:`evoked_features`), the MAE's encoder tokens
(:func:`sleepemo.mae.inputs.encoder_tokens`) and fold k's fitted state (stage 03's
experts). A variant with ``align`` (:func:`aligned`) reads its evoked waveform and, for
the ``raw`` input, its band envelopes from the participant's Euclidean-aligned waveform
(:func:`sleepemo.features.euclidean_align`, label-free, from its own trials; caches of
their own, ``<out>/cache/evoked_ea`` and ``band_features_ea``). The stage reads those from the run's caches (which store exactly these
functions' outputs) in :class:`Inputs`; ``sleepemo predict``
(:class:`sleepemo.fusion.predict.FusionPredictor`) computes them for a new participant
and calls the same function. :class:`FusedTokens` rebuilds fold k's trained fusion from
its checkpoint and gives its per-token embeddings (a library module, so that stage 05
reads stage 04's artefacts without importing another stage). Nothing here sees a label
except :meth:`Inputs.labels`, which gives a fold's training labels only.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from sleepemo.config import Config, ConfigError, FusionConfig
from sleepemo.experts.infer import load_expert_params
from sleepemo.experts.model import embed_tokens
from sleepemo.features import BandFeatureCache, TokenSpec, pool_time
from sleepemo.fusion.model import (FusionNet, TunedFusion, electrode_positions, fused_tokens,
                                   standardise)
from sleepemo.mae.inputs import ALIGNED, Aligned, band_at, built_band_cache, cache_class
from sleepemo.mae.model import TokenCache, load_mae_weights
from sleepemo.pipeline.artefacts import Result, load_checkpoint, results
from sleepemo.pipeline.stage import Stage, stage_dir
from sleepemo.progress import bar

VARIANTS = FusionConfig.VARIANTS


def output_name(cfg: FusionConfig, variant: str) -> str:
    return f"fusion_{variant}" + ("_shuffled" if cfg.shuffle_labels else "")


def token_window(cfg: FusionConfig) -> tuple[int, int]:
    """The trial head's window in tokens."""
    return cfg.window[0] // cfg.stride, -(-cfg.window[1] // cfg.stride)


def new_model(cfg: FusionConfig, n_feat: int, n_chans: int, positions=None) -> FusionNet:
    return FusionNet(n_feat, n_chans, positions, cfg.d_model, cfg.n_heads, cfg.n_temporal,
                     cfg.kernel, token_window(cfg), cfg.dropout)


def new_tuned_model(cfg: FusionConfig, experts: dict, n_feat: int, n_chans: int,
                    positions, n_heads: int, ratio: int) -> TunedFusion:
    """The ``experts_finetune`` network: fold k's experts (stacked parameters, fine-tuned)
    in front of a fusion, for inputs of ``n_feat`` features per token (the experts' own
    inputs, then the extras: :func:`tuned_input`) at ``ratio`` tokens per fusion token."""
    n_in = experts["encoder.embed.weight"].shape[-1]
    fusion = new_model(cfg, experts["encoder.embed.weight"].shape[1] + n_feat - n_in,
                       n_chans, positions)
    return TunedFusion(experts, n_heads, n_in, ratio, fusion)


def tuned_input(x: np.ndarray, evoked: np.ndarray, ratio: int) -> np.ndarray:
    """The ``experts_finetune`` input: the experts' inputs ``x`` at their token rate, then
    the evoked tokens repeated to that rate (:class:`TunedFusion` pools them back)."""
    return np.concatenate([x, np.repeat(evoked, ratio, axis=2)], axis=-1)


# ------------------------------------------------------------------ one participant's input
def aligned(variant: str) -> tuple[bool, bool]:
    """Whether variant ``variant`` reads (its band features, its evoked waveform) from
    the participant's Euclidean-aligned waveform: the evoked waveform whenever the variant
    is ``align``-ed, the band features only for the ``raw`` input (the experts and the MAE
    keep the features they were trained on)."""
    spec = VARIANTS[variant]
    return spec.align and spec.inputs == "raw", spec.align


def variant_spec(variant: str) -> tuple:
    """Variant ``variant``'s fields as its fingerprint and the stage's metrics hold them:
    (inputs, evoked, loss), then ``True`` for an aligned variant (an unaligned variant's
    fingerprint is what it was before variants could be aligned)."""
    spec = VARIANTS[variant]
    return (spec.inputs, spec.evoked, spec.loss) + ((True,) if spec.align else ())


def evoked_spec(cfg: FusionConfig) -> TokenSpec:
    """The evoked tokens' features: the ``fusion.evoked_band`` waveform, z-scored."""
    return TokenSpec.of((), evoked=cfg.evoked_band)


def evoked_features(X: np.ndarray, sfreq: float, cfg: FusionConfig, align: bool = False
                    ) -> np.ndarray:
    """One participant's evoked waveform (n_trials, n_chans, n_times, 1): what the run's
    evoked cache (:func:`evoked_cache`, of the same ``align``) holds for it; ``align``:
    of its Euclidean-aligned waveform."""
    spec = evoked_spec(cfg)
    return (Aligned(spec) if align else spec)(X, sfreq)


def evoked_cache(out, data_fingerprint: str, cfg: FusionConfig, align: bool = False
                 ) -> BandFeatureCache:
    """The run's cache of :func:`evoked_features` (``<out>/cache/evoked``, aligned:
    ``evoked_ea``), not built."""
    spec = evoked_spec(cfg)
    return cache_class(align).of_run(out, data_fingerprint, spec.bands, spec.kind,
                                     spec.evoked, name="evoked" + ALIGNED * align)


def built_evoked_cache(out, ds, folds, cfg: FusionConfig, progress: bool = True,
                       align: bool = False) -> BandFeatureCache:
    """:func:`evoked_cache` with every training and test participant of ``folds`` built."""
    spec = evoked_spec(cfg)
    return cache_class(align).for_run(out, ds, folds, spec.bands, spec.kind, progress,
                                      evoked=spec.evoked, name="evoked" + ALIGNED * align)


def base_input(kind: str, cfg: Config, band, tokens=None, experts: dict | None = None
               ) -> np.ndarray:
    """One participant's input ``kind`` without the evoked tokens, z-scored over the trials
    given (``experts_tuned``: not z-scored, the fine-tuned experts' input), from

    - ``band``: its token features (a band-feature cache entry or
      :func:`sleepemo.mae.inputs.band_tokens`), read by every kind but ``mae``;
    - ``tokens`` (``mae``): the MAE's encoder tokens at ``fusion.stride`` (a
      :class:`~sleepemo.mae.model.TokenCache` entry or
      :func:`sleepemo.mae.inputs.encoder_tokens`);
    - ``experts`` (``experts``): fold k's stacked expert parameters.

    (n_trials, n_chans, n_tokens, n_features) at ``fusion.stride`` samples per token
    (``experts_tuned``: at ``experts.stride``), float32."""
    stride, estride = cfg.fusion.stride, cfg.experts.stride
    if kind == "experts":
        return standardise(pool_time(embed_tokens(experts, band_at(band, estride),
                                                  cfg.mae.n_heads), stride // estride))
    if kind == "experts_tuned":  # the experts' own inputs
        return band_at(band, estride)
    if kind == "mae":
        return standardise(np.asarray(tokens))
    if kind == "raw":  # without the MAE's evoked tokens, if it has them
        return standardise(band_at(band, stride)[..., :len(cfg.mae.bands)])
    raise ConfigError(f"unknown fusion input {kind!r}")


def evoked_tokens(evoked, cfg: FusionConfig) -> np.ndarray:
    """The evoked waveform (:func:`evoked_features` or a cache entry) pooled to the
    fusion's tokens."""
    return band_at(evoked, cfg.stride)


def with_evoked(variant: str, cfg: Config, base: np.ndarray, evoked: np.ndarray | None
                ) -> np.ndarray:
    """Variant ``variant``'s input from its :func:`base_input` and, when the variant has
    them, the evoked tokens of the same trials (:func:`evoked_tokens`): side by side, or
    repeated to the experts' token rate after their inputs (:func:`tuned_input`)."""
    spec = VARIANTS[variant]
    if not spec.evoked:
        return base
    if spec.inputs == "experts_tuned":
        return tuned_input(base, evoked, cfg.fusion.stride // cfg.experts.stride)
    return np.concatenate([base, evoked], axis=-1)


def participant_input(variant: str, cfg: Config, band, evoked=None, tokens=None,
                      experts: dict | None = None) -> np.ndarray:
    """One participant's input of fusion variant ``variant`` (what fold k's network reads):
    :func:`base_input` of the variant's kind, then :func:`with_evoked` with ``evoked``
    (:func:`evoked_features` or a cache entry; variants without evoked tokens ignore
    it). ``experts``: fold k's, for the ``experts`` variants. ``band`` and ``evoked`` are
    of the aligned waveform where :func:`aligned` says so."""
    spec = VARIANTS[variant]
    return with_evoked(variant, cfg, base_input(spec.inputs, cfg, band, tokens, experts),
                       evoked_tokens(evoked, cfg.fusion) if spec.evoked else None)


class FusedTokens:
    """Stage 04's fused per-token embeddings (:func:`fused_tokens`) of a finished
    variant (``mae`` or ``raw``: inputs shared by every fold): :meth:`fold` gives fold
    k's, from fold k's trained fusion, for every trial of every participant. Stage 05's
    SAC builds its prototypes on them. Fold k's fusion was trained on fold k's training
    labels only, so its embeddings of the held-out participant carry no held-out label.
    """

    def __init__(self, stage: Stage, ds, folds, variant: str):
        self.stage, self.ds, self.folds, self.variant = stage, ds, folds, variant
        if VARIANTS[variant].inputs not in ("mae", "raw"):
            raise ConfigError(f"fusion variant {variant} reads fold-specific experts; the "
                              "SAC reads the fused tokens of a mae or raw variant")
        name = output_name(dataclasses.replace(stage.cfg.fusion, shuffle_labels=False),
                           variant)
        found = [r for r in results(stage.out, "fusion") if r.name == name]
        self.result = found[0] if found else None
        self._inputs = None

    @property
    def key(self) -> str | None:
        """The stage-04 result's fingerprint; None when it is absent."""
        return None if self.result is None else self.result.fingerprint

    def prepare(self) -> None:
        """Build the run-level caches of the variant's inputs (in a stage's own process,
        before its fold workers start)."""
        inputs = Inputs(self.stage, self.ds, self.folds)
        band_align, evoked_align = aligned(self.variant)
        inputs.band_cache(band_align)
        if VARIANTS[self.variant].evoked:
            inputs.evoked_cache(evoked_align)
        if VARIANTS[self.variant].inputs == "mae":
            inputs.mae_tokens()

    def fold(self, k: int) -> dict:
        """participant -> (n_trials, n_tokens, d) from fold k's fusion."""
        if self.result is None:
            raise FileNotFoundError(f"no finished stage-04 result fusion_{self.variant} in "
                                    f"{stage_dir(self.stage.out, 'fusion')}")
        if self._inputs is None:
            self._inputs = Inputs(self.stage, self.ds, self.folds).full(self.variant)
        cfg = self.stage.cfg.fusion
        path = self.result.folder / f"fold{k}.pt"
        state = load_checkpoint(path, self.key, self.stage.device)
        if state is None:
            raise FileNotFoundError(f"{path}: fold {k}'s fusion is missing or of another "
                                    "run; run src/04_fusion.py again")
        x0 = next(iter(self._inputs.values()))
        model = new_model(cfg, x0.shape[-1], x0.shape[1], electrode_positions(
            self.ds.ch_names)).to(self.stage.device)
        model.load_state_dict(state["model"])
        return {s: fused_tokens(model, x, cfg.predict_batch) for s, x in self._inputs.items()}


def input_key(kind: str, expert_fp, mae_fp, band_key) -> str:
    """What identifies the input ``kind`` (in the fusion's fingerprints), from the one
    of ``expert_fp()`` (the stage-03 result's fingerprint), ``mae_fp()`` (the stage-02
    encoder's) and ``band_key()`` (the band features' cache key) it rests on."""
    if kind == "experts":
        return expert_fp()
    if kind == "experts_tuned":
        return f"{expert_fp()}|{band_key()}"
    if kind == "mae":
        return mae_fp()
    return band_key()


class Inputs:
    """Every variant's input for the stage, from the run's caches: each participant's
    :func:`participant_input` (its :func:`base_input` kept across variants and, where
    it does not depend on the fold, across folds), built lazily and kept while needed.

    ``variant(v, k)`` -> participant -> (n_trials, n_chans, n_tokens, n_features), with
    only the kept trials of fold k's training participants (:meth:`keep`); ``key(kind)``
    identifies an input for the fingerprints. Nothing here sees a label but
    :meth:`labels`.
    """

    def __init__(self, stage: Stage, ds, folds):
        self.stage, self.ds, self.folds = stage, ds, folds
        self.cfg, self.mcfg = stage.cfg.fusion, stage.cfg.mae
        self.subjects = list(folds.train_subjects) + list(folds.test_subjects)
        self._kept: dict = {}
        self._caches: dict = {}  # the band-feature caches, built on first use

    @functools.cached_property
    def band(self) -> BandFeatureCache:
        """Stage 02/03's token features (the same cache), built on first use."""
        return self.band_cache(False)

    def _cache(self, name: str, build) -> BandFeatureCache:
        """The band-feature cache ``name``, built by ``build()`` on first use."""
        if name not in self._caches:
            self._caches[name] = build()
        return self._caches[name]

    def band_cache(self, align: bool = False) -> BandFeatureCache:
        """The token features (``align``: of the aligned waveform), built on first use."""
        return self._cache("band_cache" + ALIGNED * align, lambda: built_band_cache(
            self.stage.out, self.ds, self.folds, self.mcfg, self.stage.progress, align))

    def evoked_cache(self, align: bool = False) -> BandFeatureCache:
        """The evoked tokens' features (``align``: of the aligned waveform), built on
        first use."""
        return self._cache("evoked_cache" + ALIGNED * align, lambda: built_evoked_cache(
            self.stage.out, self.ds, self.folds, self.cfg, self.stage.progress, align))

    def evoked(self, align: bool = False) -> dict:
        """Every participant's evoked tokens (:func:`evoked_tokens`), every trial."""
        name = "evoked" + ALIGNED * align
        if name not in self._kept:
            self._kept[name] = {s: evoked_tokens(self.evoked_cache(align).load(s), self.cfg)
                                for s in self.subjects}
        return self._kept[name]

    def expert_result(self) -> Result:
        name = self.cfg.expert_result
        found = [r for r in results(self.stage.out, "experts") if r.name == name]
        if not found:
            raise FileNotFoundError(
                f"no finished stage-03 result {name!r} in {stage_dir(self.stage.out, 'experts')}"
                ": run src/03_experts.py first, or leave the experts variants out "
                "(--set 'fusion.variants=[mae,raw]')")
        return found[0]

    def key(self, kind: str, align: bool = False) -> str:
        """What identifies the input ``kind`` (``align``: its band features aligned)."""
        return input_key(kind, lambda: self.expert_result().fingerprint,
                         lambda: load_mae_weights(stage_dir(self.stage.out, "mae"))[2][
                             "fingerprint"], lambda: self.band_cache(align).key)

    def keep(self, k: int) -> dict:
        """Fold k's training trials (at most ``fusion.train_trials`` per training
        participant, a seeded random subset chosen without labels): training draws
        fewer trials than that, and every trial kept costs an expert embedding."""
        rng = np.random.default_rng([self.stage.cfg.seed, k, 5])
        n = self.folds.n_trials
        return {s: np.sort(rng.choice(n[s], size=min(self.cfg.train_trials, n[s]),
                                      replace=False)) for s in self.folds.train_of(k)}

    def get(self, kind: str, k: int, align: bool = False) -> dict:
        """The :func:`base_input` ``kind`` of every participant for fold ``k``, of the
        kept trials of its training participants (:meth:`keep`), every trial of the
        others. The experts embed only the kept trials (and z-score over them); the other
        kinds are built on every trial once and their kept rows taken. ``align``: from
        the aligned band features (the ``raw`` input: :func:`aligned`)."""
        keep = self.keep(k)
        if kind == "experts":
            if self._kept.get("experts_fold") != k:
                self._kept.pop("experts", None)
                self._kept["experts"] = self._experts(k, keep)
                self._kept["experts_fold"] = k
            return self._kept["experts"]
        return {s: x[keep[s]] if s in keep else x
                for s, x in self._shared(kind, align).items()}

    def _shared(self, kind: str, align: bool = False) -> dict:
        """Every trial's :func:`base_input` ``kind`` for the kinds that are the same in
        every fold (``mae``, ``raw``, ``experts_tuned``), built once and kept."""
        name = kind + ALIGNED * align
        if name not in self._kept:
            cache = self.mae_tokens() if kind == "mae" else None
            band = self.band_cache(align)
            self._kept[name] = {
                s: base_input(kind, self.stage.cfg, band.load(s),
                              tokens=None if cache is None else cache.load(s))
                for s in self.subjects}
        return self._kept[name]

    def expert_params(self, k: int) -> dict:
        """Fold k's stage-03 experts: their stacked parameters."""

        return load_expert_params(self.expert_result().folder / f"fold{k}.pt",
                                  self.stage.device)

    def _experts(self, k: int, keep: dict) -> dict:
        params = self.expert_params(k)
        out = {}
        for s in bar(self.subjects, desc=f"fold {k}: experts' embeddings",
                     enabled=self.stage.progress, leave=False):
            band = self.band.load(s)
            if s in keep:  # training participants: only the kept trials are embedded
                band = band[keep[s]]
            out[s] = base_input("experts", self.stage.cfg, band, experts=params)
        return out

    def mae_tokens(self) -> TokenCache:
        """The stage-02 MAE's token embeddings at the fusion's token rate (a run-level
        cache, built by the stage's process before fold workers start)."""
        return TokenCache.for_run(self.stage.out, self.band, self.subjects, self.cfg.stride,
                                  self.stage.progress)

    def variant(self, v: str, k: int) -> dict:
        """Variant ``v``'s input of every participant for fold ``k``
        (:func:`with_evoked` of :meth:`get`)."""
        band_align, evoked_align = aligned(v)
        base = self.get(VARIANTS[v].inputs, k, band_align)
        if not VARIANTS[v].evoked:
            return base
        keep = self.keep(k)
        ev = {s: x[keep[s]] if s in keep else x for s, x in self.evoked(evoked_align).items()}
        return {s: with_evoked(v, self.stage.cfg, base[s], ev[s]) for s in self.subjects}

    def full(self, v: str) -> dict:
        """Variant ``v``'s input of every trial of every participant (variants whose
        input does not depend on the fold: ``mae``, ``raw``)."""
        kind = VARIANTS[v].inputs
        if kind not in ("mae", "raw"):
            raise ConfigError(f"fusion variant {v} reads fold-specific experts: only the "
                              "mae and raw variants have one input for every fold")
        band_align, evoked_align = aligned(v)
        base = self._shared(kind, band_align)
        ev = self.evoked(evoked_align) if VARIANTS[v].evoked else {}
        return {s: with_evoked(v, self.stage.cfg, x, ev.get(s)) for s, x in base.items()}

    def labels(self, k: int, shuffle: bool = False) -> dict:
        """Fold k's training labels (:meth:`Folds.labels_of`) of the kept trials."""
        keep = self.keep(k)
        return {s: y[keep[s]] for s, y in self.folds.labels_of(
            self.ds, k, shuffle, self.stage.cfg.seed).items()}
