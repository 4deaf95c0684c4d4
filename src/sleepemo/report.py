"""The run's report: LOPO score table, pictures and a Markdown report, from the results.

``write_report(out)`` is the one writer of the run-level files (stage 07 calls it;
``python -m sleepemo.report <out>`` does it by hand). It scores nothing again: every result
carries its own score (``score.json``, written by :mod:`sleepemo.artefacts` when the result
was assembled), so the table is a merge, and stages running in parallel never race on it.

Files written into ``<out>``:

- ``lopo.csv``: one row per result. ``overall`` is the competition metric over all
  held-out participants (their per-timepoint AUC curves averaged, then windowed),
  ``window_ms`` the run it chose, ``diagnostic`` whether the model is a reference that is
  never submitted, and one column per participant (``S<id>``): that participant's AUC
  averaged over the model's overall scoring window (over all timepoints when the model has
  no window). A value below 0.5 means the model ranks that person's trials the wrong way
  round. (Windowing each participant's own curve instead would pick that person's luckiest
  run: biased up.)
- ``lopo_curves.png`` (per-timepoint AUC, scoring window shaded), ``lopo_bars.png``
  (per participant);
- ``report.md``: the table, the pictures, each stage's evidence (``<NN_stage>/evidence.md``)
  and the run times and peak memory of every stage (``<NN_stage>/metrics.json``).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_path, copy_file, read_json, write_text

REPORT_FILES = ("report.md", "lopo.csv", "lopo_curves.png", "lopo_bars.png")


# ------------------------------------------------------------------ tables
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
    """The sorted table of :class:`~sleepemo.artefacts.Result` objects, their scores
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

    from .montage import montage

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
_IMAGE = re.compile(r"(!\[[^\]]*\]\()([^)\s]+)(\))")


def _rebase_images(markdown: str, prefix: str) -> str:
    """Make relative image links of a stage's evidence relative to the run folder."""
    return _IMAGE.sub(lambda m: m.group(1) + (m.group(2) if "://" in m.group(2) or
                                              m.group(2).startswith("/") else
                                              f"{prefix}/{m.group(2)}") + m.group(3),
                      markdown)


def _git_commit() -> str | None:
    import subprocess

    from .config import CHECKOUT, REPO

    if not CHECKOUT:  # an installed copy: no repository of its own
        return None
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_times(out: Path, extra: dict | None = None) -> list[dict]:
    """Each stage's wall time and peak memory, from its ``metrics.json``."""
    from .stage import STAGES

    rows = []
    for s in STAGES:
        path = out / s.folder / "metrics.json"
        m = (extra or {}).get(s.name) or (read_json(path) if path.is_file() else None)
        if m:
            rows.append({"stage": f"{s.number} {s.name}", "seconds": m.get("stage_seconds"),
                         "peak_rss_mb": m.get("peak_rss_mb"),
                         "threads": m.get("torch_threads", ""), "device": m.get("device", "")})
    return rows


def render(out: Path, table: pd.DataFrame, extra_times: dict | None = None) -> str:
    """The Markdown report of the run in ``out``."""
    from .stage import STAGES

    cfg_path = out / "config.yaml"
    profile = ""
    if cfg_path.is_file():
        import yaml

        cfg = yaml.safe_load(cfg_path.read_text()) or {}
        profile = f"profile `{cfg.get('profile')}`, seed {cfg.get('seed')}"
    commit = _git_commit()
    lines = ["# sleepemo run report", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `sleepemo.report` from the "
             f"artefacts in `{out.name}/` ({profile}"
             + (f", code {commit}" if commit else "") + ").", "",
             "## LOPO window AUC", "",
             "Out-of-fold predictions of every result, one fold per training participant. "
             "`overall` is the competition metric over the held-out participants; `S<id>` "
             "is that participant's AUC averaged over the model's window. Diagnostic rows "
             "(leakage alarms, references) are never submitted.", "",
             to_markdown(table), "",
             "![LOPO curves](lopo_curves.png)", "", "![LOPO per participant](lopo_bars.png)",
             ""]
    for s in STAGES:
        path = out / s.folder / "evidence.md"
        if path.is_file():
            lines += [f"## Stage {s.number}: {s.title}", "",
                      _rebase_images(path.read_text().strip(), s.folder), ""]
    times = run_times(out, extra_times)
    if times:
        lines += ["## Run times", "",
                  "Inside each stage's process (data loading included, Python start-up "
                  "and set-up not).", "",
                  "| stage | wall time (s) | peak memory (MB) | torch threads | device |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['seconds']} | {r['peak_rss_mb']} | {r['threads']} "
                  f"| {r['device']} |" for r in times]
        total = sum(r["seconds"] or 0 for r in times)
        lines += [f"| all | {total:.1f} | | | |", ""]
    return "\n".join(lines)


