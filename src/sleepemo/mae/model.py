"""Masked autoencoder over one channel's band-feature sequence (stage 02).

A sequence is one channel of one trial: 200 timepoints x 5 band features. The encoder
(:class:`ChannelEncoder`) is exactly the architecture of a stage-03 channel expert, so its
weights initialise the experts: linear 5 -> d, a learned positional embedding (initialised
with the sinusoidal encoding, so that "nearby in time" is easy to learn), an optional
learned channel embedding, ``n_layers`` timm Transformer blocks (pre-norm, multi-head
self-attention over all timepoints, i.e. bidirectional), final LayerNorm.

Pre-training replaces a random 40 % of the timepoints of every sequence by a learned mask
token *after* the input projection (the encoder still sees every position, so context on
both sides is used) and reconstructs the band features there with a linear head; the
loss is the mean squared error on the masked points only.

**One shared encoder over all channels, with a learned channel embedding** (not one
encoder per channel): every channel-sequence is a training example for the same weights,
16 times the data per parameter, which matters with about 12 k trials; the channel
embedding lets the encoder still treat channels differently. Stage 03 copies the shared
encoder into 16 experts (each with its channel's embedding), which then diverge.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sleepemo.config import ConfigError
from sleepemo.io import atomic_path, read_json, write_json, write_npy
from sleepemo.mae.inputs import encoder_tokens, pool_tokens, window_means
from sleepemo.pipeline.stage import stage_dir
from sleepemo.progress import bar


@dataclass(frozen=True)
class EncoderConfig:
    n_bands: int = 5
    n_times: int = 200
    d_model: int = 16
    n_heads: int = 4
    ffn: int = 128
    n_layers: int = 3
    n_chans: int = 16          # size of the channel embedding; 0 = none
    dropout: float = 0.0


class ChannelEncoder(nn.Module):
    """Per-channel Transformer encoder.

    Input (batch, n_times, n_bands) -> output (batch, n_times, d_model).
    """

    def __init__(self, cfg: EncoderConfig = EncoderConfig()):
        # timm (and the torchvision and torch._dynamo it imports, ~3 s) only when a model
        # is built: a stage that reuses its results, `plan` and the baselines' predict
        # never pay for it
        from timm.layers import trunc_normal_
        from timm.models.vision_transformer import Block

        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = nn.Linear(cfg.n_bands, d)
        self.pos = nn.Parameter(torch.zeros(1, cfg.n_times, d))
        self.chan = nn.Embedding(cfg.n_chans, d) if cfg.n_chans else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList([
            Block(dim=d, num_heads=cfg.n_heads, mlp_ratio=cfg.ffn / d, qkv_bias=True,
                  proj_drop=cfg.dropout, attn_drop=cfg.dropout)
            for _ in range(cfg.n_layers)])
        self.norm = nn.LayerNorm(d)
        with torch.no_grad():  # learned, but starting from the sinusoidal encoding
            self.pos.copy_(sinusoidal_positions(cfg.n_times, d)[None])
        trunc_normal_(self.mask_token, std=0.02)
        if self.chan is not None:
            trunc_normal_(self.chan.weight, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                chan: torch.Tensor | None = None) -> torch.Tensor:
        """
        Parameters
        ----------
        x : tensor, shape (batch, n_times, n_bands)
        mask : bool tensor, shape (batch, n_times), optional
            True where the input is hidden (replaced by the mask token).
        chan : long tensor, shape (batch,), optional
            Channel index of each sequence (for the channel embedding).
        """
        h = self.embed(x)
        if mask is not None:
            h = torch.where(mask[..., None], self.mask_token.to(h.dtype), h)
        h = h + self.pos
        if self.chan is not None and chan is not None:
            h = h + self.chan(chan)[:, None, :]
        for block in self.blocks:
            h = block(h)
        return self.norm(h)


class MaskedAutoencoder(nn.Module):
    """:class:`ChannelEncoder` plus a linear reconstruction head."""

    def __init__(self, cfg: EncoderConfig = EncoderConfig()):
        super().__init__()
        self.encoder = ChannelEncoder(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.n_bands)

    def forward(self, x, mask, chan=None) -> torch.Tensor:
        """Reconstruction, shape (batch, n_times, n_bands)."""
        return self.head(self.encoder(x, mask, chan))

    def loss(self, x, mask, chan=None) -> torch.Tensor:
        """Mean squared error over the masked points only."""
        err = (self(x, mask, chan) - x) ** 2
        return err.mean(-1)[mask].mean()


def sinusoidal_positions(n_times: int, d_model: int) -> torch.Tensor:
    """The Transformer's sine/cosine positional encoding, shape (n_times, d_model)."""
    pos = torch.arange(n_times, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32)
                     * (-math.log(10_000.0) / d_model))
    enc = torch.zeros(n_times, d_model)
    enc[:, 0::2] = torch.sin(pos * freq)
    enc[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
    return enc


def random_mask(batch: int, n_times: int, ratio: float,
                generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Bool mask (batch, n_times) hiding exactly ``round(ratio * n_times)`` random
    timepoints of every sequence."""
    n_mask = int(round(ratio * n_times))
    if not 0 < n_mask < n_times:
        raise ValueError(f"mask ratio {ratio} hides {n_mask} of {n_times} timepoints")
    noise = torch.rand(batch, n_times, generator=generator)
    idx = noise.argsort(dim=1)[:, :n_mask]
    mask = torch.zeros(batch, n_times, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask.to(device) if device is not None else mask


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def encoder_config(cfg, n_times: int, n_chans: int) -> EncoderConfig:
    """The encoder that a ``mae:`` config section describes, for trials of ``n_times``
    samples pooled into tokens of ``cfg.stride`` samples and ``n_chans`` channels."""

    if n_times % cfg.stride:
        raise ConfigError(f"mae.stride {cfg.stride} does not divide the {n_times} samples "
                          "of a trial")
    return EncoderConfig(n_bands=len(cfg.bands) + bool(cfg.evoked_tokens),
                         n_times=n_times // cfg.stride,
                         d_model=cfg.d_model, n_heads=cfg.n_heads, ffn=cfg.ffn,
                         n_layers=cfg.n_layers,
                         n_chans=n_chans if cfg.channel_embedding else 0)


# ------------------------------------------------------------------ saved encoders
#: The files of a trained MAE in its folder (stage 02 writes them into ``02_mae/``).
ENCODER_FILES = ("encoder.pt", "mae_head.pt", "run.json")


def save_encoder(model: MaskedAutoencoder, folder: str | Path, run_info: dict) -> None:
    """Write the encoder and reconstruction-head weights and ``run.json`` (which must
    hold ``encoder``: the :class:`EncoderConfig` as a dict, and ``fingerprint``)."""
    for name, module in (("encoder.pt", model.encoder), ("mae_head.pt", model.head)):
        with atomic_path(Path(folder) / name) as tmp, open(tmp, "wb") as fh:
            torch.save(module.state_dict(), fh)  # a full disk: OSError (io.DiskFull)
    write_json(Path(folder) / "run.json", run_info)


def encoder_saved(folder: str | Path, fingerprint: str | None = None) -> bool:
    """Whether ``folder`` holds a saved MAE (of ``fingerprint``, if given)."""
    folder = Path(folder)
    return all((folder / f).is_file() for f in ENCODER_FILES) and (
        fingerprint is None or read_json(folder / "run.json").get("fingerprint") == fingerprint)


def load_mae_weights(folder: str | Path) -> tuple[dict, dict, dict]:
    """(encoder state, reconstruction-head state, run.json) of a saved MAE."""
    folder = Path(folder)
    if not encoder_saved(folder):
        raise FileNotFoundError(f"no trained MAE in {folder} ({', '.join(ENCODER_FILES)}): "
                                "run src/02_mae.py first")
    enc, head = (torch.load(folder / name, map_location="cpu", weights_only=True)
                 for name in ENCODER_FILES[:2])
    return enc, head, read_json(folder / "run.json")


def load_encoder(folder: str | Path) -> ChannelEncoder:
    """The saved encoder, built from the config in its ``run.json``."""
    state, _, info = load_mae_weights(folder)
    enc = ChannelEncoder(EncoderConfig(**info["encoder"]))
    enc.load_state_dict(state)
    return enc


# ------------------------------------------------------------------ shared token cache
class TokenCache:
    """The stage-02 encoder's per-token embeddings of every trial of every participant,
    averaged to tokens of ``stride`` samples (:func:`sleepemo.mae.inputs.encoder_tokens` of
    the participant's band features): one memory-mapped ``.npy`` per participant,
    shape (n_trials, n_chans, n_times // stride, d_model), computed once per run.
    Stage 02 builds it at the MAE's own stride (every token; its linear probe reads it);
    a coarser stride is then pooled from that one instead of encoding again.

    Stage 04 (its ``mae`` variant) and stage 05 (the SAC's prototypes) read the same
    embeddings; before this cache each fold worker of stage 04 and stage 05's process
    encoded all ~13 k trials again. Label-free: nothing here sees a label. The folder
    ``<out>/cache/mae_tokens_s<stride>/<key>`` is named by the MAE's fingerprint, the
    band features' key and the stride; stale folders of the same stride are removed.
    """

    def __init__(self, out, mae_fingerprint: str, band_key: str, stride: int):
        import hashlib
        import json

        self.stride = int(stride)
        self.key = hashlib.sha256(json.dumps(
            [mae_fingerprint, band_key, self.stride]).encode()).hexdigest()[:16]
        self.root = Path(out) / "cache" / f"mae_tokens_s{self.stride}"
        self.dir = self.root / self.key

    def path(self, subject: int) -> Path:
        return self.dir / f"S{subject}.npy"

    def missing(self, subjects) -> list:
        return [s for s in subjects if not self.path(s).is_file()]

    @classmethod
    def for_run(cls, out, band, subjects, stride: int, progress: bool = True,
                build: bool = True) -> "TokenCache":
        """The run's cache at ``stride`` for the stage-02 MAE in ``<out>/02_mae``
        (``band``: the :class:`~sleepemo.features.BandFeatureCache` it was trained on),
        its missing participants encoded when ``build`` (call it in a stage's own process,
        before fold workers start: they then only read)."""
        import shutil

        folder = stage_dir(out, "mae")
        info = load_mae_weights(folder)[2]  # a clear error if stage 02 has not run
        if info.get("band_cache") != band.key:
            raise FileNotFoundError(f"{folder} was trained on other band features than the "
                                    "current mae: settings; run src/02_mae.py again")
        mstride = info.get("config", {}).get("stride")  # the mae: section it was trained by
        if mstride is None:
            raise FileNotFoundError(f"{folder}/run.json has no config.stride (an older stage "
                                    "02): run src/02_mae.py again")
        mstride = int(mstride)
        if stride % mstride:
            raise ValueError(f"token stride {stride} is not a multiple of the MAE's {mstride}")
        cache = cls(out, info["fingerprint"], band.key, stride)
        todo = cache.missing(subjects)
        if not build or not todo:
            return cache
        if cache.root.is_dir():
            for stale in cache.root.iterdir():
                if stale.is_dir() and stale.name != cache.key:
                    shutil.rmtree(stale)
        base = cls(out, info["fingerprint"], band.key, mstride)
        if stride != mstride and not base.missing(todo):
            # stage 02 keeps every token (its probe reads them): pooling them is the same
            # numbers as encoding again, without the encoder's cost
            for s in bar(todo, desc=f"MAE token embeddings at stride {stride}",
                         unit="participant", enabled=progress):
                write_npy(cache.path(s), pool_tokens(base.load(s), stride // mstride))
            return cache
        enc = load_encoder(folder)
        for s in bar(todo, desc="MAE token embeddings", unit="participant", enabled=progress):
            write_npy(cache.path(s), encoder_tokens(enc, band.load(s), mstride, stride))
        return cache

    def window_means(self, subject: int, window: tuple[int, int]):
        """One participant's embeddings averaged over ``window``
        (:func:`~sleepemo.mae.inputs.window_means`)."""
        return window_means(self.load(subject), window, self.stride)

    def load(self, subject: int):
        """Memory-mapped embeddings of one participant."""
        import numpy as np

        path = self.path(subject)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: MAE token embeddings not built (the stage's "
                                    "process builds them before its fold workers start)")
        return np.load(path, mmap_mode="r")
