"""Does ``sleepemo predict`` reproduce a finished run? Every result, bit for bit.

    python bench/reproduce.py --run output/quick-synthetic [--models a,b] [--json FILE]

For each result of the run that :func:`sleepemo.predict.load.load_predictor` supports,
the run's test recordings are read from their files again (the data folder that stage 00
recorded) and predicted by the result's saved fold models, exactly as ``sleepemo predict``
does (:func:`sleepemo.predict.cli.predict_files`), then compared with the result's
``test.npy`` (what the stage wrote). A line per result: identical, or how many values
differ and by how much at most; results whose stage has no predictor are listed with the
reason. One thread, as the stages' folds ran. Exit code 1 when any supported result
differs.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"  # one thread, before numpy is imported

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def check(run: Path, models: list[str] | None = None) -> list[dict]:
    """One row per result of ``run``: its label and whether predict reproduced it."""
    import torch

    from sleepemo.data.folds import read_folds
    from sleepemo.pipeline.artefacts import results
    from sleepemo.predict.base import PredictError
    from sleepemo.predict.cli import predict_files, recordings

    torch.set_num_threads(1)
    folds = read_folds(run / "folds.json")
    files = recordings([Path(folds.data_root) / "testing"])
    paths = [files[s] for s in folds.test_subjects]
    rows = []
    for result in results(run):
        if models and result.label not in models:
            continue
        try:
            got = predict_files(run, paths, result.label, progress=False)["predictions"]
        except PredictError as exc:
            rows.append({"result": result.label, "supported": False, "reason": str(exc)})
            continue
        got = np.concatenate([got[s][0] for s in folds.test_subjects])
        want = result.test
        differ = int((got != want).sum()) if got.shape == want.shape else -1
        rows.append({"result": result.label, "supported": True, "values": int(want.size),
                     "differ": differ,
                     "max_abs_diff": float(np.abs(got - want).max()) if differ > 0 else 0.0})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run's --out folder")
    parser.add_argument("--models", help="comma-separated result names (default: all)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = check(args.run, args.models.split(",") if args.models else None)
    for r in rows:
        if not r["supported"]:
            print(f"{r['result']:28s} not supported: {r['reason']}")
        elif r["differ"] == 0:
            print(f"{r['result']:28s} identical ({r['values']} values)")
        elif r["differ"] < 0:
            print(f"{r['result']:28s} DIFFERENT SHAPE")
        else:
            print(f"{r['result']:28s} DIFFERS in {r['differ']} of {r['values']} values "
                  f"(max |diff| {r['max_abs_diff']:.3g})")
    same = sum(r.get("differ") == 0 for r in rows)
    supported = sum(r["supported"] for r in rows)
    print(f"{same} of {supported} supported results reproduced bit for bit "
          f"({len(rows)} results in the run)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if same == supported else 1


if __name__ == "__main__":
    sys.exit(main())
