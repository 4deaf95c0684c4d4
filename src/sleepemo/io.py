"""Atomic file writing: an artefact is either complete on disk or absent.

Every writer in the package goes through :func:`atomic_path`, which hands out a temporary
path in the destination folder and renames it over the destination only when the block
finishes without an exception. A killed process leaves at most a ``.tmp-*`` file behind,
never a truncated artefact. A full disk (``ENOSPC``, or a quota: ``EDQUOT``) while writing
raises :class:`DiskFull`, which names the artefact that was not written; the earlier file
under that name, if any, is left as it was.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np


class DiskFull(OSError):
    """The disk filled up while writing ``dest``: it was not written (the earlier file of
    that name, if any, is unchanged)."""

    def __init__(self, dest: str | os.PathLike | None, cause: OSError | None = None):
        code = getattr(cause, "errno", None) or errno.ENOSPC
        super().__init__(code, os.strerror(code), None if dest is None else str(dest))
        self.dest = dest

    def __str__(self) -> str:
        what = f"{self.dest} was not written" if self.dest else "a file was not written"
        return (f"disk full ({self.strerror}): {what}; files written before are unchanged; "
                "free some space and rerun (finished work is kept)")


def disk_full(exc: BaseException | None) -> OSError | None:
    """The error saying that the disk or the user's quota is full, if ``exc`` is one or
    was raised while handling one (torch's writer turns ENOSPC into a RuntimeError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``dest``.

    Parameters
    ----------
    dest : path
        Final location. Its parent folder is created.
    overwrite : bool
        If False and ``dest`` exists, raise ``FileExistsError`` before writing anything.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and dest.exists():
        raise FileExistsError(f"{dest} exists and is never overwritten")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{dest.name}-", dir=dest.parent)
    except OSError as exc:
        if disk_full(exc):
            raise DiskFull(dest, exc) from exc
        raise
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, dest)
        else:
            _place_new(tmp, dest)
    except Exception as exc:
        full = disk_full(exc)
        if full is not None and not isinstance(exc, DiskFull):
            raise DiskFull(dest, full) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def _place_new(tmp: Path, dest: Path) -> None:
    """Give ``tmp`` the name ``dest`` unless a file of that name exists, also one that
    another process wrote meanwhile: a hard link fails if the name is taken."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise FileExistsError(f"{dest} appeared while writing; not overwritten") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if dest.exists():  # no hard links on this file system: check, then rename
            raise FileExistsError(f"{dest} appeared while writing; not overwritten") \
                from None
        os.replace(tmp, dest)


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike,
               replaceable: Callable[[Path], bool] = lambda p: False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``dest`` by renames.

    Parameters
    ----------
    dest : path
        Final folder. Its parent is created.
    replaceable : callable
        Called with ``dest`` when it exists and is not empty: True lets the new folder
        replace it (the old one is removed after the swap), False raises
        ``FileExistsError`` before anything is written.
    """
    import shutil

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)

    def check() -> None:
        if dest.exists() and any(dest.iterdir()) and not replaceable(dest):
            raise FileExistsError(f"{dest} exists and is not replaced: choose another folder")

    check()
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp's folder is private; the result is an ordinary folder
    old = None
    try:
        yield tmp
        check()
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{dest.name}-", dir=dest.parent))
            os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover)


def write_text(dest: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` to ``dest`` atomically."""
    with atomic_path(dest, overwrite=overwrite) as tmp:
        tmp.write_text(text)
    return Path(dest)


def write_json(dest: str | os.PathLike, obj: Any, overwrite: bool = True) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return write_text(dest, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n",
                      overwrite=overwrite)


def copy_file(src: str | os.PathLike, dest: str | os.PathLike,
              overwrite: bool = True) -> Path:
    """Copy ``src`` to ``dest`` atomically."""
    import shutil

    with atomic_path(dest, overwrite=overwrite) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dest)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_npy(dest: str | os.PathLike, arr: np.ndarray) -> Path:
    """Save one array atomically (``.npy``)."""
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
    return Path(dest)


def write_npz(dest: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Save several arrays atomically (``.npz``, uncompressed)."""
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return Path(dest)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
