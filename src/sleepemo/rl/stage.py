"""Stage 05: reinforcement-learning heads against their supervised twins, under LOPO.

Two heads (``rl.heads``), each beside a supervised twin on the same inputs and body. This
module holds the fold state, the fingerprints, the orchestration and the report; each
head's fold is trained in its own module.

**DQN** (after RLEEGNet; one fold: :func:`sleepemo.rl.heads.run_dqn_fold`). Per fold k:

1. every participant's label-free signals (:func:`sleepemo.rl.features.participant_signals`);
2. ``rl.n_inner_val`` of fold k's training participants are set aside (they fit the
   softmax temperatures and give the learning curves); the CSP and the scalings
   (:class:`sleepemo.rl.features.FoldFeatures`) are fitted on the others' labels, which
   come only from :meth:`Folds.labels_of` (the held-out participant is refused);
3. the DQN (:func:`sleepemo.rl.heads.make_dqn`) learns for ``rl.env_steps`` steps of the
   trial environment (:class:`sleepemo.rl.env.TrialEnv`) on those trials; the twin
   (:func:`sleepemo.rl.heads.train_twin`) gets the same batch size and as many gradient
   steps;
4. P(emotional) of the held-out and test participants from each head's two outputs,
   broadcast over the trial's timepoints.

**SAC** (after EEGDancer, :mod:`sleepemo.rl.sac`; one fold:
:func:`sleepemo.rl.sac.run_sac_fold`):

1. emotion prototypes, label-free (:mod:`sleepemo.rl.prototypes`, on the embeddings of
   :class:`sleepemo.rl.inputs.SacSource`): a VQ codebook trained by masked temporal
   modelling over fold k's stage-04 fused per-token embeddings (``rl.sac_inputs:
   fusion``, variant ``rl.sac_fusion``; ``prototypes_fold<k>.pt``), or, when stage 04
   has no such result or with ``rl.sac_inputs: mae``, once per run over the frozen
   stage-02 MAE's embeddings of all channels (``prototypes.pt``); tokens of
   ``rl.sac_stride`` samples; every trial becomes a sequence of code vectors;
2. per fold k, the same inner split; the smoothness weight lambda is chosen among
   ``rl.sac_lambdas`` by the twin's score on the inner participants (the competition
   metric); SAC learns ``rl.sac_env_steps`` steps of one-trial trajectories
   (:class:`sleepemo.rl.sac.TrajectoryEnv`), the GRU twin as many gradient steps;
3. per-token probabilities of the held-out and test participants, interpolated to every
   timepoint.

Results ``rl_dqn``, ``rl_dqn_twin``, ``rl_sac``, ``rl_sac_twin`` (``_shuffled`` with
``rl.shuffle_labels``) through the predictions contract; ``<out>/05_rl/``: per result
``fold<k>.npz`` (the DQN's and its twin's with the fold's softmax temperature) and the
assembled arrays; ``rl_fold<k>.pt`` and ``sac_fold<k>.pt`` (the networks' weights as
tensors and the curves: the resume points), ``rl_features_fold<k>.joblib`` (fold k's
fitted CSP and scalings: :mod:`sleepemo.rl.predict` applies the DQN and its twin to new
recordings with them and the two above), the prototypes (with their records, ``.json``),
``learning_curves.png``, ``metrics.json``, ``evidence.md``. Folds run in
``rl.workers`` processes (:mod:`sleepemo.pipeline.executor`).
"""
from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np

from sleepemo.config import RLConfig, fields_affecting
from sleepemo.fusion.inputs import output_name as fusion_name
from sleepemo.io import read_json
from sleepemo.pipeline.artefacts import (Planned, ResultWriter, code_hash, fingerprint,
                                         listing, planned_or, results, stored_fingerprint)
