"""Faults: a second run into the same folder, SIGKILL at random points, a full disk and a
read-only data folder (issue 12). Each case is recorded for docs/reliability.md."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


REPO = Path(__file__).resolve().parents[1]
STAGE_SCRIPTS = sorted(p.name for p in (REPO / "src").glob("[0-9][0-9]_*.py"))
#: Overrides that make every stage of the smoke profile take seconds on the tiny data.
FAST = ["baselines.models=[constant,starter]", "mae.epochs=1", "mae.seqs_per_epoch=512",
        "mae.n_val_subjects=1", "experts.meta_steps=1", "fusion.variants=[experts]",
        "fusion.steps=3", "fusion.n_inner_val=1", "rl.env_steps=40", "rl.learning_starts=20",
        "rl.sac_env_steps=40", "rl.sac_learning_starts=20", "rl.proto_steps=5",
        "rl.eval_every=20", "rl.n_inner_val=1", "ensemble.n_trials=3"]


def env():
    return dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1",
                MPLBACKEND="Agg")


def stage_cmd(script, data, out, subs, sets=FAST):
    cmd = [sys.executable, str(REPO / "src" / script), "--profile", "smoke", "--data-dir",
           str(data), "--out", str(out), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    if script.startswith("07_"):
        cmd += ["--submissions", str(subs), "--run-name", "run"]
    return cmd


def run_stage(script, data, out, subs, **kw):
    proc = subprocess.run(stage_cmd(script, data, out, subs), env=env(), capture_output=True,
                          text=True, **kw)
    assert proc.returncode == 0, f"{script}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc


def run_outputs(out: Path, subs: Path) -> dict[str, bytes]:
    """What a run produced that must not depend on interruptions: the submission, the
    LOPO table and every result's assembled arrays and scores."""
    latest = (subs / "latest.csv").read_bytes()  # the last complete submission
    # every complete submission (a stage 07 that finished before its kill wrote one too)
    assert all(f.read_bytes() == latest for f in subs.glob("*/submission.csv"))
    files = {"submission.csv": latest, "lopo.csv": (out / "lopo.csv").read_bytes()}
    for pattern in ("*.npy", "score.json"):
        for f in sorted(out.glob(f"[0-9][0-9]_*/*/{pattern}")):
            files[str(f.relative_to(out))] = f.read_bytes()
    return files


# ------------------------------------------------------------------ read-only data
def _namespaces_work() -> bool:
    """Whether ``unshare -rm`` (a user and mount namespace, no root needed where the
    kernel allows it) can make read-only bind mounts and small file systems here."""
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def read_only(data: Path) -> tuple[list[str], str]:
    """A command prefix under which ``data`` is read-only, and how: a read-only bind mount
    in a private mount namespace (enforced for root too), else ``chmod -R a-w`` (only
    enforced for other users than root), else nothing (said in the text)."""
    if _namespaces_work():
        return (["unshare", "-rm", "sh", "-c", 'mount --bind "$0" "$0" && '
                 'mount -o remount,ro,bind "$0" "$0" && exec "$@"', str(data)],
                "read-only bind mount")
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(data)], check=True)
        return [], "chmod -R a-w"
    return [], ""


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and folder under ``folder``: (size, mtime in ns, mode)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                         p.stat().st_mode)
            for p in sorted(folder.rglob("*"))} | {".": (0, folder.stat().st_mtime_ns, 0)}


@pytest.fixture(scope="module")
def straight(tiny_dir, tmp_path_factory):
    """Every stage once, uninterrupted, with the data folder read-only (see
    :func:`read_only`): the reference of the SIGKILL test and the read-only check.
    Returns (out, submissions, seconds per stage, how the data was read-only, data
    listing before, after)."""
    tmp = tmp_path_factory.mktemp("straight")
    out, subs = tmp / "out", tmp / "subs"
    before = snapshot(tiny_dir)
    prefix, how = read_only(tiny_dir)
    durations = {}
    try:
        for script in STAGE_SCRIPTS:
            t0 = time.perf_counter()
            proc = subprocess.run(prefix + stage_cmd(script, tiny_dir, out, subs), env=env(),
                                  capture_output=True, text=True)
            assert proc.returncode == 0, \
                f"{script} ({how or 'data writable'}): {proc.stderr[-3000:]}"
            durations[script] = time.perf_counter() - t0
    finally:
        if how.startswith("chmod"):
            subprocess.run(["chmod", "-R", "u+w", str(tiny_dir)], check=True)
    return out, subs, durations, how, before, snapshot(tiny_dir)


