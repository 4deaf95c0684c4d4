"""Baselines every stage is measured against (``docs/method.md``, "Baselines").

Each model has three steps, so that LOPO can be run without leakage:

- ``transform(X, sfreq)``: label-free features of ONE participant's trials (band-pass,
  per-participant normalisation, covariances); safe for held-out and test participants;
- ``fit(features, labels)``: lists with one entry per training participant of the fold;
- ``predict_proba(features)``: P(emotional) for one participant, shape (n_trials,) for a
  trial-level model (broadcast to every timepoint by the caller) or (n_trials, n_times).
"""
from __future__ import annotations

import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .. import features as F


class BaselineModel:
    """Common defaults; subclasses override what they need."""

    #: excluded from choosing the submission model (leakage alarms, references)
    diagnostic: bool = False

    def __init__(self, random_state: int = 0, **params):
        self.random_state = random_state
        self.params = params

    def transform(self, X: np.ndarray, sfreq: float) -> np.ndarray:
        return X

    def fit(self, feats: list[np.ndarray], labels: list[np.ndarray]) -> "BaselineModel":
        raise NotImplementedError

    def predict_proba(self, feats: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Constant(BaselineModel):
    """P = 0.5 everywhere: the score of knowing nothing (exactly 0.5)."""

    diagnostic = True

    def transform(self, X, sfreq):
        return np.zeros(len(X))

    def fit(self, feats, labels):
        return self

    def predict_proba(self, feats):
        return np.full(len(feats), 0.5)


class Starter(BaselineModel):
    """Organisers' starter: theta Hilbert power, per-participant z-score, LDA per timepoint.

    One LDA per timepoint on the 16 channels' theta power (MNE's ``SlidingEstimator``).
    """

    def __init__(self, random_state=0, band=(4.0, 8.0)):
        super().__init__(random_state)
        self.band = tuple(band)

    def transform(self, X, sfreq):
        power = F.hilbert_power(F.bandpass(X, sfreq, self.band))
        return F.zscore_trials(power).astype(np.float32)

    def fit(self, feats, labels):
        from mne.decoding import SlidingEstimator

        self.est_ = SlidingEstimator(LinearDiscriminantAnalysis(), n_jobs=1, verbose=False)
        self.est_.fit(np.concatenate(feats), np.concatenate(labels))
        return self

    def predict_proba(self, feats):
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

    def __init__(self, random_state=0, band=(4.0, 8.0), window=(70, 130), n_keep=75):
        super().__init__(random_state)
        self.band, self.window, self.n_keep = tuple(band), tuple(window), int(n_keep)

    def transform(self, X, sfreq):
        theta = F.zscore_trials(F.bandpass(X, sfreq, self.band))
        C = F.covariances(theta[:, :, slice(*self.window)], estimator="cov")
        return F.zscore_trials(F.upper_triangle(C))

    @staticmethod
    def _lda():
        return LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")

    def select(self, feats, labels) -> np.ndarray:
        """Indices of the ``n_keep`` most stable features (inner LOPO, this fold only)."""
        n_feat = feats[0].shape[1]
        if self.n_keep >= n_feat or len(feats) < 3:
            return np.arange(n_feat)
        coefs = []
        for i in range(len(feats)):
            Xi = np.concatenate(feats[:i] + feats[i + 1:])
            yi = np.concatenate(labels[:i] + labels[i + 1:])
            coefs.append(self._lda().fit(Xi, yi).coef_.ravel())
        coefs = np.array(coefs)
        stability = np.abs(coefs.mean(0)) / (coefs.std(0) + 1e-12)
        return np.sort(np.argsort(-stability, kind="stable")[: self.n_keep])

    def fit(self, feats, labels):
        self.keep_ = self.select(list(feats), list(labels))
        X = np.concatenate(feats)[:, self.keep_]
        self.lda_ = self._lda().fit(X, np.concatenate(labels))
        return self

    def predict_proba(self, feats):
        return self.lda_.predict_proba(feats[:, self.keep_])[:, 1]


class RiemannTS(BaselineModel):
    """Tangent space with per-participant re-centring + logistic regression.

    Theta band-pass, OAS covariance over samples ``window``, each participant's
    covariances whitened by their own Riemannian mean (label-free), Riemannian tangent
    space at the identity, standardised, L2 logistic regression; broadcast.
    """

    def __init__(self, random_state=0, band=(4.0, 8.0), window=(70, 130), C=0.1):
        super().__init__(random_state)
        self.band, self.window, self.C = tuple(band), tuple(window), float(C)

    def transform(self, X, sfreq):
        theta = F.bandpass(X, sfreq, self.band)[:, :, slice(*self.window)]
        return F.recentre(F.covariances(theta, estimator="oas"))

    def fit(self, feats, labels):
        from pyriemann.tangentspace import TangentSpace

        self.pipe_ = make_pipeline(
            TangentSpace(metric="riemann"), StandardScaler(),
            LogisticRegression(C=self.C, max_iter=2000, random_state=self.random_state))
        self.pipe_.fit(np.concatenate(feats), np.concatenate(labels))
        return self

    def predict_proba(self, feats):
        return self.pipe_.predict_proba(feats)[:, 1]


class Shuffled(BaselineModel):
    """Leakage alarm: another model trained on labels permuted within each participant.

    The held-out participant is scored with its true labels, so an honest pipeline
    scores about 0.5; anything clearly above means information leaks around the split.
    """

    diagnostic = True

    def __init__(self, random_state=0, base="second_place", **base_params):
        super().__init__(random_state)
        from . import make_model

        self.base = base
        self.model = make_model(base, random_state=random_state, **base_params)

    def transform(self, X, sfreq):
        return self.model.transform(X, sfreq)

    def fit(self, feats, labels):
        rng = np.random.default_rng(self.random_state)
        self.model.fit(feats, [rng.permutation(y) for y in labels])
        return self

    def predict_proba(self, feats):
        return self.model.predict_proba(feats)


class LinearProbe(BaselineModel):
    """Logistic regression on precomputed per-trial features (stage 02's probes).

    The features (e.g. frozen encoder embeddings or band features averaged over
    350-650 ms) are z-scored per participant before they reach this model; it
    standardises them over the training participants, fits an L2 logistic regression and
    gives one probability per trial (broadcast).
    """

    def __init__(self, random_state=0, C=0.01):
        super().__init__(random_state)
        self.C = float(C)

    def transform(self, X, sfreq):
        raise NotImplementedError("LinearProbe works on precomputed features only")

    def fit(self, feats, labels):
        self.pipe_ = make_pipeline(StandardScaler(), LogisticRegression(
            C=self.C, max_iter=2000, random_state=self.random_state))
        self.pipe_.fit(np.concatenate(feats), np.concatenate(labels))
        return self

    def predict_proba(self, feats):
        return self.pipe_.predict_proba(feats)[:, 1]
