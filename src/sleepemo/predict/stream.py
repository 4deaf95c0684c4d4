"""Streaming: one participant's trials one at a time, for closed-loop use (see
:mod:`sleepemo.predict.base` for how each predictor's normalisation is updated online)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sleepemo.predict.base import PredictError, Predictor


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
