"""The repository's layering: stage scripts are thin, stages talk only through artefacts."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from sleepemo.stage import STAGES, spec

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
    """The package a module's relative imports start from (``sleepemo.models``, ...)."""
    return ".".join(path.relative_to(REPO / "src").parent.parts)


def test_the_import_checker_sees_relative_and_absolute_imports():
    f = PACKAGE / "stages" / "train_experts.py"
    names = imported_modules(f, "sleepemo.stages")
    assert "sleepemo.artefacts" in names and "sleepemo.models.mae" in names


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_no_stage_module_imports_another_stage(module):
    path = PACKAGE / "stages" / f"{module}.py"
    others = {f"sleepemo.stages.{m}" for m in STAGE_MODULES if m != module}
    bad = sorted(n for n in imported_modules(path, "sleepemo.stages")
                 if any(n == o or n.startswith(o + ".") for o in others))
    assert not bad, f"stage module {module} imports {bad}: go through sleepemo.artefacts"


def test_the_library_does_not_depend_on_the_stages():
    for path in sorted(PACKAGE.rglob("*.py")):
        if "stages" in path.relative_to(PACKAGE).parts:
            continue
        if path == PACKAGE / "cli.py":  # the entry point, above everything: its
            continue                    # stage_entry is where `sleepemo stage` finds them
        bad = sorted(n for n in imported_modules(path, _module_package(path))
                     if n.startswith("sleepemo.stages"))
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"
    for path in sorted((REPO / "bench").glob("*.py")):
        bad = sorted(n for n in imported_modules(path, "") if n.startswith("sleepemo.stages"))
        assert not bad, f"{path.relative_to(REPO)} imports a stage module: {bad}"


def test_stage_scripts_are_thin_documented_and_registered():
    from sleepemo.runner import select

    scripts = sorted((REPO / "src").glob("[0-9][0-9]_*.py"))
    assert len(scripts) >= 5
    # every registered stage has its script; the runner (`sleepemo run`, which run.sh
    # runs after its set-up) runs the stages by their number, in STAGES order (a new
    # stage runs once it is in STAGES, without editing run.sh)
    assert [s.script for s in STAGES] == [p.name for p in scripts]
    assert select(None) == list(STAGES)
    assert [s.number for s in STAGES] == sorted(s.number for s in STAGES)
    assert select("07,00,03") == [spec("00"), spec("03"), spec("07")]
    run_sh = (REPO / "run.sh").read_text()
    assert 'exec python -m sleepemo run "$@"' in run_sh
    assert "src/[0-9][0-9]_*.py" not in run_sh  # no stage loop of its own
    for path in scripts:
        tree = ast.parse(path.read_text())
        doc = ast.get_docstring(tree)
        assert doc and "Reads:" in doc and "Writes:" in doc, path.name
        code = [line for line in path.read_text().split('"""', 2)[2].splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
        assert len(code) <= 25, f"{path.name} has {len(code)} lines of code: move logic " \
                                "into sleepemo.stages"
        name = re.search(r'cli\.run_stage\("(\w+)"', path.read_text()).group(1)
        assert spec(name).script == path.name


def test_stage_names_and_folders_are_unique():
    assert len({s.name for s in STAGES}) == len({s.folder for s in STAGES}) == len(STAGES)
    assert [s.number for s in STAGES] == sorted(s.number for s in STAGES)
    with pytest.raises(KeyError, match="unknown stage"):
        spec("nope")
