"""The package's layout by role (docs/architecture.md): layers that only import downwards,
no import cycles, imports at the top of each module, stage names that agree, thin
documented stage scripts and one place for the competition's file-name rules."""
from __future__ import annotations

import ast
import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from sleepemo.pipeline.runner import select
from sleepemo.pipeline.stage import STAGES, spec

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "sleepemo"

#: The layers, lowest first. A module may import its own layer and the ones below it,
#: never one above. Within a layer, the import graph has no cycles (checked below).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("sleepemo", "sleepemo.io", "sleepemo.runlog", "sleepemo.errors", "sleepemo.config",
     "sleepemo.metric", "sleepemo.progress", "sleepemo.features"),
    ("sleepemo.data",),
    ("sleepemo.pipeline",),
    ("sleepemo.predict.base",),
    ("sleepemo.baselines",),
    ("sleepemo.mae",),
    ("sleepemo.experts",),
    ("sleepemo.fusion",),
    ("sleepemo.rl",),
    ("sleepemo.ensemble",),
    ("sleepemo.predict",),
    ("sleepemo.kaggle",),
    ("sleepemo.cli", "sleepemo.__main__"),
)

#: Imports of the package's own modules that stay inside a function, each with its reason.
#: Nothing else may: a module's header says what it uses.
DEFERRED = {
    ("sleepemo.config", "sleepemo.baselines"):
        "checks baseline names against the model registry, a layer above the config",
    **{("sleepemo.cli", m): "a command imports what it runs when it runs: `sleepemo --help`"
       " needs only the standard library" for m in (
           "sleepemo", "sleepemo.config", "sleepemo.errors", "sleepemo.data.location",
           "sleepemo.pipeline.runner", "sleepemo.pipeline.plan", "sleepemo.pipeline.stage",
           "sleepemo.predict.cli", "sleepemo.kaggle.submit", "sleepemo.kaggle.bundle",
           "sleepemo.kaggle.kernel")},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO / "src").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    """Index of the layer ``module`` belongs to (the longest matching prefix)."""
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best:
                best, rank = len(n), i
    assert rank is not None, f"{module} belongs to no layer: add it to LAYERS"
    return rank


def imports(module: str) -> list[tuple[str, bool]]:
    """(imported package module, inside a function?) for every import of ``module``.
    ``from sleepemo.data import names`` counts as ``sleepemo.data.names``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef,
                                                               ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != module:
                found.append((t, id(node) in inner))
    return found


def test_every_module_has_a_layer_and_the_checker_sees_imports():
    for m in MODULES:
        layer(m)
    got = dict(imports("sleepemo.experts.stage"))
    assert "sleepemo.pipeline.artefacts" in got and "sleepemo.mae.model" in got
    assert ("sleepemo.data.names", False) in imports("sleepemo.data.reader")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_and_sit_at_the_top(module):
    for target, inside in imports(module):
        if inside and ((module, target) in DEFERRED
                       or (module, target.rpartition(".")[0]) in DEFERRED):
            continue  # listed, with its reason
        assert layer(target) <= layer(module), \
            f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)}): upward"
        assert not inside, \
            f"{module} imports {target} inside a function: move it to the module's header"


def test_no_import_cycles():
    graph = {m: sorted({t for t, _ in imports(m)}) for m in MODULES}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [m, t]))
            if t not in state:
                visit(t, path + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_stage_names_scripts_folders_and_bodies_agree():
    scripts = sorted(p.name for p in (REPO / "src").glob("[0-9][0-9]_*.py"))
    assert scripts == [s.script for s in STAGES]
    for s in STAGES:
        assert s.script == f"{s.number}_{s.name}.py" and s.folder == f"{s.number}_{s.name}"
        body = importlib.import_module(s.module)
        assert callable(getattr(body, "run", None)), f"{s.module} has no run(stage)"
        text = (REPO / "src" / s.script).read_text()
        assert re.search(rf'cli\.run_stage\("{s.name}"', text), s.script
    assert len({s.name for s in STAGES}) == len(STAGES)
    assert [s.number for s in STAGES] == sorted(s.number for s in STAGES)
    with pytest.raises(KeyError, match="unknown stage"):
        spec("nope")


def test_the_stage_table_is_the_one_registry_of_model_families():
    """Each line of STAGES declares its config section, trainer, predictor loader and
    variants, and each resolves to what the pipeline uses."""
    from sleepemo.config import Config

    sections = {f.name for f in dataclasses.fields(Config)}
    for s in STAGES:
        assert s.section is None or s.section in sections, f"{s.name}: no config section " \
                                                           f"{s.section!r} on Config"
        assert callable(getattr(s.trainer_module(), "run", None)), f"{s.module}: no run(stage)"
        loader = s.predictor_module()
        if s.predictor:
            assert callable(getattr(loader, "load", None)), \
                f"{s.predictor}: no load(run, result)"
            assert s.predictor not in {t.module for t in STAGES}, \
                f"{s.name}: its predictor must be a library module, not a stage body"
        else:
            assert loader is None
        table = s.variant_table()
        assert all(isinstance(name, str) for name in table), s.name
        if isinstance(table, dict):
            for name, variant in table.items():
                # a config's variant: a small frozen dataclass; a registry's: a class
                assert isinstance(variant, type) or (
                    dataclasses.is_dataclass(variant)
                    and variant.__dataclass_params__.frozen), f"{s.name}: variant {name}"
    families = {s.name: s for s in STAGES if s.predictor}
    assert set(families) == {"baselines", "mae", "experts", "fusion", "rl", "ensemble"}
    from sleepemo.config import ExpertsConfig, FusionConfig, ExpertVariant, FusionVariant

    assert families["experts"].variant_table() is ExpertsConfig.VARIANTS
    assert families["fusion"].variant_table() is FusionConfig.VARIANTS
    assert all(isinstance(v, ExpertVariant) for v in ExpertsConfig.VARIANTS.values())
    assert all(isinstance(v, FusionVariant) for v in FusionConfig.VARIANTS.values())


def test_the_runner_runs_the_stages_by_number_and_run_sh_calls_it():
    # `sleepemo run` (what run.sh runs after its set-up) runs the stages of STAGES in
    # order: a new stage runs once it is in STAGES, without editing run.sh
    assert select(None) == list(STAGES)
    assert select("07,00,03") == [spec("00"), spec("03"), spec("07")]
    run_sh = (REPO / "run.sh").read_text()
    assert 'exec python -m sleepemo run "$@"' in run_sh
    assert "src/[0-9][0-9]_*.py" not in run_sh  # no stage loop of its own


def test_no_stage_body_imports_another():
    bodies = {s.module for s in STAGES}
    for b in bodies:
        bad = sorted(t for t, _ in imports(b) if t in bodies - {b})
        assert not bad, f"stage body {b} imports {bad}: go through sleepemo.pipeline.artefacts"


def test_stage_scripts_are_thin_and_documented():
    for s in STAGES:
        path = REPO / "src" / s.script
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and "Reads:" in doc and "Writes:" in doc, path.name
        code = [line for line in path.read_text().split('"""', 2)[2].splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
        assert len(code) <= 25, f"{path.name} has {len(code)} lines of code: move logic " \
                                f"into {s.module}"


def test_file_name_rules_live_in_one_place():
    """Only sleepemo.data.names says what a participant's file is called."""
    rule = re.compile(r"re\.compile\([^)]*(?:test_subject|\\\.mat|cleaned)")
    for m, path in MODULES.items():
        if m != "sleepemo.data.names":
            assert not rule.search(path.read_text()), f"{m} has its own file-name rule"
