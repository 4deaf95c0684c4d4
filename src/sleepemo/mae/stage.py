"""Stage 02: band features and masked-autoencoder pre-training on every trial, no labels.

Training sequences are the channel-sequences of the test participants and of the
training participants except ``n_val_subjects`` of them, which are kept out so that the
reconstruction error is measured on people the encoder never saw. The encoder never reads
a label, so one encoder serves every LOPO fold; only the linear probes, fitted inside each
fold, use the fold's training labels.

Artefacts under ``<out>/02_mae/``::

    ckpt/last.pt      model, optimiser, scheduler, epoch, history (every epoch, atomic)
    ckpt/config.json  the resolved stage config, seed and fingerprint of the checkpoint
    encoder.pt        the trained encoder's state dict (stage 03 loads it with
    mae_head.pt       sleepemo.mae.model.load_mae_weights); the reconstruction head
                      (stage 03's test-time adaptation uses it)
    run.json          resolved stage config, seed, fingerprint, validation participants
    metrics.json      reconstruction errors, probe scores, throughput, wall time
    evidence.md       the same as tables, for the run's report
    mae_probe/, band_probe/   LOPO linear probes (results of the predictions contract)

and ``<out>/cache/mae_tokens_s<stride>/``: the encoder's output for every token of every
trial (:class:`~sleepemo.mae.model.TokenCache`, label-free), which the probe averages
over its window and stages 04 and 05 pool to their token rates without encoding again.

A killed run restarts from ``ckpt/last.pt``: the data order and masks of epoch e come
from a generator seeded by (seed, e), so the result equals an uninterrupted run's.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from sleepemo.baselines.lopo import lopo_fingerprint, run_lopo
from sleepemo.config import MAEConfig, fields_affecting
from sleepemo.features import pool_time
from sleepemo.mae.inputs import band_cache, band_window, built_band_cache, mae_window
from sleepemo.io import read_json, write_json
from sleepemo.mae.model import (EncoderConfig, MaskedAutoencoder, TokenCache, encoder_config,
                                encoder_saved, n_parameters, random_mask, save_encoder)
from sleepemo.pipeline.artefacts import (Planned, code_hash, describe as fingerprint_parts,
                                         fingerprint, load_checkpoint, save_checkpoint)
from sleepemo.pipeline.stage import Stage, StageOutput
from sleepemo.progress import bar


class Sequences:
    """Channel-sequences of several participants' cached band features, pooled into
    tokens of ``stride`` timepoints.

    Row i of ``index`` is (participant position, trial, channel).
    """

    def __init__(self, feats: list[np.ndarray], stride: int = 1):
        self.feats = feats
        self.stride = stride
        n_chans = feats[0].shape[1]
        rows = [np.stack(np.meshgrid([p], np.arange(len(f)), np.arange(n_chans),
                                     indexing="ij"), -1).reshape(-1, 3)
                for p, f in enumerate(feats)]
        self.index = np.concatenate(rows)

    def __len__(self) -> int:
        return len(self.index)

    def get(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Band features (batch, n_tokens, n_bands) and channel ids (batch,)."""
        idx = self.index[rows]
        x = np.empty((len(idx),) + self.feats[0].shape[2:], dtype=np.float32)
        for p in np.unique(idx[:, 0]):
            sel = idx[:, 0] == p
            x[sel] = self.feats[p][idx[sel, 1], idx[sel, 2]]
        return torch.from_numpy(pool_time(x, self.stride)), \
            torch.from_numpy(idx[:, 2].astype(np.int64))


