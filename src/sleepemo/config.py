"""Typed run configuration: one YAML profile per scale (``sleepemo/profiles/<profile>.yaml``,
package data: found wherever the package is installed).

A profile sets the data scale and what each stage runs; ``--set key.sub=value`` overrides
single values from the command line (values are parsed as YAML). The resolved config is
saved beside the artefacts it produced.

**Adding a stage's section** is one dataclass and one line: write a dataclass whose fields
are :func:`setting`\\ s (each declares what it ``affects``) with a ``validate(self, cfg)``
method, and add it as a field of :class:`Config`. Loading, unknown-key errors, overrides
and validation find it from there. :func:`fields_affecting` lists the fields of a section
that change trained weights (or predictions) for fingerprints, so no stage keeps its own
list of fields to ignore.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sleepemo import COMPETITION_SLUG
from sleepemo.errors import InputError
from sleepemo.io import write_text

#: The source checkout around this package (``<REPO>/src/sleepemo``); meaningful only when
#: :data:`CHECKOUT` is true (an installed package has no repository around it).
REPO = Path(__file__).resolve().parents[2]
#: Whether this package is imported from a source checkout (run from the repository or
#: installed with ``pip install -e .``) rather than from an installed copy.
CHECKOUT = (REPO / "pyproject.toml").is_file() and \
    (REPO / "src" / "sleepemo").resolve() == Path(__file__).resolve().parent
#: The YAML profiles, shipped inside the package (package data).
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
PROFILES = ("smoke", "quick", "full")
EXECUTORS = ("local", "ray")


def project_dir() -> Path:
    """Where the default ``output/``, ``submissions/`` and ``kaggle/bundle/`` folders go:
    the checkout when the package is imported from one (as ``./run.sh`` and an editable
    install do: the same folders as always), else the current working directory (an
    installed package). ``data.input_dir`` and paths given on the command line stay
    relative to the current working directory."""
    return REPO if CHECKOUT else Path.cwd()

#: What a setting changes, from most to least: the trained weights (and so everything
#: after them), only the predictions or reports made with trained weights, or nothing that
#: is computed (speed, device, which variants run).
AFFECTS = ("weights", "predictions", "nothing")

#: ``data.bad_values``: what the reader does with NaN/Inf samples in a file.
BAD_VALUES = ("error", "interpolate")


class ConfigError(InputError, ValueError):
    """A profile or override is invalid."""

    kind = "config error"


def setting(default: Any = dataclasses.MISSING, *, affects: str = "weights",
            factory: typing.Callable | None = None, help: str = ""):
    """A config field that declares what it ``affects`` (one of :data:`AFFECTS`)."""
    if affects not in AFFECTS:
        raise ValueError(f"affects must be one of {AFFECTS}, not {affects!r}")
    meta = {"affects": affects, "help": help}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


WORKERS_HELP = ("fold-parallel worker processes (Ray actors with executor=ray), one torch "
                "thread each (0: one per core or cluster CPU); with one thread, results "
                "are the same for any number")


def fields_affecting(section, *kinds: str) -> dict:
    """``{name: value}`` of the section's fields whose ``affects`` is one of ``kinds``
    (fields declared without :func:`setting` count as ``weights``)."""
    bad = set(kinds) - set(AFFECTS)
    if bad:
        raise ValueError(f"unknown kinds {sorted(bad)}; known: {AFFECTS}")
    return {f.name: dataclasses.asdict(section)[f.name] for f in dataclasses.fields(section)
            if f.metadata.get("affects", "weights") in kinds}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_device(value: str, key: str) -> None:
    _check(value in ("auto", "cpu", "cuda"), f"{key} must be auto, cpu or cuda")


@dataclass
class DataConfig:
    dir: str | None = None            # a data folder; None: found, downloaded or synthetic
    input_dir: str = "input"
    kaggle_input: str = "/kaggle/input"  # where a Kaggle kernel mounts competition data
    slug: str = COMPETITION_SLUG
    synthetic_scale: float = 1.0
    synthetic_seed: int = 0
    synthetic_design: str = "theta"   # where the synthetic effect sits: theta or evoked
    bad_values: str = setting("error", help="NaN/Inf samples in a file: error (stop, naming "
                              "the file and trials) or interpolate (repair them along time; "
                              "no trial dropped; <out>/00_folds/repairs.csv lists them)")

    def validate(self, cfg: "Config") -> None:
        _check(self.bad_values in BAD_VALUES, f"data.bad_values must be one of "
               f"{', '.join(BAD_VALUES)}, not {self.bad_values!r}")
        _check(0 < float(self.synthetic_scale) <= 10, "data.synthetic_scale must be in (0, 10]")
        _check(self.synthetic_design in ("theta", "evoked"),
               f"data.synthetic_design must be theta or evoked, not {self.synthetic_design!r}")


@dataclass
class BaselinesConfig:
    """Stage 01: models of the registry (``sleepemo.baselines``) run under LOPO."""
    models: list[str] = setting(factory=lambda: [
        "constant", "shuffled", "starter", "second_place", "riemann", "xdawn_ts", "erp_lda",
        "eegnet", "shallow_fbcsp"], affects="nothing")
    #: result name -> the model's parameters; ``model: <registry name>`` makes a named
    #: variant of a registered model (as in :attr:`VARIANTS`)
    params: dict[str, dict] = field(default_factory=dict)
    workers: int = setting(1, affects="nothing",
                           help="folds fitted at once (joblib processes, or Ray tasks with "
                                "executor=ray; 0: one per core or cluster CPU); each uses "
                                "one BLAS thread")

    #: named variants every profile knows (``params`` may add or replace them): the
    #: Euclidean-aligned twins, so that adding ``<model>_ea`` to ``models`` reports a
    #: model both ways in one run
    VARIANTS: typing.ClassVar[dict[str, dict]] = {
        "riemann_ea": {"model": "riemann", "align": "euclidean"},
        "xdawn_ts_ea": {"model": "xdawn_ts", "align": "euclidean", "recentre": False},
        "eegnet_ea": {"model": "eegnet", "align": "euclidean"},
        "shallow_fbcsp_ea": {"model": "shallow_fbcsp", "align": "euclidean"},
        "conformer_ea": {"model": "conformer", "align": "euclidean"}}

    def _spec(self, name: str) -> dict:
        return dict(self.params.get(name) or self.VARIANTS.get(name) or {})

    def registry_key(self, name: str) -> str:
        """The registered model behind result ``name``."""
        return str(self._spec(name).get("model", name))

    def model_params(self, name: str) -> dict:
        """Result ``name``'s model parameters (without ``model``)."""
        return {k: v for k, v in self._spec(name).items() if k != "model"}

    def validate(self, cfg: "Config") -> None:
        from sleepemo.baselines import REGISTRY

        bad = [m for m in self.models if self.registry_key(m) not in REGISTRY]
        _check(not bad, f"unknown baseline model(s) {bad} (a variant names its registered "
                        f"model with params.<name>.model); registered: {sorted(REGISTRY)}")
        _check(self.workers >= 0, f"baselines.workers must be >= 0, got {self.workers}")


