"""The SAC head's emotion prototypes (after EEGDancer), label-free.

Every trial's per-token embeddings (what :class:`sleepemo.rl.inputs.SacInputs` makes of
the stage-02 MAE's or fold k's stage-04 fused tokens) are projected to ``rl.sac_dim``
and quantised by a VQ codebook (``vector_quantize_pytorch.VectorQuantize``: k-means
initialisation, dead codes reset). :class:`Prototypes` is trained by masked temporal
modelling: a fraction of the tokens is replaced by a mask vector and a bidirectional GRU
over the quantised sequence reconstructs their embeddings. No label is used (every
participant's trials are unlabelled inputs, as for the MAE). A token's state is its code
vector (:func:`code_vectors`).

Stage 05 trains them once per run (``prototypes.pt``) or once per fold
(``prototypes_fold<k>.pt``) and keeps them with a record (``.json``): :func:`prototype_codes`;
:mod:`sleepemo.rl.predict` loads them (:func:`load_prototypes`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from sleepemo.io import write_json
from sleepemo.pipeline.artefacts import load_checkpoint, save_checkpoint
from sleepemo.progress import bar


class Prototypes(nn.Module):
    """See the module docstring. Input (batch, n_tokens, n_in)."""

    def __init__(self, n_in: int, dim: int = 32, codebook: int = 32):
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.norm = nn.LayerNorm(n_in)
        self.proj = nn.Linear(n_in, dim)
        self.vq = VectorQuantize(dim=dim, codebook_size=codebook, decay=0.9,
                                 kmeans_init=True, kmeans_iters=10,
                                 threshold_ema_dead_code=2, commitment_weight=0.25)
        self.mask = nn.Parameter(torch.zeros(dim))
        self.context = nn.GRU(dim, dim, batch_first=True, bidirectional=True)
        self.recon = nn.Linear(2 * dim, n_in)

    def quantise(self, x: torch.Tensor):
        """-> (code vectors (b, T, dim), code indices (b, T), commitment loss)."""
        return self.vq(self.proj(self.norm(x)))

    def loss(self, x: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Masked temporal modelling: reconstruct the (normalised) embeddings of the
        ``masked`` tokens (b, T) from the quantised context, plus the commitment loss."""
        q, _, commit = self.quantise(x)
        q = torch.where(masked[..., None], self.mask.expand_as(q), q)
        h, _ = self.context(q)
        target = self.norm(x).detach()
        err = (self.recon(h) - target).pow(2).mean(-1)
        return err[masked].mean() + commit.sum()


def train_prototypes(embeddings: list[np.ndarray], cfg, seed: int, progress=None
                     ) -> tuple[Prototypes, list[float]]:
    """Train :class:`Prototypes` on unlabelled trials (``embeddings``: arrays
    (n_trials, n_tokens, n_in)); returns the model and its loss per step."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 77])
    pool = np.concatenate(embeddings).astype(np.float32)
    model = Prototypes(pool.shape[-1], cfg.sac_dim, cfg.codebook)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.proto_lr)
    losses = []
    for _ in range(cfg.proto_steps):
        model.train()
        x = torch.from_numpy(pool[rng.integers(0, len(pool), cfg.proto_batch)])
        masked = torch.from_numpy(rng.random(x.shape[:2]) < cfg.proto_mask)
        loss = model.loss(x, masked)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
        if progress:
            progress()
    return model, losses


def code_vectors(model: Prototypes, x: np.ndarray, batch: int = 256
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(code vectors (n, T, dim) float32, code indices (n, T)) of trials x (n, T, n_in)."""
    model.eval()
    vecs, idx = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            q, ind, _ = model.quantise(torch.from_numpy(np.ascontiguousarray(
                x[i:i + batch], dtype=np.float32)))
            vecs.append(q.numpy())
            idx.append(ind.numpy())
    if not vecs:
        return (np.zeros((0, x.shape[1], model.proj.out_features), np.float32),
                np.zeros((0, x.shape[1]), np.int64))
    return np.concatenate(vecs).astype(np.float32), np.concatenate(idx)


def prototypes_path(folder, k: int | None) -> Path:
    """Stage 05's run-level prototypes (``k`` None) or fold k's."""
    return Path(folder) / ("prototypes.pt" if k is None else f"prototypes_fold{k}.pt")


def load_prototypes(path, fp: str, cfg) -> tuple[Prototypes, list[float]] | None:
    """(the prototypes, their loss per training step) kept in ``path`` if it carries
    fingerprint ``fp``, else None."""
    state = load_checkpoint(path, fp)
    if state is None:
        return None
    model = Prototypes(state["model"]["norm.weight"].shape[0], cfg.sac_dim, cfg.codebook)
    model.load_state_dict(state["model"])
    return model, state["losses"].tolist()


def prototype_codes(cfg, emb: dict, fp: str, path, seed: int, progress: bool = False
                    ) -> tuple[dict, dict]:
    """Every participant's code vectors (n_trials, n_decisions, rl.sac_dim) and the
    prototypes' record, from prototypes trained on unlabelled trials of ``emb``
    (participant -> (n_trials, n_decisions, n_in)), kept in ``path`` (loaded from it
    when its fingerprint ``fp`` matches) with the record beside it (``.json``)."""

    found = load_prototypes(path, fp, cfg)
    if found is not None:
        model, losses = found
    else:
        rng = np.random.default_rng([seed, 7])
        sample = [e[rng.choice(len(e), size=min(cfg.proto_trials, len(e)), replace=False)]
                  for e in emb.values()]
        prog = bar(total=cfg.proto_steps, desc="SAC: prototypes (masked modelling)",
                   unit="step", enabled=progress, leave=False)
        model, losses = train_prototypes(sample, cfg, seed, lambda: prog.update(1))
        prog.close()
        save_checkpoint(path, {"model": model.state_dict(),
                               "losses": torch.tensor(losses)}, fp)
    codes, used = {}, np.zeros(cfg.codebook, np.int64)
    for s, e in emb.items():
        codes[s], idx = code_vectors(model, e)
        used += np.bincount(idx.ravel(), minlength=cfg.codebook)
    record = {"loss_first": losses[0] if losses else None,
              "loss_last": losses[-1] if losses else None,
              "codes_used": int((used > 0).sum()), "codebook": cfg.codebook,
              "n_decisions": int(next(iter(codes.values())).shape[1])}
    write_json(Path(path).with_suffix(".json"), {"fingerprint": fp, **record})
    return codes, record
