"""Tests for sleepemo.data.download. None of them reaches the network or real credentials:
HOME is an empty temporary folder, the Kaggle variables are unset, any socket connection
or name lookup fails the test, and where the real kaggle package is used its transfer
method is replaced."""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from sleepemo import COMPETITION_SLUG
from sleepemo.data import download as dl

REPO = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-kaggle-key-0123456789"
DATA_FILES = ("training/sleep_emo/S_2_cleaned.mat",
              "training/sleep_neu/S_2_cleaned.mat",
              "testing/test_subject_1.mat")

# Kept before the autouse fixture replaces it, for the tests of the real wiring.
_REAL_KAGGLE_DOWNLOAD = dl._kaggle_download


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Empty HOME, no Kaggle or XDG variables, no network, the real download forbidden."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in [v for v in os.environ if v.startswith("KAGGLE_")] + ["XDG_CONFIG_HOME"]:
        monkeypatch.delenv(var, raising=False)

    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    # Recorded and checked afterwards: the code under test may catch the error.
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(dl, "_kaggle_download", lambda slug, folder: no_network(slug))
    yield home
    assert not attempts, f"a test tried to reach the network: {attempts}"


@pytest.fixture
def real_kaggle(monkeypatch, isolated):
    """The real ``KaggleApi`` class, imported afresh under this test's HOME (the package
    fixes its config path and authenticates when imported); the modules of an earlier
    import are put back afterwards."""
    for name in [n for n in sys.modules if n == "kaggle" or n.startswith("kaggle.")]:
        monkeypatch.delitem(sys.modules, name)
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    return KaggleApi


def make_zip(path: Path, members: dict[str, bytes] | list[tuple[zipfile.ZipInfo | str, bytes]]
             ) -> Path:
    items = members.items() if isinstance(members, dict) else members
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in items:
            zf.writestr(name, data)
    return path


def competition_zip(path: Path, top: str = "sleepemo-data") -> Path:
    prefix = f"{top}/" if top else ""
    return make_zip(path, {prefix + name: b"dummy " + name.encode() for name in DATA_FILES})


def fake_downloader(calls: list | None = None, top: str = "sleepemo-data"):
    def download(slug: str, folder: Path) -> Path:
        if calls is not None:
            calls.append((slug, Path(folder)))
        return competition_zip(Path(folder) / f"{slug}.zip", top=top)
    return download


def failing_downloader(exc: BaseException):
    def download(slug: str, folder: Path) -> Path:
        (Path(folder) / f"{slug}.zip").write_bytes(b"partial")
        raise exc
    return download


