"""The report's deep-path section (sleepemo.pipeline.contrasts): the design's best deep
result and the best other baseline against the best anchor, and the ablation pairs, each
with a paired participant-bootstrap difference."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from sleepemo.baselines.deep import ANCHORS
from sleepemo.pipeline import contrasts
from test_intervals import _table


def _run(curves: dict, stages: dict, registry: dict):
    table, scores = _table(curves, stages)
    listed = [SimpleNamespace(label=m, stage=stages[m], meta={"registry": registry.get(m, m)})
              for m in curves]
    # _table scores on 200 samples with a 10-sample shortest run: sfreq 200 gives 10 (50 ms)
    return table, listed, scores


def test_the_section_compares_the_groups_with_the_best_anchor_and_shows_the_ablations():
    rng = np.random.default_rng(3)
    bump = np.exp(-0.5 * ((np.arange(200) - 100) / 20) ** 2)
    base = 0.5 + 0.03 * rng.standard_normal((8, 200)) * 0.2 + 0.02 * rng.standard_normal(
        (8, 1)) * bump
    curves = {"eegnet": base + 0.10 * bump, "eegnet_ea": base + 0.04 * bump,
              "riemann": base + 0.02 * bump, "fusion_experts": base + 0.03 * bump,
              "fusion_raw": base + 0.03 * bump, "shuffled": base}
    stages = {"eegnet": "baselines", "eegnet_ea": "baselines", "riemann": "baselines",
              "fusion_experts": "fusion", "fusion_raw": "fusion", "shuffled": "baselines"}
    table, listed, scores = _run(curves, stages, {"eegnet_ea": "eegnet"})
    table.loc["shuffled", "diagnostic"] = True
    g = contrasts.groups(table, listed)
    assert sorted(g["anchors"]) == ["eegnet", "eegnet_ea"]
    assert sorted(g["design"]) == ["fusion_experts", "fusion_raw"]
    assert g["baselines"] == ["riemann"]  # the diagnostic row is in no group
    text = contrasts.section(table, listed, scores, 200.0)
    assert "The best anchor (braindecode networks, stage 01) is `eegnet`" in text
    design = next(line for line in text.splitlines() if line.startswith("| best of the design"))
    assert "`fusion_experts`" in design or "`fusion_raw`" in design
    assert design.rstrip().endswith("| behind |")  # 0.03 below 0.10 on every participant
    ea = next(line for line in text.splitlines() if line.startswith("| `eegnet_ea` |"))
    assert "Euclidean alignment" in ea and ea.rstrip().endswith("| behind |")
    same = next(line for line in text.splitlines() if line.startswith("| `fusion_experts` |"))
    assert "+0.0000 [+0.0000, +0.0000]" in same and same.rstrip().endswith("| within noise |")


def test_every_aligned_result_is_paired_with_its_unaligned_twin():
    """The baselines', the fusion's and stage 03's aligned results (zero-shot and
    ``_tta``) each against its unaligned twin; a twin missing from the run, no row."""
    assert contrasts.aligned_twin("experts_mae_fomaml_ea") == "experts_mae_fomaml"
    assert contrasts.aligned_twin("experts_mae_fomaml_ea_tta") == "experts_mae_fomaml_tta"
    assert contrasts.aligned_twin("fusion_raw_ea") == "fusion_raw"
    assert contrasts.aligned_twin("experts_mae_fomaml_tta") is None
    rng = np.random.default_rng(5)
    names = ["eegnet", "eegnet_ea", "experts_mae_fomaml", "experts_mae_fomaml_ea",
             "experts_mae_fomaml_tta", "experts_mae_fomaml_ea_tta", "fusion_raw_ea"]
    curves = {m: 0.5 + 0.02 * rng.standard_normal((8, 200)) for m in names}
    stages = {m: m.split("_")[0].replace("eegnet", "baselines") for m in names}
    table, listed, scores = _run(curves, stages, {"eegnet_ea": "eegnet"})
    text = contrasts.section(table, listed, scores, 200.0)
    pairs = {tuple(cell.strip(" `") for cell in line.split("|")[1:3])
             for line in text.splitlines() if "| Euclidean alignment |" in line}
    assert pairs == {("eegnet_ea", "eegnet"), ("experts_mae_fomaml_ea", "experts_mae_fomaml"),
                     ("experts_mae_fomaml_ea_tta", "experts_mae_fomaml_tta")}


def test_no_anchor_no_section():
    rng = np.random.default_rng(1)
    curves = {"riemann": 0.5 + 0.02 * rng.standard_normal((8, 200))}
    table, listed, scores = _run(curves, {"riemann": "baselines"}, {})
    assert contrasts.section(table, listed, scores, 200.0) == ""


def test_the_reports_anchor_names_are_the_familys():
    assert contrasts.ANCHOR_MODELS == ANCHORS


def test_the_ensemble_section_scores_the_nested_best_single_from_the_chosen_curves():
    """Participant s's curve of the nested best single model is that of the model its
    fold chose (stage 06's metrics), scored as the metric scores; the section's two rows
    are the paired differences of the ensemble against it and the hindsight best."""
    from sleepemo.metric import score_from_curve
    from sleepemo.pipeline.intervals import paired_difference

    rng = np.random.default_rng(7)
    bump = np.exp(-0.5 * ((np.arange(200) - 100) / 20) ** 2)
    curves = {m: 0.5 + 0.02 * rng.standard_normal((8, 200)) + lift * bump
              for m, lift in (("ensemble", 0.06), ("a", 0.05), ("b", 0.03))}
    stages = {"ensemble": "ensemble", "a": "baselines", "b": "fusion"}
    table, listed, scores = _run(curves, stages, {})
    chosen = {s: ("a" if s % 3 else "b") for s in range(1, 9)}
    nbs = contrasts.nested_single(scores, chosen, 200.0)
    mine = np.stack([curves[chosen[s]][s - 1] for s in range(1, 9)])
    np.testing.assert_array_equal(nbs.per_subject[3], curves["b"][2])
    assert nbs.score == score_from_curve(mine.mean(0), 10)[0]
    metrics = {"nested_best_single": {"folds": [{"fold": k, "held_out": s, "model": m}
                                                for k, (s, m) in enumerate(chosen.items())]}}
    text = contrasts.ensemble_section(table, scores, 200.0, metrics)
    rows = [line for line in text.splitlines() if line.startswith(("| best", "| nested"))]
    assert len(rows) == 2 and "`a` (hindsight)" in rows[0]
    for row, other in zip(rows, (scores["a"], nbs)):
        d, lo, hi = paired_difference({"ensemble": scores["ensemble"], "o": other},
                                      "ensemble", "o", 200.0)
        assert f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]" in row
    # without the ensemble's metrics, or with a stale list of participants: no section
    assert contrasts.ensemble_section(table, scores, 200.0, None) == ""
    stale = {"nested_best_single": {"folds": metrics["nested_best_single"]["folds"][:5]}}
    assert contrasts.ensemble_section(table, scores, 200.0, stale) == ""
