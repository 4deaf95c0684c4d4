"""Synthetic data: real layout and counts, deterministic, and carrying the stated effect."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sleepemo.data.reader import load_dataset
from sleepemo.features import bandpass, hilbert_power
from sleepemo.data.synth import TEST_COUNTS, TRAIN_COUNTS, SynthConfig, _count, generate, main


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


# --------------------------------------------------------------------------- designs
@pytest.fixture(scope="module")
def evoked_dir(tmp_path_factory):
    """The evoked design with smoke_dir's seed and scale (seed 0, 10 % of the counts)."""
    return generate(tmp_path_factory.mktemp("data") / "evoked",
                    SynthConfig(seed=0, scale=0.1, design="evoked"), progress=False)


def _z(v: np.ndarray, y: np.ndarray) -> float:
    """Welch's z of the class difference (emotional - neutral) of a per-trial value."""
    a, b = v[y == 1], v[y == 0]
    return (a.mean() - b.mean()) / np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))


def _class_differences(root):
    """Per training participant: z of the low-passed (< 8 Hz) 450-650 ms waveform at
    Cz/C3/C4 and of the 350-650 ms fronto-central theta (4-8 Hz) log power; and the
    theta signs in synth.json (0 where the theta burst carries nothing)."""
    from scipy.signal import butter, sosfiltfilt

    ds = load_dataset(root, progress=False)
    truth = json.loads((root / "synth.json").read_text())["participants"]
    sos = butter(4, 8.0, "low", fs=ds.sfreq, output="sos")
    centre = [ds.ch_names.index(c) for c in ("Cz", "C3", "C4")]
    fronto_central = [ds.ch_names.index(c) for c in ("F3", "F4", "C3", "C4", "Cz")]
    z_wave, z_theta, theta_sign = [], [], []
    for sid, subj in ds.train.items():
        wave = sosfiltfilt(sos, subj.X[:, centre], axis=-1)[:, :, 90:130].mean((1, 2))
        theta = hilbert_power(bandpass(subj.X[:, fronto_central], ds.sfreq, (4, 8)))
        z_wave.append(_z(wave, subj.y))
        z_theta.append(_z(np.log(theta[:, :, 70:130].mean((1, 2))), subj.y))
        t = truth[str(sid)]
        theta_sign.append(0 if t.get("theta_effect", None) == 0 else t["sign"])
    return np.array(z_wave), np.array(z_theta), np.array(theta_sign)


def test_evoked_design_differs_from_theta_only_in_emotional_trials(smoke_dir, evoked_dir):
    """Same seed: neutral trials identical, emotional trials differ where the two effects
    sit (the evoked negativity and positivity), nothing else changes."""
    th, ev = (load_dataset(p, progress=False) for p in (smoke_dir, evoked_dir))
    cz = th.ch_names.index("Cz")
    for sid, a in th.train.items():
        b = ev.train[sid]
        np.testing.assert_array_equal(a.y, b.y)
        np.testing.assert_array_equal(a.trialinfo, b.trialinfo)
        np.testing.assert_array_equal(a.X[a.y == 0], b.X[b.y == 0])
        d = (b.X - a.X)[a.y == 1]
        assert np.abs(d[:, :, :40]).max() < 1.0, sid           # 0-200 ms: nothing (µV)
        mean_cz = d[:, cz].mean(0)                               # the theta part averages out
        assert 500 <= 5 * mean_cz.argmin() <= 700, (sid, 5 * mean_cz.argmin())
        assert 5 * mean_cz.argmax() >= 850, (sid, 5 * mean_cz.argmax())
        assert mean_cz.min() < -3.0, sid                         # a stronger negativity
    sol_th, sol_ev = (pd.read_csv(p / "solution.csv") for p in (smoke_dir, evoked_dir))
    pd.testing.assert_frame_equal(sol_th, sol_ev)
    for sid, a in th.test.items():
        y = sol_th[sol_th.subject == sid].sort_values("trial").label.to_numpy()
        np.testing.assert_array_equal(a.X[y == 0], ev.test[sid].X[y == 0])
        assert not np.array_equal(a.X[y == 1], ev.test[sid].X[y == 1])
    meta_th, meta_ev = (json.loads((p / "synth.json").read_text()) for p in (smoke_dir,
                                                                             evoked_dir))
    assert {k for k in meta_th["config"] if meta_th["config"][k] != meta_ev["config"][k]} \
        == {"design"}
    lo, hi = SynthConfig().evoked_effect
    for sid, t in meta_ev["participants"].items():
        assert t["theta_freq"] == meta_th["participants"][sid]["theta_freq"]
        assert t["theta_effect"] == 0 and t["sign"] == 1 and lo <= t["evoked_effect"] <= hi
        assert t["effect"] == t["evoked_effect"] and t["evoked_shift_ms"] == 20.0


