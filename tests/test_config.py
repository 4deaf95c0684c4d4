"""Config profiles: typed, validated, overridable."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sleepemo.config import PROFILES, Config, ConfigError, load_config, setting
from sleepemo.baselines import REGISTRY, make_model


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_load(profile):
    cfg = load_config(profile)
    assert cfg.profile == profile
    assert all(m in REGISTRY for m in cfg.baselines.models)


def test_overrides_are_parsed_as_yaml():
    cfg = load_config("smoke", ["seed=7", "baselines.models=[starter, riemann]",
                                "baselines.params={second_place: {n_keep: 10}}"])
    assert cfg.seed == 7 and cfg.baselines.models == ["starter", "riemann"]
    assert cfg.baselines.params["second_place"]["n_keep"] == 10


@pytest.mark.parametrize("override,message", [
    ("baselines.foo=1", r"unknown config key\(s\) \['foo'\] in 'baselines'"),
    ("bar=1", r"unknown config key\(s\) \['bar'\] in 'top level'"),
    ("baselines.models=[nope]", r"unknown baseline model\(s\) \['nope'\]"),
    ("data.synthetic_scale=0", "synthetic_scale must be in"),
    ("seed", "is not key=value"),
])
def test_bad_config_is_refused(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("smoke", [override])


def test_unknown_model_name():
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        make_model("nope")


def test_data_folder_resolution_order(tmp_path, make_folder):
    from sleepemo.cli import resolve_data_dir

    cfg = load_config("smoke", [f"data.kaggle_input={tmp_path / 'kaggle'}",
                                f"data.input_dir={tmp_path / 'input'}"])
    logs = []
    # a data folder given on the command line wins
    assert resolve_data_dir(cfg, "given", log=logs.append) == type(tmp_path)("given")
    # a Kaggle kernel's mounted competition data comes next
    mounted = make_folder(root=tmp_path / "kaggle" / cfg.data.slug / "extra")
    assert resolve_data_dir(cfg, log=logs.append) == mounted
    assert logs[-1] == f"using the competition data mounted at {mounted}"


def test_every_stage_field_declares_what_it_affects():
    import dataclasses

    from sleepemo.config import AFFECTS, ExpertsConfig, MAEConfig, fields_affecting

    for section in (MAEConfig(), ExpertsConfig()):
        for f in dataclasses.fields(section):
            assert f.metadata.get("affects") in AFFECTS, f"{type(section).__name__}.{f.name}"
    weights = fields_affecting(ExpertsConfig(), "weights")
    assert {"meta_steps", "inner_lr", "shuffle_labels", "window"} <= set(weights)
    assert set(fields_affecting(ExpertsConfig(), "predictions")) == {
        "tta_steps", "tta_trials", "tta_lr", "weight_trials"}
    assert set(fields_affecting(MAEConfig(), "predictions", "nothing")) == {
        "eval_seqs", "probe_window", "probe_C", "device", "num_threads"}
    with pytest.raises(ValueError, match="unknown kinds"):
        fields_affecting(MAEConfig(), "speed")


@dataclass
class ToySection:
    """A new stage's section: one dataclass with its own validation."""
    n_layers: int = setting(2)
    batch: int = setting(8, affects="nothing")

    def validate(self, cfg):
        if self.n_layers < 1:
            raise ConfigError("toy.n_layers must be >= 1")


@dataclass
class ExtendedConfig(Config):
    toy: ToySection = field(default_factory=ToySection)


def test_a_new_section_is_one_dataclass_and_one_field():
    from sleepemo.config import _build, fields_affecting

    cfg = _build(ExtendedConfig, {"toy": {"n_layers": 4}}, "").validate()
    assert cfg.toy.n_layers == 4 and "toy" in cfg.sections()
    assert fields_affecting(cfg.toy, "weights") == {"n_layers": 4}
    with pytest.raises(ConfigError, match="toy.n_layers must be >= 1"):
        _build(ExtendedConfig, {"toy": {"n_layers": 0}}, "").validate()
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['depth'\] in 'toy'"):
        _build(ExtendedConfig, {"toy": {"depth": 1}}, "")
