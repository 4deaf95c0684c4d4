"""Optuna studies (sleepemo.ensemble.studies): two worker processes on one SQLite study and
on a real PostgreSQL server, resume after a worker is killed with SIGKILL, a worker's error in the
parent, URL checks and password masking.

The PostgreSQL server is the one inside the ``pgserver`` wheel (requirements.txt), started
here on a free loopback port with password authentication. PostgreSQL refuses to run as
root, so under root (CI) the binaries are copied to a temporary folder and the server runs
as the unprivileged user ``nobody``. A server that does not start fails the test.
"""
from __future__ import annotations

import importlib.util
import multiprocessing
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import pytest

from sleepemo.config import ConfigError
from sleepemo.ensemble.studies import (FINISHED, StudyError, mask_url, n_finished, open_study,
                              optimize, study_url)

N_TRIALS = 12
PG_PASSWORD = "s3cret-Pw-4-tests"


def quadratic(x: float, y: float) -> float:
    return -((x - 0.5) ** 2 + (y + 0.25) ** 2)


class Quadratic:
    """A cheap deterministic objective (maximum 0 at x=0.5, y=-0.25). With ``meet``, each
    process's first trial waits (up to 60 s) until ``meet`` processes have started one, so
    that every worker contributes however slowly the others start. ``kill_after``: the
    first trial to start once the study holds that many finished trials kills its own
    process with SIGKILL (the marker file makes it happen once)."""

    def __init__(self, folder: Path, meet: int = 0, kill_after: int | None = None,
                 fail_at: int | None = None):
        self.folder, self.meet, self.kill_after, self.fail_at = folder, meet, kill_after, fail_at

    def __call__(self, trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -2.0, 2.0)
        y = trial.suggest_float("y", -2.0, 2.0)
        trial.set_user_attr("pid", os.getpid())
        if self.meet:
            self._rendezvous()
        if self.kill_after is not None and n_finished(trial.study) >= self.kill_after:
            try:
                os.close(os.open(self.folder / "killed", os.O_CREAT | os.O_EXCL))
                os.kill(os.getpid(), signal.SIGKILL)
            except FileExistsError:
                pass
        if self.fail_at is not None and trial.number == self.fail_at:
            raise ValueError(f"boom in trial {trial.number}")
        time.sleep(0.01)
        return quadratic(x, y)

    def _rendezvous(self) -> None:
        mine = self.folder / f"started-{os.getpid()}"
        if mine.exists():
            return
        mine.touch()
        deadline = time.monotonic() + 60
        while len(list(self.folder.glob("started-*"))) < self.meet:
            assert time.monotonic() < deadline, "the other worker never started a trial"
            time.sleep(0.02)


def check_two_workers(url: str, folder: Path, **kwargs) -> optuna.Study:
    study = optimize("two", url, Quadratic(folder, meet=2), n_trials=N_TRIALS, n_workers=2,
                     seed=3, progress=False, **kwargs)
    trials = study.get_trials()
    assert len(trials) == N_TRIALS  # none failed, none too many
    assert n_finished(study) == N_TRIALS
    pids = {t.user_attrs["pid"] for t in trials}
    assert len(pids) == 2 and os.getpid() not in pids, pids
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials} == {str(p) for p in pids}
    values = [t.value for t in trials]
    assert study.best_value == max(values)
    assert study.best_value == pytest.approx(quadratic(**study.best_params))
    # 12 points in [-2, 2]^2 (TPE after the first 10): all 12 outside the disc of radius
    # sqrt(3) around the maximum (57 % of the square) has probability 0.43^12 < 1e-4
    assert study.best_value > -3.0
    assert study.user_attrs["seed"] == 3
    return study


def test_two_workers_share_a_sqlite_study(tmp_path):
    url = study_url(None, tmp_path / "run" / "06_ensemble", "two")
    assert url == f"sqlite:///{tmp_path}/run/06_ensemble/two.db"
    check_two_workers(url, tmp_path)
    # a rerun with the same target has nothing left to do; a larger target runs the rest,
    # here in this process
    again = optimize("two", url, Quadratic(tmp_path), n_trials=N_TRIALS, n_workers=2, seed=3,
                     progress=False)
    assert len(again.trials) == N_TRIALS
    more = optimize("two", url, Quadratic(tmp_path), n_trials=N_TRIALS + 3, n_workers=1,
                    seed=3, progress=False)
    new = [t for t in more.trials if t.user_attrs["pid"] == os.getpid()]
    assert len(more.trials) == N_TRIALS + 3 and len(new) == 3


