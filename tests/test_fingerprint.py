"""Fingerprints from what a result depends on (issue 21, point 3): the code of the modules it
is made by and what they import (``sleepemo.pipeline.codehash``), its settings, seed and data; and
``python -m sleepemo.pipeline.plan``, which tells before a run what would be reused and why."""
from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sleepemo
import sleepemo.kaggle.bundle
import sleepemo.baselines.lopo
import sleepemo.baselines.models
import sleepemo.mae.model
import sleepemo.predict.cli
import sleepemo.pipeline.evidence
import sleepemo.pipeline.report
import sleepemo.pipeline.stage
import sleepemo.kaggle.submit
from sleepemo.mae import stage as pretrain_mae
from sleepemo.experts import stage as train_experts
from sleepemo.pipeline.codehash import closure, closure_hash, imports_of, package_modules
from sleepemo.config import REPO, load_config

TOP = sleepemo.__name__
PACKAGE = Path(sleepemo.__file__).resolve().parent


# ------------------------------------------------------------------ the closure
def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def toy(tmp_path):
    """A tiny package: a stage body importing a model at module level, the model
    importing a helper inside a function (relative), a submodule imported as
    ``from . import x``, a literal ``importlib.import_module``, and modules no one
    imports (a report that itself imports the model, a CLI)."""
    return _write(tmp_path / "toy", {
        "__init__.py": "VERSION = 1\n",
        "stages/__init__.py": "",
        "stages/train.py": "from ..models.net import Net\nfrom .. import util\n\n"
                           "def run():\n    import importlib\n"
                           "    return importlib.import_module('toy.plugin')\n",
        "models/__init__.py": "",
        "models/net.py": "class Net:\n    def fit(self):\n"
                         "        from ..helpers.maths import mean\n        return mean\n",
        "helpers/__init__.py": "",
        "helpers/maths.py": "def mean(x):\n    return sum(x) / len(x)\n",
        "util.py": "import os\n",
        "plugin.py": "X = 1\n",
        "report.py": "from toy.models.net import Net\n",
        "cli.py": "def main():\n    from . import report\n",
    })


def test_closure_follows_module_and_function_level_and_relative_imports(toy):
    mods = package_modules(toy)
    assert mods["toy.models.net"] == toy / "models" / "net.py" and mods["toy"].name == \
        "__init__.py"
    assert imports_of("toy.models.net", mods) == {"toy", "toy.helpers", "toy.helpers.maths"}
    assert closure(["toy.stages.train"], mods) == sorted([
        "toy", "toy.stages", "toy.stages.train", "toy.models", "toy.models.net",
        "toy.helpers", "toy.helpers.maths", "toy.util", "toy.plugin"])
    # a report importing the model does not make the model depend on the report
    assert "toy.report" not in closure(["toy.stages.train"], mods)
    assert closure(["toy.cli"], mods) == sorted([
        "toy", "toy.cli", "toy.report", "toy.models", "toy.models.net", "toy.helpers",
        "toy.helpers.maths"])


def test_editing_an_unrelated_module_keeps_the_hash_a_dependency_changes_it(toy):
    before, hashes = closure_hash(["toy.stages.train"], package_modules(toy))
    assert set(hashes) == set(closure(["toy.stages.train"], package_modules(toy)))
    for unrelated in ("report.py", "cli.py"):
        with open(toy / unrelated, "a") as fh:
            fh.write("\ndef added():\n    return 2  # edited\n")
    (toy / "docs.md").write_text("not code")
    assert closure_hash(["toy.stages.train"], package_modules(toy))[0] == before
    with open(toy / "helpers" / "maths.py", "a") as fh:  # imported inside a function
        fh.write("# edited\n")
    after, changed = closure_hash(["toy.stages.train"], package_modules(toy))
    assert after != before
    assert [m for m in hashes if hashes[m] != changed[m]] == ["toy.helpers.maths"]
    # the same code elsewhere on disk hashes the same (names, not paths)
    shutil.copytree(toy, toy.parent / "elsewhere" / "toy")
    assert closure_hash(["toy.stages.train"], package_modules(
        toy.parent / "elsewhere" / "toy"))[0] == after
    # a new import of a module joins the closure
    with open(toy / "util.py", "a") as fh:
        fh.write("from . import cli\n")
    assert "toy.cli" in closure(["toy.stages.train"], package_modules(toy))


