"""Fetch the Kaggle competition data, or fall back to synthetic data.

The competition archive unpacks to a *data root*: a folder holding ``training/``
(``sleep_emo/S_<id>_cleaned.mat`` and ``sleep_neu/S_<id>_cleaned.mat``) and ``testing/``
(``test_subject_<id>.mat``), possibly below an extra top-level folder.

:func:`get_data` is the entry point of the pipeline: it uses data already on disk, else
downloads it with the Kaggle API when credentials exist, else (or when the download
fails) calls the synthetic-data generator supplied by the caller.

Design notes
------------
* The ``kaggle`` package authenticates as soon as it is imported and may call ``exit``
  when no credentials exist, so it is imported lazily inside :func:`kaggle_api` only
  (used by the download and by :mod:`sleepemo.submit`), after :func:`find_credentials`
  found something.
* A download is written to a ``.tmp-*`` folder next to the destination, extracted into a
  second ``.tmp-*`` folder and only then renamed to the destination. A killed download
  therefore never leaves a half-filled folder that looks complete; at most a ``.tmp-*``
  folder remains, which can be deleted.
* Archives are extracted with :func:`safe_extract`, which refuses members that would land
  outside the target folder (``..``, absolute paths, drive letters, symlinks).
* Credentials are never printed: only *where* they were found is reported, and known
  secret values are masked in error messages that are logged.

Command line::

    python -m sleepemo.download [--input-dir input] [--slug SLUG]

downloads the data (no synthetic fallback) and prints the data root.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import zipfile
from collections import deque
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping, Sequence

from sleepemo import COMPETITION_SLUG

__all__ = [
    "UnsafeArchiveError",
    "DataLayoutError",
    "KaggleApiError",
    "KaggleDownloadError",
    "credentials_help",
    "find_credentials",
    "kaggle_api",
    "mask_secrets",
    "kaggle_username",
    "find_data_root",
    "safe_extract",
    "download_competition",
    "get_data",
    "main",
]

#: A downloader takes ``(slug, folder)``, writes the competition archive into ``folder``
#: and returns the path of the zip file.
Downloader = Callable[[str, Path], Path]

_MAX_ROOT_DEPTH = 5
_MAX_MESSAGE_CHARS = 300
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_SKIPPED_DIRS = ("__MACOSX",)


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction folder."""


class DataLayoutError(ValueError):
    """The extracted archive holds no folder with both ``training/`` and ``testing/``."""


class KaggleApiError(RuntimeError):
    """The Kaggle API could not be used (package missing, authentication refused)."""


class KaggleDownloadError(KaggleApiError):
    """The Kaggle API could not be used or did not produce an archive."""


# --------------------------------------------------------------------------- credentials

def _kaggle_json_candidates(env: Mapping[str, str], home: Path) -> list[Path]:
    """Locations of ``kaggle.json`` in the order the kaggle package looks at them."""
    config_dir = env.get("KAGGLE_CONFIG_DIR")
    if config_dir:
        # With KAGGLE_CONFIG_DIR set, kaggle looks nowhere else.
        return [Path(config_dir).expanduser() / "kaggle.json"]
    xdg = env.get("XDG_CONFIG_HOME") or str(home / ".config")
    return [home / ".kaggle" / "kaggle.json", Path(xdg) / "kaggle" / "kaggle.json"]


def _access_token_candidates(home: Path) -> list[Path]:
    return [home / ".kaggle" / "access_token", home / ".kaggle" / "access_token.txt"]


