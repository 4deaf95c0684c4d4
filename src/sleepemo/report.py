"""LOPO score table and pictures from out-of-fold predictions.

``lopo.csv``: one row per model; ``overall`` is the competition metric over all held-out
participants (their per-timepoint AUC curves averaged, then windowed), ``window_ms`` the
run it chose, ``diagnostic`` whether the model is a reference that is never submitted,
and one column per participant (``S<id>``): that participant's AUC averaged over the
model's overall scoring window (over all timepoints when the model has no window). A
value below 0.5 means the model ranks that person's trials the wrong way round. (Windowing
each participant's own curve instead would pick that person's luckiest run: biased up.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_path
from .metric import WindowAUC, window_auc


def split_by_subject(pred: np.ndarray, subjects, n_trials: dict) -> dict:
    """Cut an (n_rows, n_times) array in folds.json row order into participant blocks."""
    out, start = {}, 0
    for s in subjects:
        out[s] = pred[start:start + n_trials[s]]
        start += n_trials[s]
    if start != len(pred):
        raise ValueError(f"{len(pred)} prediction rows but the participants have {start}")
    return out


def score_oof(oof: np.ndarray, ds, folds) -> WindowAUC:
    """Window AUC of out-of-fold predictions against the training labels."""
    preds = split_by_subject(oof, folds.train_subjects, folds.n_trials)
    return window_auc({s: ds.train[s].y for s in folds.train_subjects}, preds, ds.sfreq)


def lopo_table(results: dict[str, WindowAUC], sfreq: float,
               diagnostic: dict[str, bool] | None = None) -> pd.DataFrame:
    """Model x participant table of window AUCs (see module docstring)."""
    rows = []
    for name, res in results.items():
        row = {"model": name, "overall": round(res.score, 4)}
        if res.window is None:
            row["window_ms"] = ""
        else:
            a, b = res.window
            row["window_ms"] = f"{1000 * a / sfreq:.0f}-{1000 * (b - 1) / sfreq:.0f}"
        row["diagnostic"] = bool((diagnostic or {}).get(name, False))
        a, b = res.window or (0, res.curve.size)
        for s, curve in res.per_subject.items():
            row[f"S{s}"] = round(float(np.mean(curve[a:b])), 4)
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        table.to_csv(tmp)
    return Path(path)


def plot_curves(results: dict[str, WindowAUC], sfreq: float, path: str | Path,
                title: str = "LOPO: mean per-timepoint AUC") -> Path:
    """One panel per model: participant-mean AUC curve, the scoring window shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    ncol = min(3, n)
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.8 * nrow), sharey=True,
                             squeeze=False)
    lo = min(min(r.curve.min() for r in results.values()), 0.45)
    hi = max(max(r.curve.max() for r in results.values()), 0.55)
    for ax, (name, res) in zip(axes.flat, results.items()):
        t = 1000 * np.arange(res.curve.size) / sfreq
        for curve in res.per_subject.values():
            ax.plot(t, curve, color="0.8", lw=0.5)
        ax.plot(t, res.curve, color="C0", lw=1.5)
        ax.axhline(0.5, color="k", lw=0.7, ls="--")
        if res.window is not None:
            a, b = res.window
            ax.axvspan(t[a], t[b - 1], color="C1", alpha=0.25, label="scoring window")
        ax.set_title(f"{name}: {res.score:.4f}", fontsize=10)
        ax.set_xlabel("time after cue (ms)")
        ax.set_ylim(lo - 0.01, hi + 0.01)
    for ax in axes[:, 0]:
        ax.set_ylabel("AUC (grey: participants)")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_bars(table: pd.DataFrame, path: str | Path) -> Path:
    """Per-participant window AUC, one group of bars per participant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in table.columns if c.startswith("S") and c[1:].isdigit()]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(cols) + 2), 3.2))
    width = 0.8 / len(table)
    x = np.arange(len(cols))
    for i, (name, row) in enumerate(table.iterrows()):
        ax.bar(x + i * width, row[cols].to_numpy(float) - 0.5, width, bottom=0.5,
               label=f"{name} ({row['overall']:.3f})")
    ax.axhline(0.5, color="k", lw=0.7)
    ax.set_xticks(x + 0.4 - width / 2, cols)
    ax.set_ylabel("AUC in the model's window")
    ax.set_title("LOPO: held-out participants")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return Path(path)


def collect(out: str | Path, ds, folds) -> tuple[dict, dict, dict]:
    """Score every model any stage has written under ``out/<NN_stage>/<model>/``.

    Returns
    -------
    results : dict  name -> WindowAUC of its out-of-fold predictions
    diagnostic : dict  name -> bool
    paths : dict  name -> model folder (holding oof.npy, test.npy, meta.json)
    """
    from .io import read_json

    results, diagnostic, paths = {}, {}, {}
    for meta_path in sorted(Path(out).glob("[0-9][0-9]_*/*/meta.json")):
        folder = meta_path.parent
        meta = read_json(meta_path)
        oof = np.load(folder / "oof.npy")
        results[meta["model"]] = score_oof(oof, ds, folds)
        diagnostic[meta["model"]] = bool(meta.get("diagnostic", False))
        paths[meta["model"]] = folder
    return results, diagnostic, paths


def write_report(out: str | Path, ds, folds) -> tuple[pd.DataFrame, dict, dict]:
    """Write ``lopo.csv``, ``lopo_curves.png`` and ``lopo_bars.png`` into ``out``."""
    results, diagnostic, paths = collect(out, ds, folds)
    if not results:
        raise FileNotFoundError(f"no model results under {out}: run the stages first")
    table = lopo_table(results, ds.sfreq, diagnostic).sort_values(
        ["diagnostic", "overall"], ascending=[True, False], kind="stable")
    write_table(table, Path(out) / "lopo.csv")
    plot_curves({m: results[m] for m in table.index}, ds.sfreq, Path(out) / "lopo_curves.png")
    plot_bars(table, Path(out) / "lopo_bars.png")
    return table, results, paths
