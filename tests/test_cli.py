"""The one entry point (``sleepemo``, ``python -m sleepemo``, ``./run.sh``), the run log,
and the package as pip installs it."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from sleepemo.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]


def env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1",
                MPLBACKEND="Agg", **extra)


def sleepemo(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sleepemo", *map(str, args)], env=env(),
                          capture_output=True, text=True, cwd=kw.pop("cwd", REPO), **kw)


def test_help_lists_every_command():
    proc = sleepemo("--help")
    assert proc.returncode == 0, proc.stderr
    listed = re.findall(r"^  (\S+)  ", proc.stdout, re.M)
    assert listed == list(COMMANDS) == ["run", "plan", "stage", "predict", "submit",
                                        "kaggle-bundle", "kaggle", "data"]
    proc = sleepemo()
    assert proc.returncode == 2 and "commands:" in proc.stderr
    proc = sleepemo("nope")
    assert proc.returncode == 2 and "unknown command 'nope'" in proc.stderr
    for command in ("run", "stage", "predict", "submit", "kaggle-bundle", "kaggle", "data"):
        proc = sleepemo(command, "--help")
        assert proc.returncode == 0 and "usage:" in proc.stdout, (command, proc.stderr)


def test_plan_is_a_command():
    proc = sleepemo("plan", "--help")
    assert proc.returncode == 0 and "--profile" in proc.stdout, proc.stderr


def test_every_stage_has_an_entry_and_a_command():
    from sleepemo.cli import stage_entry
    from sleepemo.pipeline.runner import parser, stage_command
    from sleepemo.pipeline.stage import STAGES

    args = parser().parse_args(["--profile", "smoke", "--set", "seed=1", "--submissions",
                                "subs", "--quiet"])
    for s in STAGES:
        body, add_arguments, doc = stage_entry(s.number)
        assert callable(body) and doc
        cmd = stage_command(s, args, Path("data"), Path("out"))
        assert cmd[:5] == [sys.executable, "-m", "sleepemo", "stage", s.name]
        assert cmd[5:13] == ["--profile", "smoke", "--data-dir", "data", "--out", "out",
                             "--set", "seed=1"] and cmd[-1] == "--quiet"
        assert ("--submissions" in cmd) == (s.name == "submission")


# ------------------------------------------------------------------ run.sh
def test_run_sh_help_prints_the_usage_before_any_set_up(tmp_path):
    """In a copy of run.sh whose folder has no .venv, outside any virtual environment
    (where a run would create .venv and install the requirements)."""
    shutil.copy2(REPO / "run.sh", tmp_path / "run.sh")
    clean = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    for args in (["--help"], ["-h"], ["--profile", "smoke", "--help"]):
        proc = subprocess.run([str(tmp_path / "run.sh"), *args], env=clean, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("sleepemo: one command for the whole pipeline")
        assert "./run.sh test [PYTEST ARGS]" in proc.stdout and "set -euo" not in proc.stdout
        assert "creating .venv" not in proc.stdout + proc.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run.sh"], args


# ------------------------------------------------------------------ sleepemo run
@pytest.fixture(scope="module")
def folds_run(smoke_dir, tmp_path_factory):
    """``sleepemo run --profile smoke --stages 00``, then again with --quiet into the
    same folder."""
    out = tmp_path_factory.mktemp("run") / "out"
    loud = sleepemo("run", "--profile", "smoke", "--data-dir", smoke_dir, "--out", out,
                    "--stages", "00", timeout=600)
    assert loud.returncode == 0, loud.stdout[-2000:] + loud.stderr[-2000:]
    first_log = (out / "run.log").read_text()
    quiet = sleepemo("run", "--profile", "smoke", "--data-dir", smoke_dir, "--out", out,
                     "--stages", "00", "--quiet", timeout=600)
    assert quiet.returncode == 0, quiet.stdout[-2000:] + quiet.stderr[-2000:]
    return out, loud, quiet, first_log


def test_run_logs_the_driver_and_the_stage_to_run_log(folds_run):
    out, loud, _, log = folds_run
    lines = log.splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert all(re.match(rf"{stamp} \[(run|00_folds)\] (DEBUG|INFO|WARNING|ERROR) ", line)
               for line in lines), log
    # the driver's lines and the stage's, in order: the stage's own lines between the
    # driver's start and end of stage
    text = [re.sub(rf"^{stamp} \[(\S+)\] .{{7}} ", r"[\1] ", line) for line in lines]
    start = text.index("[run] == 00_folds")
    wrote = next(i for i, t in enumerate(text) if t.startswith("[00_folds] wrote ")
                 and "folds.json: " in t)
    end = next(i for i, t in enumerate(text) if re.fullmatch(r"\[run\]    00_folds: \d+ s", t))
    assert start < wrote < end
    assert re.fullmatch(r"\[run\] == total wall time: \d+ s \(after set-up\)", text[-1])
    assert "[00_folds] reading .mat files: " in "\n".join(text)  # a bar's final line
    assert not any("\r" in line for line in lines)
    # the console got the same lines, without the log's prefixes
    assert "== 00_folds" in loud.stdout and "wrote " in loud.stdout
    assert "[run]" not in loud.stdout
    assert not (out / ".sleepemo.lock.json").exists()  # the driver's lock, released


def test_quiet_keeps_the_console_for_warnings_and_the_file_for_everything(folds_run):
    out, loud, quiet, first = folds_run
    assert quiet.stdout == "" and quiet.stderr == ""
    assert len(loud.stdout) > 0
    log = (out / "run.log").read_text()
    assert log.startswith(first)  # appended
    second = log[len(first):]
    assert "[run] INFO    == 00_folds" in second and "[00_folds] INFO    " in second
    assert "--quiet" in second  # the stage's command line, logged at debug level


def test_run_refuses_an_unknown_stage_and_a_missing_data_folder(tmp_path):
    proc = sleepemo("run", "--stages", "00,42")
    assert proc.returncode == 2 and "--stages: no stage 42 (stages: 00 01" in proc.stderr
    proc = sleepemo("run", "--profile", "smoke", "--data-dir", tmp_path / "missing",
                    "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert f"error: data folder {tmp_path / 'missing'} not found" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_a_refused_run_writes_nothing_into_the_holders_folder(smoke_dir, tmp_path):
    from sleepemo.pipeline.runlock import acquire

    out = tmp_path / "out"
    holding = acquire(out, "holder-test", log=lambda m: None)
    try:
        proc = sleepemo("run", "--profile", "smoke", "--data-dir", smoke_dir, "--out", out,
                        "--stages", "00", timeout=300)
    finally:
        holding.release()
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: {out} is in use by another run: pid {os.getpid()}")
    assert not (out / "run.log").exists() and not (out / "folds.json").exists()


def test_a_failing_stage_stops_the_run_with_its_exit_code(tmp_path):
    (tmp_path / "data" / "training").mkdir(parents=True)
    proc = sleepemo("run", "--profile", "smoke", "--data-dir", tmp_path / "data", "--out",
                    tmp_path / "out", "--stages", "00,01", "--verbose", timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    # --verbose: the debug lines on the console too (each stage's command)
    assert f"$ {sys.executable} -m sleepemo stage folds --profile smoke" in proc.stdout
    assert "stage 00_folds: sleepemo stage folds --profile smoke" in proc.stdout
    assert "missing folder 'testing/'" in proc.stderr
    assert "00_folds failed (exit 2)" in proc.stderr and "== 01_baselines" not in proc.stdout
    log = (tmp_path / "out" / "run.log").read_text()
    assert "[00_folds] ERROR   error: " in log and "[run] ERROR      00_folds failed" in log


# ------------------------------------------------------------------ packaging
def _pins(lines) -> dict[str, str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{line}: not pinned with =="
        name = canonicalize_name(req.name)
        assert name not in pins, f"{name} listed twice"
        pins[name] = spec.version
    return pins


def test_pyproject_and_requirements_agree_on_every_pin():
    """requirements.txt (what ./run.sh installs) = the runtime dependencies + the test
    extra of pyproject.toml, version for version; the dev extra is not installed by run.sh."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = _pins(project["dependencies"])
    extras = {k: _pins(v) for k, v in project["optional-dependencies"].items()}
    assert set(extras) == {"test", "dev"}
    required = _pins((REPO / "requirements.txt").read_text().splitlines())
    assert not set(runtime) & set(extras["test"])
    assert {**runtime, **extras["test"]} == required
    assert not set(extras["dev"]) & set(required)
    assert project["scripts"] == {"sleepemo": "sleepemo.cli:main"}


