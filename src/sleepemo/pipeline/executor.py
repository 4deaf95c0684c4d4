"""Fold-parallel stages: a stage's pending LOPO folds spread over worker processes.

Every fold of stages 03 and 04 depends only on the run's artefacts and its own seeds, so
folds can train at once. On a CPU, small models use two threads poorly (one training step
of the fusion is only ~1.4x faster on 2 threads than on 1, docs/benchmarks.md), so two
one-thread processes each training a fold get more done than one process with two.

:func:`run_folds` takes

- ``setup(stage) -> state``: what the folds need (data, inputs, result writers). It runs
  in the parent and once in every worker, so it must be a module-level function and must
  not build anything another process could be building (caches are built by the parent
  before the workers start);
- ``task(state, k, step) -> result``: fold ``k`` (all its variants), writing its own
  artefacts atomically, calling ``step()`` after each training step; module-level too;
  its result must pickle.

With ``workers <= 1`` (or one fold left) it runs in this process with the parent's
``state``; otherwise it spawns ``workers`` processes (``spawn``: no forked torch thread
pools), each with one torch thread, hands folds out as workers free up, and forwards their
steps to the parent's progress bar. A worker's exception is raised in the parent (with the
worker's traceback) and the folds not yet started are cancelled; folds already written
stay, so a rerun resumes. A fold's seeds do not depend on the process that trains it: with
one thread, parallel results are bit-identical to serial ones (tests/test_parallel.py).

Stage 01's folds need no per-worker state: :func:`map_unordered` runs ``fn(*job)`` for
each job and yields the results as they finish, in joblib processes (local, as before) or
in Ray tasks (one CPU each, retried on a lost node). The nested studies' trial workers
(``ensemble.study_workers``, :func:`sleepemo.ensemble.studies.optimize`) run on the same
two executors. Whatever the executor, only the stage's own process (the driver) holds the
run's lock and builds caches; workers read them and write only their own fold's files,
atomically.

**Ray** (``executor: ray``, :func:`_run_ray`). The same ``setup`` and ``task`` run in Ray
actors instead of local processes: one actor per worker (``workers``; 0: one per CPU of the
cluster), each building the stage's state once (as a local worker does) with one CPU and
one torch thread, so the results are bit-identical to the local executor's. Folds are
handed out as actors free up. The cluster is ``RAY_ADDRESS``'s when set (``ray start
--head`` on one machine, ``ray start --address=...`` on the others, the run folder and
the checkout on a shared file system), else a local one started for the stage and stopped
after it. When an actor's process or node dies, its fold is handed to a new actor, which
Ray places where there is room: a fold writes its files atomically and its seeds do not
depend on where it runs, so a retried fold equals an uninterrupted one
(tests/test_cluster.py kills a node mid-stage). A task's exception is raised in the stage
with the task's message.
Each actor reports its steps with its fold's result, so the progress bar moves per fold.

**GPUs.** A stage on CUDA (its section's ``device``) spreads its workers over the GPUs:
local worker i sees only GPU ``i mod n`` of the parent's visible ones
(``CUDA_VISIBLE_DEVICES`` set before it touches CUDA, :func:`stage_gpus`); a Ray actor
asks for ``gpu_fraction`` of a GPU (0.5: two folds per GPU) and Ray's placement sets its
``CUDA_VISIBLE_DEVICES``. Either way ``cuda`` inside a worker is the device it was given.
"""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import queue as queue_module
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from sleepemo.pipeline.stage import Stage, choose_device, flush_denormals, spec


@dataclasses.dataclass
class FoldState:
    """What every fold of a stage needs: built by the stage's ``fold_state`` in the
    stage's process and in every fold worker (:func:`run_folds`); a stage adds its own
    fields in a subclass."""

    stage: Stage
    ds: object
    folds: object

_STATE: dict = {}


