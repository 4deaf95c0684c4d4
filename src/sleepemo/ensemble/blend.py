"""Optuna-tuned blending of out-of-fold predictions (stage 06), with a nested score.

The input is a :class:`Stack`: the per-timepoint probabilities of several models for a set
of trials, each trial tagged with its participant. :class:`OptunaBlend` is a
scikit-learn-style estimator: ``fit(stack, y)`` tunes a blend on the stack's trials and
``predict(stack)`` applies it to any trials (other participants, the test set).

What ``fit`` does, on its own trials only:

1. **Candidates**: every model is scored alone (the competition metric,
   :func:`sleepemo.metric.window_auc`); the ``top_k`` best are kept, best first.
2. **Search** (an Optuna study, :mod:`sleepemo.ensemble.studies`: seeded TPE sampler, SQLite file or
   any SQLAlchemy URL, resumable, ``n_workers`` processes on one study). Every blend has
   ``norm``: per-participant normalisation of every model's output, at each timepoint
   across that participant's trials: ``rank`` (ranks scaled to [0, 1]) or ``zscore``; and
   per blended model a weight ``w``, a Gaussian smoothing along time ``smooth`` (sigma in
   samples, one of ``smooth_choices``) and a ``broadcast`` (the mix of the per-timepoint
   output with its trial mean broadcast to every timepoint: 0 = per-timepoint only,
   1 = trial-level only). ``search`` sets how many of these a study chooses:

   - ``compact`` (the default; 4 parameters): ``norm``; ``n_models`` in 1..``top_k``, the
     blend being the ``n_models`` best models with equal weights, so "the best model
     alone" is one of its choices; one ``smooth`` and one ``broadcast`` shared by those
     models. **Leave-one-out ranking**: a trial's blend for tuning participant p is made of
     the best models by the *other* tuning participants' single-model scores
     (:func:`loo_orders`), so no trial's value on p includes choosing models by p's own
     labels. Without it, "the best model alone" is scored on the participants that made it
     the best (the highest of many noisy scores), and the study favours few models exactly
     where the signal is too weak to rank them (docs/evaluation.md).
   - ``full`` (``1 + 4 * top_k`` parameters): per candidate ``use`` (inclusion), ``w``,
     ``smooth`` and ``broadcast``. With many candidates and a weak signal its studies fit
     the tuning participants' noise (see docs/evaluation.md).

   The objective is the window AUC over the trials' participants. It is computed on the
   first half of the participants first and reported, so Optuna's median pruner can stop a
   poor trial early. Two trials are queued before the sampler's own: every candidate with
   equal weights, and the best candidate alone (``rank``, no smoothing, no broadcast).
3. **Choice.** ``full``: the best trial (the tuned blend is never worse than the best
   single model on the tuning participants). ``compact``: the *one-standard-error rule*
   toward the widest blend (``guard_`` records it). Let B be the best completed trial
   (highest value, then lowest number), with ``n_B`` models, and for each ``n > n_B``
   that a completed trial used, C_n the best completed trial with ``n`` models (same tie
   rule). For a trial, each tuning participant's score is the mean of that participant's
   per-timepoint AUC curve over the trial's window (the window of the participants' mean
   curve, as the metric's; so the trial's value is the mean of these scores). With
   ``d_p = score_p(B) - score_p(C_n)`` over the P tuning participants,
   ``SE = std(d, ddof=1) / sqrt(P)`` (0 if P < 2). The blend kept is C_n for the largest
   ``n`` with ``mean(d) <= SE``, else B: the equal-weight blend of the most models whose
   score the best one does not beat by more than its own participant-to-participant
   noise. More models is the steadier side (design choice): an equal-weight blend of n
   models depends less on a noisy ranking as n grows, and an average of noisy, partly
   independent predictors varies less than any one of them; where one model clearly leads
   (its advantage beyond one SE), it is kept alone. The rule has no randomness: the same
   study gives the same choice (the study itself is seeded, see
   :mod:`sleepemo.ensemble.studies`).
4. The kept trial's settings are ``params_`` (the same form for both searches: ``norm``
   and per model ``w``, ``smooth``, ``broadcast``); ``predict`` normalises the new trials
   per participant (label-free), blends, and ranks the blend within each participant
   again, giving values in [0, 1] (the metric only compares trials of one participant).

Nothing in ``predict`` reads a label. The **nested score** (stage 06; :func:`nested_predict`
for a plain stack) wraps ``fit`` in an outer leave-one-participant-out loop
(:func:`fit_held_out`): tune on 13 participants' out-of-fold predictions, predict the
14th; the tuned score (the kept trial's value on all 14) is optimistic, the nested one is
the expected score of the procedure. Its like-for-like reference is the **nested best
single model** (:func:`best_single_held_out`, :func:`nested_best_single`): in each outer
fold, the one model with the best score on the tuning participants (what the compact
search's "best model alone" is) predicts the held-out participant.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

from sleepemo.config import EnsembleConfig
from sleepemo.ensemble import studies
from sleepemo.io import write_json, write_npy
from sleepemo.metric import (column_ranks, default_min_run, per_timepoint_auc,
                             score_from_curve, window_auc)

NORMS = ("rank", "zscore")
SEARCHES = EnsembleConfig.SEARCHES
_PACKS: dict = {}  # pack folder -> {name: array}: one load per process


# ------------------------------------------------------------------ data
@dataclass
class Stack:
    """Per-timepoint outputs of several models for the same trials.

    preds : model -> array (n_trials, n_times) of probabilities
    subjects : array (n_trials,): each trial's participant
    """

    preds: dict
    subjects: np.ndarray

    def __post_init__(self):
        self.subjects = np.asarray(self.subjects)
        for m, p in self.preds.items():
            if np.shape(p)[0] != self.subjects.size or np.ndim(p) != 2:
                raise ValueError(f"model {m}: predictions of shape {np.shape(p)} for "
                                 f"{self.subjects.size} trials (need (n_trials, n_times))")

    @property
    def models(self) -> list[str]:
        return list(self.preds)

    def participants(self) -> list:
        return list(dict.fromkeys(self.subjects.tolist()))

    def rows(self, subjects) -> "Stack":
        """The trials of ``subjects`` only."""
        keep = np.isin(self.subjects, list(subjects))
        return Stack({m: np.asarray(p)[keep] for m, p in self.preds.items()},
                     self.subjects[keep])


def normalise(pred: np.ndarray, subjects: np.ndarray, how: str) -> np.ndarray:
    """Per-participant normalisation at each timepoint across that participant's trials
    (label-free): ``rank`` -> ranks scaled to [0, 1], ``zscore`` -> mean 0, sd 1."""
    if how not in NORMS:
        raise ValueError(f"normalisation {how!r}: use one of {NORMS}")
    pred = np.asarray(pred, dtype=np.float32)
    out = np.empty_like(pred)
    for s in dict.fromkeys(subjects.tolist()):
        idx = subjects == s
        x = pred[idx]
        if how == "rank":
            n = len(x)
            out[idx] = (column_ranks(x) - 1) / max(n - 1, 1)
        else:
            out[idx] = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return out


def blend(normed: dict, params: dict) -> np.ndarray:
    """The weighted blend of normalised outputs ``normed`` (model -> (n, T)) with the
    per-model settings ``params['models']`` (``w``, ``smooth``, ``broadcast``)."""
    total, wsum = None, 0.0
    for m, p in params["models"].items():
        x = np.asarray(normed[m], dtype=np.float32)
        if p["smooth"]:
            x = gaussian_filter1d(x, float(p["smooth"]), axis=1, mode="nearest")
        if p["broadcast"]:
            x = (1 - p["broadcast"]) * x + p["broadcast"] * x.mean(1, keepdims=True)
        total = p["w"] * x if total is None else total + p["w"] * x
        wsum += p["w"]
    if total is None:
        raise ValueError("a blend needs at least one model")
    return total / wsum


def score(y: np.ndarray, pred: np.ndarray, subjects: np.ndarray, sfreq: float = 200.0,
          min_run: int | None = None) -> float:
    """The competition metric of ``pred`` against ``y`` over the participants of
    ``subjects``."""
    parts = dict.fromkeys(subjects.tolist())
    return window_auc({s: y[subjects == s] for s in parts},
                      {s: pred[subjects == s] for s in parts}, sfreq, min_run).score


def curves_of(stack: Stack, y: np.ndarray) -> dict:
    """model -> participant -> the model's per-timepoint AUC curve on that participant."""
    y = np.asarray(y)
    return {m: {s: per_timepoint_auc(y[stack.subjects == s],
                                     np.asarray(p)[stack.subjects == s])
                for s in stack.participants()} for m, p in stack.preds.items()}