@dataclass
class MAEConfig:
    """Stage 02: band features and masked-autoencoder pre-training (``models/mae.py``)."""
    bands: list[list[float]] = setting(factory=lambda: [[0.5, 4.0], [4.0, 8.0], [8.0, 12.0],
                                                       [12.0, 16.0], [16.0, 30.0]])
    feature: str = setting("log_envelope")     # or log_power
    evoked_tokens: bool = setting(False, help="one more token feature after the band "
                                  "envelopes: the evoked waveform (phase kept)")
    evoked_band: list[float] = setting(factory=lambda: [0.5, 8.0])  # Hz: evoked tokens
    stride: int = setting(1)                   # timepoints averaged into one token (1: all 200)
    d_model: int = setting(16)
    n_heads: int = setting(4)
    ffn: int = setting(128)
    n_layers: int = setting(3)
    channel_embedding: bool = setting(True)
    mask_ratio: float = setting(0.4)
    epochs: int = setting(8)
    seqs_per_epoch: int | None = setting(9600)  # channel-sequences drawn per epoch; None = all
    batch_size: int = setting(64)              # small batches, many steps: a 20 k-parameter
    lr: float = setting(0.01)                  # model learns to fill gaps in ~1 k steps here
    weight_decay: float = setting(0.05)
    warmup_epochs: float = setting(0.5)
    n_val_subjects: int = setting(2)           # training participants kept out of pre-training
    eval_seqs: int = setting(4000, affects="nothing")  # masked sequences for the report
    probe_window: list[int] = setting(factory=lambda: [70, 130], affects="predictions")
    probe_C: float = setting(0.01, affects="predictions")
    device: str = setting("auto", affects="nothing")   # auto = cuda when present, else cpu
    num_threads: int | None = setting(None, affects="nothing")  # None = torch's default

    def validate(self, cfg: "Config") -> None:
        _check(0 < self.mask_ratio < 1, "mae.mask_ratio must be in (0, 1)")
        _check(self.d_model % self.n_heads == 0, f"mae.d_model ({self.d_model}) must be "
               f"divisible by mae.n_heads ({self.n_heads})")
        _check(self.feature in ("log_envelope", "log_power"),
               "mae.feature must be log_envelope or log_power")
        _check(all(len(b) == 2 and 0 < b[0] < b[1] for b in self.bands),
               f"mae.bands must be [low, high] pairs in Hz, got {self.bands}")
        _check_device(self.device, "mae.device")
        _check(self.stride >= 1, "mae.stride must be >= 1")
        _check(len(self.evoked_band) == 2 and 0 < self.evoked_band[0] < self.evoked_band[1],
               f"mae.evoked_band must be [low, high] in Hz, got {self.evoked_band}")

    def evoked(self) -> list | None:
        """The evoked tokens' band when they are on, else None."""
        return list(self.evoked_band) if self.evoked_tokens else None


