"""Stage 03 logic: 16 channel experts meta-learned with first-order MAML, under LOPO.

In fold k the experts are trained on the fold's training participants only; a *task* is
one of those participants (class-balanced support and query splits of its trials, see
:func:`sleepemo.meta.fomaml_step`). The held-out participant and the test participants
have no labels here: they are predicted **zero-shot** from the trained weights, and, for
``experts.tta_variants`` (MAE-initialised), also after **unsupervised test-time
adaptation** (a few SGD steps of the MAE reconstruction loss on that participant's own
trials; ``_tta`` rows).
The 16 experts' outputs are combined with weights fitted inside the fold: each expert's
trial-level AUC on the training participants (mean over participants), less 0.5, floored
at 0 (equal weights when no expert exceeds 0.5).

Variants (``experts.variants``, table rows ``experts_<variant>[_tta][_shuffled]``):
``mae_fomaml`` (the design), ``mae_supervised`` (the same experts and data, plain Adam on
class-balanced batches, as many gradient evaluations as FOMAML), ``random_fomaml``
(no pre-training). ``experts.shuffle_labels`` permutes labels within each training
participant (a leakage alarm: must score about 0.5).

Artefacts under ``<out>/03_experts/``::

    <name>/fold<k>.pt     the fold's trained parameters (stacked over experts); a killed
                          run does not train a fold again once this exists
    <name>/fold<k>.npz    oof, test (per timepoint), oof_trial, test_trial, oof_experts
                          (each expert's held-out trial logit), weights, train_auc,
                          losses, fingerprint
    <name>/oof.npy, test.npy (what lopo.csv and stage 07 read), oof_trial.npy,
           test_trial.npy, oof_experts.npy, meta.json
    metrics.json          scores, per-channel expert AUC, timing, parameter counts
    expert_topomap.png    per-channel expert AUC on the scalp (MNE)
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import EXPERT_VARIANTS, ConfigError, ExpertsConfig
from .io import atomic_path, read_json, write_json, write_npy, write_npz
from .lopo import code_hash, fingerprint
from .meta import fomaml_step, sgd
from .models.experts import (ExpertBank, folded_forward, make_experts, pool_time,
                             stacked_loop_forward, token_window)
from .models.mae import EncoderConfig, random_mask

STAGE_DIR = "03_experts"
# fields that do not change the trained weights (only predictions or speed)
_PREDICTION_ONLY = ("tta_steps", "tta_trials", "tta_lr", "weight_trials")
_NEITHER = ("variants", "tta_variants", "predict_batch", "batching", "predict_batching",
            "device", "num_threads")


# ------------------------------------------------------------------ batched experts
def make_forward(bank: ExpertBank, batching: str, n_heads: int, window: tuple[int, int]):
    """``forward(params, x, mask=None) -> (time, trial, reconstruction)`` for all experts
    on stacked parameters: ``vmap`` over ``functional_call``, ``folded`` (experts folded
    into the batch, fused attention) or ``loop`` (one expert after another). All three
    compute the same function (tested); which is fastest depends on tokens, gradients
    and device (``bench/bench_experts.py``, README)."""
    if batching == "folded":
        return lambda p, x, mask=None: folded_forward(p, x, n_heads, window, mask)
    if batching == "vmap":
        return lambda p, x, mask=None: bank(x, p, mask)
    if batching == "loop":
        return lambda p, x, mask=None: stacked_loop_forward(bank._base, p, bank.buffers, x,
                                                            mask)
    raise ValueError(f"unknown batching {batching!r}")


def classification_loss(forward, time_weight: float = 1.0):
    """Per-timepoint and trial BCE, summed over experts (each expert's gradient comes
    from its own loss only)."""
    bce = F.binary_cross_entropy_with_logits

    def loss(params, batch):
        x, y = batch
        t, r, _ = forward(params, x)
        return t.shape[0] * (time_weight * bce(t, y[None, :, None].expand_as(t))
                             + bce(r, y[None].expand_as(r)))
    return loss


def reconstruction_loss(forward):
    """The MAE loss (masked tokens only), summed over experts. No labels."""
    def loss(params, batch):
        x, mask = batch
        _, _, rec = forward(params, x, mask)
        err = ((rec - x.transpose(0, 1)) ** 2).mean(-1)
        m = mask.transpose(0, 1).to(err.dtype)
        return (err * m).sum() / m.sum() * err.shape[0]
    return loss


# ------------------------------------------------------------------ sampling
def balanced(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n // 2`` trials of each class (with replacement only if a class has fewer)."""
    out = []
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        if len(idx) == 0:
            raise ValueError("a participant without trials of both classes cannot form a task")
        out.append(rng.choice(idx, size=n // 2, replace=len(idx) < n // 2))
    return np.concatenate(out)


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


class ExpertTrainer:
    """Everything a fold needs: features, the initialisations and the batched forward.

    ``feats`` holds every participant's pooled band features (label-free); labels are
    only ever passed in explicitly, for the fold's training participants.
    """

    def __init__(self, cfg: ExpertsConfig, feats: dict, enc_cfg: EncoderConfig,
                 mae_state: tuple[dict, dict] | None, n_times: int, device: torch.device):
        self.cfg, self.feats, self.n_times, self.dev = cfg, feats, n_times, device
        self.window = token_window(tuple(cfg.window), cfg.stride)
        self.enc_cfg = enc_cfg
        self.mae_state = mae_state
        n_chans = next(iter(feats.values())).shape[1]
        self.n_experts = n_chans
        self.bank = ExpertBank(make_experts(n_chans, enc_cfg, window=self.window))
        self.forward = make_forward(self.bank, cfg.batching, enc_cfg.n_heads, self.window)
        self.forward_no_grad = make_forward(self.bank, cfg.predict_batching, enc_cfg.n_heads,
                                            self.window)
        self.cls_loss = classification_loss(self.forward, cfg.time_loss_weight)
        self.rec_loss = reconstruction_loss(self.forward)

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

    @torch.no_grad()
    def predict(self, params: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits of every expert for trials ``x`` (n_trials, n_experts, n_tokens,
        n_bands): time (n_experts, n_trials, n_tokens), trial (n_experts, n_trials)."""
        times, trials = [], []
        b = self.cfg.predict_batch
        for i in range(0, len(x), b):
            t, r, _ = self.forward_no_grad(params, torch.from_numpy(
                np.ascontiguousarray(x[i:i + b])).to(self.dev))
            times.append(t.cpu().numpy())
            trials.append(r.cpu().numpy())
        return np.concatenate(times, 1), np.concatenate(trials, 1)

    def fit_weights(self, params: dict, labels: dict[int, np.ndarray],
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Combination weights from the training participants (see module docstring);
        returns (weights, per-expert AUC on the training participants)."""
        from .metric import per_timepoint_auc

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
        """Test-time adaptation: SGD on the MAE loss over ``subject``'s own trials (no
        labels). Returns the adapted parameters and the MAE loss on the first batch
        before and after (label-free evidence that the adaptation did something)."""
        cfg = self.cfg
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        n = len(self.feats[subject])
        batches = []
        for _ in range(cfg.tta_steps):
            x = self.tensor(subject, rng.choice(n, size=min(cfg.tta_trials, n), replace=False))
            mask = random_mask(len(x) * x.shape[1], x.shape[2], ratio, gen)
            batches.append((x, mask.reshape(x.shape[:3]).to(self.dev)))
        fast = sgd(self.rec_loss, params, batches, cfg.tta_lr)
        with torch.no_grad():
            before, after = (self.rec_loss(p, batches[0]).item() / self.n_experts
                             for p in (params, fast))
        return fast, before, after

    def combine(self, time_logits: np.ndarray, trial_logits: np.ndarray,
                weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean of the experts' logits -> probabilities per timepoint (tokens
        interpolated back to samples) and per trial."""
        t = torch.from_numpy(np.tensordot(weights, time_logits, 1))[:, None]
        if t.shape[-1] != self.n_times:
            t = F.interpolate(t, size=self.n_times, mode="linear", align_corners=False)
        p_time = torch.sigmoid(t[:, 0]).numpy().astype(np.float32)
        p_trial = torch.sigmoid(torch.from_numpy(np.tensordot(weights, trial_logits, 1)))
        return p_time, p_trial.numpy().astype(np.float32)


# ------------------------------------------------------------------ the stage
def _save_params(path: Path, params: dict, fp: str) -> None:
    with atomic_path(path) as tmp:
        torch.save({"params": {k: v.cpu() for k, v in params.items()}, "fingerprint": fp}, tmp)


def _load_params(path: Path, fp: str, device) -> dict | None:
    if not path.is_file():
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    return state["params"] if state.get("fingerprint") == fp else None


def uses_tta(cfg: ExpertsConfig, variant: str) -> bool:
    return variant in cfg.tta_variants and cfg.tta_steps > 0


def output_names(cfg: ExpertsConfig, variant: str) -> tuple[str, str | None]:
    """Table names of a variant's zero-shot and (MAE init + ``tta``) adapted results."""
    suffix = "_shuffled" if cfg.shuffle_labels else ""
    tta = uses_tta(cfg, variant)
    return f"experts_{variant}{suffix}", (f"experts_{variant}_tta{suffix}" if tta else None)


def fold_labels(ds, folds, k: int, shuffle: bool, seed: int) -> dict[int, np.ndarray]:
    """Labels of fold k's training participants: the only labels fold k may use."""
    labels = {s: np.asarray(ds.train[s].y) for s in folds.train_of(k)}
    if shuffle:
        rng = np.random.default_rng([seed, k, 77])
        labels = {s: rng.permutation(y) for s, y in labels.items()}
    return labels


def run_fold(trainer: ExpertTrainer, variant: str, k: int, held: int, test_subjects,
             labels: dict, seed: int, mask_ratio: float, ckpt: Path | None = None,
             train_fp: str = "", progress=None) -> dict:
    """Train (or load) fold k's experts and predict; returns the arrays of its outputs:
    ``{"zero_shot": {...}, "tta": {...} (MAE init with TTA only), "losses": ...}``."""
    if held in labels:
        raise ValueError(f"participant {held} is held out in fold {k}: its labels must not "
                         "reach the training")
    init, method = EXPERT_VARIANTS[variant]
    vid = list(EXPERT_VARIANTS).index(variant)
    params = _load_params(ckpt, train_fp, trainer.dev) if ckpt else None
    losses = np.zeros(0)
    if params is None:
        # same initialisation seed for every variant of a fold: they differ in training only
        start = trainer.init_params(init, seed * 1000 + k)
        res = trainer.train(start, method, labels, np.random.default_rng([seed, k, vid]),
                            progress)
        params, losses = res.params, res.losses
        if ckpt:
            _save_params(ckpt, params, train_fp)
    weights, train_auc = trainer.fit_weights(params, labels,
                                             np.random.default_rng([seed, k, vid, 1]))

    def outputs(adapt: bool) -> dict:
        out = {"weights": weights, "train_auc": train_auc}
        for role, subjects in (("oof", [held]), ("test", list(test_subjects))):
            if adapt:  # each participant gets its own adapted weights
                logits = []
                for s in subjects:
                    fast, before, after = trainer.adapt_unsupervised(params, s, mask_ratio,
                                                                     (seed, k, vid, s))
                    logits.append(trainer.predict(fast, trainer.feats[s]))
                    out.setdefault("tta_mae_loss", []).append([before, after])
                t, r = (np.concatenate([lg[i] for lg in logits], 1) for i in (0, 1))
            else:
                t, r = trainer.predict(params, np.concatenate([trainer.feats[s]
                                                               for s in subjects]))
            out[role], out[f"{role}_trial"] = trainer.combine(t, r, weights)
            out[f"{role}_experts"] = r.T.astype(np.float32)
        return out

    return {"zero_shot": outputs(False),
            "tta": outputs(True) if uses_tta(trainer.cfg, variant) else None,
            "losses": losses}


def train_fingerprint(cfg: ExpertsConfig, variant: str, seed: int, data_fp: str,
                      band_key: str, mae_fp: str | None) -> str:
    train_cfg = {k: v for k, v in dataclasses.asdict(cfg).items()
                 if k not in _PREDICTION_ONLY + _NEITHER}
    return fingerprint(stage=STAGE_DIR, variant=variant, experts=train_cfg, seed=seed,
                       data=data_fp, bands=band_key, mae=mae_fp, code=code_hash())


def run_stage(stage, log=print) -> dict:
    """Everything stage 03 does; returns the metrics it writes to ``metrics.json``."""
    import resource

    from tqdm.auto import tqdm

    from .features import BandFeatureCache
    from .pretrain import device_of, encoder_config, flush_denormals, load_mae_weights
    from .report import score_oof, write_report

    flush_denormals()  # first, before torch creates its thread pool (see pretrain)
    cfg, mcfg, seed = stage.cfg.experts, stage.cfg.mae, stage.cfg.seed
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    t_start = time.perf_counter()
    ds = stage.dataset()
    folds = stage.folds(ds)
    if ds.n_times % cfg.stride:
        raise ConfigError(f"experts.stride {cfg.stride} does not divide the {ds.n_times} "
                          "samples of a trial")
    subjects = list(folds.train_subjects) + list(folds.test_subjects)
    cache = BandFeatureCache(stage.out / "cache" / "band_features", folds.data_fingerprint,
                             mcfg.bands, mcfg.feature).build(
        {s: ds.subject(s).X for s in subjects}, ds.sfreq, stage.progress)
    feats = {s: pool_time(np.asarray(cache.load(s), dtype=np.float32), cfg.stride)
             for s in subjects}

    mae_state, mae_fp = None, None
    enc_values = dataclasses.asdict(encoder_config(mcfg, ds.n_times, ds.n_chans))
    if any(EXPERT_VARIANTS[v][0] == "mae" for v in cfg.variants):
        enc, head, info = load_mae_weights(stage.out / "02_mae")
        if info.get("band_cache") != cache.key:
            raise FileNotFoundError(
                f"{stage.out / '02_mae'} was trained on other band features than the "
                "current mae: settings; run src/02_pretrain_mae.py again")
        mae_state, mae_fp, enc_values = (enc, head), info["fingerprint"], info["encoder"]
    enc_cfg = EncoderConfig(**{**enc_values, "n_times": ds.n_times // cfg.stride})
    dev = device_of(cfg)
    trainer = ExpertTrainer(cfg, feats, enc_cfg, mae_state, ds.n_times, dev)
    run_dir = stage.out / STAGE_DIR

    jobs = []  # (variant, zero-shot name, tta name, train fp, prediction fp)
    for v in cfg.variants:
        zs, tta = output_names(cfg, v)
        tfp = train_fingerprint(cfg, v, seed, folds.data_fingerprint, cache.key,
                                mae_fp if EXPERT_VARIANTS[v][0] == "mae" else None)
        pfp = fingerprint(train=tfp, tta=uses_tta(cfg, v), mask_ratio=mcfg.mask_ratio,
                          **{key: getattr(cfg, key) for key in _PREDICTION_ONLY})
        jobs.append((v, zs, tta, tfp, pfp))

    def done(k, zs, tta, pfp):
        return all(_npz_fp(run_dir / n / f"fold{k}.npz") == pfp for n in (zs, tta) if n)

    for v, zs, tta, tfp, pfp in jobs:
        if all(done(k, zs, tta, pfp) for k in range(folds.n_folds)):
            log(f"{zs}: unchanged, reusing {run_dir / zs}")
    steps_per_fold = cfg.meta_steps * len(cfg.variants)
    bar = tqdm(total=folds.n_folds * steps_per_fold, desc="experts: LOPO folds x meta-steps",
               unit="step", disable=not stage.progress)
    fold_seconds = {v: [] for v in cfg.variants}
    for k in range(folds.n_folds):
        held = folds.held_out(k)
        for v, zs, tta, tfp, pfp in jobs:
            if done(k, zs, tta, pfp):
                bar.update(cfg.meta_steps)
                continue
            bar.set_postfix(fold=k, held_out=f"S{held}", variant=v)
            t0 = time.perf_counter()
            res = run_fold(trainer, v, k, held, folds.test_subjects,
                           fold_labels(ds, folds, k, cfg.shuffle_labels, seed), seed,
                           mcfg.mask_ratio, ckpt=run_dir / zs / f"fold{k}.pt", train_fp=tfp,
                           progress=lambda: bar.update(1))
            fold_seconds[v].append(time.perf_counter() - t0)
            for name, out in ((zs, res["zero_shot"]), (tta, res["tta"])):
                if name:
                    write_npz(run_dir / name / f"fold{k}.npz", **out, losses=res["losses"],
                              fingerprint=np.array(pfp))
        bar.refresh()
    bar.close()

    scores, expert_auc, tta_loss = {}, {}, {}
    for v, zs, tta, tfp, pfp in jobs:
        for name in (zs, tta):
            if not name:
                continue
            res, meta = _assemble(run_dir / name, name, v, ds, folds, cfg, seed, pfp,
                                  tta=name == tta)
            scores[name] = score_oof(res["oof"], ds, folds).score
            expert_auc[name] = per_expert_auc(res["oof_experts"], ds, folds).tolist()
            if "tta_mae_loss_mean" in meta:
                tta_loss[name] = meta["tta_mae_loss_mean"]
    if plot_topomaps(expert_auc, ds.ch_names, run_dir / "expert_topomap.png") is None:
        log(f"no topomap: channels {list(ds.ch_names)} are not all in the 10-20 template")
    metrics = {
        "lopo_window_auc": scores,
        "expert_auc_by_channel": {n: dict(zip(ds.ch_names, a)) for n, a in expert_auc.items()},
        "tta_mae_loss_on_masked_tokens": tta_loss,
        "parameters_per_expert": sum(v[0].numel() for v in trainer.bank.params.values()),
        "parameters_all_experts": sum(v.numel() for v in trainer.bank.params.values()),
        "tokens_per_sequence": enc_cfg.n_times, "stride": cfg.stride,
        "median_fold_seconds": {v: float(np.median(s)) for v, s in fold_seconds.items() if s},
        "batching": cfg.batching, "predict_batching": cfg.predict_batching,
        "device": str(dev), "torch_threads": torch.get_num_threads(),
        "labels_shuffled": cfg.shuffle_labels,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "stage_seconds": round(time.perf_counter() - t_start, 1)}
    write_json(run_dir / "metrics.json", metrics)
    write_report(stage.out, ds, folds)
    return metrics


def _npz_fp(path: Path) -> str | None:
    if not path.is_file():
        return None
    with np.load(path) as z:
        return str(z["fingerprint"])


def _assemble(folder: Path, name: str, variant: str, ds, folds, cfg: ExpertsConfig,
              seed: int, fp: str, tta: bool) -> tuple[dict, dict]:
    """Fold files -> oof (folds.json row order) and test (mean of the fold models);
    returns the arrays and the written ``meta.json``."""
    meta_path = folder / "meta.json"
    keys = ("oof", "oof_trial", "oof_experts", "test", "test_trial")
    if meta_path.is_file() and (meta := read_json(meta_path)).get("fingerprint") == fp:
        return {k: np.load(folder / f"{k}.npy") for k in keys}, meta
    parts = {}
    for k in range(folds.n_folds):
        with np.load(folder / f"fold{k}.npz") as z:
            parts[folds.held_out(k)] = {key: z[key] for key in z.files}
    out = {key: np.concatenate([parts[s][key] for s in folds.train_subjects])
           for key in ("oof", "oof_trial", "oof_experts")}
    for key in ("test", "test_trial"):
        out[key] = np.mean([p[key] for p in parts.values()], axis=0).astype(np.float32)
    for key, arr in out.items():
        write_npy(folder / f"{key}.npy", arr)
    meta = {"model": name, "registry": "experts", "variant": variant,
            "init_and_training": list(EXPERT_VARIANTS[variant]),
            "test_time_adaptation": tta, "params": dataclasses.asdict(cfg), "seed": seed,
            "fingerprint": fp, "diagnostic": bool(cfg.shuffle_labels),
            "test_predictions": "mean of fold models",
            "weights_by_fold": {f"S{s}": parts[s]["weights"].round(4).tolist()
                                for s in parts}}
    if tta:  # label-free evidence that the adaptation changed the weights
        before, after = np.concatenate([p["tta_mae_loss"] for p in parts.values()]).mean(0)
        meta["tta_mae_loss_mean"] = {"before": float(before), "after": float(after)}
    write_json(meta_path, meta)
    return out, meta


def per_expert_auc(oof_experts: np.ndarray, ds, folds) -> np.ndarray:
    """Each expert's out-of-fold trial-level AUC, per participant, averaged."""
    from .metric import per_timepoint_auc
    from .report import split_by_subject

    parts = split_by_subject(oof_experts, folds.train_subjects, folds.n_trials)
    return np.mean([per_timepoint_auc(ds.train[s].y, parts[s])  # a column per expert
                    for s in folds.train_subjects], 0)


def plot_topomaps(values: dict[str, list], ch_names, path: Path) -> Path | None:
    """One scalp map of per-channel expert AUC per result (MNE, template 10-20 positions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mne

    from .montage import montage
    from .report import _save

    if not values:
        return None
    try:
        info = mne.create_info(list(ch_names), 100.0, "eeg")
        info.set_montage(montage())
    except ValueError:  # channels without template positions (e.g. generic names)
        return None
    span = max(0.02, max(abs(np.asarray(v) - 0.5).max() for v in values.values()))
    fig, axes = plt.subplots(1, len(values), figsize=(3.0 * len(values), 3.2), squeeze=False)
    for ax, (name, v) in zip(axes[0], values.items()):
        im, _ = mne.viz.plot_topomap(np.asarray(v), info, axes=ax, show=False, cmap="RdBu_r",
                                     vlim=(0.5 - span, 0.5 + span), names=list(ch_names))
        ax.set_title(name.replace("experts_", ""), fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.7, label="LOPO trial AUC of the expert")
    fig.suptitle("Channel experts: out-of-fold AUC per channel", fontsize=10)
    return _save(fig, path)
