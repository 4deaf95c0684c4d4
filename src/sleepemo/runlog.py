"""The run's log: every line of a run in ``<out>/run.log``; the console as before.

One logger, ``sleepemo``, per process (standard :mod:`logging`). :func:`setup` gives it two
console handlers that write the text alone, as the lines always looked: records below
WARNING to stdout, warnings and errors to stderr, from the console level on (``--quiet``:
warnings and errors only; ``--verbose``: debug lines too). Its records are kept in memory
until :func:`attach` names the artefact folder (once its lock is held: a run refused by
the lock writes nothing into the other run's folder); from then on each record is also
appended to ``<out>/run.log``, every line of it prefixed with the time, the part of the run
that wrote it (``run`` for the driver, ``sleepemo run``; the stage's folder, e.g.
``03_experts``, for a stage process) and the level. The driver and each stage process
append to the same file, one after the other.

A stage process also sends what it prints on stdout through the logger
(:func:`capture_stdout`): the stage bodies' and the library's ``print`` lines reach the
file (and ``--quiet`` hides them) without each being rewritten. stderr is left alone:
progress bars stay live on the terminal and out of the file, except a final line each
(:func:`to_file`, from :mod:`sleepemo.progress`). Output of worker processes that a stage
starts with a fresh interpreter (spawn) goes to the terminal only.

The file is best effort: when it cannot be written (a full disk), the run goes on without
it and says nothing more than the error the run itself meets.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

LOG_NAME = "run.log"
LOGGER = "sleepemo"
#: ``-q``/``-v`` -> the console level (the file always gets every level).
QUIET, NORMAL, VERBOSE = logging.WARNING, logging.INFO, logging.DEBUG


class _State:
    who: str | None = None          # "run" or the stage folder; None: not set up
    handlers: list[logging.Handler] = []
    pending: "_Pending | None" = None
    file: Path | None = None


def logger() -> logging.Logger:
    return logging.getLogger(LOGGER)


def configured() -> bool:
    """Whether :func:`setup` has run in this process."""
    return _State.who is not None


def log_file() -> Path | None:
    """The file records go to (None before :func:`attach`)."""
    return _State.file


# ------------------------------------------------------------------ handlers
class _Console(logging.Filter):
    """Console records in ``[low, high)``; records marked ``console=False`` are file-only."""

    def __init__(self, low: int, high: int):
        super().__init__()
        self.low, self.high = low, high

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "console", True) and self.low <= record.levelno < self.high


class _FileFormat(logging.Formatter):
    """``2026-11-30 17:09:20 [03_experts] INFO    text``, on every line of the text."""

    def __init__(self, who: str):
        super().__init__()
        self.who = who

    def formatTime(self, record, datefmt=None):  # noqa: N802 (logging's name)
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        head = f"{self.formatTime(record)} [{self.who}] {record.levelname:<7} "
        return "\n".join(head + line for line in (text.splitlines() or [""]))


class _LogFile(logging.FileHandler):
    """``<out>/run.log``, appended; stops quietly when it cannot be written."""

    broken = False

    def emit(self, record):
        if not self.broken:
            super().emit(record)

    def handleError(self, record):  # noqa: N802 (logging's name)
        self.broken = True  # a full disk: no traceback per line; the run reports its own


class _Pending(logging.Handler):
    """Records kept until the file is known (at most ``limit``)."""

    def __init__(self, limit: int = 10_000):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.limit = limit

    def emit(self, record):
        if len(self.records) < self.limit:
            self.records.append(record)


# ------------------------------------------------------------------ set-up
def add_arguments(ap: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` and ``-v/--verbose``."""
    g = ap.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true",
                   help="warnings and errors only on the console, no progress bars "
                        "(<out>/run.log still gets every line)")
    g.add_argument("-v", "--verbose", action="store_true", help="debug lines too")


def level(args: argparse.Namespace) -> int:
    """The console level of parsed ``-q``/``-v``."""
    return QUIET if getattr(args, "quiet", False) else \
        VERBOSE if getattr(args, "verbose", False) else NORMAL