# ------------------------------------------------------------------ the objective
def _write_pack(folder: Path, arrays: dict) -> Path:
    """The tuning data as one .npy per array (memory-mapped by every worker)."""
    if folder.exists():
        shutil.rmtree(folder)
    for name, arr in arrays.items():
        write_npy(folder / f"{name}.npy", np.ascontiguousarray(arr))
    return folder


def _load_pack(folder: str) -> dict:
    if folder not in _PACKS:
        _PACKS.clear()  # one pack at a time per process
        _PACKS[folder] = {p.stem: np.load(p, mmap_mode="r") for p in Path(folder).glob("*.npy")}
    return _PACKS[folder]


def ranking(curves: dict, parts: list, models, min_run: int) -> dict:
    """``models`` best first by their window AUC on ``parts``
    (:func:`~sleepemo.metric.score_from_curve` of the mean of their per-participant curves;
    ties by name): model -> that score."""
    alone = {m: score_from_curve(np.mean([curves[m][s] for s in parts], axis=0),
                                 min_run)[0] for m in models}
    return {m: alone[m] for m in sorted(alone, key=lambda m: (-alone[m], m))}


def loo_orders(curves: dict, parts: list, models: list[str], min_run: int) -> np.ndarray:
    """Each participant's ranking of ``models`` by the *other* participants of ``parts``.

    Row j holds the indices (into ``models``) of the models, best first, by
    :func:`ranking` (as :meth:`OptunaBlend.fit` ranks its candidates) on every participant
    of ``parts`` but ``parts[j]``. A compact trial blends, for participant j, the first
    ``n_models`` of row j, so its score on participant j does not include choosing the
    models by participant j's own labels (see the module docstring)."""
    out = np.zeros((len(parts), len(models)), dtype=np.int32)
    for j, held in enumerate(parts):
        ranked = ranking(curves, [s for s in parts if s != held], models, min_run)
        out[j] = [models.index(m) for m in ranked]
    return out