def all_paths(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


def write_kaggle_json(folder: Path, content: object = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    content = {"username": "alice", "key": SECRET} if content is None else content
    path = folder / "kaggle.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def set_env_credentials(monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)


# --------------------------------------------------------------------------- credentials

def test_no_credentials_anywhere(isolated, monkeypatch, reliability):
    assert dl.find_credentials() is None and dl.kaggle_username() is None
    # Without ~/.kaggle the package reads ~/.config/kaggle (XDG); the help says so.
    assert "~/.config/kaggle/kaggle.json" in dl.credentials_help()
    (isolated / ".kaggle").mkdir()
    help_text = dl.credentials_help()
    assert "~/.kaggle/kaggle.json" in help_text and "KAGGLE_USERNAME" in help_text
    assert "KAGGLE_KEY" in help_text and "\n" not in help_text
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(isolated.parent / "cfg"))
    assert f"{isolated.parent / 'cfg' / 'kaggle.json'} (chmod 600)" in dl.credentials_help()
    assert dl.find_credentials() is None
    reliability("download", "no Kaggle credentials anywhere (no variables, no kaggle.json, "
                "no token files)", "find_credentials is None; the help names the kaggle.json "
                "path the kaggle package would read and KAGGLE_USERNAME/KAGGLE_KEY")


def test_credentials_from_environment(monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    assert dl.find_credentials() is None  # half a pair is not enough
    monkeypatch.setenv("KAGGLE_KEY", "")
    assert dl.find_credentials() is None
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    found = dl.find_credentials()
    assert found == "environment KAGGLE_USERNAME/KAGGLE_KEY"
    assert dl.kaggle_username() == "alice"
    assert dl.mask_secrets(f"401 for key {SECRET}.") == "401 for key ***."


def test_credentials_from_kaggle_json(isolated):
    write_kaggle_json(isolated / ".kaggle")
    assert dl.find_credentials() == "~/.kaggle/kaggle.json"
    assert dl.kaggle_username() == "alice"
    assert dl.mask_secrets(SECRET) == "***"


def test_credentials_from_xdg_kaggle_json_only_without_home_kaggle(isolated, monkeypatch):
    write_kaggle_json(isolated / "xdg" / "kaggle")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(isolated / "xdg"))
    assert dl.find_credentials() == "~/xdg/kaggle/kaggle.json"
    (isolated / ".kaggle").mkdir()  # the package then looks in ~/.kaggle only
    assert dl.find_credentials() is None


def test_credentials_config_dir_replaces_home(isolated, monkeypatch, tmp_path):
    write_kaggle_json(isolated / ".kaggle")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    assert dl.find_credentials() is None
    write_kaggle_json(tmp_path / "cfg", {"username": "bob", "key": SECRET})
    assert dl.find_credentials() == str(tmp_path / "cfg" / "kaggle.json")
    assert dl.kaggle_username() == "bob"


def test_environment_completes_and_overrides_kaggle_json(isolated, monkeypatch):
    write_kaggle_json(isolated / ".kaggle", {"key": SECRET})  # no user name
    assert dl.find_credentials() is None and dl.kaggle_username() is None
    monkeypatch.setenv("KAGGLE_USERNAME", "carol")  # the package merges both
    assert dl.find_credentials() == "~/.kaggle/kaggle.json"
    assert dl.kaggle_username() == "carol"


@pytest.mark.parametrize("content", ["not json", "[]", "null", {"username": "alice"},
                                     {"username": "alice", "key": ""},
                                     {"username": 3, "key": SECRET}])
def test_malformed_kaggle_json_is_not_credentials(isolated, content):
    write_kaggle_json(isolated / ".kaggle", content)
    assert dl.find_credentials() is None


def test_access_tokens(isolated, monkeypatch, tmp_path):
    token = isolated / ".kaggle" / "access_token"
    token.parent.mkdir()
    token.write_text("  \n")
    assert dl.find_credentials() is None
    token.write_text(SECRET + "\n")
    assert dl.find_credentials() == "~/.kaggle/access_token"
    assert dl.mask_secrets(f"token {SECRET}") == "token ***"
    other = "another-token-abcdef-123456"
    monkeypatch.setenv("KAGGLE_API_TOKEN", other)  # before the files, as in kagglesdk
    assert dl.find_credentials() == "environment KAGGLE_API_TOKEN"
    assert dl.mask_secrets(f"{other} {SECRET}") == "*** ***"
    token.unlink()
    path = tmp_path / "token.txt"  # KAGGLE_API_TOKEN may name a file
    path.write_text("token-from-a-file-0123\n")
    monkeypatch.setenv("KAGGLE_API_TOKEN", str(path))
    assert dl.find_credentials() == "environment KAGGLE_API_TOKEN"
    assert dl.mask_secrets("x token-from-a-file-0123") == "x ***"
    monkeypatch.setenv("KAGGLE_API_TOKEN", "t" * 400)  # too long for a file name
    assert dl.find_credentials() == "environment KAGGLE_API_TOKEN"


def test_oauth_credentials_file(isolated):
    path = isolated / ".kaggle" / "credentials.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"refresh_token": "", "access_token": "x"}))
    assert dl.find_credentials() is None
    path.write_text(json.dumps({"refresh_token": SECRET, "access_token": "acc-0123456"}))
    assert dl.find_credentials() == "~/.kaggle/credentials.json (kaggle auth login)"
    assert dl.mask_secrets(f"{SECRET} acc-0123456") == "*** ***"


@pytest.mark.parametrize("setup", ["home", "config_dir", "xdg", "env_over_file"])
def test_kaggle_json_lookup_agrees_with_the_package(isolated, monkeypatch, setup):
    """The path and the merged user name/key are the ones KaggleApi itself uses."""
    if setup == "home":
        write_kaggle_json(isolated / ".kaggle")
    elif setup == "config_dir":
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(isolated / "cfg"))
        write_kaggle_json(isolated / "cfg")
    elif setup == "xdg":
        monkeypatch.setenv("XDG_CONFIG_HOME", str(isolated / "xdg"))
        write_kaggle_json(isolated / "xdg" / "kaggle")
    else:
        write_kaggle_json(isolated / ".kaggle", {"username": "file-user", "key": "file-key"})
        set_env_credentials(monkeypatch)
    for name in [n for n in sys.modules if n == "kaggle" or n.startswith("kaggle.")]:
        monkeypatch.delitem(sys.modules, name)  # import afresh with this setup
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
        api = KaggleApi()
        values = api.read_config_environment(api.read_config_file(quiet=True))
    assert Path(api.config) == dl._kaggle_json()
    assert dl._legacy_config() == {k: values[k] for k in ("username", "key")}
    assert dl.find_credentials() is not None


