"""Stage 03: 16 channel experts meta-learned with first-order MAML, under LOPO.

In fold k the experts are trained on the fold's training participants only; a *task* is
one of those participants (class-balanced support and query splits of its trials, see
:func:`sleepemo.experts.fomaml.fomaml_step`). The held-out participant and the test participants
have no labels here: they are predicted **zero-shot** from the trained weights, and, for
``experts.tta_variants`` (MAE-initialised), also after **unsupervised test-time
adaptation** (a few SGD steps of the MAE reconstruction loss on that participant's own
trials; ``_tta`` rows).
The 16 experts' outputs are combined with weights fitted inside the fold: each expert's
trial-level AUC on the training participants (mean over participants), less 0.5, floored
at 0 (equal weights when no expert exceeds 0.5). Each participant is predicted on its own
(its float rounding must not depend on who shares its batches), with the code of
:mod:`sleepemo.experts.infer` that ``sleepemo predict`` runs on new recordings
(:mod:`sleepemo.experts.predict`).

Variants (``experts.variants``, table rows ``experts_<variant>[_tta][_shuffled]``):
``mae_fomaml`` (the design), ``mae_supervised`` (the same experts and data, plain Adam on
class-balanced batches, as many gradient evaluations as FOMAML), ``random_fomaml``
(no pre-training), ``mae_fomaml_ea`` (the design on the band features of the participant's
Euclidean-aligned waveform, :func:`sleepemo.features.euclidean_align`: label-free, from
its own trials; cache ``<out>/cache/band_features_ea``; initialised from the same MAE,
trained on the unaligned features). ``experts.shuffle_labels`` permutes labels within each training
participant (a leakage alarm: must score about 0.5).

Stage 02's encoder is read from ``<out>/02_mae/`` with
:func:`sleepemo.mae.model.load_mae_weights`. Artefacts under ``<out>/03_experts/``::

    <name>/fold<k>.pt     the fold's trained parameters (stacked over experts); a killed
                          run does not train a fold again once this exists
    <name>/fold<k>.npz    oof, test (per timepoint), oof_trial, test_trial, oof_experts
                          (each expert's held-out trial logit), weights, train_auc,
                          losses, fingerprint
    <name>/oof.npy, test.npy, oof_trial.npy, test_trial.npy, oof_experts.npy,
           score.json, meta.json   (a result of the predictions contract)
    metrics.json, evidence.md   scores, per-channel expert AUC, timing, parameter counts
    expert_topomap.png    per-channel expert AUC on the scalp (MNE)
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sleepemo.config import ConfigError, ExpertsConfig, fields_affecting
from sleepemo.data.folds import balanced
from sleepemo.experts.fomaml import fomaml_step
from sleepemo.experts.infer import (ExpertInference, expert_encoder_config, output_names,
                                    tta_seed, uses_tta)
from sleepemo.experts.model import ExpertBank, classification_loss, make_experts
from sleepemo.features import BandFeatureCache
from sleepemo.mae.inputs import band_at, band_cache, built_band_cache
from sleepemo.mae.model import EncoderConfig, load_mae_weights
from sleepemo.metric import per_timepoint_auc
from sleepemo.pipeline.artefacts import (Planned, Result, ResultWriter, code_hash,
                                         fingerprint, load_checkpoint, planned_or,
                                         save_checkpoint, stored_fingerprint)
from sleepemo.pipeline.evidence import plot_topomaps
from sleepemo.pipeline.executor import run_folds
from sleepemo.pipeline.stage import Stage, StageOutput, stage_dir
from sleepemo.progress import bar

VARIANTS = ExpertsConfig.VARIANTS


# ------------------------------------------------------------------ sampling
def support_query(y: np.ndarray, n_support: int, n_query: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint class-balanced support and query trial indices (overlapping only when a
    class has fewer than ``(n_support + n_query) / 2`` trials)."""
    sup, qry = [], []
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == cls))
        if len(idx) == 0:
            raise ValueError("a participant without trials of both classes cannot form a task")
        need = (n_support + n_query) // 2
        if len(idx) < need:
            idx = np.concatenate([idx, rng.choice(idx, size=need - len(idx))])
        sup.append(idx[:n_support // 2])
        qry.append(idx[n_support // 2:need])
    return np.concatenate(sup), np.concatenate(qry)


# ------------------------------------------------------------------ one fold
@dataclass
class FoldResult:
    params: dict                # trained (meta-)parameters, stacked over experts
    losses: np.ndarray          # query loss per meta-step (fomaml) or loss per step


class ExpertTrainer(ExpertInference):
    """Everything a fold needs: features, the initialisations and the batched forward
    (prediction, test-time adaptation and the combination are
    :class:`sleepemo.experts.infer.ExpertInference`'s, shared with ``sleepemo predict``).

    ``feats`` holds every participant's pooled band features (label-free; aligned or not,
    one trainer per kind, :func:`fold_state`); labels are only ever passed in explicitly,
    for the fold's training participants.
    """

    def __init__(self, cfg: ExpertsConfig, feats: dict, enc_cfg: EncoderConfig,
                 mae_state: tuple[dict, dict] | None, n_times: int, device: torch.device):
        super().__init__(cfg, enc_cfg, next(iter(feats.values())).shape[1], n_times, device)
        self.feats = feats
        self.mae_state = mae_state
        self.cls_loss = classification_loss(self.forward, cfg.time_loss_weight)

    def init_params(self, init: str, seed: int) -> dict:
        """Stacked initial parameters: from the MAE (``mae``) or random (``random``)."""
        if init == "mae":
            if self.mae_state is None:
                raise FileNotFoundError("MAE-initialised experts need the stage-02 encoder")
            enc, head = self.mae_state
            experts = make_experts(self.n_experts, self.enc_cfg, enc, self.window, seed,
                                   head_state=head)
        else:
            experts = make_experts(self.n_experts, self.enc_cfg, None, self.window, seed)
        return {k: v.to(self.dev) for k, v in ExpertBank(experts).params.items()}

    def tensor(self, subject: int, idx: np.ndarray | None = None) -> torch.Tensor:
        x = self.feats[subject] if idx is None else self.feats[subject][idx]
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.dev)

    def _labels(self, y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(y.astype(np.float32)).to(self.dev)

    def train(self, init_params: dict, method: str, labels: dict[int, np.ndarray],
              rng: np.random.Generator, progress=None) -> FoldResult:
        """Train from ``init_params`` on ``labels`` (participant -> labels of the fold's
        training participants; nobody else's labels are available here)."""
        cfg = self.cfg
        params = {k: v.detach().clone().requires_grad_(True) for k, v in init_params.items()}
        opt = torch.optim.Adam(params.values(), lr=cfg.outer_lr)
        subjects = sorted(labels)
        losses = []
        if method == "fomaml":
            for _ in range(cfg.meta_steps):
                chosen = rng.choice(subjects, size=min(cfg.tasks_per_step, len(subjects)),
                                    replace=False)
                tasks = []
                for s in chosen:
                    sup, qry = support_query(labels[s], cfg.n_support, cfg.n_query, rng)
                    tasks.append(((self.tensor(s, sup), self._labels(labels[s][sup])),
                                  (self.tensor(s, qry), self._labels(labels[s][qry]))))
                losses.append(fomaml_step(self.cls_loss, params, opt, tasks,
                                          cfg.inner_steps, cfg.inner_lr))
                if progress:
                    progress()
        elif method == "supervised":
            # the same number of gradient evaluations and batch size as FOMAML
            n_steps = cfg.meta_steps * min(cfg.tasks_per_step, len(subjects)) * \
                (cfg.inner_steps + 1)
            for step in range(n_steps):
                s = subjects[rng.integers(len(subjects))]
                idx = balanced(labels[s], cfg.n_support, rng)
                loss = self.cls_loss(params, (self.tensor(s, idx), self._labels(labels[s][idx])))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                if progress and (step + 1) % (n_steps // cfg.meta_steps or 1) == 0:
                    progress()
        else:
            raise ValueError(f"unknown training method {method!r}")
        return FoldResult({k: v.detach() for k, v in params.items()}, np.asarray(losses))

    def fit_weights(self, params: dict, labels: dict[int, np.ndarray],
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Combination weights from the training participants (see module docstring);
        returns (weights, per-expert AUC on the training participants)."""
        picks = {s: balanced(labels[s], self.cfg.weight_trials, rng) for s in sorted(labels)}
        _, r = self.predict(params, np.concatenate([self.feats[s][i] for s, i in picks.items()]))
        parts = np.split(r.T, np.cumsum([len(i) for i in picks.values()])[:-1])
        auc = np.mean([per_timepoint_auc(labels[s][i], part)
                       for (s, i), part in zip(picks.items(), parts)], axis=0)
        w = np.clip(auc - 0.5, 0, None)
        w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1 / len(w))
        return w.astype(np.float32), auc.astype(np.float32)

    def adapt_unsupervised(self, params: dict, subject: int, ratio: float,
                           seed: tuple) -> tuple[dict, float, float]:
        """:meth:`~sleepemo.experts.infer.ExpertInference.adapt` on ``subject``'s own
        trials (no labels)."""
        return self.adapt(params, self.feats[subject], ratio, seed)


# ------------------------------------------------------------------ the stage
def run_fold(trainer: ExpertTrainer, variant: str, k: int, held: int, test_subjects,
             labels: dict, seed: int, mask_ratio: float, ckpt: Path | None = None,
             train_fp: str = "", progress=None) -> dict:
    """Train (or load) fold k's experts and predict; returns the arrays of its outputs:
    ``{"zero_shot": {...}, "tta": {...} (MAE init with TTA only), "losses": ...}``."""
    if held in labels:
        raise ValueError(f"participant {held} is held out in fold {k}: its labels must not "
                         "reach the training")
    init, method = VARIANTS[variant].init, VARIANTS[variant].training
    vid = list(VARIANTS).index(variant)
    params = (load_checkpoint(ckpt, train_fp, trainer.dev) or {}).get("params") \
        if ckpt else None
    losses = np.zeros(0)
    if params is None:
        # same initialisation seed for every variant of a fold: they differ in training only
        start = trainer.init_params(init, seed * 1000 + k)
        res = trainer.train(start, method, labels, np.random.default_rng([seed, k, vid]),
                            progress)
        params, losses = res.params, res.losses
        if ckpt:
            save_checkpoint(ckpt, {"params": {k: v.cpu() for k, v in params.items()}},
                            train_fp)
    weights, train_auc = trainer.fit_weights(params, labels,
                                             np.random.default_rng([seed, k, vid, 1]))

    def outputs(adapt: bool) -> dict:
        # one participant at a time, as sleepemo predict does (sleepemo.experts.predict):
        # in a batch shared with other participants its float rounding would differ
        out = {"weights": weights, "train_auc": train_auc}
        for role, subjects in (("oof", [held]), ("test", list(test_subjects))):
            parts = []
            for s in subjects:
                p = params
                if adapt:  # each participant gets its own adapted weights
                    p, before, after = trainer.adapt_unsupervised(
                        params, s, mask_ratio, tta_seed(seed, k, variant, s))
                    out.setdefault("tta_mae_loss", []).append([before, after])
                t, r = trainer.predict(p, trainer.feats[s])
                parts.append((*trainer.combine(t, r, weights), r.T.astype(np.float32)))
            out[role], out[f"{role}_trial"], out[f"{role}_experts"] = (
                np.concatenate(a) for a in zip(*parts))
        return out

    return {"zero_shot": outputs(False),
            "tta": outputs(True) if uses_tta(trainer.cfg, variant) else None,
            "losses": losses}


def train_fingerprint(cfg: ExpertsConfig, variant: str, seed: int, data_fp: str,
                      band_key: str, mae_fp: str | None) -> str:
    """Everything a variant's trained weights depend on (config fields that affect
    ``weights``, seed, data, band features, the MAE, code)."""
    return fingerprint(stage="experts", variant=variant,
                       experts=fields_affecting(cfg, "weights"), seed=seed, data=data_fp,
                       bands=band_key, mae=mae_fp, code=code_hash(__name__))


def variant_fingerprints(cfg: ExpertsConfig, mcfg, seed: int, data_fp: str,
                         band_keys: dict[bool, str], mae_fp: str | None
                         ) -> list[tuple[str, str, dict]]:
    """Per variant: (variant, its trained weights' fingerprint, {role: (result name, its
    predictions' fingerprint)}) for the zero-shot and (``_tta``) adapted results;
    ``band_keys``: the band-feature caches' keys by ``align``."""
    jobs = []
    for v in cfg.variants:
        tfp = train_fingerprint(cfg, v, seed, data_fp, band_keys[VARIANTS[v].align],
                                mae_fp if VARIANTS[v].init == "mae" else None)
        pfp = fingerprint(train=tfp, tta=uses_tta(cfg, v), mask_ratio=mcfg.mask_ratio,
                          **fields_affecting(cfg, "predictions"))
        jobs.append((v, tfp, {role: (name, pfp) for role, name
                              in zip(("zero_shot", "tta"), output_names(cfg, v)) if name}))
    return jobs


def fingerprints(stage: Stage, planned: dict | None = None) -> list[Planned]:
    """Every result as :func:`run` would write it now (:mod:`sleepemo.pipeline.plan`), with the
    stage-02 encoder ``planned`` (or as on disk)."""
    cfg, mcfg = stage.cfg.experts, stage.cfg.mae
    data = stage.folds().data_fingerprint
    band_keys = {a: band_cache(stage.out, data, mcfg, a).key for a in (False, True)}
    mae_fp = None
    if any(VARIANTS[v].init == "mae" for v in cfg.variants):
        mae_fp = planned_or(planned, "mae", "encoder", lambda: stored_fingerprint(
            stage_dir(stage.out, "mae") / "run.json"))
    return [Planned(stage.spec.name, name, pfp, diagnostic=cfg.shuffle_labels)
            for _, _, outputs in variant_fingerprints(cfg, mcfg, stage.cfg.seed, data,
                                                      band_keys, mae_fp)
            for name, pfp in outputs.values()]


def _mae_init(stage: Stage, cache: BandFeatureCache):
    """The stage-02 encoder and head, its fingerprint and ``run.json``; ``cache``: the
    (unaligned) band features it must have been trained on."""
    enc, head, info = load_mae_weights(stage_dir(stage.out, "mae"))
    if info.get("band_cache") != cache.key:
        raise FileNotFoundError(
            f"{stage_dir(stage.out, 'mae')} was trained on other band features than the "
            "current mae: settings; run src/02_mae.py again")
    return (enc, head), info["fingerprint"], info


@dataclass
class FoldState:
    """What every fold needs: built by :func:`fold_state` in the stage's process and in
    every fold worker (:mod:`sleepemo.pipeline.executor`)."""

    stage: Stage
    ds: object
    folds: object
    trainers: dict  # align -> ExpertTrainer on those band features (the variants' kinds)
    enc_cfg: EncoderConfig
    jobs: list  # (variant, train fingerprint, {"zero_shot": writer, "tta": writer})

    def trainer(self, variant: str) -> ExpertTrainer:
        """The trainer on variant ``variant``'s band features (aligned or not)."""
        return self.trainers[VARIANTS[variant].align]

    def done(self, k: int, writers: dict | None = None) -> bool:
        """Fold k is written for ``writers`` (every variant's when None)."""
        groups = [writers] if writers is not None else [w for _, _, w in self.jobs]
        return all(w.fold_done(k) for ws in groups for w in ws.values())


def fold_state(stage: Stage) -> FoldState:
    """The data, the band features (built where missing; aligned ones only for aligned
    variants), a trainer per kind of band features and one result writer per output,
    fingerprinted by everything that shapes it."""
    cfg, mcfg, seed = stage.cfg.experts, stage.cfg.mae, stage.cfg.seed
    ds = stage.dataset()
    folds = stage.folds(ds)
    if ds.n_times % cfg.stride:
        raise ConfigError(f"experts.stride {cfg.stride} does not divide the {ds.n_times} "
                          "samples of a trial")
    subjects = list(folds.train_subjects) + list(folds.test_subjects)
    caches = {a: built_band_cache(stage.out, ds, folds, mcfg, stage.progress, a)
              for a in sorted({VARIANTS[v].align for v in cfg.variants})}

    mae_state, mae_fp, mae_info = None, None, None
    if any(VARIANTS[v].init == "mae" for v in cfg.variants):
        mae_state, mae_fp, mae_info = _mae_init(
            stage, band_cache(stage.out, folds.data_fingerprint, mcfg))
    enc_cfg = expert_encoder_config(cfg, mcfg, ds.n_times, ds.n_chans, mae_info)
    trainers = {a: ExpertTrainer(cfg, {s: band_at(c.load(s), cfg.stride) for s in subjects},
                                 enc_cfg, mae_state, ds.n_times, stage.device)
                for a, c in caches.items()}

    jobs = [(v, tfp, {role: ResultWriter(stage.out, stage.spec.name, name, pfp, folds)
                      for role, (name, pfp) in outputs.items()})
            for v, tfp, outputs in variant_fingerprints(cfg, mcfg, seed,
                                                        folds.data_fingerprint,
                                                        {a: c.key for a, c in caches.items()},
                                                        mae_fp)]
    return FoldState(stage, ds, folds, trainers, enc_cfg, jobs)


def train_fold(state: FoldState, k: int, step) -> dict:
    """Fold k of every variant not yet written: train (or load), predict, save. Returns
    the seconds each variant took."""
    stage, folds = state.stage, state.folds
    cfg, seed = stage.cfg.experts, stage.cfg.seed
    held = folds.held_out(k)
    seconds = {}
    for v, tfp, writers in state.jobs:
        if state.done(k, writers):
            continue
        t0 = time.perf_counter()
        zs = writers["zero_shot"]
        res = run_fold(state.trainer(v), v, k, held, folds.test_subjects,
                       folds.labels_of(state.ds, k, cfg.shuffle_labels, seed), seed,
                       stage.cfg.mae.mask_ratio, ckpt=zs.path(f"fold{k}.pt"), train_fp=tfp,
                       progress=step)
        seconds[v] = time.perf_counter() - t0
        for role, writer in writers.items():
            writer.save_fold(k, **res[role], losses=res["losses"])
    return seconds


def run(stage: Stage) -> StageOutput:
    """Everything stage 03 does (see the module docstring)."""
    cfg, seed, log = stage.cfg.experts, stage.cfg.seed, stage.log
    state = fold_state(stage)
    ds, folds, jobs, enc_cfg = state.ds, state.folds, state.jobs, state.enc_cfg
    trainer = next(iter(state.trainers.values()))  # the experts' size, whichever features
    for v, _, writers in jobs:
        if all(state.done(k, writers) for k in range(folds.n_folds)):
            log(f"{writers['zero_shot'].name}: unchanged, reusing "
                f"{writers['zero_shot'].folder}")
    progress = bar(total=folds.n_folds * cfg.meta_steps * len(cfg.variants),
                   desc="experts: LOPO folds x meta-steps", unit="step",
                   enabled=stage.progress)
    progress.update(cfg.meta_steps * sum(state.done(k, w) for k in range(folds.n_folds)
                                         for _, _, w in jobs))
    todo = [k for k in range(folds.n_folds) if not state.done(k)]
    done = run_folds(stage, todo, fold_state, train_fold, cfg.workers, progress, state)
    progress.close()
    fold_seconds = {v: [s[v] for s in done.values() if v in s] for v in cfg.variants}

    finished: dict[str, tuple[str, Result]] = {}
    for v, _, writers in jobs:
        for role, writer in writers.items():
            finished[writer.name] = (v, writer.finished() or _finish(writer, v, role, ds,
                                                                     cfg, seed))
    scores = {n: r.score()[0] for n, (_, r) in finished.items()}
    expert_auc = {n: per_expert_auc(r.array("oof_experts"), ds, folds).tolist()
                  for n, (_, r) in finished.items()}
    tta_loss = {n: r.meta["tta_mae_loss_mean"] for n, (_, r) in finished.items()
                if "tta_mae_loss_mean" in r.meta}
    topomap = plot_topomaps(expert_auc, ds.ch_names, stage.dir / "expert_topomap.png")
    if topomap is None:
        log(f"no topomap: channels {list(ds.ch_names)} are not all in the 10-20 template")
    metrics = {
        "lopo_window_auc": {n: s.score for n, s in scores.items()},
        "window_samples": {n: list(s.window) if s.window else None
                           for n, s in scores.items()},
        # [variant, init, training, tta], then True for an aligned variant
        "variants": {n: [v, VARIANTS[v].init, VARIANTS[v].training,
                         "tta" if r.meta["test_time_adaptation"] else "none"]
                     + ([True] if VARIANTS[v].align else [])
                     for n, (v, r) in finished.items()},
        "expert_auc_by_channel": {n: dict(zip(ds.ch_names, a)) for n, a in expert_auc.items()},
        "tta_mae_loss_on_masked_tokens": tta_loss,
        "parameters_per_expert": sum(v[0].numel() for v in trainer.bank.params.values()),
        "parameters_all_experts": sum(v.numel() for v in trainer.bank.params.values()),
        "tokens_per_sequence": enc_cfg.n_times, "stride": cfg.stride,
        "meta_steps": cfg.meta_steps,
        "median_fold_seconds": {v: float(np.median(s)) for v, s in fold_seconds.items() if s},
        "batching": cfg.batching, "predict_batching": cfg.predict_batching,
        "labels_shuffled": cfg.shuffle_labels, "topomap": topomap is not None}
    summary = ("experts LOPO window AUC: " + ", ".join(
        f"{n} {s:.4f}" for n, s in metrics["lopo_window_auc"].items()) +
        f"\n{metrics['parameters_per_expert']} parameters per expert, "
        f"{metrics['parameters_all_experts']} in all")
    return StageOutput(metrics, summary, evidence(metrics, ds.sfreq))


def _finish(writer: ResultWriter, variant: str, role: str, ds, cfg: ExpertsConfig,
            seed: int) -> Result:
    """Assemble a variant's result from its fold files, with what stage 03 adds to
    ``meta.json`` (combination weights per fold, the TTA loss before/after)."""
    parts = writer.load_parts()
    tta = role == "tta"
    meta = {"registry": "experts", "variant": variant,
            "init_and_training": [VARIANTS[variant].init, VARIANTS[variant].training],
            "test_time_adaptation": tta, "aligned": VARIANTS[variant].align,
            "params": dataclasses.asdict(cfg),
            "weights_by_fold": {f"S{s}": parts[s]["weights"].round(4).tolist()
                                for s in parts}}
    if tta:  # label-free evidence that the adaptation changed the weights
        before, after = np.concatenate([p["tta_mae_loss"] for p in parts.values()]).mean(0)
        meta["tta_mae_loss_mean"] = {"before": float(before), "after": float(after)}
    return writer.finish(ds, meta=meta, parts=parts, diagnostic=cfg.shuffle_labels,
                         seed=seed, config=dataclasses.asdict(cfg))


def per_expert_auc(oof_experts: np.ndarray, ds, folds) -> np.ndarray:
    """Each expert's out-of-fold trial-level AUC, per participant, averaged."""
    parts = folds.split_rows(oof_experts, "train")
    return np.mean([per_timepoint_auc(ds.train[s].y, parts[s])  # a column per expert
                    for s in folds.train_subjects], 0)


def evidence(m: dict, sfreq: float) -> str:
    """Stage 03's section of the run report."""
    rows = []
    for name, score in sorted(m["lopo_window_auc"].items(), key=lambda kv: -kv[1]):
        v, init, training, tta, *align = m["variants"][name]
        init += ", aligned input" if align else ""
        w = m["window_samples"][name]
        window = f"{1000 * w[0] / sfreq:.0f}-{1000 * (w[1] - 1) / sfreq:.0f}" if w else "none"
        rows.append(f"| `{name}` | {init} | {training} | {tta} | {score:.4f} | {window} |")
    lines = [
        f"16 channel experts ({m['parameters_per_expert']} parameters each, "
        f"{m['parameters_all_experts']} in all; {m['tokens_per_sequence']} tokens of "
        f"{m['stride']} samples), {m['meta_steps']} meta-steps per fold and variant"
        + (", **labels shuffled** (leakage alarm)" if m["labels_shuffled"] else "") + ".",
        "Held-out and test participants are predicted zero-shot, and (`_tta`) after "
        "unsupervised test-time adaptation with the MAE loss on their own trials.", "",
        "| result | init | training | test-time adaptation | LOPO window AUC | window (ms) |",
        "|---|---|---|---|---|---|", *rows, ""]
    for name, loss in m["tta_mae_loss_on_masked_tokens"].items():
        lines.append(f"- `{name}`: masked-token MSE on the participant's own trials "
                     f"{loss['before']:.3f} before adaptation, {loss['after']:.3f} after.")
    for name, auc in m["expert_auc_by_channel"].items():
        best = max(auc, key=auc.get)
        lines.append(f"- `{name}`: per-channel expert AUC {min(auc.values()):.3f}-"
                     f"{max(auc.values()):.3f}, best channel {best}.")
    if m["median_fold_seconds"]:
        lines.append("- median seconds per fold: " + ", ".join(
            f"{v} {s:.1f}" for v, s in m["median_fold_seconds"].items()) +
            f" (training `{m['batching']}`, prediction `{m['predict_batching']}`).")
    if m["topomap"]:
        lines += ["", "![per-channel expert AUC](expert_topomap.png)"]
    return "\n".join(lines)
