"""Spatiotemporal fusion (stage 04): many channels' token sequences -> one decision.

Input: per trial, a sequence of tokens for every channel, each token a feature vector
(the channel experts' embeddings, the MAE's, or raw band envelopes; plus the evoked
waveform). The network:

1. projects each (channel, token) to ``d`` dimensions and adds an **electrode position
   embedding**: a linear map of the electrode's 3-D position in MNE's 10-20 template
   (so neighbouring electrodes start close), or a learned embedding per channel when the
   channels have no template positions;
2. lets the channels of each token attend to each other (one timm transformer
   ``Block``): the relations *between* channels that single-channel experts cannot see;
3. pools the channels with learned attention weights (kept: they are the channel
   attention shown on the scalp in the report);
4. runs a temporal model over the pooled tokens: residual dilated 1-D convolutions
   (receptive field ``1 + 2 * (2**n_temporal - 1)`` tokens);
5. gives a logit per token (interpolated to every timepoint by the caller) and a trial
   logit from the tokens of the trial window.

Losses (:func:`fusion_loss`): per-token and trial binary cross-entropy, or a
**within-participant pairwise** logistic surrogate of the AUC (every emotional trial of
a participant against every neutral trial of the same participant), which is what the
metric ranks.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from sleepemo.data.montage import positions
from sleepemo.experts.model import folded_encode
from sleepemo.features import zscore_participant


def electrode_positions(ch_names) -> np.ndarray | None:
    """Template positions scaled to about unit size, or None if a channel has none."""

    try:
        pos = positions(list(ch_names))
    except KeyError:
        return None
    pos = pos - pos.mean(0)
    return (pos / np.abs(pos).max()).astype(np.float32)


class FusionNet(nn.Module):
    """See the module docstring.

    Parameters
    ----------
    n_features : int
        Features per (channel, token).
    n_chans : int
    positions : array (n_chans, 3) or None
        Electrode positions (:func:`electrode_positions`); None: learned embeddings.
    window : (start, stop) in tokens, for the trial logit.
    """

    def __init__(self, n_features: int, n_chans: int, positions=None, d: int = 32,
                 n_heads: int = 4, n_temporal: int = 3, kernel: int = 3,
                 window: tuple[int, int] = (0, 1), dropout: float = 0.1):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.inp = nn.Sequential(nn.LayerNorm(n_features), nn.Linear(n_features, d))
        if positions is not None:
            self.register_buffer("xyz", torch.as_tensor(np.asarray(positions, np.float32)))
            self.place = nn.Linear(3, d)
        else:
            self.xyz = None
            self.place = nn.Embedding(n_chans, d)
        self.channel_block = Block(dim=d, num_heads=n_heads, mlp_ratio=2.0, qkv_bias=True,
                                   proj_drop=0.0, attn_drop=0.0)
        # attention over 16 channels with head dim 8: the explicit softmax(q k^T) v trains
        # ~1.2x faster on the CPU than the fused kernel (bench/bench_fusion.py)
        self.channel_block.attn.fused_attn = False
        self.pool = nn.Linear(d, 1)
        self.temporal = nn.ModuleList(
            nn.Conv1d(d, d, kernel, padding=(kernel // 2) * 2 ** i, dilation=2 ** i)
            for i in range(n_temporal))
        self.norms = nn.ModuleList(nn.GroupNorm(1, d) for _ in range(n_temporal))
        self.drop = nn.Dropout(dropout)
        self.time_head = nn.Linear(d, 1)
        self.trial_head = nn.Linear(d, 1)
        self.window = tuple(int(w) for w in window)

    def channel_embedding(self) -> torch.Tensor:
        return self.place(self.xyz) if self.xyz is not None else self.place.weight

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (batch, n_chans, n_tokens, n_features) -> the fused per-token embeddings
        (batch, n_tokens, d) that the heads read, and the channel attention
        (batch * n_tokens, n_chans)."""
        b, c, t, _ = x.shape
        h = self.inp(x) + self.channel_embedding()[None, :, None]
        h = h.transpose(1, 2).reshape(b * t, c, -1)
        h = self.channel_block(h)
        att = torch.softmax(self.pool(h)[..., 0], dim=-1)
        z = (att[..., None] * h).sum(1).reshape(b, t, -1).transpose(1, 2)
        for conv, norm in zip(self.temporal, self.norms):
            z = z + self.drop(F.gelu(norm(conv(z))))
        return z.transpose(1, 2), att

    def forward(self, x: torch.Tensor):
        """x (batch, n_chans, n_tokens, n_features) -> time logits (batch, n_tokens),
        trial logits (batch,), channel attention (batch, n_tokens, n_chans)."""
        b, c, t, _ = x.shape
        z, att = self.tokens(x)
        time_logit = self.time_head(z)[..., 0]
        trial_logit = self.trial_head(z[:, self.window[0]:self.window[1]].mean(1))[..., 0]
        return time_logit, trial_logit, att.reshape(b, t, c)