def _read_kaggle_json(path: Path) -> dict[str, str] | None:
    """Return the content of a usable ``kaggle.json`` (username and key), else None."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    user, key = data.get("username"), data.get("key")
    if isinstance(user, str) and user and isinstance(key, str) and key:
        return data
    return None


def _read_token_file(path: Path) -> str | None:
    try:
        token = path.read_text().strip()
    except (OSError, ValueError):
        return None
    return token or None


def _describe(path: Path, home: Path) -> str:
    """Show ``path`` relative to the home folder as ``~/...`` when possible."""
    try:
        return "~/" + path.relative_to(home).as_posix()
    except ValueError:
        return str(path)


def find_credentials(env: Mapping[str, str] | None = None,
                     home: str | os.PathLike | None = None) -> str | None:
    """Tell where Kaggle API credentials are, without reading them out.

    Sources, in order: the environment variables ``KAGGLE_USERNAME`` and ``KAGGLE_KEY``;
    the environment variable ``KAGGLE_API_TOKEN``; ``$KAGGLE_CONFIG_DIR/kaggle.json``
    (or, when that variable is unset, ``~/.kaggle/kaggle.json`` and
    ``$XDG_CONFIG_HOME/kaggle/kaggle.json``) holding a ``username`` and a ``key``;
    ``~/.kaggle/access_token``. Empty values and malformed files do not count.

    Parameters
    ----------
    env : mapping, optional
        Environment variables; ``os.environ`` when None.
    home : path, optional
        Home folder; ``Path.home()`` when None.

    Returns
    -------
    str or None
        A short description of the source (for example ``"~/.kaggle/kaggle.json"`` or
        ``"environment KAGGLE_USERNAME/KAGGLE_KEY"``), never the secret itself; None when
        no credentials were found.
    """
    env = os.environ if env is None else env
    home = Path.home() if home is None else Path(home)
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "environment KAGGLE_USERNAME/KAGGLE_KEY"
    if env.get("KAGGLE_API_TOKEN"):
        return "environment KAGGLE_API_TOKEN"
    for path in _kaggle_json_candidates(env, home):
        if _read_kaggle_json(path) is not None:
            return _describe(path, home)
    for path in _access_token_candidates(home):
        if _read_token_file(path) is not None:
            return _describe(path, home)
    return None


def credentials_help(env: Mapping[str, str] | None = None,
                     home: str | os.PathLike | None = None) -> str:
    """Where to put Kaggle credentials, for messages: the ``kaggle.json`` path the kaggle
    package reads first (``$KAGGLE_CONFIG_DIR`` honoured) and the environment variables."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else Path(home)
    path = _describe(_kaggle_json_candidates(env, home)[0], home)
    return (f"put kaggle.json (Kaggle > Settings > API > Create New Token, "
            f"https://www.kaggle.com/settings) in {path} (chmod 600), or set the "
            "environment variables KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN)")


def kaggle_username(env: Mapping[str, str] | None = None,
                    home: str | os.PathLike | None = None) -> str | None:
    """The Kaggle user name from ``KAGGLE_USERNAME`` or the first usable ``kaggle.json``
    (see :func:`find_credentials` for where), None if neither has one. Only the
    ``username`` field is returned; the key is never handed out."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else Path(home)
    if env.get("KAGGLE_USERNAME"):
        return env["KAGGLE_USERNAME"]
    for path in _kaggle_json_candidates(env, home):
        data = _read_kaggle_json(path)
        if data is not None:
            return data["username"]
    return None


def _secret_values(env: Mapping[str, str] | None = None,
                   home: str | os.PathLike | None = None) -> list[str]:
    """Secret strings that must never appear in a logged message."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else Path(home)
    secrets = [env.get("KAGGLE_KEY", ""), env.get("KAGGLE_API_TOKEN", "")]
    for path in _kaggle_json_candidates(env, home):
        data = _read_kaggle_json(path)
        if data is not None:
            secrets.append(data["key"])
    for path in _access_token_candidates(home):
        secrets.append(_read_token_file(path) or "")
    token_path = env.get("KAGGLE_API_TOKEN", "")
    if token_path and len(token_path) < 4096 and Path(token_path).is_file():
        secrets.append(_read_token_file(Path(token_path)) or "")
    # Very short values would mask ordinary words; real keys are long.
    return sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)


def mask_secrets(text: str) -> str:
    """``text`` with every known Kaggle secret value replaced by ``***``."""
    for secret in _secret_values():
        text = text.replace(secret, "***")
    return text


def _short_message(exc: BaseException) -> str:
    """``"<ExceptionType>: <first 300 characters>"`` on one line, secrets masked."""
    text = mask_secrets(" ".join(str(exc).split()))
    if len(text) > _MAX_MESSAGE_CHARS:
        text = text[:_MAX_MESSAGE_CHARS - 3] + "..."
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


