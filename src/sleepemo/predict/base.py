"""Apply a finished run to new recordings, without retraining: ``sleepemo predict``.

A finished run (``output/<profile>-<data>/``) keeps, per result, what its test predictions
were made with. :func:`load_predictor` rebuilds a result as a :class:`Predictor`, whose
``predict(X, sfreq)`` takes ONE participant's trials (n_trials, n_chans, n_times) and gives
P(emotional) per trial and timepoint, exactly as the stage computed its test predictions:

- **LOPO models** (stage 01's baselines and stage 02's linear probes,
  :mod:`sleepemo.baselines.lopo`; :class:`~sleepemo.baselines.predict.FoldAverage`): the 14
  fold models (``fold<k>.joblib``), each applied to the participant's features, averaged.
  Features come from the result's recipe (``meta.json`` ``recipe``): the model's own
  ``transform`` or the MAE's / the band envelopes' window means
  (:data:`sleepemo.mae.predict.FEATURES`). Every per-participant normalisation is
  computed on the new participant's own trials, label-free, as at training time.
- **Stage 03's channel experts** (:mod:`sleepemo.experts.predict`): each fold's experts
  and combination weights, the ``_tta`` results after the test-time adaptation on the
  participant's own trials (seeded by its id: ``predict(X, sfreq, subject=<id>)``).
- **Stage 04's fusion** (:mod:`sleepemo.fusion.predict`): its fold networks on the
  participant's rebuilt inputs, averaged.
- **Stage 05's heads and their twins** (:mod:`sleepemo.rl.predict`): each fold's fitted
  features and network (a SAC on stage 04's fused tokens: fold k's fusion and
  prototypes first), averaged.
- **The ensemble** (stage 06, :mod:`sleepemo.predict.ensemble`): its members' predictors,
  blended by ``ensembler.json``.

Which module rebuilds a result is its stage's ``predictor`` in the stage table
(:data:`sleepemo.pipeline.stage.STAGES`); other stages' results raise a clear error naming
the result and the supported stages.

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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sleepemo.config import Config, load_config
from sleepemo.features import OnlineNormaliser
from sleepemo.io import read_json


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
                               "before sleepemo predict existed): rerun src/00_folds.py")
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

            with state.setdefault("norm", OnlineNormaliser()):
                return self.predict(trial[None], sfreq, subject)[0]
        trials = state.setdefault("trials", [])
        trials.append(trial)
        return self.predict(np.stack(trials), sfreq, subject)[-1]
