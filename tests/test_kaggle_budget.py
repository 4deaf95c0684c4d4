"""The kernel's stages within a time budget: stages that do not fit are skipped or
stopped with a message, and the submission stage still runs."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from sleepemo.kaggle.budget import RAN, SKIPPED, STOPPED, StageFailed, run_stages

SCRIPT = """import signal, sys, time
mode, seconds, mark = sys.argv[1], float(sys.argv[2]), sys.argv[3]
if mode == "stubborn":
    signal.signal(signal.SIGTERM, lambda *a: print("ignoring SIGTERM", flush=True))
print("start", mark, flush=True)
time.sleep(seconds)
open(mark, "w").write("done")
sys.exit(3 if mode == "fail" else 0)
"""


def stages(tmp_path: Path, plan: dict[str, tuple[str, float]]):
    """Stage scripts named as the plan's keys; each sleeps, then writes <name>.done."""
    script = tmp_path / "stage.py"
    script.write_text(SCRIPT)
    scripts = [tmp_path / name for name in plan]

    def command(path: Path):
        mode, seconds = plan[path.name]
        return [sys.executable, script, mode, seconds, tmp_path / f"{path.name}.done"]
    return scripts, command


def test_a_stage_past_the_budget_is_stopped_the_next_skipped_the_submission_runs(tmp_path):
    scripts, command = stages(tmp_path, {"00_folds.py": ("ok", 0), "01_slow.py": ("ok", 60),
                                         "02_next.py": ("ok", 0),
                                         "07_submission.py": ("ok", 0)})
    lines = []
    t0 = time.monotonic()
    records = run_stages(scripts, command, budget_s=4.0, reserve_s=1.5,
                         keep=["07_submission.py"], log=lines.append)
    assert time.monotonic() - t0 < 20
    assert [(r.stage, r.status) for r in records] == [
        ("00_folds.py", RAN), ("01_slow.py", STOPPED), ("02_next.py", SKIPPED),
        ("07_submission.py", RAN)]
    assert 1.5 <= records[1].seconds < 4.0
    assert not (tmp_path / "01_slow.py.done").exists()      # stopped before it finished
    assert not (tmp_path / "02_next.py.done").exists()
    assert (tmp_path / "07_submission.py.done").exists()
    assert "start" in "\n".join(lines)                       # the stage's output is shown
    assert any(line.startswith("01_slow.py: stopped after") for line in lines)
    assert any(line.startswith("02_next.py: skipped") for line in lines)


def test_a_stage_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    scripts, command = stages(tmp_path, {"01_stubborn.py": ("stubborn", 60),
                                         "07_submission.py": ("ok", 0)})
    lines = []
    t0 = time.monotonic()
    records = run_stages(scripts, command, budget_s=3.0, reserve_s=2.0, grace=0.5,
                         keep=["07_submission.py"], log=lines.append)
    assert time.monotonic() - t0 < 15
    assert [r.status for r in records] == [STOPPED, RAN]
    assert "ignoring SIGTERM" in lines


def test_a_failed_stage_stops_the_run_and_the_budget_is_ample_by_default(tmp_path):
    scripts, command = stages(tmp_path, {"00_folds.py": ("ok", 0), "01_bad.py": ("fail", 0),
                                         "07_submission.py": ("ok", 0)})
    with pytest.raises(StageFailed, match=r"01_bad.py failed \(exit status 3\)"):
        run_stages(scripts, command, keep=["07_submission.py"], log=lambda m: None)
    assert not (tmp_path / "07_submission.py.done").exists()
