"""The kernel's stages within a time budget: a submission before Kaggle's session limit.

Kaggle stops a kernel at its session limit (12 hours for CPU and GPU notebooks) and keeps
no output of a killed session. :func:`run_stages` runs the stage scripts in order, each in
its own process group, showing their output as it comes. Every stage but the kept ones
(the submission stage) must finish before ``budget - reserve``: a stage that would start
with no time left is skipped, one still running at that moment is stopped (SIGTERM, then
SIGKILL after ``grace`` seconds; its finished folds stay on disk, so a rerun resumes
them). The kept stages then run on what the earlier ones wrote. Every skip and stop is
said in one line, and the returned records say what ran.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

#: Kaggle's session limit for CPU and GPU notebooks, less a margin for the notebook's
#: own cells (install, report).
DEFAULT_BUDGET_S = 11.5 * 3600
#: Time kept for the submission stage.
DEFAULT_RESERVE_S = 900.0

RAN, SKIPPED, STOPPED = "ran", "skipped", "stopped"


class StageFailed(RuntimeError):
    """A stage script exited with an error (not because the budget stopped it)."""


@dataclass(frozen=True)
class StageRecord:
    stage: str
    status: str
    seconds: float
    message: str = ""


def _run(cmd: Sequence[str], timeout: float | None, grace: float,
         log: Callable[[str], None], **kw) -> int | None:
    """Run ``cmd`` in a new process group, its output passed to ``log`` line by line;
    the exit code, or None when ``timeout`` passed and the group was stopped."""
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)

    def pump():
        for line in proc.stdout:
            log(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        code = None
    reader.join(timeout=5)
    return code


def run_stages(scripts: Sequence[Path], command: Callable[[Path], Sequence[str]],
               budget_s: float = DEFAULT_BUDGET_S, reserve_s: float = DEFAULT_RESERVE_S,
               keep: Sequence[str] = (), grace: float = 30.0,
               clock: Callable[[], float] = time.monotonic,
               log: Callable[[str], None] = print, **popen) -> list[StageRecord]:
    """Run ``command(script)`` for each script in order within ``budget_s`` seconds from
    now (see the module docstring). ``keep``: script names that always run, with the
    whole remaining budget. Raises :class:`StageFailed` when a stage fails."""
    start = clock()
    deadline = start + budget_s
    records = []
    for script in scripts:
        name = Path(script).name
        kept = name in keep
        left = deadline - clock() - (0.0 if kept else reserve_s)
        if left <= 0:
            message = (f"{name}: skipped, the time budget ({budget_s:.0f} s) is spent"
                       + ("" if kept else f" but the {reserve_s:.0f} s kept for "
                          f"{', '.join(keep) or 'the last stages'}"))
            log(message)
            records.append(StageRecord(name, SKIPPED, 0.0, message))
            continue
        cmd = command(script)
        log(f"$ {' '.join(str(c) for c in cmd)}")
        t0 = clock()
        code = _run(cmd, left, grace, log, **popen)
        seconds = clock() - t0
        if code is None:
            message = (f"{name}: stopped after {seconds:.0f} s at the time budget; its "
                       "finished folds are kept (a rerun resumes them), the later stages "
                       "use what is there")
            log(message)
            records.append(StageRecord(name, STOPPED, seconds, message))
            continue
        if code != 0:
            raise StageFailed(f"{name} failed (exit status {code}); its output is above")
        records.append(StageRecord(name, RAN, seconds))
    return records
