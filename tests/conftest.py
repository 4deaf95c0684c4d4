"""Shared fixtures: small synthetic data folders, generated once per test session."""
from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np
import pytest

from sleepemo import CHANNELS, N_TIMES, SFREQ
from sleepemo.data.synth import (TRAIN_COUNTS, SynthConfig, generate, generate_subset,
                                 write_mat73)


def pytest_configure(config):
    """The controller makes the folder where every process records reliability cases
    (``tests/reliability.py``); xdist workers inherit it through the environment."""
    from reliability import ENV

    if not hasattr(config, "workerinput") and not os.environ.get(ENV):
        os.environ[ENV] = tempfile.mkdtemp(prefix="sleepemo-reliability-")
        config._sleepemo_reliability = os.environ[ENV]


#: the test files with the longest runs, longest first (each file's setup + call + teardown
#: summed from `./run.sh test --durations=0`, at 574f272): two processes take files in this
#: order, so that no long file starts last while the other process runs out of work
LONGEST_FIRST = ("test_rl.py", "test_pipeline.py", "test_experts.py", "test_ensemble.py",
                 "test_parallel.py", "test_fusion.py", "test_predict.py", "test_faults.py",
                 "test_studies.py", "test_kaggle_bundle.py", "test_mae.py", "test_lopo.py",
                 "test_fingerprint.py", "test_cli.py", "test_deep_anchors.py",
                 "test_evoked_baselines.py", "test_extending.py", "test_fuzz_reader.py",
                 "test_synth.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # (stable)


def _whole_default_suite(config) -> bool:
    """True when the session ran the default suite: no -k, no marker other than the
    default ``not slow``, no file or test named on the command line."""
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    args = [Path(str(a).split("::")[0]).resolve() for a in config.args]
    return (not config.option.keyword and config.option.markexpr in ("", "not slow")
            and all(a in (tests, tests.parent) for a in args))


def pytest_sessionfinish(session, exitstatus):
    """Write docs/reliability.md from the cases the whole suite recorded."""
    import shutil

    from reliability import read_records, write_table

    folder = getattr(session.config, "_sleepemo_reliability", None)
    if folder is None:
        return
    try:
        rows = read_records(folder)
        if rows and exitstatus == 0 and _whole_default_suite(session.config):
            write_table(rows)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def reliability(request):
    """``reliability(area, case, outcome)``: record a case this test tried and the
    outcome it checked, for docs/reliability.md (``tests/reliability.py``)."""
    from reliability import recorder

    return recorder(request.node.nodeid)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Stage runs set torch's (process-wide) thread count from the profile: put it back
    so that one test's profile does not slow the next."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@contextlib.contextmanager
def flipped_labels(ds, subject):
    """Participant ``subject``'s training labels flipped in ``ds`` (restored on exit)."""
    import dataclasses

    subj = ds.train[subject]
    ds.train[subject] = dataclasses.replace(subj, y=(1 - subj.y).astype(subj.y.dtype))
    try:
        yield
    finally:
        ds.train[subject] = subj


def with_flipped_labels(ds, held, fn):
    """``fn()`` as given, then again with participant ``held``'s training labels
    flipped (restored afterwards): the held-out invariance checks compare the two."""
    first = fn()
    with flipped_labels(ds, held):
        second = fn()
    return first, second


def stage_with_random_mae(name: str, out, data_dir, sets=()):
    """Stage ``name`` opened on ``data_dir`` with the smoke profile (``sets``: overrides
    ``key=value``), its folds written and a randomly initialised stage-02 MAE saved in
    ``out`` (what stages 03-05 read from stage 02, without its training time).
    Returns ``(stage, dataset, folds)``."""
    import dataclasses

    import torch

    from sleepemo.config import load_config
    from sleepemo.data.reader import load_dataset
    from sleepemo.features import BandFeatureCache
    from sleepemo.data.folds import write_folds
    from sleepemo.mae.model import MaskedAutoencoder, encoder_config, save_encoder
    from sleepemo.pipeline.stage import open_stage, stage_dir

    cfg = load_config("smoke", list(sets))
    ds = load_dataset(data_dir, progress=False)
    folds, _ = write_folds(ds, out / "folds.json")
    enc_cfg = encoder_config(cfg.mae, ds.n_times, ds.n_chans)
    torch.manual_seed(0)
    key = BandFeatureCache(out / "cache" / "band_features", folds.data_fingerprint,
                           cfg.mae.bands, cfg.mae.feature).key
    save_encoder(MaskedAutoencoder(enc_cfg), stage_dir(out, "mae"), {
        "fingerprint": "random-mae-for-tests", "encoder": dataclasses.asdict(enc_cfg),
        "band_cache": key, "config": {"stride": cfg.mae.stride}})  # as stage 02 writes
    return open_stage(name, cfg, data_dir, out, progress=False, log=lambda m: None), ds, folds


def n_rows(ds, folds) -> tuple[int, int]:
    """(training trials, test trials) of ``folds``: the rows of oof.npy and test.npy."""
    return (sum(folds.n_trials[s] for s in folds.train_subjects),
            sum(ds.test[s].n_trials for s in folds.test_subjects))


def contract_arrays(stage, name: str, ds, folds, metrics, strict: bool = True):
    """Result ``name`` of ``stage`` as the predictions contract says: out-of-fold rows of
    every training trial and test rows of every test trial, 200 timepoints each,
    probabilities (strictly inside (0, 1) when ``strict``), finite; its score in the
    stage's metrics is the LOPO score of its out-of-fold rows. Returns (oof, test)."""
    from sleepemo.pipeline.artefacts import score_oof

    folder = stage.dir / name
    oof, test = np.load(folder / "oof.npy"), np.load(folder / "test.npy")
    assert oof.shape == (n_rows(ds, folds)[0], 200), name
    assert test.shape == (n_rows(ds, folds)[1], 200), name
    assert np.isfinite(oof).all() and np.isfinite(test).all(), name
    if strict:
        assert 0 < oof.min() and oof.max() < 1, name
    else:
        assert 0 <= oof.min() and oof.max() <= 1, name
    assert metrics["lopo_window_auc"][name] == score_oof(oof, ds, folds).score, name
    return oof, test


def resumes_from_fold_checkpoints(stage, body, name: str, trains: tuple, monkeypatch
                                  ) -> list[str]:
    """Result ``name`` of the finished ``stage`` as if killed after fold 3's checkpoint was
    written (its ``fold3.npz`` and ``meta.json`` gone): rerunning the stage's ``body`` with
    ``trains`` (``(object, attribute)`` of what trains a fold) failing gives the same
    out-of-fold rows from the checkpoints; a third run, with the body module's
    ``run_fold`` failing too, does no fold work. Returns the third run's log lines."""
    folder = stage.dir / name
    before = np.load(folder / "oof.npy")
    (folder / "fold3.npz").unlink()
    (folder / "meta.json").unlink()
    monkeypatch.setattr(*trains, lambda *a, **k: pytest.fail(
        "a fold with a checkpoint was trained again"))
    stage.run(body.run)
    np.testing.assert_array_equal(np.load(folder / "oof.npy"), before)
    monkeypatch.setattr(body, "run_fold", lambda *a, **k: pytest.fail("recomputed"))
    logs = []
    monkeypatch.setattr(stage, "log", logs.append)
    stage.run(body.run)
    return logs


def assert_same_results(stage, reference, names, arrays=("oof.npy", "test.npy")) -> None:
    """Results ``names`` of ``stage`` hold the same ``arrays``, bit for bit, as those of
    the finished ``reference`` stage (the same stage in another run folder)."""
    for name in names:
        for array in arrays:
            np.testing.assert_array_equal(np.load(stage.dir / name / array),
                                          np.load(reference.dir / name / array),
                                          err_msg=f"{name} {array}")


#: 40 gradient steps per RL head and twin instead of the smoke profile's 80, for tests
#: whose assertions do not depend on how far the heads learn
FEWER_RL_STEPS = {"rl.env_steps": "60", "rl.learning_starts": "20",
                  "rl.sac_env_steps": "60", "rl.sac_learning_starts": "20"}

#: the folds a fold-worker test computes again with two workers (the others are loaded)
WORKER_FOLDS = (0, 2)


def copy_without_folds(serial_out, out, stage_folder: str, keep=None, folds=WORKER_FOLDS):
    """``out``: a copy of the finished run ``serial_out`` whose stage ``stage_folder``
    (e.g. ``"05_rl"``) has lost folds ``folds`` of every result
    (:func:`sleepemo.pipeline.artefacts.drop_folds`), and every result not named in ``keep``: the
    next run of the stage computes those folds again and assembles its results from them
    and the serial run's other folds, so its arrays equal the serial run's only if the
    recomputed folds do."""
    import shutil
    from pathlib import Path

    from sleepemo.pipeline.artefacts import drop_folds

    shutil.copytree(serial_out, out, dirs_exist_ok=True)
    folder = Path(out) / stage_folder
    if keep is not None:
        for result in [p for p in folder.iterdir() if p.is_dir() and p.name not in keep]:
            shutil.rmtree(result)
    removed = drop_folds(folder, folds)
    assert any(f.name == f"fold{folds[0]}.npz" for f in removed), removed
    return out


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory):
    """Synthetic data at 10 % of the real trial counts (the smoke profile's scale)."""
    return generate(tmp_path_factory.mktemp("data") / "smoke",
                    SynthConfig(seed=0, scale=0.1), progress=False)