def test_the_stage_runner_and_results_do_not_depend_on_report_submit_predict():
    """What the closures of the real package hold (see the reply to issue 21): the
    stage runner and the LOPO results (stage 01) do not reach the report, the submit
    command, sleepemo predict or the Kaggle bundle; no stage body reaches the last three."""
    from sleepemo.pipeline.plan import body_modules
    from sleepemo.pipeline.stage import STAGES

    mods = package_modules(PACKAGE, TOP)
    never = {m.__name__ for m in (sleepemo.kaggle.submit, sleepemo.predict.cli,
                                  sleepemo.predict.load, sleepemo.kaggle.bundle)}
    for spec in STAGES:
        bodies = body_modules(spec)
        assert bodies, spec.name
        assert not never & set(closure(bodies, mods)), spec.name
    runner = closure([sleepemo.pipeline.stage.__name__], mods)
    assert not (never | {sleepemo.pipeline.report.__name__}) & set(runner)
    lopo = closure([sleepemo.baselines.lopo.__name__, sleepemo.baselines.models.__name__], mods)
    assert sleepemo.pipeline.report.__name__ not in lopo


def test_the_intervals_of_the_report_retrain_nothing():
    """lopo.csv's bootstrap (pipeline.intervals) belongs to the report: no stage that
    makes results reaches it, so changing its replicates or seed recomputes nothing."""
    from sleepemo.pipeline.plan import body_modules
    from sleepemo.pipeline.stage import STAGES

    mods = package_modules(PACKAGE, TOP)
    reached = {spec.name: "sleepemo.pipeline.intervals" in closure(body_modules(spec), mods)
               for spec in STAGES}
    assert reached.pop("submission")  # stage 07 writes the report; it makes no result
    assert not any(reached.values()), reached


# ------------------------------------------------------------------ a finished run
#: every stage in seconds on the tiny data; stage 04 has a raw variant so that the SAC
#: reads stage 04's fused tokens (its source is then a stage-04 result)
FAST = ["baselines.models=[constant,starter]", "mae.epochs=1", "mae.seqs_per_epoch=512",
        "mae.n_val_subjects=1", "experts.meta_steps=1", "fusion.variants=[experts,raw]",
        "fusion.steps=3", "fusion.n_inner_val=1", "rl.env_steps=40", "rl.learning_starts=20",
        "rl.sac_env_steps=40", "rl.sac_learning_starts=20", "rl.proto_steps=5",
        "rl.eval_every=20", "rl.n_inner_val=1", "rl.sac_fusion=raw", "ensemble.n_trials=3"]


@pytest.fixture(scope="module")
def run(tiny_dir, tmp_path_factory):
    """Stages 00-06 once, in this process, on three training participants and one test
    participant (stage 07 has no fingerprinted results). Returns (data, out)."""
    from sleepemo.pipeline.plan import body_modules
    from sleepemo.pipeline.stage import STAGES, open_stage

    tmp = tmp_path_factory.mktemp("fingerprint")
    data = tiny_dir
    out = tmp / "out"
    cfg = load_config("smoke", FAST)
    for spec in STAGES[:-1]:
        body = importlib.import_module(body_modules(spec)[0])
        open_stage(spec.name, cfg, data, out, progress=False, log=lambda m: None).run(
            body.run)
    return data, out


def _plan(data, out, sets=()):
    from sleepemo.pipeline.plan import make_plan

    return make_plan(load_config("smoke", [*FAST, *sets]), data, out)


def _items(plans) -> dict:
    """(stage, name) -> item as a dict (as ``--json`` prints it)."""
    from dataclasses import asdict

    return {(i.stage, i.name): asdict(i) for p in plans for i in p.items}


