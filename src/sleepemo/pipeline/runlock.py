"""One run at a time per artefact folder: a lock on ``<out>/.sleepemo.lock``.

Two runs writing into the same ``--out`` folder would mix their artefacts, so every stage
script takes an exclusive ``flock`` (:func:`fcntl.flock`) on ``<out>/.sleepemo.lock`` before
it writes anything, and keeps it until it ends. Beside it, ``<out>/.sleepemo.lock.json``
names the holder (pid, host, command, stage, since when, a random token), so that a second
run stops at once with one line saying who holds the folder (:class:`FolderLocked`).

The kernel drops a ``flock`` when its holder dies, even by SIGKILL: a record left behind by
a killed run is then stale, and the next run takes the folder over with a log line saying
so. A run that ends normally removes its record.

``sleepemo run`` (:mod:`sleepemo.pipeline.runner`, what ``./run.sh`` runs) holds the lock for the
whole pipeline: it takes the lock on its own descriptor (:func:`acquire`), passes that
descriptor to each stage process (so the lock outlives it while a stage still runs) and
the record's token as ``SLEEPEMO_LOCK_TOKEN``. Its stages cannot take the lock again
(their own descriptor conflicts with the runner's), but they find the token of the record
in their environment: they run inside the holder, and only write their stage's name into
the record. A second run finds neither and stops, also between two stages. (A shell can
do the same with ``python -m sleepemo.pipeline.runlock take OUT --fd N``, below.)

The lock is local to one machine's kernel; on shared storage (NFS) whether ``flock`` is
seen by other machines depends on the file system.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import json
import os
import shlex
import socket
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from sleepemo.errors import InputError, guarded
from sleepemo.io import write_json

LOCK_NAME = ".sleepemo.lock"
RECORD_NAME = ".sleepemo.lock.json"
#: The token of the lock record that the processes of one ``sleepemo run`` share.
ENV = "SLEEPEMO_LOCK_TOKEN"


class FolderLocked(InputError, RuntimeError):
    """Another process holds the artefact folder's lock."""


def _record(folder: Path) -> dict | None:
    try:
        rec = json.loads((folder / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def describe(rec: dict | None) -> str:
    """The holder in words: ``pid 12 on host (stage 03_experts of `sleepemo run ...`) since T``."""
    if not rec:
        return "a process that has not written its record yet"
    what = f"`{rec.get('command', '?')}`"
    if rec.get("stage"):
        what = f"stage {rec['stage']} of {what}"
    return (f"pid {rec.get('pid', '?')} on {rec.get('host', '?')} ({what}) "
            f"since {rec.get('since', '?')}")


def command_line(argv: list[str] | None = None) -> str:
    """This process's command, shortened to 200 characters."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        argv[0] = Path(argv[0]).name
    text = shlex.join(argv)
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass
class Holding:
    """The lock as this process holds it: ``fd`` None when it runs inside the holder."""

    folder: Path
    token: str
    fd: int | None

    def release(self) -> None:
        """Remove the record (when it is ours) and drop the lock."""
        if self.fd is None:
            return
        rec = _record(self.folder)
        if rec is not None and rec.get("token") == self.token:
            (self.folder / RECORD_NAME).unlink(missing_ok=True)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def acquire(folder: str | os.PathLike, command: str, stage: str | None = None,
            log: Callable[[str], None] = print, fd: int | None = None,
            pid: int | None = None) -> Holding:
    """Take the lock of ``folder`` (created if needed) or raise :class:`FolderLocked`.

    Parameters
    ----------
    folder : path
        The artefact folder.
    command : str
        What holds it, for the record (e.g. :func:`command_line`).
    stage : str, optional
        The stage running now (``03_experts``), for the record.
    log : callable
        Gets the line saying that a stale lock was taken over.
    fd : int, optional
        Lock this open descriptor of the lock file (one that a parent keeps open, as a
        shell using ``runlock take`` does) instead of opening the file; it is not closed
        on release.
    pid : int, optional
        The holder's pid for the record (default: this process).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    own = fd is None
    if own:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if own:
            os.close(fd)
        rec = _record(folder)
        token = os.environ.get(ENV)
        if token and rec is not None and rec.get("token") == token:
            if stage:  # inside the holder (sleepemo run): say which stage runs now
                write_json(folder / RECORD_NAME, {**rec, "stage": stage})
            return Holding(folder, token, None)
        raise FolderLocked(f"{folder} is in use by another run: {describe(rec)}; wait for "
                           "it to end or choose another --out") from None
    stale = _record(folder)
    if stale is not None:
        log(f"{folder}: taking over a stale lock: its holder, {describe(stale)}, ended "
            "without releasing it (killed?)")
    token = uuid.uuid4().hex
    since = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_json(folder / RECORD_NAME, {"pid": pid or os.getpid(), "host": socket.gethostname(),
                                      "command": command, "stage": stage, "since": since,
                                      "token": token})
    return Holding(folder, token, fd if own else None)


@contextmanager
def hold(folder: str | os.PathLike, command: str, stage: str | None = None,
         log: Callable[[str], None] = print) -> Iterator[Holding]:
    """The lock of ``folder`` for the duration of the block (see :func:`acquire`)."""
    holding = acquire(folder, command, stage, log)
    try:
        yield holding
    finally:
        holding.release()


def main(argv: list[str] | None = None) -> int:
    """``take OUT --fd N --pid P --command C``: lock the descriptor N that the calling
    shell keeps open (the lock lasts as long as it does) and print the record's token."""
    ap = argparse.ArgumentParser(prog="python -m sleepemo.pipeline.runlock")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("take", help="lock OUT on an inherited descriptor, print the token")
    p.add_argument("folder")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--pid", type=int, required=True, help="the holder (the shell's $$)")
    p.add_argument("--command", required=True)
    args = ap.parse_args(argv)
    holding = acquire(args.folder, args.command, fd=args.fd, pid=args.pid,
                      log=lambda m: print(m, file=sys.stderr))
    print(holding.token)
    return 0


if __name__ == "__main__":
    guarded(main)