# ------------------------------------------------------------------ variants
#: What a fusion variant's input is built from: ``experts`` (the fold's stage-03 experts'
#: per-token embeddings, frozen), ``experts_tuned`` (the same experts, trained end to end
#: with the fusion), ``mae`` (the stage-02 encoder's, frozen), ``raw`` (the band
#: envelopes themselves).
FUSION_INPUTS = ("experts", "experts_tuned", "mae", "raw")


@dataclass(frozen=True)
class ExpertVariant:
    """A stage-03 variant (:attr:`ExpertsConfig.VARIANTS`)."""

    init: str       # the experts' initialisation: "mae" (stage 02's encoder) or "random"
    training: str   # "fomaml" (first-order meta-learning) or "supervised" (same compute)
    # the band features of the participant's Euclidean-aligned waveform
    # (features.euclidean_align); the MAE initialising the experts keeps its own inputs
    align: bool = False


@dataclass(frozen=True)
class FusionVariant:
    """A stage-04 variant (:attr:`FusionConfig.VARIANTS`)."""

    inputs: str     # one of FUSION_INPUTS
    evoked: bool    # the evoked-waveform tokens beside the inputs' tokens
    loss: str       # "bce" (per trial and timepoint) or "pairwise" (within-participant AUC)
    # the evoked tokens and the raw envelopes from the participant's Euclidean-aligned
    # waveform (features.euclidean_align); pre-trained models keep the inputs they know
    align: bool = False


