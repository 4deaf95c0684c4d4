"""Baselines every stage is measured against (``docs/method.md``, "Baselines").

Each model has three steps, so that LOPO can be run without leakage:

- ``transform(X, sfreq)``: label-free features of ONE participant's trials (band-pass,
  per-participant normalisation, covariances); safe for held-out and test participants;
- ``fit(features, labels)``: lists with one entry per training participant of the fold;
- ``predict_proba(features)``: P(emotional) for one participant, shape (n_trials,) for a
  trial-level model (broadcast to every timepoint by the caller) or (n_trials, n_times).

Every model is a scikit-learn estimator (``BaseEstimator``), as pyRiemann's and MNE's
decoding classes are: ``__init__`` only stores its parameters, under their own names (so
``get_params``, ``set_params`` and ``sklearn.base.clone`` work; conversions and checks
happen where the parameters are used), ``fit`` returns the model, what it learns is kept in
attributes ending with ``_``, and ``predict_proba`` of an unfitted model raises sklearn's
``NotFittedError``. ``transform`` needs no fit: it is the label-free per-participant step,
applied with an unfitted model to held-out, test and new participants.
"""
from __future__ import annotations

import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from sleepemo import features as F
from sleepemo.baselines.base import BaselineModel, lowpass_decimate  # noqa: F401 (public here too)
from sleepemo.baselines.deep import Conformer, EEGNet, ShallowFBCSP


class Constant(BaselineModel):
    """P = 0.5 everywhere: the score of knowing nothing (exactly 0.5)."""

    diagnostic = True
    online = True

    def transform(self, X, sfreq):
        return np.zeros(len(X))

    def fit(self, feats, labels):
        self.n_participants_ = len(feats)  # nothing to learn; fitted all the same
        return self

    def predict_proba(self, feats):
        check_is_fitted(self)
        return np.full(len(feats), 0.5)


class Starter(BaselineModel):
    """Organisers' starter: theta Hilbert power, per-participant z-score, LDA per timepoint.

    One LDA per timepoint on the 16 channels' theta power (MNE's ``SlidingEstimator``).
    """

    online = True

    def __init__(self, random_state=0, band=(4.0, 8.0)):
        super().__init__(random_state)
        self.band = band

    def transform(self, X, sfreq):
        power = F.hilbert_power(F.bandpass(X, sfreq, tuple(self.band)))
        return F.zscore_trials(power).astype(np.float32)

    def fit(self, feats, labels):
        from mne.decoding import SlidingEstimator

        self.est_ = SlidingEstimator(LinearDiscriminantAnalysis(), n_jobs=1, verbose=False)
        self.est_.fit(np.concatenate(feats), np.concatenate(labels))
        return self

    def predict_proba(self, feats):
        check_is_fitted(self)
        return self.est_.predict_proba(feats)[..., 1]


class SecondPlace(BaselineModel):
    """Public 2nd-place recipe: theta covariance in 350-650 ms, stable features, sLDA.

    Theta band-pass (4th-order Butterworth, zero phase); per-participant z-score of each
    channel x timepoint across trials; samples ``window`` (70:130); 16 x 16 covariance
    upper triangle (136 features); per-participant feature z-score; keep the ``n_keep``
    features whose LDA coefficients are most stable across an inner leave-one-
    participant-out over the fold's own training participants (|mean| / std of the
    coefficients); shrinkage LDA; one probability per trial (broadcast).
    """

    online = True

    def __init__(self, random_state=0, band=(4.0, 8.0), window=(70, 130), n_keep=75):
        super().__init__(random_state)
        self.band, self.window, self.n_keep = band, window, n_keep

    def transform(self, X, sfreq):
        theta = F.zscore_trials(F.bandpass(X, sfreq, tuple(self.band)))
        C = F.covariances(theta[:, :, slice(*self.window)], estimator="cov")
        return F.zscore_trials(F.upper_triangle(C))

    @staticmethod
    def _lda():
        return LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")

    def select(self, feats, labels) -> np.ndarray:
        """Indices of the ``n_keep`` most stable features (inner LOPO, this fold only)."""
        n_feat, n_keep = feats[0].shape[1], int(self.n_keep)
        if n_keep >= n_feat or len(feats) < 3:
            return np.arange(n_feat)
        coefs = []
        for i in range(len(feats)):
            Xi = np.concatenate(feats[:i] + feats[i + 1:])
            yi = np.concatenate(labels[:i] + labels[i + 1:])
            coefs.append(self._lda().fit(Xi, yi).coef_.ravel())
        coefs = np.array(coefs)
        stability = np.abs(coefs.mean(0)) / (coefs.std(0) + 1e-12)
        return np.sort(np.argsort(-stability, kind="stable")[:n_keep])

    def fit(self, feats, labels):
        self.keep_ = self.select(list(feats), list(labels))
        X = np.concatenate(feats)[:, self.keep_]
        self.lda_ = self._lda().fit(X, np.concatenate(labels))
        return self

    def predict_proba(self, feats):
        check_is_fitted(self)
        return self.lda_.predict_proba(feats[:, self.keep_])[:, 1]


