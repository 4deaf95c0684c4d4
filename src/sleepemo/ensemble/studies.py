"""Optuna studies in a database: resumable, shared by worker processes and machines.

A study lives in a SQLAlchemy database named by a URL: by default one SQLite file per study
in the run folder (:func:`study_url`), or a PostgreSQL (or MySQL) server that workers on
several machines open by the same URL and study name; Optuna coordinates them through the
database. :func:`open_study` opens (or creates) it; :func:`optimize` runs trials until the
study holds ``n_trials`` finished ones, in this process or in worker processes.

**Killed workers** (design choice). A trial whose process dies stays ``RUNNING`` in the
database. Failing every ``RUNNING`` trial when a study is opened would be wrong as soon as
two processes or machines share a study (it would fail a live trial of another worker), so
the storage uses Optuna's heartbeat instead: a running trial's process writes a heartbeat
every ``heartbeat_interval`` seconds; before each new trial, a worker fails every trial whose
heartbeat is older than ``grace_period`` seconds, and
:class:`optuna.storages.RetryHeartbeatStaleTrialCallback` re-queues it with the same
parameters (as a ``WAITING`` trial, run next; ``failed_trial`` in its system attrs names
the original). :func:`optimize` runs the same check once before it counts the finished
trials, extended to trials killed before their first heartbeat (:func:`fail_stale_trials`).
A trial killed in the last ``grace_period`` seconds before a rerun is retried once a worker
of the rerun notices it; if the rerun is over before that, the next one retries it. A live
trial is never failed as long as its process can write a heartbeat within the grace period
(a live trial failed by mistake would crash its worker when it reports its value), hence
the generous default.

**Counting.** ``n_trials`` is the total of finished (``COMPLETE`` or ``PRUNED``) trials in
the study, so a resumed study runs only the remainder. Worker processes of one
:func:`optimize` call share a counter of trials still to start, so on one machine the study
ends with exactly ``n_trials`` finished trials. Workers on other machines are seen through
the database only (:class:`optuna.study.MaxTrialsCallback`, checked after each trial): with
``m`` machines the study can end with up to ``m - 1`` extra trials, one per machine that
had a trial running when the total was reached.

**Replay** (design choice). The sampler is :class:`HistorySeededTPE`: before each trial its
random state is reseeded from the study's seed and its number of finished trials, so a
trial's suggestions depend on the study's history, not on how many trials this process has
drawn before. A study that only one process uses (``exclusive``: the default SQLite file in
a run folder, which the run's lock, :mod:`sleepemo.pipeline.runlock`, keeps to one run) therefore
resumes after a SIGKILL to exactly the trials, values and best trial of an uninterrupted
run: :func:`recover_killed` fails the killed trial at once (no grace period is needed when
no other process can own it), re-queues it only if its parameters were fixed by
``enqueue_trial`` (a drawn trial is drawn again, identically, from the same history), and
starts a study that holds trials but no finished one over (its caller enqueues again).

**Journal files** (``storage: journal``, or ``journal:///path``; :func:`study_url`).
Optuna's :class:`~optuna.storages.JournalStorage` appends every change of a study to a
file, with a lock file for writers (Optuna's default symlink lock, safe on NFS), so
workers on machines that share the run folder can use it without a database server. It
has no heartbeat, so a killed trial is recovered only by an exclusive opening
(:func:`recover_killed`): the ``journal`` files in the run folder are exclusive like the
default SQLite files (:func:`exclusive`), and resume after a SIGKILL exactly as they do;
an explicit ``journal:///`` file may be shared by other runs, so its killed trials stay
``RUNNING`` (the count of finished trials is unaffected).

Passwords in URLs are never printed: every message shows :func:`mask_url`'s form.
"""
from __future__ import annotations

import copy
import multiprocessing
import os
import re
import socket
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from sleepemo.config import ConfigError
from sleepemo.pipeline.executor import RAY_RETRIES, ray_session, ray_slots, resolve_workers
from sleepemo.progress import bar

