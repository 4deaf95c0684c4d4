"""The DQN head (after RLEEGNet) and its supervised twin, on the same network body.

Body (:class:`CnnLstm`, the paper's 1D-CNN-LSTM): Conv1D 64 (kernel 7) -> PReLU ->
Conv1D 128 (kernel 5) -> PReLU -> max-pooling -> spatial dropout -> LSTM -> global max
pooling over time, beside a dense layer on the trial statistics. The DQN uses it as a
stable-baselines3 features extractor (:class:`CnnLstmExtractor`) under a ``[64]`` Q-head;
the twin puts the same ``[64]`` head on it and is trained by cross-entropy with the same
batch size and number of gradient steps.

Exploration decays exponentially (:func:`exponential_schedule`; SB3's own is linear).
P(emotional) comes from the two outputs (Q-values or logits) through a softmax whose
temperature is fitted on participants the head was not trained on (:func:`fit_temperature`).

Weights are saved as plain tensors (``state_dict``) and loaded with
``torch.load(weights_only=True)``; SB3's zip format unpickles Python objects and is not
used for files this project reads back.

One LOPO fold of the head and its twin: :func:`run_dqn_fold` (stage 05's fold k).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sleepemo.pipeline.artefacts import load_checkpoint, save_checkpoint
from sleepemo.rl.env import TrialEnv
from sleepemo.rl.features import FoldFeatures, features_path, save_fold_features
from sleepemo.rl.training import (Curve, Curves, curve_tensors, inner_split, quiet_logger,
                                  refuse_held_out)


class CnnLstm(nn.Module):
    """See the module docstring. Input ``{"series": (b, n_series, T), "stats": (b, k)}``."""

    def __init__(self, n_series: int, n_stats: int, lstm: int = 128, dropout: float = 0.2):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(n_series, 64, 7, padding=3), nn.PReLU(64),
            nn.Conv1d(64, 128, 5, padding=2), nn.PReLU(128),
            nn.MaxPool1d(2), nn.Dropout1d(dropout))
        self.lstm = nn.LSTM(128, lstm, batch_first=True)
        self.stats = nn.Sequential(nn.Linear(n_stats, 64), nn.PReLU(64))
        self.out_dim = lstm + 64

    def forward(self, obs: dict) -> torch.Tensor:
        h = self.conv(obs["series"])
        h, _ = self.lstm(h.transpose(1, 2))
        return torch.cat([h.amax(1), self.stats(obs["stats"])], dim=1)


def _extractor_class():
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class CnnLstmExtractor(BaseFeaturesExtractor):
        """:class:`CnnLstm` as an SB3 features extractor (Dict observations)."""

        def __init__(self, observation_space, lstm: int = 128, dropout: float = 0.2):
            body = CnnLstm(observation_space["series"].shape[0],
                           observation_space["stats"].shape[0], lstm, dropout)
            super().__init__(observation_space, body.out_dim)
            self.body = body

        def forward(self, obs):
            return self.body(obs)

    return CnnLstmExtractor


def exponential_schedule(start: float = 1.0, end: float = 0.05, decay: float = 5.0):
    """Epsilon as a function of SB3's ``progress_remaining`` (1 -> 0):
    ``end + (start - end) * exp(-decay * progress)``."""
    def schedule(progress_remaining: float) -> float:
        return end + (start - end) * math.exp(-decay * (1.0 - progress_remaining))
    return schedule


def _policy_kwargs(cfg) -> dict:
    """The DQN policy's network: the CNN-LSTM body under a ``[64]`` Q-head."""
    return dict(features_extractor_class=_extractor_class(),
                features_extractor_kwargs=dict(lstm=cfg.lstm, dropout=cfg.dropout),
                net_arch=[64])


def make_dqn(env, cfg, seed: int):
    """An SB3 DQN on ``env`` with the CNN-LSTM body and the exponential exploration."""
    from stable_baselines3 import DQN

    model = DQN("MultiInputPolicy", env, learning_rate=cfg.lr, buffer_size=cfg.buffer_size,
                learning_starts=cfg.learning_starts, batch_size=cfg.batch_size,
                gamma=cfg.gamma, train_freq=1, gradient_steps=1,
                target_update_interval=cfg.target_update_interval,
                policy_kwargs=_policy_kwargs(cfg), seed=seed, device="cpu", verbose=0)
    model.set_logger(quiet_logger())
    model.exploration_schedule = exponential_schedule(cfg.eps_start, cfg.eps_end,
                                                      cfg.eps_decay)
    return model


