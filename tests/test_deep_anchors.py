"""The braindecode anchors (stage 01: eegnet, shallow_fbcsp, conformer) and Euclidean
alignment: the alignment is label-free and whitens each participant; an injected evoked
effect is found under LOPO and permuted labels give chance; a label-shuffled LOPO run
scores about 0.5; no held-out label reaches a fold's fit; the per-timepoint output
follows the effect in time."""
from __future__ import annotations

import numpy as np
import pytest

from sleepemo import N_TIMES, SFREQ
from sleepemo import features as F
from sleepemo.baselines import make_model
from sleepemo.baselines.lopo import run_lopo
from sleepemo.data.folds import make_folds
from sleepemo.data.reader import load_dataset
from sleepemo.pipeline.artefacts import score_oof
from test_evoked_baselines import erp_data, lopo, score

#: fast settings for the tests' small data: enough optimiser steps on a few hundred trials
FAST = {"epochs": 8, "batch_size": 32, "lr": 3e-3}
ANCHORS = [("eegnet", {}), ("eegnet", {"align": "euclidean"}), ("shallow_fbcsp", {})]
IDS = ["eegnet", "eegnet-ea", "shallow_fbcsp"]


def test_euclidean_alignment_whitens_each_participant_from_its_own_trials():
    rng = np.random.default_rng(0)
    # a participant's own channel gains and mixing (well conditioned: eps stays negligible)
    A = np.diag(rng.uniform(0.5, 3.0, 16)) + 0.1 * rng.standard_normal((16, 16))
    X = np.einsum("cd,ndt->nct", A, rng.standard_normal((30, 16, N_TIMES)))
    Z = F.euclidean_align(X)
    assert Z.shape == X.shape and Z.dtype == np.float64
    R = np.einsum("nct,ndt->cd", Z, Z) / (Z.shape[0] * Z.shape[2])
    np.testing.assert_allclose(R, np.eye(16), atol=1e-4)  # up to the eps regularisation
    assert F.euclidean_align(X.astype(np.float32)).dtype == np.float32
    # a function of the participant's own trials only: the same trials, the same output
    np.testing.assert_array_equal(F.euclidean_align(X), Z)
    # and not a no-op: the unaligned covariance is far from the identity
    R0 = np.einsum("nct,ndt->cd", X, X) / (X.shape[0] * X.shape[2])
    assert np.abs(R0 - np.eye(16)).max() > 1.0
    with pytest.raises(ValueError, match="n_trials, n_chans, n_times"):
        F.euclidean_align(X[0])


@pytest.mark.parametrize("name,params", [ANCHORS[0], ANCHORS[2]], ids=[IDS[0], IDS[2]])
def test_injected_evoked_effect_is_found_and_permuted_labels_score_chance(name, params):
    Xs, ys = erp_data(n_subjects=5, n_per_class=40, amp=1.0)
    params = {**FAST, **params}
    found = score(ys, lopo(name, params, Xs, ys))
    bump = found.curve[int(0.35 * SFREQ):int(0.45 * SFREQ)].mean()  # the effect's 100 ms
    rng = np.random.default_rng(1)
    permuted = [rng.permutation(y) for y in ys]
    chance = score(ys, lopo(name, params, Xs, ys, fit_labels=permuted))
    print(f"{name} {params}: {found.score:.3f} (bump {bump:.3f}), permuted "
          f"{chance.score:.3f} (mean {chance.curve.mean():.3f})")
    assert found.score > 0.6 and bump > 0.7
    # 5 participants x 80 trials: one permutation's AUC curves spread about +-0.05
    assert abs(chance.curve.mean() - 0.5) < 0.07 and chance.score < 0.6


def test_the_per_timepoint_output_follows_the_effect_in_time():
    """The injected bump sits at 400 ms: the per-timepoint model's AUC curve peaks near
    it, while the trial output (one value per trial) has a flat curve."""
    Xs, ys = erp_data(n_subjects=5, n_per_class=40, amp=1.0)
    curve = score(ys, lopo("eegnet", FAST, Xs, ys)).curve
    peak_ms = np.argmax(curve) / SFREQ * 1000
    assert 300 <= peak_ms <= 500, peak_ms
    assert curve[int(0.4 * SFREQ)] > curve[:20].mean() + 0.1
    flat = score(ys, lopo("eegnet", {**FAST, "output": "trial"}, Xs, ys)).curve
    assert np.ptp(flat) == 0


