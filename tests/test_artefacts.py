"""The predictions contract: writing, assembling, listing, collisions, resume."""
from __future__ import annotations

import numpy as np
import pytest

from sleepemo.pipeline.artefacts import ResultWriter, find, results, stored_fingerprint
from sleepemo.data.reader import load_dataset
from sleepemo.data.folds import make_folds
from sleepemo.pipeline.report import write_report


@pytest.fixture(scope="module")
def smoke(smoke_dir):
    ds = load_dataset(smoke_dir, progress=False)
    return ds, make_folds(ds)


def _write(out, stage, name, ds, folds, seed, fp="fp", **extra_meta):
    """A result whose predictions are random numbers of ``seed``, plus a trial-level
    array, written fold by fold."""
    rng = np.random.default_rng(seed)
    n_test = sum(folds.n_trials[s] for s in folds.test_subjects)
    w = ResultWriter(out, stage, name, fp, folds)
    for k in range(folds.n_folds):
        n = folds.n_trials[folds.held_out(k)]
        w.save_fold(k, oof=rng.random((n, ds.n_times), dtype=np.float32),
                    test=rng.random((n_test, ds.n_times), dtype=np.float32),
                    oof_trial=rng.random(n, dtype=np.float32), weights=np.arange(3) + k)
    return w.finish(ds, meta=extra_meta, seed=seed)


def test_assembly_follows_folds_json_order_and_averages_test(smoke, tmp_path):
    ds, folds = smoke
    res = _write(tmp_path, "baselines", "toy", ds, folds, seed=0)
    assert res.meta["arrays"] == ["oof", "oof_trial", "test"]
    parts = {folds.held_out(k): np.load(res.folder / f"fold{k}.npz")
             for k in range(folds.n_folds)}
    np.testing.assert_array_equal(
        res.oof, np.concatenate([parts[s]["oof"] for s in folds.train_subjects]))
    np.testing.assert_array_equal(res.array("oof_trial"), np.concatenate(
        [parts[s]["oof_trial"] for s in folds.train_subjects]))
    stack = np.stack([p["test"] for p in parts.values()])
    np.testing.assert_array_equal(res.test, stack.astype(np.float64).mean(0).astype(np.float32))
    # a participant's rows averaged alone are its rows of the whole (sleepemo predict)
    from sleepemo.pipeline.artefacts import fold_mean
    np.testing.assert_array_equal(fold_mean(stack[:, :3]), res.test[:3])
    assert not (res.folder / "weights.npy").exists()  # not oof*/test*: stays per fold
    with pytest.raises(KeyError, match="no array 'weights'"):
        res.array("weights")
    score, sfreq = res.score()
    assert sfreq == ds.sfreq and list(score.per_subject) == list(folds.train_subjects)
    assert 0.4 < score.score < 0.6


def test_same_name_in_two_stages_both_listed_neither_overwritten(smoke, tmp_path):
    ds, folds = smoke
    a = _write(tmp_path, "baselines", "toy", ds, folds, seed=1)
    b = _write(tmp_path, "fusion", "toy", ds, folds, seed=2)
    assert a.folder != b.folder
    listed = results(tmp_path)
    assert [(r.stage, r.name, r.label) for r in listed] == [
        ("baselines", "toy", "baselines/toy"), ("fusion", "toy", "fusion/toy")]
    # each kept its own predictions
    np.testing.assert_array_equal(find(tmp_path, "baselines/toy").oof, a.oof)
    np.testing.assert_array_equal(find(tmp_path, "fusion/toy").oof, b.oof)
    assert not np.array_equal(a.oof, b.oof)
    with pytest.raises(KeyError, match="ambiguous"):
        find(tmp_path, "toy")
    assert [r.label for r in results(tmp_path, "fusion")] == ["fusion/toy"]
    # the report lists both, labelled by stage
    table, _ = write_report(tmp_path)
    assert set(table.index) == {"baselines/toy", "fusion/toy"}
    assert table.loc["fusion/toy", "stage"] == "fusion"
    assert table.loc["baselines/toy", "overall"] == round(a.score()[0].score, 4)
    # lopo.csv: the intervals after overall, then the participants; the report shows them
    import pandas as pd
    written = pd.read_csv(tmp_path / "lopo.csv", index_col="model")
    assert list(written.columns) == ["stage", "overall", "ci_low", "ci_high", "diff_to_best",
                                     "diff_low", "diff_high", "window_ms", "diagnostic",
                                     *[f"S{s}" for s in folds.train_subjects]]
    best = written["overall"].idxmax()
    assert written.loc[best, ["diff_to_best", "diff_low", "diff_high"]].tolist() == [0, 0, 0]
    report = (tmp_path / "report.md").read_text()
    assert "drawn with replacement 2000 times (seed 0" in report
    assert f"model, `{best}`, with the 95% interval" in report
    row = next(line for line in report.splitlines() if line.startswith(f"| {best} |"))
    ci = f"[{written.loc[best, 'ci_low']:.4f}, {written.loc[best, 'ci_high']:.4f}]"
    assert f"| {ci} | reference |" in row