# --------------------------------------------------------------------------- data root

def find_data_root(folder: str | os.PathLike) -> Path | None:
    """Find the folder holding both ``training/`` and ``testing/``.

    Parameters
    ----------
    folder : path
        Where to start. The folder itself is tried first, then its sub-folders
        breadth-first (shallowest first, alphabetical within a level) down to
        5 levels. Hidden folders (``.*``) and ``__MACOSX`` are skipped.

    Returns
    -------
    Path or None
        The data root, or None when there is none (or ``folder`` does not exist).
    """
    start = Path(folder)
    if not start.is_dir():
        return None
    queue: deque[tuple[Path, int]] = deque([(start, 0)])
    while queue:
        current, depth = queue.popleft()
        if (current / "training").is_dir() and (current / "testing").is_dir():
            return current
        if depth >= _MAX_ROOT_DEPTH:
            continue
        try:
            children = sorted(p for p in current.iterdir() if p.is_dir())
        except OSError:
            continue
        for child in children:
            if child.name.startswith(".") or child.name in _SKIPPED_DIRS:
                continue
            queue.append((child, depth + 1))
    return None


# --------------------------------------------------------------------------- extraction

def _member_parts(archive: Path, name: str) -> tuple[str, ...]:
    """Validate one member name and return its path components."""
    def reject(reason: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(
            f"refusing to extract archive {archive}: member {name!r} {reason}; "
            "nothing was extracted")

    if not name or "\x00" in name:
        raise reject("has an empty or invalid name")
    posix = name.replace("\\", "/")
    if posix.startswith("/"):
        raise reject("is an absolute path")
    if _DRIVE_RE.match(posix):
        raise reject("starts with a drive letter")
    parts = tuple(p for p in PurePosixPath(posix).parts if p not in ("", "."))
    if ".." in parts:
        raise reject("contains a '..' component")
    if not parts:
        raise reject("has an empty path")
    return parts


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    mode = (info.external_attr >> 16) & 0xFFFF
    return stat.S_ISLNK(mode)


def _within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def _plan_extraction(zf: zipfile.ZipFile, archive: Path,
                     target: Path) -> list[tuple[zipfile.ZipInfo, Path, bool]]:
    """Check every member before anything is written; return ``(info, dest, is_dir)``."""
    base = os.path.realpath(target)
    plan: list[tuple[zipfile.ZipInfo, Path, bool]] = []
    files: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    for info in zf.infolist():
        name = info.filename
        if _is_symlink(info):
            raise UnsafeArchiveError(
                f"refusing to extract archive {archive}: member {name!r} is a symbolic "
                "link; nothing was extracted")
        parts = _member_parts(archive, name)
        dest = target.joinpath(*parts)
        if not _within(os.path.realpath(dest), base):
            raise UnsafeArchiveError(
                f"refusing to extract archive {archive}: member {name!r} would be written "
                f"outside {target}; nothing was extracted")
        is_dir = info.is_dir() or name.replace("\\", "/").endswith("/")
        if is_dir:
            if parts in files:
                raise UnsafeArchiveError(
                    f"refusing to extract archive {archive}: member {name!r} is both a "
                    "file and a folder; nothing was extracted")
            dirs.add(parts)
        else:
            if parts in files:
                raise UnsafeArchiveError(
                    f"refusing to extract archive {archive}: member {name!r} appears more "
                    "than once; nothing was extracted")
            if parts in dirs:
                raise UnsafeArchiveError(
                    f"refusing to extract archive {archive}: member {name!r} is both a "
                    "file and a folder; nothing was extracted")
            if dest.exists() or dest.is_symlink():
                raise FileExistsError(
                    f"refusing to extract archive {archive}: {dest} already exists and is "
                    "never overwritten; nothing was extracted")
            files.add(parts)
        dirs.update(parts[:i] for i in range(1, len(parts)))
        plan.append((info, dest, is_dir))
    clash = files & dirs
    if clash:
        member = "/".join(sorted(clash)[0])
        raise UnsafeArchiveError(
            f"refusing to extract archive {archive}: member {member!r} is both a file and "
            "a folder; nothing was extracted")
    return plan


def safe_extract(zip_path: str | os.PathLike, target_dir: str | os.PathLike) -> list[Path]:
    """Extract a zip archive, refusing any member that would escape ``target_dir``.

    All members are checked before anything is written. A member is refused when it is
    an absolute path, starts with a drive letter, contains a ``..`` component, is a
    symbolic link (``S_IFLNK`` in its external attributes), would resolve outside
    ``target_dir`` (for example through a symlink already inside it), appears twice or
    would overwrite an existing file. Backslashes count as path separators. Nested
    archives are left as they are. If writing fails half way, the files and folders
    created so far are removed again.

    Parameters
    ----------
    zip_path : path
        The archive.
    target_dir : path
        Extraction folder; created (with its parents) once the archive passed the checks.

    Returns
    -------
    list of Path
        The extracted files (not folders), in archive order.

    Raises
    ------
    UnsafeArchiveError
        A member was refused (the message names the archive and the member); nothing
        was extracted.
    FileExistsError
        A member would overwrite an existing file; nothing was extracted.
    zipfile.BadZipFile
        ``zip_path`` is not a valid zip archive.
    """
    archive = Path(zip_path)
    target = Path(target_dir)
    with zipfile.ZipFile(archive) as zf:
        plan = _plan_extraction(zf, archive, target)
        created: list[Path] = []
        written: list[Path] = []

        def make_dirs(folder: Path) -> None:
            missing = []
            while not folder.exists():
                missing.append(folder)
                folder = folder.parent
            for new in reversed(missing):
                new.mkdir()
                created.append(new)

        try:
            make_dirs(target)
            for info, dest, is_dir in plan:
                if is_dir:
                    make_dirs(dest)
                    continue
                make_dirs(dest.parent)
                with zf.open(info) as src, open(dest, "xb") as out:
                    created.append(dest)
                    shutil.copyfileobj(src, out, 1 << 20)
                written.append(dest)
        except BaseException:
            for path in reversed(created):
                try:
                    if path.is_dir() and not path.is_symlink():
                        path.rmdir()
                    else:
                        path.unlink()
                except OSError:
                    pass
            raise
    return written


def _extract_nested_zips(folder: Path) -> list[Path]:
    """Extract every ``*.zip`` below ``folder`` next to itself, then delete it (one pass)."""
    nested = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".zip" and p.is_file())
    extracted: list[Path] = []
    for inner in nested:
        extracted += safe_extract(inner, inner.parent)
        inner.unlink()
    return extracted