@pytest.mark.parametrize("name,params", ANCHORS[:2], ids=IDS[:2])
def test_held_out_labels_never_reach_fit(name, params, make_folder, tmp_path):
    """Flipping one training participant's labels changes the other participants'
    out-of-fold predictions (it trains their folds) but not its own."""
    ds = load_dataset(make_folder(train={2: (7, 9), 3: (9, 7), 4: (8, 10)}), progress=False)
    folds = make_folds(ds)
    quiet = dict(params={**FAST, **params}, progress=False, log=lambda m: None)
    before = folds.split_rows(run_lopo(name, ds, folds, tmp_path / "a", "baselines",
                                       **quiet).oof)
    ds.train[3].y = 1 - ds.train[3].y
    after = folds.split_rows(run_lopo(name, ds, folds, tmp_path / "b", "baselines",
                                      **quiet).oof)
    np.testing.assert_array_equal(after[3], before[3])
    for s in (2, 4):
        assert not np.allclose(after[s], before[s]), f"participant {s}: labels ignored"


@pytest.mark.parametrize("base", ["eegnet", "shallow_fbcsp"])
def test_label_shuffled_anchor_scores_about_chance(small_dir, tmp_path, base):
    """Leakage alarm for the anchors: labels permuted within each training participant,
    the held-out one scored with its true labels -> about 0.5."""
    ds = load_dataset(small_dir, progress=False)
    folds = make_folds(ds)
    res = run_lopo("shuffled", ds, folds, tmp_path / base, "baselines",
                   params={"base": base, "base_params": {"epochs": 2}},
                   progress=False, log=lambda m: None)
    score_ = score_oof(res.oof, ds, folds).score
    print(f"shuffled {base}: {score_:.4f}")
    assert abs(score_ - 0.5) <= 0.04, f"shuffled {base} scored {score_:.4f}"


@pytest.mark.parametrize("name,align", [("riemann", a) for a in ("recentre", "euclidean",
                                                                  "none")]
                         + [("xdawn_ts", a) for a in ("none", "euclidean")])
def test_covariance_baselines_align_each_participant_without_labels(name, align):
    """The covariance baselines' alignment options: a function of one participant's
    trials; an unknown option is refused where it is used."""
    X = np.random.default_rng(2).standard_normal((12, 16, N_TIMES)).astype(np.float32)
    model = make_model(name, align=align)
    a, b = model.transform(X, SFREQ), model.transform(X.copy(), SFREQ)
    np.testing.assert_array_equal(a, b)
    other = make_model(name, align="euclidean" if align != "euclidean" else "none")
    assert not np.allclose(other.transform(X, SFREQ), a)
    with pytest.raises(ValueError, match="align must be one of"):
        make_model(name, align="bogus").transform(X, SFREQ)


@pytest.mark.parametrize("name", ["eegnet", "shallow_fbcsp", "conformer"])
def test_a_fit_gives_the_same_weights_wherever_its_buffers_sit(name):
    """oneDNN is on (about 2x faster steps); a convolution whose weight gradient depends
    on the input buffer's alignment would make a resumed or distributed fold differ from
    an uninterrupted one. ShallowFBCSPNet's first layer as braindecode writes it did (this
    test failed for it); here every anchor is refitted with other allocations in between
    and must give the same bits."""
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((40, 16, 100)).astype(np.float32) for _ in range(2)]
    y = [rng.integers(0, 2, 40) for _ in range(2)]

    def weights(shift):
        keep = [np.empty(shift, np.float32) for _ in range(3)]  # moves later buffers
        m = make_model(name, random_state=0, epochs=2, batch_size=16).fit(X, y)
        del keep
        return [v.detach().numpy().copy() for v in m.net_.state_dict().values()]

    ref = weights(1)
    for shift in (3, 77, 1001, 4097):
        assert all(np.array_equal(a, b) for a, b in zip(ref, weights(shift))), shift
