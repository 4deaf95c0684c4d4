"""sleepemo.kaggle.kernel: the pushed kernel's status and output. The Kaggle API is a fake
that hands out the real kagglesdk objects; test_submit's ``isolated`` fixture (autouse)
keeps HOME empty, the kaggle package unimportable, sockets closed and the clock fake."""
from __future__ import annotations

import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusResponse
from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus as KS

from sleepemo.kaggle import kernel as kk
from test_submit import isolated  # noqa: F401 (the autouse fixture, registered here too)
from test_submit import KAGGLE_VARS, REPO, SECRET, set_credentials, write_keyless_kaggle_json

KERNEL = "someone/sleepemo-offline"  # set_credentials' user, the bundle's kernel slug
STAMP = "20261130-120000Z"
OUTPUT = {"submission.csv": "id,prediction\n1_0_0,0.500000\n",
          "submissions/latest.csv": "id,prediction\n1_0_0,0.500000\n",
          "output/quick/lopo.csv": "model,overall\nmae_probe,0.52\n"}


class FakeKernels:
    """``kernels_status`` answers the next of ``script`` ((status, failure message); the
    last repeats; an exception is raised); ``kernels_output`` writes ``files`` and the log
    into the folder it is given, as the kaggle package does, or raises ``fail`` after
    the first file."""

    def __init__(self, script=((KS.RUNNING, ""),), files=None, fail=None):
        self.script, self.fail = list(script), fail
        self.files = dict(OUTPUT if files is None else files)
        self.calls = []

    def kernels_status(self, kernel):
        step = self.script[min(sum(c[0] == "status" for c in self.calls),
                               len(self.script) - 1)]
        self.calls.append(("status", kernel))
        if isinstance(step, Exception):
            raise step
        response = ApiGetKernelSessionStatusResponse()
        response.status, response.failure_message = step
        return response

    def kernels_output(self, kernel, path, file_pattern=None, force=False, quiet=True):
        self.calls.append(("output", kernel, path))
        written = []
        for name, text in self.files.items():
            out = os.path.join(path, name)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            Path(out).write_text(text)
            written.append(out)
            if self.fail:
                raise self.fail
        if written:
            log = os.path.join(path, kernel.split("/")[1] + ".log")
            Path(log).write_text("[kernel log]\n")
            written.append(log)
        return written, None


@pytest.fixture
def api(monkeypatch):
    """Install a fake kernels API (``api(fake)``); returns it."""
    def install(fake):
        monkeypatch.setattr(kk, "kaggle_api", lambda: fake)
        return fake
    return install


@pytest.fixture
def clock(request):
    """``isolated``'s fake clock: ``clock["sleeps"]``, the pauses taken."""
    return request.getfixturevalue("isolated")


@pytest.fixture(autouse=True)
def fixed_time(monkeypatch):
    monkeypatch.setattr(kk, "_utcnow", lambda: datetime(2026, 11, 30, 12, 0, 0,
                                                        tzinfo=timezone.utc))


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def main(*args):
    return kk.main([str(a) for a in args])


# ------------------------------------------------------------------ status
def test_status_is_one_line_for_the_default_kernel(api, monkeypatch, capsys):
    set_credentials(monkeypatch)
    fake = api(FakeKernels([(KS.RUNNING, "")]))
    assert main("status") == 0
    out, err = capsys.readouterr()
    assert out == f"{KERNEL}: running\n" and err == ""
    assert fake.calls == [("status", KERNEL)]


def test_status_shows_the_failure_message_on_the_same_line_without_secrets(
        api, monkeypatch, capsys):
    set_credentials(monkeypatch)
    api(FakeKernels([(KS.ERROR, f"Notebook failed\n  at cell 4 (token {SECRET})")]))
    assert main("status") == 0  # asked and answered: the kernel's error is not ours
    out, err = capsys.readouterr()
    assert out == (f"{KERNEL}: error (failure message: Notebook failed at cell 4 "
                   "(token ***))\n")
    assert SECRET not in out + err