def test_a_finished_run_is_reused_whole_and_records_what_its_fingerprints_hold(run):
    data, out = run
    items = _items(_plan(data, out))
    assert len(items) == 2 + 3 + 2 + 2 + 4 + 1, sorted(items)
    assert {k: i["why"] for k, i in items.items() if i["action"] != "reuse"} == {}
    meta = json.loads((out / "03_experts" / "experts_mae_fomaml" / "meta.json").read_text())
    parts = meta["fingerprint_parts"]
    assert parts["train"]["parts"]["seed"] == 0
    code = parts["train"]["parts"]["code"]
    assert code["roots"] == [train_experts.__name__]
    assert sleepemo.mae.model.__name__ in code["modules"]
    assert sleepemo.predict.cli.__name__ not in code["modules"]
    run_json = json.loads((out / "02_mae" / "run.json").read_text())
    assert run_json["fingerprint_parts"]["code"]["roots"] == [pretrain_mae.__name__]
    assert run_json["fingerprint_parts"]["seed"] == 0
    base = json.loads((out / "01_baselines" / "starter" / "meta.json").read_text())
    assert base["fingerprint_parts"]["code"]["roots"] == sorted(
        [sleepemo.baselines.lopo.__name__, sleepemo.baselines.models.__name__])
    assert sleepemo.pipeline.report.__name__ not in base["fingerprint_parts"]["code"]["modules"]


def test_plan_says_which_setting_or_seed_changed_and_what_follows(run):
    data, out = run
    items = _items(_plan(data, out, ["experts.meta_steps=2"]))
    action = {k: i["action"] for k, i in items.items()}
    assert action[("experts", "experts_mae_fomaml")] == "recompute"
    assert any("experts.meta_steps 1 -> 2" in w
               for w in items[("experts", "experts_mae_fomaml")]["why"])
    # fusion_experts reads the experts; fusion_raw, the SAC (on fusion_raw) and the DQN not
    assert action[("fusion", "fusion_experts")] == "recompute"
    assert [w.split(" (")[0] for w in items[("fusion", "fusion_experts")]["why"]] == [
        "input changed: inputs"]
    for k in [("fusion", "fusion_raw"), ("rl", "rl_sac"), ("rl", "rl_dqn"),
              ("baselines", "starter"), ("mae", "encoder"), ("mae", "mae_probe")]:
        assert action[k] == "reuse", k
    assert action[("ensemble", "ensemble")] == "recompute"
    assert items[("ensemble", "ensemble")]["why"][0].startswith("input changed: inputs")
    assert "experts_mae_fomaml" in items[("ensemble", "ensemble")]["why"][0]

    items = _items(_plan(data, out, ["seed=1"]))
    assert all(i["action"] == "recompute" for i in items.values())
    assert "seed changed: 0 -> 1" in items[("baselines", "constant")]["why"]


def test_plan_says_when_the_data_changed(run, tmp_path):
    from sleepemo.pipeline.plan import make_plan

    data, out = run
    other = shutil.copytree(data, tmp_path / "other")
    victim = sorted((other / "training").rglob("*.mat"))[0]
    raw = victim.read_bytes()
    victim.write_bytes(raw[:-1] + bytes([raw[-1] ^ 0xFF]))  # one byte differs
    plans = make_plan(load_config("smoke", FAST), other, out)
    items = _items(plans)
    assert items and all(i["action"] == "recompute" and i["why"][0].startswith(
        "data changed") for i in items.values())
    assert plans[0].note.startswith("data changed")  # stage 00 refuses it without --force