def test_kaggle_api_without_credentials_is_a_clear_error(real_kaggle, capsys, reliability):
    with pytest.raises(dl.KaggleApiError) as err:
        dl.kaggle_api()  # the package's SystemExit does not escape
    message = str(err.value)
    assert "no usable credentials" in message and "kaggle.json" in message
    assert "\n" not in message
    assert capsys.readouterr().out == ""  # the package's printed help is not passed on
    reliability("download", "kaggle package asked to authenticate without credentials "
                "(it prints help and calls exit)", "KaggleApiError with one line saying "
                "where the key goes; no exit, nothing on standard output")


def test_kaggle_api_authenticates_offline(real_kaggle, monkeypatch, isolated, capsys):
    set_env_credentials(monkeypatch)
    api = dl.kaggle_api()
    assert isinstance(api, real_kaggle) and api._authenticated
    assert api.get_config_value("username") == "alice"
    assert capsys.readouterr() == ("", "")
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    path = write_kaggle_json(Path(real_kaggle.config_dir), {"username": "bob", "key": SECRET})
    path.chmod(0o644)
    assert dl.kaggle_api().get_config_value("username") == "bob"
    out, err = capsys.readouterr()  # the package's warning reaches standard error
    assert out == "" and "readable by other users" in err and SECRET not in err


# --------------------------------------------------------------------------- data root

def test_find_data_root(tmp_path):
    assert dl.find_data_root(tmp_path / "missing") is None
    assert dl.find_data_root(tmp_path) is None
    (tmp_path / "a" / "b" / "training").mkdir(parents=True)
    (tmp_path / "a" / "b" / "testing").mkdir()
    (tmp_path / "a" / "b" / "c" / "training").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "testing").mkdir()
    assert dl.find_data_root(tmp_path) == tmp_path / "a" / "b"  # shallowest first
    (tmp_path / "training").mkdir()
    assert dl.find_data_root(tmp_path) == tmp_path / "a" / "b"  # needs both folders
    (tmp_path / "testing").mkdir()
    assert dl.find_data_root(tmp_path) == tmp_path


def test_find_data_root_skips_hidden_folders(tmp_path):
    (tmp_path / ".tmp-x" / "training").mkdir(parents=True)
    (tmp_path / ".tmp-x" / "testing").mkdir()
    assert dl.find_data_root(tmp_path) is None


# --------------------------------------------------------------------------- safe_extract