#: trial states that count towards ``n_trials``
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: seconds between a running trial's heartbeats, and without one before it is failed
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 60
#: how often a trial killed with its process is re-queued
MAX_RETRY = 3
#: seconds a SQLite connection waits for another process's write lock
SQLITE_TIMEOUT = 60
#: the URL scheme of a journal file storage: ``journal://`` + its absolute path
JOURNAL = "journal://"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SECRET_KEY = re.compile(r"pass|secret|token", re.IGNORECASE)
_STATE: dict = {}


class StudyError(RuntimeError):
    """A study cannot be opened or one of its workers failed."""


def mask_url(url: str) -> str:
    """``url`` with its password (and any ``password=``-like query value) as ``***``."""
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except Exception:  # not parseable: mask whatever sits between ':' and '@'
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))
    secret = {k: "***" for k in u.query if _SECRET_KEY.search(k)}
    if secret:
        u = u.update_query_dict(secret)
    return u.render_as_string(hide_password=True)


def _scrub(text: str, url: str) -> str:
    """``text`` (an error message) with ``url``'s password replaced by ``***``."""
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
        secrets = [u.password] + [v for k, v in u.query.items() if _SECRET_KEY.search(k)]
    except Exception:
        secrets = re.findall(r"://[^:/@]*:([^@]*)@", str(url))
    text = text.replace(str(url), mask_url(url))
    for s in secrets:
        for v in ([s] if isinstance(s, str) else list(s or ())):
            if v:
                text = text.replace(v, "***")
    return text


