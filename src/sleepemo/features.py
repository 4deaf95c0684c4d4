"""Label-free feature transforms, applied to one participant's trials at a time.

Everything here uses only the signals of the participant being transformed (never a
label, never another participant), so applying it to a held-out or test participant is
LOPO-safe.
"""
from __future__ import annotations

import numpy as np
import scipy.signal


def bandpass(X: np.ndarray, sfreq: float, band: tuple[float, float],
             order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth band-pass along the time axis (MNE's IIR filtering).

    Parameters
    ----------
    X : ndarray, shape (n_trials, n_chans, n_times)
    band : (low, high) in Hz
    order : int
        Butterworth order of the band-pass design, applied forward and backward.

    Returns
    -------
    ndarray, shape (n_trials, n_chans, n_times), float64
    """
    import mne

    iir = dict(order=order, ftype="butter", output="sos")
    return mne.filter.filter_data(np.asarray(X, dtype=np.float64), sfreq, band[0], band[1],
                                  method="iir", iir_params=iir, phase="zero", verbose=False)


def hilbert_power(X: np.ndarray) -> np.ndarray:
    """Instantaneous power (squared Hilbert envelope) along the last axis."""
    return np.abs(scipy.signal.hilbert(X, axis=-1)) ** 2


def zscore_trials(F: np.ndarray) -> np.ndarray:
    """Z-score every feature across one participant's trials (axis 0)."""
    F = np.asarray(F, dtype=np.float64)
    sd = F.std(axis=0)
    return (F - F.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def covariances(X: np.ndarray, estimator: str = "cov") -> np.ndarray:
    """Per-trial spatial covariance (pyriemann), shape (n_trials, n_chans, n_chans)."""
    from pyriemann.estimation import Covariances

    return Covariances(estimator=estimator).fit_transform(np.asarray(X, dtype=np.float64))


def upper_triangle(C: np.ndarray) -> np.ndarray:
    """Upper triangle including the diagonal: (n, c, c) -> (n, c * (c + 1) / 2)."""
    iu = np.triu_indices(C.shape[-1])
    return C[:, iu[0], iu[1]]


def recentre(C: np.ndarray) -> np.ndarray:
    """Whiten one participant's covariances by their own Riemannian mean.

    ``C_i -> M^{-1/2} C_i M^{-1/2}``, so every participant is centred at the identity
    (Zanini et al. 2018). Uses no labels.
    """
    from pyriemann.utils.base import invsqrtm
    from pyriemann.utils.mean import mean_riemann

    W = invsqrtm(mean_riemann(C))
    return W @ C @ W