class RiemannTS(BaselineModel):
    """Tangent space with per-participant re-centring + logistic regression.

    Theta band-pass, OAS covariance over samples ``window``, each participant aligned
    (label-free, from its own trials; ``align``): ``recentre`` whitens its covariances by
    their Riemannian mean, ``euclidean`` its windowed signal by its mean trial covariance
    (:func:`sleepemo.features.euclidean_align`), ``none`` leaves them; Riemannian tangent
    space at the identity, standardised, L2 logistic regression; broadcast.
    """

    ALIGN = ("recentre", "euclidean", "none")

    def __init__(self, random_state=0, band=(4.0, 8.0), window=(70, 130), C=0.1,
                 align="recentre"):
        super().__init__(random_state)
        self.band, self.window, self.C, self.align = band, window, C, align

    def transform(self, X, sfreq):
        if self.align not in self.ALIGN:
            raise ValueError(f"align must be one of {self.ALIGN}, not {self.align!r}")
        theta = F.bandpass(X, sfreq, tuple(self.band))[:, :, slice(*self.window)]
        if self.align == "euclidean":
            theta = F.euclidean_align(theta)
        C = F.covariances(theta, estimator="oas")
        return F.recentre(C) if self.align == "recentre" else C

    def fit(self, feats, labels):
        from pyriemann.tangentspace import TangentSpace

        self.pipe_ = make_pipeline(
            TangentSpace(metric="riemann"), StandardScaler(),
            LogisticRegression(C=float(self.C), max_iter=2000, random_state=self.random_state))
        self.pipe_.fit(np.concatenate(feats), np.concatenate(labels))
        return self

    def predict_proba(self, feats):
        check_is_fitted(self)
        return self.pipe_.predict_proba(feats)[:, 1]


def one_blas_thread(method):
    """Run ``method`` with a single BLAS thread: its many small matrix operations gain
    nothing from more, and oversubscribed BLAS threads are very slow when another process
    shares the cores (one fold's fit on 2 busy cores, full-size synthetic data: erp_lda
    2 s instead of 33-44 s, xdawn_ts 6.5 s instead of 13.7 s)."""
    import functools

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return method(*args, **kwargs)

    return wrapper


