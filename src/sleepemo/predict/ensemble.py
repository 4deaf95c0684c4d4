"""Stage 06's predictor: the ensemble's blend (``ensembler.json``) of its members'
predictors. It sits in :mod:`sleepemo.predict`, above the families, because its members
are any stage's results, each loaded through the stage table
(:func:`sleepemo.predict.load.load_predictor`)."""
from __future__ import annotations

import numpy as np

from sleepemo.ensemble.blend import OptunaBlend, Stack
from sleepemo.pipeline.artefacts import Result
from sleepemo.predict.base import PredictError, Predictor, Run
from sleepemo.predict.load import load_predictor


class Ensemble(Predictor):
    """Stage 06's blend of its members' predictions (``ensembler.json``)."""

    def __init__(self, run: Run, result: Result):

        path = result.folder.parent / "ensembler.json"
        if not path.is_file():
            raise PredictError(f"{path} is missing: stage 06 did not finish")
        self.name, self.blend = result.label, OptunaBlend.load(path)
        self.members = {m: load_predictor(run.out, m, run)
                        for m in self.blend.params_["models"]}
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


def load(run: Run, result: Result) -> Predictor:
    """The ``ensemble`` result as an :class:`Ensemble`."""
    return Ensemble(run, result)
