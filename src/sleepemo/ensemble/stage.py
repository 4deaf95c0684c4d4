"""Stage 06: an Optuna-tuned ensemble of every model's out-of-fold predictions, scored by a
nested leave-one-participant-out loop.

The candidates are every non-diagnostic result of the run (the predictions contract,
:func:`sleepemo.pipeline.artefacts.results`) except stage 06's own and ``ensemble.exclude``. The
ensembler is :class:`sleepemo.ensemble.blend.OptunaBlend` (its docstring has the search space).

- **Nested score**: for fold k, the ensembler is tuned on the out-of-fold predictions and
  labels of fold k's 13 training participants only (:meth:`Folds.labels_of`) and predicts
  the held-out participant. The 14 held-out predictions form the ``ensemble`` result, so
  its LOPO score (``lopo.csv``) *is* the nested score.
- **Tuned score**: the final ensembler, tuned on all 14 participants, scores its own kept
  trial (``ensemble.search``: the best one, or the simplest within one standard error of
  it): optimistic (the settings were chosen on those very participants). The report
  shows both side by side; the expected score of a submission is the nested one.
- **Test predictions**: the final ensembler's, applied to the test participants' test
  predictions of its models (per-participant normalisation, label-free).
- **Best single model, hindsight and nested**: the best single model's LOPO score
  (:func:`sleepemo.pipeline.choice.best_single`) is chosen on the 14 participants it is
  scored on, so it is optimistic; the *nested best single model* is its honest twin
  (:func:`nested_best_single`): in fold k, the candidate with the best score on fold k's
  training participants predicts participant k (numpy only, recomputed by the report).
  ``metrics.json`` gives the ensemble's nested score minus each; the run report's section
  "The ensemble against single models" gives both with paired intervals
  (:func:`sleepemo.pipeline.contrasts.ensemble_section`: the bootstrap belongs to the
  report, so changing it re-tunes nothing).

Every study is resumable (an SQLite file per study under ``06_ensemble/studies/`` by
default, or ``ensemble.storage``, any SQLAlchemy URL); a finished fold is not tuned again.
Stage 07 submits the ensemble when its nested score beats the best single model's LOPO
(the hindsight one: the comparison with the nested one is reported, not acted on).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections import Counter

import numpy as np

from sleepemo.config import fields_affecting
from sleepemo.ensemble.blend import (OptunaBlend, Stack, best_single_held_out, curves_of,
                                     fit_held_out)
from sleepemo.io import read_json
from sleepemo.metric import default_min_run
from sleepemo.pipeline.artefacts import (Planned, ResultWriter, code_hash, fingerprint,
                                         listing, results, score_oof)
from sleepemo.pipeline.evidence import plot_curves, pyplot, results_table, save_figure
from sleepemo.pipeline.choice import best_single
from sleepemo.pipeline.executor import run_folds
from sleepemo.pipeline.stage import Stage, StageOutput
from sleepemo.progress import bar


@dataclasses.dataclass
class FoldState:
    """What every nested fold needs (built in the stage's process and in fold workers)."""

    stage: Stage
    ds: object
    folds: object
    models: list
    stack: Stack        # out-of-fold predictions of the training participants
    test: Stack         # test predictions of the test participants
    writer: ResultWriter
    nested_workers: int

    @property
    def fp(self) -> str:
        return self.writer.fp

    @functools.cached_property
    def curves(self) -> dict | None:
        """Every model's per-timepoint AUC curve per training participant (the same in
        every fold; each fold reads only its tuning participants'). None with shuffled
        labels, which are permuted per fold."""
        if self.stage.cfg.ensemble.shuffle_labels:
            return None
        y = np.concatenate([self.ds.train[s].y for s in self.folds.train_subjects])
        return curves_of(self.stack, y)


def candidates(stage: Stage, listed: list | None = None) -> list:
    """The results the ensemble may blend (see the module docstring), among ``listed``
    (default: every result of the run)."""
    skip = set(stage.cfg.ensemble.exclude)
    return [r for r in (results(stage.out) if listed is None else listed)
            if not r.diagnostic and r.stage != "ensemble" and r.label not in skip]


def ensemble_fingerprint(stage: Stage, listed: list, data_fp: str) -> str:
    """What the ensemble depends on: its candidates' fingerprints, its settings, the
    seed, the data and the code."""
    return fingerprint(stage="ensemble", inputs={r.label: r.fingerprint for r in listed},
                       ensemble=fields_affecting(stage.cfg.ensemble, "weights"),
                       seed=stage.cfg.seed, data=data_fp, code=code_hash(__name__))


def result_name(stage: Stage) -> str:
    return "ensemble_shuffled" if stage.cfg.ensemble.shuffle_labels else "ensemble"


def fingerprints(stage: Stage, planned: dict | None = None) -> list[Planned]:
    """The ensemble as :func:`run` would write it now (:mod:`sleepemo.pipeline.plan`), over the
    results the stages before it will have (``planned``) or have on disk."""
    listed = candidates(stage, listing(stage.out, planned))
    return [Planned(stage.spec.name, result_name(stage), ensemble_fingerprint(
        stage, listed, stage.folds().data_fingerprint),
        diagnostic=stage.cfg.ensemble.shuffle_labels)]


def fold_state(stage: Stage) -> FoldState:
    cfg = stage.cfg.ensemble
    ds = stage.dataset()
    folds = stage.folds(ds)
    listed = candidates(stage)
    if not listed:
        raise FileNotFoundError(f"no model results under {stage.out} to ensemble: run "
                                "stages 01-05 first")
    rows = np.repeat(folds.train_subjects, [folds.n_trials[s] for s in folds.train_subjects])
    test_rows = np.repeat(folds.test_subjects, [folds.n_trials[s] for s in folds.test_subjects])
    stack = Stack({r.label: r.array("oof", mmap=True) for r in listed}, rows)
    test = Stack({r.label: r.array("test", mmap=True) for r in listed}, test_rows)
    fp = ensemble_fingerprint(stage, listed, folds.data_fingerprint)
    writer = ResultWriter(stage.out, "ensemble", result_name(stage), fp, folds)
    nested_workers = 1 if cfg.workers != 1 else cfg.study_workers
    return FoldState(stage, ds, folds, [r.label for r in listed], stack, test, writer,
                     nested_workers)


def blender(state: FoldState, study: str, n_workers: int) -> OptunaBlend:
    cfg, stage = state.stage.cfg.ensemble, state.stage
    return OptunaBlend(stage.dir / "studies", f"{study}-{state.fp[:12]}", cfg.n_trials,
                       cfg.top_k, cfg.smooth_choices, stage.cfg.seed, cfg.storage,
                       n_workers, state.ds.sfreq, progress=False, search=cfg.search,
                       executor=stage.cfg.executor)


def final_labels(state: FoldState) -> np.ndarray:
    """Every training participant's labels (permuted within participant when
    ``ensemble.shuffle_labels``, as :meth:`Folds.labels_of` permutes them)."""
    cfg, seed = state.stage.cfg.ensemble, state.stage.cfg.seed
    ys = []
    for s in state.folds.train_subjects:
        y = np.asarray(state.ds.train[s].y)
        if cfg.shuffle_labels:
            y = np.random.default_rng([seed, 1000 + int(s), 77]).permutation(y)
        ys.append(y)
    return np.concatenate(ys)


def tune_fold(state: FoldState, k: int, step) -> dict:
    """Nested fold k: tune on fold k's training participants, predict the held-out one."""
    folds, cfg = state.folds, state.stage.cfg.ensemble
    t0 = time.perf_counter()
    held = folds.held_out(k)
    labels = folds.labels_of(state.ds, k, cfg.shuffle_labels, state.stage.cfg.seed)
    est = blender(state, f"nested{k}", state.nested_workers)
    oof = fit_held_out(est, state.stack, labels, held, state.curves)
    state.writer.save_fold(k, oof=oof.astype(np.float32), tuned=np.float64(est.best_score_),
                           settings=np.array(json.dumps(est.to_json())))
    step()
    return {"seconds": time.perf_counter() - t0}


def nested_best_single(state: FoldState) -> tuple[np.ndarray, list[str]]:
    """The nested best single model: out-of-fold predictions (the training participants'
    rows, as the stack's) and the model each fold k chose. Fold k chooses among the
    ensemble's candidates with fold k's training participants' labels only
    (:meth:`Folds.labels_of`, permuted as the nested studies' are with
    ``ensemble.shuffle_labels``), by :func:`sleepemo.ensemble.blend.best_single_held_out`,
    and predicts participant k with that model's out-of-fold predictions."""
    folds, cfg = state.folds, state.stage.cfg.ensemble
    min_run = default_min_run(state.ds.sfreq)
    oof = np.zeros(np.shape(state.stack.preds[state.models[0]]), dtype=np.float32)
    chosen = []
    for k in range(folds.n_folds):
        held = folds.held_out(k)
        labels = folds.labels_of(state.ds, k, cfg.shuffle_labels, state.stage.cfg.seed)
        model, pred = best_single_held_out(state.stack, labels, held, min_run, state.curves)
        oof[state.stack.subjects == held] = pred
        chosen.append(model)
    return oof, chosen


def run(stage: Stage) -> StageOutput:
    """Everything stage 06 does (see the module docstring)."""
    cfg, seed = stage.cfg.ensemble, stage.cfg.seed
    state = fold_state(stage)
    ds, folds, writer = state.ds, state.folds, state.writer
    stage.log(f"ensemble: {len(state.models)} candidate models, {cfg.n_trials} trials per "
              f"study, {folds.n_folds} nested studies + 1 final")
    path = stage.dir / "ensembler.json"
    result = writer.finished()
    if result is not None and path.is_file() and \
            read_json(path).get("fingerprint") == writer.fp:
        stage.log(f"{writer.name}: unchanged, reusing {writer.folder}")
        return _report(stage, state, OptunaBlend.load(path), result, writer.load_parts(),
                       [], 0.0)
    pending = [k for k in range(folds.n_folds) if not writer.fold_done(k)]
    progress = bar(total=folds.n_folds, desc="ensemble: nested studies", unit="fold",
                   enabled=stage.progress)
    progress.update(folds.n_folds - len(pending))
    done = run_folds(stage, pending, fold_state, tune_fold, cfg.workers, progress, state)
    progress.close()
    t0 = time.perf_counter()
    final = blender(state, "final", cfg.study_workers)
    final.progress = stage.progress
    final.fit(state.stack, final_labels(state), state.curves)
    final_seconds = time.perf_counter() - t0
    test_pred = final.predict(state.test).astype(np.float32)
    parts = writer.load_parts()
    for p in parts.values():
        p["test"] = test_pred
    result = writer.finish(ds, parts=parts, seed=seed, diagnostic=cfg.shuffle_labels,
                           config=dataclasses.asdict(cfg),
                           meta={"registry": "ensemble", "tuned_score": final.best_score_,
                                 "test_predictions": "the final ensembler (tuned on every "
                                 "training participant)"})
    final.save(path, fingerprint=writer.fp)  # last: marks the stage's work as complete
    fold_seconds = [d["seconds"] for d in done.values()]
    return _report(stage, state, final, result, parts, fold_seconds, final_seconds)


# ------------------------------------------------------------------ report
def _report(stage: Stage, state: FoldState, final: OptunaBlend, result, parts: dict,
            fold_seconds: list, final_seconds: float) -> StageOutput:
    folds, ds = state.folds, state.ds
    listed = results(stage.out)
    best, lopo = best_single(results_table(listed)[0])
    score = result.score()[0]
    nested, tuned = float(score.score), float(final.best_score_)
    # the hindsight model's own score, unrounded (``lopo`` is the table's, to 4 places)
    singles = _compare_singles(state, nested, float(
        next(r for r in listed if r.label == best).score()[0].score))
    nested_tuned = [float(parts[folds.held_out(k)]["tuned"]) for k in range(folds.n_folds)]
    guards = [json.loads(str(parts[folds.held_out(k)]["settings"])).get("guard")
              for k in range(folds.n_folds)]
    search = stage.cfg.ensemble.search
    nbs = singles["nested_best_single"]
    metrics = {
        "nested": nested, "tuned": tuned,
        "nested_fold_tuned_median": float(np.median(nested_tuned)),
        "best_single": {"model": best, "lopo": lopo},
        "beats_best_single": nested > lopo,
        **singles,
        "n_candidates": len(state.models), "final_candidates": final.candidates_,
        "final_params": final.params_, "n_trials": stage.cfg.ensemble.n_trials,
        "search": search, "final_guard": final.guard_,
        "nested_guard": _guard_counts(guards),
        "median_fold_seconds": float(np.median(fold_seconds)) if fold_seconds else None,
        "final_study_seconds": round(final_seconds, 1),
        "label": result.label,
    }
    if getattr(final, "study_", None) is not None:  # (a reused run keeps its pictures)
        _plots(stage, final, score, ds)
    n = folds.n_folds
    verdict = ("beats" if metrics["beats_best_single"] else "does not beat")
    lines = [
        f"{metrics['n_candidates']} candidate models (every non-diagnostic result); "
        f"{stage.cfg.ensemble.n_trials} Optuna trials per study (seeded TPE, median pruner "
        "after half the participants), the best candidates "
        f"(top {stage.cfg.ensemble.top_k} by the tuning participants' score) searched; "
        f"search `{search}`: " + SEARCH_TEXT[search],
        "",
        *_guard_lines(final.guard_, metrics["nested_guard"], n),
        "| score | value | what it is |",
        "|---|---|---|",
        f"| tuned | {tuned:.4f} | the final study's kept trial on all {n} participants "
        "(optimistic: chosen on them) |",
        f"| nested | **{nested:.4f}** | outer LOPO around the whole tuner: the expected "
        "score |",
        f"| nested folds' own tuned scores | {metrics['nested_fold_tuned_median']:.4f} "
        f"(median) | each nested study's kept trial on its {n - 1} participants |",
        f"| best single model ({best}) | {lopo:.4f} | its LOPO score (chosen in hindsight, "
        f"on all {n} participants) |",
        f"| nested best single model | {nbs['score']:.4f} | per fold, the candidate with the "
        f"best score on the fold's {n - 1} training participants predicts the held-out one "
        f"({_counts_text(nbs['counts'])}) |",
        "",
        f"The ensemble's nested score {verdict} the best single model's LOPO "
        f"({nested:.4f} vs {lopo:.4f}); stage 07 submits "
        + ("the ensemble." if metrics["beats_best_single"] else "the best single model."),
        "",
        "Ensemble (nested) minus the best single model: "
        f"{metrics['ensemble_minus_best_single']:+.4f}; minus the nested best single "
        f"model: {metrics['ensemble_minus_nested_best_single']:+.4f} (both with paired "
        "bootstrap intervals in the run report's section \"The ensemble against single "
        "models\"). "
        f"The best single model is picked after seeing the scores of all {n} participants "
        "it is scored on, so its LOPO is optimistic (the highest of several noisy scores); "
        "the nested best single model is picked in each fold without the held-out "
        "participant, as the ensemble is tuned, so it is the like-for-like comparator.",
        "",
        "Final settings (normalisation `" + final.params_["norm"] + "`): " + ", ".join(
            f"`{m}` w {p['w']:.2f}, smooth {p['smooth']}, broadcast {p['broadcast']:.2f}"
            for m, p in final.params_["models"].items()) + ".",
        "",
        "![ensemble curve](ensemble_curve.png) ![history](optimization_history.png) "
        "![importances](param_importances.png)",
    ]
    if fold_seconds:
        lines.append(f"\nMedian seconds per nested study: {metrics['median_fold_seconds']:.1f}; "
                     f"final study: {final_seconds:.1f}.")
    summary = (f"ensemble: nested {nested:.4f}, tuned {tuned:.4f}; best single "
               f"{best} {lopo:.4f}, nested best single {nbs['score']:.4f}")
    return StageOutput(metrics, summary, "\n".join(lines))


def _compare_singles(state: FoldState, ensemble: float, hindsight: float) -> dict:
    """The metrics comparing the ensemble with single models: the nested best single
    model (:func:`nested_best_single`; its score, each fold's choice, how often each model
    was chosen) and the ensemble's nested score minus the hindsight and the nested best
    single model's (no interval here: the bootstrap, ``sleepemo.pipeline.intervals``,
    belongs to the report, and a stage that reached it would re-tune when it changes).
    ``ensemble``, ``hindsight``: their window AUCs."""
    folds = state.folds
    oof, chosen = nested_best_single(state)
    nbs = float(score_oof(oof, state.ds, folds).score)  # scored as the ensemble's result
    return {"nested_best_single": {
                "score": nbs,
                "folds": [{"fold": k, "held_out": int(folds.held_out(k)), "model": m}
                          for k, m in enumerate(chosen)],
                "counts": dict(Counter(chosen).most_common())},
            "ensemble_minus_best_single": ensemble - hindsight,
            "ensemble_minus_nested_best_single": ensemble - nbs}


def _counts_text(counts: dict) -> str:
    """How often each model was chosen, e.g. "`a` in 9 folds, `b` in 5 folds"."""
    return ", ".join(f"`{m}` in {c} fold{'s' * (c != 1)}" for m, c in counts.items())


SEARCH_TEXT = {
    "compact": "the n best candidates with equal weights, one smoothing and one broadcast "
               "for them (4 parameters), each tuning participant's blend made of the best "
               "models by the other tuning participants (leave-one-out ranking), then the "
               "widest blend within one standard error of the best trial (most models; the "
               "rule in `sleepemo.ensemble.blend`).",
    "full": "per-model inclusion, weight, smoothing and broadcast; the best trial kept.",
}


def _guard_counts(guards: list) -> dict | None:
    """The nested folds' one-standard-error choices: how many folds kept each number of
    models, how many kept more models than their best trial and how many kept one model
    (None without the rule: search full)."""
    if any(g is None for g in guards):
        return None
    kept = [int(g["kept_n"]) for g in guards]
    return {"kept_n": {str(n): kept.count(n) for n in sorted(set(kept))},
            "one_model": kept.count(1),
            "wider_than_best": sum(g["kept_n"] > g["best_n"] for g in guards)}


def _guard_lines(final: dict | None, nested: dict | None, n: int) -> list[str]:
    """The report's sentences on what the one-standard-error rule chose."""
    if final is None or nested is None:
        return []
    counts = ", ".join(f"{c} kept {k} model{'s' * (k != '1')}"
                       for k, c in nested["kept_n"].items())
    if final["kept_n"] > final["best_n"]:
        what = (f"the best trial (#{final['best_trial']}, {final['best_n']} "
                f"model{'s' * (final['best_n'] != 1)}, {final['best_value']:.4f}) was not "
                f"better than trial #{final['kept_trial']} with {final['kept_n']} models "
                f"({final['kept_value']:.4f}) by more than one standard error, so the wider "
                "blend was kept")
    else:
        what = (f"the best trial (#{final['best_trial']}, {final['best_n']} "
                f"model{'s' * (final['best_n'] != 1)}, {final['best_value']:.4f}) was kept"
                + ("" if not final["wider"] else ": the best trial of each larger number of "
                   "models tried was more than one standard error below it"))
    return [f"One-standard-error choice. Final blend: {what}. Nested folds ({n}): {counts}; "
            f"{nested['wider_than_best']} kept more models than their best trial.", ""]


def _plots(stage: Stage, final: OptunaBlend, score, ds) -> None:
    """The nested ensemble's per-timepoint AUC curve with its window, and the final study's
    optimisation history and parameter importances (Optuna's matplotlib visualisers)."""
    import warnings

    import optuna

    plot_curves({"ensemble (nested)": score}, ds.sfreq, stage.dir / "ensemble_curve.png",
                title="Ensemble, nested LOPO: mean per-timepoint AUC")
    plt = pyplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_optimization_history(final.study_)
        save_figure(ax.figure, stage.dir / "optimization_history.png")
        try:
            ax = optuna.visualization.matplotlib.plot_param_importances(final.study_)
            ax.figure.set_size_inches(9, 0.25 * len(final.study_.best_params) + 2)
            ax.figure.tight_layout()  # room for the parameters' names
            save_figure(ax.figure, stage.dir / "param_importances.png")
        except (RuntimeError, ValueError) as e:  # too few finished trials
            fig, ax = plt.subplots(figsize=(5, 2))
            ax.text(0.5, 0.5, f"no importances: {e}", ha="center", wrap=True)
            ax.axis("off")
            save_figure(fig, stage.dir / "param_importances.png")