def q_network(observation_space, cfg, policy_state: dict):
    """A trained DQN's ``q_net`` rebuilt from its policy's saved ``state_dict`` (the
    DQN of :func:`make_dqn` on an environment with ``observation_space``), without the
    environment or the replay buffer."""
    from gymnasium import spaces
    from stable_baselines3.dqn.policies import MultiInputPolicy

    policy = MultiInputPolicy(observation_space, spaces.Discrete(2), lambda _: cfg.lr,
                              **_policy_kwargs(cfg))
    policy.load_state_dict(policy_state)
    return policy.q_net


def fold_checkpoint(folder, k: int) -> Path:
    """Stage 05's fold-k checkpoint of the DQN's policy and the twin (``"dqn"``,
    ``"twin"``: ``state_dict`` tensors) and their learning curves."""
    return Path(folder) / f"rl_fold{k}.pt"


def gradient_steps(cfg) -> int:
    """The DQN's gradient steps (one per environment step after ``learning_starts``):
    the twin gets as many."""
    return max(0, cfg.env_steps - cfg.learning_starts)


class Twin(nn.Module):
    """The supervised twin: the same body and ``[64]`` head, two logits."""

    def __init__(self, n_series: int, n_stats: int, lstm: int = 128, dropout: float = 0.2):
        super().__init__()
        self.body = CnnLstm(n_series, n_stats, lstm, dropout)
        self.head = nn.Sequential(nn.Linear(self.body.out_dim, 64), nn.ReLU(),
                                  nn.Linear(64, 2))

    def forward(self, obs: dict) -> torch.Tensor:
        return self.head(self.body(obs))