from sleepemo.pipeline.evidence import pyplot, results_table, save_figure, to_markdown
from sleepemo.pipeline import executor
from sleepemo.pipeline.executor import run_folds
from sleepemo.pipeline.stage import Stage, StageOutput, stage_dir
from sleepemo.progress import bar
from sleepemo.rl.features import dqn_signals
from sleepemo.rl.heads import fold_checkpoint, gradient_steps, run_dqn_fold
from sleepemo.rl.inputs import SacSource, source_key
from sleepemo.rl.prototypes import prototype_codes, prototypes_path
from sleepemo.rl.sac import run_sac_fold, sac_checkpoint, sac_gradient_steps


# ------------------------------------------------------------------ fingerprints
def output_name(cfg: RLConfig, head: str) -> str:
    return f"rl_{head}" + ("_shuffled" if cfg.shuffle_labels else "")


#: settings only the SAC head uses; the settings both heads use
SAC_ONLY = ("sac_", "proto_", "codebook")
SHARED = ("n_inner_val", "lr", "batch_size", "buffer_size", "shuffle_labels")


def head_fingerprint(cfg: RLConfig, head: str, seed: int, data: str, source: str | None
                     ) -> str:
    """What a head's results depend on: its own settings (changing the SAC's does not
    retrain the DQN), the seed, the data, the code and, for the SAC, its embeddings'
    source (:attr:`SacSource.key`)."""
    fields = fields_affecting(cfg, "weights")
    own = {k: v for k, v in fields.items()
           if (k.startswith(SAC_ONLY) == (head == "sac")) or k in SHARED}
    return fingerprint(stage="rl", head=head, seed=seed, rl=own, data=data,
                       source=source if head == "sac" else None, code=code_hash(__name__))


def prototypes_fp(stage: Stage, source: SacSource, data: str, k: int | None) -> str:
    """What the run's (``k`` None) or fold k's prototypes depend on."""
    cfg = stage.cfg.rl
    return fingerprint(stage="rl_prototypes", seed=stage.cfg.seed, source=source.key,
                       fold=k, rl=fields_affecting(cfg, "weights"), data=data,
                       code=code_hash(__name__))


def fingerprints(stage: Stage, planned: dict | None = None) -> list[Planned]:
    """Every head's and twin's result as :func:`run` would write it now
    (:mod:`sleepemo.pipeline.plan`), with the stage-02 encoder and stage-04 results ``planned``
    (or as on disk): the SAC reads the fused tokens when stage 04 has the result."""

    cfg, seed = stage.cfg.rl, stage.cfg.seed
    data = stage.folds().data_fingerprint
    source = None
    if "sac" in cfg.heads:
        fused = None
        if cfg.sac_inputs == "fusion":
            name = fusion_name(dataclasses.replace(stage.cfg.fusion, shuffle_labels=False),
                               cfg.sac_fusion)
            found = [r for r in listing(stage.out, planned, "fusion") if r.name == name]
            fused = found[0].fingerprint if found else None
        source = source_key(fused, planned_or(planned, "mae", "encoder", lambda: (
            stored_fingerprint(stage_dir(stage.out, "mae") / "run.json"))))
    return [Planned(stage.spec.name, output_name(cfg, n),
                    head_fingerprint(cfg, h, seed, data, source),
                    diagnostic=cfg.shuffle_labels)
            for h in cfg.heads for n in (h, f"{h}_twin")]