def _settings(pack, trial_params: dict, models: list[str], j: int) -> dict:
    """Trial parameters -> the blend's settings for the pack's participant j: a compact
    trial's models are the first ``n_models`` of that participant's leave-one-out ranking
    when the pack has one (``loo``), else of ``models``."""
    if "n_models" in trial_params and "loo" in pack:
        return params_of(trial_params, [models[i] for i in pack["loo"][j]])
    return params_of(trial_params, models)


def _participant_curves(pack, trial_params: dict, models: list[str], parts: list) -> list:
    """Each participant of ``parts``: the per-timepoint AUC curve of the blend of a trial's
    parameters (:func:`_settings`; normalised outputs read from ``pack``: ``<norm>_<index
    in models>``)."""
    subjects, y = pack["subjects"], pack["y"]
    position = {s: j for j, s in enumerate(dict.fromkeys(np.asarray(subjects).tolist()))}
    curves = []
    for s in parts:
        idx = np.flatnonzero(subjects == s)
        params = _settings(pack, trial_params, models, position[s])
        normed = {m: pack[f"{params['norm']}_{models.index(m)}"][idx]
                  for m in params["models"]}
        curves.append(per_timepoint_auc(y[idx], blend(normed, params)))
    return curves


def participant_scores(pack, trial_params: dict, models: list[str], min_run: int
                       ) -> np.ndarray:
    """Per participant of ``pack`` (in order of appearance): the AUC curve of a trial's
    blend (:func:`_participant_curves`) averaged over the window of the participants' mean
    curve; 0.5 without one. Their mean is the trial's value."""
    parts = list(dict.fromkeys(np.asarray(pack["subjects"]).tolist()))
    return window_means(_participant_curves(pack, trial_params, models, parts), min_run)


def window_means(curves, min_run: int) -> np.ndarray:
    """Per-participant scores over a common window.

    Parameters
    ----------
    curves : array-like, shape (n_participants, n_times)
        Each participant's per-timepoint AUC curve.
    min_run : int
        The metric's shortest run in samples.

    Returns
    -------
    np.ndarray, shape (n_participants,)
        Each curve averaged over the window of the participants' mean curve (the metric's
        window, :func:`~sleepemo.metric.score_from_curve`); 0.5 for every participant
        without one. Their mean is the window AUC of the participants.
    """
    curves = np.asarray(curves, dtype=float)
    _, window = score_from_curve(curves.mean(0), min_run)
    if window is None:
        return np.full(len(curves), 0.5)
    return curves[:, window[0]:window[1]].mean(1)