def test_a_killed_study_resumes_and_retries_the_killed_trial(tmp_path):
    url = study_url(None, tmp_path, "resume")
    fast = dict(heartbeat_interval=1, grace_period=1)
    with pytest.raises(StudyError, match="worker process died"):
        optimize("resume", url, Quadratic(tmp_path, meet=2, kill_after=4), n_trials=N_TRIALS,
                 n_workers=2, seed=0, progress=False, **fast)
    assert (tmp_path / "killed").exists()
    before = {t.number: t for t in open_study("resume", url, 0).trials}
    finished = {k: t for k, t in before.items() if t.state == optuna.trial.TrialState.COMPLETE}
    running = [k for k, t in before.items() if t.state == optuna.trial.TrialState.RUNNING]
    assert len(finished) >= 4 and running, before  # the killed trial is left RUNNING

    time.sleep(2.5)  # past the grace period (SQLite's clock has whole seconds)
    study = optimize("resume", url, Quadratic(tmp_path), n_trials=N_TRIALS, n_workers=1,
                     seed=0, progress=False, **fast)
    trials = {t.number: t for t in study.trials}
    assert n_finished(study) == N_TRIALS
    for k, t in finished.items():  # finished trials are kept, not redone
        assert (trials[k].state, trials[k].value, trials[k].params) == (t.state, t.value,
                                                                      t.params)
    new = [t for t in trials.values() if t.user_attrs.get("pid") == os.getpid()]
    assert len(new) == N_TRIALS - len(finished)
    for k in running:  # each killed trial failed and was retried with its parameters
        assert trials[k].state == optuna.trial.TrialState.FAIL
        retry = [t for t in trials.values() if t.system_attrs.get("failed_trial") == k]
        assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE
        # (a trial killed before its suggestions had none: the retry draws new ones)
        assert before[k].params.items() <= retry[0].params.items()


def enqueue_then_optimize(name: str, url: str, folder: Path, kill_after: int | None):
    """What the ensembler does with its study (sleepemo.ensemble.blend.OptunaBlend.fit): open it
    exclusively, enqueue two first trials into a new study, run it in this process."""
    study = open_study(name, url, 5, exclusive=True)
    if not study.trials:
        study.enqueue_trial({"x": 0.1, "y": 0.2})
        study.enqueue_trial({"x": -1.0, "y": 1.0})
    return optimize(name, url, Quadratic(folder, kill_after=kill_after), n_trials=N_TRIALS,
                    n_workers=1, seed=5, progress=False, exclusive=True)


def finished_trials(study) -> list:
    return [(t.params, t.value) for t in study.get_trials(states=FINISHED)]


@pytest.mark.parametrize("kill_after, storage", [
    (0, None), (1, None), (6, None), (11, None), (6, "journal"),
    pytest.param(1, "journal", marks=pytest.mark.slow)])  # (an enqueued trial: as SQLite's)
def test_an_exclusive_study_killed_and_resumed_ends_as_an_uninterrupted_one(tmp_path,
                                                                          kill_after, storage):
    """SIGKILL during the first (enqueued) trial, the second (enqueued), a random start-up
    trial and a TPE trial; the rerun comes at once (no grace period), and the study's
    finished trials (parameters and values, in order) and best trial are those of a run
    never killed. The same for a journal file in the run folder (``storage: journal``,
    no heartbeat: recovered by the exclusive opening alone)."""
    from sleepemo.ensemble.studies import exclusive

    assert exclusive(storage)
    straight = enqueue_then_optimize("s", study_url(storage, tmp_path / "a", "s"),
                                     tmp_path / "a", None)
    url = study_url(storage, tmp_path / "b", "s")
    child = multiprocessing.get_context("spawn").Process(
        target=enqueue_then_optimize, args=("s", url, tmp_path / "b", kill_after))
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL and (tmp_path / "b" / "killed").exists()
    killed = open_study("s", url, 5)
    assert n_finished(killed) == kill_after and len(finished_trials(killed)) == kill_after
    resumed = enqueue_then_optimize("s", url, tmp_path / "b", None)
    assert finished_trials(resumed) == finished_trials(straight)
    assert resumed.best_params == straight.best_params
    states = [t.state for t in resumed.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == (kill_after > 0)


def test_fail_stale_trials_catches_a_trial_killed_before_its_first_heartbeat(tmp_path):
    from sleepemo.ensemble.studies import _open, fail_stale_trials

    study, storage = _open("early", study_url(None, tmp_path, "early"), 0)
    with warnings.catch_warnings():  # "heartbeat ... supposed to be used with optimize"
        warnings.simplefilter("ignore")
        trial = study.ask({"x": optuna.distributions.FloatDistribution(-2.0, 2.0)})
    # RUNNING without a heartbeat, as if its process died right after creating it
    assert fail_stale_trials(study, storage, grace_period=3600) == []  # may still be alive
    assert fail_stale_trials(study, storage, grace_period=0) == [trial.number]
    trials = study.get_trials()
    assert trials[trial.number].state == optuna.trial.TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == trial.number]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.WAITING
    assert retry[0].params == trial.params