# --------------------------------------------------------------------------- download

def kaggle_api():
    """An authenticated ``kaggle`` API object (``KaggleApi``).

    The ``kaggle`` package is imported here only, because importing it authenticates
    (and may call ``exit``); call :func:`find_credentials` first. ``ImportError`` and
    ``SystemExit`` from the package become :class:`KaggleApiError`.
    """
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as exc:
        raise KaggleApiError(
            "the 'kaggle' package is not installed (pip install kaggle==2.2.4)") from exc
    except SystemExit as exc:
        raise KaggleApiError(
            f"importing the kaggle package exited (status {exc.code}); "
            "check the Kaggle credentials") from None
    try:
        api = KaggleApi()
        api.authenticate()
    except SystemExit as exc:
        raise KaggleApiError(
            f"the Kaggle API exited (status {exc.code}); check the Kaggle credentials") from None
    return api


def _kaggle_download(slug: str, folder: Path) -> Path:
    """Download the competition archive with the Kaggle API into ``folder``.

    The API comes from :func:`kaggle_api`; ``SystemExit`` from the package becomes
    :class:`KaggleDownloadError`.

    Returns
    -------
    Path
        The downloaded zip file (normally ``<folder>/<slug>.zip``).
    """
    folder = Path(folder)
    try:
        api = kaggle_api()
    except KaggleApiError as exc:
        raise KaggleDownloadError(str(exc)) from exc.__cause__
    try:
        api.competition_download_files(slug, path=str(folder), force=False, quiet=False)
    except SystemExit as exc:
        raise KaggleDownloadError(
            f"the Kaggle API exited (status {exc.code}); check the Kaggle credentials") from None
    except Exception as exc:
        text = str(exc)
        if "403" in text or "Forbidden" in text:
            raise KaggleDownloadError(
                f"access to competition {slug!r} was refused (403); accept its rules at "
                f"https://www.kaggle.com/competitions/{slug}/rules") from exc
        if "404" in text or "Not Found" in text:
            raise KaggleDownloadError(f"competition {slug!r} was not found (404)") from exc
        raise
    expected = folder / f"{slug}.zip"
    if expected.is_file():
        return expected
    zips = sorted(folder.glob("*.zip"))
    if len(zips) == 1:
        return zips[0]
    found = ", ".join(p.name for p in sorted(folder.iterdir())) or "nothing"
    raise KaggleDownloadError(
        f"the Kaggle API did not produce {expected.name} in {folder} (found: {found})")


