"""Apply a finished run to new recordings, without retraining: ``sleepemo predict``.

A finished run (``output/<profile>-<data>/``) keeps, per result, what its test predictions
were made with. :func:`load_predictor` rebuilds a result as a :class:`Predictor`, whose
``predict(X, sfreq)`` takes ONE participant's trials (n_trials, n_chans, n_times) and gives
P(emotional) per trial and timepoint, exactly as the stage computed its test predictions:

- **LOPO models** (stage 01's baselines and stage 02's linear probes,
  :mod:`sleepemo.lopo`): the 14 fold models (``fold<k>.joblib``), each applied to the
  participant's features, averaged. Features come from the result's recipe (``meta.json``
  ``recipe``, :data:`FEATURES`): the model's own ``transform`` or the MAE's / the band
  envelopes' window means. Every per-participant normalisation is computed on the new
  participant's own trials, label-free, as at training time.
- **Stage 03's channel experts** (:mod:`sleepemo.predict_experts`): each fold's experts
  and combination weights, the ``_tta`` results after the test-time adaptation on the
  participant's own trials (seeded by its id: ``predict(X, sfreq, subject=<id>)``).
- **Stage 04's fusion** (:mod:`sleepemo.predict_fusion`): its fold networks on the
  participant's rebuilt inputs, averaged.
- **Stage 05's heads and their twins** (:mod:`sleepemo.predict_rl`): each fold's fitted
  features and network (a SAC on stage 04's fused tokens: fold k's fusion and
  prototypes first), averaged.
- **The ensemble** (stage 06): its members' predictors, blended by ``ensembler.json``.

Other stages' results (:data:`STAGE_PREDICTORS` lists the supported ones) raise a clear
error naming the result.

**Streaming** (:class:`Stream`): one trial at a time, for closed-loop use. The
participant's normalisation is updated online: each new trial is predicted with the
normalisation of every trial of that participant seen so far (the trial included), so its
output approaches the batch output as trials accumulate; the first ``warmup`` trials are
marked as warm-up. A predictor whose per-participant normalisation is only the z-scores
of :mod:`sleepemo.features` (``Predictor.online``: the probes, the fusion, the stage-05
heads and the baselines that say so) keeps running statistics
(:class:`~sleepemo.features.OnlineNormaliser`) and computes the new trial alone, at a
cost that does not grow with the trials seen; a feature computed from normalised values
keeps the normalisation of its trial's time, so even the last trial differs slightly from
the batch. The others (a Riemannian re-centring, the experts' test-time adaptation)
recompute the participant's trials seen so far at every step, exactly as a batch of them.
The ensemble blends its members' streamed outputs, re-normalised over the trials seen
(``bench/bench_predict.py`` measures both kinds).

Command line::

    python -m sleepemo predict --run output/quick-synthetic [--model NAME] [--stream]
        [--warmup 20] [--out DIR] FILE_OR_FOLDER...

writes ``predictions.csv`` (the competition's format), ``S<id>.npy`` per participant and
``predict.json`` into a new folder (default ``submissions/predict-<model>-<time>/``).
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .artefacts import Result, find, fold_mean
from .config import Config, load_config
from .io import read_json


class PredictError(ValueError):
    """A run or a recording that cannot be predicted (one clear line)."""


# ------------------------------------------------------------------ the run
@dataclass
class Run:
    """A finished run's folder, its config and what its data looked like."""

    out: Path
    cfg: Config
    channels: list
    sfreq: float
    n_times: int
    n_folds: int
    _cache: dict = field(default_factory=dict)

    @classmethod
    def open(cls, out: str | Path) -> "Run":
        out = Path(out)
        if not (out / "config.yaml").is_file() or not (out / "folds.json").is_file():
            raise PredictError(f"{out}: not a run folder (no config.yaml / folds.json); give "
                               "the --out folder of a finished ./run.sh")
        info = out / "00_folds" / "metrics.json"
        data = read_json(info) if info.is_file() else {}
        if "channels" not in data:
            raise PredictError(f"{info}: the run does not record its data's channels (made "
                               "before sleepemo predict existed): rerun src/00_make_folds.py")
        folds = read_json(out / "folds.json")
        return cls(out, load_config(path=out / "config.yaml"), list(data["channels"]),
                   float(data["sfreq"]), int(data["n_times"]), len(folds["folds"]))

    def check(self, X: np.ndarray, sfreq: float, ch_names, where: str) -> None:
        """New trials must look like the run's data."""
        if list(ch_names) != self.channels:
            raise PredictError(f"{where}: channels {list(ch_names)} differ from the run's "
                               f"{self.channels}")
        if not np.isclose(sfreq, self.sfreq):
            raise PredictError(f"{where}: sampling rate {sfreq:g} Hz, the run's is "
                               f"{self.sfreq:g} Hz")
        if X.ndim != 3 or X.shape[2] != self.n_times:
            raise PredictError(f"{where}: trials of shape {X.shape[1:]}, the run's have "
                               f"{self.n_times} samples")

    def cached(self, key, make: Callable):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