def train_mae(cfg: MAEConfig, train_seqs: Sequences, val_seqs: Sequences, enc_cfg:
              EncoderConfig, run_dir: Path, seed: int, run_fp: str, dev: torch.device,
              progress: bool = True, log=print) -> MaskedAutoencoder:
    """Train (or resume) the MAE; returns the model with the last epoch's weights."""
    from timm.scheduler import CosineLRScheduler

    torch.manual_seed(seed)
    model = MaskedAutoencoder(enc_cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = min(cfg.seqs_per_epoch or len(train_seqs), len(train_seqs))
    steps = math.ceil(per_epoch / cfg.batch_size)
    sched = CosineLRScheduler(opt, t_initial=cfg.epochs * steps, lr_min=cfg.lr * 0.01,
                              warmup_t=int(cfg.warmup_epochs * steps),
                              warmup_lr_init=cfg.lr * 0.01, t_in_epochs=False)
    ckpt = run_dir / "ckpt" / "last.pt"
    write_json(ckpt.parent / "config.json", {"mae": dataclasses.asdict(cfg), "seed": seed,
                                             "encoder": dataclasses.asdict(enc_cfg),
                                             "fingerprint": run_fp})
    start, history = 0, []
    state = load_checkpoint(ckpt, run_fp, dev)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = state["epoch"] + 1, state["history"]
        log(f"MAE: resuming after epoch {start} of {cfg.epochs} from {ckpt}")
    elif ckpt.is_file():
        log(f"MAE: {ckpt} is from another config or data; starting afresh")

    # fixed validation batch: same sequences and masks every epoch
    g_val = torch.Generator().manual_seed(seed * 7919 + 1)
    val_rows = torch.randperm(len(val_seqs), generator=g_val)[:min(2048, len(val_seqs))]
    xv, cv = val_seqs.get(val_rows.numpy())
    mv = random_mask(len(xv), enc_cfg.n_times, cfg.mask_ratio, g_val)

    for epoch in range(start, cfg.epochs):
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        rows = torch.randperm(len(train_seqs), generator=g)[:per_epoch].numpy()
        model.train()
        losses, t0 = [], time.perf_counter()
        steps_bar = bar(range(steps), desc=f"MAE epoch {epoch + 1}/{cfg.epochs}",
                        unit="batch", enabled=progress, leave=False)
        for step in steps_bar:
            batch = rows[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x, c = train_seqs.get(batch)
            mask = random_mask(len(x), enc_cfg.n_times, cfg.mask_ratio, g)
            loss = model.loss(x.to(dev), mask.to(dev), c.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step_update(epoch * steps + step + 1)
            losses.append(loss.item())
            steps_bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        seconds = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            val = float(model.loss(xv.to(dev), mv.to(dev), cv.to(dev)))
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                        "val_loss": val, "seconds": round(seconds, 2),
                        "seqs_per_second": round(len(rows) / seconds, 1),
                        "lr": opt.param_groups[0]["lr"]})
        log(f"MAE epoch {epoch + 1}/{cfg.epochs}: train {history[-1]['train_loss']:.4f} "
            f"val {val:.4f} ({history[-1]['seqs_per_second']:.0f} sequences/s)")
        save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                               "scheduler": sched.state_dict(), "epoch": epoch,
                               "history": history, "seed": seed}, run_fp)
    model.history = history
    return model


# ------------------------------------------------------------------ evaluation
def reconstruction_report(model: MaskedAutoencoder, seqs: Sequences, ratio: float,
                          n_max: int, seed: int, batch: int = 512) -> dict:
    """Masked-point MSE of the MAE and of two references on the same masked points.

    References: each band's mean over the visible timepoints of the same sequence, and
    linear interpolation between the nearest visible timepoints (constant beyond the
    first and last visible one).
    """
    g = torch.Generator().manual_seed(seed * 31 + 5)
    rows = torch.randperm(len(seqs), generator=g)[:min(n_max, len(seqs))].numpy()
    dev = next(model.parameters()).device
    sums = {"mae": 0.0, "band_mean": 0.0, "linear_interpolation": 0.0}
    count = 0
    model.eval()
    for i in range(0, len(rows), batch):
        x, c = seqs.get(rows[i:i + batch])
        mask = random_mask(len(x), x.shape[1], ratio, g)
        with torch.no_grad():
            rec = model(x.to(dev), mask.to(dev), c.to(dev)).cpu().numpy()
        xn, mn = x.numpy(), mask.numpy()
        vis = ~mn
        band_mean = (xn * vis[..., None]).sum(1, keepdims=True) / vis.sum(1)[:, None, None]
        interp = np.empty_like(xn)
        t = np.arange(xn.shape[1])
        for k in range(len(xn)):
            for b in range(xn.shape[2]):
                interp[k, :, b] = np.interp(t, t[vis[k]], xn[k, vis[k], b])
        for name, pred in (("mae", rec), ("band_mean", np.broadcast_to(band_mean, xn.shape)),
                           ("linear_interpolation", interp)):
            sums[name] += float((((pred - xn) ** 2).mean(-1))[mn].sum())
        count += int(mn.sum())
    return {k: v / count for k, v in sums.items()} | {"masked_points": count,
                                                      "sequences": int(len(rows))}


