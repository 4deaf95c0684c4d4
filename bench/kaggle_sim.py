"""A stand-in for Kaggle's image: the offline kernel run as Kaggle would run it.

    python bench/kaggle_sim.py [--work DIR] [--profile smoke] [--python python3.12]
                               [--set KEY=VALUE]... [--no-local]

1. **Image**: a fresh virtual environment with the image's Python (3.12) and, at the
   image's versions (``src/sleepemo/kaggle/kaggle_image.txt``), every package the project
   imports, the notebook's kernel (ipykernel, IPython) and Kaggle's pip; every other package
   pip pulls in is held to the image's version too (the list is the constraints file).
   PyPI has no CPU build of torch 2.10, so its default (CUDA) build stands in; it runs on
   the CPU here. Reused when its stamp (the list and the package set) matches.
2. **Bundle**: ``python -m sleepemo.kaggle.bundle`` with wheels (``pip download`` for the
   image's Python), as a user builds it.
3. **/kaggle/input**: the competition data (the built-in synthetic data of the profile),
   the code dataset and the wheels dataset, made read-only (``chmod a-w``; as root that is
   advisory, so a manifest of every file's size and hash is compared after the run).
4. **The notebook**, executed with nbclient on a kernel of the image's environment, with
   pip's network and configuration off (``PIP_NO_INDEX``, ``PIP_CONFIG_FILE=/dev/null``):
   it installs the wheels as on Kaggle and runs every stage.
5. **Checks**: ``/kaggle/working/submission.csv`` validated against the data; the input
   unchanged; then, unless ``--no-local``, the same profile run in this environment (the
   project's pins) and the two LOPO tables side by side.

Writes ``<work>/kaggle_sim.json`` and ``<work>/kaggle_sim.md`` (versions, times, table).
Needs the network to PyPI for steps 1-2 (the kernel itself runs offline).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sleepemo import COMPETITION_SLUG  # noqa: E402
from sleepemo.kaggle.bundle import installed_bundle, kernel_imports, pinned_versions  # noqa: E402,E501
from sleepemo.kaggle.image import applies, read_image  # noqa: E402

#: What the notebook itself needs from the image beyond the project's imports.
NOTEBOOK_NEEDS = ("pip", "ipykernel", "ipython", "jupyter_client", "packaging")
#: Packages of the image that PyPI cannot give as listed (a local version, a system
#: package) or that a CUDA torch build needs at other versions: not used as constraints.
NOT_CONSTRAINTS = ("python-apt", "dbus-python", "pygobject", "nvidia-nccl-cu12")


def log(message: str) -> None:
    print(f"[kaggle_sim] {message}", flush=True)


def sh(cmd, **kw) -> subprocess.CompletedProcess:
    cmd = [str(c) for c in cmd]
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kw)


def bundle_needs(image) -> list[str]:
    """What the bundled wheels require that the bundle does not ship: on Kaggle the image
    has it (the closure check), so the stand-in installs the image's version."""
    from packaging.requirements import Requirement

    pins = pinned_versions(REPO / "requirements.txt")
    dists = installed_bundle(pins)
    if dists is None:
        raise SystemExit("the pinned wheels are not installed here at their pins: run from "
                         "the project's environment (./run.sh sets it up)")
    shipped = {canonicalize_name(n) for n in pins}
    reqs = [Requirement(r) for d in dists for r in d.requires]
    return sorted({r.name for r in reqs if applies(r, image.environment())
                   and canonicalize_name(r.name) not in shipped})


def image_packages() -> tuple[list[str], list[str]]:
    """``(requirements, constraints)``: the image's versions of what the kernel imports
    (and the notebook needs), and the whole list as constraints."""
    image = read_image()
    wanted = []
    for name in [*kernel_imports(), *NOTEBOOK_NEEDS, *bundle_needs(image)]:
        version = image.version(name)
        line = f"{canonicalize_name(name)}=={version.public}" if version else None
        if line and line not in wanted:
            wanted.append(line)
    constraints = [f"{name}=={version.public}" for name, version in
                   sorted(image.packages.items()) if name not in NOT_CONSTRAINTS]
    return wanted, constraints


def find_python(spec: str) -> str:
    """An interpreter of the image's Python: ``spec`` if it runs, else pyenv's."""
    candidates = [spec, *sorted(str(p) for p in Path.home().glob(
        f".pyenv/versions/{spec.removeprefix('python')}*/bin/{spec}"))]
    for cand in candidates:
        try:
            if subprocess.run([cand, "-V"], capture_output=True).returncode == 0:
                return cand
        except OSError:
            continue
    raise SystemExit(f"no {spec} found (tried {candidates}): install the image's Python or "
                     "pass --python PATH")


