"""Stage 03 building blocks: experts batched with vmap, and FOMAML on a known toy problem."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from conftest import (assert_same_results, contract_arrays, copy_without_folds, n_rows,
                      resumes_from_fold_checkpoints, stage_with_random_mae,
                      with_flipped_labels)
from sleepemo.experts.fomaml import adapt, fomaml_step
from sleepemo.experts.model import ExpertBank, loop_forward, make_experts
from sleepemo.mae.model import ChannelEncoder, EncoderConfig, n_parameters


def test_expert_size_and_mae_initialisation():
    enc = ChannelEncoder(EncoderConfig())
    experts = make_experts(16, encoder_state=enc.state_dict())
    # the encoder without channel embedding (19,520) + two heads of 16 + 1 + the
    # reconstruction head 16 x 5 + 5
    assert n_parameters(experts[0]) == 19520 + 2 * 17 + 85
    for c in (0, 7, 15):
        torch.testing.assert_close(experts[c].encoder.blocks[1].mlp.fc1.weight,
                                   enc.blocks[1].mlp.fc1.weight)
        torch.testing.assert_close(experts[c].encoder.pos, enc.pos + enc.chan.weight[c])


def test_vmap_and_loop_give_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    experts = make_experts(16, seed=1)
    bank = ExpertBank(experts)
    x = torch.randn(6, 16, 200, 5)
    (tv, rv, _), (tl, rl, _) = bank(x), loop_forward(experts, x)
    assert tv.shape == (16, 6, 200) and rv.shape == (16, 6)
    torch.testing.assert_close(tv, tl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rv, rl, rtol=1e-5, atol=1e-5)
    # gradients of a summed loss: expert c's gradient equals the loop's
    (tv.square().mean() + rv.sum()).backward()
    (tl.square().mean() + rl.sum()).backward()
    for c in (0, 9):
        torch.testing.assert_close(bank.params["time_head.weight"].grad[c],
                                   experts[c].time_head.weight.grad, rtol=1e-4, atol=1e-6)
    # and the materialised experts carry the bank's parameters
    torch.testing.assert_close(loop_forward(bank.experts(), x)[0], tv, rtol=1e-5, atol=1e-5)


def _sine_tasks(gen, n_tasks, k=10):
    """Regression tasks y = a sin(x + b): the classic MAML sanity check."""
    tasks = []
    for _ in range(n_tasks):
        a = 0.5 + 4.5 * torch.rand(1, generator=gen)
        b = math.pi * torch.rand(1, generator=gen)
        xs = 10 * torch.rand(2 * k, 1, generator=gen) - 5
        ys = a * torch.sin(xs + b)
        tasks.append(((xs[:k], ys[:k]), (xs[k:], ys[k:])))
    return tasks


def test_fomaml_init_adapts_faster_than_random_init_on_new_tasks():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(),
                        nn.Linear(40, 1))
    init = {k: v.detach().clone() for k, v in net.named_parameters()}
    meta = {k: v.clone().requires_grad_(True) for k, v in init.items()}

    def loss_fn(params, batch):
        x, y = batch
        return ((functional_call(net, params, (x,)) - y) ** 2).mean()

    opt = torch.optim.Adam(meta.values(), lr=0.01)
    gen = torch.Generator().manual_seed(1)
    for _ in range(600):
        fomaml_step(loss_fn, meta, opt, _sine_tasks(gen, 5), inner_steps=3, inner_lr=0.01)

    held_out = _sine_tasks(torch.Generator().manual_seed(99), 50)

    def after_adaptation(params):
        losses = [loss_fn(adapt(loss_fn, params, s, 3, 0.01), q).item() for s, q in held_out]
        return sum(losses) / len(losses)

    meta_loss, random_loss = after_adaptation(meta), after_adaptation(init)
    print(f"after 3 steps: meta-init {meta_loss:.3f}, random init {random_loss:.3f}")
    assert meta_loss < 0.5 * random_loss, (meta_loss, random_loss)
    # and the meta-update really moved the parameters
    assert not torch.allclose(meta["0.weight"], init["0.weight"])


def test_folded_forward_matches_the_experts():
    from sleepemo.experts.model import folded_forward, make_forward

    experts = make_experts(16, encoder_state=ChannelEncoder(EncoderConfig()).state_dict(),
                           seed=2)
    bank = ExpertBank(experts)
    x = torch.randn(5, 16, 200, 5)
    mask = torch.rand(5, 16, 200) < 0.4
    for m in (None, mask):
        looped = loop_forward(experts, x, m)
        for name in ("folded", "vmap", "loop"):  # the stage's three batchings
            out = make_forward(bank, name, 4, (70, 130))(bank.params, x, m)
            for o, ref in zip(out, looped):
                torch.testing.assert_close(o, ref, rtol=1e-4, atol=1e-4)
    g = torch.func.grad(lambda p: folded_forward(p, x, 4)[1].sum())(bank.params)
    (loop_forward(experts, x)[1].sum()).backward()
    torch.testing.assert_close(g["encoder.blocks.2.mlp.fc2.weight"][3],
                               experts[3].encoder.blocks[2].mlp.fc2.weight.grad,
                               rtol=1e-3, atol=1e-5)


def test_pooled_experts_embed_a_pooled_token_as_the_mean_of_its_timepoints():
    from sleepemo.experts.model import pool_time, token_window

    enc = ChannelEncoder(EncoderConfig())
    experts = make_experts(16, EncoderConfig(n_times=50), enc.state_dict(), window=(17, 33))
    x = torch.randn(3, 200, 5)
    with torch.no_grad():  # input projection + position (+ channel 4) before the blocks
        full = enc.embed(x) + enc.pos + enc.chan.weight[4]
        pooled = experts[4].encoder.embed(pool_time(x, 4)) + experts[4].encoder.pos
    torch.testing.assert_close(pooled, pool_time(full, 4), rtol=1e-5, atol=1e-5)
    assert token_window((70, 130), 4) == (17, 33)
    with pytest.raises(ValueError, match="does not divide"):
        pool_time(x, 3)


def test_support_and_query_are_disjoint_and_class_balanced():
    from sleepemo.experts.stage import support_query

    y = np.array([0] * 30 + [1] * 11)
    sup, qry = support_query(y, 8, 8, np.random.default_rng(0))
    assert set(sup).isdisjoint(qry)
    assert (y[sup] == 1).sum() == 4 and (y[qry] == 0).sum() == 4


# ---------------------------------------------------------------- the stage on data


def _stage(out, data_dir, **experts):
    """A stage-03 context on ``data_dir`` with a (random) stage-02 MAE in ``out``."""
    return stage_with_random_mae("experts", out, data_dir,
                                 [f"experts.{k}={v}" for k, v in experts.items()])


@pytest.fixture(scope="module")
def smoke_stage(small_dir, tmp_path_factory):
    from sleepemo.experts import stage as train_experts

    stage, ds, folds = _stage(tmp_path_factory.mktemp("experts"), small_dir)
    metrics = stage.run(train_experts.run).metrics
    return stage, ds, folds, metrics


def test_stage_writes_predictions_scores_and_topomap(smoke_stage):
    from sleepemo.pipeline.artefacts import results

    stage, ds, folds, metrics = smoke_stage
    for name in ("experts_mae_fomaml", "experts_mae_fomaml_tta"):
        contract_arrays(stage, name, ds, folds, metrics)
        assert np.load(stage.dir / name / "oof_experts.npy").shape == (n_rows(ds, folds)[0], 16)
        assert len(metrics["expert_auc_by_channel"][name]) == 16
    # the adapted weights are not the zero-shot ones, and the MAE loss went down
    zs, tta = (np.load(stage.dir / n / "oof.npy") for n in ("experts_mae_fomaml",
                                                       "experts_mae_fomaml_tta"))
    assert not np.array_equal(zs, tta)
    with np.load(stage.dir / "experts_mae_fomaml_tta" / "fold0.npz") as z:
        before, after = z["tta_mae_loss"].T
    assert (after < before).all()
    mean = metrics["tta_mae_loss_on_masked_tokens"]["experts_mae_fomaml_tta"]
    assert mean["after"] < mean["before"]
    assert (stage.dir / "expert_topomap.png").stat().st_size > 0
    # the results are listed through the contract, the stage's own files beside them
    assert [r.name for r in results(stage.out, "experts")] == ["experts_mae_fomaml",
                                                               "experts_mae_fomaml_tta"]
    assert not (stage.out / "lopo.csv").exists()  # the run's table belongs to the report
    evidence = (stage.dir / "evidence.md").read_text()
    assert "experts_mae_fomaml_tta" in evidence and "expert_topomap.png" in evidence
    assert json.loads((stage.dir / "metrics.json").read_text())["stage_seconds"] > 0


def test_killed_stage_resumes_from_fold_checkpoints(smoke_stage, monkeypatch):
    from sleepemo.experts import stage as train_experts

    stage = smoke_stage[0]
    logs = resumes_from_fold_checkpoints(stage, train_experts, "experts_mae_fomaml",
                                         (train_experts.ExpertTrainer, "train"), monkeypatch)
    assert any("unchanged, reusing" in m for m in logs)


def test_fold_workers_give_the_serial_results(smoke_stage, tmp_path):
    """Folds trained by two one-thread worker processes equal the serial run's (one
    thread) bit for bit, with test-time adaptation: a fold's seeds are its own.
    (Some folds are computed again, the others loaded:
    :func:`conftest.copy_without_folds`.)"""
    from sleepemo.experts import stage as train_experts

    serial, *_ = smoke_stage
    copy_without_folds(serial.out, tmp_path, "03_experts")
    stage, *_ = _stage(tmp_path, serial.data_dir, workers=2)
    stage.run(train_experts.run)
    assert_same_results(stage, serial, ("experts_mae_fomaml", "experts_mae_fomaml_tta"),
                        ("oof.npy", "test.npy", "oof_experts.npy"))


HELD_OUT_VARIANTS = ("mae_fomaml", "mae_supervised", "random_fomaml", "mae_fomaml_ea")
TTA_VARIANTS = ("mae_fomaml", "mae_fomaml_ea")


@pytest.fixture(scope="module")
def every_variant(small_dir, tmp_path_factory):
    """Stage 03's fold state (its data, band features and trainers) with every variant
    and test-time adaptation for the MAE-initialised FOMAML ones: built once for the
    held-out label checks, which train fold 0 themselves."""
    from sleepemo.experts.stage import fold_state

    stage, ds, folds = _stage(tmp_path_factory.mktemp("experts_variants"), small_dir,
                              variants=f"[{', '.join(HELD_OUT_VARIANTS)}]",
                              tta_variants=f"[{', '.join(TTA_VARIANTS)}]")
    return fold_state(stage), ds, folds


@pytest.mark.parametrize("variant", HELD_OUT_VARIANTS)
def test_held_out_labels_never_reach_the_fitted_experts(every_variant, variant):
    """Fold 0 with the held-out participant's labels flipped gives bit-identical
    predictions, and a label dict that includes the held-out participant is refused.
    The trainer is the stage's (:func:`fold_state`: the aligned variant's reads the
    aligned band features)."""
    from sleepemo.experts.stage import VARIANTS, run_fold

    tta = variant in TTA_VARIANTS
    state, ds, folds = every_variant
    torch.set_num_threads(1)
    trainer = state.trainer(variant)
    assert trainer.enc_cfg.n_times == 25  # 200 samples pooled by experts.stride 8
    held = folds.held_out(0)

    def fold0():
        return run_fold(trainer, variant, 0, held, folds.test_subjects,
                        folds.labels_of(ds, 0), 0, 0.4)

    first, second = with_flipped_labels(ds, held, fold0)
    for kind in ("zero_shot", "tta"):
        if first[kind] is None:
            assert not tta
            continue
        for key, arr in first[kind].items():
            np.testing.assert_array_equal(np.asarray(second[kind][key]), np.asarray(arr))
    np.testing.assert_array_equal(first["losses"], second["losses"])
    assert len(first["losses"]) == (2 if VARIANTS[variant].training == "fomaml"
                                    else 2 * 2 * 4)
    leaky = folds.labels_of(ds, 0) | {held: ds.train[held].y}
    with pytest.raises(ValueError, match="held out"):
        run_fold(trainer, variant, 0, held, folds.test_subjects, leaky, 0, 0.4)


#: how far from 0.5 the shuffled stage may score
ALARM_TOLERANCE = 0.03


def test_label_shuffled_stage_scores_about_chance(evoked_dir, tmp_path):
    """Leakage alarm for the whole stage: labels permuted within each training
    participant -> the zero-shot and adapted predictions score about 0.5.

    The alarm must be able to ring: on this data (:func:`conftest.evoked_dir`) the same
    stage with the labels as they are learns them in the smoke profile's budget (0.655;
    seeds 1, 2: 0.656, 0.667; :func:`test_the_alarms_training_learns_the_true_labels`,
    slow), so a shuffled run that got the true labels all the same would score well above
    0.5. Mutation check: ``train_fold``
    passing the unshuffled labels scored 0.655 here and failed; on medium_dir, where the
    experts learn nothing in this budget (0.503), it passed. Shuffled, this data scored
    0.500 (seeds 1-3: 0.511, 0.512, 0.521). What this budget cannot show: the held-out
    participant's true labels alone reaching the fold (0.508), or the true labels reaching
    only the combination weights (0.525); the first is the held-out invariance test's
    (:func:`test_held_out_labels_never_reach_the_fitted_experts`)."""
    from sleepemo.io import read_json
    from sleepemo.experts import stage as train_experts

    stage, ds, folds = _stage(tmp_path, evoked_dir, shuffle_labels="true")
    metrics = stage.run(train_experts.run).metrics
    scores = metrics["lopo_window_auc"]
    print("shuffled experts:", scores)
    assert set(scores) == {"experts_mae_fomaml_shuffled", "experts_mae_fomaml_tta_shuffled"}
    for name, score in scores.items():
        assert abs(score - 0.5) <= ALARM_TOLERANCE, f"{name} scored {score:.4f}"
        assert read_json(tmp_path / "03_experts" / name / "meta.json")["diagnostic"]


@pytest.mark.slow
def test_the_alarms_training_learns_the_true_labels(evoked_dir, tmp_path):
    """What makes the alarm above able to fail: the same stage and data with the labels as
    they are (zero-shot only, to save the adaptation's time)."""
    from sleepemo.experts import stage as train_experts

    real, *_ = _stage(tmp_path, evoked_dir, tta_variants="[]")
    learned = real.run(train_experts.run).metrics["lopo_window_auc"]
    print("experts on the true labels:", learned)
    assert learned["experts_mae_fomaml"] > 0.5 + 3 * ALARM_TOLERANCE, learned


# ---------------------------------------------------------------- sleepemo predict
def _predictable(stage) -> None:
    """``stage``'s run folder made one that sleepemo predict opens (stage 00's record of
    the data's channels)."""
    from sleepemo.config import load_config
    from sleepemo.pipeline.stage import open_stage
    from sleepemo.pipeline import folds as make_folds

    open_stage("folds", load_config("smoke"), stage.data_dir, stage.out, progress=False,
               log=lambda m: None).run(make_folds.run)


@pytest.fixture
def experts_run(smoke_stage):
    """The smoke stage's output made a run folder that sleepemo predict opens."""
    stage, ds, folds, _ = smoke_stage
    _predictable(stage)
    torch.set_num_threads(1)  # as the stage ran (restored after the test)
    return stage.out, ds, folds


def test_predictor_reproduces_the_stage_test_predictions_exactly(experts_run):
    """Each test participant predicted on its own, from the fold checkpoints and weights
    (zero-shot, and _tta adapted on its own trials seeded by its id), equals the stage's
    test.npy bit for bit."""
    from sleepemo.pipeline.artefacts import find
    from sleepemo.predict.load import load_predictor

    out, ds, folds = experts_run
    for name in ("experts_mae_fomaml", "experts_mae_fomaml_tta"):
        p = load_predictor(out, name)
        got = np.concatenate([p.predict(ds.test[s].X, ds.sfreq, subject=s)
                              for s in folds.test_subjects])
        np.testing.assert_array_equal(got, find(out, name).test, err_msg=name)
    # zero-shot needs no id; adapted with another id gives other (still valid) outputs
    s = folds.test_subjects[0]
    zs = load_predictor(out, "experts_mae_fomaml")
    np.testing.assert_array_equal(zs.predict(ds.test[s].X, ds.sfreq),
                                  zs.predict(ds.test[s].X, ds.sfreq, subject=99))
    tta = load_predictor(out, "experts_mae_fomaml_tta")
    assert not np.array_equal(tta.predict(ds.test[s].X, ds.sfreq, subject=s),
                              tta.predict(ds.test[s].X, ds.sfreq, subject=s + 1))


def test_predict_files_reads_the_participant_id_from_the_file_name(experts_run):
    from sleepemo.pipeline.artefacts import find
    from sleepemo.predict.cli import predict_files, recordings

    out, ds, folds = experts_run
    s = folds.test_subjects[-1]
    res = predict_files(out, [recordings([ds.root / "testing"])[s]],
                        "experts_mae_fomaml_tta", progress=False)["predictions"]
    rows = folds.split_rows(find(out, "experts_mae_fomaml_tta").test, "test")[s]
    np.testing.assert_array_equal(res[s][0], rows)


def test_predictor_errors_are_one_clear_line(experts_run, tmp_path):
    """A TTA predictor without the participant's id, and a run whose zero-shot checkpoint
    (which the _tta result shares) is gone."""
    import shutil

    from sleepemo.predict.base import PredictError

    from sleepemo.predict.stream import Stream

    from sleepemo.predict.load import load_predictor

    out, ds, folds = experts_run
    tta = load_predictor(out, "experts_mae_fomaml_tta")
    X = ds.test[folds.test_subjects[0]].X
    with pytest.raises(PredictError, match="experts_mae_fomaml_tta: test-time adaptation "
                                           "is seeded by the participant's id"):
        tta.predict(X, ds.sfreq)
    with pytest.raises(PredictError, match="participant's id"):
        Stream(tta, ds.sfreq).push(X[0])
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("cache"))
    (copy / "03_experts" / "experts_mae_fomaml" / "fold3.pt").unlink()
    with pytest.raises(PredictError, match=r"experts_mae_fomaml/fold3\.pt: the fold's "
                                           "experts are missing"):
        load_predictor(copy, "experts_mae_fomaml_tta")