def pairwise_auc_loss(logits: torch.Tensor, y: torch.Tensor,
                      groups: torch.Tensor) -> torch.Tensor:
    """Logistic surrogate of 1 - AUC over pairs of the same group (participant).

    logits (batch, ...) are compared pairwise along the batch; every (emotional,
    neutral) pair of one group contributes ``softplus(-(s_pos - s_neg))``, averaged over
    pairs (and the trailing axes). Groups without both classes contribute nothing.
    """
    same = groups[:, None] == groups[None, :]
    pos_neg = (y[:, None] > 0.5) & (y[None, :] < 0.5) & same
    if not bool(pos_neg.any()):
        return logits.sum() * 0.0
    diff = logits[:, None] - logits[None, :]
    loss = F.softplus(-diff)
    if loss.dim() > 2:
        loss = loss.mean(tuple(range(2, loss.dim())))
    return loss[pos_neg].mean()


def fusion_loss(kind: str, time_weight: float = 1.0):
    """``loss(time_logits, trial_logits, y, groups)`` for ``kind`` ``bce`` or
    ``pairwise`` (see the module docstring)."""
    if kind == "bce":
        def loss(t, r, y, groups):
            return time_weight * F.binary_cross_entropy_with_logits(
                t, y[:, None].expand_as(t)) + F.binary_cross_entropy_with_logits(r, y)
    elif kind == "pairwise":
        def loss(t, r, y, groups):
            return time_weight * pairwise_auc_loss(t, y, groups) + \
                pairwise_auc_loss(r, y, groups)
    else:
        raise ValueError(f"unknown fusion loss {kind!r}; known: bce, pairwise")
    return loss