def test_kernel_option_names_another_kernel(api, monkeypatch, capsys):
    set_credentials(monkeypatch)
    fake = api(FakeKernels([(KS.COMPLETE, "")]))
    assert main("status", "--kernel", "other/their-kernel") == 0
    assert main("status", "--kernel", "my-kernel") == 0  # a slug of the configured user
    assert [c[1] for c in fake.calls] == ["other/their-kernel", "someone/my-kernel"]
    assert capsys.readouterr().out.splitlines() == ["other/their-kernel: complete",
                                                    "someone/my-kernel: complete"]
    assert main("status", "--kernel", "a/b/c") == 2
    assert "not USER/SLUG" in one_error_line(capsys.readouterr().err)
    assert len(fake.calls) == 2


def test_a_token_without_user_name_needs_the_kernel_named(api, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET)
    fake = api(FakeKernels())
    assert main("status") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--kernel USER/sleepemo-offline" in line and SECRET not in line
    assert fake.calls == []


def test_wait_polls_until_complete_with_growing_pauses(api, monkeypatch, clock, capsys):
    set_credentials(monkeypatch)
    fake = api(FakeKernels([(KS.QUEUED, ""), (KS.RUNNING, ""), (KS.RUNNING, ""),
                            (KS.COMPLETE, "")]))
    assert main("status", "--wait", "--interval", 10, "--max-interval", 20) == 0
    out, err = capsys.readouterr()
    assert clock["sleeps"] == [10, 15, 20]  # 10, 15, 22.5 capped at 20; no real sleep
    assert len(fake.calls) == 4
    assert out == f"{KERNEL}: complete\n"
    assert err.splitlines() == [f"{KERNEL}: queued; next check in 10 s",
                                f"{KERNEL}: running; next check in 15 s",
                                f"{KERNEL}: running; next check in 20 s"]


def test_wait_ends_with_exit_1_when_the_kernel_fails(api, monkeypatch, clock, capsys):
    set_credentials(monkeypatch)
    api(FakeKernels([(KS.RUNNING, ""), (KS.ERROR, "out of memory")]))
    assert main("status", "--wait", "--interval", 5) == 1
    assert capsys.readouterr().out == f"{KERNEL}: error (failure message: out of memory)\n"
    assert clock["sleeps"] == [5]


def test_wait_retries_a_failed_question_and_stops_at_the_timeout(api, monkeypatch,
                                                                 clock, capsys):
    set_credentials(monkeypatch)
    fake = api(FakeKernels([(KS.RUNNING, ""), ConnectionError(f"reset ({SECRET})"),
                            (KS.RUNNING, "")]))
    assert main("status", "--wait", "--interval", 30, "--timeout", 100) == 1
    out, err = capsys.readouterr()
    assert clock["sleeps"] == [30, 45, 25]  # never past the deadline
    assert len(fake.calls) == 4
    assert out == f"{KERNEL}: running\n"
    assert "ConnectionError" in err and "asking again" in err and SECRET not in err
    assert err.splitlines()[-1] == (f"error: {KERNEL} is still running after 100 s; ask "
                                    "again later (./run.sh kaggle status --wait)")


def test_a_refused_status_question_is_one_line(api, monkeypatch, capsys):
    set_credentials(monkeypatch)
    api(FakeKernels([ValueError(f"Cannot access kernel (key {SECRET})\nsecond line")]))
    assert main("status", "--wait") == 2
    out, err = capsys.readouterr()
    line = one_error_line(err)
    assert out == "" and "Cannot access kernel" in line and SECRET not in line


# ------------------------------------------------------------------ output
def test_output_downloads_into_a_new_folder_and_names_the_next_command(
        api, monkeypatch, tmp_path, capsys):
    set_credentials(monkeypatch)
    subs = tmp_path / "subs"
    fake = api(FakeKernels())
    monkeypatch.chdir(tmp_path)
    assert main("output", "--submissions", subs) == 0
    out, err = capsys.readouterr()
    dest = subs / f"kernel-sleepemo-offline-{STAMP}"
    assert listing(subs) == [dest.name] + [f"{dest.name}/{p}" for p in listing(dest)]
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "output/quick/lopo.csv", "sleepemo-offline.log", "submission.csv",
        "submissions/latest.csv"]
    assert (dest / "submission.csv").read_text() == OUTPUT["submission.csv"]
    # the kaggle package wrote into a temporary sibling, renamed at the end
    (_, kernel, path), = fake.calls
    assert kernel == KERNEL and Path(path).parent == subs and Path(path) != dest
    assert out.splitlines() == [
        f"downloaded 4 output files of {KERNEL} into subs/{dest.name}",
        f"submission: subs/{dest.name}/submission.csv",
        f"next: ./run.sh submit --file subs/{dest.name}/submission.csv"]
    assert err == ""