def resolve_workers(workers: int, n_todo: int) -> int:
    """``workers`` processes for ``n_todo`` folds: 0 means one per available core;
    never more than there are folds."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers == 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
    return max(1, min(workers, n_todo))


def run_folds(stage, todo: list[int], setup: Callable, task: Callable, workers: int,
              progress=None, state: Any = None) -> dict[int, Any]:
    """``{k: task(state, k, step)}`` for every fold ``k`` in ``todo`` (see the module
    docstring). ``progress``: a bar whose ``update(1)`` is called per step; ``state``:
    the parent's own ``setup(stage)`` if it has one already (serial runs use it)."""
    step = (lambda: progress.update(1)) if progress is not None else (lambda: None)
    if getattr(stage.cfg, "executor", "local") == "ray" and todo:
        return _run_ray(stage, todo, setup, task, workers, step)
    n = resolve_workers(workers, len(todo))
    if n <= 1:
        state = setup(stage) if state is None else state
        out = {}
        for k in todo:
            if progress is not None and hasattr(progress, "set_postfix"):
                progress.set_postfix(fold=k)
            out[k] = task(state, k, step)
        return out

    ctx = multiprocessing.get_context("spawn")
    steps = ctx.Queue()
    opening = (stage.cfg, str(stage.data_dir), str(stage.out), stage.spec.name, setup)
    gpus = stage_gpus(stage)
    stage.log(f"{stage.spec.name}: {len(todo)} folds on {n} worker processes, "
              "one thread each" + (f", over GPUs {', '.join(gpus)}" if gpus else ""))
    out: dict[int, Any] = {}
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=_open_worker,
                             initargs=(opening, steps, gpus, ctx.Value("i", 0))) as pool:
        pending = {pool.submit(_run_task, task, k): k for k in todo}
        try:
            while pending:
                done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                _drain(steps, step)
                for f in done:
                    out[pending.pop(f)] = f.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    _drain(steps, step)
    return out


def _drain(steps, step: Callable) -> None:
    while True:
        try:
            for _ in range(steps.get_nowait()):
                step()
        except queue_module.Empty:
            return


def _quiet(_message: str) -> None:
    """A worker's log: the parent reports for it."""


def stage_gpus(stage) -> list[str]:
    """The GPUs a stage's local workers share: none when the stage runs on the CPU (its
    section's ``device``), else the parent's visible ones (``CUDA_VISIBLE_DEVICES``'s
    list, or every device torch counts)."""
    setting = getattr(stage.section, "device", None)
    if setting is None or choose_device(setting).type != "cuda":
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _open_worker(opening: tuple, steps, gpus=(), counter=None) -> None:
    """A worker's start: its GPU (the next of ``gpus`` by ``counter``, before CUDA starts),
    one torch thread, denormals flushed, the stage and its state."""
    if gpus:
        with counter.get_lock():
            i = counter.value
            counter.value += 1
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
    import torch

    cfg, data_dir, out, name, setup = opening
    flush_denormals()
    torch.set_num_threads(1)
    stage = Stage(cfg, Path(data_dir), Path(out), spec(name), progress=False, log=_quiet)
    _STATE.update(state=setup(stage), steps=steps)


def _run_task(task: Callable, k: int):
    steps = _STATE["steps"]
    return task(_STATE["state"], k, lambda: steps.put(1))


# ------------------------------------------------------------------ Ray
#: how often a fold (stages 03-06, on a new actor) or a task (Ray's own retry) runs again
#: after its worker or node was lost mid-fold
RAY_RETRIES = 3


def ray_runtime_env() -> dict:
    """What every Ray worker needs to import the stage's code: this checkout's ``src``,
    the driver's ``PYTHONPATH`` and the folders on its ``sys.path`` outside the Python
    installation (e.g. a test folder; a cluster's nodes see the same paths on a shared
    file system), one OpenMP thread."""
    import sys

    src = str(Path(__file__).resolve().parents[2])
    installed = tuple({str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix)})
    found = [str(Path(p).resolve()) for p in sys.path if p and Path(p).is_dir()]
    paths = [src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p] + \
        [p for p in found if not p.startswith(installed)]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)),
                         "OMP_NUM_THREADS": "1"}}


