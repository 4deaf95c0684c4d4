"""Tests for sleepemo.download. None of them touches the network or real credentials."""
from __future__ import annotations

import json
import socket
import stat
import sys
import types
import zipfile
from pathlib import Path

import pytest

from sleepemo import COMPETITION_SLUG
from sleepemo import download as dl

SECRET = "s3cr3t-kaggle-key-0123456789"
DATA_FILES = ("training/sleep_emo/S_2_cleaned.mat",
              "training/sleep_neu/S_2_cleaned.mat",
              "testing/test_subject_1.mat")
KAGGLE_VARS = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR",
               "XDG_CONFIG_HOME")

# Kept before the autouse fixture replaces it, for the test with a stub kaggle module.
_REAL_KAGGLE_DOWNLOAD = dl._kaggle_download


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Empty HOME, no Kaggle variables, no sockets, and the real download forbidden."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in KAGGLE_VARS:
        monkeypatch.delenv(var, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)

    calls = []

    def forbidden(slug, folder):
        calls.append(slug)
        raise AssertionError("the real Kaggle download was called in a test")

    monkeypatch.setattr(dl, "_kaggle_download", forbidden)
    yield home
    assert not calls, "the real Kaggle download was called"


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


# --------------------------------------------------------------------------- credentials

def test_find_credentials_none(tmp_path):
    assert dl.find_credentials(env={}, home=tmp_path) is None


def test_find_credentials_env_pair(tmp_path):
    env = {"KAGGLE_USERNAME": "alice", "KAGGLE_KEY": SECRET}
    found = dl.find_credentials(env=env, home=tmp_path)
    assert found is not None and "KAGGLE_USERNAME" in found
    assert SECRET not in found and "alice" not in found


def test_find_credentials_half_env_pair_is_not_enough(tmp_path):
    assert dl.find_credentials(env={"KAGGLE_USERNAME": "alice"}, home=tmp_path) is None
    assert dl.find_credentials(env={"KAGGLE_KEY": SECRET}, home=tmp_path) is None
    assert dl.find_credentials(env={"KAGGLE_USERNAME": "alice", "KAGGLE_KEY": ""},
                               home=tmp_path) is None


def test_find_credentials_api_token(tmp_path):
    found = dl.find_credentials(env={"KAGGLE_API_TOKEN": SECRET}, home=tmp_path)
    assert found is not None and "KAGGLE_API_TOKEN" in found and SECRET not in found


def write_kaggle_json(folder: Path, content: object = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    content = {"username": "alice", "key": SECRET} if content is None else content
    path = folder / "kaggle.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_find_credentials_home_kaggle_json(tmp_path):
    write_kaggle_json(tmp_path / ".kaggle")
    found = dl.find_credentials(env={}, home=tmp_path)
    assert found == "~/.kaggle/kaggle.json"


def test_find_credentials_xdg_kaggle_json(tmp_path):
    write_kaggle_json(tmp_path / ".config" / "kaggle")
    assert dl.find_credentials(env={}, home=tmp_path) == "~/.config/kaggle/kaggle.json"


def test_find_credentials_config_dir_replaces_home(tmp_path):
    home = tmp_path / "home"
    write_kaggle_json(home / ".kaggle")
    config_dir = tmp_path / "cfg"
    env = {"KAGGLE_CONFIG_DIR": str(config_dir)}
    # kaggle reads only $KAGGLE_CONFIG_DIR when it is set.
    assert dl.find_credentials(env=env, home=home) is None
    write_kaggle_json(config_dir)
    found = dl.find_credentials(env=env, home=home)
    assert found == str(config_dir / "kaggle.json")
    assert SECRET not in found


@pytest.mark.parametrize("content", ["not json", "[]", {"username": "alice"},
                                     {"username": "alice", "key": ""}])
def test_find_credentials_ignores_malformed_kaggle_json(tmp_path, content):
    write_kaggle_json(tmp_path / ".kaggle", content)
    assert dl.find_credentials(env={}, home=tmp_path) is None


def test_find_credentials_access_token(tmp_path):
    (tmp_path / ".kaggle").mkdir()
    token = tmp_path / ".kaggle" / "access_token"
    token.write_text("  \n")
    assert dl.find_credentials(env={}, home=tmp_path) is None
    token.write_text(SECRET + "\n")
    found = dl.find_credentials(env={}, home=tmp_path)
    assert found == "~/.kaggle/access_token"


def test_find_credentials_defaults_follow_environment(monkeypatch, isolated):
    assert dl.find_credentials() is None
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    assert dl.find_credentials() == "environment KAGGLE_USERNAME/KAGGLE_KEY"


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


@pytest.mark.parametrize("bad, reason", [("../evil.txt", "'..'"), ("/abs.txt", "absolute"),
                                         ("a/../../evil", "'..'"), ("a/../b.txt", "'..'"),
                                         ("C:/evil.txt", "drive letter"),
                                         ("..\\evil.txt", "'..'"),
                                         ("symlink", "symbolic link")])
def test_safe_extract_rejects_unsafe_member_and_extracts_nothing(tmp_path, bad, reason):
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
    assert "bad.zip" in message and reason in message
    assert (bad_member.filename if bad == "symlink" else bad) in message \
        or repr(bad) in message
    assert list(target.iterdir()) == []
    assert all_paths(tmp_path) == before
    assert not (tmp_path / "evil.txt").exists() and not (sandbox / "evil.txt").exists()


def test_safe_extract_unsafe_member_does_not_create_target(tmp_path):
    archive = make_zip(tmp_path / "bad.zip", {"ok.txt": b"1", "../evil.txt": b"2"})
    with pytest.raises(dl.UnsafeArchiveError):
        dl.safe_extract(archive, tmp_path / "new" / "target")
    assert not (tmp_path / "new").exists()


def test_safe_extract_rejects_path_through_existing_symlink(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "link").symlink_to(outside, target_is_directory=True)
    archive = make_zip(tmp_path / "a.zip", {"link/evil.txt": b"x"})
    with pytest.raises(dl.UnsafeArchiveError, match="outside"):
        dl.safe_extract(archive, target)
    assert list(outside.iterdir()) == []


def test_safe_extract_never_overwrites(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "a.txt").write_text("mine")
    archive = make_zip(tmp_path / "a.zip", {"new.txt": b"n", "a.txt": b"theirs"})
    with pytest.raises(FileExistsError):
        dl.safe_extract(archive, target)
    assert (target / "a.txt").read_text() == "mine"
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]