@dataclass
class ExpertsConfig:
    """Stage 03: 16 channel experts meta-learned with first-order MAML under LOPO."""

    #: variant name -> its initialisation and training (:class:`ExpertVariant`)
    VARIANTS: typing.ClassVar[dict[str, ExpertVariant]] = {
        # (a) the design: MAE init + meta-learning
        "mae_fomaml": ExpertVariant(init="mae", training="fomaml"),
        # (b) no meta-learning, same compute
        "mae_supervised": ExpertVariant(init="mae", training="supervised"),
        # (c) no pre-training
        "random_fomaml": ExpertVariant(init="random", training="fomaml"),
        # the design on Euclidean-aligned inputs (listed last: a variant's position seeds
        # its folds)
        "mae_fomaml_ea": ExpertVariant(init="mae", training="fomaml", align=True),
    }

    variants: list[str] = setting(factory=lambda: list(ExpertsConfig.VARIANTS),
                                  affects="nothing")
    tta_variants: list[str] = setting(factory=lambda: ["mae_fomaml"], affects="nothing",
                                      help="also reported after unsupervised test-time "
                                           "adaptation (MAE loss; MAE-initialised only)")
    shuffle_labels: bool = setting(False)  # leakage alarm: labels permuted within participant
    stride: int = setting(1)               # timepoints per token; a multiple of mae.stride
    meta_steps: int = setting(15)          # outer updates per fold
    tasks_per_step: int = setting(4)       # participants per meta-batch
    n_support: int = setting(16)           # trials per support split (half per class)
    n_query: int = setting(16)             # trials per query split (half per class)
    inner_steps: int = setting(3)
    inner_lr: float = setting(0.05)        # plain SGD in the inner loop
    outer_lr: float = setting(0.003)       # Adam on the meta-parameters (and supervised)
    time_loss_weight: float = setting(1.0)  # per-timepoint BCE weight next to the trial BCE
    weight_trials: int = setting(64, affects="predictions",
                                 help="trials per training participant for the weights of "
                                      "the 16-expert combination (fitted in the fold)")
    tta_steps: int = setting(5, affects="predictions")  # SGD steps of the MAE loss
    tta_trials: int = setting(32, affects="predictions")
    tta_lr: float = setting(0.01, affects="predictions")
    window: list[int] = setting(factory=lambda: [70, 130])  # trial-head window (samples)
    batching: str = setting("folded", affects="nothing",
                            help="folded | vmap | loop: the same function; speed measured "
                                 "by bench/bench_experts.py (training steps)")
    predict_batching: str = setting("loop", affects="nothing",
                                    help="the same choice for prediction without gradients")
    predict_batch: int = setting(256, affects="nothing")
    device: str = setting("auto", affects="nothing")
    num_threads: int | None = setting(None, affects="nothing")
    workers: int = setting(1, affects="nothing", help=WORKERS_HELP)

    @classmethod
    def variant_of(cls, result: str) -> str | None:
        """The variant of stage-03 result ``result`` (``experts_<variant>[_tta][_shuffled]``,
        :func:`sleepemo.experts.infer.output_names`); None if it names none."""
        name = result.removeprefix("experts_").removesuffix("_shuffled").removesuffix("_tta")
        return name if name in cls.VARIANTS else None

    def validate(self, cfg: "Config") -> None:
        known = self.VARIANTS
        bad = [v for v in self.variants if v not in known]
        _check(not bad, f"unknown experts variant(s) {bad}; known: {list(known)}")
        _check(self.workers >= 0, f"experts.workers must be >= 0, got {self.workers}")
        bad = [v for v in self.tta_variants if v not in self.variants or known[v].init != "mae"]
        _check(not bad, f"experts.tta_variants {bad}: test-time adaptation needs an "
               "MAE-initialised variant listed in experts.variants")
        _check(self.stride >= 1 and self.stride % cfg.mae.stride == 0,
               f"experts.stride ({self.stride}) must be a multiple of mae.stride "
               f"({cfg.mae.stride}) so that pre-trained positions pool")
        for key in ("batching", "predict_batching"):
            _check(getattr(self, key) in ("folded", "vmap", "loop"),
                   f"experts.{key} must be folded, vmap or loop")
        _check_device(self.device, "experts.device")
        for key in ("n_support", "n_query", "weight_trials"):
            _check(getattr(self, key) >= 2 and getattr(self, key) % 2 == 0,
                   f"experts.{key} must be an even number >= 2 (half per class)")
        for key in ("meta_steps", "tasks_per_step", "inner_steps", "tta_trials",
                    "predict_batch"):
            _check(getattr(self, key) >= 1, f"experts.{key} must be >= 1")
        _check(self.tta_steps >= 0, "experts.tta_steps must be >= 0")
        _check(len(self.window) == 2 and 0 <= self.window[0] < self.window[1],
               f"experts.window must be [start, stop) in samples, got {self.window}")