def _install(tmp_path: Path, editable: bool) -> tuple[Path, Path]:
    """A new venv (no pip of its own, no dependencies) with sleepemo installed from a copy
    of the project's files, by this interpreter's pip and setuptools, offline."""
    src = tmp_path / "project"
    (src / "src").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "src" / "sleepemo", src / "src" / "sleepemo",
                    ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = sysconfig.get_paths()["purelib"]  # pip, setuptools and the dependencies
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", "--no-deps", "--no-index",
                           "--no-build-isolation", *(["-e"] if editable else []), str(src)],
                          env=dict(os.environ, PYTHONPATH=site), capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return venv, src


@pytest.mark.parametrize("editable", [True, False], ids=["editable", "wheel"])
def test_an_installed_package_has_the_command_and_finds_its_profiles(tmp_path, editable):
    venv, src = _install(tmp_path, editable)
    work = tmp_path / "work"
    work.mkdir()
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # the console script, with the standard library only
    proc = subprocess.run([str(venv / "bin" / "sleepemo"), "--help"], env=clean, cwd=work,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.findall(r"^  (\S+)  ", proc.stdout, re.M) == list(COMMANDS)
    # the profiles, through the package (the dependencies from this interpreter)
    site = sysconfig.get_paths()["purelib"]
    code = ("import sleepemo, sleepemo.config as c; "
            "print(sleepemo.__file__); print(c.CHECKOUT); print(c.project_dir()); "
            "print(sorted(p.name for p in c.PROFILES_DIR.glob('*.yaml'))); "
            "print([c.load_config(p).profile for p in c.PROFILES])")
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code],
                          env=dict(clean, PYTHONPATH=site), cwd=work, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    where, checkout, project, files, loaded = proc.stdout.splitlines()
    assert files == "['full.yaml', 'quick.yaml', 'smoke.yaml']"
    assert loaded == "['smoke', 'quick', 'full']"
    if editable:  # the copy is a checkout: its folders as before
        assert Path(where) == src / "src" / "sleepemo" / "__init__.py"
        assert checkout == "True" and Path(project) == src
    else:  # an installed copy: the folders of the current directory
        assert Path(where).is_relative_to(venv) and checkout == "False"
        assert Path(project) == work
