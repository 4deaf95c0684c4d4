"""The one entry point: ``sleepemo <command>`` (or ``python -m sleepemo <command>``).

- ``run``: the whole pipeline, one process per stage, with ``<out>/run.log``
  (:mod:`sleepemo.runner`; what ``./run.sh`` runs after its set-up);
- ``plan``: :mod:`sleepemo.plan` (when this version has it);
- ``stage NAME``: one stage in this process (what ``run`` starts for each stage; the
  ``src/NN_*.py`` scripts are the same command);
- ``predict``: a finished run on new recordings (:mod:`sleepemo.predict`);
- ``submit``: a finished run to Kaggle (:mod:`sleepemo.submit`);
- ``kaggle-bundle``: the offline Kaggle kernel (:mod:`sleepemo.kaggle_bundle`);
- ``data``: resolve the data folder and print its path: real data in ``input/<slug>/``,
  a Kaggle download when credentials exist, else the built-in synthetic data.

This module also finds the data folder (:func:`resolve_data_dir`) for the stages and the
runner. The stages' own plumbing (arguments, opening and closing work) is
:mod:`sleepemo.stage`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .config import Config

# (the commands import what they need when they run: `sleepemo --help` needs no package
# beyond the standard library)

#: ``sleepemo <command>``: what each command does (``sleepemo --help`` lists them).
COMMANDS = {
    "run": "run the pipeline, each stage in its own process; log: <out>/run.log",
    "plan": "plan a run (sleepemo.plan; sleepemo plan --help)",
    "stage": "run one stage in this process: sleepemo stage NAME [options]",
    "predict": "apply a finished run to new .mat recordings without retraining",
    "submit": "submit a finished run to Kaggle, wait for the score, log it",
    "kaggle-bundle": "write the code and wheels datasets and the offline Kaggle kernel",
    "data": "resolve (find, download or generate) the data folder and print its path",
}


def synthetic_dir(cfg: Config) -> Path:
    """``input/synthetic[-<design>][-scale<s>-seed<n>]``; the default theta design has no
    design part (its folders keep their names)."""
    d = cfg.data
    name = "synthetic" if d.synthetic_design == "theta" else f"synthetic-{d.synthetic_design}"
    if (d.synthetic_scale, d.synthetic_seed) != (1.0, 0):
        name += f"-scale{d.synthetic_scale:g}-seed{d.synthetic_seed}"
    return Path(d.input_dir) / name


def resolve_data_dir(cfg: Config, data_dir: str | None = None, log=print) -> Path:
    """The data folder, first found of: given, configured, mounted in a Kaggle kernel,
    real in ``input/<slug>/``, downloaded with Kaggle credentials, built-in synthetic."""
    from . import synth
    from .download import find_data_root, get_data

    if data_dir or cfg.data.dir:
        return Path(data_dir or cfg.data.dir)
    kernel = Path(cfg.data.kaggle_input) / cfg.data.slug
    if kernel.is_dir() and (root := find_data_root(kernel)) is not None:
        log(f"using the competition data mounted at {root}")
        return root

    def make_synthetic() -> Path:
        out = synthetic_dir(cfg)
        return synth.generate(out, synth.SynthConfig(seed=cfg.data.synthetic_seed,
                                                     scale=cfg.data.synthetic_scale,
                                                     design=cfg.data.synthetic_design))

    return Path(get_data(cfg.data.input_dir, cfg.data.slug, synthetic=make_synthetic,
                         log=log))


# ------------------------------------------------------------------ commands
def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: sleepemo <command> [options]   (also: python -m sleepemo <command>)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "sleepemo <command> --help: the command's options."]
    return "\n".join(lines)


def _data(argv: list[str]) -> int:
    from .config import PROFILES, load_config
    from .stage import guarded

    ap = argparse.ArgumentParser(prog="sleepemo data", description=COMMANDS["data"])
    ap.add_argument("--profile", choices=PROFILES, default="quick")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    def go():
        cfg = load_config(args.profile, args.overrides)
        print(resolve_data_dir(cfg, log=lambda m: print(m, file=sys.stderr)))

    guarded(go)
    return 0


def _run(argv: list[str]) -> int:
    from .runner import main as run_main

    return run_main(argv)


def _plan(argv: list[str]) -> int:
    try:
        from .plan import main as plan_main
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.plan":
            raise
        print("error: sleepemo plan is not available in this version (no module "
              "sleepemo.plan)", file=sys.stderr)
        return 2
    return plan_main(argv) or 0


def _predict(argv: list[str]) -> int:
    from .predict import cli as predict_cli

    return predict_cli(argv)


def _submit(argv: list[str]) -> int:
    from .submit import main as submit_main

    return submit_main(argv)


def _kaggle_bundle(argv: list[str]) -> int:
    from .kaggle_bundle import main as bundle_main

    return bundle_main(argv)


# ------------------------------------------------------------------ stages
def stage_entry(name: str) -> tuple[Callable, Callable | None, str]:
    """``(body, add_arguments, doc)`` of stage ``name``: ``body(stage, args)``, the
    stage's own options (or None) and its description. The stage modules are imported
    here, one at a time, and nowhere else outside :mod:`sleepemo.stages`."""
    from .stage import spec

    name = spec(name).name
    if name == "folds":
        from .stages import make_folds as m

        return (lambda s, args: m.run(s, force=args.force)), m.add_arguments, m.__doc__
    if name == "submission":
        from .stages import make_submission as m

        return (lambda s, args: m.run(s, model=args.model, submissions=args.submissions,
                                      run_name=args.run_name)), m.add_arguments, m.__doc__
    if name == "baselines":
        from .stages import baselines as m
    elif name == "mae":
        from .stages import pretrain_mae as m
    elif name == "experts":
        from .stages import train_experts as m
    elif name == "fusion":
        from .stages import train_fusion as m
    elif name == "rl_heads":
        from .stages import rl_heads as m
    elif name == "ensemble":
        from .stages import ensemble as m
    else:
        raise KeyError(f"stage {name!r} has no entry in sleepemo.cli.stage_entry")
    return (lambda s, args: m.run(s)), None, m.__doc__


def run_stage(name: str, argv: list[str] | None = None, doc: str | None = None,
              prog: str | None = None) -> None:
    """Stage ``name`` in this process with the arguments ``argv`` (default: the command
    line's): what ``sleepemo stage NAME`` and the ``src/NN_*.py`` scripts run."""
    from . import stage

    body, add_arguments, module_doc = stage_entry(name)
    stage.main(name, doc or module_doc, body, add_arguments or (lambda ap: None),
               argv=argv, prog=prog)


def _stage(argv: list[str]) -> int:
    from .stage import STAGES, spec

    listing = "stages (name, number or folder):\n" + "\n".join(
        f"  {s.number}  {s.name:<11} {s.folder:<14} {s.title}" for s in STAGES)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sleepemo stage NAME [options]   (sleepemo stage NAME --help: its "
              "options)\n\nRuns one stage in this process.\n\n" + listing)
        return 0 if argv else 2
    try:
        s = spec(argv[0])
    except KeyError:
        print(f"error: sleepemo stage: no stage {argv[0]!r}\n{listing}", file=sys.stderr)
        return 2
    run_stage(s.name, argv[1:], prog=f"sleepemo stage {s.name}")
    return 0


_HANDLERS: dict[str, Callable[[list[str]], int]] = {
    "run": _run, "plan": _plan, "stage": _stage, "predict": _predict, "submit": _submit,
    "kaggle-bundle": _kaggle_bundle, "data": _data}


def main(argv: list[str] | None = None) -> int:
    """``sleepemo <command> [options]``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"sleepemo {__version__}")
        return 0
    handler = _HANDLERS.get(argv[0])
    if handler is None:
        print(f"sleepemo: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return handler(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
