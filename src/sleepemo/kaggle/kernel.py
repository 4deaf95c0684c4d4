"""The offline kernel after ``kaggle kernels push``: its status and its output files.

Command line (``./run.sh kaggle status|output [ARGS]`` sets up the environment and calls
it; ``sleepemo kaggle`` is the same)::

    python -m sleepemo.kaggle.kernel status [--kernel USER/SLUG] [--wait]
                                     [--interval S] [--max-interval S] [--timeout S]
    python -m sleepemo.kaggle.kernel output [--kernel USER/SLUG] [--out DIR]
                                     [--submissions DIR]

The kernel is ``--kernel`` (``USER/SLUG``, or ``SLUG`` of the configured user), default
``<user>/sleepemo-offline`` (what ``./run.sh kaggle-bundle`` pushes), the user name being
``KAGGLE_USERNAME`` or the ``username`` of ``kaggle.json``.

``status`` prints one line, ``<kernel>: <status>`` (queued, running, complete, error,
cancel_requested, cancel_acknowledged) with Kaggle's failure message when it gives one
(``KaggleApi.kernels_status``). ``--wait`` asks again until the kernel is complete, failed
or cancelled (progress on standard error; the pause grows 1.5x from ``--interval`` to
``--max-interval``; ``--timeout`` stops waiting).

``output`` downloads the kernel's output files and its log ``<slug>.log``
(``KaggleApi.kernels_output``) into a new folder, default
``submissions/kernel-<slug>-<UTC YYYYmmdd-HHMMSS>Z/``, and prints where ``submission.csv``
is and the command that submits it (``./run.sh submit --file ...``).
Writes: only that folder, never over an existing one: the files go to a temporary sibling
(``.tmp-*``) renamed at the end, so a failed download leaves nothing.

Exit codes: 0 done; 1 (``status --wait``) the kernel failed or was cancelled, or still ran
at ``--timeout``; 2 bad input, no usable Kaggle credentials, or Kaggle did not answer the
request (one line ``error: ...`` on standard error, no traceback, never a secret; without
credentials nothing is asked or written).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from sleepemo.config import project_dir
from sleepemo.data.download import (KaggleApiError, _short_message, kaggle_api,
                                    mask_secrets, require_credentials)
from sleepemo.data.submission import SUBMISSION_NAME
from sleepemo.io import atomic_dir
from sleepemo.kaggle import submit as _submit  # its clock and pause (tests replace them)
from sleepemo.kaggle.bundle import KERNEL_SLUG, NAME, BundleError, resolve_user

#: A kernel's statuses after which nothing changes (``KernelWorkerStatus``, lower case).
COMPLETE, ERROR = "complete", "error"
CANCELLED = ("cancel_requested", "cancel_acknowledged")


def _utcnow() -> datetime:
    """The time that names the output folder (tests replace it)."""
    return datetime.now(timezone.utc)


class KernelError(ValueError):
    """Bad input or a failed Kaggle request: exit code 2."""


# ------------------------------------------------------------------ the kernel
def kernel_id(kernel: str | None = None) -> str:
    """``USER/SLUG`` of ``kernel`` (``USER/SLUG``, or ``SLUG`` of the configured user);
    default: the configured user's ``sleepemo-offline``."""
    owner, slug = (kernel.split("/", 1) if kernel and "/" in kernel
                   else (None, kernel or KERNEL_SLUG))
    if owner is None:
        try:
            owner, source = resolve_user(None)
        except BundleError as exc:
            raise KernelError(str(exc)) from None
        if source == "placeholder":
            raise KernelError("no Kaggle user name (KAGGLE_USERNAME or the username of "
                              f"kaggle.json) to name the kernel: give --kernel USER/{slug}")
    for part in (owner, slug):
        if not NAME.match(part):
            raise KernelError(f"--kernel {kernel}: not USER/SLUG (letters, digits, '-' and "
                              "'_')")
    return f"{owner}/{slug}"


