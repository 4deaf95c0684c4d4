"""Typed run configuration: one YAML profile per scale (``configs/<profile>.yaml``).

A profile sets the data scale and what each stage runs; ``--set key.sub=value`` overrides
single values from the command line (values are parsed as YAML). The resolved config is
saved beside the artefacts it produced.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import COMPETITION_SLUG

REPO = Path(__file__).resolve().parents[2]
PROFILES_DIR = REPO / "configs"
PROFILES = ("smoke", "quick", "full")


class ConfigError(ValueError):
    """A profile or override is invalid."""


@dataclass
class DataConfig:
    dir: str | None = None            # a data folder; None: found, downloaded or synthetic
    input_dir: str = "input"
    kaggle_input: str = "/kaggle/input"  # where a Kaggle kernel mounts competition data
    slug: str = COMPETITION_SLUG
    synthetic_scale: float = 1.0
    synthetic_seed: int = 0


@dataclass
class BaselinesConfig:
    models: list[str] = field(default_factory=lambda: [
        "constant", "shuffled", "starter", "second_place", "riemann"])
    params: dict[str, dict] = field(default_factory=dict)


@dataclass
class MAEConfig:
    """Stage 02: band features and masked-autoencoder pre-training (``models/mae.py``)."""
    bands: list = field(default_factory=lambda: [[0.5, 4.0], [4.0, 8.0], [8.0, 12.0],
                                                 [12.0, 16.0], [16.0, 30.0]])
    feature: str = "log_envelope"      # or log_power
    stride: int = 1                    # timepoints averaged into one token (1: all 200)
    d_model: int = 16
    n_heads: int = 4
    ffn: int = 128
    n_layers: int = 3
    channel_embedding: bool = True
    mask_ratio: float = 0.4
    epochs: int = 8
    seqs_per_epoch: int | None = 9600   # channel-sequences drawn per epoch; None = all
    batch_size: int = 64               # small batches, many steps: a 20 k-parameter model
    lr: float = 0.01                   # learns to fill gaps in ~1 k steps at this rate
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    n_val_subjects: int = 2            # training participants kept out of pre-training
    eval_seqs: int = 4000              # masked sequences for the reconstruction report
    probe_window: list = field(default_factory=lambda: [70, 130])
    probe_C: float = 0.01
    device: str = "auto"               # auto = cuda when present, else cpu
    num_threads: int | None = None     # torch CPU threads; None = torch's default


EXPERT_VARIANTS = {  # name -> (initialisation, training)
    "mae_fomaml": ("mae", "fomaml"),          # (a) the design: MAE init + meta-learning
    "mae_supervised": ("mae", "supervised"),  # (b) no meta-learning, same compute
    "random_fomaml": ("random", "fomaml"),    # (c) no pre-training
}


@dataclass
class ExpertsConfig:
    """Stage 03: 16 channel experts meta-learned with first-order MAML under LOPO."""
    variants: list[str] = field(default_factory=lambda: list(EXPERT_VARIANTS))
    tta_variants: list[str] = field(default_factory=lambda: ["mae_fomaml"])
                                       # also reported after unsupervised test-time
                                       # adaptation (MAE loss; MAE-initialised only)
    shuffle_labels: bool = False       # leakage alarm: labels permuted within participant
    stride: int = 1                    # timepoints per token; a multiple of mae.stride
    meta_steps: int = 15               # outer updates per fold
    tasks_per_step: int = 4            # participants per meta-batch
    n_support: int = 16                # trials per support split (half per class)
    n_query: int = 16                  # trials per query split (half per class)
    inner_steps: int = 3
    inner_lr: float = 0.05             # plain SGD in the inner loop
    outer_lr: float = 0.003            # Adam on the meta-parameters (and for supervised)
    time_loss_weight: float = 1.0      # per-timepoint BCE weight next to the trial BCE
    weight_trials: int = 64            # trials per training participant for the weights
                                       # of the 16-expert combination (fitted in fold)
    tta_steps: int = 5                 # SGD steps of the MAE loss on a participant's trials
    tta_trials: int = 32
    tta_lr: float = 0.01
    window: list = field(default_factory=lambda: [70, 130])  # trial-head window (samples)
    batching: str = "folded"           # folded | vmap | loop: the same function; speed
    predict_batching: str = "loop"     # measured by bench/bench_experts.py (training
                                       # steps / prediction without gradients)
    predict_batch: int = 256
    device: str = "auto"
    num_threads: int | None = None


@dataclass
class Config:
    profile: str = "quick"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    """Instantiate a (nested) dataclass from a dict, rejecting unknown keys."""
    if not isinstance(values, dict):
        raise ConfigError(f"config '{where}' must be a mapping, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown} in '{where or 'top level'}'; "
                         f"known: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        ftype = known[name].type
        sub = {"DataConfig": DataConfig, "BaselinesConfig": BaselinesConfig,
               "MAEConfig": MAEConfig, "ExpertsConfig": ExpertsConfig}.get(ftype)
        kwargs[name] = _build(sub, value, f"{where}.{name}".strip(".")) if sub else value
    return cls(**kwargs)


def _set(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def validate(cfg: Config) -> Config:
    from .models import REGISTRY

    if cfg.profile not in PROFILES:
        raise ConfigError(f"profile must be one of {PROFILES}, not {cfg.profile!r}")
    bad = [m for m in cfg.baselines.models if m not in REGISTRY]
    if bad:
        raise ConfigError(f"unknown baseline model(s) {bad}; registered: {sorted(REGISTRY)}")
    if not 0 < float(cfg.data.synthetic_scale) <= 10:
        raise ConfigError("data.synthetic_scale must be in (0, 10]")
    m = cfg.mae
    if not 0 < m.mask_ratio < 1:
        raise ConfigError("mae.mask_ratio must be in (0, 1)")
    if m.d_model % m.n_heads:
        raise ConfigError(f"mae.d_model ({m.d_model}) must be divisible by mae.n_heads "
                          f"({m.n_heads})")
    if m.feature not in ("log_envelope", "log_power"):
        raise ConfigError("mae.feature must be log_envelope or log_power")
    if any(len(b) != 2 or not 0 < b[0] < b[1] for b in m.bands):
        raise ConfigError(f"mae.bands must be [low, high] pairs in Hz, got {m.bands}")
    if m.device not in ("auto", "cpu", "cuda"):
        raise ConfigError("mae.device must be auto, cpu or cuda")
    if m.stride < 1 or cfg.experts.stride < 1 or cfg.experts.stride % m.stride:
        raise ConfigError(f"experts.stride ({cfg.experts.stride}) must be a multiple of "
                          f"mae.stride ({m.stride}) so that pre-trained positions pool")
    e = cfg.experts
    bad = [v for v in e.variants if v not in EXPERT_VARIANTS]
    if bad:
        raise ConfigError(f"unknown experts variant(s) {bad}; known: {list(EXPERT_VARIANTS)}")
    bad = [v for v in e.tta_variants if v not in e.variants or EXPERT_VARIANTS[v][0] != "mae"]
    if bad:
        raise ConfigError(f"experts.tta_variants {bad}: test-time adaptation needs an "
                          "MAE-initialised variant listed in experts.variants")
    for key in ("batching", "predict_batching"):
        if getattr(e, key) not in ("folded", "vmap", "loop"):
            raise ConfigError(f"experts.{key} must be folded, vmap or loop")
    if e.device not in ("auto", "cpu", "cuda"):
        raise ConfigError("experts.device must be auto, cpu or cuda")
    for key in ("n_support", "n_query", "weight_trials"):
        if getattr(e, key) < 2 or getattr(e, key) % 2:
            raise ConfigError(f"experts.{key} must be an even number >= 2 (half per class)")
    for key in ("meta_steps", "tasks_per_step", "inner_steps", "tta_trials",
                "predict_batch"):
        if getattr(e, key) < 1:
            raise ConfigError(f"experts.{key} must be >= 1")
    if e.tta_steps < 0:
        raise ConfigError("experts.tta_steps must be >= 0")
    if len(e.window) != 2 or not 0 <= e.window[0] < e.window[1]:
        raise ConfigError(f"experts.window must be [start, stop) in samples, got {e.window}")
    return cfg


def load_config(profile: str = "quick", overrides: list[str] | None = None,
                path: str | Path | None = None) -> Config:
    """Load ``configs/<profile>.yaml`` (or ``path``) and apply ``key=value`` overrides."""
    path = Path(path) if path else PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (profiles: {PROFILES})")
    values = yaml.safe_load(path.read_text()) or {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        _set(values, key.strip(), yaml.safe_load(raw))
    return validate(_build(Config, values, ""))


def save_config(cfg: Config, path: str | Path) -> None:
    from .io import write_text

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
