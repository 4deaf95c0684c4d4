"""sleepemo.kaggle.submit: submit, poll, log. The Kaggle API is a fake that hands out the real
kagglesdk objects (so the attribute names are the installed package's); no socket may be
opened and no real credential is read."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kagglesdk.competitions.types.competition_api_service import (
    ApiCreateSubmissionResponse, ApiSubmission)
from kagglesdk.competitions.types.submission_status import SubmissionStatus

from sleepemo import COMPETITION_SLUG
from sleepemo.kaggle import submit as sm

REPO = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-kaggle-key-0123456789"
KAGGLE_VARS = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR",
               "XDG_CONFIG_HOME")
REF = 4242
PENDING, COMPLETE, ERROR = (SubmissionStatus.PENDING, SubmissionStatus.COMPLETE,
                            SubmissionStatus.ERROR)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Empty HOME, no Kaggle variables, the real kaggle package unimportable, no socket,
    and a fake clock: ``_sleep`` advances ``_now`` and records the pauses."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in KAGGLE_VARS:
        monkeypatch.delenv(var, raising=False)
    for name in ("kaggle", "kaggle.api", "kaggle.api.kaggle_api_extended"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it raises ImportError

    opened = []

    class NoSocket:
        def __init__(self, *args, **kwargs):
            opened.append(args)
            raise AssertionError("a test tried to open a socket")

    monkeypatch.setattr(socket, "socket", NoSocket)
    clock = {"t": 0.0, "sleeps": []}
    monkeypatch.setattr(sm, "_now", lambda: clock["t"])

    def sleep(seconds):
        clock["sleeps"].append(seconds)
        clock["t"] += seconds

    monkeypatch.setattr(sm, "_sleep", sleep)
    yield clock
    assert not opened, "a socket was opened"


def set_credentials(monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)


def submission(ref, status, score="", description="", error=""):
    s = ApiSubmission()
    s.ref, s.status, s.public_score = ref, status, score
    s.description, s.error_description = description, error
    s.date = datetime(2026, 11, 30, 12, 0, 0)
    return s


class FakeKaggle:
    """``competition_submit`` registers submission REF; ``competition_submissions``
    lists it with the next (status, score) of ``script`` (the last one repeats), after
    another scored submission with the same description (a teammate's, newer) that must
    never be taken for it."""

    COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE = "Could not submit to competition"

    def __init__(self, script, error="", refuse=None):
        self.script, self.error, self.refuse = list(script), error, refuse
        self.submitted, self.polls = [], 0
        self.description = "an earlier upload"

    def competition_submit(self, file_name, message, competition, quiet=False):
        if self.refuse:
            raise self.refuse
        self.submitted.append({"file": file_name, "message": message,
                               "competition": competition,
                               "rows": pd.read_csv(file_name, dtype={"id": str})})
        self.description = message
        response = ApiCreateSubmissionResponse()
        response.ref, response.message = REF, "Successfully submitted"
        return response

    def competition_submissions(self, competition):
        assert competition == COMPETITION_SLUG
        status, score = self.script[min(self.polls, len(self.script) - 1)]
        self.polls += 1
        return [submission(17, COMPLETE, "0.99000", self.description),
                submission(REF, status, score, self.description,
                           self.error if status == ERROR else "")]


@pytest.fixture
def use_api(monkeypatch):
    """Install a fake Kaggle API; returns it."""
    def install(api):
        monkeypatch.setattr(sm, "kaggle_api", lambda: api)
        return api
    return install


def make_run(subs: Path, name="20261130-120000-quick-mae_probe", model="mae_probe",
             lopo=0.5209, local=0.525028, nested=None, artefacts=None) -> Path:
    """A finished run folder as stage 07 leaves it (summary.json, submission.csv)."""
    run = subs / name
    run.mkdir(parents=True)
    (run / "submission.csv").write_text("id,prediction\n1_0_0,0.500000\n")
    artefacts = artefacts or subs.parent / "out"
    if nested is not None:
        (artefacts / "06_ensemble").mkdir(parents=True)
        (artefacts / "06_ensemble" / "metrics.json").write_text(json.dumps(
            {"nested": nested, "stage_seconds": 1.0}))
    summary = {"model": model, "stage": "mae", "lopo_window_auc": lopo,
               "submission": str(run / "submission.csv"), "rows": 1,
               "artefacts": str(artefacts), "data_dir": "input/synthetic",
               "profile": "quick"}
    if local is not None:
        summary["local_leaderboard"] = local
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def run_main(*args):
    return sm.main([str(a) for a in args])


# ------------------------------------------------------------------ polling and the row
def test_pending_then_complete_logs_the_public_score(tmp_path, use_api, isolated,
                                                      monkeypatch, capsys):
    set_credentials(monkeypatch)
    subs = tmp_path / "subs"
    make_run(subs, name="20261129-080000-quick-riemann", model="riemann")
    run = make_run(subs, nested=0.5312)  # the newest run: the default
    api = use_api(FakeKaggle([(PENDING, ""), (PENDING, ""), (COMPLETE, "0.55700")]))
    assert run_main("--submissions", subs, "--interval", 10, "--max-interval", 12) == 0
    out, err = capsys.readouterr()
    assert [s["file"] for s in api.submitted] == [str(run / "submission.csv")]
    assert api.submitted[0]["competition"] == COMPETITION_SLUG
    assert isolated["sleeps"] == [10, 12]  # 10, then 10 * 1.5 capped at 12
    rows = sm.read_leaderboard(subs / "leaderboard.csv")
    assert len(rows) == 1
    row = rows[0]
    assert list(row) == list(sm.COLUMNS)
    assert {k: row[k] for k in ("run", "model", "lopo", "nested", "local_score",
                                "public_score", "status", "ref", "error")} == {
        "run": run.name, "model": "mae_probe", "lopo": "0.5209", "nested": "0.5312",
        "local_score": "0.525028", "public_score": "0.55700", "status": "complete",
        "ref": str(REF), "error": ""}
    assert row["message"] == api.submitted[0]["message"]
    assert run.name in row["message"] and "LOPO 0.5209" in row["message"]
    stamp = datetime.fromisoformat(row["submitted_at"])
    assert stamp.utcoffset().total_seconds() == 0
    assert "public score 0.55700" in out
    assert SECRET not in out + err


def test_a_run_without_ensemble_or_local_score_leaves_those_cells_empty(
        tmp_path, use_api, monkeypatch):
    set_credentials(monkeypatch)
    subs = tmp_path / "subs"
    make_run(subs, local=None)
    use_api(FakeKaggle([(COMPLETE, "0.51600")]))
    assert run_main("--submissions", subs, "-m", "my words") == 0
    row = sm.read_leaderboard(subs / "leaderboard.csv")[0]
    assert (row["nested"], row["local_score"], row["message"]) == ("", "", "my words")


def test_scoring_error_is_logged_as_a_failed_row(tmp_path, use_api, monkeypatch, capsys):
    set_credentials(monkeypatch)
    subs = tmp_path / "subs"
    make_run(subs)
    use_api(FakeKaggle([(PENDING, ""), (ERROR, "")], error="Submission has 1 rows, "
                                                            "expected 346800"))
    assert run_main("--submissions", subs, "--interval", 1) == 1
    _, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0]  # progress, then it
    assert errors[0].startswith("error: Kaggle could not score submission 4242")
    assert "expected 346800" in errors[0] and "Traceback" not in err
    row = sm.read_leaderboard(subs / "leaderboard.csv")[0]
    assert (row["status"], row["public_score"]) == ("error", "")
    assert row["error"] == "Submission has 1 rows, expected 346800"


def test_refused_upload_writes_no_row(tmp_path, use_api, monkeypatch, capsys):
    set_credentials(monkeypatch)
    subs = tmp_path / "subs"
    make_run(subs)
    use_api(FakeKaggle([], refuse=RuntimeError(f"403 Client Error: Forbidden ({SECRET})")))
    assert run_main("--submissions", subs) == 1
    _, err = capsys.readouterr()
    assert "refused" in err and "accept the rules" in err and SECRET not in err
    assert not (subs / "leaderboard.csv").exists()


def test_timeout_logs_pending_and_ref_resumes_later(tmp_path, use_api, isolated,
                                                    monkeypatch, capsys):
    set_credentials(monkeypatch)
    subs = tmp_path / "subs"
    run = make_run(subs)
    use_api(FakeKaggle([(PENDING, "")]))
    assert run_main("--submissions", subs, "--interval", 30, "--timeout", 100) == 1
    _, err = capsys.readouterr()
    assert isolated["sleeps"] == [30, 45, 25]  # never past the deadline
    assert f"--run {run.name} --ref {REF}" in err and "pending" in err
    first = sm.read_leaderboard(subs / "leaderboard.csv")
    assert [(r["status"], r["ref"], r["public_score"]) for r in first] == [
        ("pending", str(REF), "")]

    later = use_api(FakeKaggle([(COMPLETE, "0.53100")]))
    later.description = first[0]["message"]
    assert run_main("--submissions", subs, "--run", run.name, "--ref", REF) == 0
    assert later.submitted == []  # polled, not uploaded again
    rows = sm.read_leaderboard(subs / "leaderboard.csv")
    assert rows[0] == first[0]
    assert [(r["status"], r["public_score"]) for r in rows] == [
        ("pending", ""), ("complete", "0.53100")]
    assert rows[1]["message"] == first[0]["message"]
    assert rows[1]["submitted_at"] == "2026-11-30T12:00:00+00:00"  # Kaggle's date


def test_a_failed_listing_is_retried(tmp_path, use_api, monkeypatch, capsys):
    set_credentials(monkeypatch)
    subs = tmp_path / "subs"
    make_run(subs)
    api = FakeKaggle([(COMPLETE, "0.52000")])
    listing = api.competition_submissions
    calls = []

    def flaky(competition):
        calls.append(competition)
        if len(calls) == 1:
            raise ConnectionError(f"connection reset, key {SECRET}")
        return listing(competition)

    api.competition_submissions = flaky
    use_api(api)
    assert run_main("--submissions", subs, "--interval", 1) == 0
    _, err = capsys.readouterr()
    assert len(calls) == 2 and "retrying" in err and SECRET not in err
    assert sm.read_leaderboard(subs / "leaderboard.csv")[0]["public_score"] == "0.52000"


# ------------------------------------------------------------------ credentials
def write_keyless_kaggle_json(home: Path) -> None:
    """A kaggle.json that holds a key but no username: not usable credentials."""
    (home / ".kaggle").mkdir()
    (home / ".kaggle" / "kaggle.json").write_text(json.dumps({"key": SECRET}))


def test_missing_credentials_exit_2_with_one_clear_line(tmp_path, use_api, capsys):
    write_keyless_kaggle_json(tmp_path / "home")  # HOME (see isolated)
    subs = tmp_path / "subs"
    make_run(subs)
    use_api(None)
    assert run_main("--submissions", subs, "--model", "starter") == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: no Kaggle credentials found")
    assert "~/.kaggle/kaggle.json" in err and "KAGGLE_USERNAME" in err
    assert "KAGGLE_KEY" in err
    assert len(err.strip().splitlines()) == 1
    assert SECRET not in err
    assert sorted(p.name for p in subs.iterdir()) == ["20261130-120000-quick-mae_probe"]


def test_missing_credentials_through_run_sh(tmp_path):
    """The real process: exit code 2, no traceback, no secret."""
    home = tmp_path / "home"
    write_keyless_kaggle_json(home)
    subs = tmp_path / "subs"
    make_run(subs)
    env = {k: v for k, v in os.environ.items() if k not in KAGGLE_VARS}
    env.update(HOME=str(home), PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([str(REPO / "run.sh"), "submit", "--submissions", str(subs)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: no Kaggle credentials found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr


def test_bad_run_folder_is_a_clear_error(tmp_path, capsys):
    assert run_main("--submissions", tmp_path / "subs") == 2
    assert "no finished run" in capsys.readouterr().err
    assert run_main("--submissions", tmp_path, "--run", "nope") == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nope'}: no summary.json" in err


# ------------------------------------------------------------------ the log
def test_two_appends_keep_both_rows_and_earlier_bytes(tmp_path):
    path = tmp_path / "subs" / "leaderboard.csv"
    first = {"run": "a", "model": "starter", "lopo": 0.52, "public_score": "0.51600",
             "status": "complete", "message": "with, a comma"}
    sm.append_row(path, first)
    before = path.read_bytes()
    sm.append_row(path, {"run": "b", "model": "second_place", "status": "error",
                         "error": 'bad "file"'})
    assert path.read_bytes().startswith(before)
    rows = sm.read_leaderboard(path)
    assert [(r["run"], r["model"], r["status"]) for r in rows] == [
        ("a", "starter", "complete"), ("b", "second_place", "error")]
    assert rows[0]["message"] == "with, a comma" and rows[1]["error"] == 'bad "file"'
    assert rows[0]["lopo"] == "0.52" and rows[1]["lopo"] == ""
    assert path.read_text().count("run,model,") == 1
    assert not list(path.parent.glob(".tmp-*"))


def test_append_refuses_a_foreign_file_and_leaves_it(tmp_path):
    path = tmp_path / "leaderboard.csv"
    path.write_text("when,score\nyesterday,0.5\n")
    with pytest.raises(sm.SubmitUsageError, match="header is 'when,score'"):
        sm.append_row(path, {"run": "a"})
    assert path.read_text() == "when,score\nyesterday,0.5\n"


# ------------------------------------------------------------------ --model
@pytest.fixture
def finished_run(tmp_path, make_folder):
    """A finished run on a tiny data folder (with solution.csv): folds and a
    ``starter`` result with known test predictions, and its stage-07 summary."""
    from sleepemo.pipeline.artefacts import ResultWriter
    from sleepemo.data.reader import load_dataset
    from sleepemo.data.folds import write_folds

    data = make_folder(train={2: (3, 4), 3: (4, 3), 4: (3, 3)}, test={1: 6})
    pd.DataFrame({"subject": 1, "trial": range(6), "label": [0, 1, 0, 1, 1, 0]}).to_csv(
        data / "solution.csv", index=False)
    ds = load_dataset(data, progress=False)
    out = tmp_path / "out"
    folds, _ = write_folds(ds, out / "folds.json")
    rng = np.random.default_rng(3)
    writer = ResultWriter(out, "baselines", "starter", "fp-test", folds)
    for k in range(folds.n_folds):
        held = folds.held_out(k)
        writer.save_fold(k, oof=rng.uniform(size=(folds.n_trials[held], 200)),
                         test=rng.uniform(size=(6, 200)))
    result = writer.finish(ds)
    subs = tmp_path / "subs"
    run = make_run(subs, artefacts=out)
    summary = json.loads((run / "summary.json").read_text())
    summary["data_dir"] = str(data)
    (run / "summary.json").write_text(json.dumps(summary))
    return subs, run, result, data


def test_model_submission_writes_submits_and_logs_that_model(finished_run, use_api,
                                                            monkeypatch, capsys):
    from sleepemo.metric import score_files

    set_credentials(monkeypatch)
    subs, source, result, data = finished_run
    api = use_api(FakeKaggle([(COMPLETE, "0.51600")]))
    assert run_main("--submissions", subs, "--run", source.name, "--model", "starter") == 0
    new = [p for p in subs.iterdir() if p.is_dir() and p != source]
    assert len(new) == 1 and new[0].name.endswith("-quick-starter")
    sub_file = new[0] / "submission.csv"
    assert api.submitted[0]["file"] == str(sub_file)
    uploaded = api.submitted[0]["rows"]
    assert len(uploaded) == 6 * 200 and uploaded["id"].iloc[201] == "1_1_1"
    np.testing.assert_allclose(uploaded["prediction"].to_numpy(),
                               result.test.ravel(), atol=5e-7)
    assert (subs / "latest.csv").read_bytes() == sub_file.read_bytes()
    summary = json.loads((new[0] / "summary.json").read_text())
    lopo = round(result.score()[0].score, 4)
    local = score_files(sub_file, data / "solution.csv").score
    assert summary["model"] == "starter" and summary["from_run"] == source.name
    assert summary["lopo_window_auc"] == lopo
    assert summary["local_leaderboard"] == pytest.approx(local)
    row = sm.read_leaderboard(subs / "leaderboard.csv")[0]
    assert (row["run"], row["model"], row["public_score"]) == (new[0].name, "starter",
                                                               "0.51600")
    assert float(row["lopo"]) == pytest.approx(lopo)
    assert float(row["local_score"]) == pytest.approx(local, abs=1e-6)


def test_model_dry_run_writes_the_file_without_kaggle(finished_run, use_api, capsys):
    subs, source, result, _ = finished_run
    use_api(None)  # no credentials, no API: a dry run needs neither
    assert run_main("--submissions", subs, "--model", "starter", "--dry-run") == 0
    out, _ = capsys.readouterr()
    new = [p for p in subs.iterdir() if p.is_dir() and p != source]
    assert len(new) == 1 and (new[0] / "submission.csv").is_file()
    assert "dry run: would submit" in out and "model=starter" in out
    assert not (subs / "leaderboard.csv").exists()


def test_unknown_model_is_a_clear_error(finished_run, capsys):
    subs, source, _, _ = finished_run
    assert run_main("--submissions", subs, "--model", "nope", "--dry-run") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model nope: no result 'nope'") and "starter" in err
    assert [p for p in subs.iterdir() if p.is_dir()] == [source]


def test_relative_paths_in_the_summary_are_found(finished_run, monkeypatch, capsys):
    """Stage 07 records --out and --data-dir as given (relative to where run.sh works)."""
    subs, source, _, data = finished_run
    summary = json.loads((source / "summary.json").read_text())
    monkeypatch.chdir(subs.parent)
    summary.update(artefacts="out", data_dir=os.path.relpath(data, subs.parent))
    (source / "summary.json").write_text(json.dumps(summary))
    assert run_main("--submissions", subs, "--model", "starter", "--dry-run") == 0
    assert "model=starter" in capsys.readouterr().out


# ------------------------------------------------------------------ --file
def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def kernel_file(tmp_path, tiny_dir):
    """A valid submission for the tiny data (one test participant) where
    ``./run.sh kaggle output`` puts a kernel's: ``subs/kernel-<slug>-<time>/``."""
    from sleepemo.data.submission import build_submission, expected_from_data

    rng = np.random.default_rng(5)
    expected = expected_from_data(tiny_dir)
    df = build_submission({s: rng.uniform(size=shape) for s, shape in expected.items()})
    folder = tmp_path / "subs" / "kernel-sleepemo-offline-20261130-120000Z"
    folder.mkdir(parents=True)
    df.to_csv(folder / "submission.csv", index=False, float_format="%.6f")
    return folder / "submission.csv", len(df)


def test_file_is_checked_submitted_and_logged(kernel_file, tiny_dir, tmp_path, use_api,
                                              monkeypatch, capsys):
    set_credentials(monkeypatch)
    path, n_rows = kernel_file
    subs = tmp_path / "subs"
    api = use_api(FakeKaggle([(PENDING, ""), (COMPLETE, "0.54100")]))
    assert run_main("--submissions", subs, "--file", path, "--data-dir", tiny_dir,
                    "--interval", 1) == 0
    out, err = capsys.readouterr()
    assert [s["file"] for s in api.submitted] == [str(path)]
    assert len(api.submitted[0]["rows"]) == n_rows
    assert f"{n_rows} rows, fits the test data of {tiny_dir}" in err
    row, = sm.read_leaderboard(subs / "leaderboard.csv")
    assert {k: row[k] for k in ("run", "model", "lopo", "nested", "local_score",
                                "public_score", "status", "ref")} == {
        "run": "file:kernel-sleepemo-offline-20261130-120000Z", "model": "kernel",
        "lopo": "", "nested": "", "local_score": "", "public_score": "0.54100",
        "status": "complete", "ref": str(REF)}
    assert row["message"] == api.submitted[0]["message"] == (
        "sleepemo file:kernel-sleepemo-offline-20261130-120000Z kernel")
    assert "public score 0.54100" in out


def test_file_beside_a_summary_takes_its_model_and_scores(kernel_file, tiny_dir, tmp_path,
                                                          use_api, monkeypatch):
    set_credentials(monkeypatch)
    path, _ = kernel_file
    subs = tmp_path / "subs"
    run = make_run(subs)  # summary.json: mae_probe, LOPO 0.5209, local 0.525028
    (run / "submission.csv").write_bytes(path.read_bytes())
    use_api(FakeKaggle([(COMPLETE, "0.52000")]))
    assert run_main("--submissions", subs, "--file", run / "submission.csv",
                    "--data-dir", tiny_dir) == 0
    row = sm.read_leaderboard(subs / "leaderboard.csv")[0]
    assert (row["run"], row["model"], row["lopo"], row["local_score"]) == (
        f"file:{run.name}", "mae_probe", "0.5209", "0.525028")


@pytest.mark.parametrize("damage", ["drop a row", "out of range"])
def test_an_invalid_file_is_refused_before_any_upload(damage, kernel_file, tiny_dir,
                                                      tmp_path, use_api, monkeypatch,
                                                      capsys):
    set_credentials(monkeypatch)
    path, _ = kernel_file
    lines = path.read_text().splitlines()
    if damage == "drop a row":
        lines.pop(7)
    else:
        lines[3] = lines[3].split(",")[0] + ",1.5"
    path.write_text("\n".join(lines) + "\n")
    subs = tmp_path / "subs"
    before = listing(tmp_path)
    api = use_api(FakeKaggle([(COMPLETE, "0.5")]))
    assert run_main("--submissions", subs, "--file", path, "--data-dir", tiny_dir) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {path} does not fit the test data of {tiny_dir}: ")
    assert ("expected ids are missing" if damage == "drop a row" else "are > 1") in err
    assert "nothing was uploaded" in err
    assert api.submitted == [] and api.polls == 0
    assert listing(tmp_path) == before


def test_file_dry_run_checks_and_shows_the_row_without_kaggle(kernel_file, tiny_dir,
                                                              tmp_path, use_api, capsys):
    path, _ = kernel_file
    use_api(None)  # no credentials, no API: a dry run needs neither
    before = listing(tmp_path)
    assert run_main("--submissions", tmp_path / "subs", "--file", path, "--data-dir",
                    tiny_dir, "--dry-run") == 0
    out, _ = capsys.readouterr()
    assert out.startswith(f"dry run: would submit {path}")
    assert "run=file:kernel-sleepemo-offline-20261130-120000Z, model=kernel" in out
    assert listing(tmp_path) == before


def test_file_without_credentials_is_one_line_and_writes_nothing(kernel_file, tiny_dir,
                                                                 tmp_path, use_api, capsys):
    write_keyless_kaggle_json(tmp_path / "home")
    path, _ = kernel_file
    before = listing(tmp_path)
    use_api(None)
    assert run_main("--submissions", tmp_path / "subs", "--file", path,
                    "--data-dir", tiny_dir) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: no Kaggle credentials found") and SECRET not in err
    assert listing(tmp_path) == before


def test_file_data_folder_defaults_to_the_data_under_input(kernel_file, tiny_dir, tmp_path,
                                                           monkeypatch, capsys):
    path, _ = kernel_file
    project = tmp_path / "project"
    (project / "input").mkdir(parents=True)
    monkeypatch.setattr(sm, "project_dir", lambda: project)
    assert run_main("--file", path, "--dry-run") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "give --data-dir DATA" in err
    (project / "input" / COMPETITION_SLUG).symlink_to(tiny_dir)
    assert run_main("--file", path, "--dry-run", "--submissions", tmp_path / "subs") == 0
    assert f"fits the test data of {project / 'input' / COMPETITION_SLUG}" in \
        capsys.readouterr().err


@pytest.mark.parametrize("other", [("--run", "x"), ("--model", "starter")])
def test_file_cannot_be_combined_with_a_run(other, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run_main("--file", tmp_path / "s.csv", *other)
    assert info.value.code == 2
    assert "--file submits that file" in capsys.readouterr().err


def test_a_missing_file_is_a_clear_error(tmp_path, capsys):
    assert run_main("--file", tmp_path / "nope.csv", "--dry-run") == 2
    assert capsys.readouterr().err == f"error: --file {tmp_path / 'nope.csv'}: no such file\n"


def test_a_pending_file_submission_is_waited_for_later_with_ref(kernel_file, tiny_dir,
                                                                tmp_path, use_api,
                                                                monkeypatch, capsys):
    """--timeout passes first: the row is pending and the message gives the command that
    later polls the same submission (no second upload) and logs its final row."""
    set_credentials(monkeypatch)
    path, _ = kernel_file
    subs = tmp_path / "subs"
    api = use_api(FakeKaggle([(PENDING, "")]))
    assert run_main("--submissions", subs, "--file", path, "--data-dir", tiny_dir,
                    "--timeout", 0) == 1
    err = capsys.readouterr().err
    assert f"./run.sh submit --file {path} --ref {REF}" in err
    api.script = [(COMPLETE, "0.53000")]
    assert run_main("--submissions", subs, "--file", path, "--data-dir", tiny_dir,
                    "--ref", REF) == 0
    assert len(api.submitted) == 1                      # polled, not uploaded again
    first, second = sm.read_leaderboard(subs / "leaderboard.csv")
    assert (first["status"], second["status"]) == ("pending", "complete")
    assert second["public_score"] == "0.53000" and second["ref"] == str(REF)
    assert second["run"] == first["run"] == "file:kernel-sleepemo-offline-20261130-120000Z"
