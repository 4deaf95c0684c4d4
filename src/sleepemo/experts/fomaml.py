"""First-order MAML (FOMAML) on functional parameters (used by stage 03).

A *task* is one training participant: a support batch to adapt on and a query batch to
judge the adapted weights. For each task of a meta-batch the meta-parameters are copied,
adapted by ``inner_steps`` plain SGD steps on the support loss, and the gradient of the
query loss **at the adapted weights** is taken; the mean of those gradients is applied to
the meta-parameters by the outer optimiser (Adam). First order: the adapted weights are
treated as constants of the meta-parameters, so no second derivatives are computed.

``loss_fn(params, batch) -> scalar`` is any functional loss (e.g. all 16 experts through
:class:`~sleepemo.experts.model.ExpertBank`, whose per-expert losses are summed: each
expert's gradient then depends on its own loss only).
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch.func import grad, grad_and_value

Params = Mapping[str, torch.Tensor]


def sgd(loss_fn: Callable, params: Params, batches: Iterable, lr: float) -> dict:
    """One plain SGD step per batch from ``params``; returns new (detached) tensors."""
    fast = {k: v.detach() for k, v in params.items()}
    for batch in batches:
        g = grad(loss_fn)(fast, batch)
        fast = {k: fast[k] - lr * g[k] for k in fast}
    return fast


def adapt(loss_fn: Callable, params: Params, batch, steps: int, lr: float) -> dict:
    """``steps`` SGD steps on ``batch`` from ``params``; returns new (detached) tensors."""
    return sgd(loss_fn, params, [batch] * steps, lr)


def fomaml_step(loss_fn: Callable, params: Params, optimizer: torch.optim.Optimizer,
                tasks: Sequence[tuple], inner_steps: int = 3, inner_lr: float = 0.01
                ) -> float:
    """One meta-update from a meta-batch of ``(support, query)`` tasks.

    Returns the mean query loss at the adapted weights (before the update).
    """
    if not tasks:
        raise ValueError("a meta-batch needs at least one task")
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    losses = []
    for support, query in tasks:
        fast = adapt(loss_fn, params, support, inner_steps, inner_lr)
        g, value = grad_and_value(loss_fn)(fast, query)
        for k in total:
            total[k] += g[k] / len(tasks)
        losses.append(float(value))
    optimizer.zero_grad(set_to_none=True)
    for k, v in params.items():
        v.grad = total[k]
    optimizer.step()
    return sum(losses) / len(losses)