def write_report(out: str | Path, extra_times: dict | None = None
                 ) -> tuple[pd.DataFrame, list]:
    """Write ``lopo.csv``, the pictures and ``report.md`` into ``out``; returns the
    table and the results (see the module docstring)."""
    from .artefacts import results

    out = Path(out)
    listed = results(out)
    if not listed:
        raise FileNotFoundError(f"no model results under {out}: run the stages first")
    table, scores, sfreq = results_table(listed)
    write_table(table, out / "lopo.csv")
    plot_curves({m: scores[m] for m in table.index}, sfreq, out / "lopo_curves.png")
    plot_bars(table, out / "lopo_bars.png")
    write_text(out / "report.md", render(out, table, extra_times))
    return table, listed


def copy_report(out: str | Path, dest: str | Path) -> list[Path]:
    """Copy the report and every picture it links to into ``dest`` (same relative
    paths), e.g. beside a submission or into ``docs/results/``."""
    out, dest = Path(out), Path(dest)
    text = (out / "report.md").read_text()
    files = list(REPORT_FILES) + [m.group(2) for m in _IMAGE.finditer(text)
                                  if "://" not in m.group(2)]
    copied = []
    for rel in dict.fromkeys(files):
        src = out / rel
        if src.is_file():
            copied.append(copy_file(src, dest / rel))
    return copied


def compare_runs(a: str | Path, b: str | Path, labels=("A", "B")) -> str:
    """Markdown: every non-diagnostic model of both runs' ``lopo.csv`` (the same data and
    folds, one setting changed), B against A on the same held-out participants.

    Per model: both LOPO scores, on how many participants B's score is higher and the
    mean difference (each in its run's own window)."""
    ta, tb = (pd.read_csv(Path(x) / "lopo.csv", index_col=0) for x in (a, b))
    cols = [c for c in ta.columns if c.startswith("S") and c[1:].isdigit()]
    if cols != [c for c in tb.columns if c.startswith("S") and c[1:].isdigit()]:
        raise ValueError(f"{a} and {b} do not have the same held-out participants")
    common = [m for m in ta.index if m in tb.index and not ta.loc[m, "diagnostic"]]
    la, lb = labels
    lines = [f"| model | {la} | {lb} | {lb} higher on | mean difference |",
             "|---|---|---|---|---|"]
    for m in common:
        d = tb.loc[m, cols].to_numpy(float) - ta.loc[m, cols].to_numpy(float)
        lines.append(f"| {m} | {ta.loc[m, 'overall']:.4f} | {tb.loc[m, 'overall']:.4f} | "
                     f"{int((d > 0).sum())} of {len(d)} | {d.mean():+.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sleepemo.report",
                                 description="write lopo.csv, pictures and report.md of a "
                                             "run folder from its results")
    ap.add_argument("out", help="the run's artefact folder (output/<profile>-<data>)")
    ap.add_argument("--copy-to", help="also copy the report and its pictures here")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:
        cp = argparse.ArgumentParser(prog="python -m sleepemo.report compare",
                                     description="compare two runs' lopo.csv (B against A)")
        cp.add_argument("a")
        cp.add_argument("b")
        cp.add_argument("--labels", nargs=2, default=["A", "B"])
        cargs = cp.parse_args(argv[1:])
        print(compare_runs(cargs.a, cargs.b, tuple(cargs.labels)))
        return 0
    args = ap.parse_args(argv)
    table, _ = write_report(args.out)
    print(table.drop(columns="diagnostic").to_string())
    print(f"wrote {Path(args.out) / 'report.md'}")
    if args.copy_to:
        copy_report(args.out, args.copy_to)
        print(f"copied the report to {args.copy_to}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
