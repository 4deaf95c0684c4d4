"""Model registry: name -> class. Stages look models up here, never with if/elif."""
from __future__ import annotations

from sleepemo.baselines.models import (Constant, ErpLDA, LinearProbe, RiemannTS, SecondPlace, Shuffled,
                        Starter, XdawnTS)

REGISTRY = {
    "constant": Constant,
    "shuffled": Shuffled,
    "starter": Starter,
    "second_place": SecondPlace,
    "riemann": RiemannTS,
    "xdawn_ts": XdawnTS,
    "erp_lda": ErpLDA,
    "linear_probe": LinearProbe,
}


def make_model(name: str, random_state: int = 0, **params):
    """Instantiate a registered model."""
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(REGISTRY)}") from None
    return cls(random_state=random_state, **params)
