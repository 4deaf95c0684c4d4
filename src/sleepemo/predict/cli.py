"""``sleepemo predict``: apply a finished run to new recordings (files or folders of .mat
files) and write ``predictions.csv`` in the competition's format (see
:mod:`sleepemo.predict.base` for what each result's predictor computes)."""
from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

import numpy as np

from sleepemo.config import project_dir
from sleepemo.data.names import EXPECTED, participant_id
from sleepemo.data.reader import read_mat
from sleepemo.data.submission import build_submission, new_run_dir
from sleepemo.errors import guarded
from sleepemo.io import atomic_path, write_json, write_npy
from sleepemo.predict.base import PredictError, Run
from sleepemo.predict.load import load_predictor
from sleepemo.predict.stream import Stream
from sleepemo.progress import bar


def recordings(paths) -> dict[int, Path]:
    """participant id -> file, from files and folders (searched for ``*.mat``). The id is
    the number in the file's name, by the competition's rules (:mod:`sleepemo.data.names`)."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.suffix.lower() == ".mat")
        elif p.is_file():
            files.append(p)
        else:
            raise PredictError(f"{p}: no such file or folder")
    if not files:
        raise PredictError(f"no .mat files in {', '.join(map(str, paths))}")
    out: dict[int, Path] = {}
    for f in files:
        sid = participant_id(f.name)
        if sid is None:
            raise PredictError(f"{f}: cannot tell the participant from the name (expected "
                               f"{EXPECTED})")
        if sid in out:
            raise PredictError(f"{f}: participant {sid} also in {out[sid]}")
        out[sid] = f
    return dict(sorted(out.items()))


def predict_files(out: str | Path, paths, model: str | None = None, stream: bool = False,
                  warmup: int = 20, progress: bool = True, bad_values: str | None = None
                  ) -> dict:
    """Predict every recording in ``paths`` with model ``model`` of the run in ``out``.
    ``bad_values`` (default: the run's ``data.bad_values``): ``interpolate`` repairs
    NaN/Inf samples so that every trial is predicted, ``error`` refuses such a file.

    Returns ``{"model": label, "predictions": participant -> (probabilities (n_trials,
    n_times) float32, warm-up flags (n_trials,) bool; all False in batch mode),
    "repairs": participant -> repaired samples}``."""

    run = Run.open(out)
    predictor = load_predictor(run.out, model, run)
    policy = bad_values or run.cfg.data.bad_values
    done, repairs = {}, {}
    for sid, path in bar(list(recordings(paths).items()), desc=f"predict {predictor.name}",
                         unit="participant", enabled=progress):
        rec = read_mat(path, bad_values=policy)
        repairs[sid] = sum(r.samples for r in rec.repairs)
        run.check(rec.X, rec.sfreq, rec.ch_names, str(path))
        if stream:
            s = Stream(predictor, rec.sfreq, warmup, sid)
            steps = [s.push(x) for x in rec.X]
            done[sid] = (np.stack([st.probs for st in steps]),
                         np.array([st.warm_up for st in steps]))
        else:
            done[sid] = (predictor.predict(rec.X, rec.sfreq, sid),
                         np.zeros(len(rec.X), bool))
    return {"model": predictor.name, "predictions": done, "repairs": repairs}


def write_predictions(result: dict, dest: Path, meta: dict) -> Path:
    """``predictions.csv`` (competition format), ``S<id>.npy``, ``predict.json``."""

    preds = result["predictions"]
    df = build_submission({s: p for s, (p, _) in preds.items()})
    with atomic_path(dest / "predictions.csv", overwrite=False) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6f")  # as stage 07's submission.csv
    for sid, (p, _) in preds.items():
        write_npy(dest / f"S{sid}.npy", p)
    write_json(dest / "predict.json", {**meta, "model": result["model"], "participants": {
        str(s): {"trials": int(len(p)), "warm_up_trials": int(w.sum()),
                 "repaired_samples": int(result["repairs"].get(s, 0))}
        for s, (p, w) in preds.items()}})
    return dest / "predictions.csv"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sleepemo predict",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help=".mat files or folders of them")
    ap.add_argument("--run", required=True, help="a finished run's folder (its --out)")
    ap.add_argument("--model", help="a result of the run (default: the submitted one)")
    ap.add_argument("--stream", action="store_true",
                    help="one trial at a time, normalisation updated online")
    ap.add_argument("--warmup", type=int, default=20,
                    help="streamed trials marked as warm-up (default 20)")
    ap.add_argument("--bad-values", choices=("error", "interpolate"),
                    help="NaN/Inf samples: refuse the file, or repair them so that every "
                         "trial is predicted (default: the run's data.bad_values)")
    ap.add_argument("--out", help="output folder (default: a new "
                                  "submissions/predict-<model>-<time>/)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    result = predict_files(args.run, args.paths, args.model, args.stream, args.warmup,
                           not args.no_progress, args.bad_values)
    dest = Path(args.out) if args.out else new_run_dir(
        project_dir() / "submissions", f"predict-{result['model'].replace('/', '-')}-"
                              f"{datetime.now():%Y%m%d-%H%M%S}")
    path = write_predictions(result, dest, {
        "run": str(Path(args.run).resolve()), "stream": args.stream,
        "bad_values": args.bad_values or Run.open(args.run).cfg.data.bad_values,
        "warmup": args.warmup if args.stream else None,
        "files": [str(p) for p in args.paths]})
    n = sum(len(p) for p, _ in result["predictions"].values())
    print(f"{result['model']}: {n} trials of {len(result['predictions'])} participant(s) -> "
          f"{path}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    """:func:`main` with expected problems as one line and exit code 2."""

    try:
        guarded(lambda: main(argv))  # (a bad .mat file: DataError, one line, exit 2)
    except PredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
