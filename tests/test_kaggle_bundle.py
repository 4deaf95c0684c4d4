"""The offline Kaggle kernel: the bundle (datasets, kernel metadata) and the notebook run
as Kaggle would run it, with pip's network off."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from packaging.version import Version
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from sleepemo import COMPETITION_SLUG
from sleepemo.kaggle import bundle as kb
from sleepemo.kaggle.image import Distribution, KaggleImage, read_image, unmet
from sleepemo.data.submission import expected_from_data, validate_submission

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "kaggle_kernel.ipynb"
FAKE_KEY = "fake-kaggle-key-0123456789abcdef"
KAGGLE_VARS = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR")


def kaggle_config(folder: Path, username: str | None) -> dict:
    """An environment whose only Kaggle configuration is ``folder/kaggle.json`` with a fake
    key (none when ``username`` is None)."""
    folder.mkdir(parents=True, exist_ok=True)
    if username:
        (folder / "kaggle.json").write_text(json.dumps({"username": username,
                                                         "key": FAKE_KEY}))
    env = {k: v for k, v in os.environ.items() if k not in KAGGLE_VARS}
    return dict(env, KAGGLE_CONFIG_DIR=str(folder), PYTHONPATH=str(REPO / "src"))


def bundle_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "sleepemo.kaggle.bundle", *map(str, args)],
                          env=env, capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """``./run.sh kaggle-bundle --no-wheels`` with the user name from a kaggle.json."""
    tmp = tmp_path_factory.mktemp("kaggle")
    proc = bundle_cli("--out", tmp / "bundle", "--no-wheels",
                      env=kaggle_config(tmp / "config", "config-user"))
    assert proc.returncode == 0, proc.stderr
    assert "config-user" in proc.stdout and FAKE_KEY not in proc.stdout + proc.stderr
    return tmp / "bundle"


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


# --------------------------------------------------------------------------- the bundle
def test_metadata_attach_the_competition_and_both_datasets_with_internet_off(bundle):
    kernel = json.loads((bundle / "kernel" / "kernel-metadata.json").read_text())
    code = json.loads((bundle / "code" / "dataset-metadata.json").read_text())
    wheels = json.loads((bundle / "wheels" / "dataset-metadata.json").read_text())
    assert code["id"] == "config-user/sleepemo-code"
    assert wheels["id"] == "config-user/sleepemo-wheels"
    for meta in (code, wheels):  # what `kaggle datasets create` checks
        assert set(meta) >= {"id", "title", "licenses"}
        assert 6 <= len(meta["title"]) <= 50 and 6 <= len(meta["id"].split("/")[1]) <= 50
        assert len(meta["licenses"]) == 1 and meta["licenses"][0]["name"]
    assert kernel["id"] == "config-user/sleepemo-offline"
    # Kaggle derives the kernel's slug from its title
    assert kernel["title"].lower().replace(" ", "-") == kernel["id"].split("/")[1]
    assert kernel["enable_internet"] is False and kernel["enable_gpu"] is False
    assert kernel["docker_image_pinning_type"] == "original" and "machine_shape" not in kernel
    assert kernel["language"] == "python" and kernel["kernel_type"] == "notebook"
    assert kernel["competition_sources"] == [COMPETITION_SLUG]
    assert kernel["dataset_sources"] == [code["id"], wheels["id"]]
    assert (bundle / "kernel" / kernel["code_file"]).read_bytes() == NOTEBOOK.read_bytes()


def test_code_dataset_holds_the_package_scripts_profiles_and_settings(bundle):
    code = bundle / "code"
    for script in sorted((REPO / "src").glob("[0-9][0-9]_*.py")):
        assert (code / "src" / script.name).read_bytes() == script.read_bytes()
    for f in sorted((REPO / "src" / "sleepemo").rglob("*.py")):
        rel = f.relative_to(REPO)
        assert (code / rel).read_bytes() == f.read_bytes(), rel
    # the profiles travel inside the package (package data)
    assert sorted(p.name for p in (code / "src" / "sleepemo" / "profiles").iterdir()) == \
        sorted(p.name for p in (REPO / "src" / "sleepemo" / "profiles").glob("*.yaml"))
    assert not (code / "configs").exists()
    assert (code / "requirements.txt").read_bytes() == (REPO / "requirements.txt").read_bytes()
    assert not list(code.rglob("__pycache__")) and not list(code.rglob("*.pyc"))
    assert json.loads((code / kb.SETTINGS).read_text()) == {"profile": "quick", "sets": []}


def test_wheels_dataset_pins_what_kaggle_lacks_at_our_versions(bundle):
    lines = (bundle / "wheels" / kb.WHEELS_LIST).read_text().splitlines()
    req = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.split("#")[0].strip().split("==")
            req[name] = version
    assert lines == [f"{n}=={req[n]}" for n in kb.KAGGLE_LACKS]
    assert not list((bundle / "wheels").glob("*.whl"))  # --no-wheels


def test_bundle_holds_no_credentials_and_no_path_of_this_machine(bundle, tmp_path):
    outside = {str(REPO), str(Path.home()), sys.prefix, str(bundle.parent),
               str(tmp_path.parent)}
    for f in files(bundle):
        assert not f.is_symlink(), f
        assert bundle in f.resolve().parents
        assert f.name not in ("kaggle.json", "access_token"), f
        data = f.read_bytes()
        assert FAKE_KEY.encode() not in data, f
        for path in outside:
            assert path.encode() not in data, (f, path)


def test_user_option_placeholder_and_bad_input(tmp_path):
    proc = bundle_cli("--out", tmp_path / "a", "--no-wheels", "--user", "someone",
                      env=kaggle_config(tmp_path / "config", "config-user"))
    assert proc.returncode == 0, proc.stderr
    kernel = json.loads((tmp_path / "a" / "kernel" / "kernel-metadata.json").read_text())
    assert kernel["dataset_sources"][0] == "someone/sleepemo-code"
    # no user name anywhere: the placeholder, and the output says what to edit
    proc = bundle_cli("--out", tmp_path / "b", "--no-wheels", "--gpu", "--profile", "smoke",
                      "--set", "seed=3", "--time-budget", "3600", "--stages", "00", "01", "07",
                      env=kaggle_config(tmp_path / "empty", None))
    assert proc.returncode == 0, proc.stderr
    assert f"replace {kb.PLACEHOLDER_USER}" in proc.stdout
    kernel = json.loads((tmp_path / "b" / "kernel" / "kernel-metadata.json").read_text())
    assert kernel["id"] == f"{kb.PLACEHOLDER_USER}/sleepemo-offline"
    assert kernel["enable_gpu"] is True and kernel["enable_internet"] is False
    assert kernel["machine_shape"] == "NvidiaTeslaT4"  # GPU T4 x2; the P100 lacks kernels
    assert json.loads((tmp_path / "b" / "code" / kb.SETTINGS).read_text()) == \
        {"profile": "smoke", "sets": ["seed=3"], "time_budget_s": 3600.0,
         "stages": ["00", "01", "07"]}
    for args, message in ((["--user", "a b"], "Kaggle user name 'a b'"),
                          (["--set", "nosuchkey=1"], "nosuchkey"),
                          (["--time-budget", "0"], "--time-budget 0: must be > 0"),
                          (["--stages", "00", "09"], "--stages 09: no such stage")):
        proc = bundle_cli("--out", tmp_path / "c", "--no-wheels", *args,
                          env=kaggle_config(tmp_path / "empty", None))
        assert proc.returncode == 2 and proc.stderr.startswith("error: ")
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "c").exists()


def test_an_earlier_bundle_is_replaced_any_other_folder_refused(tmp_path):
    out = tmp_path / "bundle"
    kb.build_bundle(out, user="first", wheels=False, log=lambda m: None)
    kb.build_bundle(out, user="second", wheels=False, log=lambda m: None)
    assert kb.read_bundle(out)["user"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # nothing left aside
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not replaced"):
        kb.build_bundle(precious, user="x", wheels=False, log=lambda m: None)
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]
    with pytest.raises(kb.BundleError, match="inside"):
        kb.build_bundle(REPO / "src" / "bundle", user="x", wheels=False, log=lambda m: None)


def test_requirements_must_pin_every_wheel(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("pyriemann>=0.12\nloguru==0.7.3  # comment\n")
    with pytest.raises(kb.BundleError, match=f"{req}: pyriemann not pinned"):
        kb.pinned_versions(req, ["pyriemann", "loguru"])
    assert kb.pinned_versions(req, ["loguru"]) == {"loguru": "0.7.3"}


# --------------------------------------------------------------------------- the closure
def test_every_bundled_requirement_is_met_on_kaggles_image():
    """What `pip install --no-index` of the wheels dataset checks on Kaggle: every
    Requires-Dist of every bundled package (markers for the image's Python 3.12 on Linux
    x86_64), versions included, is met by the bundle or the image; and every package the
    kernel imports is in one of them. The installed packages stand for the wheels: this
    environment holds exactly the pins."""
    pins = kb.pinned_versions(REPO / "requirements.txt")
    dists = kb.installed_bundle(pins)
    assert dists is not None, "the pinned packages are not all installed at their pins"
    assert kb.closure_problems(dists) == []


def test_the_closure_check_names_what_the_kernel_would_miss():
    image = read_image()
    assert image.python == "3.12" and "docker-python" in image.header["source"]
    assert image.version("torch") is not None and image.version("pyriemann") is None
    pins = kb.pinned_versions(REPO / "requirements.txt")
    dists = kb.installed_bundle(pins)
    # the bundle before array-api-extra was added: pyriemann's dependency is missing
    without = [d for d in dists if d.name != "array-api-extra"]
    assert kb.closure_problems(without, imports=[]) == [
        "pyriemann 0.12 requires array-api-extra>=0.6: neither Kaggle's image nor the "
        "bundle has it"]
    # a version the image has but the specifier refuses; a marker for another platform
    old = KaggleImage({**image.packages, "gymnasium": Version("0.26.0")}, image.header)
    fake = Distribution("demo", "1.0", ("gymnasium>=0.29.1", "pywin32; sys_platform == 'win32'",
                                         "mne[hdf5]>=1.9", "nope; python_version < '3.12'"))
    assert unmet([fake], old) == [
        "demo 1.0 requires gymnasium>=0.29.1: Kaggle's image has 0.26.0"]
    # the bundle's version replaces the image's
    assert unmet([fake, Distribution("gymnasium", "1.4.0", ())], old) == []
    assert kb.closure_problems(dists, imports=["pyriemann", "torch", "no-such-package"]) == [
        "no-such-package: the kernel imports it, and neither Kaggle's image nor the bundle "
        "has it"]


def test_a_bundle_that_would_not_install_on_kaggle_is_refused(tmp_path, monkeypatch):
    """The build reads the downloaded wheels' METADATA: a wheel whose dependency is
    missing stops the build, and nothing is written."""
    monkeypatch.setattr(subprocess, "run", FakePip(
        requires={"loguru": ["sleepemo-no-such-dependency>=1"]}))
    with pytest.raises(kb.BundleError, match="loguru 0.7.3 requires "
                                             "sleepemo-no-such-dependency>=1: neither"):
        kb.build_bundle(tmp_path / "bundle", user="u", log=lambda m: None)
    assert not (tmp_path / "bundle").exists()


# --------------------------------------------------------------------------- wheels
def fake_wheel(dest: Path, name: str, version: str, requires=()) -> Path:
    """A wheel with only its METADATA: what the bundle's closure check reads."""
    dist = f"{name.replace('-', '_')}-{version}"
    wheel = dest / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{dist}.dist-info/METADATA",
                    f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                    + "".join(f"Requires-Dist: {r}\n" for r in requires))
    return wheel