@dataclass
class FusionConfig:
    """Stage 04: spatiotemporal fusion of the channels' token sequences, under LOPO."""

    #: variant name -> its inputs, evoked tokens and loss (:class:`FusionVariant`)
    VARIANTS: typing.ClassVar[dict[str, FusionVariant]] = {
        # the design
        "experts": FusionVariant(inputs="experts", evoked=True, loss="bce"),
        # loss: within-participant AUC
        "experts_pairwise": FusionVariant(inputs="experts", evoked=True, loss="pairwise"),
        # without the evoked tokens
        "experts_noevoked": FusionVariant(inputs="experts", evoked=False, loss="bce"),
        # experts trained end to end
        "experts_finetune": FusionVariant(inputs="experts_tuned", evoked=True, loss="bce"),
        # no stage 03
        "mae": FusionVariant(inputs="mae", evoked=True, loss="bce"),
        # no pre-training at all
        "raw": FusionVariant(inputs="raw", evoked=True, loss="bce"),
        # Euclidean-aligned twins (listed last: a variant's position seeds its folds)
        "experts_pairwise_ea": FusionVariant(inputs="experts", evoked=True, loss="pairwise",
                                             align=True),
        "raw_ea": FusionVariant(inputs="raw", evoked=True, loss="bce", align=True),
    }
    INPUTS: typing.ClassVar[tuple[str, ...]] = FUSION_INPUTS

    variants: list[str] = setting(factory=lambda: list(FusionConfig.VARIANTS),
                                  affects="nothing")
    expert_result: str = setting("experts_mae_fomaml",
                                 help="the stage-03 result whose fold weights give the "
                                      "experts' embeddings (fold k uses fold k's experts)")
    evoked_band: list[float] = setting(factory=lambda: [0.5, 8.0])  # Hz
    stride: int = setting(8)          # samples per fusion token (a multiple of the inputs')
    d_model: int = setting(32)
    n_heads: int = setting(4)
    n_temporal: int = setting(3)      # dilated convolutions (dilation 1, 2, 4, ...)
    kernel: int = setting(3)
    dropout: float = setting(0.1)
    steps: int = setting(80)          # optimiser steps per fold (early-stopped)
    eval_every: int = setting(20)     # steps between checks on the inner participants
    subjects_per_batch: int = setting(4)
    trials_per_subject: int = setting(16)
    lr: float = setting(0.003)
    finetune_lr_scale: float = setting(0.1)  # experts' lr / fusion's lr (experts_finetune)
    weight_decay: float = setting(0.01)
    time_loss_weight: float = setting(1.0)
    n_inner_val: int = setting(2)     # training participants that early-stop the fold
    eval_trials: int = setting(256)   # per inner participant, for early stopping
    train_trials: int = setting(256)  # per training participant and fold, kept at random
    window: list[int] = setting(factory=lambda: [70, 130])  # trial-head window (samples)
    shuffle_labels: bool = setting(False)  # leakage alarm: labels permuted within participant
    predict_batch: int = setting(128, affects="nothing")  # trials per forward pass
    device: str = setting("auto", affects="nothing")
    num_threads: int | None = setting(None, affects="nothing")
    workers: int = setting(1, affects="nothing", help=WORKERS_HELP)

    def inputs(self) -> list[str]:
        """The inputs the chosen variants need, in a fixed order."""
        used = {self.VARIANTS[v].inputs for v in self.variants}
        return [i for i in self.INPUTS if i in used]

    def validate(self, cfg: "Config") -> None:
        bad = [v for v in self.variants if v not in self.VARIANTS]
        _check(not bad, f"unknown fusion variant(s) {bad}; known: {list(self.VARIANTS)}")
        _check(self.expert_result.startswith("experts_"),
               f"fusion.expert_result must name a stage-03 result (experts_<variant>), "
               f"got {self.expert_result!r}")
        variant = ExpertsConfig.variant_of(self.expert_result)
        _check(variant is None or not ExpertsConfig.VARIANTS[variant].align,
               f"fusion.expert_result {self.expert_result!r}: the fusion embeds the "
               "unaligned band features, which aligned experts were not trained on")
        for src, stride in (("mae.stride", cfg.mae.stride),
                            ("experts.stride", cfg.experts.stride)):
            _check(self.stride % stride == 0, f"fusion.stride ({self.stride}) must be a "
                   f"multiple of {src} ({stride}) so that its tokens pool")
        _check(self.d_model % self.n_heads == 0, f"fusion.d_model ({self.d_model}) must be "
               f"divisible by fusion.n_heads ({self.n_heads})")
        _check(self.workers >= 0, f"fusion.workers must be >= 0, got {self.workers}")
        _check(len(self.evoked_band) == 2 and 0 < self.evoked_band[0] < self.evoked_band[1],
               f"fusion.evoked_band must be [low, high] in Hz, got {self.evoked_band}")
        for key in ("steps", "eval_every", "subjects_per_batch", "trials_per_subject",
                    "n_temporal", "eval_trials", "train_trials", "predict_batch"):
            _check(getattr(self, key) >= 1, f"fusion.{key} must be >= 1")
        _check(self.kernel % 2 == 1, "fusion.kernel must be odd")
        _check(self.n_inner_val >= 1, "fusion.n_inner_val must be >= 1 (early stopping "
               "needs participants of its own)")
        _check(0 <= self.dropout < 1, "fusion.dropout must be in [0, 1)")
        _check(len(self.window) == 2 and 0 <= self.window[0] < self.window[1],
               f"fusion.window must be [start, stop) in samples, got {self.window}")
        _check_device(self.device, "fusion.device")