# ---------------------------------------------------------------- Euclidean alignment
@pytest.fixture(scope="module")
def aligned_run(smoke_stage, tmp_path_factory):
    """The smoke run copied, and stage 03 run again with ``mae_fomaml_ea`` (and its
    ``_tta``) beside ``mae_fomaml`` (reused): a run folder sleepemo predict opens."""
    import shutil

    from sleepemo.experts import stage as train_experts

    smoke, ds, folds, _ = smoke_stage
    out = tmp_path_factory.mktemp("experts_ea")
    shutil.copytree(smoke.out, out, dirs_exist_ok=True)
    stage, _, _ = _stage(out, smoke.data_dir, variants="[mae_fomaml, mae_fomaml_ea]",
                         tta_variants="[mae_fomaml, mae_fomaml_ea]")
    metrics = stage.run(train_experts.run).metrics
    _predictable(stage)
    return stage, ds, folds, metrics


def test_aligned_variant_reads_the_aligned_band_features_beside_its_twin(aligned_run,
                                                                         smoke_stage):
    """``experts_mae_fomaml_ea[_tta]`` are rows of their own beside their unaligned twins
    (unchanged) in the same run; the aligned experts read the band features of the
    participant's Euclidean-aligned trials (cache ``band_features_ea``), so their
    predictions differ from the twin's."""
    from sleepemo.experts.stage import fingerprints, fold_state
    from sleepemo.features import euclidean_align
    from sleepemo.mae.inputs import band_at, band_tokens
    from sleepemo.pipeline.artefacts import find

    stage, ds, folds, metrics = aligned_run
    names = ("experts_mae_fomaml", "experts_mae_fomaml_tta", "experts_mae_fomaml_ea",
             "experts_mae_fomaml_ea_tta")
    assert set(metrics["lopo_window_auc"]) == set(names)
    for name in names[2:]:
        contract_arrays(stage, name, ds, folds, metrics)
        assert json.loads((stage.dir / name / "meta.json").read_text())["aligned"]
    assert_same_results(stage, smoke_stage[0], names[:2])
    assert not np.allclose(np.load(stage.dir / names[2] / "oof.npy"),
                           np.load(stage.dir / names[0] / "oof.npy"), atol=1e-4)
    assert metrics["variants"]["experts_mae_fomaml_ea"] == ["mae_fomaml_ea", "mae", "fomaml",
                                                            "none", True]
    assert "| `experts_mae_fomaml_ea` | mae, aligned input |" in \
        (stage.dir / "evidence.md").read_text()
    assert (stage.out / "cache" / "band_features_ea").is_dir()
    # the plan computes the fingerprints the stage wrote (the aligned one of the aligned
    # cache's key)
    written = {n: find(stage.out, n).fingerprint for n in names}
    assert {p.name: p.fingerprint for p in fingerprints(stage)} == written
    assert written["experts_mae_fomaml_ea"] != written["experts_mae_fomaml"]
    state = fold_state(stage)
    s = folds.test_subjects[0]
    X, mcfg, stride = ds.test[s].X, stage.cfg.mae, stage.cfg.experts.stride
    np.testing.assert_array_equal(
        state.trainer("mae_fomaml_ea").feats[s],
        band_at(band_tokens(euclidean_align(X), ds.sfreq, mcfg), stride))
    np.testing.assert_array_equal(state.trainer("mae_fomaml").feats[s],
                                  band_at(band_tokens(X, ds.sfreq, mcfg), stride))


