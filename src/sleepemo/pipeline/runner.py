"""``sleepemo run``: the whole pipeline, each stage in its own process, one run log.

``sleepemo run [--profile P] [--data-dir DIR] [--out DIR] [--set KEY=VALUE]...
[--submissions DIR] [--stages 00,01,07] [--no-progress] [-q | -v]``

1. the data folder: ``--data-dir``, else resolved as ``sleepemo data`` does (real data in
   ``input/<slug>/``, a Kaggle download with credentials, else the synthetic data);
2. the artefact folder ``--out`` (default ``output/<profile>-<data name>``, see
   :func:`sleepemo.pipeline.stage.default_out`) is locked for the whole run (:mod:`sleepemo.pipeline.runlock`):
   this process takes the lock on its own descriptor, each stage process inherits that
   descriptor and the record's token (``SLEEPEMO_LOCK_TOKEN``), so a stage runs inside
   the holder and a second run is refused from the first stage to the last, also between
   two stages and if this process is killed while a stage runs;
3. every stage of :data:`sleepemo.pipeline.stage.STAGES`, by number in that order (``--stages``:
   only those), runs as ``python -m sleepemo stage NAME --profile P --data-dir DIR --out
   OUT [--set ...]`` (stage 07 also gets ``--submissions``), each in a new process; its wall
   time is logged, then the total. A stage that fails stops the run with its exit code.

Everything is logged to the console and to ``<out>/run.log`` (:mod:`sleepemo.runlog`):
these lines (``run``) and each stage process's (its folder name), with their times.
``./run.sh`` runs this command after its set-up.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from sleepemo import runlog
from sleepemo.config import CHECKOUT, PROFILES, REPO, load_config
from sleepemo.data.location import resolve_data_dir
from sleepemo.errors import guarded
from sleepemo.pipeline.runlock import ENV, acquire, command_line
from sleepemo.pipeline.stage import STAGES, StageSpec, default_out, spec


class UsageError(ValueError):
    """Bad command-line arguments (exit code 2)."""


class Stopped(Exception):
    """The run was stopped by a signal (``code``: 128 + the signal's number)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def parser(prog: str = "sleepemo run") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog, description="Run the pipeline: every stage in its own process, in "
        "order, the artefact folder locked from the first to the last; each stage's wall "
        "time and the total; every line also in <out>/run.log.")
    ap.add_argument("--profile", choices=PROFILES, default="quick")
    ap.add_argument("--data-dir", help="data folder with training/ and testing/ (default: "
                                       "real data if present, else Kaggle, else synthetic)")
    ap.add_argument("--out", help="artefact folder (default: output/<profile>-<data name> "
                                  "of the checkout, else of the current folder)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value in every stage, e.g. seed=1")
    ap.add_argument("--submissions", help="submissions folder of stage 07 (default: "
                                          "submissions/)")
    ap.add_argument("--stages", help="only these stages, by number (or name), comma-"
                                     "separated, e.g. 00,01,07; they run in pipeline order")
    ap.add_argument("--no-progress", action="store_true", help="hide progress bars")
    runlog.add_arguments(ap)
    return ap


def select(stages: str | None) -> list[StageSpec]:
    """The stages to run, in pipeline order: all, or those ``--stages`` names."""
    if not stages:
        return list(STAGES)
    wanted = set()
    for item in (n.strip() for n in stages.split(",")):
        if not item:
            continue
        try:
            wanted.add(spec(item).number)
        except KeyError:
            raise UsageError(f"--stages: no stage {item} (stages: "
                             f"{' '.join(s.number for s in STAGES)})") from None
    return [s for s in STAGES if s.number in wanted]


def stage_command(s: StageSpec, args: argparse.Namespace, data_dir: Path,
                  out: Path) -> list[str]:
    """The command of stage ``s`` (``python -m sleepemo stage NAME ...``)."""
    cmd = [sys.executable, "-m", "sleepemo", "stage", s.name, "--profile", args.profile,
           "--data-dir", str(data_dir), "--out", str(out)]
    for item in args.sets:
        cmd += ["--set", item]
    if s.name == "submission" and args.submissions:
        cmd += ["--submissions", args.submissions]
    if args.no_progress:
        cmd.append("--no-progress")
    if args.quiet:
        cmd.append("--quiet")
    elif args.verbose:
        cmd.append("--verbose")
    return cmd


