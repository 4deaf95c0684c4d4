"""The run's report: LOPO score table, pictures and a Markdown report, from the results.

``write_report(out)`` is the one writer of the run-level files (stage 07 calls it;
``python -m sleepemo.pipeline.report <out>`` does it by hand). It scores nothing again: every result
carries its own score (``score.json``, written by :mod:`sleepemo.pipeline.artefacts` when the result
was assembled), so the table is a merge, and stages running in parallel never race on it.

Files written into ``<out>``:

- ``lopo.csv``: one row per result. ``overall`` is the competition metric over all
  held-out participants (their per-timepoint AUC curves averaged, then windowed),
  ``ci_low``/``ci_high`` its participant-bootstrap 95% interval, ``diff_to_best`` the score
  minus the best single model's and ``diff_low``/``diff_high`` that paired difference's
  95% interval (:mod:`sleepemo.pipeline.intervals`), ``window_ms`` the run it chose,
  ``diagnostic`` whether the model is a reference that is never submitted, and one column
  per participant (``S<id>``): that participant's AUC
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

import pandas as pd

from sleepemo.config import CHECKOUT, REPO
from sleepemo.io import copy_file, read_json, write_text
from sleepemo.pipeline import contrasts, intervals
from sleepemo.pipeline.artefacts import results
from sleepemo.pipeline.choice import best_single
from sleepemo.pipeline.evidence import (plot_bars, plot_curves, results_table, to_markdown,
                                        write_table)
from sleepemo.pipeline.stage import STAGES

REPORT_FILES = ("report.md", "lopo.csv", "lopo_curves.png", "lopo_bars.png")


# ------------------------------------------------------------------ tables
_IMAGE = re.compile(r"(!\[[^\]]*\]\()([^)\s]+)(\))")


def _rebase_images(markdown: str, prefix: str) -> str:
    """Make relative image links of a stage's evidence relative to the run folder."""
    return _IMAGE.sub(lambda m: m.group(1) + (m.group(2) if "://" in m.group(2) or
                                              m.group(2).startswith("/") else
                                              f"{prefix}/{m.group(2)}") + m.group(3),
                      markdown)


def _git_commit() -> str | None:
    import subprocess


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

    rows = []
    for s in STAGES:
        path = out / s.folder / "metrics.json"
        m = (extra or {}).get(s.name) or (read_json(path) if path.is_file() else None)
        if m:
            rows.append({"stage": f"{s.number} {s.name}", "seconds": m.get("stage_seconds"),
                         "peak_rss_mb": m.get("peak_rss_mb"),
                         "threads": m.get("torch_threads", ""), "device": m.get("device", "")})
    return rows


def scored_table(listed) -> tuple[pd.DataFrame, dict, float]:
    """:func:`~sleepemo.pipeline.evidence.results_table` of ``listed`` with the interval
    columns of :func:`sleepemo.pipeline.intervals.add_intervals`: the table of ``lopo.csv``,
    its results' scores and the sampling rate."""
    table, scores, sfreq = results_table(listed)
    return intervals.add_intervals(table, scores, sfreq), scores, sfreq


def _interval(low: float, high: float, signed: bool = False) -> str:
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"[{f.format(low)}, {f.format(high)}]"


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    """The report's view of ``lopo.csv``: each interval in one cell, the difference to the
    best single model beside its interval."""
    best = best_single(table)
    shown = table.drop(columns=list(intervals.COLUMNS))
    at = list(shown.columns).index("overall") + 1
    shown.insert(at, "95% interval", [_interval(r.ci_low, r.ci_high)
                                      for r in table.itertuples()])
    shown.insert(at + 1, "minus best single [95%]", [
        "" if pd.isna(r.diff_to_best) else "reference" if best and r.Index == best[0] else
        f"{r.diff_to_best:+.4f} {_interval(r.diff_low, r.diff_high, signed=True)}"
        for r in table.itertuples()])
    return shown


def render(out: Path, table: pd.DataFrame, extra_times: dict | None = None,
           deep_path: str = "") -> str:
    """The Markdown report of the run in ``out`` (``table``: :func:`scored_table`'s;
    ``deep_path``: :func:`sleepemo.pipeline.contrasts.section`'s, after the table)."""

    cfg_path = out / "config.yaml"
    profile = ""
    if cfg_path.is_file():
        import yaml

        cfg = yaml.safe_load(cfg_path.read_text()) or {}
        profile = f"profile `{cfg.get('profile')}`, seed {cfg.get('seed')}"
    commit = _git_commit()
    lines = ["# sleepemo run report", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `sleepemo.pipeline.report` from the "
             f"artefacts in `{out.name}/` ({profile}"
             + (f", code {commit}" if commit else "") + ").", "",
             "## LOPO window AUC", "",
             "Out-of-fold predictions of every result, one fold per training participant. "
             "`overall` is the competition metric over the held-out participants; `S<id>` "
             "is that participant's AUC averaged over the model's window. Diagnostic rows "
             "(leakage alarms, references) are never submitted.", "",
             uncertainty(table), "",
             to_markdown(shown_table(table)), "",
             "![LOPO curves](lopo_curves.png)", "", "![LOPO per participant](lopo_bars.png)",
             ""] + ([deep_path] if deep_path else [])
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


def uncertainty(table: pd.DataFrame) -> str:
    """The report's paragraph on how the intervals were made."""
    n = sum(1 for c in table.columns if c.startswith("S") and c[1:].isdigit())
    best = best_single(table)
    text = (f"Intervals: participant bootstrap. The {n} held-out participants are drawn "
            f"with replacement {intervals.N_BOOT} times (seed {intervals.SEED}, the same "
            "draws for every row); each draw's per-timepoint AUC curves are averaged and "
            "scored with the metric, window search included; `95% interval` is the 2.5th "
            "to 97.5th percentile of those scores.")
    if best is None:
        return text
    return text + (f" `minus best single [95%]` is the score minus that of the best single "
                   f"model, `{best[0]}`, with the 95% interval of the same difference over "
                   "the same draws (paired): an interval containing 0 means these "
                   "participants cannot tell the two apart.")


def write_report(out: str | Path, extra_times: dict | None = None,
                 scored: tuple[pd.DataFrame, dict, float] | None = None
                 ) -> tuple[pd.DataFrame, list]:
    """Write ``lopo.csv``, the pictures and ``report.md`` into ``out``; returns the
    table and the results (see the module docstring). ``scored``: :func:`scored_table`
    of the run's results when the caller has it already."""

    out = Path(out)
    listed = results(out)
    if not listed:
        raise FileNotFoundError(f"no model results under {out}: run the stages first")
    table, scores, sfreq = scored or scored_table(listed)
    write_table(table, out / "lopo.csv")
    plot_curves({m: scores[m] for m in table.index}, sfreq, out / "lopo_curves.png")
    plot_bars(table, out / "lopo_bars.png")
    ens = out / "06_ensemble" / "metrics.json"
    sections = [contrasts.section(table, listed, scores, sfreq), contrasts.ensemble_section(
        table, scores, sfreq, read_json(ens) if ens.is_file() else None)]
    write_text(out / "report.md", render(out, table, extra_times,
                                        "\n".join(s for s in sections if s)))
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
    ap = argparse.ArgumentParser(prog="python -m sleepemo.pipeline.report",
                                 description="write lopo.csv, pictures and report.md of a "
                                             "run folder from its results")
    ap.add_argument("out", help="the run's artefact folder (output/<profile>-<data>)")
    ap.add_argument("--copy-to", help="also copy the report and its pictures here")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:
        cp = argparse.ArgumentParser(prog="python -m sleepemo.pipeline.report compare",
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
