"""What a run would do, before running it: each result reused or recomputed, and why.

``python -m sleepemo.pipeline.plan --profile quick [--data-dir D] [--out OUT] [--set k=v]...``
lists, stage by stage, every result the stage would write with the given settings:

- **reuse**: its ``meta.json`` (stage 02's encoder: ``run.json``) carries the fingerprint
  the stage would compute now;
- **recompute**, and why: no previous result; settings changed (which); seed changed;
  data changed; code changed (which modules of its closure, :mod:`sleepemo.pipeline.codehash`);
  an input changed (an earlier stage's result it reads, e.g. the encoder); with
  ``resume k/n`` when k fold files already carry the new fingerprint;

and the stage's wall time in the last run (``<out>/<stage folder>/metrics.json``), as
the expected time when something is recomputed.

Nothing heavy runs: each stage body's ``fingerprints(stage, planned)`` (beside its
``run``) computes the fingerprints its ``run`` would give its writers, from the settings,
``folds.json`` and what the stages before it will have written (``planned``: a result
recomputed upstream gets its new fingerprint, so everything that reads it is recomputed
too). The data folder's files are hashed once to tell whether the data changed
(``--no-data-check`` skips it). Stages without fingerprinted results (00 keeps
``folds.json`` for the same data; 07 writes the submission) always run.

A stage's body module is found from its script (``src/NN_*.py``: the module the script
hands to :func:`sleepemo.pipeline.stage.main`), so the plan follows the package's layout.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sleepemo.config import Config, PROFILES, load_config
from sleepemo.data.folds import data_fingerprint, read_folds
from sleepemo.errors import guarded
from sleepemo.io import read_json
from sleepemo.pipeline.artefacts import (Planned, _modules, _read_result, describe,
                                         stored_fingerprint)
from sleepemo.pipeline.codehash import closure
from sleepemo.pipeline.stage import STAGES, Stage, StageSpec, resolve_args


# ------------------------------------------------------------------ stage bodies
def body_modules(spec: StageSpec) -> list[str]:
    """The module(s) whose code stage ``spec`` runs as its body (``spec.module``, e.g.
    ``sleepemo.baselines.stage``)."""
    return [spec.module]


def closures() -> dict[str, list[str]]:
    """Stage name -> the closure of its body modules' imports within the package (what
    ``code_hash`` of the body covers; a result's own roots are in the plan's items)."""

    return {s.name: closure(body_modules(s), _modules()) for s in STAGES}


# ------------------------------------------------------------------ why
#: fingerprint parts that are other artefacts' fingerprints or keys
INPUT_KEYS = ("inputs", "mae", "features", "bands", "evoked", "train", "source")


def _identity(value):
    """What a described part is compared by: a code record by its hash, a described
    fingerprint by the fingerprint."""
    if isinstance(value, dict) and "code_hash" in value:
        return ("code", value["code_hash"])
    if isinstance(value, dict) and "fingerprint" in value and "parts" in value:
        return value["fingerprint"]  # as a result read from disk records it: the string
    if isinstance(value, dict):
        return {k: _identity(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_identity(v) for v in value]
    return value


def _short(value, n: int = 60) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= n else text[:n - 3] + "..."


def code_changes(old, new) -> str:
    """Which modules differ between two code records."""
    if not (isinstance(old, dict) and isinstance(new, dict) and "modules" in old):
        return "code changed"
    a, b = old["modules"], new.get("modules", {})
    edited = sorted(m for m in a.keys() & b.keys() if a[m] != b[m])
    added = sorted(b.keys() - a.keys())
    gone = sorted(a.keys() - b.keys())
    parts = ([", ".join(edited)] if edited else []) + \
        ([f"newly imported {', '.join(added)}"] if added else []) + \
        ([f"no longer imported {', '.join(gone)}"] if gone else [])
    return "code changed: " + ("; ".join(parts) or "roots " + ", ".join(new.get("roots", [])))


def reasons(stored: dict | None, current: dict | None, prefix: str = "") -> list[str]:
    """Why a result built from ``stored`` (its recorded fingerprint parts) would be
    recomputed with ``current`` (:func:`sleepemo.pipeline.artefacts.describe`): one line per
    part that differs, saying whether a setting, the seed, the data, the code (which
    modules) or an input changed."""
    if stored is None or current is None:
        return ["fingerprint changed (the result does not record what it was built from: "
                "written by an older version)"]
    out = []
    for key in sorted(stored.keys() | current.keys()):
        old, new = stored.get(key), current.get(key)
        if _identity(old) == _identity(new):
            continue
        name = f"{prefix}{key}"
        if key == "code":
            out.append(code_changes(old, new))
        elif key == "seed":
            out.append(f"seed changed: {old} -> {new}")
        elif key == "data":
            out.append("data changed")
        elif key == "train" and isinstance(old, dict) and isinstance(new, dict) and \
                "parts" in old and "parts" in new:  # its own trained weights'
            out.extend(reasons(old["parts"], new["parts"], prefix=f"{name}."))
        elif key in INPUT_KEYS:
            if isinstance(old, dict) and isinstance(new, dict) and "parts" in old and \
                    "parts" in new:  # both described: say what changed in the input
                out.append(f"input changed: {name} ("
                           + "; ".join(reasons(old["parts"], new["parts"])) + ")")
            elif isinstance(old, dict) and isinstance(new, dict) and key == "inputs":
                a, b = _identity(old), _identity(new)
                changed = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
                what = ([f"changed {', '.join(changed)}"] if changed else []) + \
                    ([f"new {', '.join(sorted(b.keys() - a.keys()))}"] if b.keys() - a.keys()
                     else []) + \
                    ([f"gone {', '.join(sorted(a.keys() - b.keys()))}"]
                     if a.keys() - b.keys() else [])
                out.append(f"input changed: {name} ({'; '.join(what)})")
            else:
                out.append(f"input changed: {name}")
        elif isinstance(old, dict) and isinstance(new, dict):
            for k in sorted(old.keys() | new.keys()):
                if _identity(old.get(k)) != _identity(new.get(k)):
                    out.append(f"setting changed: {name}.{k} {_short(old.get(k))} -> "
                               f"{_short(new.get(k))}")
        else:
            out.append(f"setting changed: {name} {_short(old)} -> {_short(new)}")
    return out or ["fingerprint changed"]


# ------------------------------------------------------------------ the plan
@dataclass
class Item:
    """One result of a stage in the plan."""

    stage: str
    name: str
    action: str                       # reuse | recompute
    why: list = field(default_factory=list)
    folds_done: int | None = None     # fold files already carrying the new fingerprint
    n_folds: int | None = None
    code_roots: list = field(default_factory=list)    # what its code hash starts from
    code_modules: list = field(default_factory=list)  # ... and covers (the closure)


@dataclass
class StagePlan:
    stage: str
    folder: str
    modules: list                     # its body module(s)
    items: list                       # Item
    note: str = ""                    # for stages without fingerprinted results
    last_seconds: float | None = None

    @property
    def action(self) -> str:
        if not self.items:
            return "run"
        return "reuse" if all(i.action == "reuse" for i in self.items) else "recompute"

    @property
    def expected_seconds(self) -> float | None:
        """The last run's wall time when something is recomputed (or the stage always
        runs), else 0."""
        return self.last_seconds if self.action != "reuse" else 0.0


def _record(out: Path, p: Planned) -> dict | None:
    path = out / _folder(p.stage) / p.record_path
    if not path.is_file():
        return None
    return _read_result(path) if path.name == "meta.json" else read_json(path)


def _folder(stage: str) -> str:
    return next(s.folder for s in STAGES if s.name == stage)


def _folds_done(out: Path, p: Planned, n_folds: int) -> int:
    folder = out / _folder(p.stage) / p.name
    return sum(stored_fingerprint(folder / f"fold{k}.npz") == p.fingerprint
               for k in range(n_folds))


def data_changed(cfg: Config, data_dir: Path, out: Path) -> str | None:
    """Why the data differs from the one ``folds.json`` was made for, or None (its
    files hashed as stage 00 hashes them; read either way ``data.bad_values`` may have
    read them)."""

    folds = read_folds(out / "folds.json")
    if not Path(data_dir).is_dir():
        return f"data folder {data_dir} not found"
    now = {data_fingerprint(data_dir), data_fingerprint(data_dir, cfg.data.bad_values)}
    if folds.data_fingerprint in now:
        return None
    return (f"data changed: {data_dir} is not the data folds.json was made for "
            f"({folds.data_root}); stage 00 refuses it without --force")


def make_plan(cfg: Config, data_dir: str | Path, out: str | Path,
              check_data: bool = True) -> list[StagePlan]:
    """The plan of every stage (see the module docstring)."""
    out, data_dir = Path(out), Path(data_dir)
    plans, planned = [], {}
    have_folds = (out / "folds.json").is_file()
    changed = data_changed(cfg, data_dir, out) if have_folds and check_data else None
    n_folds = len(read_json(out / "folds.json")["train_subjects"]) if have_folds else None
    for spec in STAGES:
        modules = body_modules(spec)
        metrics = out / spec.folder / "metrics.json"
        last = read_json(metrics).get("stage_seconds") if metrics.is_file() else None
        sp = StagePlan(spec.name, spec.folder, modules, [], last_seconds=last)
        plans.append(sp)
        fns = [getattr(importlib.import_module(m), "fingerprints", None) for m in modules]
        fns = [f for f in fns if f is not None]
        if not fns:
            sp.note = ("always runs (no fingerprinted results)" if have_folds and not changed
                       else "runs: writes folds.json" if not have_folds else changed)
            continue
        if not have_folds:
            sp.note = "recompute: no folds.json yet (nothing run in this folder)"
            continue
        stage = Stage(cfg, data_dir, out, spec, progress=False, log=lambda m: None)
        for fn in fns:
            for p in fn(stage, planned):
                planned[(p.stage, p.name)] = p
                sp.items.append(_item(out, p, n_folds, changed))
    return plans


def code_records(desc) -> list[dict]:
    """The code records of a described fingerprint: its own and its trained weights'
    (``train``), not those of the inputs described within it (upstream results)."""
    if isinstance(desc, dict):
        if "code_hash" in desc:
            return [desc]
        return [r for k, v in desc.items() if k not in INPUT_KEYS or k == "train"
                for r in code_records(v)]
    if isinstance(desc, list):
        return [r for v in desc for r in code_records(v)]
    return []


def _item(out: Path, p: Planned, n_folds: int, data_change: str | None) -> Item:
    record = _record(out, p)
    # its own code (not that of inputs described within, e.g. an upstream result)
    code = code_records(describe(p.fingerprint) or {})
    roots = sorted({m for r in code for m in r["roots"]})
    modules = sorted({m for r in code for m in r["modules"]})
    if data_change:
        return Item(p.stage, p.name, "recompute", [data_change], code_roots=roots,
                    code_modules=modules)
    if record is not None and record.get("fingerprint") == p.fingerprint:
        return Item(p.stage, p.name, "reuse", code_roots=roots, code_modules=modules)
    item = Item(p.stage, p.name, "recompute", code_roots=roots, code_modules=modules)
    if record is None:
        item.why = ["no previous result"]
    else:
        item.why = reasons(record.get("fingerprint_parts"), describe(p.fingerprint))
    if p.folds:
        item.folds_done, item.n_folds = _folds_done(out, p, n_folds), n_folds
    return item


def format_plan(plans: list[StagePlan]) -> str:
    lines = []
    total = 0.0
    for sp in plans:
        secs = sp.expected_seconds
        total += secs or 0.0
        when = ("" if sp.last_seconds is None else
                f"last run {sp.last_seconds:.0f} s" + (
                    "" if sp.action == "reuse" else f", expect ~{secs:.0f} s"))
        head = f"{sp.folder:<16} {sp.action:<10}"
        if sp.items:
            n = sum(i.action == "reuse" for i in sp.items)
            head += f" {n}/{len(sp.items)} reused"
        lines.append(f"{head:<42} {when}".rstrip())
        if sp.note:
            lines.append(f"    {sp.note}")
        for i in sp.items:
            resume = (f" (resume: {i.folds_done}/{i.n_folds} folds done)"
                      if i.folds_done else "")
            lines.append(f"    {i.name:<28} {i.action}{resume}")
            for why in i.why:
                lines.append(f"        {why}")
    lines.append(f"expected time: ~{total:.0f} s (from the last run's metrics.json; "
                 "stages never run have no estimate)")
    return "\n".join(lines)


def resolve(args) -> tuple[Config, Path, Path]:
    """The config, data folder and artefact folder, as the stage scripts resolve them
    (:func:`sleepemo.pipeline.stage.resolve_args`), but without downloading or generating data
    when ``--out`` has a ``folds.json`` naming it."""

    cfg = load_config(args.profile, args.overrides)
    if not args.data_dir and not cfg.data.dir and args.out and \
            (Path(args.out) / "folds.json").is_file():
        return cfg, Path(read_json(Path(args.out) / "folds.json")["data_root"]), \
            Path(args.out)
    return resolve_args(args)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sleepemo.pipeline.plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=PROFILES, default="quick")
    ap.add_argument("--data-dir", help="data folder (as for the stages)")
    ap.add_argument("--out", help="artefact folder (default output/<profile>-<data name>)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="override a config value, e.g. seed=1")
    ap.add_argument("--no-data-check", action="store_true",
                    help="do not hash the data files to tell whether the data changed")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    ap.add_argument("--closures", action="store_true",
                    help="also list the modules each stage body's code hash covers")
    args = ap.parse_args(argv)
    cfg, data_dir, out = resolve(args)
    plans = make_plan(cfg, data_dir, out, check_data=not args.no_data_check)
    if args.json:
        doc = {"out": str(out), "data_dir": str(data_dir),
               "stages": [asdict(p) | {"action": p.action,
                                       "expected_seconds": p.expected_seconds}
                          for p in plans]}
        if args.closures:
            doc["closures"] = closures()
        print(json.dumps(doc, indent=1))
        return 0
    print(f"plan for {out} (profile {cfg.profile}, data {data_dir})")
    print(format_plan(plans))
    if args.closures:
        print("\ncode each result's fingerprint covers (closure of its roots' imports):")
        for sp in plans:
            seen = set()
            for i in sp.items:
                key = (tuple(i.code_roots), tuple(i.code_modules))
                if key in seen or not i.code_roots:
                    continue
                seen.add(key)
                names = [x.name for x in sp.items
                         if (tuple(x.code_roots), tuple(x.code_modules)) == key]
                print(f"{sp.folder} {', '.join(names)}: roots {' '.join(i.code_roots)}\n"
                      f"    {' '.join(i.code_modules)}")
        print("\nstage bodies' closures:")
        for stage, mods in closures().items():
            print(f"{stage}: {' '.join(mods)}")
    return 0


if __name__ == "__main__":
    guarded(lambda: sys.exit(main()))
