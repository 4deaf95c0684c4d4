"""Fetch the Kaggle competition data, or fall back to synthetic data.

The competition archive unpacks to a *data root*: a folder holding ``training/``
(``sleep_emo/S_<id>_cleaned.mat`` and ``sleep_neu/S_<id>_cleaned.mat``) and ``testing/``
(``test_subject_<id>.mat``), possibly below an extra top-level folder.

:func:`get_data` is the entry point of the pipeline: it uses data already on disk, else
downloads it with the ``kaggle`` package when credentials exist, else (or when the
download fails) calls the synthetic-data generator supplied by the caller.

Design notes
------------
* Credentials and transfer are the ``kaggle`` package's: :func:`kaggle_api` returns its
  authenticated ``KaggleApi`` and the download is its ``competition_download_files``.
  Importing ``kaggle`` authenticates at once (over the network when an access token
  exists; printing help and exiting when nothing does), so the package is imported only
  to download or submit. :func:`find_credentials` answers "is there anything to
  authenticate with?" without that import, from the sources the package tries in its
  order: an access token (``kagglesdk.get_access_token_from_env``: ``KAGGLE_API_TOKEN``,
  ``~/.kaggle/access_token``), the legacy user name and key (``kaggle.json`` and
  ``KAGGLE_USERNAME``/``KAGGLE_KEY``), the ``kaggle auth login`` credentials file.
* A download goes to a ``.tmp-*`` folder next to the destination, is extracted there and
  only then renamed to the destination. A killed download therefore never leaves a
  half-filled folder that looks complete; at most a ``.tmp-*`` folder remains.
* Archives are extracted with :func:`safe_extract`, which refuses archives with members
  that would land outside the target folder (``..``, absolute paths, drive letters,
  symlinks) before writing anything.
* Credentials are never printed: only *where* they were found is reported, and known
  secret values are masked in error messages.

Command line::

    python -m sleepemo.data.download [--input-dir input] [--slug SLUG]

downloads the data (no synthetic fallback) and prints the data root.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import stat
import sys
import tempfile
import zipfile
from collections import deque
from pathlib import Path
from typing import Callable, Sequence

from sleepemo import COMPETITION_SLUG

__all__ = [
    "UnsafeArchiveError",
    "DataLayoutError",
    "KaggleApiError",
    "KaggleDownloadError",
    "credentials_help",
    "require_credentials",
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
_OAUTH_FILE = "~/.kaggle/credentials.json"  # kagglesdk KaggleCredentials.DEFAULT_CREDENTIALS_FILE


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction folder."""


class DataLayoutError(ValueError):
    """The extracted archive holds no folder with both ``training/`` and ``testing/``."""


class KaggleApiError(RuntimeError):
    """The Kaggle API could not be used (package missing, authentication refused)."""


class KaggleDownloadError(KaggleApiError):
    """The Kaggle API could not be used or did not produce an archive."""


# --------------------------------------------------------------------------- credentials

def _kaggle_json() -> Path:
    """The ``kaggle.json`` the kaggle package reads. The package fixes this path in the
    body of ``KaggleApi`` when it is imported (and that import authenticates), so its
    rule is repeated here: ``$KAGGLE_CONFIG_DIR``, else ``~/.kaggle`` if that folder
    exists, else ``$XDG_CONFIG_HOME/kaggle`` (default ``~/.config/kaggle``)."""
    folder = os.environ.get("KAGGLE_CONFIG_DIR")
    if not folder:
        folder = os.path.expanduser("~/.kaggle")
        if not os.path.exists(folder) and sys.platform.startswith("linux"):
            xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
            folder = os.path.join(xdg, "kaggle")
    return Path(folder) / "kaggle.json"


def _legacy_config() -> dict[str, str]:
    """The non-empty ``username`` and ``key`` as ``KaggleApi._load_config`` merges them:
    ``kaggle.json`` first, ``KAGGLE_USERNAME``/``KAGGLE_KEY`` over it."""
    try:
        data = json.loads(_kaggle_json().read_text())
    except (OSError, ValueError):
        data = None
    data = dict(data) if isinstance(data, dict) else {}
    data.update(username=os.environ.get("KAGGLE_USERNAME", data.get("username")),
                key=os.environ.get("KAGGLE_KEY", data.get("key")))
    return {k: data[k] for k in ("username", "key") if isinstance(data[k], str) and data[k]}


