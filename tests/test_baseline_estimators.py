"""Every registered stage-01 model is a scikit-learn estimator (issue 21.2): parameters
stored by ``__init__`` under their own names (get_params, set_params, clone), fitted state
in attributes ending with ``_``, ``fit`` returning the model, NotFittedError before a fit,
the same output for the same ``random_state``; and the per-participant interface
(``transform``, ``fit`` on lists, ``predict_proba``) with its shapes."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError

from sleepemo import N_TIMES, SFREQ
from sleepemo.baselines import REGISTRY, make_model
from sleepemo.baselines.models import BaselineModel

NAMES = sorted(REGISTRY)
#: models with one probability per timepoint; the others give one per trial (broadcast)
PER_TIMEPOINT = {"starter", "erp_lda", "eegnet", "shallow_fbcsp", "conformer"}


def inputs(model, n_participants=4, n_trials=12, seed=0):
    """Tiny random participants: the first ``n_participants - 1`` to fit, the last to
    predict. ``linear_probe`` takes precomputed per-trial features, the others trials."""
    rng = np.random.default_rng(seed)
    y = [np.repeat([1, 0], n_trials // 2).astype(np.int8) for _ in range(n_participants)]
    if isinstance(model, REGISTRY["linear_probe"]):
        feats = [rng.standard_normal((n_trials, 8)) for _ in range(n_participants)]
    else:
        feats = [model.transform(rng.standard_normal((n_trials, 16, N_TIMES))
                                 .astype(np.float32), SFREQ) for _ in range(n_participants)]
    return feats[:-1], y[:-1], feats[-1]


def fitted_attributes(model) -> set[str]:
    return set(vars(model)) - set(model.get_params(deep=False))


@pytest.mark.parametrize("name", NAMES)
def test_init_only_stores_its_parameters(name):
    model = make_model(name, random_state=3)
    assert isinstance(model, BaseEstimator) and isinstance(model, BaselineModel)
    params = model.get_params()
    assert params["random_state"] == 3
    assert set(vars(model)) == set(params), "__init__ stores its parameters and nothing else"
    assert fitted_attributes(model) == set()
    # get_params round-trips through the constructor and set_params
    assert type(model)(**params).get_params() == params
    assert model.set_params(**params) is model and model.get_params() == params
    assert model.set_params(random_state=5).random_state == 5


@pytest.mark.parametrize("name", NAMES)
def test_unfitted_model_refuses_to_predict(name):
    model = make_model(name)
    _, _, held = inputs(model)
    with pytest.raises(NotFittedError):
        model.predict_proba(held)


@pytest.mark.parametrize("name", NAMES)
def test_fit_returns_self_keeps_parameters_and_learns_into_underscored_attributes(name):
    model = make_model(name, random_state=1)
    params = model.get_params()
    feats, labels, held = inputs(model)
    assert model.fit(feats, labels) is model
    assert model.get_params() == params, "fit must not change the parameters"
    learnt = fitted_attributes(model)
    assert learnt and all(a.endswith("_") and not a.startswith("_") for a in learnt), learnt
    p = model.predict_proba(held)
    n = len(held)
    assert p.shape == ((n, N_TIMES) if name in PER_TIMEPOINT else (n,))
    assert np.all(np.isfinite(p)) and p.min() >= 0 and p.max() <= 1


@pytest.mark.parametrize("name", NAMES)
def test_clone_gives_an_equal_unfitted_model_that_refits_to_the_same_output(name):
    model = make_model(name, random_state=7)
    feats, labels, held = inputs(model)
    first = model.fit(feats, labels).predict_proba(held)
    twin = clone(model)
    assert type(twin) is type(model) and twin.get_params() == model.get_params()
    assert fitted_attributes(twin) == set()
    with pytest.raises(NotFittedError):
        twin.predict_proba(held)
    # seed reproducibility: same random_state, same data -> the same output, bit for bit
    np.testing.assert_array_equal(twin.fit(feats, labels).predict_proba(held), first)
    np.testing.assert_array_equal(
        make_model(name, random_state=7).fit(feats, labels).predict_proba(held), first)
    # a fold model is kept as a pickle (baselines.lopo): it predicts the same when loaded
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict_proba(held),
                                  first)


@pytest.mark.parametrize("name", NAMES)
def test_online_and_diagnostic_are_kept(name):
    model = make_model(name)
    assert isinstance(type(model).diagnostic, bool)
    assert isinstance(model.online, bool)
    assert "online" not in model.get_params() and "diagnostic" not in model.get_params()


def test_shuffled_wraps_its_base_through_parameters():
    model = make_model("shuffled", random_state=2, base="xdawn_ts",
                       base_params={"recentre": False})
    assert model.get_params() == {"random_state": 2, "base": "xdawn_ts",
                                  "base_params": {"recentre": False}}
    assert model.online and not make_model("shuffled", base="xdawn_ts").online
    assert make_model("shuffled").online == make_model("second_place").online
    feats, labels, held = inputs(model)
    assert fitted_attributes(model.fit(feats, labels)) == {"model_"}
    assert isinstance(model.model_, REGISTRY["xdawn_ts"])
    assert model.model_.get_params() == {**make_model("xdawn_ts").get_params(),
                                         "recentre": False, "random_state": 2}
    # the transform is the base model's, label-free, fitted or not
    X = np.random.default_rng(4).standard_normal((6, 16, N_TIMES)).astype(np.float32)
    np.testing.assert_array_equal(model.transform(X, SFREQ),
                                  make_model("xdawn_ts", recentre=False).transform(X, SFREQ))
    # random_state seeds the permutations
    again = clone(model).set_params(random_state=3).fit(feats, labels)
    assert not np.array_equal(again.predict_proba(held), model.predict_proba(held))


def test_parameters_are_checked_where_they_are_used():
    """sklearn's rule: __init__ checks nothing; an invalid value fails in fit."""
    model = make_model("erp_lda", width=4)
    feats, labels, _ = inputs(model)
    with pytest.raises(ValueError, match="width must be a positive odd number"):
        model.fit(feats, labels)
    with pytest.raises(TypeError):  # an unknown parameter is not swallowed
        make_model("constant", C=1.0)
