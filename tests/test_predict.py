"""sleepemo predict: a finished run applied to new recordings, in batch and streaming."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sleepemo.predict.base import PredictError

from sleepemo.predict.stream import Stream

from sleepemo.predict.load import load_predictor

from sleepemo.predict.cli import predict_files, recordings

REPO = Path(__file__).resolve().parents[1]


def stage(script: str, data, out, *sets, subs=None):
    cmd = [sys.executable, str(REPO / "src" / script), "--profile", "smoke", "--data-dir",
           str(data), "--out", str(out), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    if subs:
        cmd += ["--submissions", str(subs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def small_run(small_dir, tmp_path_factory):
    """Stages 00, 01 (two fast baselines and a deep anchor, one epoch), 06 (their
    ensemble) and 07 on small data."""
    tmp = tmp_path_factory.mktemp("predict")
    out, subs = tmp / "out", tmp / "subs"
    sets = ["baselines.models=[riemann,erp_lda,eegnet]",
            "baselines.params={eegnet: {epochs: 1}}", "ensemble.top_k=3"]
    for script in ("00_folds.py", "01_baselines.py", "06_ensemble.py"):
        stage(script, small_dir, out, *sets)
    text = stage("07_submission.py", small_dir, out, *sets, subs=subs)
    sub = next(subs.rglob("submission.csv"))
    return out, sub, text


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sleepemo", "predict", *map(str, args)],
                          capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})


def test_cli_on_the_test_files_reproduces_the_submission_exactly(small_run, small_dir,
                                                                  tmp_path):
    out, sub, _ = small_run
    proc = run_cli("--run", out, "--out", tmp_path / "p", "--no-progress",
                   small_dir / "testing")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p" / "predictions.csv").read_bytes() == sub.read_bytes()
    assert {f.name for f in (tmp_path / "p").glob("S*.npy")} == \
        {f"S{s}.npy" for s in recordings([small_dir / "testing"])}
    again = run_cli("--run", out, "--out", tmp_path / "p", small_dir / "testing")
    assert again.returncode == 2 and "never overwritten" in again.stderr


def test_each_model_of_the_run_predicts_one_new_participant(small_run, small_dir):
    """A training participant's own files, as if new: every model of the run (the
    ensemble included) gives probabilities for every trial and timepoint."""
    out, _, _ = small_run
    files = list((small_dir / "training").rglob("S_2_cleaned.mat"))
    for model in ("riemann", "erp_lda", "eegnet", "ensemble"):
        res = predict_files(out, files[:1], model, progress=False)
        (p, warm), = res["predictions"].values()
        assert p.dtype == np.float32 and p.shape[1] == 200 and not warm.any()
        assert np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1


@pytest.mark.parametrize("model", ["ensemble", "eegnet"])
def test_a_result_reproduces_its_test_predictions_exactly(small_run, small_dir, model):
    """The ensemble, and a deep anchor (its fold models kept as weights, rebuilt when
    loaded), give the stage's test predictions bit for bit."""
    from sleepemo.pipeline.artefacts import find
    from sleepemo.data.folds import read_folds

    out, _, _ = small_run
    folds = read_folds(out / "folds.json")
    files = recordings([small_dir / "testing"])
    res = predict_files(out, [files[s] for s in folds.test_subjects], model,
                        progress=False)["predictions"]
    got = np.concatenate([res[s][0] for s in folds.test_subjects])
    np.testing.assert_array_equal(got, find(out, model).test)


def test_streaming_after_warm_up_is_close_to_batch(small_run, small_dir, reliability):
    """One trial at a time with online normalisation: after the warm-up, within 0.05 of
    the batch output on average and 0.25 at most (per trial, mean over timepoints); the
    warm-up trials are flagged; the last trial, normalised on every trial, equals the
    batch."""
    from sleepemo.data.reader import read_mat

    out, _, _ = small_run
    X = read_mat(sorted((small_dir / "testing").glob("*.mat"))[-1]).X[:60]
    p = load_predictor(out, "riemann")
    b = p.predict(X, 200.0)
    stream = Stream(p, 200.0, warmup=20)
    steps = [stream.push(x) for x in X]
    s = np.stack([st.probs for st in steps])
    warm = np.array([st.warm_up for st in steps])
    assert warm[:20].all() and not warm[20:].any()
    diff = np.abs(s - b)[20:].mean(1)
    assert diff.mean() < 0.05 and diff.max() < 0.25, (diff.mean(), diff.max())
    np.testing.assert_allclose(s[-1], b[-1], atol=1e-6)
    reliability("predict", "streaming one trial at a time (`riemann`, 60 trials of a "
                "test participant)", "after 20 warm-up trials mean |stream - batch| < 0.05, "
                "max per trial < 0.25; the last trial equals the batch output")