def test_pipeline_runs_on_a_read_only_data_folder_and_never_writes_there(
        straight, reliability):
    out, subs, durations, how, before, after = straight
    assert (subs / "run" / "submission.csv").is_file()
    # nothing under the data folder was created, removed, grown or touched
    assert after == before
    reliability("faults: read-only data",
                "every stage 00-07 run with the data folder unchanged: listing, sizes and "
                "mtimes compared before and after",
                "identical: no stage creates, removes or modifies a file in the data folder")
    if not how:
        pytest.skip("running as root without user namespaces: chmod does not stop root "
                    "from writing, so only the listing and mtimes were checked")
    reliability("faults: read-only data",
                "every stage 00-07 run with the data folder read-only (a read-only bind "
                "mount in a user namespace; chmod -R a-w where namespaces are missing)",
                "every stage exits 0 and writes a valid submission")


# ------------------------------------------------------------------ SIGKILL
def killed_and_resumed(tiny_dir, straight, tmp_path, reliability, points_per_stage, seed):
    """Rerun every stage in a new folder where each stage is first killed (SIGKILL, its
    whole process group) at ``points_per_stage`` seeded random times within its
    uninterrupted duration (``straight``), then rerun to the end; compare."""
    ref_out, ref_subs, durations = straight[:3]
    out, subs = tmp_path / "killed", tmp_path / "killed-subs"
    record = out / ".sleepemo.lock.json"
    rng = np.random.default_rng(seed)
    log = []
    for script in STAGE_SCRIPTS:
        for frac in np.sort(rng.uniform(0.05, 0.95, points_per_stage)):
            at = float(frac * durations[script])
            p = subprocess.Popen(stage_cmd(script, tiny_dir, out, subs), env=env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
            try:
                p.wait(timeout=at)
                log.append(f"{script} at {frac:.2f} x {durations[script]:.1f} s: "
                           f"finished before the kill (exit {p.returncode})")
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                log.append(f"{script} at {frac:.2f} x {durations[script]:.1f} s "
                           f"= {at:.1f} s: killed")
        stale = record.exists()  # killed after it took the lock
        proc = run_stage(script, tiny_dir, out, subs)
        assert ("taking over a stale lock" in proc.stderr) == stale, proc.stderr[-2000:]
        assert not record.exists(), f"{script} left its lock record behind"
    print(f"SIGKILL points (seed {seed}):\n  " + "\n  ".join(log))
    a, b = run_outputs(ref_out, ref_subs), run_outputs(out, subs)
    assert a.keys() == b.keys(), "\n".join(log)
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"not identical after kill and resume: {differ}\n" + "\n".join(log)
    assert sum(x.endswith("killed") for x in log) >= len(STAGE_SCRIPTS) // 2, \
        "too few stages were actually killed:\n" + "\n".join(log)
    n = "one seeded random time" if points_per_stage == 1 else \
        f"{points_per_stage} seeded random times"
    reliability("faults: SIGKILL",
                f"each stage 00-07 of a tiny smoke pipeline killed (SIGKILL, process group) at "
                f"{n} within its uninterrupted duration, then rerun",
                "submission.csv, lopo.csv and every result's arrays and score.json "
                "byte-identical to an uninterrupted run; the rerun takes over the stale lock "
                "and removes its record")


@pytest.mark.slow  # 80 s of fuzzing; the default suite kills stage 02 by SIGKILL mid-training
# (test_mae) and an Optuna worker (test_studies), and resumes stages 03-05 from fold
# checkpoints (their own tests)
def test_sigkill_at_random_points_resumes_to_identical_results(tiny_dir, straight, tmp_path,
                                                               reliability):
    killed_and_resumed(tiny_dir, straight, tmp_path, reliability, points_per_stage=1,
                       seed=12)


@pytest.mark.slow
def test_sigkill_at_several_points_per_stage(tiny_dir, straight, tmp_path, reliability):
    killed_and_resumed(tiny_dir, straight, tmp_path, reliability, points_per_stage=4,
                       seed=1212)


# ------------------------------------------------------------------ lock
HOLD = ("import sys, time; from sleepemo.pipeline import runlock\n"
        "with runlock.hold(sys.argv[1], 'holder-test', '03_experts'):\n"
        "    print('held', flush=True); time.sleep(600)\n")


def _holder(out: Path) -> subprocess.Popen:
    """A real process that takes the lock of ``out`` and keeps it (until killed)."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env=env(),
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_run_into_a_locked_folder_stops_at_once_naming_the_holder(
        tiny_dir, tmp_path, reliability):
    import socket

    out = tmp_path / "out"
    holder = _holder(out)
    try:
        t0 = time.perf_counter()
        proc = subprocess.run(stage_cmd("00_folds.py", tiny_dir, out, None), env=env(),
                              capture_output=True, text=True, timeout=120)
        waited = time.perf_counter() - t0
        assert not (out / "folds.json").exists() and not (out / "config.yaml").exists()
        # --no-lock: side-by-side stages on one folder on purpose (README: Scaling out)
        side = subprocess.run(stage_cmd("00_folds.py", tiny_dir, out, None) +
                              ["--no-lock"], env=env(), capture_output=True, text=True,
                              timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert side.returncode == 0 and (out / "folds.json").is_file(), side.stderr
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: {out} is in use by another run: pid {holder.pid} on "
                               f"{socket.gethostname()} (stage 03_experts of `holder-test`) "
                               "since 20"), lines[0]
    assert waited < 60
    reliability("faults: lock",
                "a stage started on an --out folder whose lock another live process holds "
                "(a real second process)",
                "exit 2 at once, one line naming the holder's pid, host, command/stage and "
                "start time; nothing written; --no-lock runs beside it on purpose")


def test_lock_left_by_a_killed_run_is_taken_over_with_a_log_line(tiny_dir, tmp_path,
                                                                reliability):
    out = tmp_path / "out"
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    record = json.loads((out / ".sleepemo.lock.json").read_text())
    assert record["pid"] == holder.pid  # left behind: the killed run could not remove it
    proc = run_stage("00_folds.py", tiny_dir, out, None)
    assert f"{out}: taking over a stale lock: its holder, pid {holder.pid} on " \
           f"{record['host']} (stage 03_experts of `holder-test`) since {record['since']}, " \
           "ended without releasing it" in proc.stderr
    assert (out / "folds.json").is_file() and not (out / ".sleepemo.lock.json").exists()
    reliability("faults: lock",
                "a lock record left by a run killed with SIGKILL",
                "the next run takes the folder over, logs one line naming the dead holder, "
                "and removes the record when it ends")


def test_run_sh_holds_the_lock_from_its_first_stage_to_its_last(tiny_dir, tmp_path,
                                                                reliability):
    from sleepemo.pipeline.runlock import FolderLocked, acquire

    out = tmp_path / "out"
    p = subprocess.Popen([str(REPO / "run.sh"), "--profile", "smoke", "--data-dir",
                          str(tiny_dir), "--out", str(out), "--stages", "00,01", "--set",
                          "baselines.models=[constant]"], env=env(), cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stages, refused = set(), 0
    record = out / ".sleepemo.lock.json"
    try:
        while p.poll() is None and not record.exists():  # set-up and data: not locked yet
            time.sleep(0.02)
        while p.poll() is None:
            try:
                acquire(out, "intruder", log=lambda m: None).release()
            except FolderLocked as exc:
                refused += 1
                assert "(stage " in str(exc) or "`sleepemo run " in str(exc)
                try:
                    rec = json.loads(record.read_text())
                except (OSError, ValueError):
                    continue  # between the acquire and the read: ended meanwhile
                # run.sh execs `python -m sleepemo run`: its pid holds the lock
                assert rec["pid"] == p.pid and rec["command"].startswith("sleepemo run ")
                stages.add(rec["stage"])
            else:
                # free while run.sh is alive: only after its last stage
                assert (out / "01_baselines" / "metrics.json").is_file(), \
                    "a second run could take the folder while run.sh was running"
            time.sleep(0.05)
    finally:
        log = p.communicate()[0]
    assert p.returncode == 0, log
    assert {"00_folds", "01_baselines"} <= stages, (stages, refused)
    assert not record.exists()
    reliability("faults: lock",
                "a second run polling the lock of ./run.sh's --out folder throughout a run "
                "of two stages (00, 01)",
                "every attempt refused until the last stage had finished (polled every "
                "50 ms, across the switch of stages); the record names run.sh's pid and "
                "each stage in turn; removed at the end")


WRITER = r"""
import sys, time
import pandas as pd
from sleepemo.data.submission import new_run_dir, write_submission
root, tag, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
while time.time() < start:
    time.sleep(0.001)
for i in range(20):
    df = pd.DataFrame({"id": [f"{tag}_{i}"], "prediction": [0.5]})
    write_submission(df, new_run_dir(root, "same-second-name"))
"""


def test_two_runs_writing_submissions_at_once_never_collide(tmp_path, reliability):
    root = tmp_path / "subs"
    start = time.time() + 2  # both processes start their writes at the same moment
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(root), tag, str(start)],
                              env=env(), stderr=subprocess.PIPE, text=True)
             for tag in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    assert len(folders) == 40  # every write got its own folder
    ids = sorted(pd.read_csv(d / "submission.csv")["id"].item() for d in folders)
    assert ids == sorted(f"{t}_{i}" for t in "ab" for i in range(20))
    assert pd.read_csv(root / "latest.csv")["id"].item() in ids
    assert not list(root.rglob(".tmp-*"))
    reliability("faults: lock",
                "two processes writing 20 submissions each, same run name, same moment",
                "40 distinct run folders, each with its own complete submission.csv; "
                "latest.csv is one of them; no temporary file left")


# ------------------------------------------------------------------ disk full
class _Filling:
    """A file object whose disk fills up after ``room`` bytes (then ENOSPC)."""

    def __init__(self, fh, room: int):
        self._fh, self._room = fh, room

    def write(self, data):
        if len(data) > self._room:
            self._fh.write(data[:self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def __iter__(self):
        return iter(self._fh)


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(folder, room)``: from now on, files opened for writing under
    ``folder`` fail with ENOSPC after ``room`` bytes (a simulated full disk)."""
    import builtins
    import io

    real_open = builtins.open

    def arm(folder: Path, room: int):
        def fake_open(file, mode="r", *args, **kwargs):
            fh = real_open(file, mode, *args, **kwargs)
            if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") \
                    and Path(file).resolve().is_relative_to(folder.resolve()):
                return _Filling(fh, room)
            return fh

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)

    return arm


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_full_disk_keeps_earlier_artefacts_checkpoints_and_submissions(tmp_path, full_disk,
                                                                       reliability):
    import torch

    from sleepemo.pipeline.artefacts import load_checkpoint, save_checkpoint
    from sleepemo.io import DiskFull, write_npy
    from sleepemo.data.submission import new_run_dir, write_submission

    out, subs = tmp_path / "out", tmp_path / "subs"
    write_npy(out / "01_baselines" / "starter" / "oof.npy", np.arange(10.0))
    save_checkpoint(out / "02_mae" / "ckpt" / "last.pt", {"w": torch.ones(3)}, "fp1")
    first = write_submission(pd.DataFrame({"id": ["1_0_0"], "prediction": [0.25]}),
                             new_run_dir(subs, "run"))
    before = _files(tmp_path)
    full_disk(tmp_path, room=100)
    cases = [
        ("a fold artefact (.npy) over an earlier one", out / "01_baselines" / "starter" / "oof.npy",
         lambda: write_npy(out / "01_baselines" / "starter" / "oof.npy", np.zeros(1000))),
        ("a PyTorch checkpoint over an earlier one", out / "02_mae" / "ckpt" / "last.pt",
         lambda: save_checkpoint(out / "02_mae" / "ckpt" / "last.pt",
                                 {"w": torch.zeros(1000)}, "fp2")),
        ("a new run's submission.csv beside an earlier run's", subs / "run-2" / "submission.csv",
         lambda: write_submission(pd.DataFrame({"id": [f"1_0_{t}" for t in range(200)],
                                                "prediction": 0.5}),
                                  new_run_dir(subs, "run"))),
    ]
    for what, dest, write in cases:
        with pytest.raises(DiskFull) as info:
            write()
        assert str(info.value) == (f"disk full (No space left on device): {dest} was not "
                                   "written; files written before are unchanged; free some "
                                   "space and rerun (finished work is kept)")
        reliability("faults: disk full",
                    f"ENOSPC (simulated: writes fail after 100 bytes) while writing {what}",
                    "DiskFull naming the file not written; earlier files byte-identical; "
                    "nothing under the final name, no temporary file left")
    after = _files(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) == set(before)  # no half-written file, no .tmp-* left
    assert (subs / "latest.csv").read_bytes() == first.read_bytes()
    assert load_checkpoint(out / "02_mae" / "ckpt" / "last.pt", "fp1") is not None


