"""Leave-one-participant-out training of one registered model, with resume.

For fold k the model is fitted on the other training participants' features and labels
only; the held-out participant contributes features (label-free, computed from its own
trials) and is predicted. Test predictions are the **average of the fold models'**
probabilities (no full-data refit), so every number in the submission comes from models
whose held-out score is known.

Artefacts, under ``<out>/<stage>/<model>/``::

    fold<k>.npz   oof (n_heldout_trials, n_times), test (n_test_trials, n_times), fingerprint
    oof.npy       (n_train_trials, n_times), rows in folds.json order
    test.npy      (n_test_trials, n_times), test participants ascending, trials in file order
    meta.json     fingerprint, seed, params, wall time

A fold whose file exists with the same fingerprint (model, parameters, seed, data, code)
is not recomputed: a killed run resumes, an unchanged one is skipped.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import Dataset
from .folds import Folds
from .io import read_json, write_json, write_npy, write_npz
from .models import make_model

PACKAGE = Path(__file__).resolve().parent


def code_hash() -> str:
    """sha256 over the package's Python sources: results are tied to the code."""
    h = hashlib.sha256()
    for p in sorted(PACKAGE.rglob("*.py")):
        h.update(str(p.relative_to(PACKAGE)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def fingerprint(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class LopoResult:
    name: str
    oof: np.ndarray          # (n_train_trials, n_times)
    test: np.ndarray         # (n_test_trials, n_times)
    meta: dict


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


def oof_labels(ds: Dataset, folds: Folds) -> np.ndarray:
    """Labels in out-of-fold row order (for scoring only, never for fitting)."""
    return np.concatenate([ds.train[s].y for s in folds.train_subjects])


def run_lopo(name: str, ds: Dataset, folds: Folds, out_dir: str | Path, seed: int = 0,
             params: dict | None = None, progress: bool = True, log=print,
             model: str | None = None, features: dict | None = None,
             feature_key: str | None = None) -> LopoResult:
    """Train a registered model under LOPO and write its out-of-fold and test predictions.

    Parameters
    ----------
    name : str
        Name of the result (folder, table row); also the registry key unless ``model``.
    features : dict or callable returning one, optional
        Participant -> precomputed label-free features (e.g. encoder embeddings), used
        instead of the model's ``transform``; a callable is only called when there is
        work to do. ``feature_key`` must then identify them (it enters the fingerprint).
    """
    from tqdm.auto import tqdm

    folds.check(ds)
    params = dict(params or {})
    model_key = model or name
    if features is not None and not feature_key:
        raise ValueError("precomputed features need a feature_key for the fingerprint")
    out_dir = Path(out_dir)
    fp = fingerprint(model=model_key, params=params, seed=seed, data=folds.data_fingerprint,
                     code=code_hash(), features=feature_key)
    meta_path = out_dir / "meta.json"
    if meta_path.is_file() and read_json(meta_path).get("fingerprint") == fp:
        log(f"{name}: unchanged, reusing {out_dir}")
        return LopoResult(name, np.load(out_dir / "oof.npy"), np.load(out_dir / "test.npy"),
                          read_json(meta_path))

    t0 = time.perf_counter()
    n_times = ds.n_times
    subjects = list(folds.train_subjects) + list(folds.test_subjects)
    proto = make_model(model_key, random_state=seed, **params)
    if callable(features):
        features = features()
    feats = dict(features) if features is not None else {}
    for s in tqdm([s for s in subjects if s not in feats], desc=f"{name}: features",
                  unit="participant", disable=not progress, leave=False):
        feats[s] = proto.transform(ds.subject(s).X, ds.sfreq)

    oof_parts, test_parts = {}, []
    for k in tqdm(range(folds.n_folds), desc=f"{name}: LOPO folds", unit="fold",
                  disable=not progress):
        path = out_dir / f"fold{k}.npz"
        held = folds.held_out(k)
        if path.is_file():
            with np.load(path) as z:
                if str(z["fingerprint"]) == fp:
                    oof_parts[held] = z["oof"]
                    test_parts.append(z["test"])
                    continue
        train = folds.train_of(k)
        # seed per fold so a resumed fold is identical to an uninterrupted one
        m = make_model(model_key, random_state=seed * 1000 + k, **params)
        m.fit([feats[s] for s in train], [ds.train[s].y for s in train])
        oof = _as_2d(m.predict_proba(feats[held]), ds.train[held].n_trials, n_times)
        test = np.concatenate([_as_2d(m.predict_proba(feats[s]), ds.test[s].n_trials,
                                      n_times) for s in folds.test_subjects])
        write_npz(path, oof=oof, test=test, fingerprint=np.array(fp))
        oof_parts[held] = oof
        test_parts.append(test)

    oof = np.concatenate([oof_parts[s] for s in folds.train_subjects])
    test = np.mean(test_parts, axis=0).astype(np.float32)
    write_npy(out_dir / "oof.npy", oof)
    write_npy(out_dir / "test.npy", test)
    meta = {"model": name, "registry": model_key, "params": params, "seed": seed, "fingerprint": fp,
            "diagnostic": bool(proto.diagnostic), "test_predictions": "mean of fold models",
            "seconds": round(time.perf_counter() - t0, 2)}
    write_json(meta_path, meta)
    return LopoResult(name, oof, test, meta)