def test_online_streaming_computes_each_trial_alone(small_run, small_dir, monkeypatch,
                                                    reliability):
    """``erp_lda`` (its only per-participant step is a z-score) streams each trial alone
    with running statistics: its predictor is called with one trial per step, after the
    warm-up within 0.05 of the batch output on average, and its last trial (every trial's
    statistics, one level of normalisation) equals the batch output; ``riemann`` (a
    re-centring) is not online."""
    from sleepemo.data.reader import read_mat

    out, _, _ = small_run
    X = read_mat(sorted((small_dir / "testing").glob("*.mat"))[-1]).X[:60]
    p = load_predictor(out, "erp_lda")
    assert p.online and not load_predictor(out, "riemann").online
    b = p.predict(X, 200.0)
    sizes, predict = [], p.predict
    monkeypatch.setattr(p, "predict", lambda x, sfreq, subject=None: (
        sizes.append(len(x)), predict(x, sfreq, subject))[1])
    stream = Stream(p, 200.0, warmup=20)
    s = np.stack([stream.push(x).probs for x in X])
    assert sizes == [1] * len(X)
    diff = np.abs(s - b)[20:].mean(1)
    assert diff.mean() < 0.05 and diff.max() < 0.25, (diff.mean(), diff.max())
    np.testing.assert_allclose(s[-1], b[-1], atol=1e-6)
    reliability("predict", "streaming one trial at a time with running statistics "
                "(`erp_lda`, 60 trials of a test participant)", "each trial computed alone; "
                "after 20 warm-up trials mean |stream - batch| < 0.05, max per trial < 0.25; "
                "the last trial equals the batch output")


def test_online_normaliser_matches_the_batch_z_scores():
    """Running statistics over trials given one or several at a time: the newest trials
    are normalised as the batch z-score of every trial seen normalises them; each call
    site keeps its own statistics; a call site changing shape is an error."""
    from sleepemo.features import OnlineNormaliser, zscore_participant, zscore_trials

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (30, 4, 50, 2)).astype(np.float32)
    f = rng.normal(-1.0, 5.0, (30, 7))
    norm = OnlineNormaliser()
    for lo, hi in [(0, 1), (1, 2), (2, 12), (12, 30)]:
        with norm:
            zp, zt = zscore_participant(x[lo:hi]), zscore_trials(f[lo:hi])
        assert zp.dtype == np.float32
        np.testing.assert_allclose(zp, zscore_participant(x[:hi])[lo:hi], atol=1e-5)
        np.testing.assert_allclose(zt, zscore_trials(f[:hi])[lo:hi], atol=1e-10)
    np.testing.assert_allclose(zscore_participant(x), zscore_participant(x))  # outside: batch
    before = [m.copy() for _, m, _ in norm.stats]
    with pytest.raises(ValueError, match="online normalisation 1"), norm:
        zscore_participant(x[:1])
        zscore_trials(f[:1, :3])
    np.testing.assert_array_equal(norm.stats[0][1], before[0])  # the failed block undone