def _ask(what: str, call, *args, **kwargs):
    """``call(*args, **kwargs)`` of the Kaggle API, what it prints sent to standard error;
    its failure as :class:`KernelError` (one line, secrets masked)."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return call(*args, **kwargs)
    except Exception as exc:
        raise KernelError(f"Kaggle could not {what} ({_short_message(exc)})") from None


def describe(response) -> tuple[str, str]:
    """``(status, failure message)`` of a ``kernels_status`` answer: the status in lower
    case (``KernelWorkerStatus.COMPLETE`` or ``"COMPLETE"`` -> ``complete``), the message
    on one line ("" if none)."""
    status = getattr(response, "status", None)
    status = str(getattr(status, "name", status) or "unknown").lower()
    message = " ".join(str(getattr(response, "failure_message", None) or "").split())
    return status, mask_secrets(message)


def finished(status: str) -> bool:
    return status in (COMPLETE, ERROR) or status in CANCELLED


def status_line(kernel: str, status: str, message: str) -> str:
    return f"{kernel}: {status}" + (f" (failure message: {message})" if message else "")


def wait(api, kernel: str, interval: float, timeout: float, max_interval: float,
         backoff: float = _submit.BACKOFF,
         log=lambda m: print(m, file=sys.stderr)) -> tuple[str, str]:
    """Ask for the kernel's status until it finished (:func:`finished`) or ``timeout``
    seconds passed (:func:`sleepemo.kaggle.submit.poll_until`); returns the last
    ``(status, failure message)``. The first question's failure is an error; a later one
    is logged and asked again."""
    seen: list[tuple[str, str]] = []

    def ask() -> tuple[str, str]:
        try:
            seen.append(describe(_ask(f"tell the status of {kernel}", api.kernels_status,
                                      kernel)))
        except KernelError as exc:  # a network blip: the kernel runs on regardless
            if not seen:
                raise
            log(f"{exc}; asking again")
        return seen[-1]

    return _submit.poll_until(ask, lambda answer: finished(answer[0]), interval, timeout,
                              max_interval, backoff,
                              lambda answer, pause: log(f"{kernel}: {answer[0]}; next check "
                                                        f"in {pause:.0f} s"))


# ------------------------------------------------------------------ the output
def default_out(submissions: str | os.PathLike, kernel: str) -> Path:
    """``<submissions>/kernel-<slug>-<UTC YYYYmmdd-HHMMSS>Z``."""
    stamp = _utcnow().astimezone(timezone.utc).strftime("%Y%m%d-%H%M%SZ")
    return Path(submissions) / f"kernel-{kernel.split('/', 1)[1]}-{stamp}"


def download(api, kernel: str, dest: Path) -> list[Path]:
    """The kernel's output files in the new folder ``dest`` (written into a temporary
    sibling, renamed at the end); returns them, sorted."""
    if dest.exists():
        raise FileExistsError(f"{dest} exists and is never overwritten: choose another "
                              "--out (or move it away)")
    with atomic_dir(dest) as tmp:
        _ask(f"download the output of {kernel}", api.kernels_output, kernel, str(tmp),
             file_pattern=None, force=True, quiet=True)
        files = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file())
        if not files:
            raise KernelError(f"{kernel} has no output files (has it run? ./run.sh kaggle "
                              "status); nothing was written")
    return [dest / f for f in files]


def find_submission(files: Sequence[Path]) -> Path | None:
    """The shallowest ``submission.csv`` of ``files`` (the kernel writes it at the top)."""
    found = [f for f in files if f.name == SUBMISSION_NAME]
    return min(found, key=lambda f: (len(f.parts), str(f))) if found else None


def _show(path: Path) -> str:
    """``path`` relative to the current folder when it lies below it."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------ command line
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="sleepemo kaggle",
        description="The offline kernel on Kaggle (after `kaggle kernels push`): its "
                    "status, and its output files (submission.csv) downloaded.")
    commands = ap.add_subparsers(dest="command", required=True, metavar="{status,output}")
    kernel_help = (f"USER/SLUG, or SLUG of your user (default: <your user>/{KERNEL_SLUG}; "
                   "user from KAGGLE_USERNAME or kaggle.json)")
    status = commands.add_parser("status", help="print the kernel's status in one line",
                                 description="Print `<kernel>: <status>` (and Kaggle's "
                                             "failure message).")
    status.add_argument("--kernel", help=kernel_help)
    status.add_argument("--wait", action="store_true",
                        help="ask again until complete, error or cancelled (exit code 0 "
                             "complete, 1 otherwise)")
    _submit.add_poll_options(status, 60.0, 600.0, 43200.0, "with --wait: stop waiting "
                             "after this many seconds (default 43200: Kaggle's 12 h run "
                             "limit)", when="with --wait: ")
    output = commands.add_parser(
        "output", help="download the kernel's output files into a new folder",
        description="Download the kernel's output files and log into a new folder and "
                    "say how to submit its submission.csv.")
    output.add_argument("--kernel", help=kernel_help)
    output.add_argument("--out", help="the new folder (must not exist; default: "
                                      "<submissions>/kernel-<slug>-<UTC time>)")
    output.add_argument("--submissions", default=str(project_dir() / "submissions"),
                        help="where the default folder goes (default: submissions/ of "
                             "the checkout)")
    return ap


def _status(args) -> int:
    if _submit.poll_options_problem(args):
        raise KernelError(_submit.poll_options_problem(args))
    require_credentials()
    kernel = kernel_id(args.kernel)
    api = kaggle_api()
    if not args.wait:
        response = _ask(f"tell the status of {kernel}", api.kernels_status, kernel)
        print(status_line(kernel, *describe(response)))
        return 0
    status, message = wait(api, kernel, args.interval, args.timeout, args.max_interval)
    print(status_line(kernel, status, message))
    if status == COMPLETE:
        return 0
    if not finished(status):
        _submit._error(f"{kernel} is still {status} after {args.timeout:g} s; ask again later "
               "(./run.sh kaggle status --wait)")
    return 1


def _output(args) -> int:
    require_credentials()
    kernel = kernel_id(args.kernel)
    dest = Path(args.out) if args.out else default_out(args.submissions, kernel)
    if dest.exists():  # before asking Kaggle anything
        raise FileExistsError(f"{dest} exists and is never overwritten: choose another "
                              "--out (or move it away)")
    api = kaggle_api()
    files = download(api, kernel, dest)
    print(f"downloaded {len(files)} output files of {kernel} into {_show(dest)}")
    submission = find_submission(files)
    if submission is None:
        print(f"no {SUBMISSION_NAME} among them (the kernel's log: "
              f"{_show(dest / (kernel.split('/', 1)[1] + '.log'))})", file=sys.stderr)
        return 0
    print(f"submission: {_show(submission)}")
    print(f"next: ./run.sh submit --file {shlex.quote(_show(submission))}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit code (see the module docstring)."""
    args = _parser().parse_args(argv)
    try:
        return _status(args) if args.command == "status" else _output(args)
    except (KernelError, KaggleApiError, FileExistsError, OSError) as exc:
        _submit._error(exc)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