class XdawnTS(BaselineModel):
    """Evoked response: Xdawn covariances of the 0.5-15 Hz waveform, tangent space, LR.

    Per participant (label-free): band-pass ``band``, decimate by ``decim`` (50 Hz), z-score
    each channel over its trials and timepoints. Fit: pyriemann ``XdawnCovariances``
    (``nfilter`` filters per class, class prototypes from the fold's training trials,
    OAS covariances), optionally each participant's matrices whitened by their own
    Riemannian mean (``recentre``, label-free, also for the predicted participant),
    tangent space, standardised, L2 logistic regression; broadcast. ``recentre=True`` was
    chosen by LOPO on recorded EEG (eegmat: 0.634 against 0.630 without, a near tie).
    ``align="euclidean"`` whitens each participant's waveform by its mean trial covariance
    first (:func:`sleepemo.features.euclidean_align`; label-free, its own trials).
    """

    ALIGN = ("none", "euclidean")

    def __init__(self, random_state=0, band=(0.5, 15.0), decim=4, nfilter=4,
                 xdawn_estimator="lwf", recentre=True, C=0.1, align="none"):
        super().__init__(random_state)
        self.band, self.decim, self.nfilter = band, decim, nfilter
        self.xdawn_estimator, self.recentre = xdawn_estimator, recentre
        self.C, self.align = C, align

    def transform(self, X, sfreq):
        if self.align not in self.ALIGN:
            raise ValueError(f"align must be one of {self.ALIGN}, not {self.align!r}")
        wave = F.zscore_participant(lowpass_decimate(X, sfreq, tuple(self.band),
                                                     int(self.decim)))
        if self.align == "euclidean":
            wave = F.euclidean_align(wave)
        return wave.astype(np.float32)

    @property
    def online(self) -> bool:
        # the re-centring and the alignment need all of the participant's trials
        return not self.recentre and self.align == "none"

    def _covariances(self, feats):
        C = self.xdawn_.transform(np.asarray(feats, dtype=np.float64))
        return F.recentre(C) if self.recentre else C

    @one_blas_thread
    def fit(self, feats, labels):
        from pyriemann.estimation import XdawnCovariances
        from pyriemann.tangentspace import TangentSpace

        self.xdawn_ = XdawnCovariances(nfilter=int(self.nfilter), estimator="oas",
                                       xdawn_estimator=self.xdawn_estimator)
        self.xdawn_.fit(np.concatenate(feats).astype(np.float64), np.concatenate(labels))
        self.pipe_ = make_pipeline(
            TangentSpace(metric="riemann"), StandardScaler(),
            LogisticRegression(C=float(self.C), max_iter=2000, random_state=self.random_state))
        self.pipe_.fit(np.concatenate([self._covariances(f) for f in feats]),
                       np.concatenate(labels))
        return self

    @one_blas_thread
    def predict_proba(self, feats):
        check_is_fitted(self)
        return self.pipe_.predict_proba(self._covariances(feats))[:, 1]


class ErpLDA(BaselineModel):
    """Evoked response: shrinkage LDA per timepoint on the 0.5-15 Hz waveform (sliding).

    Per participant (label-free): band-pass ``band``, decimate by ``decim`` (50 Hz),
    z-score each channel x timepoint across its trials. One shrinkage LDA per decimated
    timepoint on all channels in a centred window of ``width`` decimated samples (edge
    padded; 5 = 100 ms), MNE's ``SlidingEstimator``; the probability curve is linearly
    interpolated back to ``decim`` x the decimated timepoints (a per-timepoint model), so
    the trial length must be a multiple of ``decim``. float32 windows: about 110 MB for
    7,000 trials.
    """

    online = True

    def __init__(self, random_state=0, band=(0.5, 15.0), decim=4, width=5):
        super().__init__(random_state)
        self.band, self.decim, self.width = band, decim, width

    def transform(self, X, sfreq):
        wave = lowpass_decimate(X, sfreq, tuple(self.band), int(self.decim))
        return F.zscore_trials(wave).astype(np.float32)

    def windows(self, feats: np.ndarray) -> np.ndarray:
        """(n, n_chans, n_dec) -> (n, n_chans * width, n_dec): every channel's samples in
        the centred window around each timepoint (edges repeated), float32."""
        width = int(self.width)
        if width < 1 or width % 2 == 0:
            raise ValueError(f"width must be a positive odd number, not {self.width}")
        h = width // 2
        feats = np.asarray(feats, dtype=np.float32)
        n_dec = feats.shape[-1]
        padded = np.pad(feats, ((0, 0), (0, 0), (h, h)), mode="edge")
        win = np.stack([padded[..., o:o + n_dec] for o in range(width)], axis=2)
        return win.reshape(len(feats), -1, n_dec)

    @one_blas_thread
    def fit(self, feats, labels):
        from mne.decoding import SlidingEstimator

        lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
        self.est_ = SlidingEstimator(lda, n_jobs=1, verbose=False)
        self.est_.fit(self.windows(np.concatenate(feats)), np.concatenate(labels))
        return self

    @one_blas_thread
    def predict_proba(self, feats):
        check_is_fitted(self)
        p = self.est_.predict_proba(self.windows(feats))[..., 1]  # (n, n_dec)
        n_dec, decim = p.shape[1], int(self.decim)
        t = np.arange(n_dec * decim) / decim  # in decimated samples
        i0 = np.minimum(np.floor(t).astype(int), n_dec - 1)
        i1 = np.minimum(i0 + 1, n_dec - 1)
        frac = (t - i0).astype(np.float32)
        return p[:, i0] * (1 - frac) + p[:, i1] * frac