class BlendObjective:
    """The study's objective (picklable: it carries the pack's folder, not the arrays)."""

    def __init__(self, pack: str, models: list[str], smooth_choices, sfreq: float,
                 min_run: int, search: str = "compact", top_k: int | None = None):
        if search not in SEARCHES:
            raise ValueError(f"search {search!r}: use one of {SEARCHES}")
        self.pack, self.models = str(pack), list(models)
        self.top_k = len(self.models) if top_k is None else int(top_k)
        self.smooth_choices = [int(s) for s in smooth_choices]
        self.sfreq, self.min_run, self.search = sfreq, min_run, search

    def suggest(self, trial) -> dict:
        if self.search == "compact":
            trial.suggest_categorical("norm", list(NORMS))
            trial.suggest_int("n_models", 1, min(self.top_k, len(self.models)))
            trial.suggest_categorical("smooth", self.smooth_choices)
            trial.suggest_float("broadcast", 0.0, 1.0)
            return params_of(trial.params, self.models)
        params = {"norm": trial.suggest_categorical("norm", list(NORMS)), "models": {}}
        for m in self.models:  # parameters named by model: readable importances
            use = trial.suggest_categorical(f"{m}.use", [True, False])
            w = trial.suggest_float(f"{m}.w", 0.05, 1.0)
            smooth = trial.suggest_categorical(f"{m}.smooth", self.smooth_choices)
            broadcast = trial.suggest_float(f"{m}.broadcast", 0.0, 1.0)
            if use:
                params["models"][m] = {"w": w, "smooth": smooth, "broadcast": broadcast}
        return params

    def __call__(self, trial) -> float:
        import optuna

        if not self.suggest(trial)["models"]:
            raise optuna.TrialPruned("no model included")
        pack = _load_pack(self.pack)
        parts = list(dict.fromkeys(pack["subjects"].tolist()))
        curves = []
        for half, group in enumerate((parts[:len(parts) // 2], parts[len(parts) // 2:])):
            curves += _participant_curves(pack, trial.params, self.models, group)
            value = score_from_curve(np.mean(curves, axis=0), self.min_run)[0]
            if half == 0 and len(parts) > 3:
                trial.report(value, 0)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return value


def params_of(trial_params: dict, models: list[str]) -> dict:
    """A trial's flat Optuna parameters -> the blend's settings (either search's: a compact
    trial has ``n_models``)."""
    out = {"norm": trial_params["norm"], "models": {}}
    if "n_models" in trial_params:
        for m in models[:int(trial_params["n_models"])]:
            out["models"][m] = {"w": 1.0, "smooth": int(trial_params["smooth"]),
                                "broadcast": float(trial_params["broadcast"])}
        return out
    for m in models:
        if trial_params[f"{m}.use"]:
            out["models"][m] = {"w": float(trial_params[f"{m}.w"]),
                                "smooth": int(trial_params[f"{m}.smooth"]),
                                "broadcast": float(trial_params[f"{m}.broadcast"])}
    return out


def one_se_choice(trials: list, pack, models: list[str], min_run: int) -> tuple:
    """The compact search's choice among completed ``trials`` (the one-standard-error rule
    toward the widest blend, module docstring): ``(kept trial, record)``; the record
    (JSON-ready) holds the best trial, the kept one and, per wider ``n`` tried, its best
    trial's value, the mean paired difference to the best and its standard error."""
    def rank(t):
        return (-float(t.value), t.number)

    done = sorted(trials, key=rank)
    best = done[0]
    n_best = int(best.params["n_models"])
    by_n = {}
    for t in done:  # (best first: the first of each n is that n's best)
        by_n.setdefault(int(t.params["n_models"]), t)
    scores_best = participant_scores(pack, best.params, models, min_run)
    record = {"rule": "one_se_widest", "n_participants": int(scores_best.size),
              "best_trial": best.number, "best_n": n_best, "best_value": float(best.value),
              "wider": {}}
    kept = best
    for n in sorted((k for k in by_n if k > n_best), reverse=True):
        t = by_n[n]
        d = scores_best - participant_scores(pack, t.params, models, min_run)
        se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
        within = bool(d.mean() <= se)
        record["wider"][str(n)] = {"trial": t.number, "value": float(t.value),
                                   "mean_diff": float(d.mean()), "se": se,
                                   "within_one_se": within}
        if within:
            kept = t
            break
    record.update(kept_trial=kept.number, kept_n=int(kept.params["n_models"]),
                  kept_value=float(kept.value))
    return kept, record


# ------------------------------------------------------------------ the estimator
class OptunaBlend:
    """A blend of models' outputs tuned with Optuna (see the module docstring).

    Parameters
    ----------
    folder : path
        Where the study's SQLite file (default storage) and its tuning data live.
    study_name : str
        The study's name (resumes when it exists with the same name and storage).
    n_trials, top_k, smooth_choices, seed : the search (see the module docstring)
    search : ``compact`` (default) or ``full``: the search space and the choice rule
    storage : str or None
        A SQLAlchemy URL; None: ``sqlite:///<folder>/<study_name>.db``.
    n_workers, executor : int, str
        Workers on the one study (1: this process), local processes or Ray tasks
        (:func:`sleepemo.ensemble.studies.optimize`).
    sfreq, min_run : the metric's sampling rate and shortest window
    """

    def __init__(self, folder, study_name: str = "ensemble", n_trials: int = 60,
                 top_k: int = 6, smooth_choices=(0, 2, 5, 10), seed: int = 0,
                 storage: str | None = None, n_workers: int = 1, sfreq: float = 200.0,
                 min_run: int | None = None, progress: bool = False,
                 search: str = "compact", executor: str = "local"):
        if search not in SEARCHES:
            raise ValueError(f"search {search!r}: use one of {SEARCHES}")
        self.folder, self.study_name = Path(folder), study_name
        self.search = search
        self.n_trials, self.top_k = int(n_trials), int(top_k)
        self.smooth_choices, self.seed = tuple(int(s) for s in smooth_choices), seed
        self.storage, self.n_workers = storage, n_workers
        self.sfreq = sfreq
        self.min_run = default_min_run(sfreq) if min_run is None else min_run
        self.progress, self.executor = progress, executor

    def get_params(self) -> dict:
        return {"search": self.search, "n_trials": self.n_trials, "top_k": self.top_k,
                "smooth_choices": list(self.smooth_choices), "seed": self.seed,
                "sfreq": self.sfreq, "min_run": self.min_run}

    # -------------------------------------------------------------- fit
    def fit(self, stack: Stack, y: np.ndarray, curves: dict | None = None) -> "OptunaBlend":
        """Tune on ``stack``'s trials and labels ``y``. ``curves`` (optional): model ->
        participant -> that model's per-timepoint AUC curve against ``y`` (they do not
        depend on the fold, so a nested loop computes them once; see :func:`curves_of`)."""
        import optuna


        optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress: our bar, the study
        y = np.asarray(y)
        if len(y) != stack.subjects.size:
            raise ValueError(f"{len(y)} labels for {stack.subjects.size} trials")
        if curves is None:
            curves = curves_of(stack, y)
        parts = stack.participants()
        alone = ranking(curves, parts, stack.models, self.min_run)
        order = list(alone)
        self.candidates_ = order[:self.top_k]
        self.single_scores_ = {m: float(v) for m, v in alone.items()}
        arrays = {"y": y.astype(np.int8), "subjects": stack.subjects}
        # compact: every model, each participant blending its leave-one-out ranking's best
        packed = order if self.search == "compact" else self.candidates_
        for i, m in enumerate(packed):
            for how in NORMS:
                arrays[f"{how}_{i}"] = normalise(stack.preds[m], stack.subjects, how)
        if self.search == "compact":
            arrays["loo"] = loo_orders(curves, parts, packed, self.min_run)
        pack = _write_pack(self.folder / f"{self.study_name}.pack", arrays)
        objective = BlendObjective(pack, packed, self.smooth_choices, self.sfreq,
                                   self.min_run, self.search, self.top_k)
        url = studies.study_url(self.storage, self.folder, self.study_name,
                                key="ensemble.storage")
        # the default SQLite (or journal) file in the run folder is this run's alone (the
        # run lock), so a killed study resumes to the uninterrupted result (*Replay*)
        exclusive = studies.exclusive(self.storage)
        study = studies.open_study(self.study_name, url, self.seed, exclusive=exclusive)
        searched = study.user_attrs.get("search", "full")  # (studies before the attr: full)
        if study.trials and searched != self.search:
            raise studies.StudyError(
                f"study {self.study_name!r} at {studies.mask_url(url)} holds a {searched!r} "
                f"search, not {self.search!r}: use another study name or folder")
        if not study.trials:  # a new study: equal weights, and the best model alone
            study.set_user_attr("search", self.search)
            for trial in self._first_trials():
                study.enqueue_trial(trial)
        try:
            study = studies.optimize(self.study_name, url, objective, self.n_trials,
                                     self.n_workers, self.seed, progress=self.progress,
                                     exclusive=exclusive, executor=self.executor)
            if self.search == "compact":
                done = study.get_trials(deepcopy=False,
                                        states=(optuna.trial.TrialState.COMPLETE,))
                kept, self.guard_ = one_se_choice(done, arrays, packed, self.min_run)
            else:
                kept, self.guard_ = study.best_trial, None
        finally:
            _PACKS.clear()
            shutil.rmtree(pack, ignore_errors=True)
        self.params_ = params_of(kept.params, self.candidates_)
        self.best_score_ = float(kept.value)
        self.study_ = study
        return self

    def _first_trials(self) -> list[dict]:
        """The two queued trials: every candidate with equal weights, the best alone."""
        if self.search == "compact":
            base = {"norm": "rank", "smooth": 0, "broadcast": 0.0}
            return [{**base, "n_models": len(self.candidates_)}, {**base, "n_models": 1}]
        base = {"norm": "rank"}
        for m in self.candidates_:
            base.update({f"{m}.w": 1.0, f"{m}.smooth": 0, f"{m}.broadcast": 0.0})
        first = self.candidates_[0]
        return [{**base, **{f"{m}.use": True for m in self.candidates_}},
                {**base, **{f"{m}.use": m == first for m in self.candidates_}}]

    # -------------------------------------------------------------- predict
    def predict(self, stack: Stack) -> np.ndarray:
        """Blended values in [0, 1] for every trial of ``stack`` (label-free)."""
        params = self.params_
        missing = [m for m in params["models"] if m not in stack.preds]
        if missing:
            raise KeyError(f"the ensemble needs model(s) {missing}, not in the stack")
        normed = {m: normalise(stack.preds[m], stack.subjects, params["norm"])
                  for m in params["models"]}
        return normalise(blend(normed, params), stack.subjects, "rank")

    # -------------------------------------------------------------- saving
    def to_json(self) -> dict:
        return {"settings": self.get_params(), "candidates": self.candidates_,
                "single_scores": self.single_scores_, "params": self.params_,
                "tuned_score": self.best_score_, "study": self.study_name,
                "guard": getattr(self, "guard_", None)}

    def save(self, path, **extra) -> Path:
        """The settings and the tuned blend as JSON (plus ``extra`` keys)."""
        return write_json(path, {**self.to_json(), **extra})

    @classmethod
    def load(cls, path) -> "OptunaBlend":
        d = json.loads(Path(path).read_text())
        settings = {"search": "full", **d["settings"]}  # (files from before the setting)
        est = cls(Path(path).parent, d["study"], **settings)
        # the blend sums its models in the order it was tuned with (the candidates'), and
        # float sums depend on their order: the JSON keeps its keys sorted, so the order
        # is restored from the candidates list, or a reloaded blend could rank near-ties
        # otherwise than the stage that saved it
        models = d["params"]["models"]
        order = [m for m in d["candidates"] if m in models] + \
            [m for m in models if m not in d["candidates"]]
        est.candidates_ = d["candidates"]
        est.params_ = {**d["params"], "models": {m: models[m] for m in order}}
        est.single_scores_, est.best_score_ = d["single_scores"], d["tuned_score"]
        est.guard_ = d.get("guard")
        return est


# ------------------------------------------------------------------ the nested score
def fit_held_out(est: OptunaBlend, stack: Stack, labels: dict, held,
                 curves: dict | None = None) -> np.ndarray:
    """One outer fold of the nested score: tune ``est`` on the participants of ``labels``
    (participant -> its labels, in the stack's row order; the held-out one refused) and
    predict participant ``held``'s trials. Stage 06's nested folds and
    :func:`nested_predict` both run this."""
    est.fit(*_tuning_rows(stack, labels, held), curves)
    return est.predict(stack.rows([held]))


def _tuning_rows(stack: Stack, labels: dict, held) -> tuple[Stack, np.ndarray]:
    """The stack's rows of the participants of ``labels`` and their labels, concatenated;
    refused when ``labels`` holds participant ``held`` or does not follow the rows."""
    if held in labels:
        raise ValueError(f"participant {held} is held out: its labels must not reach the "
                         "tuner")
    tune = list(labels)
    rows = stack.rows(tune)
    if not np.array_equal(rows.subjects, np.repeat(tune, [len(labels[s]) for s in tune])):
        raise ValueError("the labels must follow the stack's rows: one block per "
                         "participant, in its order")
    return rows, np.concatenate([labels[s] for s in tune])


def nested_predict(make, stack: Stack, y: np.ndarray, curves: dict | None = None
                   ) -> np.ndarray:
    """The nested (outer leave-one-participant-out) predictions of every trial of ``stack``
    (rows in one block per participant): for each participant ``s``, ``make(s)`` (a new
    :class:`OptunaBlend`, its own study) tuned on the others by :func:`fit_held_out`."""
    y = np.asarray(y)
    parts = stack.participants()
    out = np.zeros(np.shape(next(iter(stack.preds.values()))), dtype=np.float32)
    for held in parts:
        labels = {s: y[stack.subjects == s] for s in parts if s != held}
        out[stack.subjects == held] = fit_held_out(make(held), stack, labels, held, curves)
    return out


# ------------------------------------------------------------------ the nested best single model
def single_scores(curves: dict, parts: list, min_run: int) -> dict:
    """Every model alone, per participant of ``parts``.

    Parameters
    ----------
    curves : dict
        Model -> participant -> its per-timepoint AUC curve (:func:`curves_of`); only the
        participants of ``parts`` are read.
    parts : list
        The participants scored.
    min_run : int
        The metric's shortest run in samples.

    Returns
    -------
    dict
        Model -> array (len(parts),): each participant's curve averaged over the model's
        window on ``parts`` (:func:`window_means`). The mean is the model's window AUC on
        ``parts``: the score :meth:`OptunaBlend.fit` ranks its candidates by.
    """
    return {m: window_means([by_part[s] for s in parts], min_run)
            for m, by_part in curves.items()}


def best_single_held_out(stack: Stack, labels: dict, held, min_run: int,
                         curves: dict | None = None) -> tuple[str, np.ndarray]:
    """One outer fold of the *nested best single model*: choose one of ``stack``'s models
    on the participants of ``labels`` only (participant -> its labels, in the stack's row
    order; the held-out one refused) and predict participant ``held`` with it.

    The model chosen has the highest mean :func:`single_scores` over those participants
    (ties: the first in the stack's order); its held-out predictions are its own
    out-of-fold ones, unchanged. ``curves`` as in :meth:`OptunaBlend.fit` (computed from
    ``labels`` when None). Returns ``(model, predictions of held's trials)``.
    """
    rows, y = _tuning_rows(stack, labels, held)
    if curves is None:
        curves = curves_of(rows, y)
    means = {m: float(v.mean()) for m, v in
             single_scores({m: curves[m] for m in stack.models}, list(labels),
                           min_run).items()}
    choice = max(stack.models, key=means.__getitem__)  # max keeps the first of equals
    return choice, np.asarray(stack.preds[choice])[stack.subjects == held]


def nested_best_single(stack: Stack, y: np.ndarray, min_run: int,
                       curves: dict | None = None) -> tuple[np.ndarray, dict]:
    """The nested best single model of a plain stack (rows in one block per participant):
    for each participant, the model :func:`best_single_held_out` chooses on the others.

    The hindsight best single model (the best LOPO score over every participant) is chosen
    on the participants it is scored on, so with many candidates and a weak signal its
    score is optimistic (the highest of several noisy scores); this one is chosen as the
    nested ensemble is, and is scored like it (:func:`score` of the predictions).

    Returns
    -------
    pred : np.ndarray, shape (n_trials, n_times)
        Each participant's trials predicted by the model chosen without its labels.
    chosen : dict
        Participant -> the model chosen for it.
    """
    y = np.asarray(y)
    parts = stack.participants()
    out = np.zeros(np.shape(next(iter(stack.preds.values()))), dtype=np.float32)
    chosen = {}
    for held in parts:
        labels = {s: y[stack.subjects == s] for s in parts if s != held}
        chosen[held], out[stack.subjects == held] = best_single_held_out(
            stack, labels, held, min_run, curves)
    return out, chosen
