"""Fold-parallel stages (sleepemo.pipeline.executor): results, progress and errors."""
from __future__ import annotations

import os

import numpy as np
import pytest

from sleepemo.config import load_config
from sleepemo.pipeline.executor import map_unordered, resolve_workers, run_folds
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


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for this module's tests (its start-up is most of their time), with
    two CPUs and two declared GPUs (none exists: placement is read from what each actor
    was given). run_folds uses it as it would RAY_ADDRESS's cluster."""
    import ray

    from sleepemo.pipeline.executor import ray_runtime_env

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # (as ray_connect)
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env=ray_runtime_env())
    yield ray
    ray.shutdown()


def _ray_stage(out, *overrides):
    from sleepemo.config import load_config

    out.mkdir(parents=True, exist_ok=True)
    return Stage(load_config("smoke", ["executor=ray", *overrides]), out, out, spec("fusion"),
                 progress=False, log=lambda m: None)


def test_ray_actors_give_the_local_results_and_report_every_step(tmp_path, ray_cluster):
    """executor=ray (two actors): the folds' results are bit-identical to the local
    executor's, computed outside this process, every step reaches the progress bar, and a
    task's error reaches the caller."""
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
    assert ray_cluster.is_initialized()  # (a cluster it did not start is left running)


def _gpu_setup(stage):
    return {"dir": stage.out}


