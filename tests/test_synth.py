"""Synthetic data: real layout and counts, deterministic, and carrying the stated effect."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sleepemo.data import load_dataset
from sleepemo.features import bandpass, hilbert_power
from sleepemo.synth import TEST_COUNTS, TRAIN_COUNTS, SynthConfig, _count, generate, main


def test_real_layout_and_counts_at_full_scale():
    cfg = SynthConfig(scale=1.0)
    assert sum(_count(a, cfg) + _count(b, cfg) for a, b in TRAIN_COUNTS.values()) == 10209
    assert sum(_count(a, cfg) for a, _ in TRAIN_COUNTS.values()) == 5038
    assert sum(_count(n, cfg) for n in TEST_COUNTS.values()) == 1734
    assert sorted(TRAIN_COUNTS) == [2, 3, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16, 17]
    assert TEST_COUNTS == {1: 372, 7: 479, 12: 883}


def test_folder_matches_the_competition_layout(smoke_dir):
    names = sorted(p.relative_to(smoke_dir).as_posix() for p in smoke_dir.rglob("*.mat"))
    assert names[:3] == ["testing/test_subject_1.mat", "testing/test_subject_12.mat",
                         "testing/test_subject_7.mat"]
    emo = [n for n in names if n.startswith("training/sleep_emo/")]
    neu = [n for n in names if n.startswith("training/sleep_neu/")]
    assert [n.split("/")[-1] for n in emo] == [n.split("/")[-1] for n in neu]
    assert len(emo) == 14 and "training/sleep_emo/S_13_cleaned.mat" in emo
    ds = load_dataset(smoke_dir, progress=False)
    assert ds.n_times == 200 and ds.sfreq == 200.0 and ds.n_chans == 16
    sol = pd.read_csv(smoke_dir / "solution.csv")
    assert list(sol.columns) == ["subject", "trial", "label"]
    for sid, subj in ds.test.items():
        assert (sol.subject == sid).sum() == subj.n_trials
    # trialinfo holds cue ids 1-4, unrelated to the class
    cues = np.concatenate([s.trialinfo[:, 0] for s in ds.train.values()])
    assert set(np.unique(cues)) == {1, 2, 3, 4}


def test_deterministic_by_seed(tmp_path):
    a = generate(tmp_path / "a", SynthConfig(seed=3, scale=0.03), progress=False)
    b = generate(tmp_path / "b", SynthConfig(seed=3, scale=0.03), progress=False)
    c = generate(tmp_path / "c", SynthConfig(seed=4, scale=0.03), progress=False)
    da, db, dc = (load_dataset(p, progress=False) for p in (a, b, c))
    np.testing.assert_array_equal(da.train[5].X, db.train[5].X)
    np.testing.assert_array_equal(da.test[12].X, db.test[12].X)
    assert not np.allclose(da.train[5].X, dc.train[5].X)
    assert (a / "solution.csv").read_text() == (b / "solution.csv").read_text()


def test_existing_folder_is_reused_or_refused(tmp_path):
    out = generate(tmp_path / "s", SynthConfig(seed=0, scale=0.03), progress=False)
    stamp = (out / "synth.json").stat().st_mtime_ns
    generate(out, SynthConfig(seed=0, scale=0.03), progress=False)  # same settings: kept
    assert (out / "synth.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="not made with these settings"):
        generate(out, SynthConfig(seed=1, scale=0.03), progress=False)


def test_cli_writes_cell_format(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "cli"), "--scale", "0.02", "--format", "cell"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    ds = load_dataset(tmp_path / "cli", progress=False)
    assert ds.train[2].X.shape[1:] == (16, 200)


def test_theta_effect_has_each_participants_sign(medium_dir):
    """Emotional trials differ in 350-650 ms theta power, with the sign in synth.json."""
    ds = load_dataset(medium_dir, progress=False)
    truth = json.loads((medium_dir / "synth.json").read_text())["participants"]
    agree = 0
    for sid, subj in ds.train.items():
        p = np.log(hilbert_power(bandpass(subj.X, ds.sfreq, (4, 8)))[:, :, 70:130].mean(-1))
        fronto_central = [ds.ch_names.index(c) for c in ("F3", "F4", "C3", "C4", "Cz")]
        d = p[subj.y == 1][:, fronto_central].mean() - p[subj.y == 0][:, fronto_central].mean()
        agree += np.sign(d) == np.sign(truth[str(sid)]["effect"])
    assert agree >= 12, f"effect sign recovered for only {agree} of 14 participants"
    # and the signs differ between participants, 8 up and 6 down
    assert sorted(truth[str(s)]["sign"] for s in ds.train) == [-1] * 6 + [1] * 8
