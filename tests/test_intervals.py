"""Participant-bootstrap intervals of the LOPO score (sleepemo.pipeline.intervals), against
a case enumerated by hand and a plain loop."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sleepemo.metric import WindowAUC, score_from_curve
from sleepemo.pipeline.intervals import (COLUMNS, add_intervals, bootstrap_scores,
                                         percentile_interval, resample)

#: Two participants' AUC curves (4 timepoints, shortest run 2 samples).
A = [0.7, 0.7, 0.7, 0.4]
B = [0.4, 0.6, 0.6, 0.6]
#: Every ordered draw of 2 participants from 2.
ALL_DRAWS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])


def test_hand_computed_replicates_and_interval():
    """Replicates by hand: {A, A} scores 0.7 over samples 0-2; {A, B} has the mean curve
    [0.55, 0.65, 0.65, 0.5] (0.5 is not above chance), so samples 0-2, (0.55 + 0.65 +
    0.65) / 3 = 0.61667; {B, B} scores 0.6 over samples 1-3: the window moves with the
    draw. Sorted 0.6, 0.61667, 0.61667, 0.7; numpy's linear percentiles sit at positions
    0.025 * 3 = 0.075 and 0.975 * 3 = 2.925: 0.6 + 0.075 * (0.61667 - 0.6) = 0.60125 and
    0.61667 + 0.925 * (0.7 - 0.61667) = 0.69375."""
    reps = bootstrap_scores(np.array([A, B]), 2, ALL_DRAWS)
    np.testing.assert_allclose(reps, [0.7, 1.85 / 3, 1.85 / 3, 0.6], rtol=0, atol=1e-12)
    low, high = percentile_interval(reps)
    assert low == pytest.approx(0.60125, abs=1e-12)
    assert high == pytest.approx(0.69375, abs=1e-12)


def test_a_replicate_without_a_window_scores_half():
    reps = bootstrap_scores(np.array([A, [0.4, 0.4, 0.4, 0.4]]), 2, ALL_DRAWS)
    # {A, C}: [0.55, 0.55, 0.55, 0.4]; {C, C}: nothing above 0.5
    np.testing.assert_allclose(reps, [0.7, 0.55, 0.55, 0.5], rtol=0, atol=1e-12)


def test_seeded_draws_equal_a_plain_loop_over_replicates():
    """The vectorised replicates are the metric of each replicate's participants, one at
    a time; the same seed gives the same draws, another seed others."""
    rng = np.random.default_rng(7)
    curves = 0.5 + 0.04 * rng.standard_normal((2, 9, 60)) + 0.03 * np.sin(
        np.arange(60) / 8)
    draws = resample(9, n_boot=300, seed=3)
    np.testing.assert_array_equal(draws, np.random.default_rng(3).integers(0, 9, (300, 9)))
    np.testing.assert_array_equal(draws, resample(9, n_boot=300, seed=3))
    assert not np.array_equal(draws, resample(9, n_boot=300, seed=4))
    reps = bootstrap_scores(curves, 5, draws)
    assert reps.shape == (2, 300)
    for m in range(2):
        loop = [score_from_curve(curves[m][d].mean(axis=0), 5)[0] for d in draws]
        np.testing.assert_allclose(reps[m], loop, rtol=0, atol=1e-12)
    assert np.unique(reps[0]).size > 100  # the draws do vary the score


def test_paired_difference_of_a_model_with_itself_is_exactly_zero():
    rng = np.random.default_rng(0)
    curves = 0.5 + 0.05 * rng.standard_normal((12, 80))
    reps = bootstrap_scores(np.stack([curves, curves]), 10, resample(12))
    low, high = percentile_interval(reps[0] - reps[1])
    assert (low, high) == (0.0, 0.0)


def test_a_clearly_better_model_has_a_difference_interval_above_zero():
    """On every participant the good model's curve is 0.05 above the weak one's in the
    window (plus noise): the paired interval excludes 0, while the two scores' own
    intervals overlap."""
    rng = np.random.default_rng(1)
    bump = np.exp(-0.5 * ((np.arange(100) - 50) / 12) ** 2)
    person = 0.08 * rng.standard_normal((14, 1)) * bump  # what both models share
    weak = 0.5 + 0.03 * bump + person + 0.01 * rng.standard_normal((14, 100))
    good = weak + 0.05 * bump
    reps = bootstrap_scores(np.stack([good, weak]), 10, resample(14))
    low, high = percentile_interval(reps[0] - reps[1])
    assert 0 < low < high
    (good_low, weak_low), (good_high, weak_high) = percentile_interval(reps)
    assert good_low < weak_high  # unpaired, the intervals would not separate them


def _table(curves: dict, stages: dict, diagnostic=()):
    scores = {}
    for m, c in curves.items():
        score, window = score_from_curve(c.mean(axis=0), 10)
        scores[m] = WindowAUC(score, c.mean(axis=0), window,
                              {s: row for s, row in zip((1, 2, 3, 4, 5, 6, 7, 8), c)})
    rows = [{"model": m, "stage": stages[m], "overall": round(scores[m].score, 4),
             "window_ms": "", "diagnostic": m in diagnostic,
             **{f"S{s}": 0.5 for s in scores[m].per_subject}} for m in curves]
    table = pd.DataFrame(rows).set_index("model").sort_values("overall", ascending=False)
    return table, scores


def test_table_columns_sit_after_overall_and_compare_with_the_best_single_model():
    rng = np.random.default_rng(2)
    bump = np.exp(-0.5 * ((np.arange(200) - 100) / 20) ** 2)
    base = 0.5 + 0.05 * rng.standard_normal((8, 1)) * bump
    curves = {"ens": base + 0.09 * bump, "good": base + 0.06 * bump,
              "weak": base + 0.02 * bump, "leak": base + 0.2 * bump,
              "noise": 0.5 + 0.02 * rng.standard_normal((8, 200))}
    stages = {"ens": "ensemble", "good": "baselines", "weak": "fusion", "leak": "baselines",
              "noise": "rl"}
    table, scores = _table(curves, stages, diagnostic=("leak",))
    out = add_intervals(table, scores, 200.0)
    assert list(out.columns) == ["stage", "overall", *COLUMNS, "window_ms", "diagnostic",
                                 *[f"S{s}" for s in range(1, 9)]]
    # the reference is the best single model: not the ensemble, not a diagnostic row
    assert out.loc["good", ["diff_to_best", "diff_low", "diff_high"]].tolist() == [0, 0, 0]
    for m in out.index:
        assert out.loc[m, "ci_low"] <= out.loc[m, "ci_high"]
        assert out.loc[m, "diff_low"] <= out.loc[m, "diff_high"]
        assert out.loc[m, "diff_to_best"] == pytest.approx(
            scores[m].score - scores["good"].score, abs=6e-5)
    assert out.loc["ens", "diff_low"] > 0 and out.loc["weak", "diff_high"] < 0
    pd.testing.assert_frame_equal(out, add_intervals(table, scores, 200.0))  # seeded
    # a result's own interval does not depend on the other rows of the table
    alone = add_intervals(table.loc[["weak"]], {"weak": scores["weak"]}, 200.0)
    assert alone.loc["weak", "ci_low"] == out.loc["weak", "ci_low"]
    assert alone.loc["weak", "diff_to_best"] == 0


def test_no_single_model_leaves_the_differences_empty_and_other_participants_are_refused():
    rng = np.random.default_rng(3)
    curves = {"ens": 0.5 + 0.02 * rng.standard_normal((8, 50))}
    table, scores = _table(curves, {"ens": "ensemble"})
    out = add_intervals(table, scores, 200.0)
    assert np.isfinite(out.loc["ens", "ci_low"]) and np.isnan(out.loc["ens", "diff_to_best"])
    table, scores = _table({"a": curves["ens"], "b": curves["ens"]},
                           {"a": "baselines", "b": "baselines"})
    s = scores["b"]
    scores["b"] = WindowAUC(s.score, s.curve, s.window,
                            {k + 10: v for k, v in s.per_subject.items()})
    with pytest.raises(ValueError, match="same ones"):
        add_intervals(table, scores, 200.0)


def test_stage_07_says_when_its_choice_is_within_noise():
    from sleepemo.kaggle.stage import choice_noise, choose_model

    rng = np.random.default_rng(4)
    bump = np.exp(-0.5 * ((np.arange(200) - 100) / 20) ** 2)
    base = 0.5 + (0.02 + 0.03 * rng.standard_normal((8, 1))) * bump + \
        0.01 * rng.standard_normal((8, 200))
    curves = {"ens": base + 0.08 * bump, "good": base + 0.04 * bump,
              "twin": base + 0.04 * bump + 0.002 * rng.standard_normal((8, 200)),
              "weak": base}
    stages = {"ens": "ensemble", "good": "baselines", "twin": "baselines",
              "weak": "baselines"}
    table, scores = _table(curves, stages)
    table = add_intervals(table, scores, 200.0)
    single = str(table.loc[["good", "twin"], "overall"].idxmax())
    other = "twin" if single == "good" else "good"
    # the ensemble clearly beats the best single model: chosen, not within noise
    assert choose_model(table) == "ens"
    text, within = choice_noise(table, "ens")
    assert not within and f"`ens` minus `{single}`" in text and "excludes 0" in text
    # without it, the best single model is chosen over a near-twin: within noise
    table = table.drop(index="ens")
    assert choose_model(table) == single
    text, within = choice_noise(table, single)
    assert within and f"`{single}` minus `{other}`" in text and "within noise" in text
    # the mirrored interval of the runner-up is the chosen model's own paired interval
    reps = bootstrap_scores(np.stack([curves[single], curves[other]]), 10, resample(8))
    low, high = percentile_interval(reps[0] - reps[1])
    assert f"[{low:+.4f}, {high:+.4f}]" in text
    # against a clearly weaker runner-up it is not
    text, within = choice_noise(table.drop(index=other), single)
    assert not within and "minus `weak`" in text
    assert choice_noise(table.loc[[single]], single) is None  # no rival
