"""Loading a finished run's result as a :class:`~sleepemo.predict.base.Predictor`
(:func:`load_predictor`): LOPO fold models (stage 01's baselines, stage 02's probes),
the families' own predictors (:data:`STAGE_PREDICTORS`) and stage 06's ensemble."""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from sleepemo.baselines import make_model
from sleepemo.baselines.lopo import _as_2d, load_fold_model
from sleepemo.ensemble.blend import OptunaBlend, Stack
from sleepemo.io import read_json
from sleepemo.mae.predict import FEATURES
from sleepemo.pipeline.artefacts import Result, find, fold_mean
from sleepemo.pipeline.stage import spec
from sleepemo.predict.base import PredictError, Predictor, Run


class FoldAverage(Predictor):
    """A LOPO result: its fold models' mean (as :mod:`sleepemo.baselines.lopo` made its test
    predictions)."""

    def __init__(self, run: Run, result: Result):

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

        feats = self.features(X, sfreq)
        n, t = len(X), X.shape[-1]
        return fold_mean(_as_2d(m.predict_proba(feats), n, t) for m in self.models)


class Ensemble(Predictor):
    """Stage 06's blend of its members' predictions (``ensembler.json``)."""

    def __init__(self, run: Run, result: Result):

        path = result.folder.parent / "ensembler.json"
        if not path.is_file():
            raise PredictError(f"{path} is missing: stage 06 did not finish")
        self.name, self.blend = result.label, OptunaBlend.load(path)
        self.members = {m: load_predictor(run.out, m, run) for m in self.blend.params_["models"]}
        self.online = all(p.online for p in self.members.values())

    def predict(self, X, sfreq, subject=None):

        stack = Stack({m: p.predict(X, sfreq, subject) for m, p in self.members.items()},
                      np.zeros(len(X), dtype=int))
        return self.blend.predict(stack).astype(np.float32)

    def stream_step(self, trial, sfreq, subject, state):
        """Each member streams the trial (its own state); the blend re-normalises the
        members' outputs over the trials seen (per-participant ranks), a cost that grows
        with them but is small beside the members'."""

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
    "experts": "sleepemo.experts.predict",
    "fusion": "sleepemo.fusion.predict",
    "rl": "sleepemo.rl.predict",
}


def supported() -> str:

    return ", ".join(["stage 01 baselines", "stage 02 probes"] + [
        f"stage {spec(s).number} {s}" for s in STAGE_PREDICTORS] +
        ["the stage 06 ensemble of those"])
