"""Config profiles: typed, validated, overridable."""
from __future__ import annotations

import typing
from dataclasses import dataclass, field

import pytest

from sleepemo.config import (PROFILES, PROFILES_DIR, Config, ConfigError, load_config,
                             setting)
from sleepemo.baselines import REGISTRY, make_model


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_load(profile):
    cfg = load_config(profile)
    assert cfg.profile == profile
    assert all(cfg.baselines.registry_key(m) in REGISTRY for m in cfg.baselines.models)
    # every named variant builds its registered model with its parameters
    for m in cfg.baselines.models:
        make_model(cfg.baselines.registry_key(m), **cfg.baselines.model_params(m))


def test_a_named_variant_runs_a_registered_model_with_its_parameters():
    b = load_config("smoke", ["baselines.models=[riemann, riemann_ea]"]).baselines
    assert b.registry_key("riemann_ea") == "riemann" and b.registry_key("riemann") == "riemann"
    assert b.model_params("riemann_ea") == {"align": "euclidean"}
    with pytest.raises(ConfigError, match=r"unknown baseline model\(s\) \['riemann_xx'\]"):
        load_config("smoke", ["baselines.models=[riemann_xx]"])
    with pytest.raises(ConfigError, match=r"unknown baseline model\(s\) \['v'\]"):
        load_config("smoke", ["baselines.models=[v]", "baselines.params={v: {model: nope}}"])


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
    ("experts.tta_variants=[random_fomaml]", "tta_variants"),
    ("experts.variants=[maml2]", "unknown experts variant"),
    ("experts.variants=[mae_fomaml_ea2]", "unknown experts variant"),
    ("experts.tta_variants=[mae_fomaml_ea]", "tta_variants"),  # not in the variants
    ("fusion.expert_result=experts_mae_fomaml_ea", "unaligned band features"),
    ("experts.n_support=7", "even"),
    ("fusion.variants=[nope]", "unknown fusion variant"),
    ("fusion.stride=6", "multiple of"),
    ("fusion.n_inner_val=0", "n_inner_val"),
    ("executor=dask", "executor must be one of"),
])
def test_bad_config_is_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("smoke", [override])


def test_the_aligned_experts_variant_is_one_set_away_and_in_the_full_profile():
    """``mae_fomaml_ea`` (stage 03 on Euclidean-aligned inputs) is known, listed last (a
    variant's position seeds its folds), off in the quick and smoke profiles (budget) and
    on, with its test-time adaptation, in the full profile."""
    from sleepemo.config import ExpertsConfig

    assert list(ExpertsConfig.VARIANTS)[-1] == "mae_fomaml_ea"
    assert [v for v, spec in ExpertsConfig.VARIANTS.items() if spec.align] == ["mae_fomaml_ea"]
    for profile in ("quick", "smoke"):
        assert "mae_fomaml_ea" not in load_config(profile).experts.variants
        cfg = load_config(profile, ["experts.variants=[mae_fomaml, mae_fomaml_ea]",
                                    "experts.tta_variants=[mae_fomaml_ea]"])
        assert cfg.experts.variants == ["mae_fomaml", "mae_fomaml_ea"]
    full = load_config("full").experts
    assert "mae_fomaml_ea" in full.variants and "mae_fomaml_ea" in full.tta_variants
    assert ExpertsConfig.variant_of("experts_mae_fomaml_ea_tta_shuffled") == "mae_fomaml_ea"
    assert ExpertsConfig.variant_of("experts_nope") is None


def test_unknown_model_name():
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        make_model("nope")


def test_data_folder_resolution_order(tmp_path, make_folder):
    from sleepemo.data.location import resolve_data_dir

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