@dataclass
class RLConfig:
    """Stage 05: reinforcement-learning heads against their supervised twins, under LOPO."""

    HEADS: typing.ClassVar[tuple[str, ...]] = ("dqn", "sac")

    heads: list[str] = setting(factory=lambda: ["dqn", "sac"], affects="nothing")
    band: list[float] = setting(factory=lambda: [4.0, 30.0])  # Hz: the CSP's band-pass
    decim: int = setting(2)           # the band-passed waveform keeps every decim-th sample
    n_csp: int = setting(4)           # CSP components (csp_space: time axis kept)
    lstm: int = setting(128)
    dropout: float = setting(0.2)     # spatial dropout after the convolutions
    env_steps: int = setting(3000)    # DQN environment steps per fold
    learning_starts: int = setting(500)  # steps before the first gradient step
    buffer_size: int = setting(20000)
    batch_size: int = setting(64)
    lr: float = setting(0.001)
    gamma: float = setting(0.0, help="the next trial does not depend on the action: a "
                                     "contextual bandit; > 0 is allowed but has no meaning")
    target_update_interval: int = setting(250)
    eps_start: float = setting(1.0)
    eps_end: float = setting(0.05)
    eps_decay: float = setting(5.0)   # epsilon = end + (start - end) exp(-decay * progress)
    episode_len: int = setting(64)    # trials per episode
    n_inner_val: int = setting(2)     # training participants: temperature, lambda, curves
    # the SAC head (EEGDancer): prototypes, trajectories, reward
    sac_stride: int = setting(8)      # samples per decision token (a multiple of mae.stride)
    sac_inputs: str = setting("fusion", help="what the SAC's prototypes quantise: 'fusion' "
                              "(fold k's stage-04 fused per-token embeddings of variant "
                              "rl.sac_fusion; the MAE's when stage 04 has no such result) "
                              "or 'mae' (the stage-02 MAE's, all channels)")
    sac_fusion: str = setting("mae", help="the stage-04 variant whose fused tokens the SAC "
                              "reads (mae or raw: one input for every fold)")
    sac_dim: int = setting(32)        # code vector size
    codebook: int = setting(32)       # prototypes in the VQ codebook
    proto_steps: int = setting(300)   # masked-modelling steps (once per run, label-free)
    proto_batch: int = setting(64)
    proto_trials: int = setting(256)  # per participant, drawn at random, for the prototypes
    proto_mask: float = setting(0.3)  # fraction of tokens masked
    proto_lr: float = setting(0.003)
    sac_env_steps: int = setting(3000)
    sac_learning_starts: int = setting(500)
    sac_gamma: float = setting(0.9)   # the smoothness term ties a decision to the next
    # the smoothness term's weights, one chosen in each fold by the twin
    sac_lambdas: list[float] = setting(factory=lambda: [0.0, 0.5])
    eval_every: int = setting(250, affects="nothing")  # steps between learning-curve points
    shuffle_labels: bool = setting(False)  # leakage alarm: labels permuted within participant
    device: str = setting("cpu", affects="nothing")
    num_threads: int | None = setting(None, affects="nothing")
    workers: int = setting(1, affects="nothing", help=WORKERS_HELP)

    def validate(self, cfg: "Config") -> None:
        bad = [h for h in self.heads if h not in self.HEADS]
        _check(not bad, f"unknown rl head(s) {bad}; known: {list(self.HEADS)}")
        _check(len(self.band) == 2 and 0 < self.band[0] < self.band[1],
               f"rl.band must be [low, high] in Hz, got {self.band}")
        for key in ("decim", "n_csp", "lstm", "env_steps", "buffer_size", "batch_size",
                    "target_update_interval", "episode_len", "n_inner_val", "eval_every"):
            _check(getattr(self, key) >= 1, f"rl.{key} must be >= 1")
        _check(0 <= self.learning_starts < self.env_steps,
               "rl.learning_starts must be in [0, rl.env_steps)")
        for key in ("sac_dim", "codebook", "proto_steps", "proto_batch", "proto_trials",
                    "sac_env_steps"):
            _check(getattr(self, key) >= 1, f"rl.{key} must be >= 1")
        _check(0 <= self.sac_learning_starts < self.sac_env_steps,
               "rl.sac_learning_starts must be in [0, rl.sac_env_steps)")
        _check(0 < self.proto_mask < 1 and 0 <= self.sac_gamma < 1,
               "rl.proto_mask in (0, 1) and rl.sac_gamma in [0, 1)")
        _check(len(self.sac_lambdas) >= 1 and min(self.sac_lambdas) >= 0,
               f"rl.sac_lambdas must be one or more weights >= 0, got {self.sac_lambdas}")
        _check(self.sac_stride % cfg.mae.stride == 0, f"rl.sac_stride ({self.sac_stride}) "
               f"must be a multiple of mae.stride ({cfg.mae.stride}) so that tokens pool")
        _check(self.sac_inputs in ("fusion", "mae"),
               f"rl.sac_inputs must be fusion or mae, got {self.sac_inputs!r}")
        if self.sac_inputs == "fusion":
            variant = FusionConfig.VARIANTS.get(self.sac_fusion)
            _check(variant is not None and variant.inputs in ("mae", "raw"),
                   f"rl.sac_fusion must be a stage-04 variant with one input for every "
                   f"fold (mae or raw), got {self.sac_fusion!r}")
            _check(self.sac_stride % cfg.fusion.stride == 0,
                   f"rl.sac_stride ({self.sac_stride}) must be a multiple of fusion.stride "
                   f"({cfg.fusion.stride}) when rl.sac_inputs is fusion")
        _check(self.workers >= 0, f"rl.workers must be >= 0, got {self.workers}")
        _check(0 <= self.gamma <= 1 and 0 <= self.eps_end <= self.eps_start <= 1,
               "rl.gamma in [0, 1] and 0 <= rl.eps_end <= rl.eps_start <= 1")
        _check_device(self.device, "rl.device")