def _top_level_listing(folder: Path, limit: int = 10) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "nothing"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def download_competition(slug: str, dest_dir: str | os.PathLike,
                         downloader: Downloader | None = None) -> Path:
    """Download and extract the competition data into ``dest_dir``, atomically.

    The archive is downloaded into a temporary ``.tmp-*`` folder in ``dest_dir.parent``,
    extracted with :func:`safe_extract` into a second temporary folder there (nested
    ``*.zip`` files are extracted too when the first level holds no data root) and the
    result is renamed to ``dest_dir`` only when it holds a data root. The temporary
    folders are removed whatever happens, so ``dest_dir`` is either complete or absent.

    Parameters
    ----------
    slug : str
        Kaggle competition slug.
    dest_dir : path
        Final folder, for example ``input/<slug>``. It must not exist, or be empty, or
        already hold a data root (which is then returned without downloading).
    downloader : callable, optional
        ``downloader(slug, folder) -> Path`` writes the archive into ``folder`` and
        returns the zip path. Defaults to the Kaggle API.

    Returns
    -------
    Path
        The data root inside ``dest_dir`` (see :func:`find_data_root`).

    Raises
    ------
    DataLayoutError
        The archive holds no folder with both ``training/`` and ``testing/``.
    UnsafeArchiveError
        The archive has a member that would escape the extraction folder.
    FileExistsError
        ``dest_dir`` exists, is not empty and holds no data root.
    KaggleDownloadError
        The Kaggle API failed or produced no zip archive; other exceptions from the
        downloader (network errors, ...) propagate unchanged.
    """
    dest = Path(dest_dir)
    if dest.exists():
        root = find_data_root(dest)
        if root is not None:
            return root
        if not dest.is_dir() or any(dest.iterdir()):
            raise FileExistsError(
                f"{dest} exists but holds no folder with training/ and testing/; "
                "move it away (or delete it) and download again")
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    download = downloader if downloader is not None else _kaggle_download

    with tempfile.TemporaryDirectory(prefix=f".tmp-{dest.name}-download-",
                                     dir=parent) as dl_tmp:
        zip_path = Path(download(slug, Path(dl_tmp)))
        if not zip_path.is_file():
            raise KaggleDownloadError(f"the downloader returned {zip_path}, which is not a file")
        if not zipfile.is_zipfile(zip_path):
            raise KaggleDownloadError(f"downloaded file {zip_path.name} is not a zip archive")

        extract_tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-extract-", dir=parent))
        try:
            safe_extract(zip_path, extract_tmp)
            root = find_data_root(extract_tmp)
            if root is None and any(p.suffix.lower() == ".zip" for p in extract_tmp.rglob("*")):
                _extract_nested_zips(extract_tmp)
                root = find_data_root(extract_tmp)
            if root is None:
                raise DataLayoutError(
                    f"archive {zip_path.name} of competition {slug!r} holds no folder with "
                    f"both training/ and testing/ (top level: {_top_level_listing(extract_tmp)})")
            relative = root.relative_to(extract_tmp)
            if dest.is_dir() and not any(dest.iterdir()):
                dest.rmdir()
            try:
                os.rename(extract_tmp, dest)
            except OSError:
                # Someone else finished the same download meanwhile: use theirs.
                theirs = find_data_root(dest)
                if theirs is not None:
                    return theirs
                raise
        finally:
            if extract_tmp.exists():
                _remove_tree(extract_tmp)
    return dest / relative