def run_fingerprint(cfg: MAEConfig, data_fp: str, seed: int, val_subjects) -> str:
    return fingerprint(stage="mae", mae=fields_affecting(cfg, "weights"), data=data_fp, seed=seed,
                       val=list(val_subjects), code=code_hash(__name__))


#: the linear probes: result name -> what they read
PROBES = ("mae_probe", "band_probe")


def probe_settings(cfg: MAEConfig, seed: int, run_fp: str, band_key: str) -> dict:
    """Each probe's :func:`~sleepemo.baselines.lopo.run_lopo` arguments but the data and the
    features themselves: its features' key (the encoder's fingerprint or the band
    features' key, and the window), the model and its parameters, the recipe."""
    w = tuple(cfg.probe_window)
    return {name: dict(feature_key=key, model="linear_probe", params={"C": cfg.probe_C},
                       seed=seed, code_from=(__name__,),
                       recipe={"features": name.replace("probe", "window"),
                               "window": list(w)})
            for name, key in zip(PROBES, (f"{run_fp}:{w}", f"{band_key}:{w}"))}


def fingerprints(stage: Stage, planned: dict | None = None) -> list[Planned]:
    """The encoder (``run.json``) and the probes as :func:`run` would write them now
    (:mod:`sleepemo.pipeline.plan`)."""
    cfg, seed = stage.cfg.mae, stage.cfg.seed
    folds = stage.folds()
    run_fp = run_fingerprint(cfg, folds.data_fingerprint, seed,
                             choose_val_subjects(folds.train_subjects, cfg.n_val_subjects,
                                                 seed))
    band_key = band_cache(stage.out, folds.data_fingerprint, cfg).key
    probes = probe_settings(cfg, seed, run_fp, band_key)
    return [Planned(stage.spec.name, "encoder", run_fp, record="run.json", folds=False),
            *[Planned(stage.spec.name, name, lopo_fingerprint(
                p["model"], p["params"], seed, folds.data_fingerprint, p["feature_key"],
                p["code_from"])) for name, p in probes.items()]]


def choose_val_subjects(train_subjects, n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed + 2024)
    return sorted(int(s) for s in rng.choice(list(train_subjects), size=n, replace=False))


def describe(model: MaskedAutoencoder) -> dict:
    return {"encoder_parameters": n_parameters(model.encoder),
            "encoder_parameters_without_channel_embedding":
                n_parameters(model.encoder) - (model.encoder.chan.weight.numel()
                                               if model.encoder.chan is not None else 0),
            "mae_parameters": n_parameters(model)}