#: open :func:`executor_session` blocks: Ray started inside one is kept until it ends
_HELD = [0]


@contextlib.contextmanager
def ray_session(workers: int):
    """Ray for the duration of the block: :func:`ray_connect` (a local cluster gets
    ``workers`` CPUs, 0: every core); a local cluster it started is stopped after the
    block, unless an :func:`executor_session` holds it."""
    import ray

    started = ray_connect(workers or resolve_workers(0, 1 << 16))
    try:
        yield ray
    finally:
        if started and not _HELD[0]:
            ray.shutdown()


@contextlib.contextmanager
def executor_session(executor: str):
    """A block in which every map and fold run on ``executor`` shares one cluster: with
    ``ray``, the local cluster the first of them starts (only if one does) is stopped at
    the end of the block instead of after that one. Nothing for ``local``."""
    if executor != "ray":
        yield
        return
    import ray

    was_running = ray.is_initialized()
    _HELD[0] += 1
    try:
        yield
    finally:
        _HELD[0] -= 1
        if not was_running and not _HELD[0] and ray.is_initialized():
            ray.shutdown()


def ray_slots(ray, workers: int, n_todo: int) -> int:
    """How many tasks or actors run at once on the cluster: ``workers`` (0: one per CPU
    of the cluster), never more than there are jobs."""
    return max(1, min(workers or int(ray.cluster_resources().get("CPU", 1)), n_todo))


def map_unordered(executor: str, fn: Callable, jobs: Iterable[tuple], workers: int,
                  log: Callable = _quiet) -> Iterator:
    """``fn(*job)`` for every job, yielded as each one finishes (in any order; a result
    should say which job it belongs to). ``fn`` is module-level and its arguments and
    result pickle. ``executor``: ``local`` runs ``workers`` joblib processes (0: one per
    core; one BLAS thread each) or, with one worker, this process; ``ray`` runs Ray tasks
    of one CPU, ``workers`` at once (0: one per CPU of the cluster), each retried on
    another node if its node is lost (:data:`RAY_RETRIES`). A job's exception is raised
    here; the jobs not yet finished are cancelled."""
    jobs = list(jobs)
    if executor == "ray" and jobs:
        yield from _ray_map(fn, jobs, workers, log)
        return
    n = resolve_workers(workers, len(jobs))
    if n <= 1:
        for job in jobs:
            yield fn(*job)
        return
    from joblib import Parallel, delayed

    yield from Parallel(n_jobs=n, return_as="generator_unordered")(
        delayed(fn)(*job) for job in jobs)


def _ray_map(fn: Callable, jobs: list[tuple], workers: int, log: Callable) -> Iterator:
    """:func:`map_unordered` on Ray: at most ``workers`` tasks running, the next job
    submitted as one finishes."""
    with ray_session(workers) as ray:
        n = ray_slots(ray, workers, len(jobs))
        log(f"{len(jobs)} folds as Ray tasks, {n} at once, one CPU each")
        remote = ray.remote(num_cpus=1, max_retries=RAY_RETRIES)(fn)
        waiting, running = list(reversed(jobs)), []
        try:
            while waiting or running:
                while waiting and len(running) < n:
                    running.append(remote.remote(*waiting.pop()))
                done, running = ray.wait(running, num_returns=1)
                yield ray.get(done[0])
        finally:
            for ref in running:
                ray.cancel(ref, force=True)


