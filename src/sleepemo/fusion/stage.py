"""Stage 04: spatiotemporal fusion of the channels' token sequences, under LOPO.

The network (:class:`sleepemo.fusion.model.FusionNet`) sees every channel at once:
electrode-position embeddings, attention across channels per token, attention pooling
over channels, dilated temporal convolutions, a logit per token (interpolated to every
timepoint) and a trial logit. What it reads per (channel, token) is the variant's input
(``fusion.variants``, table rows ``fusion_<variant>[_shuffled]``):

- ``experts``: fold k's stage-03 experts (``fusion.expert_result``, their ``fold<k>.pt``,
  frozen) give per-token embeddings of every participant; plus the evoked tokens;
- ``experts_pairwise``: the same, trained with the within-participant pairwise AUC loss;
- ``experts_noevoked``: the experts' embeddings alone;
- ``experts_finetune``: the experts themselves (fold k's, on the band features) in front
  of the fusion, fine-tuned end to end (:class:`sleepemo.fusion.model.TunedFusion`;
  their learning rate is ``fusion.finetune_lr_scale`` times the fusion's); plus the
  evoked tokens;
- ``mae``: the frozen stage-02 encoder's embeddings (no stage 03) plus evoked tokens;
- ``raw``: the band envelopes themselves plus evoked tokens (no pre-training);
- ``experts_pairwise_ea``, ``raw_ea``: ``experts_pairwise`` and ``raw`` with the evoked
  tokens (and ``raw``'s envelopes) of the participant's Euclidean-aligned waveform
  (:func:`sleepemo.features.euclidean_align`; :func:`sleepemo.fusion.inputs.aligned`).

The **evoked tokens** are the 0.5-8 Hz waveform of every channel (phase kept), z-scored
per participant (:func:`sleepemo.features.evoked_features`); every input is z-scored per
participant and feature on that participant's own trials (label-free).

Fold k trains on the fold's training participants only (:meth:`Folds.labels_of`):
``fusion.n_inner_val`` of them are set aside to early-stop (the competition metric on
their trials, every ``fusion.eval_every`` steps); the held-out participant and the test
participants are only predicted. Test predictions are the mean of the 14 fold models.

Artefacts under ``<out>/04_fusion/``::

    fusion_<variant>/fold<k>.pt   the fold's early-stopped weights (resume point)
    fusion_<variant>/fold<k>.npz  oof, test, oof_trial, test_trial, oof_attention
                                  (channel attention per held-out trial), inner-split
                                  scores, fingerprint
    fusion_<variant>/{oof,test,oof_trial,test_trial,oof_attention}.npy, score.json,
                     meta.json    (a result of the predictions contract)
    metrics.json, evidence.md, fusion_curves.png, channel_attention.png
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time

import numpy as np
import torch

from sleepemo.config import ConfigError, FusionConfig, fields_affecting
from sleepemo.data.folds import balanced
from sleepemo.fusion.inputs import (Inputs, aligned, evoked_cache, input_key, new_model,
                                    new_tuned_model, output_name, token_window, variant_spec)
from sleepemo.fusion.model import (FusionNet, electrode_positions, fusion_loss, predict,
                                   to_timepoints)
from sleepemo.io import read_json
from sleepemo.mae.inputs import band_cache
from sleepemo.metric import window_auc
from sleepemo.pipeline.artefacts import (Planned, ResultWriter, code_hash, fingerprint,
                                         listing, load_checkpoint, planned_or, results,
                                         save_checkpoint, stored_fingerprint)
from sleepemo.pipeline.evidence import plot_curves, plot_topomaps, results_table, to_markdown
from sleepemo.pipeline import executor
from sleepemo.pipeline.executor import run_folds
from sleepemo.pipeline.stage import Stage, StageOutput, stage_dir
from sleepemo.progress import bar

VARIANTS = FusionConfig.VARIANTS


# ------------------------------------------------------------------ one fold
def inner_score(model: FusionNet, inputs: dict, labels: dict, picks: dict,
                min_run: int) -> float:
    """The competition metric on the inner participants' token outputs."""
    pred = {s: predict(model, inputs[s][i])[0] for s, i in picks.items()}
    return window_auc({s: labels[s][i] for s, i in picks.items()}, pred,
                      min_run=min_run).score