def test_a_worker_error_reaches_the_parent_with_its_message(tmp_path):
    url = study_url(None, tmp_path, "boom")
    with pytest.raises(StudyError, match=r"worker \d failed: ValueError: boom in trial 2"):
        optimize("boom", url, Quadratic(tmp_path, fail_at=2), n_trials=N_TRIALS, n_workers=2,
                 seed=0, progress=False)
    # the other worker stopped after its current trial instead of running the rest
    assert n_finished(open_study("boom", url, 0)) < N_TRIALS


def test_progress_bar_counts_the_finished_trials(tmp_path, monkeypatch):
    import io

    import sleepemo.ensemble.studies as studies

    stream, real_bar = io.StringIO(), studies.bar
    url = study_url(None, tmp_path, "bar")
    optimize("bar", url, Quadratic(tmp_path), n_trials=2, n_workers=1, seed=0, progress=False)
    # the log form of the bar, written to a string
    monkeypatch.setattr(studies, "bar", lambda **kw: real_bar(**kw, stream=stream))
    optimize("bar", url, Quadratic(tmp_path), n_trials=5, n_workers=1, seed=0)
    lines = stream.getvalue().splitlines()
    # counted in the storage: the 2 earlier trials too, not just this call's 3
    assert lines[-1].startswith("study bar: 5/5 trial done"), lines