def ray_connect(n_cpus: int) -> bool:
    """Connect to ``RAY_ADDRESS``'s cluster, or start a local one with ``n_cpus`` CPUs;
    returns whether this call started Ray (so the caller stops it)."""
    import ray

    if ray.is_initialized():
        return False
    # (Ray's coming default: actors asking for no GPU keep the visible devices as they are)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    address = os.environ.get("RAY_ADDRESS") or None
    kwargs = {} if address else {"num_cpus": n_cpus, "include_dashboard": False}
    ray.init(address=address, runtime_env=ray_runtime_env(), log_to_driver=False,
             logging_level="WARNING", configure_logging=False, **kwargs)
    return True


def ray_gpu_share(stage, resources: dict) -> float:
    """The GPU share an actor of ``stage`` asks Ray for: ``gpu_fraction`` when the stage's
    ``device`` is ``cuda``, or ``auto`` on a cluster with GPUs; else 0."""
    setting = getattr(stage.section, "device", None)
    if setting == "cuda" or (setting == "auto" and resources.get("GPU", 0) > 0):
        return float(getattr(stage.cfg, "gpu_fraction", 1.0))
    return 0.0


class FoldActor:
    """A Ray actor running one stage's folds: its state built once (:func:`_open_worker`,
    one torch thread), then ``run(task, k)`` per fold."""

    def __init__(self, opening: tuple):
        _open_worker(opening, None)

    def run(self, task: Callable, k: int) -> tuple:
        """Fold ``k``'s result and its number of steps."""
        steps = [0]

        def step():
            steps[0] += 1

        return task(_STATE["state"], k, step), steps[0]


def _run_ray(stage, todo: list[int], setup: Callable, task: Callable, workers: int,
             step: Callable) -> dict[int, Any]:
    """:func:`run_folds` on Ray actors (see the module docstring).

    A fold whose actor is lost (its process or node died: any :class:`RayActorError`,
    including "unavailable", where the fold may or may not have run) is handed out again,
    at most :data:`RAY_RETRIES` times, and its actor replaced by a new one, which Ray
    places where there is room. An actor with no fold left to take is killed at once, so
    that its CPU (or GPU share) is free for such a replacement, which would otherwise wait
    for it forever. A fold's own exception is raised here."""
    actors: list = []
    with ray_session(workers) as ray:
        from ray.exceptions import RayActorError

        try:
            resources = ray.cluster_resources()
            n = ray_slots(ray, workers, len(todo))
            gpu = ray_gpu_share(stage, resources)
            actor = ray.remote(num_cpus=1, num_gpus=gpu)(FoldActor)
            opening = (stage.cfg, str(stage.data_dir), str(stage.out), stage.spec.name,
                       setup)
            stage.log(f"{stage.spec.name}: {len(todo)} folds on {n} Ray actors "
                      f"(CPUs in the cluster: {int(resources.get('CPU', 1))}), one thread "
                      "each" + (f", {gpu:g} GPU each" if gpu else ""))
            actors = [actor.remote(opening) for _ in range(n)]
            idle, waiting, running = list(actors), list(reversed(todo)), {}
            out: dict[int, Any] = {}
            lost = dict.fromkeys(todo, 0)
            while waiting or running:
                while waiting and idle:
                    a, k = idle.pop(), waiting.pop()
                    running[a.run.remote(task, k)] = (a, k)
                done, _ = ray.wait(list(running), num_returns=1)
                a, k = running.pop(done[0])
                try:
                    result, steps = ray.get(done[0])
                except RayActorError as e:
                    lost[k] += 1
                    if lost[k] > RAY_RETRIES:
                        raise
                    stage.log(f"{stage.spec.name}: fold {k}'s worker was lost "
                              f"({type(e).__name__}); fold {k} runs again on a new one")
                    ray.kill(a, no_restart=True)
                    waiting.append(k)
                    a = actor.remote(opening)
                    actors.append(a)
                    idle.append(a)
                    continue
                for _ in range(steps):
                    step()
                out[k] = result
                if waiting:
                    idle.append(a)
                else:
                    ray.kill(a)
            return out
        finally:
            for a in actors:
                ray.kill(a)