# ------------------------------------------------------------------ edited code
def copy_package(tmp: Path) -> Path:
    """The repository's code and profiles copied to ``tmp`` (a checkout of its own):
    returns its ``src`` folder."""
    shutil.copytree(REPO / "src", tmp / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return tmp / "src"


def edit(src: Path, *modules: str) -> None:
    """Append a function and a comment to each module (by dotted name) of the copy."""
    mods = package_modules(src / TOP, TOP)
    for name in modules:
        with open(mods[name], "a") as fh:
            fh.write("\n\ndef _edited_by_a_test():  # (tests/test_fingerprint.py)\n"
                     "    return 'edited'\n")


def run_with(src: Path, args: list, data, out) -> str:
    """``python ARGS --profile smoke ...`` with the code of ``src``: its standard output."""
    cmd = [sys.executable, *args, "--profile", "smoke", "--data-dir", str(data), "--out",
           str(out)]
    for s in FAST:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(
        os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", MPLBACKEND="Agg"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def plan_with(src: Path, data, out) -> dict:
    """``python -m sleepemo.pipeline.plan --json`` run with the code of ``src``."""
    doc = json.loads(run_with(src, ["-m", f"{TOP}.pipeline.plan", "--json"], data, out))
    return {(i["stage"], i["name"]): i for s in doc["stages"] for i in s["items"]}


def test_editing_submit_predict_and_the_bundle_recomputes_nothing(run, tmp_path):
    data, out = run
    src = copy_package(tmp_path / "repo")
    edit(src, sleepemo.kaggle.submit.__name__, sleepemo.predict.cli.__name__,
         sleepemo.kaggle.bundle.__name__)
    items = plan_with(src, data, out)
    assert {k: i["why"] for k, i in items.items() if i["action"] != "reuse"} == {}
    assert len(items) == 14
    # and a real stage run with the edited code reuses its results (nothing rewritten)
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    metas = {p: p.stat().st_mtime_ns for p in (copy / "01_baselines").glob("*/*")}
    stdout = run_with(src, [str(src / "01_baselines.py"), "--no-progress"], data, copy)
    assert stdout.count("unchanged, reusing") == 2, stdout
    assert {p: p.stat().st_mtime_ns for p in (copy / "01_baselines").glob("*/*")} == metas


def test_editing_the_mae_model_recomputes_what_imports_it_for_code(run, tmp_path):
    data, out = run
    src = copy_package(tmp_path / "repo")
    mae = sleepemo.mae.model.__name__
    edit(src, mae)
    items = plan_with(src, data, out)
    for key, item in items.items():
        if mae in item["code_modules"]:
            assert item["action"] == "recompute", key
            assert any(w.startswith("code changed") and mae in w for w in item["why"]), item
        elif key[0] == "baselines":
            assert item["action"] == "reuse", key
        else:  # not its code, but it reads a result that is recomputed
            assert item["action"] == "recompute" and all(
                w.startswith("input changed") for w in item["why"]), item
    assert {k[0] for k, i in items.items() if mae in i["code_modules"]} == {
        "mae", "experts", "fusion", "rl"}
    assert items[("ensemble", "ensemble")]["why"][0].startswith("input changed")


def plan_after_editing(module, run, tmp_path_factory) -> dict:
    """The plan of the finished run with ``module`` edited in a copy of the package."""
    data, out = run
    src = copy_package(tmp_path_factory.mktemp(module.rpartition(".")[2]) / "repo")
    edit(src, module)
    return plan_with(src, data, out)


@pytest.fixture(scope="module")
def report_edited(run, tmp_path_factory):
    return plan_after_editing(sleepemo.pipeline.report.__name__, run, tmp_path_factory)


@pytest.fixture(scope="module")
def evidence_edited(run, tmp_path_factory):
    return plan_after_editing(sleepemo.pipeline.evidence.__name__, run, tmp_path_factory)


def test_editing_the_evidence_tables_recomputes_only_the_results_whose_code_imports_them(
        evidence_edited):
    """The stage bodies of 03-06 draw their evidence with pipeline.evidence: their results
    are recomputed for that code; the baselines' (made by lopo and the model) and the
    MAE's are not."""
    report = sleepemo.pipeline.evidence.__name__
    report_edited = evidence_edited
    for key, item in report_edited.items():
        if report in item["code_modules"]:
            assert item["action"] == "recompute" and any(
                w.startswith("code changed") and report in w for w in item["why"]), item
        elif key[0] != "ensemble":
            assert item["action"] == "reuse", item
        # the encoder is unchanged: stage 03 is recomputed for its own code only
        if key[0] == "experts":
            assert not any(w.startswith("input") for w in item["why"]), item
    why = report_edited[("ensemble", "ensemble")]["why"]
    changed = next(w for w in why if w.startswith("input changed: inputs"))
    assert "experts_mae_fomaml" in changed and "starter" not in changed and \
        "mae_probe" not in changed, why


def test_editing_the_report_recomputes_nothing(report_edited):
    assert {k: i["why"] for k, i in report_edited.items() if i["action"] != "reuse"} == {}