def test_a_fold_with_another_fingerprint_is_not_reused(smoke, tmp_path):
    ds, folds = smoke
    _write(tmp_path, "baselines", "toy", ds, folds, seed=0, fp="old")
    new = ResultWriter(tmp_path, "baselines", "toy", "new", folds)
    assert new.finished() is None and not new.fold_done(0)
    assert new.load_fold(0) is None
    with pytest.raises(FileNotFoundError, match="has not finished fold 0"):
        new.finish(ds)
    old = ResultWriter(tmp_path, "baselines", "toy", "old", folds)
    assert old.finished() is not None and old.fold_done(3)
    assert stored_fingerprint(old.path("fold3.npz")) == "old"
    assert stored_fingerprint(old.path("meta.json")) == "old"


def test_bad_results_are_refused(smoke, tmp_path):
    ds, folds = smoke
    with pytest.raises(ValueError, match="result name"):
        ResultWriter(tmp_path, "baselines", "a/b", "fp", folds)
    with pytest.raises(KeyError, match="unknown stage"):
        ResultWriter(tmp_path, "nope", "toy", "fp", folds)
    w = ResultWriter(tmp_path, "baselines", "toy", "fp", folds)
    with pytest.raises(ValueError, match="oof has 3 rows, expected"):
        w.save_fold(0, oof=np.zeros((3, 200)), test=np.zeros((3, 200)))
    n_test = sum(folds.n_trials[s] for s in folds.test_subjects)
    for k in range(folds.n_folds):
        n = folds.n_trials[folds.held_out(k)]
        w.save_fold(k, oof=np.full((n, 200), 2.0), test=np.zeros((n_test, 200)))
    with pytest.raises(ValueError, match="probabilities in"):
        w.finish(ds)
    assert not (w.folder / "meta.json").exists() and results(tmp_path) == []


def test_results_of_an_older_format_are_not_listed(smoke, tmp_path):
    ds, folds = smoke
    _write(tmp_path, "baselines", "toy", ds, folds, seed=0)
    old = tmp_path / "01_baselines" / "legacy"
    old.mkdir()
    (old / "meta.json").write_text('{"model": "legacy", "fingerprint": "x"}')
    assert [r.name for r in results(tmp_path)] == ["toy"]


def test_compare_runs_pairs_models_on_the_same_participants(tmp_path, capsys):
    import pandas as pd

    from sleepemo.pipeline.report import compare_runs, main

    def run(name, rows):
        folder = tmp_path / name
        folder.mkdir()
        pd.DataFrame(rows).set_index("model").to_csv(folder / "lopo.csv")
        return folder

    base = {"stage": "x", "window_ms": "", "diagnostic": False}
    a = run("a", [base | {"model": "m", "overall": 0.55, "S1": 0.5, "S2": 0.6, "S3": 0.7},
                  base | {"model": "shuffled", "overall": 0.5, "S1": 0.5, "S2": 0.5,
                          "S3": 0.5, "diagnostic": True}])
    b = run("b", [base | {"model": "m", "overall": 0.6, "S1": 0.6, "S2": 0.5, "S3": 0.8},
                  base | {"model": "shuffled", "overall": 0.5, "S1": 0.5, "S2": 0.5,
                          "S3": 0.5, "diagnostic": True}])
    text = compare_runs(a, b, ("old", "new"))
    assert "| m | 0.5500 | 0.6000 | 2 of 3 | +0.0333 |" in text and "shuffled" not in text
    assert main(["compare", str(a), str(b)]) == 0 and "2 of 3" in capsys.readouterr().out
    c = run("c", [base | {"model": "m", "overall": 0.6, "S1": 0.6, "S9": 0.5}])
    with pytest.raises(ValueError, match="same held-out participants"):
        compare_runs(a, c)
