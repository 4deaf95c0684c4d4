"""The best single model of a run: the reference of every comparison between results.

Stage 06 compares the ensemble's nested score with it, stage 07 submits it when the
ensemble does not beat it, and ``lopo.csv``'s paired differences
(:mod:`sleepemo.pipeline.intervals`) are taken against it. A module of its own so that
the stages using it depend on nothing else of the report (house style 5: editing the
report retrains nothing).
"""
from __future__ import annotations


def best_single(table) -> tuple[str, float] | None:
    """The best single model of a run and its LOPO score: the non-diagnostic row of a
    LOPO table (:func:`sleepemo.pipeline.evidence.results_table`) with the highest ``overall`` that
    is not an ensemble; None if there is none. Stage 06's report and stage 07's choice
    compare the ensemble's nested score with it."""
    singles = table[~table["diagnostic"].astype(bool) & (table["stage"] != "ensemble")]
    if singles.empty:
        return None
    best = str(singles["overall"].astype(float).idxmax())
    return best, float(singles.loc[best, "overall"])
