"""Stage 01: every model of ``baselines.models`` (the registry) under LOPO."""
from __future__ import annotations

from sleepemo.baselines import REGISTRY, make_model
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


#: how far from 0.5 a label-shuffled score may be by chance (the tests' tolerance); its
#: base model "learns" when it scores more than twice that above 0.5 with the true labels
ALARM_TOLERANCE = 0.03


def alarm_power(b, scores: dict[str, float], warn=lambda message: None) -> list[str]:
    """What each label-shuffled result of ``b`` (a BaselinesConfig) can show, given this
    run's scores (result -> overall): a leakage alarm rings only if its base model learns
    the labels as they are, so its base's score with the true labels goes beside it, and
    a warning (in bold, and passed to ``warn``) when the alarm rings. One Markdown line
    per alarm."""
    lines = []
    for name in b.models:
        if b.registry_key(name) != "shuffled" or name not in scores:
            continue
        alarm = make_model("shuffled", **b.model_params(name))
        base_params = dict(alarm.base_params or {})
        twins = [m for m in b.models if m in scores and b.registry_key(m) == alarm.base
                 and b.model_params(m) == base_params]
        shuffled, head = scores[name], f"`{name}` (`{alarm.base}` on shuffled labels)"
        if abs(shuffled - 0.5) > ALARM_TOLERANCE:
            message = (f"{head} scores {shuffled:.4f}, more than {ALARM_TOLERANCE} from 0.5: "
                       "labels may reach the held-out folds; check before trusting any "
                       "score of this run.")
            warn(message)
            lines.append(f"- **{message}**")
        elif not twins:
            lines.append(f"- {head}: {shuffled:.4f}; `{alarm.base}` is not run with the "
                         "true labels here, so whether this alarm could ring is unknown.")
        elif scores[twins[0]] - 0.5 > 2 * ALARM_TOLERANCE:
            lines.append(f"- {head}: {shuffled:.4f}, silent, while `{twins[0]}` learns the "
                         f"true labels ({scores[twins[0]]:.4f}): no sign of a leak.")
        else:
            learners = sorted((m for m in scores if b.registry_key(m) == m
                               and not getattr(REGISTRY[m], "diagnostic", False)),
                              key=scores.get)
            hint = (f"; wrap one that learns, e.g. `--set 'baselines.params={{{name}: "
                    f"{{base: {learners[-1]}}}}}'`" if learners
                    and scores[learners[-1]] - 0.5 > 2 * ALARM_TOLERANCE else "")
            lines.append(f"- {head}: {shuffled:.4f}, but `{twins[0]}` scores "
                         f"{scores[twins[0]]:.4f} with the true labels: an alarm whose model "
                         f"learns nothing cannot ring, so this one shows nothing here{hint}.")
    return lines


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
    alarms = alarm_power(b, {r.name: float(table.loc[r.label, "overall"]) for r in listed},
                         warn=lambda message: stage.log("WARNING " + message))
    evidence = f"Models run (registry `sleepemo.baselines`):\n\n{what}\n\n" + to_markdown(
        table[["overall", "window_ms", "diagnostic"]]) + (
        "\n\nLeakage alarms (a label-shuffled model must score about 0.5; it can ring only "
        "if its model learns the true labels):\n\n" + "\n".join(alarms) if alarms else "")
    return StageOutput({"lopo_window_auc": {r.label: float(table.loc[r.label, "overall"])
                                            for r in listed}},
                       table.drop(columns=["diagnostic", "stage"]).to_string(), evidence)