def _access_token() -> tuple[str | None, str | None]:
    """``(token, source)`` from kagglesdk's own lookup (the first thing ``authenticate``
    tries), ``(None, None)`` when there is none or kagglesdk is missing."""
    try:
        from kagglesdk import get_access_token_from_env
    except ImportError:
        return None, None
    try:
        return get_access_token_from_env()
    except OSError:  # a KAGGLE_API_TOKEN value too long to be tried as a file name
        return os.environ.get("KAGGLE_API_TOKEN"), "KAGGLE_API_TOKEN"


def _oauth_tokens() -> list[str]:
    """The tokens in the ``kaggle auth login`` credentials file, [] when it has none."""
    try:
        data = json.loads(Path(os.path.expanduser(_OAUTH_FILE)).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or not data.get("refresh_token"):
        return []  # kagglesdk ignores a file without a refresh token
    return [v for k in ("refresh_token", "access_token") if isinstance(v := data.get(k), str)]


def _describe(path: str | Path) -> str:
    """Show ``path`` relative to the home folder as ``~/...`` when possible."""
    try:
        return "~/" + Path(path).relative_to(Path.home()).as_posix()
    except ValueError:
        return str(path)


def find_credentials() -> str | None:
    """Where the kaggle package would find credentials, without reading them out.

    Sources, in the package's order: an access token (``KAGGLE_API_TOKEN`` holding the
    token or a file name, ``~/.kaggle/access_token``, a Kaggle notebook's token); the
    user name and key (``kaggle.json``, see :func:`credentials_help` for where, with
    ``KAGGLE_USERNAME``/``KAGGLE_KEY`` over it); ``~/.kaggle/credentials.json`` from
    ``kaggle auth login``. Empty values and malformed files do not count. The kaggle
    package is not imported.

    Returns
    -------
    str or None
        A short description of the source (for example ``"~/.kaggle/kaggle.json"`` or
        ``"environment KAGGLE_USERNAME/KAGGLE_KEY"``), never the secret itself; None when
        no credentials were found.
    """
    token, source = _access_token()
    if token:
        return {"KAGGLE_API_TOKEN": "environment KAGGLE_API_TOKEN",
                "access_token": "~/.kaggle/access_token"}.get(source, str(source))
    if len(_legacy_config()) == 2:
        if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
            return "environment KAGGLE_USERNAME/KAGGLE_KEY"
        return _describe(_kaggle_json())
    if _oauth_tokens():
        return f"{_OAUTH_FILE} (kaggle auth login)"
    return None


def credentials_help() -> str:
    """Where to put Kaggle credentials, for messages: the ``kaggle.json`` path the kaggle
    package would read and the environment variables."""
    return (f"put kaggle.json (Kaggle > Settings > API > Create New Token, "
            f"https://www.kaggle.com/settings) in {_describe(_kaggle_json())} (chmod 600), "
            "or set the environment variables KAGGLE_USERNAME and KAGGLE_KEY (or "
            "KAGGLE_API_TOKEN)")


def require_credentials() -> str:
    """:func:`find_credentials`, or :class:`KaggleApiError` saying in one line where to put
    them (for the commands that call Kaggle: submit, kaggle status|output)."""
    source = find_credentials()
    if source is None:
        raise KaggleApiError(f"no Kaggle credentials found: {credentials_help()}")
    return source


def kaggle_username() -> str | None:
    """The Kaggle user name from ``KAGGLE_USERNAME`` or ``kaggle.json``, None if neither
    has one. Only the user name is returned; the key is never handed out."""
    return _legacy_config().get("username")


def mask_secrets(text: str) -> str:
    """``text`` with every known Kaggle secret value replaced by ``***``."""
    secrets = [_legacy_config().get("key", ""), _access_token()[0] or "",
               os.environ.get("KAGGLE_API_TOKEN", ""), *_oauth_tokens()]
    for name in ("access_token", "access_token.txt"):  # also those the token above hides
        with contextlib.suppress(OSError, ValueError):
            secrets.append(Path(os.path.expanduser(f"~/.kaggle/{name}")).read_text().strip())
    # Very short values would mask ordinary words; real keys are long.
    for secret in sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True):
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
        queue.extend((c, depth + 1) for c in children
                     if not c.name.startswith(".") and c.name != "__MACOSX")
    return None