def _gpu_task(state, k, step):
    """What a fold worker was given: its visible CUDA devices (each worker's first fold
    waits, up to 60 s, until two workers have started one, so both take folds)."""
    import time

    mine = state["dir"] / f"started-{os.getpid()}"
    if not mine.exists():
        mine.touch()
        deadline = time.monotonic() + 60
        while len(list(state["dir"].glob("started-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_local_workers_of_a_gpu_stage_are_spread_over_the_visible_gpus(tmp_path, monkeypatch):
    """Two visible devices (simulated: the parent's list of GPUs replaced): each of two
    worker processes sees one of them, both are used, and a CPU stage sets none."""
    from sleepemo.pipeline import executor

    stage = _stage(tmp_path)
    import torch

    assert executor.stage_gpus(stage) == [] or torch.cuda.is_available()  # auto: CPU here
    monkeypatch.setattr(executor, "stage_gpus", lambda stage: ["0", "1"])
    given = run_folds(stage, [0, 1, 2, 3], _gpu_setup, _gpu_task, workers=2)
    assert set(given.values()) == {"0", "1"}
    monkeypatch.setattr(executor, "stage_gpus", lambda stage: [])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    (tmp_path / "cpu").mkdir()
    assert set(run_folds(_stage(tmp_path / "cpu"), [0, 1], _gpu_setup, _gpu_task,
                         workers=2).values()) == {None}


def test_ray_places_the_actors_of_a_gpu_stage_on_both_gpus(tmp_path, ray_cluster):
    """A stage on ``cuda`` on the cluster's two (declared) GPUs: with ``gpu_fraction`` 1
    the two actors get GPU 0 and GPU 1; with 0.5 every actor still gets one of them; a
    CPU stage asks for none."""
    for fraction, want in ((1.0, {"0", "1"}), (0.5, None)):
        stage = _ray_stage(tmp_path / str(fraction), "fusion.device=cuda",
                           f"gpu_fraction={fraction}")
        given = run_folds(stage, [0, 1, 2, 3], _gpu_setup, _gpu_task, workers=2)
        assert all(v in ("0", "1") for v in given.values()), given
        if want:
            assert set(given.values()) == want
    cpu = run_folds(_ray_stage(tmp_path / "cpu", "fusion.device=cpu"), [0, 1], _gpu_setup,
                    _gpu_task, workers=2)
    assert set(cpu.values()) <= {None, ""}, cpu


def _square(x: int) -> tuple:
    if x == 99:
        raise ValueError(f"job {x} is broken")
    return x, x * x, os.getpid()


def test_a_map_gives_every_result_on_both_executors_and_raises_a_job_error(ray_cluster):
    """map_unordered (stage 01's folds): every job's result on either executor, the Ray
    ones computed outside this process; a job's error reaches the caller."""
    jobs = [(x,) for x in (3, 1, 4, 5, 9)]
    local = sorted(map_unordered("local", _square, jobs, workers=2))
    ray = sorted(map_unordered("ray", _square, jobs, workers=2))
    assert [r[:2] for r in local] == [r[:2] for r in ray] == sorted((x, x * x) for (x,) in jobs)
    assert os.getpid() not in {r[2] for r in ray}
    assert [r[2] for r in map_unordered("local", _square, jobs, workers=1)] == [os.getpid()] * 5
    for executor in ("local", "ray"):
        with pytest.raises(ValueError, match="job 99 is broken"):
            list(map_unordered(executor, _square, [(1,), (99,), (2,)], workers=2))


def test_stage01_folds_on_ray_equal_the_local_ones(small_dir, tmp_path, ray_cluster):
    """A model's LOPO folds as Ray tasks (stage 01 with executor=ray) give the local joblib
    processes' predictions bit for bit (one BLAS thread each either way)."""
    from sleepemo.baselines.lopo import run_lopo
    from sleepemo.data.folds import make_folds
    from sleepemo.data.reader import load_dataset

    ds = load_dataset(small_dir, progress=False)
    folds = make_folds(ds)
    quiet = dict(progress=False, log=lambda m: None, workers=2)
    local = run_lopo("xdawn_ts", ds, folds, tmp_path / "local", "baselines", **quiet)
    ray = run_lopo("xdawn_ts", ds, folds, tmp_path / "ray", "baselines", executor="ray",
                   **quiet)
    np.testing.assert_array_equal(ray.oof, local.oof)
    np.testing.assert_array_equal(ray.test, local.test)


def test_study_workers_on_ray_share_one_study(tmp_path, ray_cluster):
    """ensemble.study_workers as Ray tasks on a journal file (a cluster's storage: no
    database server): two workers outside this process run exactly the study's trials
    (the counter in a Ray actor); a worker's error stops the study and reaches the caller
    with its message."""
    from test_studies import N_TRIALS, Quadratic, check_two_workers

    from sleepemo.ensemble.studies import StudyError, n_finished, open_study, optimize, \
        study_url

    journal = study_url("journal", tmp_path / "studies", "two")
    check_two_workers(journal, tmp_path, executor="ray")
    assert (tmp_path / "studies" / "two.journal").stat().st_size > 0
    url = study_url(None, tmp_path, "boom")
    with pytest.raises(StudyError, match=r"worker \d failed: ValueError: boom in trial 2"):
        optimize("boom", url, Quadratic(tmp_path, fail_at=2), n_trials=N_TRIALS, n_workers=2,
                 seed=0, progress=False, executor="ray")
    assert n_finished(open_study("boom", url, 0)) < N_TRIALS


def test_a_study_worker_lost_on_ray_is_rerun_and_the_study_completes(tmp_path, ray_cluster):
    """A Ray study worker whose process dies mid-trial (SIGKILL, as with its node): Ray
    reruns the task, the trial it had claimed runs in the caller at the end, and the study
    ends with exactly n_trials finished ones (the killed trial stays RUNNING)."""
    from test_studies import N_TRIALS, Quadratic

    from sleepemo.ensemble.studies import n_finished, optimize, study_url

    url = study_url("journal", tmp_path / "studies", "lost")
    study = optimize("lost", url, Quadratic(tmp_path, kill_after=3), n_trials=N_TRIALS,
                     n_workers=2, seed=0, progress=False, executor="ray")
    assert (tmp_path / "killed").exists()
    assert n_finished(study) == N_TRIALS
    running = [t for t in study.get_trials() if t.state.name == "RUNNING"]
    assert len(running) == 1 and len(study.get_trials()) == N_TRIALS + 1