class FakePip:
    """Stands in for subprocess.run: records the pip commands and writes the wheel
    pip would have downloaded (or fails), so that no request leaves the machine."""

    def __init__(self, fail_on=None, write=True, requires=None):
        self.calls, self.fail_on, self.write = [], fail_on, write
        self.requires = requires or {}

    def __call__(self, cmd, **kw):
        self.calls.append(cmd)
        req = cmd[-1]
        name, version = req.split("==")
        if name == self.fail_on:
            return subprocess.CompletedProcess(cmd, 1, "", f"ERROR: No matching "
                                               f"distribution found for {req}\n")
        if self.write:
            fake_wheel(Path(cmd[cmd.index("--dest") + 1]), name, version,
                       self.requires.get(name, ()))
        return subprocess.CompletedProcess(cmd, 0, "", "")


def test_wheels_are_downloaded_one_per_package_binary_for_kaggles_python(tmp_path,
                                                                          monkeypatch):
    fake = FakePip()
    monkeypatch.setattr(subprocess, "run", fake)
    out = kb.build_bundle(tmp_path / "bundle", user="u", log=lambda m: None)
    pins = kb.pinned_versions(REPO / "requirements.txt")
    assert [c[-1] for c in fake.calls] == [f"{n}=={v}" for n, v in pins.items()]
    for cmd in fake.calls:
        assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
        assert cmd[cmd.index("--only-binary") + 1] == ":all:" and "--no-deps" in cmd
        assert cmd[cmd.index("--python-version") + 1] == read_image().python == "3.12"
        assert cmd[cmd.index("--platform") + 1].startswith("manylinux")
        assert "x86_64" in cmd[cmd.index("--platform") + 1]
    wheels = sorted(p.name for p in (out / "wheels").glob("*.whl"))
    assert len(wheels) == len(pins) and sorted(kb.read_bundle(out)["wheels"]) == wheels


