"""The SAC head (after EEGDancer) and its supervised twin, over emotion prototypes.

1. **Prototypes** (:mod:`sleepemo.rl.prototypes`, label-free): every trial becomes a
   sequence of code vectors, one per decision token (:class:`sleepemo.rl.inputs.SacInputs`).
2. **Environment** (:class:`TrajectoryEnv`): one trial per episode, one decision per token.
   Observation: (code vector at token t, the previous output, t / T); action: the
   probability p_t in [0, 1]; reward: the log-likelihood of the trial's label under p_t
   minus ``lambda * |p_t - p_{t-1}|``. The label enters only the reward.
3. **SAC** (stable-baselines3) learns on it; at prediction the policy runs
   deterministically along each trial, its previous output fed back.
4. **Twin** (:class:`GruTwin`): a GRU over the same code vectors giving p_t per token,
   trained by per-token cross-entropy plus the same smoothness penalty, with SAC's number
   of gradient steps and as many token decisions per step as SAC's batch.

One LOPO fold of the head and its twin: :func:`run_sac_fold` (stage 05's fold k).
"""
from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from sleepemo.metric import window_auc
from sleepemo.pipeline.artefacts import load_checkpoint, save_checkpoint
from sleepemo.rl.training import (Curve, Curves, curve_tensors, inner_split, quiet_logger,
                                  refuse_held_out)

EPS = 1e-3  # probabilities are clipped to [EPS, 1 - EPS] in the log-likelihood


# ------------------------------------------------------------------ environment
def step_reward(p: np.ndarray, prev: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """log P(y | p) - lambda |p - prev| (elementwise)."""
    q = np.clip(p, EPS, 1 - EPS)  # (the log only: the penalty sees the action itself)
    return y * np.log(q) + (1 - y) * np.log(1 - q) - lam * np.abs(p - prev)


def trajectory_spaces(dim: int) -> tuple[spaces.Box, spaces.Box]:
    """(observation, action) spaces of :class:`TrajectoryEnv` for code vectors of
    ``dim``: (code vector, previous output, t / T) and a probability."""
    return (spaces.Box(-np.inf, np.inf, (dim + 2,), np.float32),
            spaces.Box(0.0, 1.0, (1,), np.float32))


class TrajectoryEnv(gym.Env):
    """See the module docstring, part 2. ``codes`` (n_trials, T, dim); ``labels`` 0/1.
    Episodes visit trials in an order drawn by the seeded generator."""

    metadata = {"render_modes": []}

    def __init__(self, codes: np.ndarray, labels: np.ndarray, lam: float = 0.0):
        super().__init__()
        labels = np.asarray(labels)
        if codes.ndim != 3 or len(codes) != len(labels) or len(labels) == 0:
            raise ValueError(f"codes {codes.shape} and {len(labels)} labels: expected "
                             "(n_trials, n_tokens, dim) and one label per trial")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("labels must be 0 (neutral) or 1 (emotional)")
        self.codes = np.ascontiguousarray(codes, dtype=np.float32)
        self.labels = labels.astype(np.float32)
        self.lam = float(lam)
        self.n_tokens, dim = codes.shape[1:]
        self.observation_space, self.action_space = trajectory_spaces(dim)
        self._trial, self._t, self._prev, self._total = 0, 0, 0.5, 0.0

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.codes[self._trial, min(self._t, self.n_tokens - 1)],
                               [self._prev, self._t / self.n_tokens]]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._trial = int(self.np_random.integers(len(self.labels)))
        self._t, self._prev, self._total = 0, 0.5, 0.0
        return self._obs(), {}

    def step(self, action):
        p = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], 0.0, 1.0))
        reward = float(step_reward(np.float64(p), np.float64(self._prev),
                                   self.labels[self._trial], self.lam))
        self._prev, self._t = p, self._t + 1
        self._total += reward
        terminated = self._t >= self.n_tokens
        info = {"episode_reward": self._total} if terminated else {}
        return self._obs(), reward, terminated, False, info


def make_sac(env, cfg, seed: int):
    """An SB3 SAC on ``env`` (MLP ``[64, 64]`` actor and critics)."""
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", env, learning_rate=cfg.lr, buffer_size=cfg.buffer_size,
                learning_starts=cfg.sac_learning_starts, batch_size=cfg.batch_size,
                gamma=cfg.sac_gamma, train_freq=1, gradient_steps=1,
                policy_kwargs=SAC_POLICY, seed=seed, device="cpu", verbose=0)
    model.set_logger(quiet_logger())
    return model


