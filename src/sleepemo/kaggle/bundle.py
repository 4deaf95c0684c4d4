"""A Kaggle kernel that runs with the internet off: ``./run.sh kaggle-bundle``.

``python -m sleepemo.kaggle.bundle [--out DIR] [--user NAME] [--no-wheels] [--gpu]
[--profile P] [--set KEY=VALUE]...`` writes three folders, each ready for the ``kaggle``
command line (default ``kaggle/bundle/``)::

    code/     dataset <user>/sleepemo-code: src/sleepemo/ (with its profiles/),
              src/NN_*.py, requirements.txt, pyproject.toml, sleepemo-kernel.json (the notebook's default profile and
              --set overrides), dataset-metadata.json
    wheels/   dataset <user>/sleepemo-wheels: one wheel per package of KAGGLE_LACKS at
              its requirements.txt version (pip download, binary only, no dependencies,
              for Python 3.11 on manylinux x86_64), sleepemo-wheels.txt (those pins:
              what the notebook installs), dataset-metadata.json
    kernel/   kaggle_kernel.ipynb (a copy of notebooks/kaggle_kernel.ipynb) and
              kernel-metadata.json (the competition data and both datasets attached,
              internet off, GPU off unless --gpu)
    bundle.json  what was built (user, profile, pins); marks the folder as a bundle

The notebook installs the wheels with ``pip install --no-index --find-links`` and runs
the stage scripts on ``/kaggle/input/...`` (the README's "Run as a Kaggle kernel
(offline)" says how to upload and push). The user name comes from ``--user``, else
``KAGGLE_USERNAME`` or the ``username`` of ``kaggle.json``; without one the metadata
carries ``YOUR_KAGGLE_USERNAME`` to edit. No credential is read beyond the user name,
and nothing of the machine (no path outside the bundle) is written into it.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from sleepemo import COMPETITION_SLUG
from sleepemo.config import CHECKOUT, ConfigError, PROFILES, REPO, load_config, project_dir
from sleepemo.data.download import kaggle_username
from sleepemo.io import atomic_dir, read_json, write_json, write_text
from sleepemo.pipeline.stage import STAGES
from sleepemo.kaggle.budget import DEFAULT_BUDGET_S
from sleepemo.kaggle.image import (Distribution, ImageError, installed_distribution, missing,
                                   read_image, unmet, wheel_distribution)

#: The packages of requirements.txt that Kaggle's Python image lacks, and their
#: dependencies that it lacks too: the wheels dataset holds exactly these. Decided from
#: the image's package list (``kaggle_image.txt``, with its source and date): it ships
#: torch, torchvision, numpy, scipy, pandas, h5py, scikit-learn, matplotlib, tqdm, PyYAML,
#: mne, timm, gymnasium, einops, cloudpickle, sympy and frozendict (at its own versions),
#: but none of these. ``build_bundle`` refuses a bundle whose wheels require something
#: that neither the image nor the bundle has (:func:`sleepemo.kaggle.image.unmet`). A
#: package whose Kaggle version breaks the code can be added here: its pinned wheel then
#: replaces it.
KAGGLE_LACKS = (
    "pyriemann",                # baselines (riemann, xdawn_ts)
    "array-api-compat",         # pyriemann's dependencies
    "array-api-extra",
    "stable-baselines3",        # stage 05: DQN and SAC
    "vector-quantize-pytorch",  # stage 05: the SAC head's prototypes
    "einx",                     # vector-quantize-pytorch's dependencies
    "loguru",
    "torch-einops-utils",
    "optuna",                   # stage 06: Kaggle has 4.x; sleepemo.ensemble.studies uses 5.0's
                                # heartbeat retry (RetryHeartbeatStaleTrialCallback)
    "braindecode",              # stage 01's deep anchors
    "skorch",                   # braindecode's dependencies
    "docstring-inheritance",
)

PLACEHOLDER_USER = "YOUR_KAGGLE_USERNAME"
GPU_MACHINE_SHAPE = "NvidiaTeslaT4"
CODE_SLUG, WHEELS_SLUG, KERNEL_SLUG = "sleepemo-code", "sleepemo-wheels", "sleepemo-offline"
KERNEL_TITLE = "sleepemo offline"   # Kaggle derives the kernel slug from the title
WHEELS_LIST = "sleepemo-wheels.txt"
SETTINGS = "sleepemo-kernel.json"
MARKER = "bundle.json"
NOTEBOOK = REPO / "notebooks" / "kaggle_kernel.ipynb"
#: Runtime requirements (pyproject.toml) the kernel never imports: the Kaggle client
#: (the kernel runs on Kaggle, it does not call it) and the PostgreSQL driver (the kernel's
#: studies are SQLite files).
KERNEL_DOES_NOT_USE = ("kaggle", "kagglesdk", "requests", "six", "psycopg", "psycopg-binary")
#: Kaggle's image as written down (``kaggle_image.txt``), read once.
IMAGE = read_image()
PYTHON_VERSION = IMAGE.python  # the image's Python (3.12): the wheels are for it
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux2014_x86_64")
DEFAULT_OUT = project_dir() / "kaggle" / "bundle"
#: A Kaggle user name or slug (of a dataset or kernel).
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class BundleError(ValueError):
    """The bundle cannot be built (bad input, a failed download)."""


# --------------------------------------------------------------------------- inputs
def pinned_versions(requirements: Path, names: Sequence[str] = KAGGLE_LACKS) -> dict[str, str]:
    """``name -> version`` of ``names`` as pinned (``==``) in ``requirements``."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for number, raw in enumerate(Path(requirements).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise BundleError(f"{requirements} line {number}: {exc}") from None
        specs = list(req.specifier)
        if len(specs) == 1 and specs[0].operator == "==":
            pins[canonicalize_name(req.name)] = specs[0].version
    missing = [n for n in names if canonicalize_name(n) not in pins]
    if missing:
        raise BundleError(f"{requirements}: {', '.join(missing)} not pinned with '==' "
                          "(the wheels dataset needs an exact version)")
    return {n: pins[canonicalize_name(n)] for n in names}