def stage_env(token: str) -> dict[str, str]:
    """The stages' environment: the lock's token, and this checkout's package first on
    the path (a stage imports the same sleepemo as the runner)."""
    env = dict(os.environ, **{ENV: token})
    if CHECKOUT:
        src = str(REPO / "src")
        path = env.get("PYTHONPATH", "")
        if path.split(os.pathsep)[0] != src:
            env["PYTHONPATH"] = src + (os.pathsep + path if path else "")
    return env


_child: subprocess.Popen | None = None


def _on_signal(signum, frame):
    """SIGTERM/SIGHUP: pass it to the running stage, then stop the run."""
    if _child is not None and _child.poll() is None:
        _child.send_signal(signum)
    raise Stopped(128 + signum)


def run_child(cmd: list[str], env: dict, fd: int | None) -> int:
    """Run a stage's process (sharing the lock's descriptor ``fd``); its exit code.
    Interrupted (Ctrl-C reaches the stage too; a signal is passed on), it waits for the
    stage to end (10 s, then kills it) before raising."""
    global _child
    proc = subprocess.Popen(cmd, env=env, pass_fds=(fd,) if fd is not None else ())
    _child = proc
    try:
        return proc.wait()
    finally:
        _child = None
        if proc.poll() is None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _seconds(t0: float) -> str:
    return f"{time.perf_counter() - t0:.0f} s"


def run(args: argparse.Namespace, command: str) -> int:
    """The pipeline (see the module docstring); the exit code."""
    t0 = time.perf_counter()
    chosen = select(args.stages)
    cfg = load_config(args.profile, args.sets)
    if not (args.data_dir or cfg.data.dir):
        runlog.info("== data")

    data_dir = resolve_data_dir(cfg, args.data_dir, log=runlog.info)
    if not data_dir.is_dir():
        raise UsageError(f"data folder {data_dir} not found")
    out = Path(args.out) if args.out else default_out(cfg, data_dir)
    runlog.info(f"== data: {data_dir}   artefacts: {out}   profile: {args.profile}")
    # one run at a time in <out>, from the first stage to the last (sleepemo.pipeline.runlock)
    holding = acquire(out, command, log=runlog.warning)
    try:
        log = runlog.attach(out)
        runlog.debug(f"{command} (pid {os.getpid()}, {sys.executable}); log: {log}")
        env = stage_env(holding.token)
        for s in chosen:
            runlog.info(f"== {s.folder}")
            cmd = stage_command(s, args, data_dir, out)
            runlog.debug(f"$ {shlex.join(cmd)}")
            t = time.perf_counter()
            code = run_child(cmd, env, holding.fd)
            if code != 0:
                code = 128 - code if code < 0 else code  # killed by a signal: 128 + N
                runlog.error(f"   {s.folder} failed (exit {code}) after {_seconds(t)}")
                return code
            runlog.info(f"   {s.folder}: {_seconds(t)}")
        runlog.info(f"== total wall time: {_seconds(t0)} (after set-up)")
        return 0
    finally:
        holding.release()


def main(argv: list[str] | None = None) -> int:
    """``sleepemo run``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    runlog.setup("run", runlog.level(args))
    command = command_line(["sleepemo", "run", *argv])
    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    code = 2
    try:
        def go():
            nonlocal code
            code = run(args, command)

        guarded(go)
    except UsageError as exc:
        runlog.error(f"error: {exc}")
        code = 2
    except KeyboardInterrupt:
        runlog.error("interrupted")
        code = 130
    except Stopped as exc:
        runlog.error(f"stopped by signal {exc.code - 128}")
        code = exc.code
    except SystemExit as exc:  # guarded: the one-line error is logged
        code = exc.code if isinstance(exc.code, int) else 2
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        runlog.reset()
    return code


if __name__ == "__main__":
    sys.exit(main())