# --------------------------------------------------------------------------- entry point

def _how_to_provide(dest: Path, slug: str) -> str:
    return (f"put the competition data in {dest} (a folder with training/ and testing/), "
            f"or set up Kaggle credentials ({credentials_help()}) and accept the "
            f"rules at https://www.kaggle.com/competitions/{slug}/rules")


def get_data(input_dir: str | os.PathLike = "input",
             slug: str = COMPETITION_SLUG,
             synthetic: Callable[[], str | os.PathLike] | None = None,
             log: Callable[[str], object] = print,
             downloader: Downloader | None = None) -> Path:
    """Return a data root: real data on disk, else downloaded, else synthetic.

    1. ``input_dir/slug`` already holds a data root: use it.
    2. Kaggle credentials exist (:func:`find_credentials`): download with
       :func:`download_competition`; any failure (network, authentication, ``SystemExit``
       from the kaggle package, bad archive) is logged on one line and step 4 follows.
    3. No credentials: say so on one line.
    4. Return ``synthetic()``.

    Credentials are never logged; known secret values are masked in error messages.

    Parameters
    ----------
    input_dir : path
        Folder holding one sub-folder per competition (``input`` or ``/kaggle/input``).
    slug : str
        Kaggle competition slug; also the sub-folder name.
    synthetic : callable, optional
        Zero-argument callable that creates the synthetic data and returns its root.
    log : callable
        Receives the one-line progress messages.
    downloader : callable, optional
        Passed to :func:`download_competition` (tests use a fake one).

    Returns
    -------
    Path
        The data root to use.

    Raises
    ------
    RuntimeError
        No real data could be obtained and ``synthetic`` is None.
    """
    dest = Path(input_dir) / slug
    root = find_data_root(dest)
    if root is not None:
        log(f"using real data in {root}")
        return root

    source = find_credentials()
    if source is not None:
        log(f"downloading Kaggle competition {slug!r} into {dest} (credentials: {source})")
        try:
            root = download_competition(slug, dest, downloader=downloader)
        except (Exception, SystemExit) as exc:
            reason = f"kaggle download failed ({_short_message(exc)})"
        else:
            log(f"using real data in {root}")
            return root
    else:
        reason = "no Kaggle credentials found"

    if synthetic is None:
        raise RuntimeError(f"{reason} and no synthetic data generator was given; "
                           + _how_to_provide(dest, slug))
    log(f"{reason}; using the built-in synthetic data")
    return Path(synthetic())


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: download the competition data (no synthetic fallback).

    Prints the data root on standard output and returns 0; returns 1 with a message on
    standard error when there are no credentials or the download fails.
    """
    parser = argparse.ArgumentParser(
        prog="python -m sleepemo.download",
        description="Download and extract the Kaggle competition data into "
                    "INPUT_DIR/SLUG (atomically) and print the data root.")
    parser.add_argument("--input-dir", default="input",
                        help="folder holding one sub-folder per competition (default: input)")
    parser.add_argument("--slug", default=COMPETITION_SLUG,
                        help=f"Kaggle competition slug (default: {COMPETITION_SLUG})")
    args = parser.parse_args(argv)
    dest = Path(args.input_dir) / args.slug

    root = find_data_root(dest)
    if root is None:
        source = find_credentials()
        if source is None:
            print(f"error: no Kaggle credentials found; {_how_to_provide(dest, args.slug)}",
                  file=sys.stderr)
            return 1
        print(f"downloading Kaggle competition {args.slug!r} into {dest} "
              f"(credentials: {source})", file=sys.stderr)
        try:
            root = download_competition(args.slug, dest)
        except (Exception, SystemExit) as exc:
            print(f"error: kaggle download failed ({_short_message(exc)})", file=sys.stderr)
            return 1
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
