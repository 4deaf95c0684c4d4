"""Config profiles: typed, validated, overridable."""
from __future__ import annotations

import pytest

from sleepemo.config import PROFILES, load_config
from sleepemo.models import REGISTRY, make_model


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
