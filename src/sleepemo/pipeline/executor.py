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
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue as queue_module
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable
from sleepemo.pipeline.stage import Stage, flush_denormals, spec


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
    stage.log(f"{stage.spec.name}: {len(todo)} folds on {n} worker processes, "
              "one thread each")
    out: dict[int, Any] = {}
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=_open_worker,
                             initargs=(opening, steps)) as pool:
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


def _open_worker(opening: tuple, steps) -> None:
    """A worker's start: one torch thread, denormals flushed, the stage and its state."""
    import torch


    cfg, data_dir, out, name, setup = opening
    flush_denormals()
    torch.set_num_threads(1)
    stage = Stage(cfg, Path(data_dir), Path(out), spec(name), progress=False, log=_quiet)
    _STATE.update(state=setup(stage), steps=steps)


def _run_task(task: Callable, k: int):
    steps = _STATE["steps"]
    return task(_STATE["state"], k, lambda: steps.put(1))