def test_a_trial_with_bad_samples_is_still_predicted(small_run, small_dir, tmp_path,
                                                     reliability):
    """NaN samples in a new recording: refused by the run's default policy with the
    setting named; with --bad-values interpolate repaired, recorded and every trial
    predicted (a fully bad trial included)."""
    import json

    from sleepemo.data.reader import read_mat
    from sleepemo.data.synth import write_mat73

    out, _, _ = small_run
    rec = read_mat(sorted((small_dir / "testing").glob("*.mat"))[0])
    X = rec.X.astype(np.float64)
    X[0, 3, 50:60] = np.nan
    X[1] = np.nan
    path = write_mat73(tmp_path / "new" / "test_subject_42.mat", X, rec.times)
    proc = run_cli("--no-progress", "--run", out, path)
    assert proc.returncode == 2 and "bad_values" in proc.stderr, proc.stderr
    proc = run_cli("--no-progress", "--run", out, "--bad-values", "interpolate",
                   "--out", tmp_path / "p", path)
    assert proc.returncode == 0, proc.stderr
    p = np.load(tmp_path / "p" / "S42.npy")
    assert p.shape == (len(X), 200) and np.isfinite(p).all()
    info = json.loads((tmp_path / "p" / "predict.json").read_text())
    assert info["participants"]["42"]["repaired_samples"] == 10 + X.shape[1] * X.shape[2]
    reliability("predict", "NaN samples in a new recording (10 in one trial, one trial "
                "all NaN)", "run's policy `error`: exit 2 naming data.bad_values; "
                "`--bad-values interpolate`: repaired, counted in predict.json, every trial "
                "predicted")


def test_stream_refuses_a_trial_of_the_wrong_shape(small_run):
    out, _, _ = small_run
    s = Stream(load_predictor(out, "riemann"), 200.0)
    with pytest.raises(PredictError, match="n_chans, n_times"):
        s.push(np.zeros(200))


def test_clear_errors(small_run, small_dir, tmp_path, reliability):
    out, _, _ = small_run
    cases = []
    q = "--no-progress"
    proc = run_cli(q, "--run", tmp_path, small_dir / "testing")
    cases.append(("a folder that is not a run", proc, "not a run folder"))
    proc = run_cli(q, "--run", out, "--model", "nope", small_dir / "testing")
    cases.append(("a model the run does not have", proc, "no result 'nope'"))
    odd = tmp_path / "recording one.mat"
    shutil.copy(next((small_dir / "testing").glob("*.mat")), odd)
    proc = run_cli(q, "--run", out, odd)
    cases.append(("a file named without a participant id", proc, "cannot tell the participant"))
    bad = tmp_path / "test_subject_99.mat"
    bad.write_bytes(b"not a mat file")
    proc = run_cli(q, "--run", out, bad)
    cases.append(("a corrupt recording", proc, "not a MATLAB file"))
    proc = run_cli(q, "--run", out, tmp_path / "missing.mat")
    cases.append(("a path that does not exist", proc, "no such file"))
    for case, proc, message in cases:
        assert proc.returncode == 2, (case, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (case, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, (case, proc.stderr)
        reliability("predict", case, f"exit code 2, one line: '{message}'")


def test_load_predictor_is_a_look_up_of_the_results_stage(tmp_path, monkeypatch):
    """Each stage's results go to its own predictor loader of the stage table; a stage
    without one, or a stage-01 result that is not a LOPO one, is a clear PredictError."""
    from sleepemo.pipeline.artefacts import Result
    from sleepemo.pipeline.stage import STAGES
    from sleepemo.predict import load
    from sleepemo.predict.base import Run

    run = Run(tmp_path, None, [], 200.0, 200, 5)
    found = {}
    monkeypatch.setattr(load, "find", lambda out, name: found[name])
    for s in STAGES:
        found[s.name] = Result(s.name, "m", tmp_path, {}, f"{s.name}_m")
        if s.predictor:
            monkeypatch.setattr(s.predictor_module(), "load",
                                lambda run_, result, s=s: ("loaded by", s.predictor, result))
            assert load.load_predictor(tmp_path, s.name, run) == \
                ("loaded by", s.predictor, found[s.name])
        else:
            with pytest.raises(PredictError, match="not supported.*supported: stage 01 "
                                                   "baselines, stage 02 mae"):
                load.load_predictor(tmp_path, s.name, run)
    monkeypatch.undo()
    monkeypatch.setattr(load, "find", lambda out, name: found[name])
    with pytest.raises(PredictError, match="not a LOPO result"):
        load.load_predictor(tmp_path, "baselines", run)