def build_image_venv(venv: Path, python: str) -> dict:
    """The image's environment (see the module docstring), reused when up to date."""
    wanted, constraints = image_packages()
    stamp_text = "\n".join([python, *wanted, *constraints])
    stamp = venv / ".kaggle-sim-stamp"
    if stamp.is_file() and stamp.read_text() == stamp_text:
        log(f"image environment up to date: {venv}")
        return {"reused": True, "seconds": 0.0}
    t0 = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    sh([python, "-m", "venv", venv])
    py = venv / "bin" / "python"
    cfile = venv.parent / "kaggle-constraints.txt"
    cfile.write_text("\n".join(constraints) + "\n")
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    pip_version = next(w for w in wanted if w.startswith("pip=="))
    sh([*pip, pip_version])
    sh([*pip, "-c", cfile, *[w for w in wanted if not w.startswith("pip==")]])
    stamp.write_text(stamp_text)
    return {"reused": False, "seconds": round(time.monotonic() - t0, 1)}


def versions(python: Path, names) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {}\n"
            "for n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: out[n] = ''\n"
            "print(json.dumps(out))")
    proc = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True,
                          check=True, env={k: v for k, v in os.environ.items()
                                           if k != "PYTHONPATH"})
    return json.loads(proc.stdout)


def manifest(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def lay_out(kaggle: Path, bundle: Path, data: Path) -> tuple[Path, Path]:
    inputs, work = kaggle / "input", kaggle / "working"
    shutil.rmtree(kaggle, ignore_errors=True)
    shutil.copytree(data, inputs / COMPETITION_SLUG)
    shutil.copytree(bundle / "code", inputs / "sleepemo-code")
    shutil.copytree(bundle / "wheels", inputs / "sleepemo-wheels")
    for path in [inputs, *inputs.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    work.mkdir(parents=True)
    return inputs, work


def run_notebook(notebook: Path, venv: Path, inputs: Path, work: Path, profile: str,
                 sets: list[str], jupyter: Path) -> float:
    """Execute the notebook on a kernel of the image's environment; returns seconds."""
    import nbformat
    from nbclient import NotebookClient

    spec = jupyter / "kernels" / "kaggle-sim"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(venv / "bin" / "python"), "-m", "ipykernel_launcher", "-f",
                 "{connection_file}"],
        "display_name": "Kaggle image stand-in", "language": "python"}))
    empty = jupyter / "no-wheels-here"
    empty.mkdir(exist_ok=True)
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith(("SLEEPEMO_", "PIP_", "VIRTUAL_ENV"))]:
        del os.environ[key]
    os.environ.pop("PYTHONPATH", None)
    os.environ.update({"JUPYTER_PATH": str(jupyter), "SLEEPEMO_KAGGLE_INPUT": str(inputs),
                       "SLEEPEMO_KAGGLE_WORKING": str(work), "SLEEPEMO_PROFILE": profile,
                       "SLEEPEMO_SET": " ".join(sets), "PIP_NO_INDEX": "1",
                       "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": str(empty)})
    nb = nbformat.read(notebook, as_version=4)
    t0 = time.monotonic()
    try:
        NotebookClient(nb, timeout=None, kernel_name="kaggle-sim",
                       resources={"metadata": {"path": str(work)}}).execute()
    finally:
        seconds = time.monotonic() - t0
        nbformat.write(nb, work.parent / "executed.ipynb")
        os.environ.clear()
        os.environ.update(saved)
    return seconds


def read_lopo(path: Path) -> dict[str, float]:
    with open(path, newline="") as fh:
        return {row["model"]: float(row["overall"]) for row in csv.DictReader(fh)}


def max_difference(local_out: Path | None, kernel_out: Path, model: str) -> float | None:
    """The largest absolute difference between the two runs' out-of-fold predictions."""
    import numpy as np

    if local_out is None:
        return None
    found = sorted(kernel_out.glob(f"[0-9][0-9]_*/{model}/oof.npy"))
    if len(found) != 1:
        return None
    other = local_out / found[0].relative_to(kernel_out)
    if not other.is_file():
        return None
    return float(np.nanmax(np.abs(np.load(found[0]) - np.load(other))))


