"""The bad-values policy (config ``data.bad_values``): NaN/Inf samples stop the run with a
clear error (``error``, the default) or are repaired along time (``interpolate``), and the
repairs reach the run's evidence (stage 00's ``repairs.csv``) and the data fingerprint."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from sleepemo import CHANNELS, N_TIMES, SFREQ
from sleepemo.config import ConfigError, load_config
from sleepemo.data.reader import DataError, Repair, load_dataset, read_mat, repair_bad_values
from sleepemo.data.folds import data_fingerprint, make_folds
from sleepemo.pipeline.stage import open_stage
from sleepemo.pipeline import folds as stage00
from sleepemo.data.synth import write_mat73

from conftest import random_trials

TIMES = np.arange(N_TIMES) / SFREQ
AREA = "bad values"


def _with_nans(path, n_trials=4):
    """A file whose trial 1 has NaN/Inf in two channels and trial 3 is all NaN."""
    X = random_trials(n_trials)
    X[1, 0, 10:13] = np.nan
    X[1, 5, 0] = np.inf
    X[3] = np.nan
    return write_mat73(path, X, TIMES), X


def test_policy_error_names_the_file_the_trials_and_the_setting(tmp_path, reliability):
    path, _ = _with_nans(tmp_path / "S_2_cleaned.mat")
    with pytest.raises(DataError) as e:
        read_mat(path)  # the default policy
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path))
    assert "3204 NaN/Inf values in 'data/trial' (trials [1, 3])" in msg
    assert "data.bad_values=interpolate" in msg
    reliability(AREA, "NaN/Inf samples in two trials, policy data.bad_values=error",
                "one-line DataError naming the file, the trials and the setting that repairs")


def test_interpolate_repairs_exactly(reliability):
    X = np.zeros((3, 3, 8), np.float32)
    X[0, 0] = [np.nan, np.nan, 2, 3, np.nan, np.nan, 9, np.inf]  # edges and a gap
    X[0, 1] = [1, 1, 1, 1, 1, 1, 1, 1]
    X[0, 2] = [np.nan] * 8                                      # a dead channel
    X[1] = np.arange(24).reshape(3, 8)                          # untouched
    X[2] = np.nan                                               # a dead trial
    fixed, repairs = repair_bad_values(X, "f.mat", ("A", "B", "C"))
    np.testing.assert_array_equal(fixed[0, 0], [2, 2, 2, 3, 5, 7, 9, 9])
    np.testing.assert_array_equal(fixed[0, 1], X[0, 1])
    # channel C: the mean of A (as repaired) and B at each time
    np.testing.assert_array_equal(fixed[0, 2], [1.5, 1.5, 1.5, 2, 3, 4, 5, 5])
    np.testing.assert_array_equal(fixed[1], X[1])
    np.testing.assert_array_equal(fixed[2], 0)
    assert np.isnan(X[0, 0, 0])  # the input is not changed in place
    assert repairs == [Repair("f.mat", 0, "A", 5, "linear"),
                       Repair("f.mat", 0, "C", 8, "channel mean"),
                       Repair("f.mat", 2, "A", 8, "zero"), Repair("f.mat", 2, "B", 8, "zero"),
                       Repair("f.mat", 2, "C", 8, "zero")]
    reliability(AREA, "NaN/Inf at a trial's edges and in a gap, a channel all NaN, a trial "
                "all NaN (policy interpolate)", "linear interpolation along time (nearest "
                "valid value at the edges), other channels' mean, zeros; exact values checked")


def test_interpolate_keeps_a_fully_bad_test_trial(make_folder, reliability):
    root = make_folder(train={2: (3, 4), 3: (4, 3)}, test={1: 5})
    test_file = root / "testing" / "test_subject_1.mat"
    _, X = _with_nans(test_file, n_trials=5)
    ds = load_dataset(root, progress=False, bad_values="interpolate")
    subj = ds.test[1]
    assert subj.n_trials == 5 and np.isfinite(subj.X).all()
    np.testing.assert_array_equal(subj.X[3], 0)  # every sample of every channel was NaN
    np.testing.assert_allclose(subj.X[[0, 2, 4]], X[[0, 2, 4]], rtol=1e-6)
    assert {(r.file, r.trial) for r in ds.repairs} == {(str(test_file), 1),
                                                       (str(test_file), 3)}
    assert sum(r.samples for r in ds.repairs) == 3 + 1 + 16 * N_TIMES
    reliability(AREA, "a test trial with every sample NaN (policy interpolate)",
                "still in the dataset (same trial count, so it is predicted), all values "
                "finite")


def test_the_fingerprint_changes_with_the_policy_only_when_values_were_repaired(make_folder):
    clean = make_folder(root=None)
    assert make_folds(load_dataset(clean, progress=False, bad_values="interpolate")) \
        .data_fingerprint == data_fingerprint(clean)  # nothing repaired: caches stay valid
    _with_nans(clean / "training" / "sleep_neu" / "S_3_cleaned.mat")
    ds = load_dataset(clean, progress=False, bad_values="interpolate")
    assert ds.repairs and make_folds(ds).data_fingerprint != data_fingerprint(clean)


def test_stage00_writes_the_repair_table_and_its_evidence(make_folder, tmp_path, reliability):
    root = make_folder()
    bad, _ = _with_nans(root / "training" / "sleep_emo" / "S_2_cleaned.mat")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="data.bad_values=interpolate") as e:
        open_stage("folds", load_config("smoke"), root, out, progress=False).run(stage00.run)
    assert str(bad) in str(e.value) and not (out / "folds.json").exists()

    cfg = load_config("smoke", ["data.bad_values=interpolate"])
    stage = open_stage("folds", cfg, root, out, progress=False)
    output = stage.run(stage00.run)
    with open(out / "00_folds" / "repairs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["trial"], r["channel"], r["samples"], r["method"]) for r in rows] == \
        [("1", CHANNELS[0], "3", "linear"), ("1", CHANNELS[5], "1", "linear")] + \
        [("3", ch, str(N_TIMES), "zero") for ch in CHANNELS]
    assert {r["file"] for r in rows} == {str(bad)}
    evidence = (out / "00_folds" / "evidence.md").read_text()
    assert (f"{4 + 16 * N_TIMES} NaN/Inf samples repaired in 18 (trial, channel) pairs of "
            "2 trials in 1 files") in evidence
    assert output.metrics["repaired_samples"] == 4 + 16 * N_TIMES
    reliability(AREA, "stage 00 on data with NaN/Inf, policy error then interpolate",
                "error: DataError naming the file and setting, no folds.json; interpolate: "
                "00_folds/repairs.csv lists every repaired (file, trial, channel) and the "
                "evidence counts them")


def test_an_unknown_policy_is_refused():
    with pytest.raises(ConfigError, match="data.bad_values must be one of error, "
                                          "interpolate, not 'drop'"):
        load_config("smoke", ["data.bad_values=drop"])