def resolve_user(user: str | None = None) -> tuple[str, str]:
    """``(user name, where it came from)``: ``--user``, else the Kaggle configuration's
    user name (never its key), else the placeholder to edit."""

    source = "--user"
    if user is None:
        user, source = kaggle_username(), "the Kaggle configuration"
    if user is None:
        return PLACEHOLDER_USER, "placeholder"
    if not NAME.match(user):
        raise BundleError(f"Kaggle user name {user!r} (from {source}): use letters, "
                          "digits, '-' and '_'")
    return user, source


def _dataset_metadata(user: str, slug: str, title: str, description: str) -> dict:
    return {"id": f"{user}/{slug}", "title": title, "description": description,
            "licenses": [{"name": "other"}]}


# --------------------------------------------------------------------------- the parts
def write_code(dest: Path, user: str, profile: str, sets: Sequence[str],
               time_budget_s: float | None = None, stages: Sequence[str] = ()) -> None:
    """The code dataset: the package (its profiles inside), the stage scripts, the
    requirements."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    shutil.copytree(REPO / "src" / "sleepemo", dest / "src" / "sleepemo", ignore=ignore)
    for script in sorted((REPO / "src").glob("[0-9][0-9]_*.py")):
        shutil.copyfile(script, dest / "src" / script.name)
    shutil.copyfile(REPO / "requirements.txt", dest / "requirements.txt")
    shutil.copyfile(REPO / "pyproject.toml", dest / "pyproject.toml")  # the kernel's imports
    settings = {"profile": profile, "sets": list(sets)}
    if time_budget_s is not None:
        settings["time_budget_s"] = float(time_budget_s)
    if stages:
        settings["stages"] = list(stages)
    write_json(dest / SETTINGS, settings)
    write_json(dest / "dataset-metadata.json", _dataset_metadata(
        user, CODE_SLUG, "sleepemo code",
        "The sleepemo solution's source: src/ (the package with its profiles, and the "
        "stage scripts) and requirements.txt, under the repository's license."))


def download_wheels(pins: dict[str, str], dest: Path, python_version: str = PYTHON_VERSION,
                    platforms: Sequence[str] = PLATFORMS,
                    log: Callable[[str], None] = print) -> list[Path]:
    """``pip download`` one wheel per pin into ``dest`` (binary only, no dependencies,
    for ``python_version`` on ``platforms``); returns the wheels, one per pin."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    for name, version in pins.items():
        log(f"  pip download {name}=={version}")
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
               "--only-binary", ":all:", "--no-deps", "--python-version", python_version,
               *[arg for p in platforms for arg in ("--platform", p)],
               "--dest", str(dest), f"{name}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
            raise BundleError(f"pip download {name}=={version} failed (exit "
                              f"{proc.returncode}): {lines[-1]}")
    found = {}
    for wheel in sorted(dest.glob("*.whl")):
        wname, wversion, _, _ = parse_wheel_filename(wheel.name)
        found[(wname, str(wversion))] = wheel
    wheels = []
    for name, version in pins.items():
        wheel = found.get((canonicalize_name(name), version))
        if wheel is None:
            raise BundleError(f"{dest}: pip download left no wheel of {name}=={version} "
                              f"(found {sorted(p.name for p in dest.glob('*.whl'))})")
        wheels.append(wheel)
    return wheels