def test_safe_extract_normal_archive(tmp_path):
    archive = make_zip(tmp_path / "ok.zip", [("top/", b""), ("top/a.txt", b"A"),
                                             ("top/sub/b.bin", b"\x00\x01"),
                                             ("./c.txt", b"C")])
    target = tmp_path / "out" / "nested"
    written = dl.safe_extract(archive, target)
    assert written == [target / "top" / "a.txt", target / "top" / "sub" / "b.bin",
                       target / "c.txt"]
    assert (target / "top" / "a.txt").read_bytes() == b"A"
    assert (target / "top" / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert (target / "c.txt").read_bytes() == b"C"


def symlink_member(name: str = "link") -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


UNSAFE = [("../evil.txt", "'..'", "a '..' member"),
          ("a/../../evil", "'..'", "a '..' member inside a folder"),
          ("a/../b.txt", "'..'", "a '..' member that stays inside"),
          ("..\\evil.txt", "'..'", "a '..' member with a backslash"),
          ("/abs.txt", "absolute", "an absolute member path"),
          ("C:/evil.txt", "drive letter", "a member with a drive letter"),
          ("symlink", "symbolic link", "a symbolic-link member")]


@pytest.mark.parametrize("bad, reason, case", UNSAFE, ids=[u[0] for u in UNSAFE])
def test_safe_extract_rejects_unsafe_member_and_extracts_nothing(tmp_path, bad, reason, case,
                                                                 reliability):
    sandbox = tmp_path / "sandbox"
    target = sandbox / "target"
    target.mkdir(parents=True)
    bad_member = symlink_member() if bad == "symlink" else bad
    payload = b"/etc/passwd" if bad == "symlink" else b"evil"
    # A harmless member first: it must not be extracted either.
    archive = make_zip(tmp_path / "bad.zip", [("good/first.txt", b"ok"), (bad_member, payload)])
    before = all_paths(tmp_path)
    with pytest.raises(dl.UnsafeArchiveError) as err:
        dl.safe_extract(archive, target)
    message = str(err.value)
    assert "bad.zip" in message and reason in message and "\n" not in message
    assert repr("link" if bad == "symlink" else bad) in message
    assert all_paths(tmp_path) == before
    reliability("download", f"zip archive with {case} after a harmless one",
                "UnsafeArchiveError naming the archive and the member; nothing extracted")


def test_safe_extract_rejects_path_through_existing_symlink(tmp_path, reliability):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "link").symlink_to(outside, target_is_directory=True)
    archive = make_zip(tmp_path / "a.zip", {"link/evil.txt": b"x"})
    with pytest.raises(dl.UnsafeArchiveError, match="outside"):
        dl.safe_extract(archive, target)
    assert list(outside.iterdir()) == []
    reliability("download", "zip member written through a symlink already in the target",
                "UnsafeArchiveError ('would be written outside'); nothing extracted")


def test_safe_extract_does_not_recurse_into_nested_zip(tmp_path):
    inner = competition_zip(tmp_path / "inner.zip")
    outer = make_zip(tmp_path / "outer.zip", {"inner.zip": inner.read_bytes()})
    written = dl.safe_extract(outer, tmp_path / "out")
    assert written == [tmp_path / "out" / "inner.zip"]


# --------------------------------------------------------------------------- download_competition

def test_download_competition_returns_root_under_top_folder(tmp_path):
    calls = []
    dest = tmp_path / "input" / COMPETITION_SLUG
    root = dl.download_competition(COMPETITION_SLUG, dest, downloader=fake_downloader(calls))
    assert root == dest / "sleepemo-data"
    for name in DATA_FILES:
        assert (root / name).read_bytes() == b"dummy " + name.encode()
    # The download went to a temporary folder next to dest, removed afterwards.
    (slug, folder), = calls
    assert slug == COMPETITION_SLUG and folder.parent.parent == dest.parent
    assert folder.parent.name.startswith(".tmp-") and not folder.parent.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == [COMPETITION_SLUG]


def test_download_competition_without_top_folder(tmp_path):
    dest = tmp_path / "input" / "slug"
    assert dl.download_competition("slug", dest, downloader=fake_downloader(top="")) == dest


def test_download_competition_reuses_existing_data(tmp_path):
    dest = tmp_path / "input" / "slug"
    root = dl.download_competition("slug", dest, downloader=fake_downloader())
    calls = []
    assert dl.download_competition("slug", dest, downloader=fake_downloader(calls)) == root
    assert calls == []


def test_download_competition_extracts_nested_zips(tmp_path):
    def download(slug, folder):
        inner_train = make_zip(folder / "training.zip",
                               {n: b"x" for n in DATA_FILES if n.startswith("training/")})
        inner_test = make_zip(folder / "testing.zip", {DATA_FILES[2]: b"x"})
        return make_zip(folder / "outer.zip", {"training.zip": inner_train.read_bytes(),
                                               "testing.zip": inner_test.read_bytes()})
    dest = tmp_path / "input" / "slug"
    root = dl.download_competition("slug", dest, downloader=download)
    assert root == dest
    assert all((root / n).is_file() for n in DATA_FILES)
    assert not list(root.glob("*.zip"))


@pytest.mark.parametrize("exc", [ConnectionError("network is unreachable"), SystemExit(1)])
def test_download_competition_failure_leaves_nothing(tmp_path, exc):
    parent = tmp_path / "input"
    dest = parent / "slug"
    with pytest.raises(type(exc)):
        dl.download_competition("slug", dest, downloader=failing_downloader(exc))
    assert not dest.exists()
    assert list(parent.iterdir()) == []


