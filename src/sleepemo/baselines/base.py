"""What every stage-01 model is (:class:`BaselineModel`, see :mod:`sleepemo.baselines.models`)
and the waveform input several of them share (:func:`lowpass_decimate`)."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator

from sleepemo import features as F


class BaselineModel(BaseEstimator):
    """Common defaults; subclasses override what they need.

    A scikit-learn estimator with a per-participant interface (see the module docstring):
    not a ``ClassifierMixin``, whose ``score`` and classifier tag promise ``fit(X, y)`` on
    one array and ``predict_proba`` with a column per class. ``random_state`` seeds what
    the model draws (logistic regressions, ``Shuffled``'s permutations); models that draw
    nothing keep it too, so that every model is made the same way (:func:`make_model`).
    """

    #: excluded from choosing the submission model (leakage alarms, references)
    diagnostic: bool = False
    #: every per-participant step of ``transform`` and ``predict_proba`` is a z-score of
    #: :mod:`sleepemo.features` (``zscore_trials``, ``zscore_participant``), so a streamed
    #: trial can be computed alone with running statistics (:mod:`sleepemo.predict`)
    online: bool = False

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def transform(self, X: np.ndarray, sfreq: float) -> np.ndarray:
        return X

    def fit(self, feats: list[np.ndarray], labels: list[np.ndarray]) -> "BaselineModel":
        raise NotImplementedError

    def predict_proba(self, feats: np.ndarray) -> np.ndarray:
        raise NotImplementedError



def lowpass_decimate(X: np.ndarray, sfreq: float, band=(0.5, 15.0),
                     decim: int = 4) -> np.ndarray:
    """Cue-locked waveform of one participant: zero-phase band-pass, every ``decim``-th
    sample (200 -> 50 Hz for ``decim=4``). Label-free.

    Returns
    -------
    ndarray, shape (n_trials, n_chans, ceil(n_times / decim)), float64
    """
    decim = int(decim)
    if decim < 1 or band[1] >= sfreq / decim / 2:
        raise ValueError(f"band {tuple(band)} Hz does not fit below the Nyquist frequency "
                         f"of {sfreq} Hz decimated by {decim}")
    return F.bandpass(X, sfreq, tuple(band))[..., ::decim]
