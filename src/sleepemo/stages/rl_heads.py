"""Stage 05: reinforcement-learning heads against their supervised twins, under LOPO.

Built so far: the **DQN head** (after RLEEGNet) and its twin. Per fold k:

1. every participant's label-free signals (:func:`sleepemo.rl.features.participant_signals`,
   computed once);
2. ``rl.n_inner_val`` of fold k's training participants are set aside (they fit the
   softmax temperatures and give the learning curves); the CSP and the scalings
   (:class:`sleepemo.rl.features.FoldFeatures`) are fitted on the others' labels, which
   come only from :meth:`Folds.labels_of` (the held-out participant is refused);
3. the DQN (:func:`sleepemo.rl.heads.make_dqn`) learns for ``rl.env_steps`` steps of the
   trial environment (:class:`sleepemo.rl.env.TrialEnv`) on those trials; the twin
   (:func:`sleepemo.rl.heads.train_twin`) gets the same batch size and as many gradient
   steps;
4. P(emotional) of the held-out and test participants from each head's two outputs,
   broadcast over the trial's timepoints.

Results ``rl_dqn`` and ``rl_dqn_twin`` (``_shuffled`` with ``rl.shuffle_labels``) through
the predictions contract; ``<out>/05_rl_heads/``: per result ``fold<k>.npz`` and the
assembled arrays; ``rl_<head>.pt`` per fold (both networks' weights as tensors, the
curves: the resume point), ``learning_curves.png``, ``metrics.json``, ``evidence.md``.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from ..artefacts import (ResultWriter, code_hash, fingerprint, load_checkpoint, results,
                         save_checkpoint)
from ..config import RLConfig, fields_affecting
from ..progress import bar
from ..report import pyplot, results_table, save_figure, to_markdown
from ..rl.features import FoldFeatures, participant_signals
from ..stage import Stage, StageOutput


def _inner_auc(out_by_subject: dict, labels: dict) -> float:
    """Mean within-participant AUC of ``out[:, 1] - out[:, 0]`` (the trial ranking the
    metric scores when a prediction is broadcast over the trial)."""
    from sklearn.metrics import roc_auc_score

    return float(np.mean([roc_auc_score(labels[s], o[:, 1] - o[:, 0])
                          for s, o in out_by_subject.items()]))


def run_fold(cfg: RLConfig, signals: dict, labels: dict, held: int, test_subjects, k: int,
             seed: int, n_times: int, ckpt=None, fp: str = "", progress=None) -> dict:
    """Fold k's DQN and twin (see the module docstring); ``labels`` are the fold's
    training participants' only. Returns ``{"dqn": arrays, "dqn_twin": arrays}``."""
    from ..rl.env import TrialEnv
    from ..rl.heads import (Twin, fit_temperature, gradient_steps, make_dqn, outputs,
                            probability, train_twin)

    if held in labels:
        raise ValueError(f"participant {held} is held out in fold {k}: its labels must not "
                         "reach the training")
    rng = np.random.default_rng([seed, k, 5])
    subjects = sorted(labels)
    inner = sorted(int(s) for s in rng.choice(subjects, size=min(cfg.n_inner_val,
                                                                  len(subjects) - 1),
                                              replace=False))
    train = [s for s in subjects if s not in inner]
    feats = FoldFeatures(cfg.n_csp).fit({s: signals[s] for s in train},
                                        {s: labels[s] for s in train}, held_out=held)
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
        curves = {"dqn_curve": [], "twin_curve": [], "episode_reward": []}
        dqn.learn(total_timesteps=cfg.env_steps,
                  callback=_dqn_callback(cfg, F, inner_labels, curves, progress))

        def twin_cb(step, model):
            if step % cfg.eval_every == 0 or step == gradient_steps(cfg):
                curves["twin_curve"].append([step, _inner_auc(
                    {s: outputs(model, F[s]) for s in inner}, inner_labels)])

        twin = train_twin(series, stats, y, cfg, seed=seed * 1000 + k, callback=twin_cb)
        curves = {key: torch.tensor(v, dtype=torch.float64).reshape(-1, 2)
                  for key, v in curves.items()}
        if ckpt:
            save_checkpoint(ckpt, {"dqn": dqn.policy.state_dict(),
                                   "twin": twin.state_dict(), **curves}, fp)
    out = {}
    for name, net in (("dqn", dqn.q_net), ("dqn_twin", twin)):
        temp = fit_temperature(np.concatenate([outputs(net, F[s]) for s in inner]),
                               np.concatenate([labels[s] for s in inner]))
        arrays = {"temperature": np.float64(temp), "inner": np.asarray(inner)}
        for role, subs in (("oof", [held]), ("test", list(test_subjects))):
            p = np.concatenate([probability(outputs(net, F[s]), temp) for s in subs]) \
                if subs else np.zeros(0, np.float32)
            arrays[f"{role}_trial"] = p
            arrays[role] = np.repeat(p[:, None], n_times, axis=1)
        arrays["curve"] = np.asarray(curves["dqn_curve" if name == "dqn" else "twin_curve"])
        if name == "dqn":
            arrays["episode_reward"] = np.asarray(curves["episode_reward"])
        out[name] = arrays
    return out


