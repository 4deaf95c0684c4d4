"""Optuna-tuned blending of out-of-fold predictions (stage 06), with a nested score.

The input is a :class:`Stack`: the per-timepoint probabilities of several models for a set
of trials, each trial tagged with its participant. :class:`OptunaBlend` is a
scikit-learn-style estimator: ``fit(stack, y)`` tunes a blend on the stack's trials and
``predict(stack)`` applies it to any trials (other participants, the test set).

What ``fit`` does, on its own trials only:

1. **Candidates**: every model is scored alone (the competition metric,
   :func:`sleepemo.metric.window_auc`); the ``top_k`` best are kept.
2. **Search** (an Optuna study, :mod:`sleepemo.ensemble.studies`: seeded TPE sampler, SQLite file or
   any SQLAlchemy URL, resumable, ``n_workers`` processes on one study), per trial:

   - ``norm``: per-participant normalisation of every model's output, at each timepoint
     across that participant's trials: ``rank`` (ranks scaled to [0, 1]) or ``zscore``;
   - per model: ``use`` (inclusion), ``w`` (blend weight), ``smooth`` (Gaussian smoothing
     along time, sigma in samples, one of ``smooth_choices``) and ``broadcast`` (the mix of
     the per-timepoint output with its trial mean broadcast to every timepoint:
     0 = per-timepoint only, 1 = trial-level only).

   The objective is the window AUC over the trials' participants. It is computed on the
   first half of the participants first and reported, so Optuna's median pruner can stop a
   poor trial early. Two trials are queued before the sampler's own: every candidate with
   equal weights, and the best candidate alone (so the tuned blend is never worse than the
   best single model on the tuning participants).
3. The best trial's settings are kept (``params_``); ``predict`` normalises the new trials
   per participant (label-free), blends, and ranks the blend within each participant
   again, giving values in [0, 1] (the metric only compares trials of one participant).

Nothing in ``predict`` reads a label. The **nested score** (stage 06) wraps ``fit`` in an
outer leave-one-participant-out loop: tune on 13 participants' out-of-fold predictions,
predict the 14th; the tuned score (best trial value on all 14) is optimistic, the nested one
is the expected score of the procedure.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

from sleepemo.ensemble import studies
from sleepemo.io import write_json, write_npy
from sleepemo.metric import (column_ranks, default_min_run, per_timepoint_auc,
                             score_from_curve, window_auc)

NORMS = ("rank", "zscore")
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


class BlendObjective:
    """The study's objective (picklable: it carries the pack's folder, not the arrays)."""

    def __init__(self, pack: str, models: list[str], smooth_choices, sfreq: float,
                 min_run: int):
        self.pack, self.models = str(pack), list(models)
        self.smooth_choices = [int(s) for s in smooth_choices]
        self.sfreq, self.min_run = sfreq, min_run

    def suggest(self, trial) -> dict:
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

        params = self.suggest(trial)
        if not params["models"]:
            raise optuna.TrialPruned("no model included")
        pack = _load_pack(self.pack)
        subjects, y = pack["subjects"], pack["y"]
        parts = list(dict.fromkeys(subjects.tolist()))
        curves = []
        for half, group in enumerate((parts[:len(parts) // 2], parts[len(parts) // 2:])):
            for s in group:
                idx = np.flatnonzero(subjects == s)
                normed = {m: pack[f"{params['norm']}_{self.models.index(m)}"][idx]
                          for m in params["models"]}
                curves.append(per_timepoint_auc(y[idx], blend(normed, params)))
            value = score_from_curve(np.mean(curves, axis=0), self.min_run)[0]
            if half == 0 and len(parts) > 3:
                trial.report(value, 0)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return value


def params_of(trial_params: dict, models: list[str]) -> dict:
    """A trial's flat Optuna parameters -> the blend's settings."""
    out = {"norm": trial_params["norm"], "models": {}}
    for m in models:
        if trial_params[f"{m}.use"]:
            out["models"][m] = {"w": float(trial_params[f"{m}.w"]),
                                "smooth": int(trial_params[f"{m}.smooth"]),
                                "broadcast": float(trial_params[f"{m}.broadcast"])}
    return out


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
    storage : str or None
        A SQLAlchemy URL; None: ``sqlite:///<folder>/<study_name>.db``.
    n_workers : int
        Worker processes on the one study (1: this process).
    sfreq, min_run : the metric's sampling rate and shortest window
    """

    def __init__(self, folder, study_name: str = "ensemble", n_trials: int = 60,
                 top_k: int = 6, smooth_choices=(0, 2, 5, 10), seed: int = 0,
                 storage: str | None = None, n_workers: int = 1, sfreq: float = 200.0,
                 min_run: int | None = None, progress: bool = False):
        self.folder, self.study_name = Path(folder), study_name
        self.n_trials, self.top_k = int(n_trials), int(top_k)
        self.smooth_choices, self.seed = tuple(int(s) for s in smooth_choices), seed
        self.storage, self.n_workers = storage, n_workers
        self.sfreq = sfreq
        self.min_run = default_min_run(sfreq) if min_run is None else min_run
        self.progress = progress

    def get_params(self) -> dict:
        return {"n_trials": self.n_trials, "top_k": self.top_k,
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
        alone = {m: score_from_curve(np.mean([curves[m][s] for s in parts], axis=0),
                                     self.min_run)[0] for m in stack.models}
        order = sorted(alone, key=lambda m: (-alone[m], m))
        self.candidates_ = order[:self.top_k]
        self.single_scores_ = {m: float(alone[m]) for m in order}
        arrays = {"y": y.astype(np.int8), "subjects": stack.subjects}
        for i, m in enumerate(self.candidates_):
            for how in NORMS:
                arrays[f"{how}_{i}"] = normalise(stack.preds[m], stack.subjects, how)
        pack = _write_pack(self.folder / f"{self.study_name}.pack", arrays)
        objective = BlendObjective(pack, self.candidates_, self.smooth_choices, self.sfreq,
                                   self.min_run)
        url = studies.study_url(self.storage, self.folder, self.study_name,
                                key="ensemble.storage")
        # the default SQLite file in the run folder is this run's alone (the run lock), so
        # a killed study resumes to the uninterrupted result (studies: *Replay*)
        exclusive = not self.storage
        study = studies.open_study(self.study_name, url, self.seed, exclusive=exclusive)
        if not study.trials:  # a new study: equal weights, and the best model alone
            base = {"norm": "rank"}
            for m in self.candidates_:
                base.update({f"{m}.w": 1.0, f"{m}.smooth": 0, f"{m}.broadcast": 0.0})
            first = self.candidates_[0]
            study.enqueue_trial({**base, **{f"{m}.use": True for m in self.candidates_}})
            study.enqueue_trial({**base, **{f"{m}.use": m == first for m in self.candidates_}})
        try:
            study = studies.optimize(self.study_name, url, objective, self.n_trials,
                                     self.n_workers, self.seed, progress=self.progress,
                                     exclusive=exclusive)
        finally:
            _PACKS.clear()
            shutil.rmtree(pack, ignore_errors=True)
        best = study.best_trial
        self.params_ = params_of(best.params, self.candidates_)
        self.best_score_ = float(best.value)
        self.study_ = study
        return self

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
                "tuned_score": self.best_score_, "study": self.study_name}

    def save(self, path, **extra) -> Path:
        """The settings and the tuned blend as JSON (plus ``extra`` keys)."""
        return write_json(path, {**self.to_json(), **extra})

    @classmethod
    def load(cls, path) -> "OptunaBlend":
        d = json.loads(Path(path).read_text())
        est = cls(Path(path).parent, d["study"], **{k: v for k, v in d["settings"].items()})
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
        return est