def setup(who: str, console: int = NORMAL, stdout=None, stderr=None) -> logging.Logger:
    """Console handlers at level ``console`` and a buffer for the file (see the module
    docstring); ``who`` names this process's lines in the file. Called again, it replaces
    the earlier set-up."""
    reset()
    log = logger()
    log.setLevel(logging.DEBUG)
    log.propagate = False
    plain = logging.Formatter("%(message)s")
    out = logging.StreamHandler(stdout if stdout is not None else sys.stdout)
    out.addFilter(_Console(logging.NOTSET, logging.WARNING))
    err = logging.StreamHandler(stderr if stderr is not None else sys.stderr)
    err.addFilter(_Console(logging.WARNING, logging.CRITICAL + 1))
    for h in (out, err):
        h.setLevel(console)
        h.setFormatter(plain)
    pending = _Pending()
    _State.who, _State.handlers, _State.pending, _State.file = who, [out, err, pending], \
        pending, None
    for h in _State.handlers:
        log.addHandler(h)
    return log


def attach(out: str | Path) -> Path:
    """From now on, records also go to ``<out>/run.log`` (the earlier ones first)."""
    if not configured():
        raise RuntimeError("runlog.attach before runlog.setup")
    log = logger()
    path = Path(out) / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _LogFile(path, mode="a", encoding="utf-8", delay=True)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(_FileFormat(_State.who))
    pending = _State.pending
    if pending is not None:
        log.removeHandler(pending)
        _State.handlers.remove(pending)
        for record in pending.records:
            handler.handle(record)
        _State.pending = None
    elif _State.file is not None:  # attached before: move to the new file
        for h in [h for h in _State.handlers if isinstance(h, _LogFile)]:
            log.removeHandler(h)
            _State.handlers.remove(h)
            h.close()
    log.addHandler(handler)
    _State.handlers.append(handler)
    _State.file = path
    return path


def reset() -> None:
    """Remove what :func:`setup` and :func:`attach` added (the file is closed)."""
    log = logger()
    for h in _State.handlers:
        log.removeHandler(h)
        h.close()
    _State.who, _State.handlers, _State.pending, _State.file = None, [], None, None
    log.propagate = True
    log.setLevel(logging.NOTSET)


# ------------------------------------------------------------------ writing
def _emit(lvl: int, msg: str, stream) -> None:
    if configured():
        logger().log(lvl, msg)
    else:
        print(msg, file=stream or (sys.stderr if lvl >= logging.WARNING else sys.stdout))


def debug(msg: str) -> None:
    """``msg`` through the logger (on the console with ``--verbose``); nothing when not set
    up."""
    if configured():
        logger().debug(msg)


def info(msg: str, stream=None) -> None:
    """``msg`` through the logger when set up, else printed (on ``stream``: stdout)."""
    _emit(logging.INFO, msg, stream)


def warning(msg: str) -> None:
    """``msg`` through the logger when set up, else printed on stderr."""
    _emit(logging.WARNING, msg, None)


def error(msg: str) -> None:
    """``msg`` through the logger when set up, else printed on stderr."""
    _emit(logging.ERROR, msg, None)


def to_file(msg: str, lvl: int = logging.INFO, exc_info=None) -> None:
    """``msg`` into the log file only (nothing on the console); nothing when not set up."""
    if configured():
        logger().log(lvl, msg, extra={"console": False}, exc_info=exc_info)


class _StdoutToLog(io.TextIOBase):
    """A stdout whose complete lines become INFO records of the logger."""

    def __init__(self, real):
        super().__init__()
        self._real = real
        self._part = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._part = (self._part + text).split("\n")
        for line in lines:
            logger().info(line)
        return len(text)

    def flush(self) -> None:
        self._real.flush()

    def finish(self) -> None:
        """The last line when it has no newline."""
        with self._lock:
            part, self._part = self._part, ""
        if part:
            logger().info(part)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._real.isatty()

    def fileno(self) -> int:
        return self._real.fileno()

    @property
    def encoding(self):
        return getattr(self._real, "encoding", "utf-8")


@contextlib.contextmanager
def capture_stdout() -> Iterator[None]:
    """Within the block, what is printed on ``sys.stdout`` goes through the logger
    (console stdout and the file); needs :func:`setup` first (its handler writes to the
    real stdout)."""
    if not configured():
        raise RuntimeError("runlog.capture_stdout before runlog.setup")
    real = sys.stdout
    writer = _StdoutToLog(real)
    sys.stdout = writer
    try:
        yield
    finally:
        writer.finish()
        sys.stdout = real
