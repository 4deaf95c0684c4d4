"""Ray nodes on this machine, as ``ray start`` starts them on a cluster's machines: each in
its own process group and temporary folder, with its own number of CPUs. Used by
bench/bench_ray_nodes.py and tests/test_cluster.py.

    with cluster(2) as (address, nodes):   # a head and a second node, one CPU each
        ...                                # RAY_ADDRESS=address: the pipeline runs on them
        nodes[1].kill()                    # SIGKILL the second node's raylet, agents, workers
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def clean_env(**extra) -> dict:
    """This environment without ``RAY_ADDRESS`` (a node or a run names its cluster), one
    OpenMP thread, and Ray's rule that a task asking for no GPU keeps the visible ones."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return dict(env, OMP_NUM_THREADS="1", MPLBACKEND="Agg",
                RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0", **extra)


class Node:
    """``ray start --block`` with ``cpus`` CPUs, in its own process group and temporary
    folder (short, under /tmp: Ray's socket paths must stay under 107 characters)."""

    def __init__(self, *args: str, cpus: int = 1):
        self.temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        self.log = open(Path(self.temp) / "start.log", "w")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--block", "--num-cpus",
             str(cpus), "--temp-dir", self.temp, "--disable-usage-stats", *args],
            env=clean_env(), stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def kill(self, sig=signal.SIGKILL) -> None:
        """Signal the node's whole process group (``ray start``, raylet, agents, workers)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.temp, ignore_errors=True)


def alive_nodes(address: str) -> int:
    """The cluster's live nodes, asked in a subprocess (the caller never joins it)."""
    code = ("import ray; ray.init(address=%r, log_to_driver=False, logging_level='ERROR');"
            "print(sum(n['Alive'] for n in ray.nodes()))" % address)
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True,
                          text=True, timeout=120)
    return int(proc.stdout.split()[-1]) if proc.returncode == 0 and proc.stdout else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def cluster(n_nodes: int, cpus: int = 1, timeout: float = 120):
    """A head node and ``n_nodes - 1`` more, ``cpus`` CPUs each: yields the address
    (for ``RAY_ADDRESS``) and the nodes once all of them are up; stops them after."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    nodes = [Node("--head", "--port", str(port), "--include-dashboard", "false", cpus=cpus)]
    try:
        deadline = time.monotonic() + timeout
        while (alive := alive_nodes(address)) < n_nodes:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{alive} of {n_nodes} Ray nodes started in {timeout} s "
                                   f"(logs: {[n.temp for n in nodes]})")
            if alive >= 1 and len(nodes) < n_nodes:
                nodes += [Node("--address", address, cpus=cpus)
                          for _ in range(n_nodes - len(nodes))]
            time.sleep(1)
        yield address, nodes
    finally:
        for node in reversed(nodes):
            node.close()