def train_twin(series: np.ndarray, stats: np.ndarray, labels: np.ndarray, cfg,
               seed: int, callback=None) -> Twin:
    """Cross-entropy training of :class:`Twin` with the DQN's batch size, learning rate
    and number of gradient steps (minibatches drawn uniformly, as from a replay buffer).
    ``callback(step, model)`` is called every step if given."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 55])
    model = Twin(series.shape[1], stats.shape[1], cfg.lstm, cfg.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    s, f = torch.from_numpy(series), torch.from_numpy(stats)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    for step in range(1, gradient_steps(cfg) + 1):
        model.train()
        idx = torch.from_numpy(rng.integers(0, len(y), cfg.batch_size))
        loss = nn.functional.cross_entropy(model({"series": s[idx], "stats": f[idx]}), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)  # as SB3's DQN does
        opt.step()
        if callback:
            callback(step, model)
    return model


def outputs(net, feats: dict, batch: int = 512) -> np.ndarray:
    """The two outputs (Q-values of a DQN's ``q_net`` or a twin's logits), (n, 2)."""
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(feats["stats"]), batch):
            out.append(net({k: torch.from_numpy(v[i:i + batch]) for k, v in feats.items()}
                           ).numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def fit_temperature(out: np.ndarray, labels: np.ndarray) -> float:
    """The softmax temperature minimising the log-loss of ``out`` (n, 2) on ``labels``,
    between 0.01 and 10 times the spread of ``out[:, 1] - out[:, 0]``: an uninformative
    head would otherwise get a temperature so large that its float32 probabilities tie
    and lose the ranking the metric scores."""
    from scipy.optimize import minimize_scalar

    d = (out[:, 1] - out[:, 0]).astype(np.float64)
    y = np.asarray(labels, dtype=np.float64)
    sd = float(d.std()) or 1.0

    def nll(log_t):
        z = d / math.exp(log_t)
        return float(np.mean(np.logaddexp(0, z) - y * z))

    bounds = (math.log(0.01 * sd), math.log(10 * sd))
    return math.exp(minimize_scalar(nll, bounds=bounds, method="bounded").x)


def probability(out: np.ndarray, temperature: float) -> np.ndarray:
    """P(emotional) = softmax(out / temperature)[:, 1]."""
    z = (out[:, 1] - out[:, 0]) / temperature
    return (1 / (1 + np.exp(-z))).astype(np.float32)


def trial_probability(net, feats: dict, temperature: float) -> np.ndarray:
    """P(emotional) of one participant's trials (n,) float32: the network's two outputs
    on the fold's features (:meth:`sleepemo.rl.features.FoldFeatures.transform`) through
    the fold's softmax temperature. Stage 05's test predictions and
    :mod:`sleepemo.rl.predict` both use it."""
    return probability(outputs(net, feats), temperature)


def broadcast(p: np.ndarray, n_times: int) -> np.ndarray:
    """Trial probabilities (n,) copied to every timepoint, (n, n_times)."""
    return np.repeat(p[:, None], n_times, axis=1)


# ------------------------------------------------------------------ one LOPO fold
def inner_auc(out_by_subject: dict, labels: dict) -> float:
    """Mean within-participant AUC of ``out[:, 1] - out[:, 0]`` (the trial ranking the
    metric scores when a prediction is broadcast over the trial)."""
    from sklearn.metrics import roc_auc_score

    return float(np.mean([roc_auc_score(labels[s], o[:, 1] - o[:, 0])
                          for s, o in out_by_subject.items()]))


def run_dqn_fold(cfg, signals: dict, labels: dict, held: int, test_subjects, k: int,
                 seed: int, n_times: int, ckpt=None, fp: str = "", progress=None) -> dict:
    """Fold k's DQN and twin (:mod:`sleepemo.rl.stage`): the fold's features fitted on
    its training participants but the inner ones, the DQN learning ``rl.env_steps`` steps
    of :class:`~sleepemo.rl.env.TrialEnv`, the twin as many gradient steps, the softmax
    temperatures fitted on the inner participants. ``signals``: every participant's
    (:func:`~sleepemo.rl.features.participant_signals`); ``labels``: the fold's training
    participants' only. ``ckpt`` (with fingerprint ``fp``): the networks and curves,
    loaded when there, else saved, and the fold's features beside them. Returns
    ``{"dqn": arrays, "dqn_twin": arrays}`` (a result's fold)."""

    refuse_held_out(labels, held, k)
    subjects = sorted(labels)
    inner, train = inner_split(cfg, labels, seed, k)
    feats = FoldFeatures(cfg.n_csp).fit({s: signals[s] for s in train},
                                        {s: labels[s] for s in train}, held_out=held)
    if ckpt:  # what sleepemo predict transforms a new participant with
        save_fold_features(features_path(Path(ckpt).parent, k), feats, fp)
    F = {s: feats.transform(signals[s]) for s in [*subjects, held, *test_subjects]}
    series = np.concatenate([F[s]["series"] for s in train])
    stats = np.concatenate([F[s]["stats"] for s in train])
    y = np.concatenate([labels[s] for s in train]).astype(np.int64)
    env = TrialEnv(series, stats, y, cfg.episode_len)
    dqn = make_dqn(env, cfg, seed=seed * 1000 + k)
    twin = Twin(series.shape[1], stats.shape[1], cfg.lstm, cfg.dropout)
    inner_labels = {s: labels[s] for s in inner}
    state = load_checkpoint(ckpt, fp) if ckpt else None
    if state is not None:
        dqn.policy.load_state_dict(state["dqn"])
        twin.load_state_dict(state["twin"])
        curves = {key: state[key] for key in ("dqn_curve", "twin_curve", "episode_reward")}
    else:
        def dqn_score(model):
            score = inner_auc({s: outputs(model.q_net, F[s]) for s in inner_labels},
                              inner_labels)
            model.q_net.train()
            return score

        learnt = Curves(Curve(dqn_score, cfg.eval_every, cfg.env_steps), progress=progress)
        dqn.learn(total_timesteps=cfg.env_steps, callback=learnt)
        twin_curve = Curve(lambda model: inner_auc({s: outputs(model, F[s]) for s in inner},
                                                   inner_labels),
                           cfg.eval_every, gradient_steps(cfg))
        twin = train_twin(series, stats, y, cfg, seed=seed * 1000 + k, callback=twin_curve)
        curves = curve_tensors({"dqn_curve": learnt.curve.points,
                                "twin_curve": twin_curve.points,
                                "episode_reward": learnt.episode_reward})
        if ckpt:
            save_checkpoint(ckpt, {"dqn": dqn.policy.state_dict(),
                                   "twin": twin.state_dict(), **curves}, fp)
    out = {}
    for name, net in (("dqn", dqn.q_net), ("dqn_twin", twin)):
        temp = fit_temperature(np.concatenate([outputs(net, F[s]) for s in inner]),
                               np.concatenate([labels[s] for s in inner]))
        arrays = {"temperature": np.float64(temp), "inner": np.asarray(inner)}
        for role, subs in (("oof", [held]), ("test", list(test_subjects))):
            p = np.concatenate([trial_probability(net, F[s], temp) for s in subs]) \
                if subs else np.zeros(0, np.float32)
            arrays[f"{role}_trial"] = p
            arrays[role] = broadcast(p, n_times)
        arrays["curve"] = np.asarray(curves["dqn_curve" if name == "dqn" else "twin_curve"])
        if name == "dqn":
            arrays["episode_reward"] = np.asarray(curves["episode_reward"])
        out[name] = arrays
    return out