class Shuffled(BaselineModel):
    """Leakage alarm: another model trained on labels permuted within each participant.

    The held-out participant is scored with its true labels, so an honest pipeline
    scores about 0.5; anything clearly above means information leaks around the split.
    ``base`` is the model's registry name, ``base_params`` its parameters (a dict); the
    base model is made in ``fit`` (``model_``) with this model's ``random_state``, which
    also seeds the permutations.
    """

    diagnostic = True

    def __init__(self, random_state=0, base="second_place", base_params=None):
        super().__init__(random_state)
        self.base, self.base_params = base, base_params

    def _base_model(self) -> BaselineModel:
        """A fresh, unfitted ``base`` model (registry name) with ``base_params``."""
        return make_model(self.base, random_state=self.random_state,
                          **dict(self.base_params or {}))

    @property
    def online(self) -> bool:
        return bool(self._base_model().online)

    def transform(self, X, sfreq):
        return self._base_model().transform(X, sfreq)  # label-free: needs no fit

    def fit(self, feats, labels):
        rng = np.random.default_rng(self.random_state)
        self.model_ = self._base_model()
        self.model_.fit(feats, [rng.permutation(y) for y in labels])
        return self

    def predict_proba(self, feats):
        check_is_fitted(self)
        return self.model_.predict_proba(feats)


class LinearProbe(BaselineModel):
    """Logistic regression on precomputed per-trial features (stage 02's probes).

    The features (e.g. frozen encoder embeddings or band features averaged over
    350-650 ms) are z-scored per participant before they reach this model; it
    standardises them over the training participants, fits an L2 logistic regression and
    gives one probability per trial (broadcast).
    """

    def __init__(self, random_state=0, C=0.01):
        super().__init__(random_state)
        self.C = C

    def transform(self, X, sfreq):
        raise NotImplementedError("LinearProbe works on precomputed features only")

    def fit(self, feats, labels):
        self.pipe_ = make_pipeline(StandardScaler(), LogisticRegression(
            C=float(self.C), max_iter=2000, random_state=self.random_state))
        self.pipe_.fit(np.concatenate(feats), np.concatenate(labels))
        return self

    def predict_proba(self, feats):
        check_is_fitted(self)
        return self.pipe_.predict_proba(feats)[:, 1]


#: Model registry: name -> class. Stages look models up here, never with if/elif.
REGISTRY = {
    "constant": Constant,
    "shuffled": Shuffled,
    "starter": Starter,
    "second_place": SecondPlace,
    "riemann": RiemannTS,
    "xdawn_ts": XdawnTS,
    "erp_lda": ErpLDA,
    "linear_probe": LinearProbe,
    "eegnet": EEGNet,
    "shallow_fbcsp": ShallowFBCSP,
    "conformer": Conformer,
}


def make_model(name: str, random_state: int = 0, **params):
    """Instantiate a registered model."""
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(REGISTRY)}") from None
    return cls(random_state=random_state, **params)