# --------------------------------------------------------------------------- extraction

def _unsafe(info: zipfile.ZipInfo, target: Path, base: str) -> str | None:
    """Why member ``info`` must not be extracted into ``target`` (real path ``base``)."""
    name = info.filename.replace("\\", "/")
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    if name.startswith("/"):
        return "is an absolute path"
    if _DRIVE_RE.match(name):
        return "starts with a drive letter"
    if ".." in name.split("/"):
        return "contains a '..' component"
    dest = os.path.realpath(target / name)
    if dest != base and not dest.startswith(base.rstrip(os.sep) + os.sep):
        return f"would be written outside {target}"
    return None


def safe_extract(zip_path: str | os.PathLike, target_dir: str | os.PathLike) -> list[Path]:
    """Extract a zip archive, refusing it if any member would escape ``target_dir``.

    All members are checked before anything is written. A member is refused when it is
    an absolute path, starts with a drive letter, contains a ``..`` component (backslashes
    count as separators), is a symbolic link (``S_IFLNK`` in its external attributes) or
    would resolve outside ``target_dir`` (for example through a symlink already inside
    it). Then ``zipfile.ZipFile.extractall`` writes the members; nested archives are left
    as they are.

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
    zipfile.BadZipFile
        ``zip_path`` is not a valid zip archive.
    """
    archive, target = Path(zip_path), Path(target_dir)
    base = os.path.realpath(target)
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            reason = _unsafe(info, target, base)
            if reason:
                raise UnsafeArchiveError(f"refusing to extract archive {archive}: member "
                                         f"{info.filename!r} {reason}; nothing was extracted")
        zf.extractall(target)
    return [target / m.filename for m in members if not m.is_dir()]


# --------------------------------------------------------------------------- download

def kaggle_api():
    """The kaggle package's authenticated ``KaggleApi``.

    The package is imported here only, because importing it authenticates (see the
    module notes). What it prints (help text, a warning about a readable key file) goes
    to standard error on success and is replaced by one line on failure: ``ImportError``
    and the ``SystemExit`` by which the package reports missing credentials become
    :class:`KaggleApiError` (with :func:`credentials_help`).
    """
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            from kaggle.api.kaggle_api_extended import KaggleApi
            api = KaggleApi()
            api.authenticate()
    except ImportError as exc:
        raise KaggleApiError(
            "the 'kaggle' package is not installed (pip install kaggle==2.2.4)") from exc
    except SystemExit as exc:
        raise KaggleApiError(f"the Kaggle API found no usable credentials (exit status "
                             f"{exc.code}); {credentials_help()}") from None
    sys.stderr.write(mask_secrets(printed.getvalue()))
    return api


def _kaggle_download(slug: str, folder: Path) -> Path:
    """Download the competition archive into ``folder`` with the kaggle package
    (``competition_download_files``); return the zip file it wrote."""
    api = kaggle_api()
    try:
        api.competition_download_files(slug, path=str(folder), force=False, quiet=False)
    except Exception as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 403:
            raise KaggleDownloadError(
                f"access to competition {slug!r} was refused (403); accept its rules at "
                f"https://www.kaggle.com/competitions/{slug}/rules") from exc
        if status == 401:
            raise KaggleDownloadError(f"Kaggle refused the credentials (401); "
                                      f"{credentials_help()}") from exc
        if status == 404:
            raise KaggleDownloadError(f"competition {slug!r} was not found (404)") from exc
        raise
    zips = sorted(Path(folder).glob("*.zip"))
    if len(zips) != 1:
        found = ", ".join(p.name for p in sorted(Path(folder).iterdir())) or "nothing"
        raise KaggleDownloadError(
            f"the Kaggle API did not produce one zip archive in {folder} (found: {found})")
    return zips[0]