def run_fold(cfg: FusionConfig, variant: str, inputs: dict, labels: dict, held: int,
             test_subjects, k: int, seed: int, n_times: int, positions=None, ckpt=None,
             fp: str = "", progress=None, device="cpu", experts: dict | None = None,
             n_heads: int = 4) -> dict:
    """Train fold k's fusion on ``labels`` (the fold's training participants only),
    early-stopped on an inner split of them, and predict ``held`` and the test
    participants. Returns the fold's arrays. ``experts`` (fold k's stacked expert
    parameters, ``n_heads`` heads) are fine-tuned in front of the fusion when the
    variant's input is ``experts_tuned``."""
    if held in labels:
        raise ValueError(f"participant {held} is held out in fold {k}: its labels must not "
                         "reach the training")
    vid = list(VARIANTS).index(variant)
    rng = np.random.default_rng([seed, k, vid, 4])
    subjects = sorted(labels)
    n_val = min(cfg.n_inner_val, len(subjects) - 1)
    inner = sorted(int(s) for s in rng.choice(subjects, size=n_val, replace=False))
    train = [s for s in subjects if s not in inner]
    picks = {s: np.sort(rng.choice(len(labels[s]), size=min(cfg.eval_trials, len(labels[s])),
                                   replace=False)) for s in inner}
    n_chans, n_tokens, n_feat = next(iter(inputs.values())).shape[1:]
    window = token_window(cfg)
    tuned = VARIANTS[variant].inputs == "experts_tuned"
    if tuned and experts is None:
        raise ValueError(f"variant {variant} fine-tunes fold {k}'s experts: pass them")
    torch.manual_seed(seed * 1000 + k)
    model = new_tuned_model(cfg, experts, n_feat, n_chans, positions, n_heads,
                            n_tokens * cfg.stride // n_times) if tuned else \
        new_model(cfg, n_feat, n_chans, positions)
    model = model.to(device)
    min_run = max(1, math.ceil(10 / cfg.stride))
    state = load_checkpoint(ckpt, fp, device) if ckpt else None
    if state is not None:
        model.load_state_dict(state["model"])
        history = state["history"]
    else:
        loss_fn = fusion_loss(VARIANTS[variant].loss, cfg.time_loss_weight)
        groups_ = [{"params": (model.fusion if tuned else model).parameters()}]
        if tuned:
            groups_.append({"params": model.experts.parameters(),
                            "lr": cfg.lr * cfg.finetune_lr_scale})
        opt = torch.optim.AdamW(groups_, lr=cfg.lr, weight_decay=cfg.weight_decay)
        best = (-1.0, 0, copy.deepcopy(model.state_dict()))
        history = []
        for step in range(1, cfg.steps + 1):
            model.train()
            chosen = rng.choice(train, size=min(cfg.subjects_per_batch, len(train)),
                                replace=False)
            idx = [balanced(labels[s], cfg.trials_per_subject, rng) for s in chosen]
            x = torch.from_numpy(np.concatenate([inputs[s][i] for s, i in zip(chosen, idx)]))
            y = torch.from_numpy(np.concatenate([labels[s][i] for s, i in zip(chosen, idx)]
                                                ).astype(np.float32))
            groups = torch.repeat_interleave(torch.arange(len(chosen)),
                                             torch.tensor([len(i) for i in idx]))
            t, r, _ = model(x.to(device), groups.to(device)) if tuned else model(x.to(device))
            loss = loss_fn(t, r, y.to(device), groups.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % cfg.eval_every == 0 or step == cfg.steps:
                score = inner_score(model, inputs, labels, picks, min_run)
                history.append([step, float(loss.item()), score])
                if score > best[0]:
                    best = (score, step, copy.deepcopy(model.state_dict()))
            if progress:
                progress()
        model.load_state_dict(best[2])
        if ckpt:
            save_checkpoint(ckpt, {"model": model.state_dict(), "history": history}, fp)
    out = {"history": np.asarray(history, dtype=np.float64), "inner": np.asarray(inner)}
    for role, subs in (("oof", [held]), ("test", list(test_subjects))):
        parts = [predict(model, inputs[s], cfg.predict_batch) for s in subs] or \
            [predict(model, inputs[held][:0])]  # one participant at a time (TunedFusion)
        trial, att = (np.concatenate([p[j] for p in parts]) for j in (1, 2))
        # interpolated participant by participant, as sleepemo predict does: a batch's
        # size decides which elements take torch's vectorised path (a 1-ulp difference)
        out[role] = np.concatenate([to_timepoints(p[0], n_times) for p in parts])
        out[f"{role}_trial"] = (1 / (1 + np.exp(-trial))).astype(np.float32)
        if role == "oof":
            out["oof_attention"] = att[:, window[0]:window[1]].mean(1).astype(np.float32)
    return out


# ------------------------------------------------------------------ the stage
@dataclasses.dataclass
class FoldState(executor.FoldState):
    """What this stage's folds need besides the stage, the data and the folds."""

    inputs: Inputs
    positions: np.ndarray | None
    writers: dict  # variant -> ResultWriter


def fold_state(stage: Stage) -> FoldState:
    """The data, the inputs (their caches built where missing) and one result writer per
    variant, fingerprinted by everything that shapes its weights."""
    cfg, seed = stage.cfg.fusion, stage.cfg.seed
    ds = stage.dataset()
    folds = stage.folds(ds)
    if ds.n_times % cfg.stride:
        raise ConfigError(f"fusion.stride {cfg.stride} does not divide the {ds.n_times} "
                          "samples of a trial")
    inputs = Inputs(stage, ds, folds)
    inputs.band  # built here, not by several fold workers at once
    positions = electrode_positions(ds.ch_names)
    writers = {}
    for v in cfg.variants:
        band_align, evoked_align = aligned(v)
        fp = variant_fingerprint(cfg, v, seed, folds.data_fingerprint,
                                 inputs.key(VARIANTS[v].inputs, band_align),
                                 inputs.evoked_cache(evoked_align).key
                                 if VARIANTS[v].evoked else None, positions)
        writers[v] = ResultWriter(stage.out, stage.spec.name, output_name(cfg, v), fp, folds)
    return FoldState(stage, ds, folds, inputs, positions, writers)


def variant_fingerprint(cfg: FusionConfig, v: str, seed: int, data_fp: str, input_key: str,
                        evoked_key: str | None, positions) -> str:
    """Everything variant ``v``'s weights depend on: its settings, seed, data, input
    (:func:`~sleepemo.fusion.inputs.input_key`), evoked tokens, electrode positions and
    code."""
    # spec: the variant's fields as a list (inputs, evoked, loss[, align]): unaligned
    # variants' as they always were
    return fingerprint(stage="fusion", variant=v, spec=variant_spec(v),
                       seed=seed,
                       fusion=fields_affecting(cfg, "weights"), data=data_fp,
                       inputs=input_key, evoked=evoked_key,
                       positions=None if positions is None else positions.tolist(),
                       code=code_hash(__name__))


def _channels(stage: Stage) -> tuple:
    """The data's channel names, as stage 00 recorded them (else read from the data)."""
    metrics = stage_dir(stage.out, "folds") / "metrics.json"
    channels = read_json(metrics).get("channels") if metrics.is_file() else None
    return tuple(channels) if channels else stage.dataset().ch_names


def fingerprints(stage: Stage, planned: dict | None = None) -> list[Planned]:
    """Every variant's result as :func:`run` would write it now (:mod:`sleepemo.pipeline.plan`),
    with the stage-02 encoder and stage-03 results ``planned`` (or as on disk)."""
    cfg, mcfg = stage.cfg.fusion, stage.cfg.mae
    data = stage.folds().data_fingerprint
    band = {a: band_cache(stage.out, data, mcfg, a) for a in (False, True)}
    evoked = {a: evoked_cache(stage.out, data, cfg, a) for a in (False, True)}
    positions = electrode_positions(_channels(stage))

    def expert_fp():
        found = [r for r in listing(stage.out, planned, "experts")
                 if r.name == cfg.expert_result]
        return found[0].fingerprint if found else None

    def mae_fp():
        return planned_or(planned, "mae", "encoder", lambda: stored_fingerprint(
            stage_dir(stage.out, "mae") / "run.json"))

    return [Planned(stage.spec.name, output_name(cfg, v), variant_fingerprint(
                cfg, v, stage.cfg.seed, data,
                input_key(VARIANTS[v].inputs, expert_fp, mae_fp,
                          lambda v=v: band[aligned(v)[0]].key),
                evoked[aligned(v)[1]].key if VARIANTS[v].evoked else None, positions),
                diagnostic=cfg.shuffle_labels)
            for v in cfg.variants]


def train_fold(state: FoldState, k: int, step) -> dict:
    """Fold k of every variant not yet written: train, predict, save. Returns the
    seconds each variant took."""
    stage, inputs, folds = state.stage, state.inputs, state.folds
    cfg = stage.cfg.fusion
    held = folds.held_out(k)
    labels = inputs.labels(k, cfg.shuffle_labels)
    seconds = {}
    for v, writer in state.writers.items():
        if writer.fold_done(k):
            continue
        t0 = time.perf_counter()
        arrays = run_fold(cfg, v, inputs.variant(v, k), labels, held, folds.test_subjects,
                          k, stage.cfg.seed, state.ds.n_times, state.positions,
                          writer.path(f"fold{k}.pt"), writer.fp, step, stage.device,
                          experts=inputs.expert_params(k)
                          if VARIANTS[v].inputs == "experts_tuned" else None,
                          n_heads=stage.cfg.mae.n_heads)
        writer.save_fold(k, **arrays)
        seconds[v] = time.perf_counter() - t0
    return seconds


def run(stage: Stage) -> StageOutput:
    """Everything stage 04 does (see the module docstring)."""
    cfg, seed, log = stage.cfg.fusion, stage.cfg.seed, stage.log
    state = fold_state(stage)
    ds, folds, writers = state.ds, state.folds, state.writers
    for writer in writers.values():
        if writer.finished():
            log(f"{writer.name}: unchanged, reusing {writer.folder}")
    todo = [k for k in range(folds.n_folds)
            if not all(w.fold_done(k) for w in writers.values())]
    progress = bar(total=folds.n_folds * cfg.steps * len(cfg.variants),
                   desc="fusion: LOPO folds x steps", unit="step", enabled=stage.progress)
    progress.update(cfg.steps * sum(w.fold_done(k) for k in range(folds.n_folds)
                                    for w in writers.values()))
    if any(VARIANTS[v].inputs == "mae" and not w.fold_done(k) for v, w in writers.items()
           for k in todo):
        state.inputs.mae_tokens()  # built here, once, not by every fold worker
    done = run_folds(stage, todo, fold_state, train_fold, cfg.workers, progress, state)
    progress.close()
    seconds = {v: [s[v] for s in done.values() if v in s] for v in cfg.variants}

    finished = {}
    for v, writer in writers.items():
        finished[v] = writer.finished() or writer.finish(
            ds, seed=seed, diagnostic=cfg.shuffle_labels, config=dataclasses.asdict(cfg),
            meta={"registry": "fusion", "variant": v, "inputs": VARIANTS[v].inputs,
                  "evoked_tokens": VARIANTS[v].evoked, "loss": VARIANTS[v].loss,
                  "aligned": VARIANTS[v].align,
                  "inner_best": {f"S{s}": p["history"][:, 2].max().round(4).item()
                                 for s, p in writer.load_parts().items()}})
    return _report(stage, ds, folds, finished, seconds, state.positions)


def _report(stage: Stage, ds, folds, finished: dict, seconds: dict, positions
            ) -> StageOutput:
    cfg = stage.cfg.fusion
    listed = results(stage.out)
    table, scores, sfreq = results_table(listed)
    names = {v: r.label for v, r in finished.items()}
    attention = {r.label: r.array("oof_attention").mean(0).tolist()
                 for r in finished.values()}
    curves = {n: scores[n] for n in names.values()}
    best_base = table[(table["stage"] == "baselines") & ~table["diagnostic"]]
    if len(best_base):
        curves[f"baseline {best_base.index[0]}"] = scores[best_base.index[0]]
    plot_curves(curves, sfreq, stage.dir / "fusion_curves.png",
                title="Fusion: mean per-timepoint AUC of the held-out participants")
    topomap = plot_topomaps(attention, ds.ch_names, stage.dir / "channel_attention.png",
                            title="Fusion: channel attention in the trial window "
                                  "(held-out trials)",
                            label=f"attention weight (uniform = 1/{ds.n_chans})",
                            centre=1 / ds.n_chans) if positions is not None else None
    metrics = {
        "lopo_window_auc": {n: float(scores[n].score) for n in names.values()},
        "variants": {names[v]: list(variant_spec(v)) for v in names},
        "channel_attention": {n: dict(zip(ds.ch_names, a)) for n, a in attention.items()},
        "median_fold_seconds": {v: float(np.median(s)) for v, s in seconds.items() if s},
        "labels_shuffled": cfg.shuffle_labels, "token_samples": cfg.stride,
        "steps": cfg.steps, "topomap": topomap is not None,
        "electrode_positions": positions is not None}
    summary = "fusion LOPO window AUC: " + ", ".join(
        f"{n} {s:.4f}" for n, s in metrics["lopo_window_auc"].items())
    return StageOutput(metrics, summary, evidence(table, names, metrics, cfg))


def paired(table, a: str, b: str) -> str:
    """``a`` against ``b`` on the same held-out participants."""
    cols = [c for c in table.columns if c.startswith("S") and c[1:].isdigit()]
    d = table.loc[a, cols].to_numpy(float) - table.loc[b, cols].to_numpy(float)
    return (f"`{a}` {table.loc[a, 'overall']:.4f} vs `{b}` {table.loc[b, 'overall']:.4f}: "
            f"higher on {int((d > 0).sum())} of {len(d)} held-out participants "
            f"(mean difference {d.mean():+.4f} in each model's own window)")


def evidence(table, names: dict, m: dict, cfg: FusionConfig) -> str:
    """Stage 04's section of the run report: the table, the verdict, the ablations."""
    fusion = [n for n in table.index if n in names.values()]
    submittable = table[~table["diagnostic"]]
    base = submittable[submittable["stage"] == "baselines"]
    lines = [
        f"Fusion of the 16 channels' token sequences ({cfg.stride}-sample tokens; "
        f"attention across channels with electrode-position embeddings, dilated temporal "
        f"convolutions; {cfg.steps} steps per fold, early-stopped on {cfg.n_inner_val} of "
        "the fold's training participants)"
        + (", **labels shuffled** (leakage alarm)" if cfg.shuffle_labels else "") + ".", "",
        "| result | input | evoked tokens | loss | LOPO window AUC | window (ms) |",
        "|---|---|---|---|---|---|"]
    for n in fusion:
        kind, evoked, loss, *align = m["variants"][n]
        kind += " (aligned)" if align else ""
        lines.append(f"| `{n}` | {kind} | {'yes' if evoked else 'no'} | {loss} | "
                     f"{table.loc[n, 'overall']:.4f} | {table.loc[n, 'window_ms'] or 'none'} |")
    lines.append("")
    if fusion and not cfg.shuffle_labels:
        best_f = max(fusion, key=lambda n: table.loc[n, "overall"])
        if len(base):
            verdict = ("beats" if table.loc[best_f, "overall"] > base["overall"].iloc[0]
                       else "does **not** beat")
            lines.append(f"**Verdict:** the best fusion {verdict} the best baseline: "
                         + paired(table, best_f, base.index[0]) + ".")
        else:
            lines.append("**Verdict:** no stage-01 baseline in this run to compare with.")
        others = [n for n in submittable.index if n not in fusion]
        if others and (not len(base) or others[0] != base.index[0]):
            lines.append("The best model of the run outside stage 04: "
                         + paired(table, best_f, others[0]) + ".")
        lines += ["", "Ablations:", ""]
        pairs = [("experts", "mae", "the experts' embeddings against the frozen MAE's "
                  "(what stage 03 adds)"),
                 ("experts", "raw", "the experts' embeddings against raw band envelopes "
                  "(what all pre-training adds)"),
                 ("mae", "raw", "the MAE's embeddings against raw band envelopes"),
                 ("experts", "experts_noevoked", "with against without the evoked tokens"),
                 ("experts_pairwise", "experts", "pairwise AUC loss against BCE"),
                 ("experts_finetune", "experts", "the experts fine-tuned end to end against "
                  "frozen"),
                 ("experts_pairwise_ea", "experts_pairwise", "Euclidean-aligned against "
                  "unaligned evoked tokens"),
                 ("raw_ea", "raw", "Euclidean-aligned against unaligned raw inputs")]
        for a, b, what in pairs:
            if a in names and b in names:
                lines.append(f"- {what}: {paired(table, names[a], names[b])}.")
        mean_rule = [n for n in table.index if table.loc[n, "stage"] == "experts"
                     and n == cfg.expert_result]
        if "experts" in names and mean_rule:
            lines.append("- fusion against the weighted mean of the experts (stage 03's "
                         f"rule): {paired(table, names['experts'], mean_rule[0])}.")
    lines += ["", "All results of the run so far:", "",
              to_markdown(table[["stage", "overall", "window_ms", "diagnostic"]]), ""]
    if m["median_fold_seconds"]:
        lines.append("Median seconds per fold: " + ", ".join(
            f"{v} {s:.1f}" for v, s in m["median_fold_seconds"].items()) + ".")
    lines += ["", "![per-timepoint AUC](fusion_curves.png)"]
    if m["topomap"]:
        lines += ["", "![channel attention](channel_attention.png)"]
    return "\n".join(lines)