def test_download_competition_bad_layout(tmp_path):
    def download(slug, folder):
        return make_zip(folder / "x.zip", {"train/a.mat": b"x", "readme.txt": b"y"})
    dest = tmp_path / "input" / "slug"
    with pytest.raises(dl.DataLayoutError, match=r"training/ and testing/.*readme.txt"):
        dl.download_competition("slug", dest, downloader=download)
    assert list(dest.parent.iterdir()) == []


def test_download_competition_unsafe_archive(tmp_path, reliability):
    def download(slug, folder):
        return make_zip(folder / "x.zip", {"training/a": b"x", "testing/b": b"x",
                                           "../../evil.txt": b"x"})
    dest = tmp_path / "input" / "slug"
    with pytest.raises(dl.UnsafeArchiveError):
        dl.download_competition("slug", dest, downloader=download)
    assert list(dest.parent.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()
    reliability("download", "downloaded archive with a '..' member beside a valid layout",
                "UnsafeArchiveError; no destination folder, no temporary folder left")


def test_download_competition_not_a_zip(tmp_path):
    def download(slug, folder):
        path = folder / "x.zip"
        path.write_bytes(b"<html>not a zip</html>")
        return path
    with pytest.raises(dl.KaggleDownloadError, match="not a zip"):
        dl.download_competition("slug", tmp_path / "input" / "slug", downloader=download)
    assert list((tmp_path / "input").iterdir()) == []


def test_download_competition_refuses_foreign_nonempty_dest(tmp_path):
    dest = tmp_path / "input" / "slug"
    dest.mkdir(parents=True)
    (dest / "notes.txt").write_text("keep me")
    calls = []
    with pytest.raises(FileExistsError):
        dl.download_competition("slug", dest, downloader=fake_downloader(calls))
    assert calls == [] and (dest / "notes.txt").read_text() == "keep me"


def test_download_competition_replaces_empty_dest(tmp_path):
    dest = tmp_path / "input" / "slug"
    dest.mkdir(parents=True)
    assert dl.download_competition("slug", dest, downloader=fake_downloader()) \
        == dest / "sleepemo-data"


KILLED = """
import os, signal, sys, zipfile
from pathlib import Path
from sleepemo.data import download as dl

point, dest = sys.argv[1], Path(sys.argv[2])
files = sys.argv[3:]

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def downloader(slug, folder):
    path = folder / (slug + ".zip")
    with zipfile.ZipFile(path, "w") as zf:
        for name in files:
            zf.writestr("data/" + name, b"x" * 1000)
    if point == "download":  # killed with half the archive written
        os.truncate(path, path.stat().st_size // 2)
        die()
    return path

if point == "extract":  # killed after the first member
    real = zipfile.ZipFile._extract_member
    def once(self, *args, **kwargs):
        zipfile.ZipFile._extract_member = die
        return real(self, *args, **kwargs)
    zipfile.ZipFile._extract_member = once
if point == "rename":  # killed with everything extracted, just before the rename
    os.rename = die
dl.download_competition("slug", dest, downloader=downloader)
"""


@pytest.mark.parametrize("point", ["download", "extract", "rename"])
def test_killed_download_leaves_no_complete_looking_folder(tmp_path, monkeypatch, point,
                                                          reliability):
    parent = tmp_path / "input"
    dest = parent / "slug"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, "-c", KILLED, point, str(dest), *DATA_FILES],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not dest.exists() and dl.find_data_root(parent) is None
    leftovers = list(parent.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".tmp-slug-")
    # The next run ignores the leftover and downloads again.
    set_env_credentials(monkeypatch)
    rec = Recorder(tmp_path / "synthetic")
    got = dl.get_data(parent, "slug", synthetic=rec.synthetic, log=rec.log,
                      downloader=fake_downloader())
    assert got == dest / "sleepemo-data" and rec.synthetic_calls == 0
    reliability("download", f"process killed (SIGKILL) during the {point} step",
                "no destination folder, only a hidden .tmp-* folder; the next run "
                "ignores it and downloads again")


# --------------------------------------------------------------------------- get_data

class Recorder:
    """Synthetic-data generator and log sink that remember their calls."""

    def __init__(self, root: Path):
        self.root = root
        self.synthetic_calls = 0
        self.lines: list[str] = []

    def synthetic(self) -> Path:
        self.synthetic_calls += 1
        return self.root

    def log(self, line: str) -> None:
        assert "\n" not in line
        self.lines.append(line)


