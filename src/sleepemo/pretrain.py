"""Stage 02 logic: masked-autoencoder pre-training on every trial, without labels.

Training sequences are the channel-sequences of the test participants and of the
training participants except ``n_val_subjects`` of them, which are kept out so that the
reconstruction error is measured on people the encoder never saw. No label is read
anywhere in this module, so one encoder serves every LOPO fold.

Artefacts under ``<out>/02_mae/``::

    ckpt/last.pt      model, optimiser, scheduler, epoch, history (every epoch, atomic)
    ckpt/config.json  the resolved stage config, seed and fingerprint of the checkpoint
    encoder.pt        the trained encoder's state dict (what stage 03 loads)
    mae_head.pt       the reconstruction head (stage 03's test-time adaptation uses it)
    run.json          resolved stage config, seed, fingerprint, validation participants
    metrics.json      reconstruction errors, probe scores, throughput, wall time
    mae_probe/, band_probe/   LOPO linear probes (oof.npy, test.npy, meta.json)

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

from .config import ConfigError, MAEConfig
from .io import atomic_path, read_json, write_json
from .lopo import code_hash, fingerprint
from .features import pool_time, token_window
from .models.mae import EncoderConfig, MaskedAutoencoder, n_parameters, random_mask


def flush_denormals() -> bool:
    """Treat denormal floats as zero on the CPU (FTZ/DAZ); returns whether supported.

    Once the encoder has learned peaked attention, the backward pass of PyTorch's fused
    CPU attention meets many denormal numbers and a training step took twice as long
    (0.166 s against 0.079 s per batch of 64, measured). Threads inherit the setting when
    they are created, so this must run before torch starts its worker threads.
    """
    return torch.set_flush_denormal(True)


def device_of(cfg: MAEConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def encoder_config(cfg: MAEConfig, n_times: int, n_chans: int) -> EncoderConfig:
    """The encoder for ``n_times`` samples pooled into tokens of ``cfg.stride``."""
    if n_times % cfg.stride:
        raise ConfigError(f"mae.stride {cfg.stride} does not divide the {n_times} samples "
                          "of a trial")
    return EncoderConfig(n_bands=len(cfg.bands), n_times=n_times // cfg.stride,
                         d_model=cfg.d_model,
                         n_heads=cfg.n_heads, ffn=cfg.ffn, n_layers=cfg.n_layers,
                         n_chans=n_chans if cfg.channel_embedding else 0)


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


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def train_mae(cfg: MAEConfig, train_seqs: Sequences, val_seqs: Sequences, enc_cfg:
              EncoderConfig, run_dir: Path, seed: int, run_fp: str, progress: bool = True,
              log=print) -> MaskedAutoencoder:
    """Train (or resume) the MAE; returns the model with the last epoch's weights."""
    from timm.scheduler import CosineLRScheduler
    from tqdm.auto import tqdm

    dev = device_of(cfg)
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
    if ckpt.is_file():
        state = torch.load(ckpt, map_location=dev, weights_only=True)
        if state["fingerprint"] == run_fp:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start, history = state["epoch"] + 1, state["history"]
            log(f"MAE: resuming after epoch {start} of {cfg.epochs} from {ckpt}")
        else:
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
        bar = tqdm(range(steps), desc=f"MAE epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not progress, leave=False)
        for step in bar:
            batch = rows[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x, c = train_seqs.get(batch)
            mask = random_mask(len(x), enc_cfg.n_times, cfg.mask_ratio, g)
            loss = model.loss(x.to(dev), mask.to(dev), c.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step_update(epoch * steps + step + 1)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
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
        _save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                "scheduler": sched.state_dict(), "epoch": epoch,
                                "history": history, "fingerprint": run_fp, "seed": seed})
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


def embed_trials(encoder, feats: np.ndarray, window: tuple[int, int], batch: int = 1024,
                 stride: int = 1) -> np.ndarray:
    """Encoder output (no masking) averaged over ``window`` (samples; the tokens that
    overlap it when ``stride`` timepoints are pooled per token), channels concatenated.

    feats (n_trials, n_chans, n_times, n_bands) -> (n_trials, n_chans * d_model).
    """
    dev = next(encoder.parameters()).device
    n_trials, n_chans = feats.shape[:2]
    flat = pool_time(np.asarray(feats, dtype=np.float32), stride)
    flat = flat.reshape(n_trials * n_chans, *flat.shape[2:])
    window = token_window(window, stride)
    chans = np.tile(np.arange(n_chans), n_trials)
    out = []
    encoder.eval()
    with torch.no_grad():
        for i in range(0, len(flat), batch):
            h = encoder(torch.tensor(flat[i:i + batch], device=dev), None,
                        torch.tensor(chans[i:i + batch], device=dev))
            out.append(h[:, window[0]:window[1]].mean(1).cpu().numpy())
    return np.concatenate(out).reshape(n_trials, -1)


def run_fingerprint(cfg: MAEConfig, data_fp: str, seed: int, val_subjects) -> str:
    train_cfg = {k: v for k, v in dataclasses.asdict(cfg).items()
                 if k not in ("eval_seqs", "probe_window", "probe_C", "device",
                              "num_threads")}
    return fingerprint(stage="02_mae", mae=train_cfg, data=data_fp, seed=seed,
                       val=list(val_subjects), code=code_hash())


def choose_val_subjects(train_subjects, n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed + 2024)
    return sorted(int(s) for s in rng.choice(list(train_subjects), size=n, replace=False))


def describe(model: MaskedAutoencoder) -> dict:
    return {"encoder_parameters": n_parameters(model.encoder),
            "encoder_parameters_without_channel_embedding":
                n_parameters(model.encoder) - (model.encoder.chan.weight.numel()
                                               if model.encoder.chan is not None else 0),
            "mae_parameters": n_parameters(model)}


def load_encoder(run_dir: Path):
    """The trained encoder of a finished stage-02 run (its config from ``run.json``)."""
    from .models.mae import ChannelEncoder

    state, _, info = load_mae_weights(run_dir)
    enc = ChannelEncoder(EncoderConfig(**info["encoder"]))
    enc.load_state_dict(state)
    return enc


def finished(run_dir: Path, run_fp: str | None = None) -> bool:
    """Whether ``run_dir`` holds a finished stage-02 run (of fingerprint ``run_fp``)."""
    run_dir = Path(run_dir)
    meta = run_dir / "run.json"
    return (run_dir / "encoder.pt").is_file() and (run_dir / "mae_head.pt").is_file() \
        and meta.is_file() and (run_fp is None or read_json(meta).get("fingerprint") == run_fp)


def save_encoder(model: MaskedAutoencoder, run_dir: Path, run_info: dict) -> None:
    for name, module in (("encoder.pt", model.encoder), ("mae_head.pt", model.head)):
        with atomic_path(Path(run_dir) / name) as tmp:
            torch.save(module.state_dict(), tmp)
    write_json(Path(run_dir) / "run.json", run_info)


def load_mae_weights(run_dir: Path) -> tuple[dict, dict, dict]:
    """(encoder state, reconstruction-head state, run.json) of a finished stage-02 run."""
    run_dir = Path(run_dir)
    if not finished(run_dir):
        raise FileNotFoundError(f"no finished stage-02 encoder in {run_dir} (encoder.pt, "
                                f"mae_head.pt, run.json): run src/02_pretrain_mae.py first")
    enc, head = (torch.load(run_dir / name, map_location="cpu", weights_only=True)
                 for name in ("encoder.pt", "mae_head.pt"))
    return enc, head, read_json(run_dir / "run.json")


def run_stage(stage, log=print) -> dict:
    """Everything stage 02 does; returns the metrics it writes to ``metrics.json``."""
    import resource

    from .features import BandFeatureCache, zscore_trials
    from .report import score_oof, write_report
    from .lopo import run_lopo

    cfg, seed = stage.cfg.mae, stage.cfg.seed
    flush_denormals()  # first, before torch creates its thread pool
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    t_start = time.perf_counter()
    ds = stage.dataset()
    folds = stage.folds(ds)
    subjects = list(folds.train_subjects) + list(folds.test_subjects)
    trials = {s: ds.subject(s).X for s in subjects}
    cache = BandFeatureCache(stage.out / "cache" / "band_features", folds.data_fingerprint,
                             cfg.bands, cfg.feature).build(trials, ds.sfreq, stage.progress)
    feats = {s: cache.load(s) for s in subjects}

    val = choose_val_subjects(folds.train_subjects, cfg.n_val_subjects, seed)
    pre = [s for s in subjects if s not in val]
    enc_cfg = encoder_config(cfg, ds.n_times, ds.n_chans)
    run_dir = stage.out / "02_mae"
    run_fp = run_fingerprint(cfg, folds.data_fingerprint, seed, val)
    val_seqs = Sequences([feats[s] for s in val], cfg.stride)
    if finished(run_dir, run_fp):
        log(f"MAE: unchanged, reusing {run_dir / 'encoder.pt'}")
        model = MaskedAutoencoder(enc_cfg)  # the last checkpoint holds the final weights
        model.load_state_dict(torch.load(run_dir / "ckpt" / "last.pt", map_location="cpu",
                                         weights_only=True)["model"])
        model = model.to(device_of(cfg))
        history = read_json(run_dir / "run.json")["history"]
    else:
        model = train_mae(cfg, Sequences([feats[s] for s in pre], cfg.stride), val_seqs, enc_cfg,
                          run_dir, seed, run_fp, stage.progress, log)
        history = model.history
        save_encoder(model, run_dir, {
            "fingerprint": run_fp, "seed": seed, "config": dataclasses.asdict(cfg),
            "encoder": dataclasses.asdict(enc_cfg), "val_subjects": val,
            "pretrain_subjects": pre, "band_cache": cache.key, "history": history,
            "labels_used": False})
    recon = reconstruction_report(model, val_seqs, cfg.mask_ratio, cfg.eval_seqs, seed)

    w = tuple(cfg.probe_window)
    quiet = dict(seed=seed, params={"C": cfg.probe_C}, progress=stage.progress,
                 log=log, model="linear_probe")

    def embeddings():
        return {s: zscore_trials(embed_trials(model.encoder, feats[s], w, stride=cfg.stride))
                for s in subjects}

    def band_means():
        return {s: zscore_trials(np.asarray(feats[s][:, :, w[0]:w[1]]).mean(2).reshape(
            len(feats[s]), -1)) for s in subjects}

    probes = {}
    for name, fn, key in (("mae_probe", embeddings, f"{run_fp}:{w}"),
                          ("band_probe", band_means, f"{cache.key}:{w}")):
        res = run_lopo(name, ds, folds, run_dir / name, features=fn, feature_key=key,
                       **quiet)
        probes[name] = score_oof(res.oof, ds, folds).score

    speeds = [h["seqs_per_second"] for h in history]
    metrics = {
        "reconstruction_mse_on_held_out_participants": recon,
        "val_subjects": val,
        "mae_beats_band_mean": recon["mae"] < recon["band_mean"],
        "mae_beats_linear_interpolation": recon["mae"] < recon["linear_interpolation"],
        "linear_probe_lopo_window_auc": probes,
        "probe_window_samples": list(w),
        "training_seqs_per_second_median": float(np.median(speeds)) if speeds else None,
        "history": history, "device": str(device_of(cfg)),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "stage_seconds": round(time.perf_counter() - t_start, 1),
        **describe(model)}
    write_json(run_dir / "metrics.json", metrics)
    write_report(stage.out, ds, folds)
    return metrics
