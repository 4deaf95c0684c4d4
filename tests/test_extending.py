"""docs/extending.md, run as written: a toy model in stage 01 and a toy stage 06."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from sleepemo import baselines as models
from sleepemo.pipeline.artefacts import find, results
from sleepemo.config import load_config
from sleepemo.data.reader import load_dataset
from sleepemo.data.folds import write_folds
from sleepemo.pipeline.stage import open_stage
from sleepemo.baselines import stage as baselines
from sleepemo.kaggle import stage as make_submission

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


@pytest.fixture(scope="module")
def extended(smoke_dir, tmp_path_factory):
    """Run the page's two blocks: register the toy model, run stage 01 with it, run the
    toy stage 06 and stage 07."""
    model_block, stage_block = doc_blocks()
    saved = dict(models.REGISTRY)
    # the model block as a module of its own, as a user's file would be (stage 01 keeps
    # the fitted fold models as pickles, which refer to the class by its module)
    toy_model = types.ModuleType("toy_model")
    sys.modules["toy_model"] = toy_model
    exec(compile(model_block, str(DOC), "exec"), toy_model.__dict__)
    toy = types.ModuleType("toy_ensemble")
    exec(compile(stage_block, str(DOC), "exec"), toy.__dict__)
    out = tmp_path_factory.mktemp("extended")
    cfg = load_config("smoke", ["baselines.models=[constant,starter,theta_power]"])
    write_folds(load_dataset(smoke_dir, progress=False), out / "folds.json")
    quiet = dict(progress=False, log=lambda m: None)
    try:
        open_stage("baselines", cfg, smoke_dir, out, **quiet).run(baselines.run)
        fused = open_stage("ensemble", cfg, smoke_dir, out, **quiet).run(toy.run)
        submitted = open_stage("submission", cfg, smoke_dir, out, **quiet).run(
            lambda s: make_submission.run(s, submissions=out / "subs"))
    finally:
        models.REGISTRY.clear()
        models.REGISTRY.update(saved)
    return out, toy, fused, submitted, cfg, smoke_dir


def test_the_page_has_the_two_examples():
    blocks = doc_blocks()
    assert len(blocks) == 2
    assert "REGISTRY[\"theta_power\"]" in blocks[0] and "ResultWriter" in blocks[1]


def test_toy_model_runs_in_stage_01_and_toy_stage_06_reads_it(extended):
    out, _, fused, submitted, _, smoke_dir = extended
    listed = {r.label: r for r in results(out)}
    assert {"constant", "starter", "theta_power", "mean_of_baselines"} <= set(listed)
    assert listed["theta_power"].stage == "baselines"
    blend = listed["mean_of_baselines"]
    assert blend.stage == "ensemble" and blend.folder == out / "06_ensemble" / "mean_of_baselines"
    assert blend.meta["inputs"] == ["starter", "theta_power"]  # constant is diagnostic
    # the toy blend is exactly the mean of its inputs' out-of-fold predictions
    np.testing.assert_allclose(blend.oof, (listed["starter"].oof + listed["theta_power"].oof)
                               / 2, rtol=1e-6)
    assert fused.metrics["lopo_window_auc"]["mean_of_baselines"] == blend.score()[0].score
    assert (out / "06_ensemble" / "metrics.json").is_file()
    # the report and the submission see every stage's results
    report = (out / "report.md").read_text()
    assert "| mean_of_baselines | ensemble |" in report and "## Stage 06" in report
    table = open(out / "lopo.csv").read()
    assert "theta_power" in table and "mean_of_baselines" in table
    best = max((r for r in listed.values() if not r.diagnostic),
               key=lambda r: r.score()[0].score)
    assert submitted.metrics["model"] == best.label
    # stage 07 says whether its choice is within noise, in its summary and the report
    noise = submitted.metrics["choice_noise"]
    assert noise.startswith(f"`{best.label}` minus `") and noise in report
    assert ("contains 0" in noise) == submitted.metrics["choice_within_noise"]


def test_toy_stage_06_is_skipped_when_nothing_changed(extended):
    out, toy, _, _, cfg, smoke_dir = extended
    before = find(out, "mean_of_baselines").folder.joinpath("meta.json").stat().st_mtime_ns
    open_stage("ensemble", cfg, smoke_dir, out, progress=False, log=lambda m: None).run(
        toy.run)
    assert find(out, "mean_of_baselines").folder.joinpath(
        "meta.json").stat().st_mtime_ns == before


def test_toy_model_follows_the_estimator_conventions(extended):
    """The page's model is a scikit-learn estimator like the registered ones
    (tests/test_baseline_estimators.py): parameters through get_params and clone, an
    unfitted model refuses to predict, the fold models kept by stage 01 are fitted."""
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    from sleepemo.baselines.lopo import load_fold_model

    out = extended[0]
    ThetaPower = sys.modules["toy_model"].ThetaPower
    model = ThetaPower(random_state=4, C=1.0)
    assert model.get_params() == {"random_state": 4, "band": (4.0, 8.0), "C": 1.0}
    assert set(vars(model)) == set(model.get_params())
    assert clone(model).get_params() == model.get_params()
    with pytest.raises(NotFittedError):
        model.predict_proba(np.zeros((3, 16)))
    fold = load_fold_model(find(out, "theta_power").folder, 0)
    assert type(fold) is ThetaPower and fold.random_state == 0  # seed 0 * 1000 + fold 0
    assert set(vars(fold)) - set(fold.get_params()) == {"clf_"}
