"""Channel experts (stage 03): one small Transformer per EEG channel, run as one batch.

An expert is the stage-02 :class:`~sleepemo.mae.model.ChannelEncoder` (without the
channel embedding: each expert belongs to one channel, so its channel's embedding is
folded into its positional embedding at initialisation) plus linear heads on the encoder
output: a per-timepoint logit, a trial logit from the mean over a window, and the MAE's
reconstruction head (used only by unsupervised test-time adaptation).

Experts may run on time-pooled sequences (``stride`` timepoints averaged into one token,
:func:`pool_time`): the input projection is linear, so a pooled token's embedding is
exactly the mean of its timepoints' embeddings when the positional embedding is pooled
the same way (:func:`make_experts` does this). Attention over 50 instead of 200 tokens
makes a training step about 6 times cheaper on a CPU.

The 16 experts have identical architectures, so their parameters are stacked along a
leading "expert" axis (:func:`torch.func.stack_module_state`) and evaluated in one
vectorised call (:func:`torch.func.vmap` over :func:`torch.func.functional_call`); the
functional form is also what first-order MAML needs (parameters as plain tensors that
can be adapted and differentiated without touching the modules). Attention is computed
with plain matrix products in the experts because PyTorch's fused CPU attention kernel
has no vmap batching rule (it would silently fall back to a loop).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from sleepemo.features import pool_time, token_window  # noqa: F401  (re-exported)
from sleepemo.mae.model import ChannelEncoder, EncoderConfig


class Expert(nn.Module):
    """Encoder + per-timepoint head + trial head + reconstruction head.

    Input (batch, n_tokens, n_bands) and an optional bool mask (batch, n_tokens) ->
    time logits (batch, n_tokens), trial logit (batch,), reconstruction
    (batch, n_tokens, n_bands). ``window`` is in tokens.
    """

    def __init__(self, cfg: EncoderConfig = EncoderConfig(), window: tuple[int, int] = (70, 130)):
        super().__init__()
        self.encoder = ChannelEncoder(dataclasses.replace(cfg, n_chans=0))
        for block in self.encoder.blocks:
            block.attn.fused_attn = False  # vmap-friendly attention (see module docstring)
        self.time_head = nn.Linear(cfg.d_model, 1)
        self.trial_head = nn.Linear(cfg.d_model, 1)
        self.recon_head = nn.Linear(cfg.d_model, cfg.n_bands)
        self.window = tuple(window)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        h = self.encoder(x, mask)
        time_logit = self.time_head(h)[..., 0]
        trial_logit = self.trial_head(h[:, self.window[0]:self.window[1]].mean(1))[..., 0]
        return time_logit, trial_logit, self.recon_head(h)


def make_experts(n_experts: int, cfg: EncoderConfig = EncoderConfig(),
                 encoder_state: Mapping[str, torch.Tensor] | None = None,
                 window: tuple[int, int] = (70, 130), seed: int = 0,
                 head_state: Mapping[str, torch.Tensor] | None = None) -> list[Expert]:
    """``n_experts`` experts for sequences of ``cfg.n_times`` tokens.

    With ``encoder_state`` (a stage-02 encoder's state dict) every expert starts from
    the pre-trained encoder, expert c with channel c's embedding added to its positional
    embedding; a pre-trained positional embedding longer than ``cfg.n_times`` is pooled
    to the tokens (see the module docstring). ``head_state`` (the MAE's reconstruction
    head) initialises ``recon_head``. Time and trial heads start from a seeded random init.
    """
    torch.manual_seed(seed)
    experts = [Expert(cfg, window) for _ in range(n_experts)]
    if encoder_state is not None:
        shared = {k: v for k, v in encoder_state.items() if not k.startswith("chan.")}
        pos = shared["pos"]
        if pos.shape[1] != cfg.n_times:
            if pos.shape[1] % cfg.n_times:
                raise ValueError(f"cannot pool {pos.shape[1]} positions to {cfg.n_times}")
            shared["pos"] = pool_time(pos, pos.shape[1] // cfg.n_times)
        chan = encoder_state.get("chan.weight")
        if chan is not None and chan.shape[0] != n_experts:
            raise ValueError(f"encoder has {chan.shape[0]} channel embeddings, "
                             f"not {n_experts}")
        for c, expert in enumerate(experts):
            expert.encoder.load_state_dict(shared)
            if chan is not None:
                with torch.no_grad():
                    expert.encoder.pos += chan[c]
    if head_state is not None:
        for expert in experts:
            expert.recon_head.load_state_dict(head_state)
    return experts


class ExpertBank:
    """The experts' parameters stacked on a leading axis, evaluated with ``vmap``.

    Attributes
    ----------
    params : dict of str -> tensor, shape (n_experts, ...)
        Leaf tensors with ``requires_grad``: the meta-parameters.
    """

    def __init__(self, experts: list[Expert]):
        self.n_experts = len(experts)
        params, buffers = stack_module_state(experts)
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self.buffers = buffers
        self._base = copy.deepcopy(experts[0]).to("meta")

    def _one(self, params, buffers, x, mask):
        return functional_call(self._base, (params, buffers), (x, mask))

    def __call__(self, x: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None,
                 mask: torch.Tensor | None = None):
        """All experts on their channels.

        Parameters
        ----------
        x : tensor, shape (batch, n_experts, n_tokens, n_bands)
            Channel c goes to expert c.
        params : dict, optional
            Parameters to use instead of ``self.params`` (e.g. adapted ones).
        mask : bool tensor, shape (batch, n_experts, n_tokens), optional
            Tokens replaced by the mask token (for the reconstruction objective).

        Returns
        -------
        time_logits : tensor, shape (n_experts, batch, n_tokens)
        trial_logits : tensor, shape (n_experts, batch)
        reconstruction : tensor, shape (n_experts, batch, n_tokens, n_bands)
        """
        params = params if params is not None else self.params
        if mask is None:
            return vmap(lambda p, b, xx: self._one(p, b, xx, None),
                        in_dims=(0, 0, 1))(params, self.buffers, x)
        return vmap(self._one, in_dims=(0, 0, 1, 1))(params, self.buffers, x, mask)

    def loop(self, x: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None,
             mask: torch.Tensor | None = None):
        """The same as calling the bank, with a Python loop over the experts
        (:func:`stacked_loop_forward`)."""
        return stacked_loop_forward(self._base, params if params is not None else self.params,
                                    self.buffers, x, mask)

    def experts(self) -> list[Expert]:
        """Materialise the current parameters as separate modules (e.g. to save)."""
        out = []
        for i in range(self.n_experts):
            e = copy.deepcopy(self._base).to_empty(device="cpu")
            e.load_state_dict({k: v[i].detach().clone() for k, v in self.params.items()}
                              | {k: v[i].clone() for k, v in self.buffers.items()})
            out.append(e)
        return out


def _stacked_ops(params):
    def norm(h, key):
        return F.layer_norm(h, h.shape[-1:]) * params[key + ".weight"][:, None, None] + \
            params[key + ".bias"][:, None, None]

    def linear(h, key):
        # one batched matmul per expert with the bias fused in: the same numbers as
        # einsum + bias, ~1.4x faster for the whole encoder (bench/bench_fusion.py)
        e, *lead, d = h.shape
        w = params[key + ".weight"]
        return torch.baddbmm(params[key + ".bias"][:, None], h.reshape(e, -1, d),
                             w.transpose(1, 2)).reshape(e, *lead, w.shape[1])
    return norm, linear


def folded_encode(params: Mapping[str, torch.Tensor], x: torch.Tensor, n_heads: int,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """The experts' encoders on stacked parameters, experts folded into the batch so that
    attention runs in PyTorch's fused kernel: x (batch, n_experts, n_tokens, n_bands) ->
    per-token embeddings (n_experts, batch, n_tokens, d_model) after the final LayerNorm.
    ``mask`` (batch, n_experts, n_tokens) replaces tokens by the mask token."""
    norm, linear = _stacked_ops(params)
    x = x.transpose(0, 1)
    h = linear(x, "encoder.embed")
    if mask is not None:
        h = torch.where(mask.transpose(0, 1)[..., None],
                        params["encoder.mask_token"][:, None, 0].to(h.dtype), h)
    h = h + params["encoder.pos"][:, None, 0]
    n_exp, batch, n_times, d = h.shape
    n_layers = len({k.split(".")[2] for k in params if k.startswith("encoder.blocks.")})
    for i in range(n_layers):
        b = f"encoder.blocks.{i}"
        qkv = linear(norm(h, f"{b}.norm1"), f"{b}.attn.qkv").reshape(
            n_exp * batch, n_times, 3, n_heads, d // n_heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        h = h + linear(att.transpose(1, 2).reshape(n_exp, batch, n_times, d),
                       f"{b}.attn.proj")
        h = h + linear(F.gelu(linear(norm(h, f"{b}.norm2"), f"{b}.mlp.fc1")),
                       f"{b}.mlp.fc2")
    return norm(h, "encoder.norm")


def embed_tokens(params: Mapping[str, torch.Tensor], feats, n_heads: int, batch: int = 32):
    """Per-token embeddings of the 16 experts without gradients: numpy (n, C, T, F) ->
    (n, C, T, d).

    Small batches keep the 16 experts' activations in the CPU cache: 64 trials embed ~2x
    faster than 512 on 2 cores (``bench/bench_fusion.py``), 32 about 1.1x faster than 64
    on one thread at 50 tokens, with bit-identical outputs (measured 2026-11-30)."""
    import numpy as np

    dev = next(iter(params.values())).device
    out = []
    with torch.no_grad():
        for i in range(0, len(feats), batch):
            h = folded_encode(params, torch.from_numpy(np.ascontiguousarray(
                feats[i:i + batch], dtype=np.float32)).to(dev), n_heads)
            out.append(h.transpose(0, 1).cpu().numpy())
    return np.concatenate(out)


def folded_forward(params: Mapping[str, torch.Tensor], x: torch.Tensor, n_heads: int,
                   window: tuple[int, int] = (70, 130), mask: torch.Tensor | None = None):
    """The experts' forward pass written out on the stacked parameters (the encoders by
    :func:`folded_encode`, then the heads).

    The same computation as :class:`Expert` (timm blocks: pre-norm attention and GELU MLP,
    final LayerNorm, two heads) for parameters stacked on a leading expert axis, as
    :class:`ExpertBank` holds them; differentiable with ``torch.func.grad``.

    Parameters
    ----------
    x : tensor, shape (batch, n_experts, n_tokens, n_bands)
    mask : bool tensor, shape (batch, n_experts, n_tokens), optional

    Returns
    -------
    time_logits (n_experts, batch, n_tokens), trial_logits (n_experts, batch),
    reconstruction (n_experts, batch, n_tokens, n_bands)
    """
    _, linear = _stacked_ops(params)
    h = folded_encode(params, x, n_heads, mask)
    time_logit = linear(h, "time_head")[..., 0]
    pooled = h[:, :, window[0]:window[1]].mean(2)
    trial_logit = torch.einsum("ebd,eod->ebo", pooled, params["trial_head.weight"])[..., 0] \
        + params["trial_head.bias"]
    return time_logit, trial_logit, linear(h, "recon_head")


def loop_forward(experts: list[Expert], x: torch.Tensor, mask: torch.Tensor | None = None):
    """Reference: the same computation as :class:`ExpertBank` with a Python loop."""
    outs = [e(x[:, c], None if mask is None else mask[:, c]) for c, e in enumerate(experts)]
    return tuple(torch.stack([o[i] for o in outs]) for i in range(3))


def stacked_loop_forward(base: Expert, params: Mapping[str, torch.Tensor],
                         buffers: Mapping[str, torch.Tensor], x: torch.Tensor,
                         mask: torch.Tensor | None = None):
    """A Python loop over the experts, each called with its slice of stacked parameters
    (``functional_call``): the unbatched reference that the benchmark times."""
    outs = [functional_call(base, ({k: v[c] for k, v in params.items()},
                                   {k: v[c] for k, v in buffers.items()}),
                            (x[:, c], None if mask is None else mask[:, c]))
            for c in range(x.shape[1])]
    return tuple(torch.stack([o[i] for o in outs]) for i in range(3))


# ------------------------------------------------------------------ choosing a forward
BATCHINGS = ("folded", "vmap", "loop")


def make_forward(bank: ExpertBank, batching: str, n_heads: int, window: tuple[int, int]):
    """``forward(params, x, mask=None) -> (time, trial, reconstruction)`` for all experts
    on stacked parameters: ``vmap`` over ``functional_call``, ``folded`` (experts folded
    into the batch, fused attention) or ``loop`` (one expert after another). All three
    compute the same function (tested); which is fastest depends on tokens, gradients
    and device (``bench/bench_experts.py``, ``docs/benchmarks.md``)."""
    if batching == "folded":
        return lambda p, x, mask=None: folded_forward(p, x, n_heads, window, mask)
    if batching == "vmap":
        return lambda p, x, mask=None: bank(x, p, mask)
    if batching == "loop":
        return lambda p, x, mask=None: bank.loop(x, p, mask)
    raise ValueError(f"unknown batching {batching!r}; known: {BATCHINGS}")


# ------------------------------------------------------------------ losses
def classification_loss(forward, time_weight: float = 1.0):
    """``loss(params, (x, y))``: per-timepoint and trial BCE, summed over experts (each
    expert's gradient comes from its own loss only)."""
    bce = F.binary_cross_entropy_with_logits

    def loss(params, batch):
        x, y = batch
        t, r, _ = forward(params, x)
        return t.shape[0] * (time_weight * bce(t, y[None, :, None].expand_as(t))
                             + bce(r, y[None].expand_as(r)))
    return loss


def reconstruction_loss(forward):
    """``loss(params, (x, mask))``: the MAE loss (masked tokens only), summed over
    experts. No labels."""
    def loss(params, batch):
        x, mask = batch
        _, _, rec = forward(params, x, mask)
        err = ((rec - x.transpose(0, 1)) ** 2).mean(-1)
        m = mask.transpose(0, 1).to(err.dtype)
        return (err * m).sum() / m.sum() * err.shape[0]
    return loss