def _dqn_callback(cfg: RLConfig, F: dict, inner_labels: dict, curves: dict, progress):
    """An SB3 callback: episode rewards, the inner participants' AUC every
    ``rl.eval_every`` environment steps, the progress bar."""
    from stable_baselines3.common.callbacks import BaseCallback

    from ..rl.heads import outputs

    class Curves(BaseCallback):
        def _on_step(self) -> bool:
            for info, done in zip(self.locals["infos"], self.locals["dones"]):
                if done and "episode_reward" in info:
                    curves["episode_reward"].append([self.num_timesteps,
                                                     info["episode_reward"]])
            if self.num_timesteps % cfg.eval_every == 0 or self.num_timesteps == cfg.env_steps:
                curves["dqn_curve"].append([self.num_timesteps, _inner_auc(
                    {s: outputs(self.model.q_net, F[s]) for s in inner_labels},
                    inner_labels)])
                self.model.q_net.train()
            if progress:
                progress()
            return True

    return Curves()


# ------------------------------------------------------------------ the stage
def output_name(cfg: RLConfig, head: str) -> str:
    return f"rl_{head}" + ("_shuffled" if cfg.shuffle_labels else "")


def run(stage: Stage) -> StageOutput:
    """Everything stage 05 does (see the module docstring)."""
    cfg, seed = stage.cfg.rl, stage.cfg.seed
    ds = stage.dataset()
    folds = stage.folds(ds)
    fp = fingerprint(stage="rl_heads", seed=seed, rl=fields_affecting(cfg, "weights"),
                     data=folds.data_fingerprint, code=code_hash())
    names = [h for head in cfg.heads for h in (head, f"{head}_twin")]
    writers = {n: ResultWriter(stage.out, stage.spec.name, output_name(cfg, n), fp, folds)
               for n in names}
    pending = [k for k in range(folds.n_folds)
               if not all(w.fold_done(k) for w in writers.values())]
    subjects = list(folds.train_subjects) + list(folds.test_subjects)
    signals = {s: participant_signals(ds.subject(s).X, ds.sfreq, tuple(cfg.band), cfg.decim)
               for s in bar(subjects if pending else [], desc="RL signals",
                            enabled=stage.progress)}  # (none when every fold is done)
    progress = bar(total=folds.n_folds * cfg.env_steps, desc="RL: LOPO folds x env steps",
                   unit="step", enabled=stage.progress)
    progress.update(cfg.env_steps * (folds.n_folds - len(pending)))
    seconds = []
    for k in pending:
        held = folds.held_out(k)
        progress.set_postfix(fold=k, held_out=f"S{held}")
        t0 = time.perf_counter()
        parts = run_fold(cfg, signals, folds.labels_of(ds, k, cfg.shuffle_labels, seed),
                         held, folds.test_subjects, k, seed, ds.n_times,
                         stage.dir / f"rl_fold{k}.pt", fp, lambda: progress.update(1))
        for n, arrays in parts.items():
            writers[n].save_fold(k, **arrays)
        seconds.append(time.perf_counter() - t0)
    progress.close()
    finished = {n: w.finished() or w.finish(ds, seed=seed, diagnostic=cfg.shuffle_labels,
                                            config=dataclasses.asdict(cfg),
                                            meta={"registry": "rl", "head": n})
                for n, w in writers.items()}
    return _report(stage, finished, writers, seconds)