def test_safe_extract_rejects_duplicates_and_file_folder_clash(tmp_path):
    with zipfile.ZipFile(tmp_path / "dup.zip", "w") as zf:
        with pytest.warns(UserWarning):  # zipfile warns about the duplicate name
            zf.writestr("x.txt", b"1")
            zf.writestr("x.txt", b"2")
    with pytest.raises(dl.UnsafeArchiveError, match="more than once"):
        dl.safe_extract(tmp_path / "dup.zip", tmp_path / "t1")
    make_zip(tmp_path / "clash.zip", {"a": b"file", "a/b.txt": b"inside"})
    with pytest.raises(dl.UnsafeArchiveError, match="file and a folder"):
        dl.safe_extract(tmp_path / "clash.zip", tmp_path / "t2")
    assert not (tmp_path / "t1").exists() and not (tmp_path / "t2").exists()


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
    assert slug == COMPETITION_SLUG and folder.parent == dest.parent
    assert folder.name.startswith(".tmp-") and not folder.exists()
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
        outer = make_zip(folder / "outer.zip", {"training.zip": inner_train.read_bytes(),
                                                "testing.zip": inner_test.read_bytes()})
        return outer
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
    with pytest.raises(dl.DataLayoutError, match="training/ and testing/"):
        dl.download_competition("slug", dest, downloader=download)
    assert list(dest.parent.iterdir()) == []


def test_download_competition_unsafe_archive(tmp_path):
    def download(slug, folder):
        return make_zip(folder / "x.zip", {"training/a": b"x", "testing/b": b"x",
                                           "../../evil.txt": b"x"})
    dest = tmp_path / "input" / "slug"
    with pytest.raises(dl.UnsafeArchiveError):
        dl.download_competition("slug", dest, downloader=download)
    assert list(dest.parent.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


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


def set_env_credentials(monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)


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


def test_get_data_without_credentials_uses_synthetic(tmp_path):
    rec, calls = Recorder(tmp_path / "synthetic"), []
    got = dl.get_data(tmp_path / "input", synthetic=rec.synthetic, log=rec.log,
                      downloader=fake_downloader(calls))
    assert got == tmp_path / "synthetic"
    assert rec.synthetic_calls == 1 and calls == []
    assert rec.lines == ["no Kaggle credentials found; using the built-in synthetic data"]


@pytest.mark.parametrize("exc", [ConnectionError(f"cannot reach kaggle.com (key={SECRET})"),
                                 SystemExit(1)])
def test_get_data_failed_download_falls_back(tmp_path, monkeypatch, exc):
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

def stub_kaggle(monkeypatch, api_class) -> None:
    """Install a fake ``kaggle.api.kaggle_api_extended`` so the real package is not used."""
    for name in ("kaggle", "kaggle.api"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    module = types.ModuleType("kaggle.api.kaggle_api_extended")
    module.KaggleApi = api_class
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", module)


def test_kaggle_download_uses_api_and_finds_zip(tmp_path, monkeypatch):
    seen = {}

    class FakeApi:
        def authenticate(self):
            seen["auth"] = True

        def competition_download_files(self, competition, path=None, force=False, quiet=True):
            seen["args"] = (competition, path, force, quiet)
            competition_zip(Path(path) / f"{competition}.zip")

    stub_kaggle(monkeypatch, FakeApi)
    zip_path = _REAL_KAGGLE_DOWNLOAD("some-slug", tmp_path)
    assert zip_path == tmp_path / "some-slug.zip"
    assert seen == {"auth": True, "args": ("some-slug", str(tmp_path), False, False)}


def test_kaggle_download_turns_exit_into_error(tmp_path, monkeypatch):
    class ExitingApi:
        def authenticate(self):
            raise SystemExit(1)

    stub_kaggle(monkeypatch, ExitingApi)
    with pytest.raises(dl.KaggleDownloadError, match="credentials"):
        _REAL_KAGGLE_DOWNLOAD("some-slug", tmp_path)


def test_kaggle_download_explains_forbidden(tmp_path, monkeypatch):
    class ForbiddenApi:
        def authenticate(self):
            pass

        def competition_download_files(self, competition, **kwargs):
            raise RuntimeError("403 Client Error: Forbidden for url")

    stub_kaggle(monkeypatch, ForbiddenApi)
    with pytest.raises(dl.KaggleDownloadError, match="accept its rules"):
        _REAL_KAGGLE_DOWNLOAD("some-slug", tmp_path)


# --------------------------------------------------------------------------- command line

def test_cli_without_credentials_exits_1(tmp_path, capsys):
    assert dl.main(["--input-dir", str(tmp_path / "input")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "no Kaggle credentials found" in err
    assert not (tmp_path / "input").exists()


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