#: the SAC's actor and critics
SAC_POLICY = dict(net_arch=[64, 64])


def sac_policy(dim: int, cfg, policy_state: dict):
    """A trained SAC's policy (what :func:`rollout` runs) rebuilt from its saved
    ``state_dict``, for code vectors of ``dim``, without an environment or a buffer."""
    from stable_baselines3.sac.policies import SACPolicy

    policy = SACPolicy(*trajectory_spaces(dim), lambda _: cfg.lr, **SAC_POLICY)
    policy.load_state_dict(policy_state)
    return policy


def sac_gradient_steps(cfg) -> int:
    return max(0, cfg.sac_env_steps - cfg.sac_learning_starts)


def rollout(model, codes: np.ndarray, batch: int = 1024) -> np.ndarray:
    """The SAC policy (a SAC or its policy: anything with SB3's ``predict``) run
    deterministically along every trial: p (n_trials, T)."""
    n, T, _ = codes.shape
    out = np.zeros((n, T), np.float32)
    for i in range(0, n, batch):
        c = codes[i:i + batch]
        prev = np.full(len(c), 0.5, np.float32)
        for t in range(T):
            obs = np.concatenate([c[:, t], prev[:, None],
                                  np.full((len(c), 1), t / T, np.float32)], 1)
            prev = np.clip(model.predict(obs, deterministic=True)[0][:, 0], 0, 1
                           ).astype(np.float32)
            out[i:i + batch, t] = prev
    return out


# ------------------------------------------------------------------ twin
class GruTwin(nn.Module):
    """See the module docstring, part 4: code vectors (b, T, dim) -> logits (b, T)."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(codes)
        return self.head(h)[..., 0]


def twin_loss(logits: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """Per-token cross-entropy of the trial's label plus lambda * mean |p_t - p_{t-1}|
    (the SAC reward's negative, token for token)."""
    bce = nn.functional.binary_cross_entropy_with_logits(
        logits, y[:, None].expand_as(logits))
    p = torch.sigmoid(logits)
    return bce + lam * (p[:, 1:] - p[:, :-1]).abs().mean()


def train_gru_twin(codes: np.ndarray, labels: np.ndarray, cfg, lam: float, seed: int,
                   callback=None) -> GruTwin:
    """:class:`GruTwin` with SAC's gradient steps; each step sees ``batch_size`` token
    decisions (``batch_size // T`` trials, at least one)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 66])
    model = GruTwin(codes.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    c = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.float32))
    per = max(1, cfg.batch_size // codes.shape[1])
    for step in range(1, sac_gradient_steps(cfg) + 1):
        model.train()
        idx = torch.from_numpy(rng.integers(0, len(y), per))
        loss = twin_loss(model(c[idx]), y[idx], lam)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if callback:
            callback(step, model)
    return model


def twin_probability(model: GruTwin, codes: np.ndarray, batch: int = 512) -> np.ndarray:
    """p (n_trials, T) of the twin."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(codes), batch):
            out.append(torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(
                codes[i:i + batch], dtype=np.float32)))).numpy())
    return np.concatenate(out) if out else np.zeros(codes.shape[:2], np.float32)


# ------------------------------------------------------------------ predictions
def tokens_to_timepoints(p: np.ndarray, n_times: int) -> np.ndarray:
    """Per-token probabilities (n, T) -> every timepoint (linear interpolation)."""
    t = torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32))[:, None]
    if t.shape[-1] != n_times and len(t):
        t = torch.nn.functional.interpolate(t, size=n_times, mode="linear",
                                            align_corners=False)
    return t[:, 0].numpy().reshape(len(p), n_times).astype(np.float32)


def token_probability(net, codes: np.ndarray) -> np.ndarray:
    """p (n_trials, T) of a SAC (or its policy: :func:`rollout`) or a twin
    (:func:`twin_probability`): stage 05's predictions and :mod:`sleepemo.rl.predict`'s."""
    return twin_probability(net, codes) if isinstance(net, GruTwin) else rollout(net, codes)


# ------------------------------------------------------------------ one LOPO fold
def sac_checkpoint(folder, k: int) -> Path:
    """Stage 05's fold-k checkpoint of the SAC's policy and the twin (``"sac"``,
    ``"twin"``: ``state_dict`` tensors), the chosen lambda and the curves."""
    return Path(folder) / f"sac_fold{k}.pt"