def test_predictor_reproduces_the_aligned_variant_exactly(aligned_run):
    """sleepemo predict aligns a new participant's trials as the stage did: each test
    participant's zero-shot and adapted predictions equal the stage's test.npy bit for
    bit; the alignment needs all of the participant's trials, so it is not online."""
    from sleepemo.pipeline.artefacts import find
    from sleepemo.predict.load import load_predictor

    stage, ds, folds, _ = aligned_run
    torch.set_num_threads(1)  # as the stage ran (restored after the test)
    for name in ("experts_mae_fomaml_ea", "experts_mae_fomaml_ea_tta"):
        p = load_predictor(stage.out, name)
        assert p.align and not p.online
        got = np.concatenate([p.predict(ds.test[s].X, ds.sfreq, subject=s)
                              for s in folds.test_subjects])
        np.testing.assert_array_equal(got, find(stage.out, name).test, err_msg=name)


def test_combining_the_experts_does_not_depend_on_blas_threads():
    """The experts' weighted mean gives the same bits on one BLAS thread (sleepemo
    predict) and on two (a stage run without OMP_NUM_THREADS). ``np.tensordot``, which
    the stage used before, fails this on the 2-core development machine (1 ulp in a few
    elements; a quick run's ``experts_mae_supervised`` differed from sleepemo predict
    in 1 of 346800 values)."""
    from types import SimpleNamespace

    from threadpoolctl import threadpool_limits

    from sleepemo.experts.infer import ExpertInference

    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(16)).astype(np.float32)
    t = rng.standard_normal((16, 900, 50)).astype(np.float32)
    r = rng.standard_normal((16, 900)).astype(np.float32)
    me = SimpleNamespace(n_times=200)
    out = {}
    for n in (1, 2):
        with threadpool_limits(n, user_api="blas"):
            out[n] = ExpertInference.combine(me, t, r, w)
    for a, b in zip(out[1], out[2]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(out[1][1], 1 / (1 + np.exp(-(w.astype(np.float64) @ r))),
                               rtol=0, atol=1e-6)  # and it is the weighted mean
