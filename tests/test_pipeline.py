"""End to end: ./run.sh with the smoke profile, as a user runs it, on smoke-size synthetic
data with five training participants (five folds: the same code path as 14, in a third of
the time; the label-shuffled stage tests and test_lopo run all 14 participants)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import FEWER_RL_STEPS
from sleepemo.config import load_config
from sleepemo.data.submission import validate_submission

REPO = Path(__file__).resolve().parents[1]
#: the smoke profile with less training where no assertion here depends on it (what the
#: stages learn is checked by their own tests): one MAE epoch, 40 gradient steps per RL
#: head instead of 80, four ensemble trials instead of six
SETS = ("mae.epochs=1", *(f"{k}={v}" for k, v in FEWER_RL_STEPS.items()),
        "ensemble.n_trials=4")
SET_ARGS = [a for s in SETS for a in ("--set", s)]


def run_sh(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([str(REPO / "run.sh"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def smoke_run(small_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    out = run_sh("--profile", "smoke", "--data-dir", small_dir, "--out", tmp / "out",
                 "--submissions", tmp / "subs", *SET_ARGS)
    return tmp, out


def _submission(stdout: str) -> Path:
    return Path(re.search(r"submission: (\S+submission\.csv)", stdout).group(1))


def test_run_writes_a_valid_submission_and_report(smoke_run, small_dir):
    tmp, stdout = smoke_run
    sub = _submission(stdout)
    from sleepemo.data.reader import load_dataset
    ds = load_dataset(small_dir, progress=False)
    validate_submission(sub, {s: (t.n_trials, 200) for s, t in ds.test.items()})
    assert (tmp / "subs" / "latest.csv").read_bytes() == sub.read_bytes()
    table = pd.read_csv(tmp / "out" / "lopo.csv", index_col="model")
    cfg = load_config("smoke", list(SETS))
    assert set(table.index) == set(cfg.baselines.models) | {
        "mae_probe", "band_probe", "experts_mae_fomaml", "experts_mae_fomaml_tta"} | {
        f"fusion_{v}" for v in cfg.fusion.variants} | {
        f"rl_{h}{twin}" for h in cfg.rl.heads for twin in ("", "_twin")} | {"ensemble"}
    chosen = re.search(r"submitted model: (\w+)", stdout).group(1)
    best = table[~table.diagnostic].overall.idxmax()
    assert chosen == best
    experts = json.loads((tmp / "out" / "03_experts" / "metrics.json").read_text())
    assert experts["lopo_window_auc"]["experts_mae_fomaml"] == pytest.approx(
        table.loc["experts_mae_fomaml", "overall"], abs=1e-4)
    assert (tmp / "out" / "03_experts" / "expert_topomap.png").stat().st_size > 0
    metrics = json.loads((tmp / "out" / "02_mae" / "metrics.json").read_text())
    assert metrics["linear_probe_lopo_window_auc"]["mae_probe"] == pytest.approx(
        table.loc["mae_probe", "overall"], abs=1e-4)
    assert (tmp / "out" / "02_mae" / "encoder.pt").is_file()
    assert [c for c in table.columns if c.startswith("S")] == \
        [f"S{s}" for s in ds.train_ids()]
    for f in ("lopo_curves.png", "lopo_bars.png", "folds.json", "config.yaml", "report.md"):
        assert (tmp / "out" / f).stat().st_size > 0
    for f in ("lopo.csv", "lopo_curves.png", "summary.json", "report.md",
              "03_experts/expert_topomap.png"):
        assert (sub.parent / f).is_file()
    # the generated report: the table, every stage's evidence and run times
    report = (sub.parent / "report.md").read_text()
    for heading in ("## LOPO window AUC", "## Stage 00", "## Stage 01", "## Stage 02",
                    "## Stage 03", "## Stage 04", "## Stage 05", "## Stage 06",
                    "## Stage 07",
                    "## Run times"):
        assert heading in report, heading
    assert f"| {best} | " in report and "(03_experts/expert_topomap.png)" in report
    assert table.loc[best, "stage"] in ("baselines", "mae", "experts", "fusion", "rl",
                                        "ensemble")
    assert "(05_rl/learning_curves.png)" in report
    # stage 01's leakage alarm, with its base model's score on the true labels beside it
    assert re.search(r"- \*{0,2}`shuffled` \(`second_place` on shuffled labels\)", report)
    # stage 06: tuned and nested scores side by side; stage 07 says why it chose
    ens = json.loads((tmp / "out" / "06_ensemble" / "metrics.json").read_text())
    assert ens["nested"] == pytest.approx(table.loc["ensemble", "overall"], abs=1e-4)
    assert "| tuned |" in report and "| nested |" in report
    assert re.search(r"The ensemble's nested score [0-9.]+ .*(beats|does not beat)", stdout)


def test_metric_cli_prints_the_summary_score(smoke_run, small_dir):
    _, stdout = smoke_run
    summary_line = re.search(r"^window AUC: .*$", stdout, re.M).group(0)
    proc = subprocess.run([sys.executable, "-m", "sleepemo.metric", str(_submission(stdout)),
                           str(small_dir / "solution.csv")], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == summary_line


def test_rerun_skips_reproduces_and_keeps_earlier_submissions(smoke_run, small_dir):
    tmp, first = smoke_run
    table = (tmp / "out" / "lopo.csv").read_text()
    second = run_sh("--profile", "smoke", "--data-dir", small_dir, "--out", tmp / "out",
                    "--submissions", tmp / "subs", *SET_ARGS)
    assert "unchanged, reusing" in second
    assert (tmp / "out" / "lopo.csv").read_text() == table
    a, b = _submission(first), _submission(second)
    assert a != b and a.is_file() and b.is_file()
    assert a.read_bytes() == b.read_bytes()
    # from scratch in a new folder, stages 00, 01 and 07 only: the same rows of the table
    # (stages 02-06 are reproduced by their own tests: fold workers = serial, resume)
    fresh = tmp / "fresh"
    log = run_sh("--profile", "smoke", "--data-dir", small_dir, "--out", fresh,
                 "--submissions", tmp / "subs2", *SET_ARGS,
                 "--set", "baselines.models=[shuffled,starter]",
                 "--stages", "00,01,07")
    assert "== 02_mae" not in log and "== 07_submission" in log
    old = pd.read_csv(tmp / "out" / "lopo.csv", index_col="model")
    new = pd.read_csv(fresh / "lopo.csv", index_col="model")
    assert set(new.index) == {"shuffled", "starter"}
    # (the differences are to each run's own best single model: not the same rows)
    paired = ["diff_to_best", "diff_low", "diff_high"]
    pd.testing.assert_frame_equal(new.drop(columns=paired),
                                  old.loc[new.index].drop(columns=paired))


def test_bad_data_folder_fails_with_a_clear_message(tmp_path):
    (tmp_path / "training").mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([str(REPO / "run.sh"), "--profile", "smoke", "--data-dir",
                           str(tmp_path), "--out", str(tmp_path / "out")], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert f"error: {tmp_path / 'testing'}: missing folder 'testing/'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([str(REPO / "run.sh"), "--stages", "00,42"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--stages: no stage 42" in proc.stderr


def test_predict_reproduces_every_result_of_the_run(smoke_run, small_dir):
    """sleepemo predict on the test files of the finished run gives exactly every
    result's test predictions (no retraining): the LOPO results (baselines, both probes),
    stage 03's experts (zero-shot and adapted), stage 04's fusion, stage 05's heads and the
    ensemble."""
    import numpy as np
    import torch

    from sleepemo.pipeline.artefacts import results
    from sleepemo.data.reader import load_dataset
    from sleepemo.data.folds import read_folds
    from sleepemo.predict.base import Run
    from sleepemo.predict.load import load_predictor

    torch.set_num_threads(1)  # as the smoke stages ran (conftest restores it)
    tmp, _ = smoke_run
    out = tmp / "out"
    ds = load_dataset(small_dir, progress=False)
    folds = read_folds(out / "folds.json")
    run = Run.open(out)
    listed = results(out)
    for r in listed:
        p = load_predictor(out, r.label, run)
        got = np.concatenate([p.predict(ds.test[s].X, ds.sfreq, subject=s)
                              for s in folds.test_subjects])
        np.testing.assert_array_equal(got, r.test, err_msg=r.label)
    assert {"mae_probe", "band_probe", "starter", "riemann", "experts_mae_fomaml",
            "experts_mae_fomaml_tta", "fusion_raw", "fusion_experts", "rl_dqn", "rl_dqn_twin",
            "rl_sac", "rl_sac_twin", "ensemble"} <= {r.label for r in listed}


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def test_a_fold_workers_state_only_reads_the_run_folder(smoke_run, small_dir):
    """The storage rule of fold workers (sleepemo.pipeline.executor): what a worker builds
    before its first fold, each fold stage's ``fold_state``, writes nothing once the
    driver's has run (the stage runs it first), so workers on several machines never race
    on a cache: no file of the run folder is created, removed or rewritten. (It found that
    every worker of stage 03 rewrote the band features' ``settings.json``.)"""
    from sleepemo.pipeline.stage import Stage, spec

    tmp, _ = smoke_run
    out = tmp / "out"
    cfg = load_config("smoke", list(SETS))
    before = _tree(out)
    for name in ("experts", "fusion", "rl", "ensemble"):
        stage = Stage(cfg, small_dir, out, spec(name), progress=False, log=lambda m: None)
        state = stage.spec.trainer_module().fold_state(stage)
        assert state.folds.n_folds == 5
        after = _tree(out)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not changed, f"{name}'s fold_state wrote {changed}"
