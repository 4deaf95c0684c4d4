"""Stage 06: the Optuna ensemble, its nested score, resume, and stage 07's choice."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import with_flipped_labels
from sleepemo.ensemble.blend import OptunaBlend, Stack, normalise, score


def _noise_stack(n_subjects=14, n_trials=40, n_times=60, n_models=6, seed=0):
    rng = np.random.default_rng(seed)
    subjects = np.repeat(np.arange(n_subjects), n_trials)
    y = np.concatenate([rng.permutation(np.arange(n_trials) % 2) for _ in range(n_subjects)])
    preds = {f"m{i}": rng.random((subjects.size, n_times)).astype(np.float32)
             for i in range(n_models)}
    return Stack(preds, subjects), y


def _bump(n_times: int, lo: float = 0.35, hi: float = 0.65) -> np.ndarray:
    t = np.arange(n_times)
    return ((t >= lo * n_times) & (t < hi * n_times)).astype(np.float32)


def test_normalise_is_per_participant_and_label_free():
    rng = np.random.default_rng(0)
    subjects = np.repeat([1, 2], 5)
    x = rng.random((10, 3)).astype(np.float32)
    x[5:] += 100  # participant 2 on another scale: normalised, they look alike
    r = normalise(x, subjects, "rank")
    assert r.min() == 0 and r.max() == 1
    np.testing.assert_allclose(np.sort(r[:5, 0]), np.sort(r[5:, 0]))
    z = normalise(x, subjects, "zscore")
    np.testing.assert_allclose(z[5:].mean(0), 0, atol=1e-4)
    with pytest.raises(ValueError, match="normalisation"):
        normalise(x, subjects, "minmax")
    with pytest.raises(ValueError, match="predictions of shape"):
        Stack({"a": x[:4]}, subjects)


def test_blend_finds_the_informative_model_and_predicts_a_new_participant(tmp_path):
    stack, y = _noise_stack(n_models=5, seed=1)
    rng = np.random.default_rng(2)
    signal = (2 * y - 1)[:, None] * _bump(60) * 0.8 + rng.normal(0, 1, (y.size, 60))
    stack.preds["good"] = (1 / (1 + np.exp(-signal))).astype(np.float32)
    held = 13
    tune = stack.subjects != held
    est = OptunaBlend(tmp_path, "t", n_trials=12, top_k=3, seed=0, sfreq=100.0).fit(
        stack.rows(range(13)), y[tune])
    assert est.candidates_[0] == "good" and "good" in est.params_["models"]
    assert est.search == "compact" and est.guard_["kept_value"] == est.best_score_
    # the best model alone is queued: the study's best is never below it
    assert est.guard_["best_value"] >= est.single_scores_["good"] - 1e-12
    pred = est.predict(stack.rows([held]))
    assert pred.shape == (int((~tune).sum()), 60) and 0 <= pred.min() and pred.max() <= 1
    assert score(y[~tune], pred, stack.subjects[~tune], 100.0) > 0.6
    # saved with its settings, loaded without the study: the same predictions
    path = est.save(tmp_path / "blend.json")
    again = OptunaBlend.load(path)
    np.testing.assert_array_equal(again.predict(stack.rows([held])), pred)
    assert not list(tmp_path.glob("*.pack"))  # the tuning data is removed after fit
    # the study is on disk: a second fit resumes it instead of searching again
    study = est.study_
    est2 = OptunaBlend(tmp_path, "t", n_trials=12, top_k=3, seed=0, sfreq=100.0).fit(
        stack.rows(range(13)), y[tune])
    assert len(est2.study_.trials) == len(study.trials) and est2.params_ == est.params_


def test_a_loaded_blend_sums_its_models_in_the_tuned_order(tmp_path):
    """Float sums depend on their order, and the saved JSON sorts its keys: a loaded blend
    must add its models in the candidates' order, as the stage did, or its final ranks can
    break near-ties otherwise (seen: sleepemo predict differing from stage 06's test
    predictions in 13 % of the values)."""
    rng = np.random.default_rng(0)
    subjects = np.repeat([1, 2], 40)
    preds = {m: rng.random((80, 30)).astype(np.float32) for m in ("zeta", "alpha", "mid")}
    est = OptunaBlend(tmp_path, "order")
    est.candidates_ = ["zeta", "alpha", "mid"]
    est.params_ = {"norm": "zscore", "models": {
        m: {"w": w, "smooth": 0, "broadcast": 0.0}
        for m, w in (("zeta", 0.1), ("alpha", 0.7), ("mid", 0.3))}}
    est.single_scores_, est.best_score_ = {}, 0.5
    again = OptunaBlend.load(est.save(tmp_path / "blend.json"))
    assert list(again.params_["models"]) == ["zeta", "alpha", "mid"]
    stack = Stack(preds, subjects)
    np.testing.assert_array_equal(again.predict(stack), est.predict(stack))


def _trial(number, n, pack, models, norm="rank", smooth=0, broadcast=0.0):
    """A completed compact trial (what ``one_se_choice`` reads), its value computed."""
    from types import SimpleNamespace

    from sleepemo.ensemble.blend import participant_scores

    params = {"norm": norm, "n_models": n, "smooth": smooth, "broadcast": broadcast}
    value = participant_scores(pack, params, models, 5).mean()
    return SimpleNamespace(number=number, value=float(value), params=params)


def _pack_of(stack, y, models):
    return {"y": y.astype(np.int8), "subjects": stack.subjects,
            **{f"rank_{i}": normalise(stack.preds[m], stack.subjects, "rank")
               for i, m in enumerate(models)}}


def test_the_one_se_rule_keeps_the_widest_blend_within_noise_of_the_best():
    """Written out by hand on a small stack: d_p = score_p(best) - score_p(wider), SE =
    sd(d, ddof=1) / sqrt(P); the largest n with mean(d) <= SE is kept."""
    from sleepemo.ensemble.blend import one_se_choice, participant_scores
    from sleepemo.ensemble.sim import simulated_stack

    # one informative model and three noise ones: blending them in is clearly worse, so
    # the best trial (the informative model alone) is kept
    stack, y = simulated_stack({"a": 0.7, "n1": 0.0, "n2": 0.0, "n3": 0.0}, n_subjects=10,
                               seed=1)
    models = ["a", "n1", "n2", "n3"]
    pack = _pack_of(stack, y, models)
    one, three = _trial(5, 1, pack, models), _trial(7, 3, pack, models)
    kept, rec = one_se_choice([one, three], pack, models, 5)
    d = participant_scores(pack, one.params, models, 5) - \
        participant_scores(pack, three.params, models, 5)
    se = d.std(ddof=1) / np.sqrt(10)
    assert one.value > three.value and d.mean() > se
    assert kept is one and rec["kept_n"] == 1 and rec["best_trial"] == 5
    assert rec["wider"]["3"]["se"] == pytest.approx(se)
    assert rec["wider"]["3"]["mean_diff"] == pytest.approx(d.mean())
    assert one_se_choice([three, one], pack, models, 5)[1] == rec  # order-free
    # two equally informative models with independent noise: the model alone that looks
    # best by a hair is not better than the pair by more than its noise: the pair is kept
    stack, y = simulated_stack({"a": 0.7, "b": 0.7}, n_subjects=10, seed=3)
    models = ["a", "b"]
    pack = _pack_of(stack, y, models)
    one, two = _trial(0, 1, pack, models), _trial(1, 2, pack, models)
    one.value = two.value + 0.001  # (as if the study's best by a hair)
    kept, rec = one_se_choice([one, two], pack, models, 5)
    assert rec["best_trial"] == 0 and rec["wider"]["2"]["within_one_se"]
    assert kept is two and rec["kept_n"] == 2 and rec["kept_value"] == two.value
    assert json.loads(json.dumps(rec)) == rec


def test_a_compact_trial_blends_for_each_participant_the_models_the_others_rank_best():
    """``loo_orders``: participant j's ranking is that of the other participants' window
    AUCs; a compact trial's curve on participant j blends the first ``n_models`` of row j
    (so choosing "the best model" never reads participant j's labels)."""
    from sleepemo.ensemble.blend import _participant_curves, curves_of, loo_orders
    from sleepemo.ensemble.sim import simulated_stack
    from sleepemo.metric import per_timepoint_auc, score_from_curve

    stack, y = simulated_stack({"steady": 0.3, "n1": 0.0, "n2": 0.0}, n_subjects=6, seed=2)
    parts = stack.participants()
    # "lucky" is the true labels for participant 0 (best overall, by it alone), noise else
    lucky = np.array(stack.preds["n2"], copy=True)
    rows0 = stack.subjects == parts[0]
    lucky[rows0] = y[rows0][:, None] + 0.01 * np.arange(lucky.shape[1])
    stack.preds["lucky"] = lucky
    models = ["lucky", "steady", "n1", "n2"]
    curves = curves_of(stack, y)
    orders = loo_orders(curves, parts, models, 5)
    for j, held in enumerate(parts):
        others = [s for s in parts if s != held]
        alone = {m: score_from_curve(np.mean([curves[m][s] for s in others], 0), 5)[0]
                 for m in models}
        assert [models[i] for i in orders[j]] == sorted(models, key=lambda m: (-alone[m], m))
    assert models[orders[0][0]] == "steady" != models[orders[1][0]] == "lucky"
    pack = {**_pack_of(stack, y, models), "loo": orders}
    params = {"norm": "rank", "n_models": 1, "smooth": 0, "broadcast": 0.0}
    got = _participant_curves(pack, params, models, parts)
    for j, held in enumerate(parts):
        rows = stack.subjects == held
        first = models[orders[j][0]]
        want = per_timepoint_auc(y[rows], normalise(stack.preds[first], stack.subjects,
                                                    "rank")[rows])
        np.testing.assert_array_equal(got[j], want)


def test_the_compact_search_has_four_parameters_and_its_study_keeps_its_search(tmp_path):
    from sleepemo.ensemble.studies import StudyError
    from sleepemo.ensemble.sim import simulated_stack

    stack, y = simulated_stack({"a": 0.5, "b": 0.0, "c": 0.0}, n_subjects=6, seed=0)
    est = OptunaBlend(tmp_path, "c", n_trials=5, top_k=3, seed=0, sfreq=100.0).fit(stack, y)
    assert {frozenset(t.params) for t in est.study_.trials} == \
        {frozenset({"norm", "n_models", "smooth", "broadcast"})}
    first = est.study_.trials[:2]  # queued: every candidate, then the best alone
    assert [t.params["n_models"] for t in first] == [3, 1]
    assert first[1].value == pytest.approx(est.single_scores_[est.candidates_[0]])
    assert all(p["w"] == 1.0 for p in est.params_["models"].values())
    assert list(est.params_["models"]) == est.candidates_[:est.guard_["kept_n"]]
    again = OptunaBlend.load(est.save(tmp_path / "blend.json"))
    assert again.search == "compact" and again.guard_ == est.guard_
    np.testing.assert_array_equal(again.predict(stack), est.predict(stack))
    with pytest.raises(StudyError, match="holds a 'compact' search"):
        OptunaBlend(tmp_path, "c", n_trials=5, top_k=3, sfreq=100.0, search="full").fit(
            stack, y)
    with pytest.raises(ValueError, match="search 'wide'"):
        OptunaBlend(tmp_path, "w", search="wide")


def test_the_search_setting_is_validated_and_enters_the_fingerprint():
    from sleepemo.config import ConfigError, fields_affecting, load_config

    assert load_config("smoke").ensemble.search == "compact"
    assert fields_affecting(load_config("smoke", ["ensemble.search=full"]).ensemble,
                            "weights")["search"] == "full"
    with pytest.raises(ConfigError, match="ensemble.search must be one of"):
        load_config("smoke", ["ensemble.search=wide"])


def test_nested_score_removes_the_tuners_optimism_on_noise(tmp_path):
    """Pure-noise models: tuning on all participants finds a spurious window (the tuned
    score is optimistic); the outer leave-one-participant-out loop around the tuner scores
    the same procedure at about chance."""
    stack, y = _noise_stack(n_subjects=8, n_models=4, seed=4)
    tuned = OptunaBlend(tmp_path, "all", n_trials=16, top_k=3, seed=0, sfreq=100.0).fit(
        stack, y).best_score_
    nested = np.zeros_like(stack.preds["m0"])
    for held in range(8):
        rows = stack.subjects == held
        est = OptunaBlend(tmp_path, f"n{held}", n_trials=16, top_k=3, seed=0,
                          sfreq=100.0).fit(stack.rows(set(range(8)) - {held}), y[~rows])
        nested[rows] = est.predict(stack.rows([held]))
    nested_score = score(y, nested, stack.subjects, 100.0)
    # (one fixed noise draw, seeded sampler: the same numbers every run). The metric's
    # chance level is above 0.5 (it keeps the best window): random predictions score
    # 0.517 +- 0.014 on draws like this one. Over noise draws 4-8 the nested score was
    # 0.522-0.536 and always below the tuned one, by 0.005-0.021.
    assert tuned > 0.52
    assert abs(nested_score - 0.5) < 0.035 and nested_score < tuned


def _nested_of_simulation(tmp_path, strengths, search="compact", shuffle=False, seed=0,
                          n_trials=20):
    """The nested score (outer LOPO around ``fit``, the loop stage 06 runs) of a search of
    ``n_trials`` per study on a simulated stack of 14 participants, its kept blends, and
    every model's LOPO score."""
    from sleepemo.ensemble.blend import curves_of, nested_predict
    from sleepemo.ensemble.sim import simulated_stack

    stack, y = simulated_stack(strengths, seed=seed, shuffle_labels=shuffle)
    kept = []

    def make(held):
        kept.append(OptunaBlend(tmp_path / search, f"n{held}", n_trials=n_trials, top_k=6,
                                seed=0, sfreq=100.0, search=search))
        return kept[-1]

    nested = score(y, nested_predict(make, stack, y, curves_of(stack, y)), stack.subjects,
                   100.0)
    singles = {m: score(y, p, stack.subjects, 100.0) for m, p in stack.preds.items()}
    return nested, kept, singles


WEAK = {"inf_a": 0.2, "inf_b": 0.16, **{f"noise{i:02d}": 0.0 for i in range(18)}}


def test_on_a_weak_signal_the_nested_default_holds_against_the_best_single_model(tmp_path):
    """Two weakly informative models among 18 pure-noise ones (bench/bench_ensemble.py
    runs this design over seeds, for both searches): the default search's nested score is
    not below the best single model's LOPO score (chosen on all 14 participants, so itself
    optimistic) by more than 0.01. Ten trials per study (the shuffled design needs 20):
    on this draw 0.573 against 0.558 (20 trials: 0.577). This draw is the design's best
    case for the default: over seeds 0-4 the bench's median is 0.015 below (the
    trade-off of the widest-blend rule, docs/evaluation.md); the test guards the
    plumbing of a weak-signal study, and fails with the candidates ranked worst first."""
    nested, kept, singles = _nested_of_simulation(tmp_path, WEAK, n_trials=10)
    best = max(singles.values())
    assert nested >= best - 0.01, (nested, best)
    assert all(e.search == "compact" and e.guard_ is not None for e in kept)


@pytest.mark.slow  # 30 s; the weak-signal and shuffled simulations stay in the default run
def test_on_a_strong_signal_the_default_still_blends_two_complementary_models(tmp_path):
    """Two informative models with independent noise (each alone below their average)
    among 8 noise ones: the nested folds keep both, and the nested score beats each."""
    strengths = {"inf_a": 0.7, "inf_b": 0.7, **{f"noise{i}": 0.0 for i in range(8)}}
    nested, kept, singles = _nested_of_simulation(tmp_path, strengths)
    assert sum({"inf_a", "inf_b"} <= set(e.params_["models"]) for e in kept) >= 12
    assert nested > max(singles.values()) + 0.01, (nested, singles)


@pytest.mark.slow  # (31 s; the default suite keeps the nested loop's checks on pure noise:
#   test_nested_score_removes_the_tuners_optimism_on_noise and the stage's shuffled run)
def test_label_shuffled_simulated_stacks_give_a_nested_score_about_chance(tmp_path):
    """The weak design's 20 models with labels permuted within participant. The metric
    keeps the best window, so one noise model scores 0.517 +- 0.01 and the luckiest of 20
    about 0.54 (0.525-0.56 over seeds 0-11); on this draw (seed 0) one noise model scores
    0.550 on all 14 participants, and a study that ranks it first in most folds scores
    about as much (numpy only, top-1 by the inner ranking, seeds 0-11: median 0.522,
    0.50-0.55). The nested score stays within that chance range, and not above the
    luckiest model alone by more than 0.005 (0.553 against 0.550 here)."""
    nested, _, singles = _nested_of_simulation(tmp_path, WEAK, shuffle=True)
    assert abs(nested - 0.5) < 0.06 and nested <= max(singles.values()) + 0.005, \
        (nested, max(singles.values()))


# ------------------------------------------------------------------ the nested best single
#: predictions of 4 trials (labels 0, 0, 1, 1) with the AUC of the key
_AUC_ORDER = {1.0: [.1, .2, .3, .4], .75: [.1, .3, .2, .4], .5: [.1, .4, .2, .3],
              0.0: [.4, .3, .2, .1]}


def _auc_stack(aucs: dict, n_times: int = 10) -> tuple[Stack, np.ndarray]:
    """Participants 0, 1, 2 of 4 trials; model ``m``'s AUC on participant p is
    ``aucs[m][p]`` at every timepoint (flat curves: a window AUC is then the mean of the
    participants' AUCs when that is above 0.5, else 0.5)."""
    subjects = np.repeat([0, 1, 2], 4)
    preds = {m: np.repeat(np.concatenate([_AUC_ORDER[a] for a in v])[:, None], n_times,
                          axis=1).astype(np.float32) for m, v in aucs.items()}
    return Stack(preds, subjects), np.tile([0, 0, 1, 1], 3)


def test_the_nested_best_single_model_is_chosen_per_fold_without_the_held_out_one():
    """By hand (sfreq 100 Hz: windows of >= 5 samples; 10 flat samples here):

    ======  ====  ====  ====
    model   p0    p1    p2
    ======  ====  ====  ====
    m0      0     1     1
    m1      .5    .75   1
    m2      .5    1     1
    ======  ====  ====  ====

    Held p0 (tuning p1, p2): m0 1, m1 .875, m2 1 -> m0 (tie, first) -> p0 gets 0.
    Held p1 (p0, p2): m0 .5 (no run above 0.5: 0.5), m1 .75, m2 .75 -> m1 (tie) -> .75.
    Held p2 (p0, p1): m0 .5, m1 .625, m2 .75 -> m2 -> 1.
    Nested best single: mean(0, .75, 1) = 7/12; the hindsight best, m2, scores 5/6.
    Listing m2 before m1 breaks the p1 tie the other way: p1 gets 1, score 2/3."""
    from sleepemo.ensemble.blend import curves_of, nested_best_single, single_scores

    aucs = {"m0": [0.0, 1.0, 1.0], "m1": [.5, .75, 1.0], "m2": [.5, 1.0, 1.0]}
    stack, y = _auc_stack(aucs)
    curves = curves_of(stack, y)
    fold1 = single_scores(curves, [0, 2], 5)
    np.testing.assert_array_equal(fold1["m0"], [.5, .5])  # no window: 0.5 for each
    np.testing.assert_array_equal(fold1["m1"], [.5, 1.0])
    pred, chosen = nested_best_single(stack, y, 5, curves)
    assert chosen == {0: "m0", 1: "m1", 2: "m2"}
    for s, m in chosen.items():
        np.testing.assert_array_equal(pred[stack.subjects == s],
                                      stack.preds[m][stack.subjects == s])
    assert score(y, pred, stack.subjects, 100.0) == pytest.approx(7 / 12)
    assert score(y, stack.preds["m2"], stack.subjects, 100.0) == pytest.approx(5 / 6)
    assert nested_best_single(stack, y, 5)[1] == chosen  # curves computed from the labels
    swapped, _ = _auc_stack({m: aucs[m] for m in ("m0", "m2", "m1")})
    pred, chosen = nested_best_single(swapped, y, 5)
    assert chosen == {0: "m0", 1: "m2", 2: "m2"}
    assert score(y, pred, stack.subjects, 100.0) == pytest.approx(2 / 3)


def test_the_held_out_labels_cannot_change_the_nested_best_single_choice():
    """Participant k's labels flipped or permuted (the curves computed from them, as the
    stage does once for every fold): fold k's choice and predictions are unchanged, and
    labels that include the held-out participant are refused."""
    from sleepemo.ensemble.blend import best_single_held_out, curves_of, nested_best_single
    from sleepemo.ensemble.sim import simulated_stack

    stack, y = simulated_stack(WEAK, n_subjects=8, seed=2)
    pred, chosen = nested_best_single(stack, y, 5, curves_of(stack, y))
    rng = np.random.default_rng(0)
    changed = 0
    for held in stack.participants():
        rows = stack.subjects == held
        for new in (1 - y[rows], rng.permutation(y[rows])):
            y2 = y.copy()
            y2[rows] = new
            pred2, chosen2 = nested_best_single(stack, y2, 5, curves_of(stack, y2))
            assert chosen2[held] == chosen[held]
            np.testing.assert_array_equal(pred2[rows], pred[rows])
            changed += chosen2 != chosen  # (as a training participant it does count)
    assert changed > 0
    labels = {s: y[stack.subjects == s] for s in stack.participants()}
    with pytest.raises(ValueError, match="is held out"):
        best_single_held_out(stack, labels, 0, 5)


def test_on_shuffled_labels_the_hindsight_best_single_is_optimistic_the_nested_is_not():
    """The weak design's 20 models, labels permuted within participant (seeds 0-7): the
    best of 20 LOPO scores sits well above chance (0.525-0.550), the nested best single
    model near it (0.500-0.550, median 0.507): their difference is the hindsight pick's
    optimism."""
    from sleepemo.ensemble.blend import curves_of, nested_best_single
    from sleepemo.ensemble.sim import simulated_stack

    gaps, nested = [], []
    for seed in range(8):
        stack, y = simulated_stack(WEAK, seed=seed, shuffle_labels=True)
        pred, _ = nested_best_single(stack, y, 5, curves_of(stack, y))
        nested.append(score(y, pred, stack.subjects, 100.0))
        gaps.append(max(score(y, p, stack.subjects, 100.0) for p in stack.preds.values())
                    - nested[-1])
    assert np.median(gaps) > 0.02 and np.median(nested) < 0.52, (gaps, nested)


# ------------------------------------------------------------------ the stage
def _fake_results(out, ds, folds, strengths: dict):
    """Results of the predictions contract: out-of-fold predictions carrying
    ``strength`` x the true label in a window (0: noise), random test predictions."""
    from sleepemo.pipeline.artefacts import ResultWriter

    rng = np.random.default_rng(0)
    n_test = sum(folds.n_trials[s] for s in folds.test_subjects)
    for name, strength in strengths.items():
        w = ResultWriter(out, "baselines", name, f"fake-{name}", folds)
        for k in range(folds.n_folds):
            y = ds.train[folds.held_out(k)].y
            z = strength * (2 * y - 1)[:, None] * _bump(ds.n_times) + \
                rng.normal(0, 1, (y.size, ds.n_times))
            w.save_fold(k, oof=(1 / (1 + np.exp(-z))).astype(np.float32),
                        test=rng.random((n_test, ds.n_times)).astype(np.float32))
        w.finish(ds)


@pytest.fixture(scope="module")
def ens_run(small_dir, tmp_path_factory):
    """Stage 06 on four fake results (one informative, one weak, two noise) of the small
    data (five folds: the stage's plumbing, its report and resume; the label-shuffled
    stage test runs all 14 participants of the smoke data)."""
    from sleepemo.config import load_config
    from sleepemo.data.reader import load_dataset
    from sleepemo.data.folds import write_folds
    from sleepemo.pipeline.stage import open_stage
    from sleepemo.ensemble import stage as ensemble

    out = tmp_path_factory.mktemp("ens")
    ds = load_dataset(small_dir, progress=False)
    folds, _ = write_folds(ds, out / "folds.json")
    _fake_results(out, ds, folds, {"good": 1.0, "weak": 0.3, "noise_a": 0.0,
                                   "noise_b": 0.0})
    cfg = load_config("smoke")
    logs = []
    stage = open_stage("ensemble", cfg, small_dir, out, progress=False, log=logs.append)
    output = stage.run(ensemble.run)
    return stage, ds, folds, output, logs


def test_stage_writes_the_nested_ensemble_through_the_contract(ens_run):
    from sleepemo.pipeline.artefacts import find
    from sleepemo.ensemble.blend import OptunaBlend

    stage, ds, folds, output, _ = ens_run
    m = output.metrics
    res = find(stage.out, "ensemble")
    assert res.stage == "ensemble" and not res.diagnostic
    assert m["nested"] == pytest.approx(res.score()[0].score)  # its LOPO = the nested score
    assert m["tuned"] == pytest.approx(res.meta["tuned_score"])
    assert m["best_single"]["model"] == "good" and m["n_candidates"] == 4
    assert m["nested"] > 0.55  # the informative model carries through the nest
    n_test = sum(folds.n_trials[s] for s in folds.test_subjects)
    assert res.test.shape == (n_test, ds.n_times)
    # the saved final ensembler reproduces the submitted test predictions
    from sleepemo.ensemble.stage import fold_state
    final = OptunaBlend.load(stage.dir / "ensembler.json")
    np.testing.assert_allclose(final.predict(fold_state(stage).test), res.test, atol=1e-6)
    for f in ("ensemble_curve.png", "optimization_history.png", "param_importances.png",
              "evidence.md"):
        assert (stage.dir / f).stat().st_size > 0, f
    evidence = (stage.dir / "evidence.md").read_text()
    assert "| tuned |" in evidence and "| nested |" in evidence
    # which search, and what its one-standard-error rule kept, per nested fold and final
    assert m["search"] == "compact" and "search `compact`" in evidence
    assert sum(m["nested_guard"]["kept_n"].values()) == folds.n_folds
    assert m["final_guard"]["kept_n"] == len(m["final_params"]["models"])
    assert "One-standard-error choice. Final blend: " in evidence
    assert f"Nested folds ({folds.n_folds}): " in evidence
    assert len(list((stage.dir / "studies").glob("*.db"))) == folds.n_folds + 1


def test_stage_reports_the_nested_best_single_model(ens_run):
    """metrics.json: the nested best single model (its score, one choice per fold among
    the candidates) and the ensemble minus it and minus the hindsight best single model;
    the report states both."""
    from sleepemo.ensemble.stage import fold_state, nested_best_single
    from sleepemo.io import read_json
    from sleepemo.pipeline.artefacts import find

    stage, ds, folds, output, _ = ens_run
    m = read_json(stage.dir / "metrics.json")
    nbs = m["nested_best_single"]
    assert [f["held_out"] for f in nbs["folds"]] == list(folds.train_subjects)
    assert {f["model"] for f in nbs["folds"]} <= {"good", "weak", "noise_a", "noise_b"}
    assert sum(nbs["counts"].values()) == folds.n_folds
    oof, chosen = nested_best_single(fold_state(stage))
    assert chosen == [f["model"] for f in nbs["folds"]]
    assert nbs["score"] == pytest.approx(score(
        np.concatenate([ds.train[s].y for s in folds.train_subjects]), oof,
        np.repeat(folds.train_subjects, [folds.n_trials[s] for s in folds.train_subjects]),
        ds.sfreq))
    nested = find(stage.out, "ensemble").score()[0].score
    for key, other in (("ensemble_minus_best_single", find(stage.out, "good").score()[0].score),
                       ("ensemble_minus_nested_best_single", nbs["score"])):
        assert m[key] == pytest.approx(nested - other), key
    evidence = (stage.dir / "evidence.md").read_text()
    assert "| nested best single model |" in evidence
    assert "minus the nested best single model: " in evidence
    assert "like-for-like comparator" in evidence


def test_stage_resumes_a_lost_fold_and_reuses_a_finished_run(ens_run):
    from sleepemo.pipeline.stage import open_stage
    from sleepemo.ensemble import stage as ensemble

    stage, ds, folds, output, _ = ens_run
    oof = np.load(stage.dir / "ensemble" / "oof.npy")
    logs = []
    again = open_stage("ensemble", stage.cfg, stage.data_dir, stage.out, progress=False,
                       log=logs.append)
    again.run(ensemble.run)
    assert any("unchanged, reusing" in line for line in logs)
    # fold 3 lost (and its study): only it is tuned again, with the same outcome
    (stage.dir / "ensemble" / "fold3.npz").unlink()
    (stage.dir / "ensembler.json").unlink()
    for db in (stage.dir / "studies").glob("nested3-*.db"):
        db.unlink()
    before = {p: p.stat().st_mtime_ns for p in (stage.dir / "ensemble").glob("fold*.npz")}
    again = open_stage("ensemble", stage.cfg, stage.data_dir, stage.out, progress=False,
                       log=lambda m: None)
    again.run(ensemble.run)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert (stage.dir / "ensemble" / "fold3.npz").is_file()
    np.testing.assert_array_equal(np.load(stage.dir / "ensemble" / "oof.npy"), oof)


def test_held_out_labels_never_reach_the_nested_tuner(ens_run, tmp_path):
    """Fold 0 tuned from scratch with the held-out participant's labels as they are and
    flipped: the same nested study (every trial's parameters, value and pruning report),
    the same settings record (candidates, single-model scores, kept blend, tuned score,
    one-standard-error record) and the same held-out predictions.

    The kept settings and predictions alone cannot see a leak here: `good` wins whatever
    the held-out labels say (a tuner fed every participant's labels, or candidates ranked
    by curves that include the held-out one, kept the same blend). The trial values and
    single-model scores are computed from the tuning participants' labels only, so any
    leak into the objective or the ranking changes them. Flipping a *tuning* participant's
    labels instead must change them: the comparison is able to fail."""
    import shutil

    import optuna

    from conftest import flipped_labels
    from sleepemo.pipeline.stage import open_stage
    from sleepemo.ensemble.stage import fold_state, tune_fold

    stage, ds, folds, _, _ = ens_run
    copy = tmp_path / "run"
    shutil.copytree(stage.out, copy, ignore=shutil.ignore_patterns("06_ensemble"))
    state = fold_state(open_stage("ensemble", stage.cfg, stage.data_dir, copy,
                                  progress=False, log=lambda m: None))
    state.ds = ds
    held = folds.held_out(0)

    def fold0():
        shutil.rmtree(copy / "06_ensemble", ignore_errors=True)  # no study to resume
        state.__dict__.pop("curves", None)  # single-model curves from these labels
        tune_fold(state, 0, lambda: None)
        db, = (copy / "06_ensemble" / "studies").glob("nested0-*.db")
        study = optuna.load_study(study_name=db.stem, storage=f"sqlite:///{db}")
        trials = [(t.number, t.state.name, t.params, t.value, t.intermediate_values)
                  for t in study.trials]
        fold = state.writer.load_fold(0)
        return fold, json.loads(str(fold["settings"])), trials

    (first, settings, trials), (second, settings2, trials2) = \
        with_flipped_labels(ds, held, fold0)
    assert len(trials) == stage.cfg.ensemble.n_trials
    assert sum(t[1] == "COMPLETE" for t in trials) >= 2  # (at least the two queued)
    assert trials2 == trials
    assert settings2 == settings
    np.testing.assert_array_equal(first["oof"], second["oof"])
    np.testing.assert_array_equal(first["tuned"], second["tuned"])
    # the same comparison sees a tuning participant's labels (fold 1's held-out one)
    with flipped_labels(ds, folds.held_out(1)):
        _, settings3, trials3 = fold0()
    assert [t[3] for t in trials3] != [t[3] for t in trials]
    assert settings3["single_scores"] != settings["single_scores"]


def test_held_out_labels_never_reach_the_stages_nested_best_single(ens_run):
    """The stage's nested best single model with participant k's labels flipped: fold k
    chooses the same model (the curves recomputed from the flipped labels)."""
    from sleepemo.ensemble.stage import fold_state, nested_best_single

    stage, ds, folds, _, _ = ens_run
    state = fold_state(stage)
    state.ds = ds
    for k in (0, folds.n_folds - 1):
        def choices():
            state.__dict__.pop("curves", None)
            return nested_best_single(state)

        (oof, first), (oof2, second) = with_flipped_labels(ds, folds.held_out(k), choices)
        assert first[k] == second[k]
        rows = state.stack.subjects == folds.held_out(k)
        np.testing.assert_array_equal(oof[rows], oof2[rows])


def test_label_shuffled_ensemble_of_noise_scores_about_chance(smoke_dir, tmp_path):
    from sleepemo.config import load_config
    from sleepemo.data.reader import load_dataset
    from sleepemo.data.folds import write_folds
    from sleepemo.pipeline.stage import open_stage
    from sleepemo.ensemble import stage as ensemble

    ds = load_dataset(smoke_dir, progress=False)
    folds, _ = write_folds(ds, tmp_path / "folds.json")
    _fake_results(tmp_path, ds, folds, {"a": 0.0, "b": 0.0, "c": 0.0})
    cfg = load_config("smoke", ["ensemble.shuffle_labels=true"])
    stage = open_stage("ensemble", cfg, smoke_dir, tmp_path, progress=False,
                       log=lambda m: None)
    out = stage.run(ensemble.run)
    assert out.metrics["label"] == "ensemble_shuffled"
    from sleepemo.pipeline.artefacts import find
    res = find(tmp_path, "ensemble_shuffled")
    assert res.diagnostic and abs(res.score()[0].score - 0.5) < 0.05


def test_stage_07_submits_the_ensemble_only_when_its_nested_score_wins(ens_run, tmp_path):
    from sleepemo.pipeline.artefacts import results
    from sleepemo.pipeline.evidence import results_table
    from sleepemo.kaggle.stage import choose_model, ensemble_choice

    stage = ens_run[0]
    listed = results(stage.out)
    table = results_table(listed)[0]
    why = ensemble_choice(table, listed)
    nested, best = table.loc["ensemble", "overall"], table.loc["good", "overall"]
    chosen = choose_model(table)
    if nested > best:
        assert chosen == "ensemble" and "beats the best single model `good`" in why
    else:
        assert chosen == "good" and "does not beat" in why
    # the other way round, with the scores swapped in the table
    swapped = table.copy()
    swapped.loc["ensemble", "overall"], swapped.loc["good", "overall"] = \
        min(nested, best) - 0.01, max(nested, best)
    assert choose_model(swapped) == "good"
    assert "does not beat" in ensemble_choice(swapped, listed)


def test_a_journal_file_study_tunes_the_same_blend_as_the_sqlite_one(tmp_path):
    """``ensemble.storage: journal`` (Optuna's journal file in the run folder, for NFS):
    the same trials, choice and predictions as the default SQLite file."""
    from sleepemo.ensemble.sim import simulated_stack

    stack, y = simulated_stack({"a": 0.5, "b": 0.3, "c": 0.0}, n_subjects=6, seed=4)
    fits = [OptunaBlend(tmp_path / str(storage), "j", n_trials=8, top_k=3, seed=0,
                        sfreq=100.0, storage=storage).fit(stack, y)
            for storage in (None, "journal")]
    assert (tmp_path / "journal" / "j.journal").is_file()
    assert not (tmp_path / "journal" / "j.db").exists()
    assert [(t.params, t.value) for t in fits[0].study_.trials] == \
        [(t.params, t.value) for t in fits[1].study_.trials]
    assert fits[0].params_ == fits[1].params_ and fits[0].guard_ == fits[1].guard_
    np.testing.assert_array_equal(fits[0].predict(stack), fits[1].predict(stack))