def download_competition(slug: str, dest_dir: str | os.PathLike,
                         downloader: Downloader | None = None) -> Path:
    """Download and extract the competition data into ``dest_dir``, atomically.

    The archive is downloaded into ``download/`` of a temporary ``.tmp-*`` folder in
    ``dest_dir.parent``, extracted with :func:`safe_extract` into ``extract/`` beside it
    (nested ``*.zip`` files are extracted too when the first level holds no data root),
    and ``extract/`` is renamed to ``dest_dir`` only when it holds a data root. The
    temporary folder is removed whatever happens, so ``dest_dir`` is either complete or
    absent.

    Parameters
    ----------
    slug : str
        Kaggle competition slug.
    dest_dir : path
        Final folder, for example ``input/<slug>``. It must not exist, or be empty, or
        already hold a data root (which is then returned without downloading).
    downloader : callable, optional
        ``downloader(slug, folder) -> Path`` writes the archive into ``folder`` and
        returns the zip path. Defaults to the kaggle package.

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
    dest.parent.mkdir(parents=True, exist_ok=True)
    download = downloader if downloader is not None else _kaggle_download

    with tempfile.TemporaryDirectory(prefix=f".tmp-{dest.name}-", dir=dest.parent) as tmp:
        (Path(tmp) / "download").mkdir()
        zip_path = Path(download(slug, Path(tmp) / "download"))
        if not zipfile.is_zipfile(zip_path):
            raise KaggleDownloadError(f"downloaded file {zip_path.name} is not a zip archive")
        extracted = Path(tmp) / "extract"
        safe_extract(zip_path, extracted)
        root = find_data_root(extracted)
        if root is None:
            for inner in sorted(extracted.rglob("*.zip")):
                safe_extract(inner, inner.parent)
                inner.unlink()
            root = find_data_root(extracted)
        if root is None:
            top = ", ".join(sorted(p.name for p in extracted.iterdir())[:10]) or "nothing"
            raise DataLayoutError(
                f"archive {zip_path.name} of competition {slug!r} holds no folder with "
                f"both training/ and testing/ (top level: {top})")
        if dest.is_dir():
            dest.rmdir()  # empty (checked above)
        try:
            os.rename(extracted, dest)
        except OSError:
            # Someone else finished the same download meanwhile: use theirs.
            theirs = find_data_root(dest)
            if theirs is None:
                raise
            return theirs
    return dest / root.relative_to(extracted)


# --------------------------------------------------------------------------- entry point

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
        No real data could be obtained and ``synthetic`` is None; the message says why
        and how to provide the data.
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
        raise RuntimeError(
            f"{reason}; put the competition data in {dest} (a folder with training/ and "
            f"testing/), or set up Kaggle credentials ({credentials_help()}) and accept "
            f"the rules at https://www.kaggle.com/competitions/{slug}/rules")
    log(f"{reason}; using the built-in synthetic data")
    return Path(synthetic())


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: download the competition data (no synthetic fallback).

    Prints the data root on standard output and returns 0; returns 1 with a message on
    standard error when there are no credentials or the download fails.
    """
    parser = argparse.ArgumentParser(
        prog="python -m sleepemo.data.download",
        description="Download and extract the Kaggle competition data into "
                    "INPUT_DIR/SLUG (atomically) and print the data root.")
    parser.add_argument("--input-dir", default="input",
                        help="folder holding one sub-folder per competition (default: input)")
    parser.add_argument("--slug", default=COMPETITION_SLUG,
                        help=f"Kaggle competition slug (default: {COMPETITION_SLUG})")
    args = parser.parse_args(argv)
    try:
        root = get_data(args.input_dir, args.slug,
                        log=lambda line: print(line, file=sys.stderr))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
