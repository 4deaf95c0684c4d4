"""Label-free feature transforms, applied to one participant's trials at a time.

Everything here uses only the signals of the participant being transformed (never a
label, never another participant), so applying it to a held-out or test participant is
LOPO-safe.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass

import numpy as np
import scipy.signal
from sleepemo.io import write_json, write_npy
from sleepemo.progress import bar


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
    """Z-score every feature across one participant's trials (axis 0). Inside an
    :class:`OnlineNormaliser`, with the statistics of every trial it has seen."""
    F = np.asarray(F, dtype=np.float64)
    online = _ONLINE.get()
    if online is not None:
        return online.normalise(F, (0,))
    sd = F.std(axis=0)
    return (F - F.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def zscore_participant(x: np.ndarray) -> np.ndarray:
    """Z-score ``x`` (n_trials, n_chans, n_times[, n_features]) per channel (and feature)
    over one participant's trials and timepoints (axes 0 and 2), label-free; a constant
    channel becomes zeros. In the input's floating dtype. Inside an
    :class:`OnlineNormaliser`, with the statistics of every trial it has seen."""
    online = _ONLINE.get()
    if online is not None:
        return online.normalise(x, (0, 2)).astype(x.dtype, copy=False)
    sd = x.std(axis=(0, 2), keepdims=True)
    return (x - x.mean(axis=(0, 2), keepdims=True)) / np.where(sd > 0, sd, 1.0)


_ONLINE: contextvars.ContextVar = contextvars.ContextVar("sleepemo_online", default=None)


class OnlineNormaliser:
    """One participant's normalisation, updated one trial (or batch) at a time: for
    streaming (:class:`sleepemo.predict.stream.Stream`).

    Inside ``with normaliser:``, :func:`zscore_participant` and :func:`zscore_trials` add
    the trials they are given to running statistics (count, mean and sum of squared
    deviations, float64, merged by Chan et al.'s parallel update) and normalise them with
    the statistics of every trial seen so far: the cost of a call no longer grows with
    the trials seen. A transform calls them in the same order for every batch, so each
    call site keeps its own statistics by its position in that order (a call of another
    shape than the last time is an error). Features computed from normalised values keep
    the normalisation of their own time (an earlier trial is not recomputed). A block
    that raises leaves the statistics as they were before it.
    """

    def __init__(self):
        self.stats: list[tuple[float, np.ndarray, np.ndarray]] = []
        self._next, self._token = 0, None

    def __enter__(self) -> "OnlineNormaliser":
        if self._token is not None:
            raise RuntimeError("an OnlineNormaliser is not re-entrant")
        self._next, self._token = 0, _ONLINE.set(self)
        self._before = list(self.stats)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        _ONLINE.reset(self._token)
        self._token = None
        if exc_type is not None:
            self.stats = self._before

    def normalise(self, x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        n = float(np.prod([x.shape[a] for a in axes]))
        mean = x.mean(axis=axes, keepdims=True)
        m2 = ((x - mean) ** 2).sum(axis=axes, keepdims=True)
        i, self._next = self._next, self._next + 1
        if i == len(self.stats):
            self.stats.append((n, mean, m2))
        else:
            n0, mean0, m20 = self.stats[i]
            if mean0.shape != mean.shape:
                raise ValueError(f"online normalisation {i}: features of shape {x.shape} "
                                 f"after {mean0.shape}")
            total = n0 + n
            delta = mean - mean0
            self.stats[i] = (total, mean0 + delta * (n / total),
                             m20 + m2 + delta ** 2 * (n0 * n / total))
        total, mean, m2 = self.stats[i]
        sd = np.sqrt(m2 / total)
        return (x - mean) / np.where(sd > 0, sd, 1.0)


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


def euclidean_align(X: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Euclidean alignment of one participant's trials (He & Wu 2019), label-free.

    ``X_i -> R^{-1/2} X_i`` with ``R`` the mean over the participant's trials of
    ``X_i X_i^T / n_times``: afterwards the mean trial covariance is the identity, for
    every participant alike, so a model trained on some participants meets the others'
    data in the same frame. Computed from the participant's own trials only (so a held-out
    or test participant is aligned like a training one); the Euclidean twin of
    :func:`recentre`, applied to the waveform instead of to covariance matrices. ``R`` is
    regularised by ``eps`` times its mean eigenvalue (a rank-deficient montage stays
    invertible).

    X : (n_trials, n_chans, n_times). Returns the same shape, in X's floating dtype.
    """
    X = np.asarray(X)
    if X.ndim != 3 or len(X) == 0:
        raise ValueError(f"euclidean_align needs (n_trials, n_chans, n_times), got {X.shape}")
    x = X.astype(np.float64)
    R = np.einsum("nct,ndt->cd", x, x) / (x.shape[0] * x.shape[2])
    w, V = np.linalg.eigh((R + R.T) / 2)
    w = np.maximum(w, 0) + eps * max(float(w.mean()), np.finfo(float).tiny)
    W = (V / np.sqrt(w)) @ V.T
    out = np.einsum("cd,ndt->nct", W, x)
    return out.astype(X.dtype if np.issubdtype(X.dtype, np.floating) else np.float64,
                      copy=False)


#: Default bands of the band features (Hz): delta, theta, alpha, sigma, beta.
BANDS = ((0.5, 4.0), (4.0, 8.0), (8.0, 12.0), (12.0, 16.0), (16.0, 30.0))


def band_features(X: np.ndarray, sfreq: float, bands=BANDS, kind: str = "log_envelope",
                  order: int = 4) -> np.ndarray:
    """Band-limited envelope features of one participant, normalised on its own trials.

    For each band: zero-phase Butterworth band-pass (MNE), Hilbert envelope, then
    ``log`` of the envelope (``kind='log_envelope'``) or of its square (``'log_power'``);
    each (channel, band) is z-scored with the mean and standard deviation over this
    participant's trials and timepoints.

    Parameters
    ----------
    X : ndarray, shape (n_trials, n_chans, n_times)

    Returns
    -------
    ndarray, shape (n_trials, n_chans, n_times, n_bands), float32
    """
    if kind not in ("log_envelope", "log_power"):
        raise ValueError(f"kind must be 'log_envelope' or 'log_power', not {kind!r}")
    out = np.empty(X.shape + (len(bands),), dtype=np.float32)
    for b, band in enumerate(bands):
        env = np.abs(scipy.signal.hilbert(bandpass(X, sfreq, tuple(band), order), axis=-1))
        if kind == "log_power":
            env = env ** 2
        out[..., b] = zscore_participant(np.log(env + 1e-6 * env.mean()))
    return out


#: Default band of the evoked tokens (Hz): the slow, phase-locked part of the response.
EVOKED_BAND = (0.5, 8.0)


def evoked_features(X: np.ndarray, sfreq: float, band=EVOKED_BAND,
                    order: int = 4) -> np.ndarray:
    """The low-frequency waveform itself (phase kept), normalised on the participant.

    Band envelopes discard phase, so the cue-locked evoked response is invisible to
    them; this feature keeps it: zero-phase Butterworth band-pass (MNE), then each
    channel z-scored with the mean and standard deviation over this participant's trials
    and timepoints (label-free).

    Returns
    -------
    ndarray, shape (n_trials, n_chans, n_times, 1), float32
    """
    f = zscore_participant(bandpass(X, sfreq, tuple(band), order))
    return f.astype(np.float32)[..., None]


def token_features(X: np.ndarray, sfreq: float, bands=BANDS, kind: str = "log_envelope",
                   evoked=None, order: int = 4) -> np.ndarray:
    """Band envelopes (:func:`band_features`) and, with ``evoked`` (a band in Hz), the
    evoked waveform (:func:`evoked_features`) as one more feature after them.

    Returns
    -------
    ndarray, shape (n_trials, n_chans, n_times, len(bands) + (evoked is not None))
    """
    parts = [band_features(X, sfreq, bands, kind, order)] if len(bands) else []
    if evoked is not None:
        parts.append(evoked_features(X, sfreq, evoked, order))
    if not parts:
        raise ValueError("no features asked for: give bands, evoked or both")
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)