# ------------------------------------------------------------------ predictors
class Predictor:
    """One result of a run, applied to one participant's trials."""

    name: str = ""

    def predict(self, X: np.ndarray, sfreq: float, subject: int | None = None
                ) -> np.ndarray:
        """(n_trials, n_chans, n_times) -> P(emotional), (n_trials, n_times) float32.
        ``subject``: the participant's id, for predictors seeded by it (stage 03's
        test-time adaptation); the others ignore it."""
        raise NotImplementedError

    #: whether a streamed trial is computed alone (see *Streaming* in the module docstring)
    online: bool = False

    def stream_step(self, trial: np.ndarray, sfreq: float, subject: int | None,
                    state: dict) -> np.ndarray:
        """The output (n_times,) for ``trial`` (n_chans, n_times), the newest of a
        participant's stream; ``state`` is this predictor's own for that participant
        (empty at its first trial)."""
        if self.online:
            from .features import OnlineNormaliser

            with state.setdefault("norm", OnlineNormaliser()):
                return self.predict(trial[None], sfreq, subject)[0]
        trials = state.setdefault("trials", [])
        trials.append(trial)
        return self.predict(np.stack(trials), sfreq, subject)[-1]


def _band(run: Run, X: np.ndarray, sfreq: float) -> np.ndarray:
    """Stage 02's token features of one participant (as its BandFeatureCache holds)."""
    from .features import token_features

    m = run.cfg.mae
    return token_features(X, sfreq, m.bands, m.feature, m.evoked())