def synthetic_subset(folder, scale: float, train: tuple, test: tuple | None = None):
    """Synthetic data (seed 0) at ``scale`` of the real trial counts in ``folder``, keeping
    the training participants ``train`` and the test participants ``test`` (default:
    all; ``solution.csv`` keeps their rows)."""
    return generate_subset(folder, scale, train, test)


@pytest.fixture(scope="session")
def small_dir(tmp_path_factory):
    """The smoke data's size (10 % of the real trial counts) with five training
    participants (2-6: five folds) and the three test participants: what the stage tests
    that check plumbing (the contract, resume, fold workers, held-out labels, predict)
    run on, in a third of the smoke data's time."""
    return synthetic_subset(tmp_path_factory.mktemp("data") / "small", 0.1, (2, 3, 4, 5, 6))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Synthetic data at 5 % of the real trial counts, three training participants (2, 3,
    4) and one test participant (1): every stage runs its folds in seconds."""
    return synthetic_subset(tmp_path_factory.mktemp("data") / "tiny", 0.05, (2, 3, 4), (1,))


@pytest.fixture(scope="session")
def medium_dir(tmp_path_factory):
    """Synthetic data (seed 1) at 30 % of the real counts, all 14 training participants,
    one test participant (1, the smallest): the default theta design at a size where each
    participant's effect shows. The label-shuffled checks run on :func:`evoked_dir` and
    :func:`theta_dir` of the same size instead, where their training learns the true
    labels (here it does not: 0.50-0.51)."""
    return generate_subset(tmp_path_factory.mktemp("data") / "medium", 0.3,
                           tuple(TRAIN_COUNTS), (1,), seed=1)


def _alarm_data(root, cfg: SynthConfig):
    """medium_dir's size, seed and participants (all 14 training participants at 30 % of
    the real counts, test participant 1) in the design of ``cfg``."""
    root = generate(root, cfg, progress=False)
    for f in (root / "testing").glob("test_subject_*.mat"):
        if f.stem != "test_subject_1":
            f.unlink()
    header, *rows = (root / "solution.csv").read_text().splitlines()
    kept = [r for r in rows if r.split(",", 1)[0] == "1"]
    (root / "solution.csv").write_text("\n".join([header, *kept]) + "\n")
    return root


@pytest.fixture(scope="session")
def evoked_dir(tmp_path_factory):
    """medium_dir's size, seed and participants in the evoked design with a strong effect
    (the late evoked components 2.5-3.5 times larger in emotional trials, the same sign
    for everyone): data on which the smoke profile's few training steps do learn the
    labels, for label-shuffled checks that must be able to fail (with the labels as they
    are: stage 03 0.655, stage 04's raw fusion 0.780, stage 01's ERP-LDA 0.740; on
    medium_dir they learn nothing, 0.50-0.51, so a shuffled score of 0.5 there says
    nothing about leaks)."""
    return _alarm_data(tmp_path_factory.mktemp("data") / "evoked",
                       SynthConfig(seed=1, scale=0.3, design="evoked",
                                   evoked_effect=(1.5, 2.5)))


@pytest.fixture(scope="session")
def theta_dir(tmp_path_factory):
    """medium_dir's size, seed and participants in the theta design with a strong effect
    of the same sign for everyone (medium_dir's has each participant's own sign, which
    LOPO cannot learn): band power, what stage 05's DQN reads through its CSP, carries
    the labels (the DQN learns them in 40 steps: 0.874; its twin 0.925), for stage 05's
    label-shuffled check."""
    return _alarm_data(tmp_path_factory.mktemp("data") / "theta",
                       SynthConfig(seed=1, scale=0.3, p_up=1.0, shared_effect=0.5,
                                   individual_effect=(1.0, 2.0)))


def random_trials(n_trials=6, n_chans=len(CHANNELS), n_times=N_TIMES, seed=0):
    return np.random.default_rng(seed).standard_normal((n_trials, n_chans, n_times))


@pytest.fixture
def make_folder(tmp_path):
    """Build a tiny data folder: make_folder(train={2: (3, 4)}, test={1: 5}) -> root."""

    def make(train=None, test=None, root=None, **kw):
        root = root or tmp_path / "data"
        times = np.arange(N_TIMES) / SFREQ
        for sid, (n_emo, n_neu) in (train or {2: (3, 4), 3: (4, 3)}).items():
            for cls, n in (("sleep_emo", n_emo), ("sleep_neu", n_neu)):
                write_mat73(root / "training" / cls / f"S_{sid}_cleaned.mat",
                            random_trials(n, seed=sid * 10 + n), times, **kw)
        for sid, n in (test or {1: 5}).items():
            write_mat73(root / "testing" / f"test_subject_{sid}.mat",
                        random_trials(n, seed=sid), times, **kw)
        return root

    return make