@dataclass(frozen=True)
class TokenSpec:
    """The settings of :func:`token_features`, normalised (bands and the evoked band as
    tuples of floats), and the function itself: ``spec(X, sfreq)`` is one participant's
    token features. A :class:`BandFeatureCache` stores ``spec(X, sfreq)`` of every
    participant and keys its folder on the spec; a predictor computes the same
    ``spec(X, sfreq)`` for a new participant (a family's spec comes from one place, e.g.
    :func:`sleepemo.mae.inputs.band_spec`)."""

    bands: tuple = BANDS
    kind: str = "log_envelope"
    evoked: tuple | None = None
    order: int = 4

    @classmethod
    def of(cls, bands=BANDS, kind: str = "log_envelope", evoked=None,
           order: int = 4) -> TokenSpec:
        return cls(tuple(tuple(float(f) for f in b) for b in bands), kind,
                   None if evoked is None else tuple(float(f) for f in evoked), int(order))

    def __call__(self, X: np.ndarray, sfreq: float) -> np.ndarray:
        """One participant's token features, (n_trials, n_chans, n_times, n_features)."""
        return token_features(X, sfreq, self.bands, self.kind, self.evoked, self.order)


def pool_time(x, stride: int):
    """Average ``stride`` consecutive timepoints of axis -2: (..., n_times, n_bands) ->
    (..., n_times // stride, n_bands). Works on numpy arrays and tensors."""
    if stride == 1:
        return x
    n_times = x.shape[-2]
    if n_times % stride:
        raise ValueError(f"stride {stride} does not divide the {n_times} timepoints")
    return x.reshape(*x.shape[:-2], n_times // stride, stride, x.shape[-1]).mean(-2)


def token_window(window: tuple[int, int], stride: int) -> tuple[int, int]:
    """A window in samples as the tokens that overlap it."""
    return window[0] // stride, -(-window[1] // stride)


class BandFeatureCache:
    """Token features of every participant (:func:`token_features`: band envelopes, and
    the evoked waveform when ``evoked`` is a band), computed once and kept as
    memory-mapped .npy.

    The cache folder's name is a hash of the data fingerprint, the feature settings and
    the source of this module: other data or settings (or a changed feature code) get a
    new folder and the stale ones under ``root`` are removed.

    Parameters
    ----------
    root : path
        Parent folder of the cache (e.g. ``<out>/cache/band_features``).
    data_fingerprint : str
        From ``folds.json``: identifies the data exactly.
    """

    def __init__(self, root, data_fingerprint: str, bands=BANDS, kind: str = "log_envelope",
                 order: int = 4, evoked=None):
        import hashlib
        import json
        from pathlib import Path

        #: what every participant's entry is (:meth:`build` stores ``spec(X, sfreq)``)
        self.spec = TokenSpec.of(bands, kind, evoked, order)
        self.bands, self.kind = self.spec.bands, self.spec.kind
        self.order, self.evoked = self.spec.order, self.spec.evoked
        settings = {"bands": self.bands, "kind": kind, "order": self.order,
                    "data": data_fingerprint,
                    "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}
        if self.evoked is not None:  # absent otherwise: earlier caches keep their key
            settings["evoked"] = self.evoked
        self.key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.root = Path(root)
        self.dir = self.root / self.key
        self.settings = settings

    @classmethod
    def for_run(cls, out, ds, folds, bands=BANDS, kind: str = "log_envelope",
                progress: bool = True, evoked=None, name: str = "band_features"
                ) -> "BandFeatureCache":
        """The run's cache (``<out>/cache/<name>``) of every training and test
        participant of ``folds``, built where missing. Caches of other settings under the
        same ``name`` are removed, so each user of a kind of features has its own name."""
        subjects = list(folds.train_subjects) + list(folds.test_subjects)
        cache = cls.of_run(out, folds.data_fingerprint, bands, kind, evoked, name)
        return cache.build({s: ds.subject(s).X for s in subjects}, ds.sfreq, progress)

    @classmethod
    def of_run(cls, out, data_fingerprint: str, bands=BANDS, kind: str = "log_envelope",
               evoked=None, name: str = "band_features") -> "BandFeatureCache":
        """The run's cache as :meth:`for_run` names it, not built (its :attr:`key`)."""
        from pathlib import Path

        return cls(Path(out) / "cache" / name, data_fingerprint, bands, kind, evoked=evoked)

    def path(self, subject: int):
        return self.dir / f"S{subject}.npy"

    def build(self, subjects: dict, sfreq: float, progress: bool = True) -> "BandFeatureCache":
        """Compute the missing participants' features (``subjects``: id -> trials array)."""
        import shutil


        if self.root.is_dir():
            for stale in self.root.iterdir():
                if stale.is_dir() and stale.name != self.key:
                    shutil.rmtree(stale)
        todo = [s for s in subjects if not self.path(s).is_file()]
        for s in bar(todo, desc=self.root.name.replace("_", " "), unit="participant", enabled=progress):
            write_npy(self.path(s), self.spec(subjects[s], sfreq))
        if todo or not (self.dir / "settings.json").is_file():  # (a built cache: read only)
            write_json(self.dir / "settings.json", self.settings)
        return self

    def load(self, subject: int) -> np.ndarray:
        """Memory-mapped features, shape (n_trials, n_chans, n_times, n_features)."""
        path = self.path(subject)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: band features not built; call build() first")
        return np.load(path, mmap_mode="r")