def write_wheels(dest: Path, user: str, pins: dict[str, str], wheels: bool,
                 python_version: str = PYTHON_VERSION, log: Callable[[str], None] = print
                 ) -> list[Path]:
    """The wheels dataset: the pins the notebook installs and, unless ``wheels`` is
    False, their wheels. Returns the wheel files."""
    dest.mkdir(parents=True)
    write_text(dest / WHEELS_LIST, "".join(f"{n}=={v}\n" for n, v in pins.items()))
    write_json(dest / "dataset-metadata.json", _dataset_metadata(
        user, WHEELS_SLUG, "sleepemo wheels",
        "Wheels of the PyPI packages sleepemo needs that Kaggle's Python image lacks "
        f"({', '.join(pins)}), each under its own license; {WHEELS_LIST} pins them."))
    if not wheels:
        return []
    return download_wheels(pins, dest, python_version, log=log)


# --------------------------------------------------------------------------- the closure
def kernel_imports(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The runtime dependencies of ``pyproject.toml`` that the kernel imports."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    deps = tomllib.loads(Path(pyproject).read_text())["project"]["dependencies"]
    skip = {canonicalize_name(n) for n in KERNEL_DOES_NOT_USE}
    return [Requirement(d).name for d in deps
            if canonicalize_name(Requirement(d).name) not in skip]


def installed_bundle(pins: dict[str, str]) -> list[Distribution] | None:
    """The pinned distributions as installed in this environment, or None when one is
    missing or at another version (their metadata then says nothing of the pins)."""
    dists = []
    for name, version in pins.items():
        try:
            dist = installed_distribution(name)
        except ImageError:
            return None
        if dist.version != version:
            return None
        dists.append(dist)
    return dists


def closure_problems(dists: Sequence[Distribution], image=None,
                     imports: Sequence[str] | None = None) -> list[str]:
    """What ``pip install --no-index`` of the bundle, then the stages, would miss on
    Kaggle's image: unmet requirements of the bundled distributions, and packages the
    kernel imports that neither the image nor the bundle holds."""
    image = IMAGE if image is None else image
    imports = kernel_imports() if imports is None else imports
    return unmet(dists, image) + [
        f"{name}: the kernel imports it, and neither Kaggle's image nor the bundle has it"
        for name in missing(imports, dists, image)]


def check_closure(pins: dict[str, str], wheels: Sequence[Path],
                  log: Callable[[str], None] = print) -> bool:
    """Refuse (:class:`BundleError`) a bundle that would not install on Kaggle's image.
    The wheels' own metadata is read; without wheels, the installed distributions' when
    they are at the pins. Returns whether the check could run."""
    dists = [wheel_distribution(w) for w in wheels] if wheels else installed_bundle(pins)
    if dists is None:
        log("dependency closure not checked: no wheels, and the pinned packages are not "
            "all installed here at their pins")
        return False
    problems = closure_problems(dists)
    if problems:
        raise BundleError("the kernel's offline install would fail on Kaggle's image "
                          f"({IMAGE.header.get('source', 'kaggle_image.txt')}): "
                          + "; ".join(problems))
    return True


def kernel_metadata(user: str, gpu: bool = False) -> dict:
    """``kernel-metadata.json``: the notebook, the competition data and both datasets
    attached, internet off, the image pinned. ``docker_image_pinning_type: original``
    keeps the image of the kernel's first run for every later version (the push API pins
    no image by name); the notebook prints how the image it meets differs from
    ``kaggle_image.txt``. With ``gpu``: ``machine_shape`` NvidiaTeslaT4 (Kaggle's "GPU T4
    x2"; its P100 has no kernels in the image's CUDA 12.8 torch)."""
    meta = {"id": f"{user}/{KERNEL_SLUG}", "title": KERNEL_TITLE,
            "code_file": NOTEBOOK.name, "language": "python", "kernel_type": "notebook",
            "is_private": True, "enable_gpu": bool(gpu), "enable_tpu": False,
            "enable_internet": False, "docker_image_pinning_type": "original",
            "dataset_sources": [f"{user}/{CODE_SLUG}", f"{user}/{WHEELS_SLUG}"],
            "competition_sources": [COMPETITION_SLUG], "kernel_sources": [],
            "model_sources": []}
    if gpu:
        meta["machine_shape"] = GPU_MACHINE_SHAPE
    return meta


def write_kernel(dest: Path, user: str, gpu: bool) -> None:
    dest.mkdir(parents=True)
    shutil.copyfile(NOTEBOOK, dest / NOTEBOOK.name)
    write_json(dest / "kernel-metadata.json", kernel_metadata(user, gpu))


# --------------------------------------------------------------------------- the bundle
def _is_bundle(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def build_bundle(out: str | Path = DEFAULT_OUT, user: str | None = None, wheels: bool = True,
                 gpu: bool = False, profile: str = "quick", sets: Sequence[str] = (),
                 python_version: str = PYTHON_VERSION, time_budget_s: float | None = None,
                 stages: Sequence[str] = (), log: Callable[[str], None] = print) -> Path:
    """Write the bundle (see the module docstring) into ``out``, replacing an earlier
    bundle there (built aside and renamed into place when complete); any other
    non-empty folder is refused."""
    out = Path(out).resolve()
    if not CHECKOUT:
        raise BundleError("the bundle copies the source checkout (src/, requirements.txt, "
                          "notebooks/): run it from a clone of the repository")
    source = REPO / "src"
    if out == source or source in out.parents:
        raise BundleError(f"{out}: the bundle cannot go inside {source}, which it copies")
    load_config(profile, list(sets))  # refuse bad settings here, not on Kaggle
    known = {spec.number for spec in STAGES}
    unknown = [s for s in stages if s not in known]
    if unknown:
        raise BundleError(f"--stages {' '.join(unknown)}: no such stage (have "
                          f"{' '.join(sorted(known))})")
    user, source = resolve_user(user)
    pins = pinned_versions(REPO / "requirements.txt")
    with atomic_dir(out, replaceable=_is_bundle) as tmp:
        write_code(tmp / "code", user, profile, sets, time_budget_s, stages)
        log(f"code dataset: {len(list((tmp / 'code').rglob('*.py')))} Python files")
        files = write_wheels(tmp / "wheels", user, pins, wheels, python_version, log=log)
        checked = check_closure(pins, files, log=log)
        names = [f.name for f in files]
        write_kernel(tmp / "kernel", user, gpu)
        write_json(tmp / MARKER, {"user": user, "user_from": source, "profile": profile,
                                  "sets": list(sets), "gpu": bool(gpu), "pins": pins,
                                  "wheels": names, "python_version": python_version,
                                  "platforms": list(PLATFORMS), "closure_checked": checked,
                                  "kaggle_image": {k: IMAGE.header.get(k) for k in
                                                   ("source", "source-date", "python")}})
    log(f"wheels dataset: {len(names)} wheels" if wheels else
        "wheels dataset: no wheels (--no-wheels); the notebook's install then needs the "
        "packages already present")
    if user == PLACEHOLDER_USER:
        log(f"no Kaggle user name found: replace {PLACEHOLDER_USER} in the three metadata "
            "files, or rerun with --user NAME")
    log(f"bundle for Kaggle user {user} (from {source}): {out}")
    return out


def read_bundle(out: str | Path) -> dict:
    """The ``bundle.json`` of a built bundle."""
    return read_json(Path(out) / MARKER)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./run.sh kaggle-bundle",
                                 description="Write the code and wheels datasets and the "
                                             "offline kernel for Kaggle.")
    ap.add_argument("--out", default=str(DEFAULT_OUT),
                    help="bundle folder (default: kaggle/bundle/ of the checkout; an earlier "
                         "bundle there "
                         "is replaced)")
    ap.add_argument("--user", help="Kaggle user name (default: from the Kaggle "
                                   "configuration, else a placeholder to edit)")
    ap.add_argument("--no-wheels", action="store_true",
                    help="skip pip download (the wheels dataset then holds only its list)")
    ap.add_argument("--gpu", action="store_true", help="ask Kaggle for a GPU")
    ap.add_argument("--profile", choices=PROFILES, default="quick",
                    help="the notebook's default profile (default: quick)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override the notebook passes to every stage")
    ap.add_argument("--time-budget", type=float, metavar="SECONDS",
                    help=f"the notebook's time budget from its start (default "
                         f"{DEFAULT_BUDGET_S:.0f} s, of Kaggle's 12-hour limit): stages that "
                         "do not fit are skipped or stopped, the submission stage always runs")
    ap.add_argument("--stages", nargs="+", default=[], metavar="NN",
                    help="only these stages in the kernel, e.g. 00 01 07 (default: all)")
    ap.add_argument("--python-version", default=PYTHON_VERSION,
                    help=f"Kaggle's Python for the wheels (default {PYTHON_VERSION})")
    args = ap.parse_args(argv)
    try:
        if args.time_budget is not None and args.time_budget <= 0:
            raise BundleError(f"--time-budget {args.time_budget:g}: must be > 0 seconds")
        build_bundle(args.out, args.user, not args.no_wheels, args.gpu, args.profile,
                     args.sets, args.python_version, args.time_budget, args.stages)
    except (BundleError, ConfigError, ImageError, FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
