"""Loading a finished run's result as a :class:`~sleepemo.predict.base.Predictor`
(:func:`load_predictor`): a look-up of the result's stage in the stage table
(:data:`sleepemo.pipeline.stage.STAGES`), whose ``predictor`` module rebuilds it
(``load(run, result)``: the baselines' and the probes' fold averages, the experts, the
fusion, the RL heads, the ensemble)."""
from __future__ import annotations

from pathlib import Path

from sleepemo.io import read_json
from sleepemo.pipeline.artefacts import find
from sleepemo.pipeline.stage import STAGES, spec
from sleepemo.predict.base import PredictError, Predictor, Run


def submitted_model(out: str | Path) -> str:
    """The model a run's stage 07 submitted."""
    path = Path(out) / "07_submission" / "metrics.json"
    if not path.is_file():
        raise PredictError(f"{path} is missing: the run has no submission yet (run stage 07, "
                           "or name a model with --model)")
    return read_json(path)["model"]


def load_predictor(out: str | Path, name: str | None = None, run: Run | None = None
                   ) -> Predictor:
    """Result ``name`` of the run in ``out`` (default: the submitted model), rebuilt by its
    stage's predictor loader."""
    run = run or Run.open(out)
    name = name or submitted_model(run.out)
    try:
        result = find(run.out, name)
    except KeyError as exc:
        raise PredictError(str(exc.args[0])) from None
    try:
        loader = spec(result.stage).predictor_module()
    except KeyError:
        loader = None
    if loader is None:
        raise PredictError(f"{result.label} (stage {result.stage}): predicting new "
                           "recordings is not supported for this stage's models yet; "
                           f"supported: {supported()}")
    try:
        return loader.load(run, result)
    except FileNotFoundError as exc:
        raise PredictError(str(exc)) from None


def supported() -> str:
    """The stages whose results can predict new recordings (those with a predictor)."""
    return ", ".join(f"stage {s.number} {s.name}" for s in STAGES if s.predictor)