def test_a_failed_or_empty_download_stops_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", FakePip(fail_on="einx"))
    with pytest.raises(kb.BundleError, match=r"pip download einx==\S+ failed \(exit 1\): "
                                             "ERROR: No matching distribution"):
        kb.build_bundle(tmp_path / "bundle", user="u", log=lambda m: None)
    assert not (tmp_path / "bundle").exists()
    monkeypatch.setattr(subprocess, "run", FakePip(write=False))
    with pytest.raises(kb.BundleError, match="left no wheel of pyriemann"):
        kb.build_bundle(tmp_path / "bundle", user="u", log=lambda m: None)


# --------------------------------------------------------------------------- the kernel
def test_the_repository_notebook_is_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def lay_out(tmp: Path, bundle: Path, data: Path) -> tuple[Path, Path]:
    """The bundle's datasets and the competition data where Kaggle mounts them."""
    inputs, work = tmp / "input", tmp / "working"
    shutil.copytree(bundle / "code", inputs / "sleepemo-code")
    shutil.copytree(bundle / "wheels", inputs / "sleepemo-wheels")
    (inputs / COMPETITION_SLUG).symlink_to(data, target_is_directory=True)
    work.mkdir()
    return inputs, work


def offline(monkeypatch, tmp: Path, inputs: Path, work: Path, **settings) -> None:
    """The kernel's environment: the simulated Kaggle folders, pip without network (no
    index, no configuration, an empty find-links folder), no PYTHONPATH."""
    empty = tmp / "no-wheels-here"
    empty.mkdir()
    for key in [k for k in os.environ if k.startswith(("SLEEPEMO_", "PIP_"))]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    for key, value in {"SLEEPEMO_KAGGLE_INPUT": inputs, "SLEEPEMO_KAGGLE_WORKING": work,
                       "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull,
                       "PIP_FIND_LINKS": empty, "OMP_NUM_THREADS": "1",
                       **settings}.items():
        monkeypatch.setenv(key, str(value))