# ------------------------------------------------------------------ fold state
@dataclasses.dataclass
class FoldState(executor.FoldState):
    """What this stage's folds need besides the stage, the data and the folds."""

    fps: dict      # head -> fingerprint
    writers: dict  # result -> ResultWriter
    source: SacSource | None = None  # the SAC's embeddings

    def done(self, k: int, head: str | None = None) -> bool:
        return all(w.fold_done(k) for n, w in self.writers.items()
                   if head is None or n in (head, f"{head}_twin"))

    @functools.cached_property
    def signals(self) -> dict:
        """Every participant's label-free signals (DQN), computed where a fold first
        needs them (a resumed, finished run or a parent of fold workers never does)."""
        cfg, folds = self.stage.cfg.rl, self.folds
        subjects = list(folds.train_subjects) + list(folds.test_subjects)
        return {s: dqn_signals(self.ds.subject(s).X, self.ds.sfreq, cfg)
                for s in bar(subjects, desc="RL signals", enabled=self.stage.progress)}

    def prototypes_fp(self, k: int | None) -> str:
        return prototypes_fp(self.stage, self.source, self.folds.data_fingerprint, k)

    @functools.cached_property
    def run_codes(self) -> tuple[dict, dict]:
        """(code vectors per participant, record) of the run-level prototypes (MAE)."""
        stage = self.stage
        return prototype_codes(stage.cfg.rl, self.source.mae_embeddings(),
                               self.prototypes_fp(None), prototypes_path(stage.dir, None),
                               stage.cfg.seed, stage.progress)

    def sac_codes(self, k: int) -> dict:
        """Fold k's code vectors: from fold k's prototypes over fold k's fused tokens,
        or from the run's prototypes over the MAE's embeddings."""
        if self.source.fused is None:
            return self.run_codes[0]
        stage = self.stage
        return prototype_codes(stage.cfg.rl, self.source.fused_embeddings(k),
                               self.prototypes_fp(k), prototypes_path(stage.dir, k),
                               stage.cfg.seed * 1000 + k + 1, stage.progress)[0]


def fold_state(stage: Stage) -> FoldState:
    """The data, the SAC's embeddings' source and one result writer per head and twin."""
    cfg, seed = stage.cfg.rl, stage.cfg.seed
    ds = stage.dataset()
    folds = stage.folds(ds)
    source = SacSource(stage, ds, folds) if "sac" in cfg.heads else None
    fps = {h: head_fingerprint(cfg, h, seed, folds.data_fingerprint,
                               source.key if source else None) for h in cfg.heads}
    writers = {n: ResultWriter(stage.out, stage.spec.name, output_name(cfg, n), fps[h], folds)
               for h in cfg.heads for n in (h, f"{h}_twin")}
    return FoldState(stage, ds, folds, fps, writers, source)


# ------------------------------------------------------------------ orchestration
def steps_per_fold(cfg: RLConfig) -> dict:
    """Environment steps per fold of each head (the progress bar's unit)."""
    return {h: {"dqn": cfg.env_steps, "sac": cfg.sac_env_steps}[h] for h in cfg.heads}


def train_fold(state: FoldState, k: int, step) -> dict:
    """Fold k of each head not yet written: train (or load), predict, save; returns the
    seconds each head took."""
    stage, ds, folds = state.stage, state.ds, state.folds
    cfg, seed = stage.cfg.rl, stage.cfg.seed
    labels = folds.labels_of(ds, k, cfg.shuffle_labels, seed)
    seconds = {}
    for head in cfg.heads:
        if state.done(k, head):
            continue
        t0 = time.perf_counter()
        fit, data, ckpt = {
            "dqn": (run_dqn_fold, lambda: state.signals, fold_checkpoint),
            "sac": (run_sac_fold, lambda: state.sac_codes(k), sac_checkpoint)}[head]
        parts = fit(cfg, data(), labels, folds.held_out(k), folds.test_subjects, k, seed,
                    ds.n_times, ckpt(stage.dir, k), state.fps[head], step)
        for n, arrays in parts.items():
            state.writers[n].save_fold(k, **arrays)
        seconds[head] = time.perf_counter() - t0
    return seconds


