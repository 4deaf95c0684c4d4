"""The repository's layering: stage scripts are thin, stages talk only through artefacts."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from sleepemo.pipeline.stage import STAGES, spec

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "sleepemo"
STAGE_MODULES = sorted(p.stem for p in (PACKAGE / "stages").glob("*.py")
                       if p.stem != "__init__")


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return names


def _module_package(path: Path) -> str:
    """The package a module's relative imports start from (``sleepemo.baselines``, ...)."""
    return ".".join(path.relative_to(REPO / "src").parent.parts)


def test_the_import_checker_sees_relative_and_absolute_imports():
    f = PACKAGE / "stages" / "train_experts.py"
    names = imported_modules(f, "sleepemo.stages")
    assert "sleepemo.pipeline.artefacts" in names and "sleepemo.mae.model" in names


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_no_stage_module_imports_another_stage(module):
    path = PACKAGE / "stages" / f"{module}.py"
    others = {f"sleepemo.stages.{m}" for m in STAGE_MODULES if m != module}
    bad = sorted(n for n in imported_modules(path, "sleepemo.stages")
                 if any(n == o or n.startswith(o + ".") for o in others))
    assert not bad, f"stage module {module} imports {bad}: go through sleepemo.pipeline.artefacts"


def test_the_library_does_not_depend_on_the_stages():
    for path in sorted(PACKAGE.rglob("*.py")):
        if "stages" in path.relative_to(PACKAGE).parts:
            continue
        bad = sorted(n for n in imported_modules(path, _module_package(path))
                     if n.startswith("sleepemo.stages"))
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"
    for path in sorted((REPO / "bench").glob("*.py")):
        bad = sorted(n for n in imported_modules(path, "") if n.startswith("sleepemo.stages"))
        assert not bad, f"{path.relative_to(REPO)} imports a stage module: {bad}"


def test_stage_scripts_are_thin_documented_and_registered():
    scripts = sorted((REPO / "src").glob("[0-9][0-9]_*.py"))
    assert len(scripts) >= 5
    # every registered stage has its script, and run.sh runs the scripts by their number
    # (a glob, in sorted order: a new NN_*.py stage runs without editing run.sh)
    assert [s.script for s in STAGES] == [p.name for p in scripts]
    run_sh = (REPO / "run.sh").read_text()
    assert "for script in src/[0-9][0-9]_*.py; do" in run_sh
    for path in scripts:
        tree = ast.parse(path.read_text())
        doc = ast.get_docstring(tree)
        assert doc and "Reads:" in doc and "Writes:" in doc, path.name
        code = [line for line in path.read_text().split('"""', 2)[2].splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
        assert len(code) <= 25, f"{path.name} has {len(code)} lines of code: move logic " \
                                "into sleepemo.stages"
        name = re.search(r'stage\.main\("(\w+)"', path.read_text()).group(1)
        assert spec(name).script == path.name


def test_stage_names_and_folders_are_unique():
    assert len({s.name for s in STAGES}) == len({s.folder for s in STAGES}) == len(STAGES)
    assert [s.number for s in STAGES] == sorted(s.number for s in STAGES)
    with pytest.raises(KeyError, match="unknown stage"):
        spec("nope")