def token_score(p_by_subject: dict, labels: dict) -> float:
    """The competition metric on per-token probabilities (inner participants)."""
    return window_auc(labels, p_by_subject, min_run=1).score


def run_sac_fold(cfg, codes: dict, labels: dict, held: int, test_subjects, k: int,
                 seed: int, n_times: int, ckpt=None, fp: str = "", progress=None) -> dict:
    """Fold k's SAC head and GRU twin (:mod:`sleepemo.rl.stage`): the smoothness weight
    lambda chosen among ``rl.sac_lambdas`` by the twin's score on the inner participants,
    then SAC learning ``rl.sac_env_steps`` steps of :class:`TrajectoryEnv` on the other
    training participants. ``codes``: every participant's code vectors; ``labels``: the
    fold's training participants' only. ``ckpt`` (with fingerprint ``fp``): the networks,
    lambda and curves, loaded when there, else saved. Returns ``{"sac": arrays,
    "sac_twin": arrays}`` (a result's fold)."""

    refuse_held_out(labels, held, k)
    inner, train = inner_split(cfg, labels, seed, k)
    inner_labels = {s: labels[s] for s in inner}
    X = np.concatenate([codes[s] for s in train])
    y = np.concatenate([labels[s] for s in train]).astype(np.int64)
    env = TrajectoryEnv(X, y)
    sac = make_sac(env, cfg, seed=seed * 1000 + k)
    state = load_checkpoint(ckpt, fp) if ckpt else None
    if state is not None:
        sac.policy.load_state_dict(state["sac"])
        lam = float(state["lam"])

        twin = GruTwin(X.shape[-1])
        twin.load_state_dict(state["twin"])
        curves = {key: state[key] for key in ("sac_curve", "twin_curve", "episode_reward",
                                              "lambda_scores")}
    else:
        tried = {}
        for lam in cfg.sac_lambdas:  # lambda chosen inside the fold, by the twin
            curve = Curve(lambda model: token_score(
                {s: twin_probability(model, codes[s]) for s in inner}, inner_labels),
                cfg.eval_every, sac_gradient_steps(cfg))
            model = train_gru_twin(X, y, cfg, lam, seed=seed * 1000 + k, callback=curve)
            tried[lam] = (curve.points[-1][1] if curve.points else 0.5, model, curve.points)
        lam = max(tried, key=lambda v: tried[v][0])  # ties: the first (smallest) listed
        twin = tried[lam][1]
        env.lam = lam
        learnt = Curves(Curve(lambda model: token_score(
            {s: rollout(model, codes[s]) for s in inner_labels}, inner_labels),
            cfg.eval_every, cfg.sac_env_steps), per_step=env.n_tokens, progress=progress)
        sac.learn(total_timesteps=cfg.sac_env_steps, callback=learnt)
        curves = curve_tensors({"sac_curve": learnt.curve.points, "twin_curve": tried[lam][2],
                                "episode_reward": learnt.episode_reward,
                                "lambda_scores": [[v, t[0]] for v, t in tried.items()]})
        if ckpt:
            save_checkpoint(ckpt, {"sac": sac.policy.state_dict(), "twin": twin.state_dict(),
                                   "lam": torch.tensor(lam), **curves}, fp)
    out = {}
    for name, net in (("sac", sac), ("sac_twin", twin)):
        arrays = {"lam": np.float64(lam), "inner": np.asarray(inner),
                  "lambda_scores": np.asarray(curves["lambda_scores"])}
        for role, subs in (("oof", [held]), ("test", list(test_subjects))):
            parts = [token_probability(net, codes[s]) for s in subs] or \
                [np.zeros((0, codes[held].shape[1]), np.float32)]
            p = np.concatenate(parts)
            # per participant, as sleepemo predict interpolates (see stage 04)
            arrays[role] = np.concatenate([tokens_to_timepoints(q, n_times) for q in parts])
            arrays[f"{role}_trial"] = p.mean(1).astype(np.float32)
        arrays["curve"] = np.asarray(curves["sac_curve" if name == "sac" else "twin_curve"])
        if name == "sac":
            arrays["episode_reward"] = np.asarray(curves["episode_reward"])
        out[name] = arrays
    return out
