"""The predictions contract: the one door between stages.

A **result** is one model's out-of-fold and test predictions under LOPO, written by one
stage into ``<out>/<NN_stage>/<name>/``::

    fold<k>.npz   what fold k produced (arrays named oof*, test* and any others) and the
                  fingerprint; a fold whose file carries the current fingerprint is done
    oof.npy       (n_train_trials, n_times) P(emotional), rows in folds.json order
    test.npy      (n_test_trials, n_times), mean of the fold models' test predictions
    oof_<x>.npy, test_<x>.npy   optional extra arrays assembled the same way (e.g.
                  trial-level or per-expert outputs)
    score.json    the result's LOPO window AUC, window, mean and per-participant curves
    meta.json     written last (its presence means "complete"): stage, name, fingerprint,
                  seed, config, diagnostic, the arrays, plus what the stage adds

Assembly is one rule for every stage: arrays whose name starts with ``oof`` are
concatenated over the folds in ``folds.json`` row order (fold k holds participant k's
rows); arrays whose name starts with ``test`` are averaged over the folds; others stay in
the fold files.

Writing goes through :class:`ResultWriter`; reading through :func:`results` (every result
of a run, in stage order) and :func:`find`. Results are keyed by (stage, name): two stages
may use the same name, both are listed, neither overwrites the other, and a bare name that
two stages use is refused as ambiguous (``stage/name`` picks one).

:func:`fingerprint` and :func:`code_hash` are the one resume helper: a fold, result or
checkpoint (:func:`save_checkpoint`, :func:`load_checkpoint`) whose stored fingerprint
equals the current one is reused, otherwise recomputed. ``code_hash(*modules)`` covers
the code of the modules a result is made by and of every module of the package they
import, transitively (:mod:`sleepemo.pipeline.codehash`): editing a module none of them imports
(the report, the submit command, ``sleepemo predict``, the docs) recomputes nothing.
``meta.json`` keeps what the fingerprint was built from (``fingerprint_parts``:
:func:`describe`), so that ``python -m sleepemo.pipeline.plan`` tells why a result would be
recomputed (settings, seed, data, code: which modules, or an input).
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sleepemo.io import atomic_path, read_json, write_json, write_npy, write_npz
from sleepemo.metric import WindowAUC, window_auc
from sleepemo.pipeline.codehash import closure_hash, package_modules
from sleepemo.pipeline.stage import STAGES, spec

#: the top package (``sleepemo``), whatever module of it this file is
TOP = __name__.split(".")[0]
CONTRACT = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

#: what each fingerprint and code hash computed in this process was built from
#: (:func:`describe`): result writers record it in ``meta.json``
_BUILT: dict[str, dict] = {}
_CODE: dict[str, dict] = {}


def package_dir() -> Path:
    """The folder of the top package (found from the package itself, not a fixed path)."""
    return Path(sys.modules[TOP].__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def _modules() -> dict:

    return package_modules(package_dir(), TOP)


@functools.lru_cache(maxsize=None)
def code_hash(*modules: str) -> str:
    """sha256 of the code a result depends on: the sources of ``modules`` (dotted names,
    typically the stage body's ``__name__`` and a model family's module) and of every
    module of the package they import, transitively (:func:`sleepemo.pipeline.codehash.closure`).
    Without ``modules``: every module of the package.

    A module outside the package (a user's model class) counts with its source file when
    it has one, and with the package modules it imports."""

    known = _modules()
    if not modules:
        roots = tuple(sorted(known))
    else:
        roots = tuple(sorted(set(modules)))
        extra = {m: Path(sys.modules[m].__file__) for m in roots if m not in known
                 and getattr(sys.modules.get(m), "__file__", None)}
        known = {**known, **extra}
    digest, hashes = closure_hash(roots, known)
    _CODE[digest] = {"roots": list(roots), "modules": {m: h[:16] for m, h in hashes.items()}}
    return digest


def fingerprint(**parts) -> str:
    """sha256 of the JSON of ``parts`` (config, seed, data fingerprint, code, ...)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()
                            ).hexdigest()
    _BUILT[digest] = parts
    return digest