def _report(stage: Stage, finished: dict, writers: dict, seconds: list) -> StageOutput:
    from ..rl.heads import gradient_steps

    cfg = stage.cfg.rl
    table, scores, _ = results_table(results(stage.out))
    labels = {n: r.label for n, r in finished.items()}
    parts = {n: w.load_parts() for n, w in writers.items()}
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for n, p in parts.items():
        curves = [v["curve"] for v in p.values() if len(v["curve"])]
        if curves:
            c = np.mean(curves, axis=0)
            axes[0].plot(c[:, 0] + (cfg.learning_starts if n.endswith("_twin") else 0),
                         c[:, 1], label=labels[n])
    axes[0].axhline(0.5, color="grey", lw=0.8)
    axes[0].set(xlabel="environment steps (twin: gradient steps + learning_starts)",
                ylabel="inner participants' AUC (mean of folds)", title="Learning curves")
    axes[0].legend(fontsize=8)
    for n, p in parts.items():
        rewards = [v["episode_reward"] for v in p.values()
                   if "episode_reward" in v and len(v["episode_reward"])]
        if rewards:
            r = np.concatenate(rewards)
            order = np.argsort(r[:, 0], kind="stable")
            axes[1].plot(r[order, 0], r[order, 1] / cfg.episode_len, ".", ms=2,
                         alpha=0.4, label=labels[n])
    axes[1].set(xlabel="environment steps", ylabel="episode reward / trials",
                title="DQN episode reward (all folds)")
    save_figure(fig, stage.dir / "learning_curves.png")
    metrics = {"lopo_window_auc": {labels[n]: float(scores[labels[n]].score) for n in labels},
               "env_steps": cfg.env_steps, "gradient_steps": gradient_steps(cfg),
               "batch_size": cfg.batch_size, "labels_shuffled": cfg.shuffle_labels,
               "median_fold_seconds": float(np.median(seconds)) if seconds else None}
    lines = [f"DQN after RLEEGNet and its supervised twin: {cfg.env_steps} environment "
             f"steps, {gradient_steps(cfg)} gradient steps of {cfg.batch_size} trials each "
             "per fold." + (" **Labels shuffled** (leakage alarm)." if cfg.shuffle_labels
                            else ""), "",
             to_markdown(table.loc[[labels[n] for n in labels],
                                   ["stage", "overall", "window_ms", "diagnostic"]]), ""]
    for head in cfg.heads:
        a, b = labels.get(head), labels.get(f"{head}_twin")
        if a and b and not cfg.shuffle_labels:
            beats = table.loc[a, "overall"] > table.loc[b, "overall"]
            lines.append(f"- `{a}` {'beats' if beats else 'does **not** beat'} its twin "
                         f"`{b}` ({table.loc[a, 'overall']:.4f} vs "
                         f"{table.loc[b, 'overall']:.4f}): "
                         + ("a candidate for the ensemble." if beats
                            else "left out of the ensemble's candidates."))
    if seconds:
        lines.append(f"\nMedian seconds per fold (both heads): {np.median(seconds):.1f}.")
    lines += ["", "![learning curves](learning_curves.png)"]
    summary = "RL LOPO window AUC: " + ", ".join(
        f"{n} {s:.4f}" for n, s in metrics["lopo_window_auc"].items())
    return StageOutput(metrics, summary, "\n".join(lines))