def run(stage: Stage) -> StageOutput:
    """Everything stage 02 does (see the module docstring)."""
    cfg, seed, log = stage.cfg.mae, stage.cfg.seed, stage.log
    ds = stage.dataset()
    folds = stage.folds(ds)
    subjects = list(folds.train_subjects) + list(folds.test_subjects)
    cache = built_band_cache(stage.out, ds, folds, cfg, stage.progress)
    feats = {s: cache.load(s) for s in subjects}

    val = choose_val_subjects(folds.train_subjects, cfg.n_val_subjects, seed)
    pre = [s for s in subjects if s not in val]
    enc_cfg = encoder_config(cfg, ds.n_times, ds.n_chans)
    run_dir, dev = stage.dir, stage.device
    run_fp = run_fingerprint(cfg, folds.data_fingerprint, seed, val)
    val_seqs = Sequences([feats[s] for s in val], cfg.stride)
    if encoder_saved(run_dir, run_fp):
        log(f"MAE: unchanged, reusing {run_dir / 'encoder.pt'}")
        model = MaskedAutoencoder(enc_cfg)  # the last checkpoint holds the final weights
        model.load_state_dict(torch.load(run_dir / "ckpt" / "last.pt", map_location="cpu",
                                         weights_only=True)["model"])
        model = model.to(dev)
        history = read_json(run_dir / "run.json")["history"]
    else:
        model = train_mae(cfg, Sequences([feats[s] for s in pre], cfg.stride), val_seqs,
                          enc_cfg, run_dir, seed, run_fp, dev, stage.progress, log)
        history = model.history
        save_encoder(model, run_dir, {
            "fingerprint": run_fp, "seed": seed, "config": dataclasses.asdict(cfg),
            "encoder": dataclasses.asdict(enc_cfg), "val_subjects": val,
            "pretrain_subjects": pre, "band_cache": cache.key, "history": history,
            "labels_used": False, "fingerprint_parts": fingerprint_parts(run_fp)})
    recon = reconstruction_report(model, val_seqs, cfg.mask_ratio, cfg.eval_seqs, seed)

    w = tuple(cfg.probe_window)

    # every trial's tokens, kept: the probe reads them here, and stages 04 and 05 pool
    # them to their own token rate instead of encoding every trial again
    tokens = TokenCache.for_run(stage.out, cache, subjects, cfg.stride, stage.progress)

    def embeddings():
        return {s: mae_window(tokens.load(s), w, cfg.stride) for s in subjects}

    def band_means():
        return {s: band_window(feats[s], w) for s in subjects}

    probes = {}
    for (name, settings), fn in zip(probe_settings(cfg, seed, run_fp, cache.key).items(),
                                    (embeddings, band_means)):
        res = run_lopo(name, ds, folds, stage.out, stage.spec.name, features=fn,
                       progress=stage.progress, log=log, **settings)
        probes[name] = res.score()[0].score

    speeds = [h["seqs_per_second"] for h in history]
    metrics = {
        "reconstruction_mse_on_held_out_participants": recon,
        "val_subjects": val,
        "mae_beats_band_mean": recon["mae"] < recon["band_mean"],
        "mae_beats_linear_interpolation": recon["mae"] < recon["linear_interpolation"],
        "linear_probe_lopo_window_auc": probes,
        "probe_window_samples": list(w),
        "training_seqs_per_second_median": float(np.median(speeds)) if speeds else None,
        "history": history, "tokens_per_sequence": enc_cfg.n_times, "stride": cfg.stride,
        **describe(model)}
    summary = (f"masked-point MSE on held-out participants {val}: MAE {recon['mae']:.4f}"
               f" | band mean {recon['band_mean']:.4f} | linear interpolation "
               f"{recon['linear_interpolation']:.4f}\nlinear probe LOPO window AUC: " +
               ", ".join(f"{k} {v:.4f}" for k, v in probes.items()))
    return StageOutput(metrics, summary, evidence(metrics, cfg))


def evidence(m: dict, cfg: MAEConfig) -> str:
    """Stage 02's section of the run report."""
    r = m["reconstruction_mse_on_held_out_participants"]
    h = m["history"]
    w = m["probe_window_samples"]
    last = h[-1] if h else {}
    return "\n".join([
        f"Masked autoencoder over one channel's band-feature sequence "
        f"({m['tokens_per_sequence']} tokens of {m['stride']} samples x {len(cfg.bands)} "
        f"band envelopes" + (f" + the {cfg.evoked_band[0]:g}-{cfg.evoked_band[1]:g} Hz "
                             "evoked waveform" if cfg.evoked_tokens else "") +
        f"), {m['encoder_parameters']} encoder parameters, {len(h)} epochs, "
        f"trained without labels on every participant except "
        f"{', '.join(f'S{s}' for s in m['val_subjects'])}.",
        "",
        f"Masked-token reconstruction error on those held-out participants "
        f"({r['sequences']} sequences, {r['masked_points']} masked tokens, the same for all "
        f"three; features are z-scored, so 1.0 is their variance):",
        "",
        "| predictor of a masked token | MSE |", "|---|---|",
        f"| MAE | **{r['mae']:.4f}** |",
        f"| linear interpolation between the nearest visible tokens | "
        f"{r['linear_interpolation']:.4f} |",
        f"| the band's mean over the sequence's visible tokens | {r['band_mean']:.4f} |",
        "",
        f"Linear probes under LOPO (per-participant z-scored features averaged over samples "
        f"{w[0]}-{w[1]}, L2 logistic regression fitted inside each fold, broadcast):",
        "",
        "| features | LOPO window AUC |", "|---|---|",
        *[f"| `{k}` | {v:.4f} |" for k, v in m["linear_probe_lopo_window_auc"].items()],
        "",
        f"Training: last epoch train loss {last.get('train_loss', float('nan')):.4f}, "
        f"validation loss {last.get('val_loss', float('nan')):.4f}; median throughput "
        f"{m['training_seqs_per_second_median'] or 0:.0f} sequences/s.",
    ])
