"""Trial features of the DQN head and its twin (after RLEEGNet), fitted inside one fold.

Two parts, kept apart so that a label can only enter where it is allowed:

1. :func:`participant_signals` (label-free, one participant at a time): every channel
   z-scored over the participant's trials and timepoints, band-passed to ``band`` and
   decimated; per trial and channel the peak-to-peak, RMS, sum of absolute differences,
   skewness and kurtosis of that waveform, and the Welch log-power of the alpha
   (8-12 Hz) and beta (12-30 Hz) bands.
2. :class:`FoldFeatures`, fitted on fold k's training participants only
   (:func:`fit_fold` reads their labels through :meth:`Folds.labels_of`; ``fit`` refuses
   the held-out participant): a CSP (``mne.decoding.CSP``, ``transform_into='csp_space'``:
   the time axis is kept; with two classes one-vs-rest is one CSP) and the scaling of the
   CSP components and of the statistics.

:meth:`FoldFeatures.transform` takes no label: the features of a trial cannot depend on
its class. Stage 05 keeps each fold's fitted features (:func:`save_fold_features`) so that
:mod:`sleepemo.rl.predict` applies them to new recordings.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sleepemo.features import bandpass, zscore_participant
from sleepemo.io import atomic_path

STATS = ("ptp", "rms", "abs_diff", "skew", "kurtosis", "alpha", "beta")
PSD_BANDS = {"alpha": (8.0, 12.0), "beta": (12.0, 30.0)}


@dataclass
class Signals:
    """One participant's label-free trial signals."""

    wave: np.ndarray   # (n_trials, n_chans, n_times // decim), band-passed, z-scored
    stats: np.ndarray  # (n_trials, n_chans * len(STATS))

    def __len__(self) -> int:
        return len(self.wave)

    def take(self, idx) -> "Signals":
        return Signals(self.wave[idx], self.stats[idx])


def participant_signals(X: np.ndarray, sfreq: float, band=(4.0, 30.0),
                        decim: int = 2) -> Signals:
    """See the module docstring, part 1. X (n_trials, n_chans, n_times)."""
    import scipy.signal
    import scipy.stats

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 3 or not np.isfinite(X).all():
        raise ValueError(f"expected finite trials (n_trials, n_chans, n_times), got "
                         f"shape {X.shape}")
    if band[1] >= sfreq / decim / 2:
        raise ValueError(f"band {tuple(band)} Hz does not fit below the Nyquist frequency "
                         f"of {sfreq} Hz decimated by {decim}")
    Z = zscore_participant(X)
    wave = bandpass(Z, sfreq, tuple(band))
    freqs, psd = scipy.signal.welch(Z, fs=sfreq, nperseg=min(Z.shape[-1], int(sfreq)),
                                    axis=-1)
    power = [np.log(psd[..., (freqs >= lo) & (freqs <= hi)].mean(-1) + 1e-12)
             for lo, hi in PSD_BANDS.values()]
    stats = np.stack([np.ptp(wave, axis=-1), np.sqrt((wave ** 2).mean(-1)),
                      np.abs(np.diff(wave, axis=-1)).sum(-1),
                      scipy.stats.skew(wave, axis=-1), scipy.stats.kurtosis(wave, axis=-1),
                      *power], axis=-1)
    return Signals(wave[..., ::decim].astype(np.float32),
                   stats.reshape(len(X), -1).astype(np.float32))


def dqn_signals(X: np.ndarray, sfreq: float, cfg) -> Signals:
    """:func:`participant_signals` with the run's ``rl.band`` and ``rl.decim`` (``cfg``:
    the :class:`~sleepemo.config.RLConfig`): the DQN's input of one participant, in stage
    05 and in :mod:`sleepemo.rl.predict`."""
    return participant_signals(X, sfreq, tuple(cfg.band), cfg.decim)


class FoldFeatures:
    """CSP-space series and scaled statistics, fitted on one fold's training trials.

    Parameters
    ----------
    n_csp : int
        CSP components kept (the time axis of each is kept).
    reg : str or float
        CSP covariance regularisation (MNE's ``reg``).
    """

    def __init__(self, n_csp: int = 4, reg="ledoit_wolf"):
        self.n_csp, self.reg = int(n_csp), reg

    def fit(self, signals: dict, labels: dict, *, held_out: int) -> "FoldFeatures":
        """Fit on the participants of ``labels`` (fold k's training participants);
        ``held_out`` must not be among them."""
        from mne.decoding import CSP

        if held_out in labels:
            raise ValueError(f"participant {held_out} is held out: its labels must not "
                             "reach the CSP or any fitted feature step")
        subjects = sorted(labels)
        for s in subjects:
            if len(labels[s]) != len(signals[s]):
                raise ValueError(f"participant {s}: {len(labels[s])} labels for "
                                 f"{len(signals[s])} trials")
        wave = np.concatenate([signals[s].wave for s in subjects]).astype(np.float64)
        y = np.concatenate([labels[s] for s in subjects]).astype(int)
        if len(np.unique(y)) < 2:
            raise ValueError("the fold's training trials have one class only")
        from mne.utils import use_log_level

        self.csp_ = CSP(n_components=self.n_csp, reg=self.reg, log=None,
                        transform_into="csp_space", norm_trace=False)
        with use_log_level("error"):
            self.csp_.fit(wave, y)
        series = self.csp_.transform(wave)
        self.series_sd_ = series.std(axis=(0, 2), keepdims=True)[0] + 1e-12
        stats = np.concatenate([signals[s].stats for s in subjects])
        self.stats_mu_, self.stats_sd_ = stats.mean(0), stats.std(0) + 1e-12
        return self

    def transform(self, sig: Signals) -> dict:
        """``{"series": (n, n_csp, T), "stats": (n, k)}``, float32; no labels."""
        series = self.csp_.transform(sig.wave.astype(np.float64)) / self.series_sd_
        stats = (sig.stats - self.stats_mu_) / self.stats_sd_
        return {"series": series.astype(np.float32), "stats": stats.astype(np.float32)}


def features_path(folder, k: int) -> Path:
    """Where stage 05 keeps fold k's fitted :class:`FoldFeatures` (what
    :mod:`sleepemo.rl.predict` transforms a new participant's signals with)."""
    return Path(folder) / f"rl_features_fold{k}.joblib"


def save_fold_features(path, feats: FoldFeatures, fp: str) -> None:
    """A fitted :class:`FoldFeatures` (an MNE CSP and arrays: a joblib pickle, as
    :mod:`sleepemo.baselines.lopo` keeps its fold models) with the fingerprint of its head,
    atomically."""
    import joblib


    with atomic_path(path) as tmp:
        joblib.dump({"features": feats, "fingerprint": fp}, tmp)


def load_fold_features(path, fp: str) -> FoldFeatures | None:
    """The :class:`FoldFeatures` at ``path`` if it exists and carries fingerprint ``fp``,
    else None. A pickle runs code when loaded: load only runs you made (or trust)."""
    import joblib

    if not Path(path).is_file():
        return None
    saved = joblib.load(path)
    return saved["features"] if saved.get("fingerprint") == fp else None


def fit_fold(signals: dict, folds, ds, k: int, n_csp: int = 4, shuffle: bool = False,
             seed: int = 0) -> FoldFeatures:
    """Fold k's features, fitted on its training participants' labels only
    (:meth:`Folds.labels_of`); ``shuffle`` permutes them (the leakage alarm)."""
    labels = folds.labels_of(ds, k, shuffle, seed)
    return FoldFeatures(n_csp).fit(signals, labels, held_out=folds.held_out(k))