# ---------------------------------------------------------------- value types
@pytest.mark.parametrize("override,key,value,expected", [
    ("seed=abc", "seed", "abc", "an integer"),
    ("mae.epochs=abc", "mae.epochs", "abc", "an integer"),
    ("mae.epochs=1.5", "mae.epochs", 1.5, "an integer"),
    ("experts.workers=abc", "experts.workers", "abc", "an integer"),
    ("fusion.steps=true", "fusion.steps", True, "an integer"),
    ("mae.channel_embedding=maybe", "mae.channel_embedding", "maybe", "true or false"),
    ("rl.shuffle_labels=1", "rl.shuffle_labels", 1, "true or false"),
    ("experts.inner_lr=fast", "experts.inner_lr", "fast", "a number"),
    ("mae.seqs_per_epoch=all", "mae.seqs_per_epoch", "all", "an integer or null"),
    ("ensemble.storage=5", "ensemble.storage", 5, "a string or null"),
    ("data.synthetic_design=[theta]", "data.synthetic_design", ["theta"], "a string"),
    ("baselines.models=starter", "baselines.models", "starter", "a list of strings"),
    ("mae.bands=[[1, x]]", "mae.bands", [[1, "x"]], "a list of lists of numbers"),
    ("fusion.window=[70.5, 130]", "fusion.window", [70.5, 130], "a list of integers"),
    ("baselines.params={starter: 3}", "baselines.params", {"starter": 3},
     "a mapping of strings to mappings"),
    ("rl=3", "rl", 3, "a mapping"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_key_value_and_type(
        override, key, value, expected):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", [override])
    assert str(e.value) == f"{key} = {value!r}: expected {expected} (from --set {override})"


def test_a_profile_file_with_a_wrong_type_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("profile: smoke\nmae:\n  epochs: abc\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(path=path)
    assert str(e.value) == f"mae.epochs = 'abc': expected an integer (from {path})"
    # a --set of that key replaces the file's value; of another key, the file is blamed
    assert load_config(path=path, overrides=["mae.epochs=3"]).mae.epochs == 3
    with pytest.raises(ConfigError, match=f"mae.epochs = 'abc'.*from {path}"):
        load_config(path=path, overrides=["mae.lr=0.2"])
    # a whole section given by --set is blamed for what is inside it
    with pytest.raises(ConfigError, match=r"mae.lr = 'x': expected a number \(from --set "
                                          r"mae=\{lr: x\}\)"):
        load_config("smoke", ["mae={lr: x}"])


def test_a_shipped_profile_is_named_relative_to_the_repository(tmp_path):
    from sleepemo.config import _Sources

    assert _Sources(PROFILES_DIR / "smoke.yaml").of("seed") == "src/sleepemo/profiles/smoke.yaml"


@pytest.mark.parametrize("override,message", [
    ("mae.epochs=[1", r"^--set mae.epochs=\[1: not valid YAML \(expected ',' or ']'"),
    ("seed.x=1",
     r"^seed = 0 is a value, not a section with a key 'x' \(from --set seed.x=1\)$"),
    ("baselines.foo=1", r"\(from --set baselines.foo=1\)$"),
])
def test_other_malformed_overrides_are_one_line_config_errors(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config("smoke", [override])
    assert "\n" not in str(e.value)


def test_a_malformed_profile_file_is_a_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: [1\n")
    with pytest.raises(ConfigError, match=f"^{path}: not valid YAML .* at line 2"):
        load_config(path=path)
    path.write_text("- seed\n")
    with pytest.raises(ConfigError, match=r"^the config = \['seed'\]: expected a mapping"):
        load_config(path=path)


def test_well_typed_values_load_unchanged():
    cfg = load_config("smoke", ["mae.lr=1", "mae.seqs_per_epoch=null", "experts.outer_lr=1e-3",
                                "mae.channel_embedding=false", "rl.sac_lambdas=[0, 0.5]",
                                "ensemble.storage=sqlite:///x.db"])
    assert cfg.mae.lr == 1 and type(cfg.mae.lr) is int  # a number may be an integer
    assert cfg.mae.seqs_per_epoch is None and cfg.mae.channel_embedding is False
    assert cfg.experts.outer_lr == 0.001  # YAML 1.2 float, a string in PyYAML's YAML 1.1
    assert cfg.rl.sac_lambdas == [0, 0.5] and cfg.ensemble.storage == "sqlite:///x.db"


def test_every_default_has_its_annotated_type():
    """The type check covers every field of every section: the defaults pass it."""
    import dataclasses
    import typing

    from sleepemo.config import _fits

    cfg = Config()
    for section in [cfg, *cfg.sections().values()]:
        hints = typing.get_type_hints(type(section))
        for f in dataclasses.fields(section):
            if not dataclasses.is_dataclass(hints[f.name]):
                assert _fits(getattr(section, f.name), hints[f.name]), \
                    f"{type(section).__name__}.{f.name}: {hints[f.name]}"


@dataclass
class TypedSection:
    mode: typing.Literal["fast", "exact"] = "fast"
    pair: tuple[int, float] = (1, 2.0)
    sizes: tuple[int, ...] = ()
    anything: typing.Any = None

    def validate(self, cfg):
        pass


@dataclass
class TypedConfig(Config):
    typed: TypedSection = field(default_factory=TypedSection)


@pytest.mark.parametrize("values,message", [
    ({"mode": "slow"}, "typed.mode = 'slow': expected one of fast, exact"),
    ({"mode": True}, "typed.mode = True: expected one of fast, exact"),
    ({"pair": [1, 2, 3]}, "typed.pair = [1, 2, 3]: expected a list of 2 items (an integer, "
                          "a number)"),
    ({"pair": [1.5, 2]}, "typed.pair = [1.5, 2]: expected a list of 2 items (an integer, "
                         "a number)"),
    ({"sizes": [1, "x"]}, "typed.sizes = [1, 'x']: expected a list of integers"),
])
def test_literal_and_tuple_annotations_are_checked(values, message):
    from sleepemo.config import _build

    with pytest.raises(ConfigError) as e:
        _build(TypedConfig, {"typed": values}, "")
    assert str(e.value) == message
    ok = _build(TypedConfig, {"typed": {"mode": "exact", "pair": [3, 4], "sizes": [5],
                                        "anything": {"x": [1]}}}, "")
    assert ok.typed.mode == "exact" and ok.typed.pair == [3, 4]


@pytest.mark.parametrize("args", [
    ["src/00_folds.py", "--profile", "smoke"],
    ["-m", "sleepemo", "data", "--profile", "smoke"],
])
def test_entry_points_print_a_config_error_as_one_line_and_exit_2(tmp_path, args):
    import os
    import subprocess
    import sys

    from sleepemo.config import REPO

    if args[0].startswith("src/"):
        args = [str(REPO / args[0]), *args[1:], "--data-dir", str(tmp_path / "data"),
                "--out", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, *args, "--set", "seed=abc"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO / "src"),
                                   OMP_NUM_THREADS="1", MPLBACKEND="Agg"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "config error: seed = 'abc': expected an integer (from --set seed=abc)"]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out").exists()
