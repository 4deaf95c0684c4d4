"""LOPO folds and runner: no held-out label reaches a fitted object; resume; leakage alarm."""
from __future__ import annotations

import numpy as np
import pytest

from sleepemo import baselines as models
from sleepemo.errors import InputError
from sleepemo.data.reader import load_dataset
from sleepemo.data.folds import make_folds, read_folds, write_folds
from sleepemo.pipeline.artefacts import score_oof
from sleepemo.baselines.lopo import run_lopo
from sleepemo.baselines.stage import alarm_power
from sleepemo.config import load_config
from sleepemo.baselines.models import BaselineModel, SecondPlace


@pytest.fixture(scope="module")
def smoke(smoke_dir):
    ds = load_dataset(smoke_dir, progress=False)
    return ds, make_folds(ds)


def test_one_fold_per_training_participant(smoke, tmp_path):
    ds, _ = smoke
    folds, written = write_folds(ds, tmp_path / "folds.json")
    assert written and folds.n_folds == 14
    assert [folds.held_out(k) for k in range(14)] == ds.train_ids()
    for k in range(14):
        assert folds.held_out(k) not in folds.train_of(k)
        assert len(folds.train_of(k)) == 13
    again, written = write_folds(ds, tmp_path / "folds.json")  # written once, then kept
    assert not written and again == read_folds(tmp_path / "folds.json")


def test_folds_refuse_other_data(smoke, tmp_path, make_folder):
    ds, _ = smoke
    write_folds(ds, tmp_path / "folds.json")
    other = load_dataset(make_folder(), progress=False)
    with pytest.raises(FileExistsError, match="made for other data"):
        write_folds(other, tmp_path / "folds.json")
    with pytest.raises(InputError, match="made for other data"):  # one line, exit 2
        read_folds(tmp_path / "folds.json").check(other)


class Spy(BaselineModel):
    """Features = each trial's first sample (a unique tag); records what fit() sees."""

    calls: list = []

    def transform(self, X, sfreq):
        return X[:, 0, :1].astype(np.float64)

    def fit(self, feats, labels):
        Spy.calls.append((np.concatenate(feats).ravel(), np.concatenate(labels)))
        return self

    def predict_proba(self, feats):
        return np.full(len(feats), 0.5)


def test_no_held_out_label_reaches_fit(smoke, tmp_path, monkeypatch):
    ds, folds = smoke
    monkeypatch.setitem(models.REGISTRY, "spy", Spy)
    Spy.calls = []
    run_lopo("spy", ds, folds, tmp_path, "baselines", progress=False, log=lambda m: None)
    assert len(Spy.calls) == folds.n_folds
    for k, (tags, labels) in enumerate(Spy.calls):
        held = ds.train[folds.held_out(k)]
        assert not np.isin(held.X[:, 0, 0], tags).any(), f"fold {k} saw held-out trials"
        expected = sum(ds.train[s].n_trials for s in folds.train_of(k))
        assert len(tags) == len(labels) == expected
        test_tags = np.concatenate([t.X[:, 0, 0] for t in ds.test.values()])
        assert not np.isin(test_tags, tags).any(), f"fold {k} saw test trials"


def test_oof_and_test_shapes(smoke, tmp_path):
    ds, folds = smoke
    res = run_lopo("constant", ds, folds, tmp_path, "baselines", progress=False,
                   log=lambda m: None)
    n_train = sum(s.n_trials for s in ds.train.values())
    n_test = sum(s.n_trials for s in ds.test.values())
    assert res.oof.shape == (n_train, 200) and res.test.shape == (n_test, 200)
    assert res.folder == tmp_path / "01_baselines" / "constant"
    assert res.meta["arrays"] == ["oof", "test"] and res.meta["diagnostic"]
    assert score_oof(res.oof, ds, folds).score == 0.5 == res.score()[0].score


def test_killed_run_resumes_with_the_same_result(smoke, tmp_path, monkeypatch):
    ds, folds = smoke
    quiet = dict(progress=False, log=lambda m: None)
    full = run_lopo("second_place", ds, folds, tmp_path / "full", "baselines", **quiet)

    n_fits = []
    original = SecondPlace.fit

    def killed_after_four(self, feats, labels):
        n_fits.append(1)
        if len(n_fits) == 5:
            raise KeyboardInterrupt  # as if the process were stopped in fold 4
        return original(self, feats, labels)

    monkeypatch.setattr(SecondPlace, "fit", killed_after_four)
    with pytest.raises(KeyboardInterrupt):
        run_lopo("second_place", ds, folds, tmp_path / "resumed", "baselines", **quiet)
    folder = tmp_path / "resumed" / "01_baselines" / "second_place"
    assert sorted(p.name for p in folder.glob("fold*.npz")) == \
        [f"fold{k}.npz" for k in range(4)]
    assert not (folder / "oof.npy").exists() and not (folder / "meta.json").exists()

    n_fits.clear()
    monkeypatch.setattr(SecondPlace, "fit", lambda self, f, y: (n_fits.append(1),
                                                                original(self, f, y))[1])
    resumed = run_lopo("second_place", ds, folds, tmp_path / "resumed", "baselines", **quiet)
    assert len(n_fits) == folds.n_folds - 4  # the four finished folds were not refitted
    np.testing.assert_array_equal(resumed.oof, full.oof)
    np.testing.assert_array_equal(resumed.test, full.test)

    n_fits.clear()  # unchanged inputs and config: the whole model is skipped
    run_lopo("second_place", ds, folds, tmp_path / "resumed", "baselines", **quiet)
    assert n_fits == []


