"""Where the data lives: given, configured, mounted in a Kaggle kernel, real in
``input/<slug>/``, downloaded with Kaggle credentials, or the built-in synthetic data."""
from __future__ import annotations

from pathlib import Path

from sleepemo.config import Config
from sleepemo.data import synth
from sleepemo.data.download import find_data_root, get_data


def synthetic_dir(cfg: Config) -> Path:
    """``input/synthetic[-<design>][-scale<s>-seed<n>]``; the default theta design has no
    design part (its folders keep their names)."""
    d = cfg.data
    name = "synthetic" if d.synthetic_design == "theta" else f"synthetic-{d.synthetic_design}"
    if (d.synthetic_scale, d.synthetic_seed) != (1.0, 0):
        name += f"-scale{d.synthetic_scale:g}-seed{d.synthetic_seed}"
    return Path(d.input_dir) / name


def resolve_data_dir(cfg: Config, data_dir: str | None = None, log=print) -> Path:
    """The data folder, first found of: given, configured, mounted in a Kaggle kernel,
    real in ``input/<slug>/``, downloaded with Kaggle credentials, built-in synthetic."""
    if data_dir or cfg.data.dir:
        return Path(data_dir or cfg.data.dir)
    kernel = Path(cfg.data.kaggle_input) / cfg.data.slug
    if kernel.is_dir() and (root := find_data_root(kernel)) is not None:
        log(f"using the competition data mounted at {root}")
        return root

    def make_synthetic() -> Path:
        out = synthetic_dir(cfg)
        return synth.generate(out, synth.SynthConfig(seed=cfg.data.synthetic_seed,
                                                     scale=cfg.data.synthetic_scale,
                                                     design=cfg.data.synthetic_design))

    return Path(get_data(cfg.data.input_dir, cfg.data.slug, synthetic=make_synthetic,
                         log=log))