def execute(nb, work: Path):
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(work)}}).execute()
    return nb


def output_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.output_type == "stream")


def test_notebook_runs_offline_and_writes_a_valid_submission(bundle, smoke_dir, tmp_path,
                                                             monkeypatch):
    inputs, work = lay_out(tmp_path, bundle, smoke_dir)
    offline(monkeypatch, tmp_path, inputs, work, SLEEPEMO_PROFILE="smoke",
            SLEEPEMO_STAGES="00 01 07", SLEEPEMO_SET="baselines.models=[second_place]")
    nb = execute(nbformat.read(bundle / "kernel" / "kaggle_kernel.ipynb", as_version=4),
                 work)
    text = [output_text(c) for c in nb.cells if c.cell_type == "code"]
    install = next(t for t in text if "pip install" in t)
    assert "--no-index" in install
    for name, version in kb.pinned_versions(REPO / "requirements.txt").items():
        assert f"Requirement already satisfied: {name}=={version}" in install
    log = "".join(text)
    assert f"sleepemo: {inputs / 'sleepemo-code' / 'src' / 'sleepemo'}" in log
    assert "submitted model: second_place" in log
    assert "packages the stages import are as the bundle was checked" in log and "| time budget: 41400 s" in log
    for stage in ("00_folds.py: ran", "01_baselines.py: ran", "07_submission.py: ran"):
        assert stage in log
    sub = work / "submission.csv"
    validate_submission(sub, expected_from_data(smoke_dir))
    assert sub.read_bytes() == (work / "submissions" / "latest.csv").read_bytes()
    assert json.loads((work / "summary.json").read_text())["model"] == "second_place"
    assert sorted(p.name for p in (work / "output" / "smoke").glob("0*")) == \
        ["00_folds", "01_baselines", "07_submission"]