def test_each_design_carries_its_effect_and_not_the_other(smoke_dir, evoked_dir):
    """Evoked design: the low-passed 450-650 ms waveform differs between the classes with
    the same sign in (nearly) every training participant, theta power does not differ
    beyond noise. Theta design: the reverse."""
    n = 14
    z_wave, z_theta, sign = _class_differences(evoked_dir)
    assert (sign == 0).all()
    assert np.sum(z_wave < 0) >= 12, f"negativity larger in only {np.sum(z_wave < 0)} of 14"
    assert z_wave.sum() / np.sqrt(n) < -4.0           # Stouffer's z over participants
    assert abs(z_theta.sum() / np.sqrt(n)) < 3.0      # theta power: chance
    z_wave, z_theta, sign = _class_differences(smoke_dir)
    assert (np.abs(sign) == 1).all()
    assert abs(z_wave.sum() / np.sqrt(n)) < 3.0       # waveform: chance
    assert np.sum(np.sign(z_theta) == sign) >= 11     # theta power, each participant's sign
    assert (z_theta * sign).sum() / np.sqrt(n) > 4.0


def test_design_is_validated_and_names_its_folder(tmp_path):
    from sleepemo.data.location import synthetic_dir
    from sleepemo.config import ConfigError, load_config

    with pytest.raises(ValueError, match=r"design must be one of \('theta', 'evoked'\)"):
        SynthConfig(design="alpha")
    with pytest.raises(ConfigError, match="data.synthetic_design must be theta or evoked"):
        load_config("smoke", ["data.synthetic_design=alpha"])
    names = {}
    for design in ("theta", "evoked"):
        for scale, seed in ((1.0, 0), (0.1, 0), (1.0, 3)):
            cfg = load_config("smoke", [f"data.synthetic_design={design}",
                                        f"data.synthetic_scale={scale}",
                                        f"data.synthetic_seed={seed}", "data.input_dir=in"])
            names[design, scale, seed] = synthetic_dir(cfg).as_posix()
    # the theta design's folders keep today's names; every setting has its own folder
    assert names["theta", 1.0, 0] == "in/synthetic"
    assert names["theta", 0.1, 0] == "in/synthetic-scale0.1-seed0"
    assert names["evoked", 1.0, 0] == "in/synthetic-evoked"
    assert names["evoked", 1.0, 3] == "in/synthetic-evoked-scale1-seed3"
    assert len(set(names.values())) == len(names)
    assert load_config("smoke").data.synthetic_design == "theta"


def test_cli_design_and_an_older_folder_is_reused(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "ev"), "--scale", "0.02", "--design", "evoked"]) == 0
    meta = json.loads((tmp_path / "ev" / "synth.json").read_text())
    assert meta["config"]["design"] == "evoked"
    assert all("evoked_effect" in t for t in meta["participants"].values())
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--design", "alpha"])
    # a theta folder written before the designs existed (no design keys) is still reused
    out = generate(tmp_path / "old", SynthConfig(seed=0, scale=0.02), progress=False)
    meta = json.loads((out / "synth.json").read_text())
    for key in ("design", "evoked_effect", "evoked_shift"):
        del meta["config"][key]
    (out / "synth.json").write_text(json.dumps(meta))
    assert generate(out, SynthConfig(seed=0, scale=0.02), progress=False) == out
    with pytest.raises(FileExistsError):
        generate(out, SynthConfig(seed=0, scale=0.02, design="evoked"), progress=False)
