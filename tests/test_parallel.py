"""Fold-parallel stages (sleepemo.pipeline.executor): results, progress and errors."""
from __future__ import annotations

import os

import numpy as np
import pytest

from sleepemo.config import load_config
from sleepemo.pipeline.executor import resolve_workers, run_folds
from sleepemo.pipeline.stage import Stage, spec


def _setup(stage):
    """Module-level, so spawned workers can import it."""
    return {"seed": stage.cfg.seed, "pid": os.getpid()}


def _task(state, k, step):
    import torch

    if k == 99:
        raise ValueError(f"fold {k} is broken")
    torch.manual_seed(state["seed"] * 100 + k)
    net = torch.nn.Linear(8, 1)
    for _ in range(3):
        net(torch.randn(16, 8)).sum().backward()
        step()
    return os.getpid(), net.weight.grad.numpy().copy()


def _stage(tmp_path):
    return Stage(load_config("smoke"), tmp_path, tmp_path, spec("fusion"), progress=False,
                 log=lambda m: None)


class Counter:
    n = 0

    def update(self, n):
        self.n += n


def test_resolve_workers():
    assert resolve_workers(2, 14) == 2 and resolve_workers(4, 3) == 3
    assert resolve_workers(1, 0) == 1
    assert 1 <= resolve_workers(0, 100) <= (os.cpu_count() or 1)
    with pytest.raises(ValueError, match=">= 0"):
        resolve_workers(-1, 3)


def test_parallel_folds_equal_serial_ones_and_report_every_step(tmp_path):
    stage = _stage(tmp_path)
    todo = [0, 3, 5, 6]
    serial, parallel = Counter(), Counter()
    one = run_folds(stage, todo, _setup, _task, workers=1, progress=serial)
    two = run_folds(stage, todo, _setup, _task, workers=2, progress=parallel)
    assert sorted(one) == sorted(two) == todo
    assert serial.n == parallel.n == 3 * len(todo)
    assert {pid for pid, _ in one.values()} == {os.getpid()}
    assert os.getpid() not in {pid for pid, _ in two.values()}  # in workers
    for k in todo:
        np.testing.assert_array_equal(one[k][1], two[k][1])


def test_a_worker_error_reaches_the_parent(tmp_path):
    with pytest.raises(ValueError, match="fold 99 is broken"):
        run_folds(_stage(tmp_path), [1, 99, 2], _setup, _task, workers=2)


def _ray_stage(tmp_path):
    from sleepemo.config import load_config

    return Stage(load_config("smoke", ["executor=ray"]), tmp_path, tmp_path, spec("fusion"),
                 progress=False, log=lambda m: None)


def test_ray_actors_give_the_local_results_and_report_every_step(tmp_path):
    """executor=ray (a local Ray cluster started for the call, two actors): the folds'
    results are bit-identical to the local executor's, computed outside this process,
    every step reaches the progress bar, and a task's error reaches the caller."""
    todo = [0, 3, 5, 6]
    local, remote = Counter(), Counter()
    one = run_folds(_stage(tmp_path), todo, _setup, _task, workers=2, progress=local)
    ray = run_folds(_ray_stage(tmp_path), todo, _setup, _task, workers=2, progress=remote)
    assert sorted(ray) == todo and local.n == remote.n == 3 * len(todo)
    assert os.getpid() not in {pid for pid, _ in ray.values()}
    for k in todo:
        np.testing.assert_array_equal(one[k][1], ray[k][1])
    with pytest.raises(ValueError, match="fold 99 is broken"):
        run_folds(_ray_stage(tmp_path), [1, 99], _setup, _task, workers=2)
