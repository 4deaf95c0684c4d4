"""The code a result depends on: the modules of a package its makers import, found statically.

A result's fingerprint (:func:`sleepemo.pipeline.artefacts.fingerprint`) holds a hash of the code
that made it. Hashing every module of the package would tie every result to every line:
editing the report, the submit command or the docs would recompute the whole pipeline.
Instead, :func:`closure` follows the imports of the modules a result is made by (a stage's
body, a model family) within the package, transitively, by reading their source (no
import is executed):

- ``import a.b`` and ``from a.b import c`` at module level **and inside functions**
  (a function-level import runs when the function does: it is a dependency all the same);
- relative imports (``from ..x import y``, ``from . import x``) resolved against the
  importing module;
- ``from pkg import name`` where ``pkg.name`` is a submodule: that submodule;
- the packages an imported module lives in (importing ``a.b.c`` runs ``a/__init__.py``
  and ``a/b/__init__.py``);
- ``importlib.import_module("a.b")`` with a literal name.

Nothing is excluded by name: whatever the closure reaches is in the hash, and nothing
else. Modules are found by walking the package's folder (``<dir>/x/y.py`` is ``pkg.x.y``,
``<dir>/x/__init__.py`` is ``pkg.x``), so the closure follows the package's layout
whatever it is. :func:`closure_hash` hashes the sources of exactly those modules, sorted,
with their names.

Imports made by other means (``__import__``, a computed name, pickles naming a class) are
not seen: keep dependencies as import statements.
"""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path


def package_modules(package_dir: str | Path, package: str | None = None) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` under ``package_dir`` (the
    package named ``package``, default the folder's name)."""
    root = Path(package_dir)
    package = package or root.name
    found = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(not part.isidentifier() for part in rel.with_suffix("").parts):
            continue  # not importable by name (e.g. a "00_x.py" script or a cache folder)
        parts = [package, *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _with_parents(name: str, modules: dict[str, Path]) -> set[str]:
    """``name`` and the packages above it that are modules of ``modules``."""
    parts = name.split(".")
    return {p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1))
            if p in modules}


def imports_of(name: str, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that module ``name`` imports (anywhere in its source)."""
    tree = ast.parse(modules[name].read_text(encoding="utf-8"), str(modules[name]))
    # the package relative imports start from: the module itself if it is a package
    here = name.split(".") if _is_package(name, modules) else name.split(".")[:-1]
    found: set[str] = set()

    def add(target: str) -> None:
        # the deepest module that exists (an imported name may be a class, not a module)
        parts = target.split(".")
        for i in range(len(parts), 0, -1):
            candidate = ".".join(parts[:i])
            if candidate in modules:
                found.update(_with_parents(candidate, modules))
                return

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(here):
                    continue  # beyond the top of the package: not ours
                base = here[:len(here) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            add(source)
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:  # from pkg import submodule
                    found.update(_with_parents(f"{source}.{alias.name}", modules))
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
                   or isinstance(node.func, ast.Name) and node.func.id == "import_module")):
            add(node.args[0].value)
    found.discard(name)
    return found


def closure(roots, modules: dict[str, Path]) -> list[str]:
    """The modules of ``modules`` reached from ``roots`` (module names) through imports,
    roots and their packages included, sorted. A root that is not one of ``modules``
    contributes nothing (a module defined elsewhere, e.g. a user's model)."""
    todo = [n for r in roots if r in modules for n in _with_parents(r, modules)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imports_of(name, modules) - seen)
    return sorted(seen)


def source_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def closure_hash(roots, modules: dict[str, Path]) -> tuple[str, dict[str, str]]:
    """``(hash, {module: sha256 of its source})`` of the closure of ``roots``: the hash
    is over the roots' names, then the sorted module names and their sources' hashes, so
    it does not depend on where the package lies on disk."""
    hashes = {name: source_hash(modules[name]) for name in closure(roots, modules)}
    h = hashlib.sha256()
    h.update(("roots " + " ".join(sorted(roots)) + "\n").encode())
    for name, digest in hashes.items():
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest(), hashes