def test_install_cell_fails_offline_when_a_package_is_missing(bundle, smoke_dir, tmp_path,
                                                              monkeypatch):
    inputs, work = lay_out(tmp_path, bundle, smoke_dir)
    with open(inputs / "sleepemo-wheels" / kb.WHEELS_LIST, "a") as fh:
        fh.write("sleepemo-no-such-package==1.0\n")
    offline(monkeypatch, tmp_path, inputs, work)
    nb = nbformat.read(bundle / "kernel" / "kaggle_kernel.ipynb", as_version=4)
    with pytest.raises(CellExecutionError, match="pip failed"):
        execute(nb, work)
    install = next(c for c in nb.cells if "pip install" in output_text(c))
    assert "No matching distribution found for sleepemo-no-such-package" in \
        output_text(install)
    assert not (work / "output").exists()  # no stage ran


def test_notebook_runs_every_stage_script_in_order_by_default(bundle, smoke_dir, tmp_path,
                                                              monkeypatch):
    """Stand-in stage scripts (plus a 06 that the notebook has never heard of) record how
    they are called; the notebook runs up to and including its stage cell."""
    inputs, work = lay_out(tmp_path, bundle, smoke_dir)
    src = inputs / "sleepemo-code" / "src"
    calls = tmp_path / "calls.txt"
    names = sorted({p.name for p in src.glob("[0-9][0-9]_*.py")} | {"06_ensemble.py"})
    for name in names:
        (src / name).write_text(
            "import sys\n"
            f"with open({str(calls)!r}, 'a') as fh:\n"
            "    fh.write(' '.join([__file__.rsplit('/', 1)[1], *sys.argv[1:]]) + '\\n')\n")
    offline(monkeypatch, tmp_path, inputs, work, SLEEPEMO_SET="seed=2 'baselines.models=[a, b]'")
    nb = nbformat.read(bundle / "kernel" / "kaggle_kernel.ipynb", as_version=4)
    stage_cell = next(i for i, c in enumerate(nb.cells) if "run_stages(" in c.source)
    nb.cells = nb.cells[:stage_cell + 1]
    execute(nb, work)
    lines = calls.read_text().splitlines()
    assert [line.split()[0] for line in lines] == names
    data = inputs / COMPETITION_SLUG
    for line in lines:
        assert (f"--profile quick --data-dir {data} --out {work / 'output' / 'quick'} "
                "--no-progress --set seed=2 --set baselines.models=[a, b]") in line
        assert ("--submissions" in line) == line.startswith("07_")


def test_the_kernel_reports_packages_that_differ_from_the_checked_image():
    """The notebook's environment report: here numpy is the image's version and pyriemann
    the bundle's, scikit-learn is not (1.9 here, 1.6.1 in the image)."""
    from sleepemo.kaggle.image import drift

    lines = drift(read_image(), ["numpy", "pyriemann", "scikit-learn"], "pyriemann==0.12\n")
    assert lines[0].startswith("2 of the 3 packages the stages import are as the bundle "
                               "was checked")
    assert lines[1:] == ["  scikit-learn: 1.9.1 here, 1.6.1 when the bundle was checked"]
    assert kb.kernel_imports()[:2] == ["torch", "torchvision"]
    assert "kaggle" not in kb.kernel_imports() and "pyriemann" in kb.kernel_imports()
