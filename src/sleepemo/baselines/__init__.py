"""Stage 01's baselines: the models (:mod:`.models`, with their registry), the LOPO
fold runner (:mod:`.lopo`) and the stage (:mod:`.stage`)."""
from sleepemo.baselines.models import REGISTRY, make_model  # noqa: F401