def test_get_data_uses_existing_data(tmp_path, monkeypatch):
    set_env_credentials(monkeypatch)
    root = tmp_path / "input" / COMPETITION_SLUG / "data"
    (root / "training").mkdir(parents=True)
    (root / "testing").mkdir()
    rec, calls = Recorder(tmp_path / "synthetic"), []
    got = dl.get_data(tmp_path / "input", synthetic=rec.synthetic, log=rec.log,
                      downloader=fake_downloader(calls))
    assert got == root
    assert calls == [] and rec.synthetic_calls == 0
    assert rec.lines == [f"using real data in {root}"]


def test_get_data_without_credentials_uses_synthetic(tmp_path, reliability):
    rec, calls = Recorder(tmp_path / "synthetic"), []
    got = dl.get_data(tmp_path / "input", synthetic=rec.synthetic, log=rec.log,
                      downloader=fake_downloader(calls))
    assert got == tmp_path / "synthetic"
    assert rec.synthetic_calls == 1 and calls == []
    assert rec.lines == ["no Kaggle credentials found; using the built-in synthetic data"]
    reliability("download", "pipeline started without Kaggle credentials",
                "one line 'no Kaggle credentials found'; built-in synthetic data used")


@pytest.mark.parametrize("exc", [ConnectionError(f"cannot reach kaggle.com (key={SECRET})"),
                                 SystemExit(1)])
def test_get_data_failed_download_falls_back(tmp_path, monkeypatch, exc, reliability):
    set_env_credentials(monkeypatch)
    rec = Recorder(tmp_path / "synthetic")
    got = dl.get_data(tmp_path / "input", synthetic=rec.synthetic, log=rec.log,
                      downloader=failing_downloader(exc))
    assert got == tmp_path / "synthetic" and rec.synthetic_calls == 1
    failures = [line for line in rec.lines if "kaggle download failed" in line]
    assert len(failures) == 1
    assert type(exc).__name__ in failures[0]
    assert failures[0].endswith("using the built-in synthetic data")
    assert all(SECRET not in line for line in rec.lines)
    assert not (tmp_path / "input" / COMPETITION_SLUG).exists()
    case = ("network error whose text holds the key" if isinstance(exc, ConnectionError)
            else "the kaggle package calls exit during the download")
    reliability("download", case, "one line naming the error, no key; synthetic data "
                "used; no destination folder")


def test_get_data_masks_secret_from_kaggle_json(tmp_path, isolated):
    write_kaggle_json(isolated / ".kaggle")
    rec = Recorder(tmp_path / "synthetic")
    dl.get_data(tmp_path / "input", synthetic=rec.synthetic, log=rec.log,
                downloader=failing_downloader(RuntimeError(f"401 for {SECRET}")))
    assert any("~/.kaggle/kaggle.json" in line for line in rec.lines)
    assert any("401 for ***" in line for line in rec.lines)
    assert all(SECRET not in line for line in rec.lines)


def test_get_data_downloads_real_data(tmp_path, monkeypatch):
    set_env_credentials(monkeypatch)
    rec = Recorder(tmp_path / "synthetic")
    got = dl.get_data(tmp_path / "input", synthetic=rec.synthetic, log=rec.log,
                      downloader=fake_downloader())
    assert got == tmp_path / "input" / COMPETITION_SLUG / "sleepemo-data"
    assert rec.synthetic_calls == 0
    assert rec.lines[-1] == f"using real data in {got}"
    assert all(SECRET not in line for line in rec.lines)
    # A second call finds the data on disk and does not download again.
    calls = []
    assert dl.get_data(tmp_path / "input", synthetic=rec.synthetic, log=rec.log,
                       downloader=fake_downloader(calls)) == got
    assert calls == []


def test_get_data_without_any_source_raises(tmp_path):
    with pytest.raises(RuntimeError, match="no Kaggle credentials found.*kaggle.json"):
        dl.get_data(tmp_path / "input", synthetic=None, log=lambda line: None)


def test_get_data_does_not_swallow_keyboard_interrupt(tmp_path, monkeypatch):
    set_env_credentials(monkeypatch)
    rec = Recorder(tmp_path / "synthetic")
    with pytest.raises(KeyboardInterrupt):
        dl.get_data(tmp_path / "input", synthetic=rec.synthetic, log=rec.log,
                    downloader=failing_downloader(KeyboardInterrupt()))
    assert rec.synthetic_calls == 0
    assert list((tmp_path / "input").iterdir()) == []