#: the shuffled alarm's base model: one that learns on evoked_dir (see below)
ALARM_BASE = "erp_lda"


def _evoked_lopo(evoked_dir, out, name, **params):
    ds = load_dataset(evoked_dir, progress=False)
    folds = make_folds(ds)
    res = run_lopo(name, ds, folds, out, "baselines", params=params or None, progress=False,
                   log=lambda m: None)
    return score_oof(res.oof, ds, folds).score


def test_label_shuffled_run_scores_about_chance(evoked_dir, tmp_path):
    """Leakage alarm: labels permuted within each training participant -> about 0.5.

    The alarm must be able to ring: on this data (:func:`conftest.evoked_dir`) the base
    model learns the labels as they are (ERP-LDA 0.740,
    :func:`test_the_alarms_base_model_learns_the_true_labels`), so a shuffled run that
    got the true labels all the same would score far above 0.5. Shuffled it scored 0.511.
    (It used to run second_place and starter on medium_dir, where they learn nothing
    with the true labels either: 0.500 and 0.512.)"""
    score = _evoked_lopo(evoked_dir, tmp_path, "shuffled", base=ALARM_BASE)
    print(f"shuffled {ALARM_BASE}: {score:.4f}")
    assert abs(score - 0.5) <= 0.03, f"shuffled {ALARM_BASE} scored {score:.4f}"


@pytest.mark.slow
def test_the_alarms_base_model_learns_the_true_labels(evoked_dir, tmp_path):
    """What makes the alarm above able to fail: the same LOPO run with the labels as
    they are scores well above chance (0.740; other bases on this data: xdawn_ts 0.910,
    riemann 0.539, starter 0.536, second_place 0.511)."""
    score = _evoked_lopo(evoked_dir, tmp_path, ALARM_BASE)
    print(f"{ALARM_BASE} on the true labels: {score:.4f}")
    assert score > 0.65, score


def _alarms(scores: dict, *sets: str) -> list[str]:
    return alarm_power(load_config("smoke", list(sets)).baselines, scores)


def test_stage01_says_whether_its_leakage_alarm_could_ring():
    """The evidence puts the shuffled model's base beside it: an alarm whose base learns
    nothing (second_place on the evoked data: 0.502) shows nothing, and says which model
    to wrap instead; one whose base learns is silent evidence; one off 0.5 is a warning."""
    scores = {"constant": 0.5, "shuffled": 0.5037, "starter": 0.5076, "second_place": 0.5018,
              "riemann": 0.5113, "xdawn_ts": 0.7126, "erp_lda": 0.5904}
    [line] = _alarms(scores)
    assert "shows nothing" in line and "0.5018" in line
    assert "baselines.params={shuffled: {base: xdawn_ts}}" in line
    [line] = _alarms(scores | {"second_place": 0.66})
    assert "silent" in line and "0.6600" in line
    warned = []
    [line] = alarm_power(load_config("smoke").baselines,
                         scores | {"shuffled": 0.56, "second_place": 0.66}, warned.append)
    assert line.startswith("- **") and "0.5600" in line and warned == [line.strip("-* ")]
    assert alarm_power(load_config("smoke").baselines, scores, warned.append)
    assert len(warned) == 1  # (an alarm that does not ring warns nobody)
    # a wrapped base the run does not list with the true labels; no learner to suggest
    [line] = _alarms(scores, "baselines.params={shuffled: {base: eegnet}}")
    assert "`eegnet` on shuffled labels" in line and "unknown" in line
    [line] = _alarms(scores | {"xdawn_ts": 0.52, "erp_lda": 0.51})
    assert "shows nothing" in line and "--set" not in line
    # a base with parameters is matched by the result with the same parameters only
    models = "baselines.models=[shuffled, riemann_ea]"
    [line] = _alarms({"shuffled": 0.51, "riemann_ea": 0.7}, models,
                     "baselines.params={shuffled: {base: riemann, base_params: "
                     "{align: euclidean}}}")
    assert "silent" in line and "`riemann_ea`" in line
    [line] = _alarms({"shuffled": 0.51, "riemann_ea": 0.7}, models,
                     "baselines.params={shuffled: {base: riemann}}")
    assert "unknown" in line
    assert _alarms({"riemann": 0.6}, "baselines.models=[riemann]") == []


def test_fold_workers_give_the_serial_result(small_dir, tmp_path, name="xdawn_ts"):
    """Folds fitted in two joblib processes equal the serial fit (up to the last bits of
    sums over a different number of BLAS threads)."""
    ds = load_dataset(small_dir, progress=False)
    folds = make_folds(ds)
    quiet = dict(progress=False, log=lambda m: None)
    one = run_lopo(name, ds, folds, tmp_path / "one", "baselines", **quiet)
    two = run_lopo(name, ds, folds, tmp_path / "two", "baselines", workers=2, **quiet)
    np.testing.assert_allclose(two.oof, one.oof, atol=1e-5)
    np.testing.assert_allclose(two.test, one.test, atol=1e-5)
    assert len(list((tmp_path / "two" / "01_baselines" / name).glob("fold*.npz"))) == \
        folds.n_folds