def run(stage: Stage) -> StageOutput:
    """Everything stage 05 does (see the module docstring)."""
    cfg, seed = stage.cfg.rl, stage.cfg.seed
    state = fold_state(stage)
    ds, folds, writers = state.ds, state.folds, state.writers
    pending = [k for k in range(folds.n_folds) if not state.done(k)]
    steps = steps_per_fold(cfg)
    if "sac" in cfg.heads:
        if state.source.note():
            stage.log(state.source.note())
        if any(not state.done(k, "sac") for k in pending):
            state.source.prepare()  # the caches: built here, before any fold worker starts
            if state.source.fused is None:
                state.run_codes  # the run's prototypes: trained here, once
    progress = bar(total=folds.n_folds * sum(steps.values()),
                   desc="RL: LOPO folds x env steps", unit="step", enabled=stage.progress)
    progress.update(sum(steps[h] for k in range(folds.n_folds) for h in cfg.heads
                        if state.done(k, h)))
    done = run_folds(stage, pending, fold_state, train_fold, cfg.workers, progress, state)
    progress.close()
    seconds = {h: [s[h] for s in done.values() if h in s] for h in cfg.heads}
    finished = {n: w.finished() or w.finish(ds, seed=seed, diagnostic=cfg.shuffle_labels,
                                            config=dataclasses.asdict(cfg),
                                            meta={"registry": "rl", "head": n,
                                                  **sac_meta(state, n)})
                for n, w in writers.items()}
    record = prototype_record(state) if "sac" in cfg.heads else None
    return _report(stage, finished, writers, seconds, record)


def sac_meta(state: FoldState, name: str) -> dict:
    """What a SAC result's predictions rest on (sleepemo predict reads it): its
    embeddings' source (:attr:`SacSource.key`) and the run-level prototypes' fingerprint
    (with the MAE's embeddings)."""
    if not name.startswith("sac"):
        return {}
    source = state.source
    return {"sac_source": source.key,
            "prototypes_fingerprint": None if source.fused else state.prototypes_fp(None)}


def prototype_record(state: FoldState) -> dict:
    """The prototypes' records (written beside their checkpoints) of this run: one, or
    one per fold; codes in use and losses as ranges over folds."""

    ks = [None] if state.source.fused is None else range(state.folds.n_folds)
    recs = []
    for k in ks:
        path = prototypes_path(state.stage.dir, k).with_suffix(".json")
        rec = read_json(path) if path.is_file() else {}
        if rec.get("fingerprint") != state.prototypes_fp(k):
            if k is None:  # (a run from before the record was kept)
                rec = state.run_codes[1]
            else:
                raise FileNotFoundError(f"{path}: fold {k}'s prototypes' record is missing "
                                        "or of another run; run src/05_rl.py again")
        recs.append(rec)

    return {"source": state.source.name, "per_fold": state.source.fused is not None,
            "codebook": recs[0]["codebook"], "n_decisions": recs[0]["n_decisions"],
            **{key: [r[key] for r in recs] for key in ("codes_used", "loss_first",
                                                       "loss_last")}}


# ------------------------------------------------------------------ the report
WHAT = {"dqn": "DQN after RLEEGNet (trial features, CSP fitted in the fold) and its "
               "CNN-LSTM twin",
        "sac": "SAC after EEGDancer (per-token decisions over VQ prototypes) and its "
               "GRU twin"}


def _span(values: list, fmt: str) -> str:
    """``lo-hi`` of a list of numbers (one number when they agree)."""
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo}-{hi}"


def _learning_curves(cfg: RLConfig, parts: dict, labels: dict, path) -> None:
    """Left: each result's curve on the inner participants (mean of folds); right: the
    episode rewards per step of every fold."""
    offset = {"dqn_twin": cfg.learning_starts, "sac_twin": cfg.sac_learning_starts}
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for n, p in parts.items():
        curves = [v["curve"] for v in p.values() if len(v["curve"])]
        if curves and len({len(c) for c in curves}) == 1:
            c = np.mean(curves, axis=0)
            axes[0].plot(c[:, 0] + offset.get(n, 0), c[:, 1], label=labels[n],
                         ls="--" if n.endswith("_twin") else "-")
        rewards = [v["episode_reward"] for v in p.values()
                   if "episode_reward" in v and len(v["episode_reward"])]
        if rewards:
            r = np.concatenate(rewards)
            order = np.argsort(r[:, 0], kind="stable")
            per_step = r[order, 1] / (cfg.episode_len if n.startswith("dqn") else 1)
            axes[1].plot(r[order, 0], per_step, ".", ms=2, alpha=0.4, label=labels[n])
    axes[0].axhline(0.5, color="grey", lw=0.8)
    axes[0].set(xlabel="environment steps (twins: gradient steps + learning_starts)",
                ylabel="inner participants' score (mean of folds)", title="Learning curves")
    axes[1].set(xlabel="environment steps", ylabel="episode reward per step",
                title="Episode rewards (all folds)")
    for ax in axes:
        ax.legend(fontsize=8)
    save_figure(fig, path)


