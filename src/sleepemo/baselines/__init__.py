"""Stage 01's baselines: the models (:mod:`.models`, with their registry), the LOPO
fold runner (:mod:`.lopo`), the stage (:mod:`.stage`) and the predictor of LOPO results
(:mod:`.predict`)."""
from sleepemo.baselines.models import REGISTRY, make_model  # noqa: F401
