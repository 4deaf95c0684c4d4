"""The fold stages on a real two-node Ray cluster (issue 24): a head node and a second node
started with ``ray start`` as subprocesses of this test (one CPU each, their own temporary
folders), the pipeline pointed at them by ``RAY_ADDRESS``. The smoke profile's stages 00-07
on five training participants, with two fold workers in stages 01 and 03-06, give the local
executor's results bit for bit, although the second node is killed (SIGKILL of its whole
process group: raylet, agents, workers) while stage 03 trains its folds: the fold it was
training is run again on the head node.

Slow (about 4 minutes: two pipeline runs, one of them waiting for the cluster to notice the
lost node); ``pytest -m slow tests/test_cluster.py``. The last result is recorded in
docs/scaling.md.
"""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from raynodes import alive_nodes, clean_env, cluster  # noqa: E402

FOLD_STAGES = ("baselines", "experts", "fusion", "rl", "ensemble")
pytestmark = pytest.mark.slow


def _env(**extra) -> dict:
    return clean_env(PYTHONPATH=str(REPO / "src"), **extra)


@pytest.fixture
def two_nodes():
    with cluster(2) as (address, nodes):
        yield address, nodes[1]


def _run(data: Path, out: Path, *sets: str, env: dict, watch=None) -> tuple[float, str]:
    from test_pipeline import SETS

    workers = [f"{s}.workers=2" for s in FOLD_STAGES]
    cmd = [sys.executable, "-m", "sleepemo", "run", "--profile", "smoke", "--data-dir",
           str(data), "--out", str(out / "out"), "--submissions", str(out / "subs"),
           "--no-progress", *[a for s in [*SETS, *workers, *sets] for a in ("--set", s)]]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if watch is not None:
        threading.Thread(target=watch, args=(proc,), daemon=True).start()
    log, _ = proc.communicate(timeout=1500)
    assert proc.returncode == 0, log[-4000:]
    return time.perf_counter() - t0, log


def _arrays(run: Path) -> dict[str, bytes]:
    out = run / "out"
    return {str(p.relative_to(out)): p.read_bytes()
            for p in sorted(out.glob("0[1-6]_*/**/*.npy"))}


def test_fold_stages_on_two_ray_nodes_equal_the_local_run_when_a_node_dies(
        small_dir, tmp_path, two_nodes):
    address, second = two_nodes
    local_s, _ = _run(small_dir, tmp_path / "local", env=_env())
    killed = {}

    def kill_second_node_in_stage_03(proc):
        """Once stage 03 has written its first fold (its two actors, one per node, are
        busy with the next ones), kill the second node."""
        while proc.poll() is None:
            if any((tmp_path / "ray" / "out" / "03_experts").glob("**/fold*.npz")):
                second.kill()
                killed["at"] = time.time()
                return
            time.sleep(0.2)

    ray_s, log = _run(small_dir, tmp_path / "ray", "executor=ray",
                      env=_env(RAY_ADDRESS=address), watch=kill_second_node_in_stage_03)
    print(f"local {local_s:.0f} s, two Ray nodes (one killed in stage 03) {ray_s:.0f} s")
    print("\n".join(line for line in log.splitlines() if "Ray" in line or "lost" in line))

    assert "at" in killed, "stage 03 never wrote a fold"
    assert re.search(r"experts: fold \d's worker was lost \(\w+\); fold \d runs again", log), \
        "no fold of stage 03 was running on the killed node"
    assert "experts: 5 folds on 2 Ray actors (CPUs in the cluster: 2)" in log
    finished = [p.stat().st_mtime
                for p in (tmp_path / "ray" / "out" / "03_experts").glob("**/oof.npy")]
    assert finished and min(finished) > killed["at"], "stage 03 ended before the node died"
    assert alive_nodes(address) == 1  # the second node is gone
    local, ray = _arrays(tmp_path / "local"), _arrays(tmp_path / "ray")
    assert sorted(local) == sorted(ray) and len(local) > 30, sorted(ray)
    different = [name for name in local if local[name] != ray[name]]
    assert not different, different
    sub = "subs/latest.csv"
    assert (tmp_path / "local" / sub).read_bytes() == (tmp_path / "ray" / sub).read_bytes()
    assert np.load(tmp_path / "ray" / "out" / "06_ensemble" / "ensemble" / "oof.npy").size