def zscore_groups(h: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Z-score every (channel, feature) of ``h`` (batch, C, T, F) over the trials and tokens
    of each group (participant); one group when ``groups`` is None. The torch twin of
    :func:`sleepemo.fusion.stage.standardise`."""
    def one(x):
        mu = x.mean((0, 2), keepdim=True)
        sd = x.std((0, 2), keepdim=True, correction=0)
        return (x - mu) / torch.where(sd > 0, sd, torch.ones_like(sd))

    if groups is None:
        return one(h)
    out = torch.empty_like(h)
    for g in torch.unique(groups):
        idx = groups == g
        out[idx] = one(h[idx])
    return out


class TunedFusion(nn.Module):
    """The fold's channel experts, fine-tuned end to end, in front of a :class:`FusionNet`.

    Input per trial (n_chans, n_tokens_in, n_in + n_extra): the experts' band features at
    their own token rate, then extra features already z-scored (the evoked tokens, each
    repeated ``ratio`` times). The experts' per-token embeddings
    (:func:`sleepemo.experts.model.folded_encode` on the stacked encoder parameters,
    trainable) and the extras are averaged ``ratio`` tokens at a time; the embeddings are
    z-scored per participant (:func:`zscore_groups`: per group in a training batch, over
    all of a participant's trials in :meth:`fusion_inputs`), as the frozen experts'
    embeddings are.
    """

    def __init__(self, params: dict, n_heads: int, n_in: int, ratio: int, fusion: FusionNet):
        super().__init__()
        self.names = sorted(k for k in params  # (no masking here: no mask token)
                            if k.startswith("encoder.") and k != "encoder.mask_token")
        self.experts = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(
            params[k].detach().clone().float()) for k in self.names})
        self.n_heads, self.n_in, self.ratio = n_heads, n_in, ratio
        self.fusion = fusion

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        b, c, t, f = h.shape
        return h.reshape(b, c, t // self.ratio, self.ratio, f).mean(3)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled expert embeddings (not yet z-scored) and pooled extras."""

        params = {k: self.experts[k.replace(".", "__")] for k in self.names}
        h = folded_encode(params, x[..., :self.n_in], self.n_heads).transpose(0, 1)
        return self._pool(h), self._pool(x[..., self.n_in:])

    def forward(self, x: torch.Tensor, groups: torch.Tensor | None = None):
        h, extra = self.embed(x)
        return self.fusion(torch.cat([zscore_groups(h, groups), extra], -1))

    def fusion_inputs(self, x: np.ndarray, batch: int = 64) -> np.ndarray:
        """One participant's trials -> the fusion's inputs (numpy), embeddings z-scored
        over all of them (no gradients)."""
        dev = next(self.parameters()).device
        hs, extras = [], []
        with torch.no_grad():
            for i in range(0, len(x), batch):
                h, e = self.embed(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).to(dev))
                hs.append(h)
                extras.append(e)
            if not hs:
                c, t = x.shape[1], x.shape[2] // self.ratio
                d = self.fusion.inp[0].normalized_shape[0]
                return np.zeros((0, c, t, d), np.float32)
            return torch.cat([zscore_groups(torch.cat(hs)), torch.cat(extras)], -1
                             ).cpu().numpy()


def standardise(x: np.ndarray) -> np.ndarray:
    """Z-score every (channel, feature) over one participant's trials and tokens (numpy;
    :func:`zscore_groups` is its torch twin)."""

    return zscore_participant(x).astype(np.float32)


def predict(model: "FusionNet | TunedFusion", x: np.ndarray, batch: int = 128):
    """Token logits (n, T), trial logits (n,) and channel attention (n, T, C) of one
    participant's trials (a :class:`TunedFusion` z-scores its embeddings over them).
    Batches of 128 trials: larger ones leave the CPU cache (``bench/bench_fusion.py``)."""
    model.eval()
    if isinstance(model, TunedFusion):
        return predict(model.fusion, model.fusion_inputs(x), batch)
    dev = next(model.parameters()).device
    if len(x) == 0:
        t = x.shape[2]
        return (np.zeros((0, t), np.float32), np.zeros(0, np.float32),
                np.zeros((0, t, x.shape[1]), np.float32))
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append([o.cpu().numpy() for o in model(torch.from_numpy(
                np.ascontiguousarray(x[i:i + batch])).to(dev))])
    return tuple(np.concatenate([o[j] for o in outs]) for j in range(3))


def to_timepoints(token_logits: np.ndarray, n_times: int) -> np.ndarray:
    """Per-token logits -> probabilities at every timepoint (linear interpolation)."""
    t = torch.from_numpy(token_logits)[:, None]
    if t.shape[-1] != n_times:
        t = F.interpolate(t, size=n_times, mode="linear", align_corners=False)
    return torch.sigmoid(t[:, 0]).numpy().astype(np.float32)


def fused_tokens(model: FusionNet, x: np.ndarray, batch: int = 128) -> np.ndarray:
    """The fused per-token embeddings (n, n_tokens, d) of one participant's trials
    (:meth:`FusionNet.tokens`, no gradients; stage 05's SAC reads them)."""
    model.eval()
    dev = next(model.parameters()).device
    out = [np.zeros((0, x.shape[2], model.time_head.in_features), np.float32)]
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model.tokens(torch.from_numpy(np.ascontiguousarray(
                x[i:i + batch], dtype=np.float32)).to(dev))[0].cpu().numpy())
    return np.concatenate(out)
