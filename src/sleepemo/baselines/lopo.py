"""Leave-one-participant-out training of one registered model, with resume.

For fold k the model is fitted on the other training participants' features and labels
only; the held-out participant contributes features (label-free, computed from its own
trials) and is predicted. Test predictions are the **average of the fold models'**
probabilities (no full-data refit), so every number in the submission comes from models
whose held-out score is known.

The result is written through the predictions contract (:mod:`sleepemo.pipeline.artefacts`) into
``<out>/<NN_stage>/<name>/``: per-fold ``fold<k>.npz`` and the fitted fold model
``fold<k>.joblib`` (:mod:`sleepemo.predict` applies the 14 of them to new recordings),
then ``oof.npy``, ``test.npy``, ``score.json`` and ``meta.json``. A fold whose file carries the same fingerprint (model,
parameters, seed, data, code, features) is not recomputed: a killed run resumes, an
unchanged one is skipped.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sleepemo.baselines import REGISTRY, make_model
from sleepemo.data.folds import Folds
from sleepemo.data.reader import Dataset
from sleepemo.io import atomic_path
from sleepemo.pipeline.artefacts import Result, ResultWriter, code_hash, fingerprint
from sleepemo.pipeline.executor import map_unordered
from sleepemo.progress import bar


def _as_2d(p: np.ndarray, n_trials: int, n_times: int) -> np.ndarray:
    p = np.asarray(p, dtype=np.float32)
    if p.shape == (n_trials,):
        p = np.repeat(p[:, None], n_times, axis=1)
    if p.shape != (n_trials, n_times):
        raise ValueError(f"model returned shape {p.shape}, expected ({n_trials},) or "
                         f"({n_trials}, {n_times})")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("model returned probabilities outside [0, 1] or non-finite")
    return p


def fit_fold(model_key: str, params: dict, seed: int, k: int, train_x: list, train_y: list,
             held_x, n_held: int, test_x: list, n_tests: list, n_times: int):
    """Fold k: fit a fresh model on the training participants, predict the held-out and
    the test participants. Returns ``(k, oof, test, model)``. Seeded per fold, so a
    resumed or parallel fold equals an uninterrupted serial one."""
    m = make_model(model_key, random_state=seed * 1000 + k, **params)
    m.fit(train_x, train_y)
    oof = _as_2d(m.predict_proba(held_x), n_held, n_times)
    test = np.concatenate([_as_2d(m.predict_proba(x), n, n_times)
                           for x, n in zip(test_x, n_tests)])
    return k, oof, test, m


def fold_model_path(folder: str | Path, k: int) -> Path:
    """Where fold k's fitted model is kept (a joblib pickle of this run's own code)."""
    return Path(folder) / f"fold{k}.joblib"


def save_fold_model(folder: str | Path, k: int, model) -> Path:
    import joblib


    with atomic_path(fold_model_path(folder, k)) as tmp:
        joblib.dump(model, tmp)
    return fold_model_path(folder, k)


def load_fold_model(folder: str | Path, k: int):
    """Fold k's fitted model. A pickle runs code when loaded: load only runs you made
    (or trust), as with any scikit-learn model."""
    import joblib

    path = fold_model_path(folder, k)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: fold {k}'s fitted model was not kept (a run made "
                                "before models were saved, or an interrupted one): rerun "
                                "its stage")
    return joblib.load(path)


def lopo_fingerprint(model_key: str, params: dict | None, seed: int, data: str,
                     feature_key: str | None = None, code_from: tuple = ()) -> str:
    """What a LOPO result depends on: the model and its parameters, the seed, the data,
    the precomputed features (``feature_key``) and the code of this module, of the
    model's own module and of ``code_from`` (modules that computed the features), with
    what they import."""

    family = getattr(REGISTRY.get(model_key), "__module__", None)
    return fingerprint(model=model_key, params=dict(params or {}), seed=seed, data=data,
                       code=code_hash(__name__, *([family] if family else []), *code_from),
                       features=feature_key)


def run_lopo(name: str, ds: Dataset, folds: Folds, out: str | Path, stage: str,
             seed: int = 0, params: dict | None = None, progress: bool = True, log=print,
             model: str | None = None, features: dict | None = None,
             feature_key: str | None = None, workers: int = 1, executor: str = "local",
             recipe: dict | None = None, code_from: tuple = ()) -> Result:
    """Train a registered model under LOPO and write its result (see the module
    docstring).

    Parameters
    ----------
    name : str
        Name of the result (folder, table row); also the registry key unless ``model``.
    out, stage : the run's artefact folder and the stage writing the result.
    features : dict or callable returning one, optional
        Participant -> precomputed label-free features (e.g. encoder embeddings), used
        instead of the model's ``transform``; a callable is only called when there is
        work to do. ``feature_key`` must then identify them (it enters the fingerprint).
    recipe : dict, optional
        How :mod:`sleepemo.predict` computes those features for a new participant
        (``{"features": <kind>, ...}``, see :data:`sleepemo.mae.predict.FEATURES`); kept in
        ``meta.json``. Without ``features`` the model's own ``transform`` is the recipe.
    code_from : tuple of module names
        Modules whose code computed ``features`` (e.g. the calling stage's
        ``__name__``): their code, with what they import, enters the fingerprint
        (:func:`lopo_fingerprint`).
    workers, executor : int, str
        Folds fitted at once (0: one per core, or per CPU of a Ray cluster), one BLAS
        thread each, in joblib processes (``local``) or Ray tasks (``ray``;
        :func:`sleepemo.pipeline.executor.map_unordered`). The results do not depend on
        the executor, nor on ``workers`` beyond the last bits of floating-point sums.
    """
    folds.check(ds)
    params = dict(params or {})
    model_key = model or name
    if features is not None and not feature_key:
        raise ValueError("precomputed features need a feature_key for the fingerprint")
    fp = lopo_fingerprint(model_key, params, seed, folds.data_fingerprint, feature_key,
                          code_from)
    writer = ResultWriter(out, stage, name, fp, folds)
    if (done := writer.finished()) is not None:
        log(f"{name}: unchanged, reusing {writer.folder}")
        return done

    t0 = time.perf_counter()
    n_times = ds.n_times
    subjects = list(folds.train_subjects) + list(folds.test_subjects)
    proto = make_model(model_key, random_state=seed, **params)
    todo = [k for k in range(folds.n_folds) if not writer.fold_done(k)
            or not fold_model_path(writer.folder, k).is_file()]
    feats = {}
    if todo:
        if callable(features):
            features = features()
        feats = dict(features) if features is not None else {}
        for s in bar([s for s in subjects if s not in feats], desc=f"{name}: features",
                     unit="participant", enabled=progress, leave=False):
            feats[s] = proto.transform(ds.subject(s).X, ds.sfreq)

    n_tests = [ds.test[s].n_trials for s in folds.test_subjects]

    def jobs():
        for k in todo:
            held, train = folds.held_out(k), folds.train_of(k)
            yield (model_key, params, seed, k, [feats[s] for s in train],
                   [ds.train[s].y for s in train], feats[held], ds.train[held].n_trials,
                   [feats[s] for s in folds.test_subjects], n_tests, n_times)

    progress_bar = bar(total=folds.n_folds, desc=f"{name}: LOPO folds", unit="fold",
                       enabled=progress)
    progress_bar.update(folds.n_folds - len(todo))
    # each fold is written as soon as it is done, in whatever order: a killed run resumes
    for k, oof, test, m in map_unordered(executor, fit_fold, jobs(), workers,
                                         lambda msg: log(f"{name}: {msg}")):
        save_fold_model(writer.folder, k, m)  # first: a fold is done when its npz is
        writer.save_fold(k, oof=oof, test=test)
        progress_bar.update(1)
    progress_bar.close()

    return writer.finish(ds, seed=seed, diagnostic=proto.diagnostic, meta={
        "registry": model_key, "params": params, "family": "lopo",
        "recipe": recipe or {"features": "transform"},
        "seconds": round(time.perf_counter() - t0, 2)})
