"""The one entry point: ``sleepemo <command>`` (or ``python -m sleepemo <command>``).

- ``run``: the whole pipeline, one process per stage, with ``<out>/run.log``
  (:mod:`sleepemo.pipeline.runner`; what ``./run.sh`` runs after its set-up);
- ``plan``: each result of a run as reuse or recompute, and why (:mod:`sleepemo.pipeline.plan`);
- ``stage NAME``: one stage in this process (what ``run`` starts for each stage; the
  ``src/NN_*.py`` scripts are the same command);
- ``predict``: a finished run on new recordings (:mod:`sleepemo.predict`);
- ``submit``: a finished run to Kaggle (:mod:`sleepemo.kaggle.submit`);
- ``kaggle-bundle``: the offline Kaggle kernel (:mod:`sleepemo.kaggle.bundle`);
- ``kaggle status|output``: that kernel on Kaggle after the push: its status, its output
  files (:mod:`sleepemo.kaggle.kernel`);
- ``data``: resolve the data folder and print its path: real data in ``input/<slug>/``,
  a Kaggle download when credentials exist, else the built-in synthetic data.

The data folder is found by :mod:`sleepemo.data.location`. The stages' own plumbing (arguments, opening and closing work) is
:mod:`sleepemo.pipeline.stage`.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    pass

# (the commands import what they need when they run: `sleepemo --help` needs no package
# beyond the standard library)

#: ``sleepemo <command>``: what each command does (``sleepemo --help`` lists them).
COMMANDS = {
    "run": "run the pipeline, each stage in its own process; log: <out>/run.log",
    "plan": "list each result of a run as reuse or recompute, why, and the expected time",
    "stage": "run one stage in this process: sleepemo stage NAME [options]",
    "predict": "apply a finished run to new .mat recordings without retraining",
    "submit": "submit a finished run to Kaggle, wait for the score, log it",
    "kaggle-bundle": "write the code and wheels datasets and the offline Kaggle kernel",
    "kaggle": "the pushed kernel: kaggle status [--wait] | kaggle output (its files)",
    "data": "resolve (find, download or generate) the data folder and print its path",
}


# ------------------------------------------------------------------ commands
def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: sleepemo <command> [options]   (also: python -m sleepemo <command>)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "sleepemo <command> --help: the command's options."]
    return "\n".join(lines)


def _data(argv: list[str]) -> int:
    from sleepemo.config import PROFILES, load_config
    from sleepemo.errors import guarded

    ap = argparse.ArgumentParser(prog="sleepemo data", description=COMMANDS["data"])
    ap.add_argument("--profile", choices=PROFILES, default="quick")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    def go():
        from sleepemo.data.location import resolve_data_dir

        cfg = load_config(args.profile, args.overrides)
        print(resolve_data_dir(cfg, log=lambda m: print(m, file=sys.stderr)))

    guarded(go)
    return 0


def _run(argv: list[str]) -> int:
    from sleepemo.pipeline.runner import main as run_main

    return run_main(argv)


def _plan(argv: list[str]) -> int:
    from sleepemo.pipeline.plan import main as plan_main

    return plan_main(argv) or 0


def _predict(argv: list[str]) -> int:
    from sleepemo.predict.cli import cli as predict_cli

    return predict_cli(argv)


def _submit(argv: list[str]) -> int:
    from sleepemo.kaggle.submit import main as submit_main

    return submit_main(argv)


def _kaggle_bundle(argv: list[str]) -> int:
    from sleepemo.kaggle.bundle import main as bundle_main

    return bundle_main(argv)


def _kaggle(argv: list[str]) -> int:
    from sleepemo.kaggle.kernel import main as kernel_main

    return kernel_main(argv)


# ------------------------------------------------------------------ stages
def stage_entry(name: str) -> tuple[Callable, Callable | None, str]:
    """``(body, add_arguments, doc)`` of stage ``name``, from its trainer module (its
    ``trainer`` in ``STAGES``): ``body(stage, args)`` calls the module's ``run``, with the
    keyword arguments its ``options(args)`` gives when the stage has options of its own
    (``add_arguments(ap)``)."""
    from sleepemo.pipeline.stage import spec

    m = spec(name).trainer_module()
    add = getattr(m, "add_arguments", None)
    options = getattr(m, "options", lambda args: {})
    return (lambda s, args: m.run(s, **options(args))), add, m.__doc__


def run_stage(name: str, argv: list[str] | None = None, doc: str | None = None,
              prog: str | None = None) -> None:
    """Stage ``name`` in this process with the arguments ``argv`` (default: the command
    line's): what ``sleepemo stage NAME`` and the ``src/NN_*.py`` scripts run."""
    from sleepemo.pipeline import stage

    body, add_arguments, module_doc = stage_entry(name)
    stage.main(name, doc or module_doc, body, add_arguments or (lambda ap: None),
               argv=argv, prog=prog)


def _stage(argv: list[str]) -> int:
    from sleepemo.pipeline.stage import STAGES, spec

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
    "kaggle-bundle": _kaggle_bundle, "kaggle": _kaggle, "data": _data}


def main(argv: list[str] | None = None) -> int:
    """``sleepemo <command> [options]``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from sleepemo import __version__

        print(f"sleepemo {__version__}")
        return 0
    handler = _HANDLERS.get(argv[0])
    if handler is None:
        print(f"sleepemo: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return handler(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
