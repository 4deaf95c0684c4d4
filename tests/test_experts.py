"""Stage 03 building blocks: experts batched with vmap, and FOMAML on a known toy problem."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from sleepemo.meta import adapt, fomaml_step
from sleepemo.models.experts import ExpertBank, loop_forward, make_experts
from sleepemo.models.mae import ChannelEncoder, EncoderConfig, n_parameters


def test_expert_size_and_mae_initialisation():
    enc = ChannelEncoder(EncoderConfig())
    experts = make_experts(16, encoder_state=enc.state_dict())
    # the encoder without channel embedding (19,520) + two heads of 16 + 1
    assert n_parameters(experts[0]) == 19520 + 2 * 17
    for c in (0, 7, 15):
        torch.testing.assert_close(experts[c].encoder.blocks[1].mlp.fc1.weight,
                                   enc.blocks[1].mlp.fc1.weight)
        torch.testing.assert_close(experts[c].encoder.pos, enc.pos + enc.chan.weight[c])


def test_vmap_and_loop_give_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    experts = make_experts(16, seed=1)
    bank = ExpertBank(experts)
    x = torch.randn(6, 16, 200, 5)
    (tv, rv), (tl, rl) = bank(x), loop_forward(experts, x)
    assert tv.shape == (16, 6, 200) and rv.shape == (16, 6)
    torch.testing.assert_close(tv, tl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rv, rl, rtol=1e-5, atol=1e-5)
    # gradients of a summed loss: expert c's gradient equals the loop's
    (tv.square().mean() + rv.sum()).backward()
    (tl.square().mean() + rl.sum()).backward()
    for c in (0, 9):
        torch.testing.assert_close(bank.params["time_head.weight"].grad[c],
                                   experts[c].time_head.weight.grad, rtol=1e-4, atol=1e-6)
    # and the materialised experts carry the bank's parameters
    torch.testing.assert_close(loop_forward(bank.experts(), x)[0], tv, rtol=1e-5, atol=1e-5)


def _sine_tasks(gen, n_tasks, k=10):
    """Regression tasks y = a sin(x + b): the classic MAML sanity check."""
    tasks = []
    for _ in range(n_tasks):
        a = 0.5 + 4.5 * torch.rand(1, generator=gen)
        b = math.pi * torch.rand(1, generator=gen)
        xs = 10 * torch.rand(2 * k, 1, generator=gen) - 5
        ys = a * torch.sin(xs + b)
        tasks.append(((xs[:k], ys[:k]), (xs[k:], ys[k:])))
    return tasks


def test_fomaml_init_adapts_faster_than_random_init_on_new_tasks():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(),
                        nn.Linear(40, 1))
    init = {k: v.detach().clone() for k, v in net.named_parameters()}
    meta = {k: v.clone().requires_grad_(True) for k, v in init.items()}

    def loss_fn(params, batch):
        x, y = batch
        return ((functional_call(net, params, (x,)) - y) ** 2).mean()

    opt = torch.optim.Adam(meta.values(), lr=0.01)
    gen = torch.Generator().manual_seed(1)
    for _ in range(600):
        fomaml_step(loss_fn, meta, opt, _sine_tasks(gen, 5), inner_steps=3, inner_lr=0.01)

    held_out = _sine_tasks(torch.Generator().manual_seed(99), 50)

    def after_adaptation(params):
        losses = [loss_fn(adapt(loss_fn, params, s, 3, 0.01), q).item() for s, q in held_out]
        return sum(losses) / len(losses)

    meta_loss, random_loss = after_adaptation(meta), after_adaptation(init)
    print(f"after 3 steps: meta-init {meta_loss:.3f}, random init {random_loss:.3f}")
    assert meta_loss < 0.5 * random_loss, (meta_loss, random_loss)
    # and the meta-update really moved the parameters
    assert not torch.allclose(meta["0.weight"], init["0.weight"])


def test_folded_forward_matches_the_experts():
    from sleepemo.models.experts import folded_forward

    experts = make_experts(16, encoder_state=ChannelEncoder(EncoderConfig()).state_dict(),
                           seed=2)
    bank = ExpertBank(experts)
    x = torch.randn(5, 16, 200, 5)
    tf, rf = folded_forward(bank.params, x, n_heads=4)
    tl, rl = loop_forward(experts, x)
    torch.testing.assert_close(tf, tl, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rf, rl, rtol=1e-4, atol=1e-4)
    g = torch.func.grad(lambda p: folded_forward(p, x, 4)[1].sum())(bank.params)
    (loop_forward(experts, x)[1].sum()).backward()
    torch.testing.assert_close(g["encoder.blocks.2.mlp.fc2.weight"][3],
                               experts[3].encoder.blocks[2].mlp.fc2.weight.grad,
                               rtol=1e-3, atol=1e-5)
