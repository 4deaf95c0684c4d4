"""Stage 01: every model of ``baselines.models`` (the registry) under LOPO."""
from __future__ import annotations

from sleepemo.baselines import REGISTRY
from sleepemo.baselines.lopo import lopo_fingerprint, run_lopo
from sleepemo.pipeline.artefacts import Planned, results
from sleepemo.pipeline.executor import executor_session
from sleepemo.pipeline.evidence import results_table, to_markdown
from sleepemo.pipeline.stage import Stage, StageOutput


def fingerprints(stage: Stage, planned: dict | None = None) -> list[Planned]:
    """Each model's result as :func:`run` would write it now (:mod:`sleepemo.pipeline.plan`)."""
    cfg, data = stage.cfg, stage.folds().data_fingerprint
    b = cfg.baselines
    return [Planned(stage.spec.name, name, lopo_fingerprint(
                b.registry_key(name), b.model_params(name), cfg.seed, data),
                diagnostic=bool(getattr(REGISTRY.get(b.registry_key(name)), "diagnostic",
                                        False)))
            for name in b.models]


def run(stage: Stage) -> StageOutput:
    ds = stage.dataset()
    folds = stage.folds(ds)
    cfg = stage.cfg
    b = cfg.baselines
    with executor_session(cfg.executor):  # (one Ray session for every model)
        for name in b.models:
            run_lopo(name, ds, folds, stage.out, stage.spec.name, seed=cfg.seed,
                     model=b.registry_key(name), params=b.model_params(name),
                     progress=stage.progress, log=stage.log, workers=b.workers,
                     executor=cfg.executor)
    listed = [r for r in results(stage.out, stage.spec.name)
              if r.name in cfg.baselines.models]
    table, _, _ = results_table(listed)
    what = "\n".join(
        f"- `{name}`: {(REGISTRY[b.registry_key(name)].__doc__ or '').strip().splitlines()[0]}"
        + (f" ({b.model_params(name)})" if b.registry_key(name) != name else "")
        for name in b.models)
    evidence = f"Models run (registry `sleepemo.baselines`):\n\n{what}\n\n" + to_markdown(
        table[["overall", "window_ms", "diagnostic"]])
    return StageOutput({"lopo_window_auc": {r.label: float(table.loc[r.label, "overall"])
                                            for r in listed}},
                       table.drop(columns=["diagnostic", "stage"]).to_string(), evidence)