def _report(stage: Stage, finished: dict, writers: dict, seconds: dict,
            record: dict | None) -> StageOutput:

    cfg = stage.cfg.rl
    table, scores, _ = results_table(results(stage.out))
    labels = {n: r.label for n, r in finished.items()}
    parts = {n: w.load_parts() for n, w in writers.items()}
    _learning_curves(cfg, parts, labels, stage.dir / "learning_curves.png")
    steps = {"dqn": (cfg.env_steps, gradient_steps(cfg)),
             "sac": (cfg.sac_env_steps, sac_gradient_steps(cfg))}
    metrics = {"lopo_window_auc": {labels[n]: float(scores[labels[n]].score) for n in labels},
               "env_steps": {h: steps[h][0] for h in cfg.heads},
               "gradient_steps": {h: steps[h][1] for h in cfg.heads},
               "batch_size": cfg.batch_size, "labels_shuffled": cfg.shuffle_labels,
               "median_fold_seconds": {h: float(np.median(s)) for h, s in seconds.items()
                                       if s},
               "prototypes": record}
    lines = [f"- {WHAT[h]}: {steps[h][0]} environment steps and {steps[h][1]} gradient "
             f"steps of {cfg.batch_size} decisions per fold; the twin as many gradient "
             "steps." for h in cfg.heads]
    if cfg.shuffle_labels:
        lines.append("- **Labels shuffled** (leakage alarm).")
    if "sac" in cfg.heads:
        metrics["sac_lambda_by_fold"] = lam = {f"fold{k}": float(v["lam"])
                                               for k, v in sorted(parts["sac"].items())}
    if record:
        where = ("per fold, over fold k's stage-04 `" + record["source"] + "` fused tokens"
                 if record["per_fold"] else "once per run, over the MAE's embeddings")
        lines.append(f"- Prototypes ({where}): {_span(record['codes_used'], 'd')} of "
                     f"{record['codebook']} codes in use, {record['n_decisions']} decisions "
                     f"per trial; masked-modelling loss {_span(record['loss_first'], '.3f')}"
                     f" -> {_span(record['loss_last'], '.3f')}. Smoothness lambda chosen per"
                     " fold (by the twin on the inner participants): "
                     + ", ".join(f"{v:g}" for v in lam.values()) + ".")
    lines += ["", to_markdown(table.loc[list(labels.values()),
                                        ["stage", "overall", "window_ms", "diagnostic"]]), ""]
    metrics["ensemble_candidates"] = {}  # head -> beats its twin (stage 06 reads it)
    for head in cfg.heads:
        a, b = labels.get(head), labels.get(f"{head}_twin")
        if a and b and not cfg.shuffle_labels:
            beats = metrics["ensemble_candidates"][head] = bool(
                table.loc[a, "overall"] > table.loc[b, "overall"])
            lines.append(f"- `{a}` {'beats' if beats else 'does **not** beat'} its twin "
                         f"`{b}` ({table.loc[a, 'overall']:.4f} vs "
                         f"{table.loc[b, 'overall']:.4f}): "
                         + ("a candidate for the ensemble." if beats
                            else "left out of the ensemble's candidates."))
    if metrics["median_fold_seconds"]:
        lines.append("\nMedian seconds per fold: " + ", ".join(
            f"{h} {v:.1f}" for h, v in metrics["median_fold_seconds"].items()) + ".")
    lines += ["", "![learning curves](learning_curves.png)"]
    summary = "RL LOPO window AUC: " + ", ".join(
        f"{n} {s:.4f}" for n, s in metrics["lopo_window_auc"].items())
    return StageOutput(metrics, summary, "\n".join(lines))
