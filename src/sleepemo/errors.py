"""What the user did wrong, said in one line: :class:`InputError` and :func:`guarded`.

Every expected problem with what a user gave (a profile or ``--set`` value, a data file, a
submission, a run folder in use, a full disk) is an :class:`InputError` or one of the
standard file errors; an entry point wrapped in :func:`guarded` prints it as one line on
standard error and exits with code 2, never with a traceback. Anything else is a bug and
keeps its traceback.
"""
from __future__ import annotations

import logging
from typing import Callable

from sleepemo import runlog
from sleepemo.io import DiskFull, disk_full


class InputError(Exception):
    """A problem with the user's input: one line, exit code 2. Subclasses set
    :attr:`kind`, the word the line starts with."""

    kind = "error"


def guarded(fn: Callable[[], object]) -> None:
    """Run ``fn``; an :class:`InputError`, a missing or existing file and a full disk end
    in one line and exit code 2, not a traceback (the line goes to stderr, and to the
    run's log file when there is one: :mod:`sleepemo.runlog`)."""
    try:
        fn()
    except (InputError, FileExistsError, FileNotFoundError, DiskFull) as exc:
        runlog.error(f"{getattr(exc, 'kind', 'error')}: {exc}")
        raise SystemExit(2) from None
    except Exception as exc:
        full = disk_full(exc)
        if full is None:
            runlog.to_file(f"failed: {type(exc).__name__}: {exc}", logging.ERROR,
                           exc_info=exc)  # the traceback itself goes to stderr as ever
            raise
        runlog.error(f"error: {DiskFull(full.filename, full)}")
        raise SystemExit(2) from None
