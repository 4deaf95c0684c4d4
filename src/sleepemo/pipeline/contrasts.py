"""The report's answer to "does the design's deep path beat the field's deep anchors, and
if not, what do the ablations say?", from the results of one run.

Three groups of non-diagnostic results: the **design** (stages 02-04: the MAE's probes,
the experts, the fusion), the **anchors** (stage-01 results of the braindecode networks,
:data:`ANCHOR_MODELS`, aligned or not) and the **other baselines**
(the rest of stage 01). The best of each is compared with the best anchor by a paired
participant-bootstrap difference (:func:`sleepemo.pipeline.intervals.paired_difference`).

**Ablations** are pairs of results that differ by one thing (:data:`CONTRASTS`, plus every
Euclidean-aligned result against its unaligned twin, :func:`aligned_twin`); each pair
present in the run is shown with its paired difference, so the report says which
ingredient helps, hurts or cannot be told apart on these participants.

**The ensemble against single models** (:func:`ensemble_section`): stage 06's nested score
minus the hindsight best single model and minus the *nested best single model* (each
held-out participant scored by the model its fold chose without it, as listed in
``06_ensemble/metrics.json``), both with paired intervals. The nested best single model's
per-participant curves are those of the models chosen (:func:`nested_single`), so the
report recomputes no choice and reads no label.
"""
from __future__ import annotations

import numpy as np

from sleepemo.metric import WindowAUC, default_min_run, score_from_curve
from sleepemo.pipeline import intervals
from sleepemo.pipeline.choice import best_single

#: (with, without, what the difference measures): pairs that differ by one ingredient
CONTRASTS = (
    ("fusion_experts", "fusion_raw", "stage 03's experts as the fusion's input, against "
                                     "the raw band envelopes"),
    ("fusion_mae", "fusion_raw", "the MAE's tokens as the fusion's input, against the raw "
                                 "band envelopes"),
    ("fusion_experts", "fusion_experts_noevoked", "the evoked-waveform tokens"),
    ("fusion_experts_pairwise", "fusion_experts", "the pairwise (within-participant AUC) "
                                                  "loss against per-timepoint BCE"),
    ("experts_mae_fomaml", "experts_random_fomaml", "the MAE's weights as the experts' "
                                                    "initialisation"),
    ("experts_mae_fomaml", "experts_mae_supervised", "FOMAML against plain supervised "
                                                     "training of the experts"),
    ("experts_mae_fomaml_tta", "experts_mae_fomaml", "test-time adaptation"),
    ("mae_probe", "band_probe", "the MAE encoder's embeddings against the band features "
                                "it reads"),
)
DESIGN_STAGES = ("mae", "experts", "fusion")
#: registry names of the anchors: :data:`sleepemo.baselines.deep.ANCHORS` (a test keeps
#: the two equal; the report does not import the family, so editing it retrains nothing)
ANCHOR_MODELS = ("eegnet", "shallow_fbcsp", "conformer")


def aligned_twin(label: str) -> str | None:
    """The unaligned twin of a Euclidean-aligned result: ``<name>_ea`` -> ``<name>`` (the
    baselines', the experts', the fusion's), and stage 03's adapted
    ``experts_<variant>_ea_tta`` -> ``experts_<variant>_tta``; None for other labels."""
    for suffix in ("_ea", "_ea_tta"):
        if label.endswith(suffix):
            return label[:-len(suffix)] + suffix[len("_ea"):]
    return None


def groups(table, listed) -> dict[str, list[str]]:
    """Non-diagnostic result labels of the design, the anchors and the other baselines."""
    anchors = {r.label for r in listed
               if r.stage == "baselines" and r.meta.get("registry") in ANCHOR_MODELS}
    singles = table[~table["diagnostic"].astype(bool)]
    out = {"design": [], "anchors": [], "baselines": []}
    for label, stage in singles["stage"].items():
        if label in anchors:
            out["anchors"].append(label)
        elif stage in DESIGN_STAGES:
            out["design"].append(label)
        elif stage == "baselines":
            out["baselines"].append(label)
    return out


def _best(table, labels: list[str]) -> str | None:
    return max(labels, key=lambda m: (float(table.loc[m, "overall"]), m)) if labels else None


def _verdict(low: float, high: float) -> str:
    return "ahead" if low > 0 else "behind" if high < 0 else "within noise"


