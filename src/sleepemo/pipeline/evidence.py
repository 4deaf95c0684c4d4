"""Tables and figures a stage's evidence is made of: the LOPO score table, per-timepoint
AUC curves with the scoring window shaded, per-participant bars and channel topomaps.

Stages use these for their ``evidence.md``; the run's report (:mod:`sleepemo.pipeline.report`)
puts them together. They only present results: editing the report writer recomputes
nothing, since no stage's code imports it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sleepemo.data.montage import montage
from sleepemo.io import atomic_path


def lopo_table(scores: dict, sfreq: float, diagnostic: dict[str, bool] | None = None,
               stages: dict[str, str] | None = None) -> pd.DataFrame:
    """Model x participant table of window AUCs (see the module docstring).

    ``scores``: label -> :class:`~sleepemo.metric.WindowAUC`.
    """
    rows = []
    for name, res in scores.items():
        row = {"model": name}
        if stages is not None:
            row["stage"] = stages[name]
        row["overall"] = round(res.score, 4)
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


def sort_table(table: pd.DataFrame) -> pd.DataFrame:
    """Submittable models first, best first."""
    return table.sort_values(["diagnostic", "overall"], ascending=[True, False],
                             kind="stable")


def results_table(listed) -> tuple[pd.DataFrame, dict, float]:
    """The sorted table of :class:`~sleepemo.pipeline.artefacts.Result` objects, their scores
    (label -> WindowAUC) and the sampling rate."""
    scores, sfreq = {}, None
    for r in listed:
        scores[r.label], sfreq = r.score()
    table = lopo_table(scores, sfreq, {r.label: r.diagnostic for r in listed},
                       {r.label: r.stage for r in listed})
    return sort_table(table), scores, sfreq


def to_markdown(table: pd.DataFrame, bold_overall: bool = True) -> str:
    """A score table as a Markdown table."""
    cols = ["model"] + list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, row in table.iterrows():
        cells = [str(name)]
        for c in table.columns:
            v = row[c]
            if c == "overall":
                v = f"**{v:.4f}**" if bold_overall and not row.get("diagnostic") else f"{v:.4f}"
            elif isinstance(v, float):
                v = f"{v:.3f}"
            cells.append(str(v) if v != "" else "none")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        table.to_csv(tmp)
    return Path(path)


# ------------------------------------------------------------------ pictures
def save_figure(fig, path) -> Path:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return Path(path)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(scores: dict, sfreq: float, path: str | Path,
                title: str = "LOPO: mean per-timepoint AUC") -> Path:
    """One panel per model: participant-mean AUC curve, the scoring window shaded."""
    plt = pyplot()
    n = len(scores)
    ncol = min(3, n)
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.8 * nrow), sharey=True,
                             squeeze=False)
    lo = min(min(r.curve.min() for r in scores.values()), 0.45)
    hi = max(max(r.curve.max() for r in scores.values()), 0.55)
    for ax, (name, res) in zip(axes.flat, scores.items()):
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
    return save_figure(fig, path)


def plot_bars(table: pd.DataFrame, path: str | Path) -> Path:
    """Per-participant window AUC, one group of bars per participant."""
    plt = pyplot()
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
    return save_figure(fig, path)


def plot_topomaps(values: dict[str, list], ch_names, path: Path,
                  title: str = "Channel experts: out-of-fold AUC per channel",
                  label: str = "LOPO trial AUC of the expert", centre: float = 0.5
                  ) -> Path | None:
    """One scalp map of a per-channel value around ``centre`` per result (MNE, template
    10-20 positions); None if there is nothing to draw or the channels have no
    positions."""
    plt = pyplot()
    import mne


    if not values:
        return None
    try:
        info = mne.create_info(list(ch_names), 100.0, "eeg")
        info.set_montage(montage())
    except ValueError:  # channels without template positions (e.g. generic names)
        return None
    span = max(0.02 * centre / 0.5,
               max(abs(np.asarray(v) - centre).max() for v in values.values()))
    fig, axes = plt.subplots(1, len(values), figsize=(3.0 * len(values), 3.2), squeeze=False)
    for ax, (name, v) in zip(axes[0], values.items()):
        im, _ = mne.viz.plot_topomap(np.asarray(v), info, axes=ax, show=False, cmap="RdBu_r",
                                     vlim=(centre - span, centre + span), names=list(ch_names))
        ax.set_title(name.removeprefix("experts_").removeprefix("fusion_"), fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.7, label=label)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


# ------------------------------------------------------------------ the report