def describe(fp: str) -> dict | None:
    """What fingerprint ``fp`` (computed in this process) was built from, as JSON: its
    parts, with a code hash given as ``{"code_hash", "roots", "modules": {name: sha256
    prefix}}`` and a fingerprint among the parts (e.g. trained weights' within
    predictions') described the same way, ``{"fingerprint", "parts"}``. None for a
    fingerprint this process did not compute."""
    if fp not in _BUILT:
        return None

    def expand(value):
        if isinstance(value, str) and value in _CODE:
            return {"code_hash": value, **_CODE[value]}
        if isinstance(value, str) and value in _BUILT:
            return {"fingerprint": value, "parts": describe(value)}
        if isinstance(value, dict):
            return {str(k): expand(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [expand(v) for v in value]
        return value

    return json.loads(json.dumps({k: expand(v) for k, v in _BUILT[fp].items()},
                                 sort_keys=True, default=str))


def stored_fingerprint(path: str | Path) -> str | None:
    """The fingerprint stored in a ``.npz`` or ``.json`` artefact, None if absent."""
    path = Path(path)
    if not path.is_file():
        return None
    if path.suffix == ".json":
        return read_json(path).get("fingerprint")
    with np.load(path) as z:
        return str(z["fingerprint"]) if "fingerprint" in z.files else None


def save_checkpoint(path: str | Path, state: dict, fp: str) -> None:
    """Save a PyTorch checkpoint (a dict of tensors and plain values) atomically, with
    the fingerprint it belongs to."""
    import torch


    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        # through a Python file: a full disk is an OSError (ENOSPC), not torch's opaque
        # RuntimeError from its own writer
        torch.save({**state, "fingerprint": fp}, fh)


def load_checkpoint(path: str | Path, fp: str, device="cpu") -> dict | None:
    """The checkpoint at ``path`` if it exists and carries fingerprint ``fp``, else None
    (loaded with ``weights_only=True``)."""
    import torch

    if not Path(path).is_file():
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    return state if state.get("fingerprint") == fp else None


# ------------------------------------------------------------------ scoring
def score_oof(oof: np.ndarray, ds, folds):
    """Window AUC (:class:`sleepemo.metric.WindowAUC`) of out-of-fold predictions
    against the training labels (scoring only, never fitting)."""

    preds = folds.split_rows(oof, "train")
    return window_auc({s: ds.train[s].y for s in folds.train_subjects}, preds, ds.sfreq)


def _score_to_json(res, sfreq: float) -> dict:
    return {"overall": res.score, "window": list(res.window) if res.window else None,
            "sfreq": sfreq, "curve": np.asarray(res.curve).tolist(),
            "subjects": [int(s) for s in res.per_subject],  # folds.json order
            "per_subject": [np.asarray(c).tolist() for c in res.per_subject.values()]}


# ------------------------------------------------------------------ reading
@dataclass(frozen=True)
class Result:
    """A complete result on disk. ``label`` is unique within a listing: the name, or
    ``stage/name`` when another stage has a result of the same name."""

    stage: str
    name: str
    folder: Path
    meta: dict
    label: str

    @property
    def diagnostic(self) -> bool:
        return bool(self.meta.get("diagnostic", False))

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def array(self, key: str, mmap: bool = False) -> np.ndarray:
        """An assembled array (``oof``, ``test``, ``oof_trial``, ...)."""
        if key not in self.meta.get("arrays", []):
            raise KeyError(f"result {self.label} has no array {key!r}; it has "
                           f"{self.meta.get('arrays')}")
        return np.load(self.folder / f"{key}.npy", mmap_mode="r" if mmap else None)

    @property
    def oof(self) -> np.ndarray:
        return self.array("oof")

    @property
    def test(self) -> np.ndarray:
        return self.array("test")

    def score(self):
        """The stored :class:`~sleepemo.metric.WindowAUC` and the sampling rate."""

        d = read_json(self.folder / "score.json")
        return WindowAUC(score=float(d["overall"]), curve=np.asarray(d["curve"]),
                         window=tuple(d["window"]) if d["window"] else None,
                         per_subject={s: np.asarray(c) for s, c in
                                      zip(d["subjects"], d["per_subject"])}), d["sfreq"]


def _read_result(meta_path: Path) -> dict | None:
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError):
        return None
    if meta.get("contract") != CONTRACT or not (meta_path.parent / "score.json").is_file():
        return None  # written by an older version of the code: stale, recomputed on rerun
    return meta


def results(out: str | Path, stage: str | None = None) -> list[Result]:
    """Every complete result under ``out``, in stage order then name order.

    ``stage`` keeps one stage's results; labels are computed over the whole run so that
    they do not change with the filter.
    """

    found = []
    for s in STAGES:
        for meta_path in sorted((Path(out) / s.folder).glob("*/meta.json")):
            meta = _read_result(meta_path)
            if meta is not None:
                found.append((s.name, meta_path.parent.name, meta_path.parent, meta))
    labels = _labels([(st, name) for st, name, _, _ in found])
    listed = [Result(st, name, folder, meta, label)
              for (st, name, folder, meta), label in zip(found, labels)]
    if stage is not None:
        listed = [r for r in listed if r.stage == spec(stage).name]
    return listed


def _labels(keys: list[tuple[str, str]]) -> list[str]:
    """Each (stage, name)'s label: the name, or ``stage/name`` when another stage has a
    result of the same name."""
    counts: dict[str, int] = {}
    for _, name in keys:
        counts[name] = counts.get(name, 0) + 1
    return [name if counts[name] == 1 else f"{st}/{name}" for st, name in keys]


# ------------------------------------------------------------------ planning
@dataclass(frozen=True)
class Planned:
    """A result (or another fingerprinted artefact) as a stage would write it now: what
    a stage's ``fingerprints(stage, planned)`` returns, without computing anything
    (:mod:`sleepemo.pipeline.plan`). ``record``: the file under the stage's folder that keeps the
    fingerprint it was last written with (default ``<name>/meta.json``); ``folds``:
    whether it is written fold by fold (``<name>/fold<k>.npz``, resumable)."""

    stage: str
    name: str
    fingerprint: str
    diagnostic: bool = False
    record: str | None = None
    folds: bool = True

    @property
    def record_path(self) -> str:
        return self.record or f"{self.name}/meta.json"


@dataclass(frozen=True)
class Listed:
    """A result as the stages after it would list it (:func:`listing`)."""

    stage: str
    name: str
    label: str
    fingerprint: str
    diagnostic: bool


def listing(out: str | Path, planned: dict | None = None,
            stage: str | None = None) -> list[Listed]:
    """The results the stages after these would list (:func:`results`), with
    ``planned`` ones (``{(stage, name): Planned}``, results that earlier stages will
    write with these fingerprints) replacing or joining those on disk. Without
    ``planned``: the results on disk, as a stage reads them when it runs."""

    found = {(r.stage, r.name): (r.fingerprint, r.diagnostic) for r in results(out)}
    for (st, name), p in (planned or {}).items():
        if p.record is None:  # results of the contract only
            found[(st, name)] = (p.fingerprint, p.diagnostic)
    order = {s.name: i for i, s in enumerate(STAGES)}
    keys = sorted(found, key=lambda k: (order[k[0]], k[1]))
    listed = [Listed(st, name, label, *found[(st, name)])
              for (st, name), label in zip(keys, _labels(keys))]
    if stage is not None:
        listed = [r for r in listed if r.stage == spec(stage).name]
    return listed


def planned_or(planned: dict | None, stage: str, name: str, read):
    """The fingerprint an earlier stage's artefact will have (``planned``), else what
    ``read()`` finds on disk (how a stage reads it when it runs)."""
    if planned and (stage, name) in planned:
        return planned[(stage, name)].fingerprint
    return read()


def find(out: str | Path, label: str) -> Result:
    """A result by its label, its name (refused if two stages have it) or
    ``stage/name``."""
    listed = results(out)
    for r in listed:
        if label in (r.label, f"{r.stage}/{r.name}"):
            return r
    named = [f"{r.stage}/{r.name}" for r in listed if r.name == label]
    if named:  # a bare name is a label unless two stages use it
        raise KeyError(f"{label!r} is ambiguous: {named}")
    raise KeyError(f"no result {label!r} under {out}; have {[r.label for r in listed]}")


# ------------------------------------------------------------------ writing
def fold_mean(arrays) -> np.ndarray:
    """The fold models' mean prediction (float32), summed fold by fold in float64: the
    same numbers for any number of rows, so a participant predicted alone
    (:mod:`sleepemo.predict`) gets exactly its rows of the stage's test array (numpy's
    float32 mean over a stack may sum in another order depending on the stack's shape)."""
    arrays = list(arrays)
    total = np.zeros(np.shape(arrays[0]), np.float64)
    for a in arrays:
        total += a
    return (total / len(arrays)).astype(np.float32)


def drop_folds(stage_folder: str | Path, folds) -> list[Path]:
    """Forget folds ``folds`` of a stage's run (its folder, e.g. ``<out>/05_rl``):
    each result's fold files (``fold<k>.*``) and the stage's own (``*_fold<k>.*``: stage
    05's networks, fitted features and prototypes) are removed, and each result's
    ``meta.json``, so that the next run of the stage computes those folds again, loads the
    others and assembles every result anew (as after a stage killed mid-run). For
    checking a changed setting or worker count on some folds (``tests/``, ``bench/``).
    Returns the removed files."""
    folder, removed = Path(stage_folder), []
    for k in folds:
        pattern = f"fold{int(k)}.*"
        for f in [*folder.glob(f"*/{pattern}"), *folder.glob(f"*_{pattern}")]:
            f.unlink()
            removed.append(f)
    for meta in folder.glob("*/meta.json"):
        meta.unlink()
        removed.append(meta)
    return removed


class ResultWriter:
    """Writes one result of ``stage`` named ``name`` (see the module docstring).

    Parameters
    ----------
    out : path
        The run's artefact folder.
    stage : str
        The stage writing it (a name of :data:`sleepemo.pipeline.stage.STAGES`).
    name : str
        The result's name: letters, digits, ``_``, ``.``, ``-``.
    fingerprint : str
        Identifies everything the result depends on (see :func:`fingerprint`).
    folds : sleepemo.data.folds.Folds
    """

    def __init__(self, out: str | Path, stage: str, name: str, fingerprint: str, folds):

        if not _NAME.match(name):
            raise ValueError(f"result name {name!r}: use letters, digits, '_', '.', '-'")
        self.stage = spec(stage).name
        self.name, self.fp, self.folds = name, fingerprint, folds
        self.folder = Path(out) / spec(stage).folder / name
        self.out = Path(out)

    def path(self, filename: str) -> Path:
        """A file of this result's folder (e.g. a fold checkpoint)."""
        return self.folder / filename

    def finished(self) -> Result | None:
        """The complete result if it exists with the current fingerprint."""
        meta_path = self.folder / "meta.json"
        meta = _read_result(meta_path) if meta_path.is_file() else None
        if meta is None or meta.get("fingerprint") != self.fp:
            return None
        return self._result()

    def _result(self) -> Result:
        """This result as listed (its label depends on the other results of the run)."""
        return next(r for r in results(self.out, self.stage) if r.name == self.name)

    def fold_done(self, k: int) -> bool:
        return stored_fingerprint(self.path(f"fold{k}.npz")) == self.fp

    def load_fold(self, k: int) -> dict | None:
        """Fold k's arrays if its file carries the current fingerprint, else None."""
        if not self.fold_done(k):
            return None
        with np.load(self.path(f"fold{k}.npz")) as z:
            return {key: z[key] for key in z.files if key != "fingerprint"}

    def save_fold(self, k: int, **arrays) -> dict:
        """Write fold k's arrays (``oof*`` rows of held-out participant k, ``test*`` rows
        of the test participants, anything else) atomically."""
        held = self.folds.held_out(k)
        n_test = sum(self.folds.n_trials[s] for s in self.folds.test_subjects)
        for key, arr in arrays.items():
            want = self.folds.n_trials[held] if key.startswith("oof") else \
                n_test if key.startswith("test") else None
            if want is not None and np.shape(arr)[0] != want:
                raise ValueError(f"{self.stage}/{self.name} fold {k}: {key} has "
                                 f"{np.shape(arr)[0]} rows, expected {want}")
        write_npz(self.path(f"fold{k}.npz"), **arrays, fingerprint=np.array(self.fp))
        return arrays

    def load_parts(self) -> dict[int, dict]:
        """Held-out participant -> its fold's arrays, for every fold (all must be done)."""
        parts = {}
        for k in range(self.folds.n_folds):
            arrays = self.load_fold(k)
            if arrays is None:
                raise FileNotFoundError(f"{self.path(f'fold{k}.npz')} is missing or from "
                                        "another run: the stage has not finished fold "
                                        f"{k}")
            parts[self.folds.held_out(k)] = arrays
        return parts

    def finish(self, ds, meta: dict | None = None, parts: dict[int, dict] | None = None,
               diagnostic: bool = False, seed: int | None = None,
               config: dict | None = None) -> Result:
        """Assemble the folds (see the module docstring), score the out-of-fold
        predictions, write the arrays, ``score.json`` and, last, ``meta.json``."""
        parts = self.load_parts() if parts is None else parts
        first = next(iter(parts.values()))
        keys = [k for k in first if k.startswith(("oof", "test"))]
        if "oof" not in keys or "test" not in keys:
            raise ValueError(f"{self.stage}/{self.name}: a result needs 'oof' and 'test' "
                             f"arrays, got {sorted(first)}")
        assembled = {}
        for key in keys:
            if key.startswith("oof"):
                assembled[key] = np.concatenate([parts[s][key]
                                                 for s in self.folds.train_subjects])
            else:  # the fold models' mean; one array shared by every fold is itself
                arrays = [p[key] for p in parts.values()]
                assembled[key] = np.asarray(arrays[0], np.float32) \
                    if all(a is arrays[0] for a in arrays) else \
                    fold_mean(arrays)
        oof = assembled["oof"]
        if oof.ndim != 2 or not np.isfinite(oof).all() or oof.min() < 0 or oof.max() > 1:
            raise ValueError(f"{self.stage}/{self.name}: oof must be (n_trials, n_times) "
                             "probabilities in [0, 1]")
        for key, arr in assembled.items():
            write_npy(self.path(f"{key}.npy"), arr)
        write_json(self.path("score.json"), _score_to_json(score_oof(oof, ds, self.folds),
                                                             ds.sfreq))
        full = {"contract": CONTRACT, "stage": self.stage, "name": self.name,
                "model": self.name, "fingerprint": self.fp,
                "fingerprint_parts": describe(self.fp), "seed": seed,
                "config": config, "diagnostic": bool(diagnostic),
                "arrays": sorted(assembled), "test_predictions": "mean of fold models",
                **(meta or {})}
        write_json(self.path("meta.json"), full)
        return self._result()