def section(table, listed, scores: dict, sfreq: float) -> str:
    """The report's Markdown section (empty when the run has no anchors or no design
    results)."""
    g = groups(table, listed)
    anchor = _best(table, g["anchors"])
    if anchor is None:
        return ""
    rows = []
    for what, key in (("the design's deep path (stages 02-04)", "design"),
                      ("the other baselines (stage 01)", "baselines")):
        best = _best(table, g[key])
        if best is None:
            continue
        d, lo, hi = intervals.paired_difference(scores, best, anchor, sfreq)
        rows.append(f"| best of {what} | `{best}` | {scores[best].score:.4f} | {d:+.4f} "
                    f"[{lo:+.4f}, {hi:+.4f}] | {_verdict(lo, hi)} |")
    pairs = [(a, b, w) for a, b, w in CONTRASTS if a in scores and b in scores]
    pairs += [(m, aligned_twin(m), "Euclidean alignment") for m in sorted(scores)
              if aligned_twin(m) in scores]
    lines = ["## The design's deep path against the deep anchors", "",
             f"The best anchor (braindecode networks, stage 01) is `{anchor}` "
             f"({scores[anchor].score:.4f}). Differences are paired participant-bootstrap "
             "differences with their 95% intervals (as in the LOPO table).", "",
             "| | result | LOPO | minus best anchor [95%] | |", "|---|---|---|---|---|",
             f"| best anchor | `{anchor}` | {scores[anchor].score:.4f} | reference | |",
             *rows, ""]
    if pairs:
        lines += ["Ablations: each pair differs by one ingredient.", "",
                  "| with | without | what | difference [95%] | |", "|---|---|---|---|---|"]
        for a, b, what in pairs:
            d, lo, hi = intervals.paired_difference(scores, a, b, sfreq)
            lines.append(f"| `{a}` | `{b}` | {what} | {d:+.4f} [{lo:+.4f}, {hi:+.4f}] "
                         f"| {_verdict(lo, hi)} |")
        lines.append("")
    return "\n".join(lines)


def nested_single(scores: dict, chosen: dict, sfreq: float) -> WindowAUC:
    """The nested best single model as a score: participant -> the model chosen for it
    (``chosen``), its curve that model's curve on that participant (``scores``: label ->
    :class:`~sleepemo.metric.WindowAUC`), scored by the metric (window of the mean curve)."""
    per_subject = {s: scores[m].per_subject[s] for s, m in chosen.items()}
    curve = np.mean(list(per_subject.values()), axis=0)
    value, window = score_from_curve(curve, default_min_run(sfreq))
    return WindowAUC(float(value), curve, window, per_subject)


def ensemble_section(table, scores: dict, sfreq: float, ensemble_metrics: dict | None,
                     label: str = "ensemble") -> str:
    """The report's Markdown paragraph on stage 06's ensemble against the hindsight and
    the nested best single model (empty without the ensemble or its metrics)."""
    best = best_single(table)
    if label not in scores or not ensemble_metrics or best is None or \
            "nested_best_single" not in ensemble_metrics:
        return ""
    folds = ensemble_metrics["nested_best_single"]["folds"]
    order = list(scores[label].per_subject)
    chosen = {f["held_out"]: f["model"] for f in folds}
    if sorted(chosen) != sorted(order) or any(m not in scores for m in chosen.values()):
        return ""  # (a stale metrics file: other participants or models)
    both = {**scores, "nested best single": nested_single(
        scores, {s: chosen[s] for s in order}, sfreq)}
    rows = []
    for what, other in ((f"best single model `{best[0]}` (hindsight)", best[0]),
                        ("nested best single model", "nested best single")):
        d, lo, hi = intervals.paired_difference(both, label, other, sfreq)
        rows.append(f"| {what} | {both[other].score:.4f} | {d:+.4f} [{lo:+.4f}, {hi:+.4f}] "
                    f"| {_verdict(lo, hi)} |")
    return "\n".join([
        "## The ensemble against single models", "",
        f"Stage 06's nested score ({scores[label].score:.4f}) minus the best single model "
        "chosen in hindsight (on the participants it is scored on: optimistic) and minus "
        "the nested best single model (per fold, chosen without the held-out participant, "
        "as the ensemble is tuned: the like-for-like comparator); paired participant-"
        "bootstrap differences with their 95% intervals.", "",
        "| against | its LOPO | ensemble minus it [95%] | |", "|---|---|---|---|",
        *rows, ""])