@dataclass
class EnsembleConfig:
    """Stage 06: an Optuna-tuned blend of every model's out-of-fold predictions, with a
    nested (outer leave-one-participant-out) score."""

    #: the search spaces of :class:`sleepemo.ensemble.blend.OptunaBlend`
    SEARCHES: typing.ClassVar[tuple[str, ...]] = ("compact", "full")

    search: str = setting("compact", help="compact: norm, how many of the best candidates "
                          "(equal weights), one smoothing and one broadcast for all, then "
                          "the simplest blend within one standard error of the best trial; "
                          "full: per-model use, weight, smoothing and broadcast, the best "
                          "trial")
    n_trials: int = setting(60)       # finished trials per study (one per fold + 1 final)
    top_k: int = setting(6)           # candidates kept per study, best alone first
    # Gaussian smoothing sigmas (samples) a study chooses from
    smooth_choices: list[int] = setting(factory=lambda: [0, 2, 5, 10])
    exclude: list[str] = setting(factory=list, help="results never blended (labels as "
                                 "in lopo.csv); diagnostic results are always left out")
    storage: str | None = setting(None, affects="nothing",
                                  help="SQLAlchemy URL of the studies' database (e.g. "
                                  "postgresql://user@host/db), or journal (one Optuna journal "
                                  "file per study, for a run folder on NFS) or "
                                  "journal:///path/file.journal; default one SQLite file per "
                                  "study under <out>/06_ensemble/studies/")
    workers: int = setting(1, affects="nothing",
                           help="processes running the nested studies (one per fold), one each "
                           "(results are the same for any number)")
    study_workers: int = setting(1, affects="nothing",
                                 help="worker processes on one study (the final one, and "
                                 "the nested ones when ensemble.workers is 1); > 1 is "
                                 "faster but trial order, hence the result, varies")
    shuffle_labels: bool = setting(False)  # leakage alarm: labels permuted within participant

    def validate(self, cfg: "Config") -> None:
        _check(self.n_trials >= 2, f"ensemble.n_trials must be >= 2, got {self.n_trials}")
        _check(self.top_k >= 1, f"ensemble.top_k must be >= 1, got {self.top_k}")
        _check(self.search in self.SEARCHES,
               f"ensemble.search must be one of {self.SEARCHES}, not {self.search!r}")
        _check(len(self.smooth_choices) >= 1 and min(self.smooth_choices) >= 0,
               f"ensemble.smooth_choices must be sigmas >= 0, got {self.smooth_choices}")
        _check(self.workers >= 0 and self.study_workers >= 0,
               "ensemble.workers and ensemble.study_workers must be >= 0")


@dataclass
class Config:
    profile: str = "quick"
    seed: int = 0
    #: where fold-parallel stages (01, 03-06) and study workers run (sleepemo.pipeline.executor):
    #: ``local`` worker processes, or ``ray`` actors and tasks (RAY_ADDRESS's cluster, else
    #: a local one); the results are the same either way
    executor: str = "local"
    #: the share of a GPU each Ray actor of a GPU stage asks for (0.5: two folds per GPU)
    gpu_fraction: float = 1.0
    data: DataConfig = field(default_factory=DataConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def sections(self) -> dict:
        """Section name -> section object (every dataclass-valued field)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if dataclasses.is_dataclass(getattr(self, f.name))}

    def validate(self) -> "Config":
        _check(self.profile in PROFILES,
               f"profile must be one of {PROFILES}, not {self.profile!r}")
        _check(self.executor in EXECUTORS,
               f"executor must be one of {EXECUTORS}, not {self.executor!r}")
        _check(0 < self.gpu_fraction <= 1,
               f"gpu_fraction must be in (0, 1], not {self.gpu_fraction!r}")
        for section in self.sections().values():
            section.validate(self)
        return self


class _Sources:
    """Where each value of a config came from: the profile file, or the ``--set`` that
    wrote it (the latest override of the key or of a section holding it)."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.sets: list[tuple[str, str]] = []  # (dotted key, the override as given)

    def of(self, key: str) -> str:
        for k, item in reversed(self.sets):
            if key == k or key.startswith(k + ".") or k.startswith(key + "."):
                return f"--set {item}"
        if self.path is None:
            return ""
        try:
            return str(self.path.resolve().relative_to(REPO))
        except ValueError:
            return str(self.path)


_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"),
          bool: ("true or false", "true/false values"), str: ("a string", "strings"),
          type(None): ("null", "nulls")}