def test_output_never_overwrites_a_folder(api, monkeypatch, tmp_path, capsys):
    set_credentials(monkeypatch)
    subs = tmp_path / "subs"
    taken = subs / f"kernel-sleepemo-offline-{STAMP}"  # the default name, already there
    taken.mkdir(parents=True)
    (taken / "submission.csv").write_text("mine\n")
    (subs / "empty").mkdir()
    before = listing(tmp_path)
    fake = api(FakeKernels())
    for args in ((), ("--out", subs / "empty")):
        assert main("output", "--submissions", subs, *args) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "exists and is never overwritten" in line
    assert fake.calls == [] and listing(tmp_path) == before
    assert (taken / "submission.csv").read_text() == "mine\n"


def test_a_failed_download_leaves_nothing(api, monkeypatch, tmp_path, capsys):
    set_credentials(monkeypatch)
    subs = tmp_path / "subs"
    subs.mkdir()
    api(FakeKernels(fail=ConnectionError(f"connection reset, key {SECRET}")))
    assert main("output", "--submissions", subs) == 2
    out, err = capsys.readouterr()
    line = one_error_line(err)
    assert "could not download the output of" in line and SECRET not in line
    assert out == "" and listing(subs) == []  # no folder, no .tmp-* left


def test_a_kernel_without_output_writes_nothing(api, monkeypatch, tmp_path, capsys):
    set_credentials(monkeypatch)
    subs = tmp_path / "subs"
    subs.mkdir()
    api(FakeKernels(files={}))
    assert main("output", "--submissions", subs) == 2
    assert "has no output files" in one_error_line(capsys.readouterr().err)
    assert listing(subs) == []


def test_output_without_submission_keeps_the_files_and_says_so(api, monkeypatch, tmp_path,
                                                                capsys):
    set_credentials(monkeypatch)
    out_dir = tmp_path / "got"
    api(FakeKernels(files={"output/quick/run.log": "stage 03 failed\n"}))
    assert main("output", "--out", out_dir) == 0
    out, err = capsys.readouterr()
    assert sorted(p.name for p in out_dir.rglob("*") if p.is_file()) == [
        "run.log", "sleepemo-offline.log"]
    assert "next:" not in out and "no submission.csv among them" in err


# ------------------------------------------------------------------ no credentials
@pytest.mark.parametrize("args", [("status",), ("status", "--wait"), ("output",),
                                  ("output", "--out", "elsewhere"),
                                  ("status", "--kernel", "other/k")])
def test_without_credentials_one_line_and_nothing_written(args, api, tmp_path, capsys,
                                                          monkeypatch):
    write_keyless_kaggle_json(tmp_path / "home")  # HOME (see isolated): no username, no use
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    fake = api(FakeKernels())
    assert main(*args, *(("--submissions", tmp_path / "subs") if "output" in args
                         else ())) == 2
    out, err = capsys.readouterr()
    line = one_error_line(err)
    assert out == "" and line.startswith("error: no Kaggle credentials found")
    assert "KAGGLE_USERNAME" in line and SECRET not in line
    assert fake.calls == [] and listing(tmp_path) == before


def test_without_credentials_through_run_sh(tmp_path):
    """The real process behind ./run.sh kaggle: exit 2, one line, no folder."""
    home = tmp_path / "home"
    write_keyless_kaggle_json(home)
    env = {k: v for k, v in os.environ.items() if k not in KAGGLE_VARS}
    env.update(HOME=str(home), PYTHONPATH=str(REPO / "src"))
    for args in (["status"], ["output", "--submissions", str(tmp_path / "subs")]):
        proc = subprocess.run([str(REPO / "run.sh"), "kaggle", *args], env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.startswith("error: no Kaggle credentials found")
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert SECRET not in proc.stdout + proc.stderr
    assert not (tmp_path / "subs").exists()
