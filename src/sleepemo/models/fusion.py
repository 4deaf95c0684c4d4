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


def electrode_positions(ch_names) -> np.ndarray | None:
    """Template positions scaled to about unit size, or None if a channel has none."""
    from ..montage import positions

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

    def forward(self, x: torch.Tensor):
        """x (batch, n_chans, n_tokens, n_features) -> time logits (batch, n_tokens),
        trial logits (batch,), channel attention (batch, n_tokens, n_chans)."""
        b, c, t, _ = x.shape
        h = self.inp(x) + self.channel_embedding()[None, :, None]
        h = h.transpose(1, 2).reshape(b * t, c, -1)
        h = self.channel_block(h)
        att = torch.softmax(self.pool(h)[..., 0], dim=-1)
        z = (att[..., None] * h).sum(1).reshape(b, t, -1).transpose(1, 2)
        for conv, norm in zip(self.temporal, self.norms):
            z = z + self.drop(F.gelu(norm(conv(z))))
        z = z.transpose(1, 2)
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