def _expected(tp, plural: bool = False) -> str:
    """``tp`` (a field annotation) in words: ``a list of numbers``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _NAMES:
        return _NAMES[tp][plural]
    if tp is Any:
        return "values" if plural else "any value"
    if origin is typing.Literal:
        return ("values among " if plural else "one of ") + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(a, plural) for a in args)
    if tp in (list, tuple) or origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            what = f"{len(args)} items ({', '.join(_expected(a) for a in args)})"
        else:
            what = _expected(args[0], True) if args else ""
        return ("lists" if plural else "a list") + (f" of {what}" if what else "")
    if tp is dict or origin is dict or dataclasses.is_dataclass(tp):
        what = f" of {_expected(args[0], True)} to {_expected(args[1], True)}" if args else ""
        return ("mappings" if plural else "a mapping") + what
    name = getattr(tp, "__name__", str(tp))
    return f"{name}s" if plural else f"a {name}"


def _fits(value: Any, tp) -> bool:
    """Whether ``value`` (as YAML reads it) has the type of annotation ``tp``. Exact: a
    bool is no number, a float no integer; a number (float) may be an integer."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if tp in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_fits, value, args))
        return not args or all(_fits(v, args[0]) for v in value)
    if tp is dict or origin is dict:
        return isinstance(value, dict) and (not args or all(
            _fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items()))
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation this checker does not know: left to validate()


def _type_error(key: str, value: Any, tp, sources: _Sources | None) -> ConfigError:
    source = sources.of(key) if sources else ""
    return ConfigError(f"{key or 'the config'} = {value!r}: expected {_expected(tp)}"
                       + (f" (from {source})" if source else ""))


def _build(cls, values: dict, where: str, sources: _Sources | None = None):
    """Instantiate a (nested) dataclass from a dict, rejecting unknown keys and values
    that do not have their field's annotated type (:func:`_fits`)."""
    if not isinstance(values, dict):
        raise _type_error(where, values, cls, sources)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known, key=str)
    if unknown:
        froms = sorted({sources.of(f"{where}.{k}".strip(".")) for k in unknown} - {""}
                       if sources else ())
        raise ConfigError(f"unknown config key(s) {unknown} in '{where or 'top level'}'; "
                          f"known: {sorted(known)}"
                          + (f" (from {'; '.join(froms)})" if froms else ""))
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        sub, key = hints[name], f"{where}.{name}".strip(".")
        if dataclasses.is_dataclass(sub):
            kwargs[name] = _build(sub, value, key, sources)
        elif not _fits(value, sub):
            raise _type_error(key, value, sub, sources)
        else:
            kwargs[name] = value
    return cls(**kwargs)


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's floats: ``1e-3`` is a number (PyYAML reads a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _yaml(text: str, what: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{what}: not valid YAML ({problem}{where})") from None


def _set(d: dict, dotted: str, value: Any, source: str = "") -> None:
    keys = dotted.split(".")
    for i, k in enumerate(keys[:-1]):
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"{'.'.join(keys[:i + 1])} = {d!r} is a value, not a section "
                              f"with a key {keys[i + 1]!r}"
                              + (f" (from {source})" if source else ""))
    d[keys[-1]] = value


def load_config(profile: str = "quick", overrides: list[str] | None = None,
                path: str | Path | None = None) -> Config:
    """Load profile ``<profile>.yaml`` of :data:`PROFILES_DIR` (or ``path``) and apply
    ``key=value`` overrides.

    A value of the wrong type, in the file or an override, is a :class:`ConfigError`
    naming the key, the value, the expected type and where the value came from."""
    path = Path(path) if path else PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (profiles: {PROFILES})")
    sources = _Sources(path)
    values = _yaml(path.read_text(), str(path))
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise _type_error("", values, Config, sources)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        _set(values, key, _yaml(raw, f"--set {item}"), f"--set {item}")
        sources.sets.append((key, item))
    return _build(Config, values, "", sources).validate()


def save_config(cfg: Config, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