def study_url(storage: str | None, folder: Path, name: str, key: str = "storage") -> str:
    """The URL of study ``name``: a SQLAlchemy URL, or ``journal://<absolute path>`` for
    Optuna's journal file storage.

    ``storage`` empty or None: ``sqlite:///<folder>/<name>.db`` (``folder`` is created).
    ``journal``: ``journal://<folder>/<name>.journal``, one journal file per study beside
    where the SQLite file would be: for run folders on a shared file system (NFS) where
    SQLite's locking is unreliable; no database server (see *Journal files* in the module
    docstring). ``journal:///absolute/path/file.journal``: that journal file (its folder
    is created; a relative path is refused). Otherwise ``storage`` itself, checked: it
    must parse as a URL, name a known database backend whose Python driver is installed,
    and not be an in-memory SQLite database (a study must outlive its process to be shared
    or resumed). For a SQLite file URL the file's folder is created. ``key`` names the
    setting in error messages.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"study name {name!r}: use letters, digits, '_', '.', '-'")
    if storage is None or not str(storage).strip():
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(folder / f'{name}.db').resolve()}"
    if not isinstance(storage, str):
        raise ConfigError(f"{key} must be a database URL (a string), not {type(storage).__name__}")
    if storage.strip() == "journal":
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return f"{JOURNAL}{(folder / f'{name}.journal').resolve()}"
    if storage.strip().startswith(JOURNAL):
        path = Path(storage.strip()[len(JOURNAL):]).expanduser()
        if not path.is_absolute() or path.name in ("", ".", ".."):
            raise ConfigError(f"{key}: {storage!r} must name a journal file by its absolute "
                              "path: journal:///path/to/studies.journal (three slashes)")
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"{JOURNAL}{path.resolve()}"
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = storage.strip()
    example = "e.g. postgresql://user:password@host:5432/dbname or sqlite:///path/study.db"
    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(f"{key}: {mask_url(url)!r} is not a database URL ({example})") from None
    try:
        dialect = u.get_dialect()
    except ArgumentError:  # sqlalchemy's NoSuchModuleError: an unknown backend or driver
        raise ConfigError(f"{key}: unknown database backend {u.drivername!r} in "
                          f"{mask_url(url)!r} ({example})") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        hint = (" (pip install -r requirements.txt installs psycopg for postgresql://)"
                if u.get_backend_name() == "postgresql" else "")
        raise ConfigError(f"{key}: {u.drivername!r} needs the Python driver "
                          f"{e.name or e}, which is not installed{hint}") from None
    if u.get_backend_name() == "sqlite":
        if u.database in (None, "", ":memory:") or "mode=memory" in url:
            raise ConfigError(f"{key}: {url!r} is an in-memory SQLite database; a study must "
                              "be a file (sqlite:///path/study.db) or a server to be resumed")
        Path(u.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    return url


def exclusive(storage: str | None) -> bool:
    """Whether the studies of ``storage`` (a setting, as :func:`study_url` takes it) are
    this run's alone: the default SQLite files and the ``journal`` files live in the run
    folder, which the run lock (:mod:`sleepemo.pipeline.runlock`) keeps to one run."""
    return storage is None or str(storage).strip() in ("", "journal")


def _engine_kwargs(url: str) -> dict:
    """SQLite: wait for another process's write lock instead of failing at once.
    PostgreSQL (and MySQL): test a pooled connection before use (a server restart or a
    firewall's idle timeout would otherwise fail the next trial)."""
    from sqlalchemy.engine import make_url

    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": SQLITE_TIMEOUT}}
    return {"pool_pre_ping": True}


class HistorySeededTPE(optuna.samplers.TPESampler):
    """Optuna's TPE sampler (its defaults; see :func:`open_study`) whose random state, before
    each trial, is reseeded from ``seed`` and the study's number of finished trials (see
    *Replay* in the module docstring). Uses the sampler's private random states (Optuna
    pinned in requirements.txt; ``tests/test_studies.py`` checks the replay)."""

    def __init__(self, seed: int):
        super().__init__(seed=seed)
        self.base_seed = int(seed) % 2**32

    def before_trial(self, study: optuna.Study, trial) -> None:
        done = n_finished(study)
        self._rng.rng.seed([self.base_seed, done])
        self._random_sampler._rng.rng.seed([self.base_seed, done, 1])
        super().before_trial(study, trial)


def open_study(name: str, url: str, seed: int, direction: str = "maximize", *,
               heartbeat_interval: int = HEARTBEAT_INTERVAL, grace_period: int = GRACE_PERIOD,
               pruner: optuna.pruners.BasePruner | None = None,
               exclusive: bool = False) -> optuna.Study:
    """Open study ``name`` at ``url``, creating it if it does not exist.

    The storage is an :class:`optuna.storages.RDBStorage` with the heartbeat and retry of
    killed trials described in the module docstring; the sampler is Optuna's
    :class:`~optuna.samplers.TPESampler` seeded with ``seed`` (multivariate and with the
    constant liar, Optuna 5's defaults for one objective: parallel workers do not all try
    the same point); the pruner (default: :class:`~optuna.pruners.MedianPruner` after 5
    trials) acts only on objectives that call ``trial.report``/``trial.should_prune``.
    The study's first opener records ``seed`` as its user attr ``seed``. An existing study
    whose direction differs is refused. ``exclusive``: no other process can be using the
    study, so a killed earlier run's trials are recovered at once (:func:`recover_killed`).
    """
    return _open(name, url, seed, direction, heartbeat_interval, grace_period, pruner,
                 exclusive)[0]


def _open(name: str, url: str, seed: int, direction: str = "maximize",
          heartbeat_interval: int = HEARTBEAT_INTERVAL, grace_period: int = GRACE_PERIOD,
          pruner: optuna.pruners.BasePruner | None = None, exclusive: bool = False):
    """:func:`open_study`, returning ``(study, its RDBStorage)``."""
    study, storage = _open_once(name, url, seed, direction, heartbeat_interval, grace_period,
                                pruner)
    if exclusive and recover_killed(study, storage) == "restart":
        optuna.delete_study(study_name=name, storage=storage)
        study, storage = _open_once(name, url, seed, direction, heartbeat_interval,
                                    grace_period, pruner)
    return study, storage


def _open_once(name, url, seed, direction, heartbeat_interval, grace_period, pruner):
    from sqlalchemy.exc import SQLAlchemyError

    pruner = pruner if pruner is not None else optuna.pruners.MedianPruner(n_startup_trials=5)
    try:
        with warnings.catch_warnings():  # the heartbeat and its retry are "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if url.startswith(JOURNAL):
                from optuna.storages.journal import JournalFileBackend

                storage = optuna.storages.JournalStorage(
                    JournalFileBackend(url[len(JOURNAL):]))
            else:
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=_engine_kwargs(url),
                    heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                    heartbeat_stale_trial_callback=optuna.storages.
                    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
            study = optuna.create_study(
                study_name=name, storage=storage, direction=direction, load_if_exists=True,
                sampler=HistorySeededTPE(seed), pruner=pruner)
    except (SQLAlchemyError, ImportError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StudyError(f"cannot open study {name!r} at {mask_url(url)}: "
                         f"{_scrub(first, url)}") from None
    want = optuna.study.StudyDirection[direction.upper()]
    if study.direction != want:
        raise StudyError(f"study {name!r} at {mask_url(url)} exists with direction "
                         f"{study.direction.name.lower()}, not {direction}: use another "
                         "study name")
    if "seed" not in study.user_attrs:
        study.set_user_attr("seed", seed)
    return study, storage


def fail_stale_trials(study: optuna.Study, storage, grace_period: int) -> list[int]:
    """Fail and re-queue the ``RUNNING`` trials of ``study`` whose process is gone; returns
    their numbers.

    Optuna's own check (:func:`optuna.storages.fail_stale_trials`, also run before every
    trial) fails trials whose last heartbeat is older than ``grace_period``, but skips
    trials without any heartbeat: a process killed between creating a trial and its
    heartbeat thread's first write leaves one, ``RUNNING`` for ever. This also fails those
    once they started more than ``grace_period`` ago (by the clock of the machine that
    started them: machines sharing a study need clocks that agree to well within it).
    ``storage``: the study's :class:`~optuna.storages.RDBStorage`.
    """
    from optuna.storages._rdb.models import TrialHeartbeatModel
    from sqlalchemy import select

    def running() -> dict:
        return {t.number: t for t in study.get_trials(deepcopy=False,
                                                      states=(TrialState.RUNNING,))}

    before = running()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    limit = datetime.now() - timedelta(seconds=grace_period)
    old = {t._trial_id: t for t in running().values()
           if t.datetime_start is not None and t.datetime_start < limit}
    if old:
        column = TrialHeartbeatModel.trial_id
        with storage.engine.connect() as conn:
            beating = set(conn.execute(select(column).where(column.in_(list(old)))).scalars())
        retry = storage.get_heartbeat_stale_trial_callback()
        for trial_id in set(old) - beating:
            try:
                if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    retry(study, copy.deepcopy(storage.get_trial(trial_id)))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another process failed it first
    return sorted(set(before) - set(running()))


def recover_killed(study: optuna.Study, storage, restart: bool = True) -> str:
    """For a study no other process is using: fail every ``RUNNING`` trial (its process is
    gone) and re-queue, in order, those whose parameters were enqueued; returns ``"restart"``
    when the study should be started over instead (trials but no finished one: a run killed
    while enqueuing or running its first trials, whose enqueued trials would otherwise run
    out of order or be missing; only with ``restart``: :func:`open_study` restarts, and its
    caller enqueues again before :func:`optimize`, which does not), ``"recovered"`` when
    trials were failed, ``""`` when none was running. See *Replay* in the module docstring.
    """
    if not study.get_trials(deepcopy=False):
        return ""
    if restart and n_finished(study) == 0:
        return "restart"
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return ""
    for t in sorted(running, key=lambda t: t.number):
        storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        fixed = t.system_attrs.get("fixed_params")
        if fixed:
            study.enqueue_trial(fixed, user_attrs={"failed_trial": t.number})
    return "recovered"


def n_finished(study: optuna.Study) -> int:
    """Trials of ``study`` that count towards ``n_trials`` (``COMPLETE`` or ``PRUNED``)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class _Tagged:
    """``objective`` that first records which process runs the trial (user attr
    ``worker``: ``host:pid``), for the dashboard and the tests."""

    def __init__(self, objective: Callable):
        self.objective = objective

    def __call__(self, trial: optuna.Trial):
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        return self.objective(trial)


class _Claims:
    """The trials still to start of one :func:`optimize` call, shared by its workers: a
    counter and a stop flag in shared memory (local processes) or in a small Ray actor
    (:class:`_RayClaims`)."""

    def __init__(self, slots, stop):
        self.slots, self.stop = slots, stop

    def take(self) -> bool:
        """Take one of the trials left to start; False if none is left or a worker failed."""
        with self.slots.get_lock():
            if self.stop.is_set() or self.slots.value <= 0:
                return False
            self.slots.value -= 1
            return True

    def halt(self) -> None:
        self.stop.set()


class _RayCounter:
    """The Ray actor behind :class:`_RayClaims`."""

    def __init__(self, slots: int):
        self.slots, self.stopped = slots, False

    def take(self) -> bool:
        if self.stopped or self.slots <= 0:
            return False
        self.slots -= 1
        return True

    def halt(self) -> None:
        self.stopped = True


class _RayClaims:
    """:class:`_Claims` for Ray tasks: the counter lives in an actor they all call."""

    def __init__(self, actor):
        self.actor = actor

    def take(self) -> bool:
        import ray

        return ray.get(self.actor.take.remote())

    def halt(self) -> None:
        import ray

        ray.get(self.actor.halt.remote())


class _ClaimNext:
    """After each trial: stop this worker unless it can take another trial."""

    def __init__(self, claims):
        self.claims = claims

    def __call__(self, study: optuna.Study, trial) -> None:
        if not self.claims.take():
            study.stop()


class _Progress:
    """After each trial (one-process runs): the bar shows the study's finished trials."""

    def __init__(self, progress):
        self.progress = progress

    def __call__(self, study: optuna.Study, trial) -> None:
        _advance(self.progress, n_finished(study))


def _advance(progress, done: int) -> None:
    if done > progress.n:
        progress.update(done - progress.n)


def _work(name: str, url: str, objective: Callable, n_trials: int, seed: int,
          study_kwargs: dict, claims, callbacks=()) -> None:
    """One worker: open the study with sampler seed ``seed`` and run trials while it can
    claim them and the study (other machines included) holds fewer than ``n_trials``."""
    study = open_study(name, url, seed, **study_kwargs)  # (recovered by the parent)
    if n_finished(study) >= n_trials or not claims.take():
        return
    study.optimize(_Tagged(objective), gc_after_trial=False, callbacks=[
        optuna.study.MaxTrialsCallback(n_trials, states=FINISHED), _ClaimNext(claims),
        *callbacks])


def _open_worker(claims) -> None:
    """A worker process's start: the shared counter, quiet Optuna (the parent's progress
    bar reports; each trial is in the storage)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _STATE.update(claims=claims)


def _pool_work(*args) -> None:
    _work(*args, claims=_STATE["claims"])


def _ray_work(*args) -> None:
    """A Ray task's :func:`_work` (Optuna quiet, as in :func:`_open_worker`)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _work(*args)


def optimize(name: str, url: str, objective: Callable, n_trials: int, n_workers: int,
             seed: int, progress: bool = True, *, direction: str = "maximize",
             heartbeat_interval: int = HEARTBEAT_INTERVAL,
             grace_period: int = GRACE_PERIOD, exclusive: bool = False,
             executor: str = "local") -> optuna.Study:
    """Run ``objective`` until study ``name`` at ``url`` holds ``n_trials`` finished trials.

    A study that already holds some (a killed or shorter earlier run) runs only the rest.
    ``n_workers == 1``: trials run in this process. ``n_workers > 1`` (``0``: one per core):
    that many ``spawn`` worker processes, each opening the study by ``name`` and ``url``
    with sampler seed ``seed + i`` for worker ``i``; ``objective`` must then pickle (a
    module-level function or a small class instance). Each trial records its ``host:pid``
    as user attr ``worker``. A progress bar in this process counts the finished trials in
    the storage. A worker's exception stops the others after their current trial and is
    raised here as :class:`StudyError` with the worker's message (chained to the original,
    whose ``__cause__`` holds the worker's traceback); finished trials stay in the storage,
    so a rerun resumes. Returns the study, opened in this process. ``exclusive``: see
    :func:`open_study` (with one worker, a resumed study then ends as an uninterrupted one).

    ``executor="ray"`` (:mod:`sleepemo.pipeline.executor`): the ``n_workers`` workers
    (``0``: one per CPU of the cluster) are Ray tasks of one CPU instead, sharing the
    counter through a Ray actor; the storage must then be one every node reaches (a
    journal file or SQLite on a shared file system, or a database server). A task whose
    node is lost is run again elsewhere; a trial it had claimed and not finished is run
    in this process at the end, so the study still ends with ``n_trials``.
    """
    if n_trials < 0:
        raise ValueError(f"n_trials must be >= 0, got {n_trials}")
    study_kwargs = dict(direction=direction, heartbeat_interval=heartbeat_interval,
                        grace_period=grace_period)
    study, storage = _open(name, url, seed, **study_kwargs)  # created before any worker
    if exclusive:
        recover_killed(study, storage, restart=False)
    if isinstance(storage, optuna.storages.RDBStorage):  # (a journal has no heartbeat)
        fail_stale_trials(study, storage, grace_period)  # a killed earlier run's trials
    done = n_finished(study)
    todo = n_trials - done
    if todo <= 0:
        return study
    n = resolve_workers(n_workers, todo)
    ctx = multiprocessing.get_context("spawn")
    claims = _Claims(ctx.Value("i", todo), ctx.Event())
    with bar(desc=f"study {name}", total=n_trials, unit="trial", enabled=progress) as pbar:
        pbar.update(done)
        if executor == "ray" and n_workers != 1:
            _run_ray(study, n_workers, pbar, [
                (name, url, objective, n_trials, seed + i, study_kwargs)
                for i in range(todo)])
            claims = _Claims(ctx.Value("i", n_trials - n_finished(study)), ctx.Event())
            n = 1  # (what a lost node left: here)
        if n == 1:
            verbosity = optuna.logging.get_verbosity()
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            try:
                _work(name, url, objective, n_trials, seed, study_kwargs, claims,
                      callbacks=[_Progress(pbar)])
            finally:
                optuna.logging.set_verbosity(verbosity)
        else:
            _run_pool(study, n, ctx, claims, pbar, [
                (name, url, objective, n_trials, seed + i, study_kwargs) for i in range(n)])
        _advance(pbar, n_finished(study))
    return study


def _run_ray(study: optuna.Study, workers: int, pbar, jobs: list) -> None:
    """:func:`_run_pool` on Ray: ``workers`` tasks (0: one per CPU of the cluster) running
    the first of ``jobs`` (one per trial still to start), the counter of those trials in
    an actor; a task's failure stops the others after their current trial and is raised
    as StudyError."""
    with ray_session(workers) as ray:
        n = ray_slots(ray, workers, len(jobs))
        counter = ray.remote(num_cpus=0, max_restarts=RAY_RETRIES)(_RayCounter).remote(
            len(jobs))
        claims = _RayClaims(counter)
        work = ray.remote(num_cpus=1, max_retries=RAY_RETRIES)(_ray_work)
        pending = {work.remote(*job, claims): i for i, job in enumerate(jobs[:n])}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                _advance(pbar, n_finished(study))
                for ref in done:
                    i = pending.pop(ref)
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayTaskError as e:
                        cause = e.cause  # (the task's own exception, its traceback in e)
                        raise StudyError(f"study {study.study_name!r}: worker {i} failed: "
                                         f"{type(cause).__name__}: {cause}") from e
        except BaseException:
            claims.halt()  # the other workers end after their current trial
            ray.wait(list(pending), num_returns=len(pending), timeout=60)
            raise
        finally:
            ray.kill(counter)


def _run_pool(study: optuna.Study, n: int, ctx, claims: _Claims, pbar, jobs: list) -> None:
    """Run ``jobs`` (``_work`` arguments) in ``n`` processes, updating ``pbar`` from the
    storage; the first failure stops the other workers and is raised as StudyError."""
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=_open_worker,
                             initargs=(claims,)) as pool:
        pending = {pool.submit(_pool_work, *job): i for i, job in enumerate(jobs)}
        try:
            while pending:
                done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                _advance(pbar, n_finished(study))
                for f in done:
                    i = pending.pop(f)
                    try:
                        f.result()
                    except BrokenProcessPool:
                        raise StudyError(
                            f"study {study.study_name!r}: a worker process died (killed, or "
                            "out of memory?); finished trials are in the storage, rerun to "
                            "resume (its running trial is retried)") from None
                    except Exception as e:
                        raise StudyError(f"study {study.study_name!r}: worker {i} failed: "
                                         f"{type(e).__name__}: {e}") from e
        except BaseException:
            claims.halt()  # the other workers end after their current trial
            pool.shutdown(wait=True, cancel_futures=True)
            raise