# -- PostgreSQL --------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server from the pgserver wheel on a free loopback port, with a user
    ``optuna`` (password authentication) and an empty database ``studies``."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None:
        pytest.fail("pgserver is not installed: pip install -r requirements.txt")
    install = Path(spec.submodule_search_locations[0]) / "pginstall"
    root = Path(tempfile.mkdtemp(prefix="sleepemo-pg-"))
    run_as = {}
    if os.geteuid() == 0:  # PostgreSQL refuses root: run it as nobody, from a copy it can read
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            pytest.fail("running as root and there is no user 'nobody' to run PostgreSQL as")
        run_as = dict(user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[])
        root.chmod(0o755)
        # the binaries find their libraries at ../../../pgserver.libs
        shutil.copytree(install, root / "pgserver" / "pginstall", symlinks=True)
        shutil.copytree(install.parent.parent / "pgserver.libs", root / "pgserver.libs")
        (root / "pgserver").chmod(0o755)
        install = root / "pgserver" / "pginstall"
    data, pwfile, log = root / "data", root / "pwfile", root / "server.log"
    data.mkdir(mode=0o700)
    pwfile.write_text(PG_PASSWORD + "\n")
    log.touch()
    if run_as:
        for p in (data, pwfile, log):
            os.chown(p, run_as["user"], run_as["group"])
    bin_ = install / "bin"

    def run(*args, timeout=60):
        return subprocess.run([str(bin_ / args[0]), *args[1:]], capture_output=True, text=True,
                              cwd=root, timeout=timeout, **run_as)

    port = _free_port()
    try:
        r = run("initdb", "-D", str(data), "-U", "optuna", "--auth=scram-sha-256",
                f"--pwfile={pwfile}", "--encoding=UTF8", "--no-sync")
        if r.returncode == 0:
            r = run("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                    f"-h 127.0.0.1 -p {port} -k {data}", "start", timeout=90)
    except (OSError, subprocess.TimeoutExpired) as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL (pgserver's binaries in {install}) did not start: {e}")
    if r.returncode != 0:
        tail = (r.stderr + r.stdout + log.read_text())[-1500:]
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL (pgserver's binaries in {install}) did not start "
                    f"(exit {r.returncode}):\n{tail}")
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="optuna", password=PG_PASSWORD,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE studies")
        yield f"postgresql://optuna:{PG_PASSWORD}@127.0.0.1:{port}/studies"
    finally:
        run("pg_ctl", "-D", str(data), "-w", "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(postgres_url, tmp_path, capfd):
    assert study_url(postgres_url, tmp_path, "two") == postgres_url
    check_two_workers(postgres_url, tmp_path)
    out, err = capfd.readouterr()
    assert PG_PASSWORD not in out + err


def test_a_wrong_postgresql_password_is_not_printed(postgres_url):
    wrong = postgres_url.replace(PG_PASSWORD, "Wrong-Pw-987")
    with pytest.raises(StudyError) as e:
        open_study("two", wrong, 0)
    message = str(e.value)
    assert "password authentication failed" in message
    assert "Wrong-Pw-987" not in message and "optuna:***@127.0.0.1" in message


def test_a_postgresql_password_can_come_from_a_pgpass_file(postgres_url, tmp_path,
                                                           monkeypatch):
    from sqlalchemy.engine import make_url

    u = make_url(postgres_url)
    bare = f"postgresql://{u.username}@{u.host}:{u.port}/{u.database}"
    with pytest.raises(StudyError, match="no password supplied"):
        open_study("pgpass", bare, 0)
    pgpass = tmp_path / "pgpass"  # what docs/scaling.md recommends, as ~/.pgpass
    pgpass.write_text(f"{u.host}:{u.port}:{u.database}:{u.username}:{PG_PASSWORD}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    assert open_study("pgpass", bare, 0).study_name == "pgpass"


# -- URLs --------------------------------------------------------------------------------

def test_study_url_default_is_a_sqlite_file_in_the_folder(tmp_path):
    folder = tmp_path / "a" / "b"
    for empty in (None, "", "  "):
        assert study_url(empty, folder, "ens") == f"sqlite:///{folder}/ens.db"
    assert folder.is_dir()
    given = "postgresql://u:pw@db.example:5432/studies"
    assert study_url(given, folder, "ens") == given
    sqlite = f"sqlite:///{tmp_path}/new/x.db"
    assert study_url(sqlite, folder, "ens") == sqlite and (tmp_path / "new").is_dir()


@pytest.mark.parametrize("url, problem", [
    ("not a url", "is not a database URL"),
    ("postgresql://me:hunter2@host:notaport/db", "is not a database URL"),
    ("postgrsql://me:hunter2@host/db", "unknown database backend 'postgrsql'"),
    ("postgresql+nodriver://me:hunter2@host/db", "unknown database backend"),
    ("sqlite://", "in-memory SQLite"),
    ("sqlite:///:memory:", "in-memory SQLite"),
])
def test_study_url_refuses_bad_urls_without_showing_the_password(tmp_path, url, problem):
    with pytest.raises(ConfigError) as e:
        study_url(url, tmp_path, "ens", key="ensemble.storage")
    message = str(e.value)
    assert message.startswith("ensemble.storage: ") and problem in message
    assert "hunter2" not in message and "\n" not in message


@pytest.mark.slow  # (the default suite runs two Ray workers on a journal: test_parallel.py)
def test_two_workers_share_a_journal_study(tmp_path):
    """Optuna's journal file (no database server: for a run folder on NFS): two worker
    processes append to one file; the study ends with exactly n_trials."""
    url = study_url("journal", tmp_path / "run" / "06_ensemble", "two")
    assert url == f"journal://{tmp_path}/run/06_ensemble/two.journal"
    check_two_workers(url, tmp_path)
    assert (tmp_path / "run" / "06_ensemble" / "two.journal").stat().st_size > 0


def test_study_url_takes_a_journal_file_by_its_absolute_path_only(tmp_path):
    from sleepemo.ensemble.studies import exclusive

    given = f"journal://{tmp_path}/shared/studies.journal"
    assert study_url(given, tmp_path / "x", "ens") == given and (tmp_path / "shared").is_dir()
    assert not exclusive(given) and not exclusive("postgresql://u@h/db")
    for bad in ("journal://relative/studies.journal", "journal://"):
        with pytest.raises(ConfigError, match="absolute path"):
            study_url(bad, tmp_path, "ens", key="ensemble.storage")


def test_study_url_refuses_a_bad_study_name(tmp_path):
    with pytest.raises(ConfigError, match="study name"):
        study_url(None, tmp_path, "../escape")


def test_mask_url_hides_passwords():
    assert mask_url("postgresql://me:hunter2@h:5432/db") == "postgresql://me:***@h:5432/db"
    assert "hunter2" not in mask_url("postgresql://me@h/db?password=hunter2")
    assert mask_url("postgresql://me:hunter2@h:port/db") == "postgresql://me:***@h:port/db"
    assert mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_open_study_refuses_another_direction(tmp_path):
    url = study_url(None, tmp_path, "dir")
    open_study("dir", url, 0, direction="maximize")
    with pytest.raises(StudyError, match="exists with direction maximize, not minimize"):
        open_study("dir", url, 0, direction="minimize")


def test_open_study_reports_an_unreachable_server_without_the_password():
    url = f"postgresql://me:hunter2@127.0.0.1:{_free_port()}/db"
    with pytest.raises(StudyError) as e:
        open_study("x", url, 0)
    assert "cannot open study 'x' at postgresql://me:***@127.0.0.1" in str(e.value)
    assert "hunter2" not in str(e.value)