# --------------------------------------------------------------------------- kaggle wiring

def http_error(status: int) -> requests.HTTPError:
    """What kagglesdk raises for a refused request (``raise_for_status``)."""
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Client Error for url: https://api.kaggle.com/x",
                              response=response)


def test_kaggle_download_uses_the_package(tmp_path, monkeypatch, real_kaggle):
    set_env_credentials(monkeypatch)
    seen = {}

    def transfer(self, competition, path=None, force=False, quiet=True):
        seen["args"] = (competition, path, force, quiet)
        competition_zip(Path(path) / f"{competition}.zip")

    monkeypatch.setattr(real_kaggle, "competition_download_files", transfer)
    assert _REAL_KAGGLE_DOWNLOAD("some-slug", tmp_path) == tmp_path / "some-slug.zip"
    assert seen == {"args": ("some-slug", str(tmp_path), False, False)}
    monkeypatch.setattr(real_kaggle, "competition_download_files", lambda *a, **k: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(dl.KaggleDownloadError, match=r"did not produce one zip .*nothing"):
        _REAL_KAGGLE_DOWNLOAD("some-slug", tmp_path / "empty")


@pytest.mark.parametrize("status, expected", [
    (403, "refused (403); accept its rules at https://www.kaggle.com/competitions/s/rules"),
    (401, "refused the credentials (401); put kaggle.json"),
    (404, "'s' was not found (404)")])
def test_kaggle_download_explains_refusals(tmp_path, monkeypatch, real_kaggle, status,
                                           expected, reliability):
    set_env_credentials(monkeypatch)

    def refuse(self, competition, **kwargs):
        raise http_error(status)

    monkeypatch.setattr(real_kaggle, "competition_download_files", refuse)
    with pytest.raises(dl.KaggleDownloadError) as err:
        _REAL_KAGGLE_DOWNLOAD("s", tmp_path)
    assert expected in str(err.value)
    if status == 403:
        reliability("download", "Kaggle answers 403 (competition rules not accepted)",
                    "KaggleDownloadError saying to accept the rules, with the rules URL")


def test_get_data_rules_not_accepted_falls_back(tmp_path, monkeypatch, real_kaggle):
    set_env_credentials(monkeypatch)

    def refuse(self, competition, **kwargs):
        raise http_error(403)

    monkeypatch.setattr(real_kaggle, "competition_download_files", refuse)
    monkeypatch.setattr(dl, "_kaggle_download", _REAL_KAGGLE_DOWNLOAD)
    rec = Recorder(tmp_path / "synthetic")
    assert dl.get_data(tmp_path / "input", "s", synthetic=rec.synthetic,
                       log=rec.log) == tmp_path / "synthetic"
    assert "accept its rules" in rec.lines[-1] and SECRET not in " ".join(rec.lines)
    assert list((tmp_path / "input").iterdir()) == []


# --------------------------------------------------------------------------- command line

def test_cli_without_credentials_exits_1(tmp_path, isolated, capsys, reliability):
    write_kaggle_json(isolated / ".kaggle", {"key": SECRET})  # a key without a user name
    assert dl.main(["--input-dir", str(tmp_path / "input")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: no Kaggle credentials found; ")
    assert "~/.kaggle/kaggle.json" in err and "KAGGLE_USERNAME" in err
    assert SECRET not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "input").exists()
    reliability("download", "python -m sleepemo.data.download without credentials (kaggle.json "
                "with a key but no user name)", "exit code 1; one line saying where "
                "kaggle.json goes, the key not printed; nothing written")


def test_cli_downloads_and_prints_root(tmp_path, monkeypatch, capsys):
    set_env_credentials(monkeypatch)
    monkeypatch.setattr(dl, "_kaggle_download", fake_downloader())
    assert dl.main(["--input-dir", str(tmp_path / "input"), "--slug", "my-slug"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "input" / "my-slug" / "sleepemo-data")
    assert SECRET not in out + err


def test_cli_download_failure_exits_1(tmp_path, monkeypatch, capsys):
    set_env_credentials(monkeypatch)
    monkeypatch.setattr(dl, "_kaggle_download", failing_downloader(SystemExit(1)))
    assert dl.main(["--input-dir", str(tmp_path / "input")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "kaggle download failed (SystemExit: 1)" in err