def side_by_side(local: dict[str, float], kernel: dict[str, float],
                 local_out: Path | None = None, kernel_out: Path | None = None) -> list[dict]:
    rows = []
    for model in sorted(set(local) | set(kernel), key=lambda m: -(local.get(m) or 0)):
        a, b = local.get(model), kernel.get(model)
        rows.append({"model": model, "local": a, "kernel": b,
                     "diff": None if a is None or b is None else b - a,
                     "max_oof_diff": None if kernel_out is None else
                     max_difference(local_out, kernel_out, model)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(REPO / "bench" / "kaggle_sim"),
                    help="working folder (default bench/kaggle_sim/, not in git)")
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--python", default="python3.12", help="the image's Python")
    ap.add_argument("--no-local", action="store_true", help="skip the local comparison run")
    ap.add_argument("--local-run", help="compare with this finished local run (a folder "
                                        "with lopo.csv, e.g. docs/results) instead of "
                                        "running one")
    args = ap.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"profile": args.profile, "sets": args.sets,
                    "image": dict(read_image().header)}
    times: dict[str, float] = {}

    venv = work / "venv"
    report["venv"] = build_image_venv(venv, find_python(args.python))
    times["image environment"] = report["venv"]["seconds"]

    t0 = time.monotonic()
    bundle = work / "bundle"
    sh([sys.executable, "-m", "sleepemo.kaggle.bundle", "--out", bundle, "--user", "sim",
        "--profile", args.profile, *[a for s in args.sets for a in ("--set", s)]],
       env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    times["bundle (pip download)"] = round(time.monotonic() - t0, 1)

    data = Path(subprocess.run(
        [sys.executable, "-m", "sleepemo", "data", "--profile", args.profile,
         *[a for s in args.sets for a in ("--set", s)]],
        env=dict(os.environ, PYTHONPATH=str(REPO / "src")), check=True,
        capture_output=True, text=True, cwd=REPO).stdout.strip().splitlines()[-1])
    data = data if data.is_absolute() else (REPO / data).resolve()
    inputs, kwork = lay_out(work / "kaggle", bundle, data)
    before = manifest(inputs)
    seconds = run_notebook(bundle / "kernel" / "kaggle_kernel.ipynb", venv, inputs, kwork,
                           args.profile, args.sets, work / "jupyter")
    times["notebook (install + stages)"] = round(seconds, 1)
    if manifest(inputs) != before:
        raise SystemExit("the kernel wrote into /kaggle/input")
    from sleepemo.data.submission import expected_from_data, validate_submission
    validate_submission(kwork / "submission.csv", expected_from_data(data))
    log(f"valid: {kwork / 'submission.csv'}")

    names = sorted({*kernel_imports(), *NOTEBOOK_NEEDS,
                    *read_json(bundle / "bundle.json")["pins"]}, key=str.lower)
    kernel_versions = versions(venv / "bin" / "python", names)
    local_versions = versions(Path(sys.executable), names)
    report["versions"] = {n: {"kernel": kernel_versions[n], "local": local_versions[n]}
                          for n in names}
    report["python"] = {"kernel": subprocess.run(
        [str(venv / "bin" / "python"), "-V"], capture_output=True, text=True).stdout.strip(),
        "local": f"Python {sys.version.split()[0]}"}
    kernel_lopo = read_lopo(kwork / "output" / args.profile / "lopo.csv")
    if args.local_run:
        local_out = Path(args.local_run).resolve()
        report["local_run"] = str(local_out)
        report["lopo"] = side_by_side(read_lopo(local_out / "lopo.csv"), kernel_lopo,
                                      local_out, kwork / "output" / args.profile)
    elif not args.no_local:
        t0 = time.monotonic()
        local_out = work / "local"
        shutil.rmtree(local_out, ignore_errors=True)
        sh([sys.executable, "-m", "sleepemo", "run", "--profile", args.profile,
            "--data-dir", data, "--out", local_out, "--submissions", work / "local-subs",
            "--no-progress", "--quiet", *[a for s in args.sets for a in ("--set", s)]],
           env=dict(os.environ, PYTHONPATH=str(REPO / "src"), MPLBACKEND="Agg"))
        times["local run (pins)"] = round(time.monotonic() - t0, 1)
        report["lopo"] = side_by_side(read_lopo(local_out / "lopo.csv"), kernel_lopo,
                                      local_out, kwork / "output" / args.profile)
        report["same_submission"] = ((kwork / "submission.csv").read_bytes()
                                     == (work / "local-subs" / "latest.csv").read_bytes())
    else:
        report["lopo"] = side_by_side({}, kernel_lopo)
    report["times_s"] = times
    (work / "kaggle_sim.json").write_text(json.dumps(report, indent=2) + "\n")
    (work / "kaggle_sim.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def markdown(report: dict) -> str:
    lines = [f"Kaggle image stand-in, profile `{report['profile']}`"
             + (f" with {' '.join(report['sets'])}" if report["sets"] else "") + ".", "",
             f"- image list: {report['image'].get('source', '?')}",
             f"- Python: kernel {report['python']['kernel']}, local {report['python']['local']}",
             *([f"- local side: the finished run {report['local_run']}"]
               if report.get("local_run") else []),
             "", "| time | s |", "|---|---:|"]
    lines += [f"| {k} | {v:g} |" for k, v in report["times_s"].items()]
    lines += ["", "| package | kernel (image + bundle) | local (pins) |", "|---|---|---|"]
    lines += [f"| {n} | {v['kernel'] or '-'} | {v['local'] or '-'} |"
              for n, v in report["versions"].items()]
    if "same_submission" in report:
        lines += ["", "submission.csv of the kernel and of the local run: "
                  + ("byte-identical" if report["same_submission"] else "different")]
    lines += ["", "| model | local LOPO | kernel LOPO | kernel - local | max abs oof difference |",
              "|---|---:|---:|---:|---:|"]
    def fmt(x, sign=""):
        return "-" if x is None else f"{x:{sign}.4f}"

    def g2(x):
        return "-" if x is None else f"{x:.2g}"

    lines += [f"| {r['model']} | {fmt(r['local'])} | {fmt(r['kernel'])} | "
              f"{fmt(r['diff'], '+')} | {g2(r.get('max_oof_diff'))} |" for r in report["lopo"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
