"""Evoked-response baselines (xdawn_ts, erp_lda): shapes, label-free transforms, an
injected ERP effect is found under LOPO, permuted labels give chance, no held-out label
reaches a fit."""
from __future__ import annotations

import numpy as np
import pytest

from sleepemo import N_TIMES, SFREQ
from sleepemo.data.reader import load_dataset
from sleepemo.data.folds import make_folds
from sleepemo.baselines.lopo import run_lopo
from sleepemo.metric import window_auc
from sleepemo.baselines import make_model

#: (registry name, parameters) of every evoked model variant
VARIANTS = [("erp_lda", {}), ("xdawn_ts", {"recentre": True}),
            ("xdawn_ts", {"recentre": False})]
IDS = ["erp_lda", "xdawn_ts-recentre", "xdawn_ts-plain"]


def erp_data(n_subjects=6, n_per_class=40, amp=0.35, seed=0):
    """Per participant: white noise + an ERP common to both classes + in emotional trials
    an extra bump (``amp`` x a Gaussian at 400 ms, sd 40 ms, on a fixed topography)."""
    rng = np.random.default_rng(seed)
    t = np.arange(N_TIMES) / SFREQ
    common = (np.exp(-0.5 * ((t - 0.2) / 0.05) ** 2)
              - np.exp(-0.5 * ((t - 0.55) / 0.08) ** 2))
    bump = np.exp(-0.5 * ((t - 0.4) / 0.04) ** 2)
    topo = np.linspace(1.0, -0.5, 16)
    Xs, ys = [], []
    for _ in range(n_subjects):
        y = np.repeat([1, 0], n_per_class).astype(np.int8)
        gain = rng.uniform(0.5, 2.0, size=(16, 1))
        t_s = topo + 0.2 * rng.standard_normal(16)
        X = rng.standard_normal((len(y), 16, N_TIMES))
        X += 0.5 * np.outer(t_s, common)
        X += amp * y[:, None, None] * np.outer(t_s, bump)
        Xs.append((gain * X).astype(np.float32))
        ys.append(y)
    return Xs, ys


def lopo(name, params, Xs, ys, fit_labels=None):
    """Out-of-fold (n_trials, n_times) predictions of every participant; the models are
    fitted on ``fit_labels`` (default ``ys``)."""
    fit_labels = ys if fit_labels is None else fit_labels
    feats = [make_model(name, **params).transform(X, SFREQ) for X in Xs]
    preds = []
    for h in range(len(Xs)):
        m = make_model(name, random_state=h, **params)
        m.fit(feats[:h] + feats[h + 1:], fit_labels[:h] + fit_labels[h + 1:])
        p = m.predict_proba(feats[h])
        preds.append(np.broadcast_to(p[:, None], (len(p), N_TIMES)) if p.ndim == 1 else p)
    return preds


def score(ys, preds):
    return window_auc(dict(enumerate(ys)), dict(enumerate(preds)), SFREQ)


@pytest.mark.parametrize("name,params", VARIANTS, ids=IDS)
def test_shapes_and_range(name, params):
    rng = np.random.default_rng(0)
    Xs = [rng.standard_normal((12, 16, N_TIMES)).astype(np.float32) for _ in range(3)]
    ys = [np.repeat([1, 0], 6) for _ in Xs]
    model = make_model(name, **params)
    feats = [model.transform(X, SFREQ) for X in Xs]
    assert all(f.shape == (12, 16, 50) and f.dtype == np.float32 for f in feats)
    p = model.fit(feats[:2], ys[:2]).predict_proba(feats[2])
    assert p.shape == ((12,) if name == "xdawn_ts" else (12, N_TIMES))
    assert np.all(np.isfinite(p)) and p.min() >= 0 and p.max() <= 1


@pytest.mark.parametrize("name", ["xdawn_ts", "erp_lda"])
def test_transform_is_a_pure_label_free_function_of_one_participant(name):
    Xs, ys = erp_data(n_subjects=3, n_per_class=10)
    first = make_model(name).transform(Xs[0], SFREQ)
    other = make_model(name)  # a model that has transformed and fitted others first
    other.fit([other.transform(X, SFREQ) for X in Xs[1:]], ys[1:])
    np.testing.assert_array_equal(other.transform(Xs[0], SFREQ), first)
    perm = np.random.default_rng(0).permutation(len(Xs[0]))  # trial order is irrelevant
    np.testing.assert_allclose(other.transform(Xs[0][perm], SFREQ), first[perm],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,params", VARIANTS, ids=IDS)
def test_injected_evoked_effect_is_found_and_permuted_labels_score_chance(name, params):
    Xs, ys = erp_data()
    res = score(ys, lopo(name, params, Xs, ys))
    bump = res.curve[int(0.35 * SFREQ):int(0.45 * SFREQ)].mean()  # the effect's 100 ms
    assert res.score > 0.58 and bump > 0.75, f"{name} {params}: {res.score:.3f} {bump:.3f}"
    if name == "erp_lda":  # a real time course: it peaks at the effect
        assert 0.3 * SFREQ <= np.argmax(res.curve) <= 0.5 * SFREQ
    rng = np.random.default_rng(1)
    permuted = [rng.permutation(y) for y in ys]
    chance = score(ys, lopo(name, params, Xs, ys, fit_labels=permuted))
    mean = chance.curve.mean()
    assert abs(mean - 0.5) < 0.05, f"{name} {params}: {mean:.3f}"
    assert chance.score < 0.6


@pytest.mark.parametrize("name,params", VARIANTS, ids=IDS)
def test_held_out_labels_never_reach_fit(name, params, make_folder, tmp_path):
    """Flipping one training participant's labels changes every other participant's
    out-of-fold predictions (it trains their folds) but not its own."""
    # unequal class counts: make_folder seeds each file by its trial count
    ds = load_dataset(make_folder(train={2: (7, 9), 3: (9, 7), 4: (8, 10)}), progress=False)
    folds = make_folds(ds)
    quiet = dict(params=params, progress=False, log=lambda m: None)
    before = folds.split_rows(run_lopo(name, ds, folds, tmp_path / "a", "baselines",
                                       **quiet).oof)
    ds.train[3].y = 1 - ds.train[3].y
    after = folds.split_rows(run_lopo(name, ds, folds, tmp_path / "b", "baselines",
                                      **quiet).oof)
    np.testing.assert_array_equal(after[3], before[3])
    for s in (2, 4):
        assert not np.allclose(after[s], before[s]), f"participant {s}: labels ignored"