def test_stage_on_a_real_full_disk_says_so_in_one_line(straight, tiny_dir, tmp_path,
                                                       reliability):
    """Stage 07 with its submissions folder on a 64 KB tmpfs (user + mount namespace),
    filled up after an earlier submission."""
    import shutil

    if not _namespaces_work():
        pytest.skip("no user namespaces here (unshare -rm): the simulated full disk "
                    "(test_full_disk_keeps_earlier_artefacts...) still runs")
    out = tmp_path / "out"
    shutil.copytree(straight[0], out)
    subs, err, listing = tmp_path / "subs", tmp_path / "stage.err", tmp_path / "listing"
    subs.mkdir()
    earlier = "id,prediction\n1_0_0,0.250000\n"
    # in the namespace: the small file system, an earlier submission, the disk filled up,
    # the stage, then every file left (the tmpfs ends with the namespace)
    script = (f'mount -t tmpfs -o size=64k tmpfs "{subs}" && cd "{subs}" && mkdir earlier && '
              f'printf "{earlier}" > earlier/submission.csv && cp earlier/submission.csv '
              'latest.csv && { cat /dev/zero > ballast 2>/dev/null; true; } && '
              f'{{ "$@" 2> "{err}"; echo "exit $?"; find . ! -name ballast | sort | '
              'while read -r f; do [ -f "$f" ] && echo "$f $(cksum < "$f")" || echo "$f"; done; } '
              f'> "{listing}"')
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh",
                           *stage_cmd("07_submission.py", tiny_dir, out, subs)],
                          env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = err.read_text().strip().splitlines()
    assert lines == [f"error: disk full (No space left on device): {subs}/run/submission.csv "
                     "was not written; files written before are unchanged; free some space "
                     "and rerun (finished work is kept)"], err.read_text()[-3000:]
    (tmp_path / "earlier.csv").write_text(earlier)
    sums = subprocess.run(f'cksum < "{tmp_path}/earlier.csv"', shell=True, check=True,
                          capture_output=True, text=True).stdout.strip()
    assert listing.read_text().splitlines() == [
        "exit 2", ".", "./earlier", f"./earlier/submission.csv {sums}",
        f"./latest.csv {sums}"]
    reliability("faults: disk full",
                "stage 07 with its submissions folder on a real full file system (a 64 KB "
                "tmpfs in a user namespace, filled after an earlier submission)",
                "exit 2 and one line naming the submission that was not written; the "
                "earlier submission and latest.csv byte-identical; no new run folder, no "
                "half-written or temporary file")