def mae_tokens(run: Run, X: np.ndarray, sfreq: float, stride: int) -> np.ndarray:
    """Stage 02's encoder output for one participant's trials, pooled to ``stride``
    samples per token: what :class:`~sleepemo.models.mae.TokenCache` holds for a
    participant of the run (the same computation, at the MAE's own stride)."""
    from .features import pool_time
    from .models.mae import encode_tokens, load_encoder, load_mae_weights
    from .stage import stage_dir

    folder = stage_dir(run.out, "mae")
    enc = run.cached("mae_encoder", lambda: load_encoder(folder))
    mstride = run.cached("mae_stride",
                         lambda: int(load_mae_weights(folder)[2]["config"]["stride"]))
    tokens = encode_tokens(enc, pool_time(np.asarray(_band(run, X, sfreq), np.float32),
                                          mstride))
    return np.ascontiguousarray(pool_time(tokens, stride // mstride), dtype=np.float32)


def _mae_window(run: Run, X, sfreq, recipe) -> np.ndarray:
    from .features import zscore_trials
    from .models.mae import window_means

    stride = run.cfg.mae.stride
    return zscore_trials(window_means(mae_tokens(run, X, sfreq, stride),
                                      tuple(recipe["window"]), stride))


def _band_window(run: Run, X, sfreq, recipe) -> np.ndarray:
    from .features import zscore_trials

    w = recipe["window"]
    feats = np.asarray(_band(run, X, sfreq))
    return zscore_trials(feats[:, :, w[0]:w[1]].mean(2).reshape(len(X), -1))


#: how a LOPO result's features are computed for a new participant (``meta.recipe``)
FEATURES: dict[str, Callable] = {"mae_window": _mae_window, "band_window": _band_window}


class FoldAverage(Predictor):
    """A LOPO result: its fold models' mean (as :mod:`sleepemo.lopo` made its test
    predictions)."""

    def __init__(self, run: Run, result: Result):
        from .lopo import load_fold_model
        from .models import make_model

        self.name, self.run = result.label, run
        self.recipe = result.meta.get("recipe") or {"features": "transform"}
        kind = self.recipe["features"]
        if kind != "transform" and kind not in FEATURES:
            raise PredictError(f"{result.label}: unknown feature recipe {kind!r}")
        self.proto = make_model(result.meta["registry"], random_state=result.meta["seed"],
                                **result.meta.get("params", {}))
        self.online = kind != "transform" or bool(getattr(self.proto, "online", False))
        self.models = [load_fold_model(result.folder, k) for k in range(run.n_folds)]

    def features(self, X: np.ndarray, sfreq: float):
        kind = self.recipe["features"]
        if kind == "transform":
            return self.proto.transform(X, sfreq)
        return FEATURES[kind](self.run, X, sfreq, self.recipe)

    def predict(self, X, sfreq, subject=None):
        from .lopo import _as_2d

        feats = self.features(X, sfreq)
        n, t = len(X), X.shape[-1]
        return fold_mean(_as_2d(m.predict_proba(feats), n, t) for m in self.models)


class Ensemble(Predictor):
    """Stage 06's blend of its members' predictions (``ensembler.json``)."""

    def __init__(self, run: Run, result: Result):
        from .ensemble import OptunaBlend

        path = result.folder.parent / "ensembler.json"
        if not path.is_file():
            raise PredictError(f"{path} is missing: stage 06 did not finish")
        self.name, self.blend = result.label, OptunaBlend.load(path)
        self.members = {m: load_predictor(run.out, m, run) for m in self.blend.params_["models"]}
        self.online = all(p.online for p in self.members.values())

    def predict(self, X, sfreq, subject=None):
        from .ensemble import Stack

        stack = Stack({m: p.predict(X, sfreq, subject) for m, p in self.members.items()},
                      np.zeros(len(X), dtype=int))
        return self.blend.predict(stack).astype(np.float32)

    def stream_step(self, trial, sfreq, subject, state):
        """Each member streams the trial (its own state); the blend re-normalises the
        members' outputs over the trials seen (per-participant ranks), a cost that grows
        with them but is small beside the members'."""
        from .ensemble import Stack

        outs = state.setdefault("outputs", {m: [] for m in self.members})
        for m, p in self.members.items():
            outs[m].append(p.stream_step(trial, sfreq, subject, state.setdefault(m, {})))
        n = len(outs[next(iter(outs))])
        stack = Stack({m: np.stack(v) for m, v in outs.items()}, np.zeros(n, dtype=int))
        return self.blend.predict(stack)[-1].astype(np.float32)


def submitted_model(out: str | Path) -> str:
    """The model a run's stage 07 submitted."""
    path = Path(out) / "07_submission" / "metrics.json"
    if not path.is_file():
        raise PredictError(f"{path} is missing: the run has no submission yet (run stage 07, "
                           "or name a model with --model)")
    return read_json(path)["model"]


def load_predictor(out: str | Path, name: str | None = None, run: Run | None = None
                   ) -> Predictor:
    """Result ``name`` of the run in ``out`` (default: the submitted model)."""
    run = run or Run.open(out)
    name = name or submitted_model(run.out)
    try:
        result = find(run.out, name)
    except KeyError as exc:
        raise PredictError(str(exc.args[0])) from None
    try:
        if result.stage == "ensemble":
            return Ensemble(run, result)
        if result.meta.get("family") == "lopo":
            return FoldAverage(run, result)
        if result.stage in STAGE_PREDICTORS:
            import importlib

            module = importlib.import_module(STAGE_PREDICTORS[result.stage])
            return module.load(run, result)
    except FileNotFoundError as exc:
        raise PredictError(str(exc)) from None
    raise PredictError(f"{result.label} (stage {result.stage}): predicting new recordings "
                       "is not supported for this stage's models yet; supported: "
                       f"{supported()}")


#: result stage -> the library module whose ``load(run, result) -> Predictor`` rebuilds its
#: results (modules of the library, never of :mod:`sleepemo.stages`)
STAGE_PREDICTORS: dict[str, str] = {
    "experts": "sleepemo.predict_experts",
    "fusion": "sleepemo.predict_fusion",
    "rl_heads": "sleepemo.predict_rl",
}


def supported() -> str:
    from .stage import spec

    return ", ".join(["stage 01 baselines", "stage 02 probes"] + [
        f"stage {spec(s).number} {s}" for s in STAGE_PREDICTORS] +
        ["the stage 06 ensemble of those"])


# ------------------------------------------------------------------ streaming
@dataclass
class StreamStep:
    """One streamed trial's output."""

    probs: np.ndarray  # (n_times,)
    index: int  # the trial's position in the participant's stream
    warm_up: bool  # one of the first ``warmup`` trials: normalised on too few to rely on


class Stream:
    """One participant's trials, one at a time (see the module docstring)."""

    def __init__(self, predictor: Predictor, sfreq: float, warmup: int = 20,
                 subject: int | None = None):
        if warmup < 1:
            raise ValueError("warmup must be >= 1")
        self.predictor, self.sfreq, self.warmup = predictor, float(sfreq), int(warmup)
        self.subject = subject
        self._state: dict = {}
        self._n, self._shape = 0, None

    def push(self, trial: np.ndarray) -> StreamStep:
        trial = np.asarray(trial, dtype=np.float32)
        if trial.ndim != 2 or (self._shape is not None and trial.shape != self._shape):
            raise PredictError(f"a streamed trial is (n_chans, n_times) like the first "
                               f"one{'' if self._shape is None else f' {self._shape}'}, got "
                               f"{trial.shape}")
        self._shape = trial.shape
        probs = self.predictor.stream_step(trial, self.sfreq, self.subject, self._state)
        self._n += 1
        return StreamStep(np.asarray(probs, dtype=np.float32), self._n - 1,
                          self._n <= self.warmup)


# ------------------------------------------------------------------ files
_ID = re.compile(r"(?:test_subject_|S_)(\d+)(?:_cleaned)?\.mat$", re.IGNORECASE)


def recordings(paths) -> dict[int, Path]:
    """participant id -> file, from files and folders (searched for ``*.mat``). The id is
    the number in ``test_subject_<id>.mat`` or ``S_<id>_cleaned.mat``."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.suffix.lower() == ".mat")
        elif p.is_file():
            files.append(p)
        else:
            raise PredictError(f"{p}: no such file or folder")
    if not files:
        raise PredictError(f"no .mat files in {', '.join(map(str, paths))}")
    out: dict[int, Path] = {}
    for f in files:
        m = _ID.search(f.name)
        if not m:
            raise PredictError(f"{f}: cannot tell the participant from the name (expected "
                               "test_subject_<id>.mat or S_<id>_cleaned.mat)")
        sid = int(m.group(1))
        if sid in out:
            raise PredictError(f"{f}: participant {sid} also in {out[sid]}")
        out[sid] = f
    return dict(sorted(out.items()))


def predict_files(out: str | Path, paths, model: str | None = None, stream: bool = False,
                  warmup: int = 20, progress: bool = True, bad_values: str | None = None
                  ) -> dict:
    """Predict every recording in ``paths`` with model ``model`` of the run in ``out``.
    ``bad_values`` (default: the run's ``data.bad_values``): ``interpolate`` repairs
    NaN/Inf samples so that every trial is predicted, ``error`` refuses such a file.

    Returns ``{"model": label, "predictions": participant -> (probabilities (n_trials,
    n_times) float32, warm-up flags (n_trials,) bool; all False in batch mode),
    "repairs": participant -> repaired samples}``."""
    from .data import read_mat
    from .progress import bar

    run = Run.open(out)
    predictor = load_predictor(run.out, model, run)
    policy = bad_values or run.cfg.data.bad_values
    done, repairs = {}, {}
    for sid, path in bar(list(recordings(paths).items()), desc=f"predict {predictor.name}",
                         unit="participant", enabled=progress):
        rec = read_mat(path, bad_values=policy)
        repairs[sid] = sum(r.samples for r in rec.repairs)
        run.check(rec.X, rec.sfreq, rec.ch_names, str(path))
        if stream:
            s = Stream(predictor, rec.sfreq, warmup, sid)
            steps = [s.push(x) for x in rec.X]
            done[sid] = (np.stack([st.probs for st in steps]),
                         np.array([st.warm_up for st in steps]))
        else:
            done[sid] = (predictor.predict(rec.X, rec.sfreq, sid),
                         np.zeros(len(rec.X), bool))
    return {"model": predictor.name, "predictions": done, "repairs": repairs}


def write_predictions(result: dict, dest: Path, meta: dict) -> Path:
    """``predictions.csv`` (competition format), ``S<id>.npy``, ``predict.json``."""
    from .io import atomic_path, write_json, write_npy
    from .submission import build_submission

    preds = result["predictions"]
    df = build_submission({s: p for s, (p, _) in preds.items()})
    with atomic_path(dest / "predictions.csv", overwrite=False) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6f")  # as stage 07's submission.csv
    for sid, (p, _) in preds.items():
        write_npy(dest / f"S{sid}.npy", p)
    write_json(dest / "predict.json", {**meta, "model": result["model"], "participants": {
        str(s): {"trials": int(len(p)), "warm_up_trials": int(w.sum()),
                 "repaired_samples": int(result["repairs"].get(s, 0))}
        for s, (p, w) in preds.items()}})
    return dest / "predictions.csv"


def main(argv: list[str] | None = None) -> int:
    from datetime import datetime

    from .config import project_dir
    from .submission import new_run_dir

    ap = argparse.ArgumentParser(prog="python -m sleepemo predict",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help=".mat files or folders of them")
    ap.add_argument("--run", required=True, help="a finished run's folder (its --out)")
    ap.add_argument("--model", help="a result of the run (default: the submitted one)")
    ap.add_argument("--stream", action="store_true",
                    help="one trial at a time, normalisation updated online")
    ap.add_argument("--warmup", type=int, default=20,
                    help="streamed trials marked as warm-up (default 20)")
    ap.add_argument("--bad-values", choices=("error", "interpolate"),
                    help="NaN/Inf samples: refuse the file, or repair them so that every "
                         "trial is predicted (default: the run's data.bad_values)")
    ap.add_argument("--out", help="output folder (default: a new "
                                  "submissions/predict-<model>-<time>/)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    result = predict_files(args.run, args.paths, args.model, args.stream, args.warmup,
                           not args.no_progress, args.bad_values)
    dest = Path(args.out) if args.out else new_run_dir(
        project_dir() / "submissions", f"predict-{result['model'].replace('/', '-')}-"
                              f"{datetime.now():%Y%m%d-%H%M%S}")
    path = write_predictions(result, dest, {
        "run": str(Path(args.run).resolve()), "stream": args.stream,
        "bad_values": args.bad_values or Run.open(args.run).cfg.data.bad_values,
        "warmup": args.warmup if args.stream else None,
        "files": [str(p) for p in args.paths]})
    n = sum(len(p) for p, _ in result["predictions"].values())
    print(f"{result['model']}: {n} trials of {len(result['predictions'])} participant(s) -> "
          f"{path}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    """:func:`main` with expected problems as one line and exit code 2."""
    from .stage import guarded

    try:
        guarded(lambda: main(argv))  # (a bad .mat file: DataError, one line, exit 2)
    except PredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
