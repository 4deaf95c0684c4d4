"""Stage 02: band-feature cache, the MAE's shapes, masking and loss, resume after a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sleepemo.features import BANDS, BandFeatureCache, band_features
from sleepemo.io import write_json
from sleepemo.mae.inputs import encode_tokens
from sleepemo.mae.model import (ChannelEncoder, EncoderConfig, MaskedAutoencoder,
                                 n_parameters, random_mask)

REPO = Path(__file__).resolve().parents[1]


def test_band_features_shape_and_per_participant_normalisation():
    X = np.random.default_rng(0).standard_normal((12, 3, 200)) * 10
    F = band_features(X, 200.0)
    assert F.shape == (12, 3, 200, len(BANDS)) and F.dtype == np.float32
    np.testing.assert_allclose(F.mean(axis=(0, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(F.std(axis=(0, 2)), 1, atol=1e-3)


def test_band_feature_cache_reuses_and_invalidates(tmp_path):
    X = {1: np.random.default_rng(1).standard_normal((4, 2, 200)),
         2: np.random.default_rng(2).standard_normal((3, 2, 200))}
    root = tmp_path / "cache"
    a = BandFeatureCache(root, "data-A").build(X, 200.0, progress=False)
    stamp = a.path(1).stat().st_mtime_ns
    again = BandFeatureCache(root, "data-A").build(X, 200.0, progress=False)
    assert again.key == a.key and again.path(1).stat().st_mtime_ns == stamp  # reused
    assert isinstance(again.load(1), np.memmap) and again.load(2).shape == (3, 2, 200, 5)
    other_data = BandFeatureCache(root, "data-B").build(X, 200.0, progress=False)
    assert other_data.key != a.key and not a.dir.exists()  # stale folder removed
    theta = np.array(other_data.load(1)[..., 1])
    other_bands = BandFeatureCache(root, "data-B", bands=[(4, 8)]).build(X, 200.0,
                                                                          progress=False)
    assert other_bands.key != other_data.key and not other_data.dir.exists()
    assert other_bands.load(1).shape[-1] == 1
    np.testing.assert_allclose(other_bands.load(1)[..., 0], theta, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="not built"):
        BandFeatureCache(root, "data-C").load(1)


def test_encoder_and_mae_shapes_and_size():
    cfg = EncoderConfig()
    enc = ChannelEncoder(cfg)
    x = torch.randn(7, 200, 5)
    chan = torch.arange(7)
    assert enc(x, None, chan).shape == (7, 200, 16)
    assert MaskedAutoencoder(cfg)(x, random_mask(7, 200, 0.4), chan).shape == (7, 200, 5)
    # by hand: embed 5*16+16, positions 200*16, mask token 16, final norm 32, and per
    # block norms 2*32, qkv 16*48+48, proj 16*16+16, fc1 16*128+128, fc2 128*16+16
    per_block = 64 + 816 + 272 + 2176 + 2064
    expected = 96 + 3200 + 16 + 32 + 3 * per_block
    assert n_parameters(ChannelEncoder(EncoderConfig(n_chans=0))) == expected == 19520
    assert n_parameters(enc) == expected + 16 * 16  # plus the channel embedding


def test_mask_hides_exactly_the_ratio_at_random_places():
    g = torch.Generator().manual_seed(0)
    m = random_mask(64, 200, 0.4, g)
    assert m.dtype == torch.bool and (m.sum(1) == 80).all()
    assert len({tuple(np.flatnonzero(r)) for r in m.numpy()}) == 64  # all different
    same = random_mask(64, 200, 0.4, torch.Generator().manual_seed(0))
    assert torch.equal(m, same)
    with pytest.raises(ValueError, match="hides 0 of 200"):
        random_mask(2, 200, 0.001)


def test_loss_is_on_masked_points_only_and_masked_inputs_are_hidden():
    torch.manual_seed(0)
    model = MaskedAutoencoder(EncoderConfig()).eval()
    x = torch.randn(5, 200, 5)
    mask = random_mask(5, 200, 0.4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        rec = model(x, mask)
        err = ((rec - x) ** 2).mean(-1)
        assert torch.isclose(model.loss(x, mask), err[mask].mean())
        assert not torch.isclose(model.loss(x, mask), err.mean())
        # the values at masked points never reach the encoder
        x2 = x.clone()
        x2[mask] = 1e3
        torch.testing.assert_close(model(x2, mask), rec)
        # the loss ignores the visible points' reconstruction: change the target there
        assert torch.isclose(((model(x, mask) - torch.where(mask[..., None], x, 0 * x)) ** 2)
                             .mean(-1)[mask].mean(), model.loss(x, mask))


def _stage(args, out, data_dir, **popen):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, str(REPO / "src" / "02_mae.py"), "--profile", "smoke",
           "--data-dir", str(data_dir), "--out", str(out), "--no-progress", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


@pytest.fixture(scope="module")
def folds_out(small_dir, tmp_path_factory):
    """Two artefact folders with the small data's folds.json."""
    from sleepemo.data.reader import load_dataset
    from sleepemo.data.folds import write_folds

    ds = load_dataset(small_dir, progress=False)
    outs = [tmp_path_factory.mktemp(name) for name in ("straight", "killed")]
    for out in outs:
        write_folds(ds, out / "folds.json")
    return outs


def test_killed_run_resumes_to_the_uninterrupted_result(small_dir, folds_out, reliability):
    straight, killed = folds_out
    # 50 tokens per sequence (the quick profile's): epochs of ~1 s, long enough to be
    # killed in between (the test polls for the first checkpoint every 50 ms)
    args = ["--set", "mae.epochs=4", "--set", "mae.seqs_per_epoch=1536", "--set", "mae.stride=4"]
    p = _stage(args, straight, small_dir)
    log = p.communicate(timeout=600)[0]
    assert p.returncode == 0, log

    p = _stage(args, killed, small_dir)
    ckpt = killed / "02_mae" / "ckpt" / "last.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)  # a real kill, right after the first checkpoint
    p.communicate()
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] < 3 and not (killed / "02_mae" / "encoder.pt").exists(), \
        "the run finished before it could be killed"

    p = _stage(args, killed, small_dir)
    log = p.communicate(timeout=600)[0]
    assert p.returncode == 0, log
    assert f"resuming after epoch {state['epoch'] + 1} of 4" in log
    from sleepemo.mae.model import load_encoder
    enc = load_encoder(straight / "02_mae")
    assert enc.pos.shape == (1, 50, 16)
    a = torch.load(straight / "02_mae" / "encoder.pt", weights_only=True)
    torch.testing.assert_close(enc.state_dict()["pos"], a["pos"])
    b = torch.load(killed / "02_mae" / "encoder.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    reliability("faults: SIGKILL",
                "stage 02 (MAE pre-training) killed by SIGKILL right after its first epoch's "
                "checkpoint, then rerun",
                "resumes after that epoch; every weight of the encoder equal to an "
                "uninterrupted run's (the SIGKILL of every stage at random points: "
                "`-m slow`)")

    import json
    metrics = json.loads((straight / "02_mae" / "metrics.json").read_text())
    r = metrics["reconstruction_mse_on_held_out_participants"]
    assert set(r) >= {"mae", "band_mean", "linear_interpolation"} and r["masked_points"] > 0
    assert set(metrics["linear_probe_lopo_window_auc"]) == {"mae_probe", "band_probe"}
    assert not set(metrics["val_subjects"]) & set(
        json.loads((straight / "02_mae" / "run.json").read_text())["pretrain_subjects"])


def test_token_cache_is_the_encoders_pooled_output_and_rebuilds_for_another_mae(
        small_dir, tmp_path):
    """The shared MAE token cache (stages 04 and 05) holds exactly the encoder's
    per-token output averaged to the asked stride; another MAE gets a new folder and the
    stale one is removed; a participant not built is a clear error."""
    from conftest import stage_with_random_mae
    from sleepemo.features import pool_time
    from sleepemo.mae.model import TokenCache, load_encoder
    from sleepemo.pipeline.stage import stage_dir

    stage, ds, folds = stage_with_random_mae("fusion", tmp_path, small_dir)
    mcfg = stage.cfg.mae
    band = BandFeatureCache.for_run(tmp_path, ds, folds, mcfg.bands, mcfg.feature, False,
                                    evoked=mcfg.evoked())
    s = folds.test_subjects[0]
    cache = TokenCache.for_run(tmp_path, band, [s], 8, progress=False)
    x = pool_time(np.asarray(band.load(s), np.float32), mcfg.stride)
    want = pool_time(encode_tokens(load_encoder(stage_dir(tmp_path, "mae")), x),
                     8 // mcfg.stride)
    assert cache.load(s).shape == (folds.n_trials[s], ds.n_chans, 25, want.shape[-1])
    np.testing.assert_allclose(cache.load(s), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not built"):
        cache.load(folds.test_subjects[1])
    info = json.loads((stage_dir(tmp_path, "mae") / "run.json").read_text())
    write_json(stage_dir(tmp_path, "mae") / "run.json", info | {"fingerprint": "another"})
    other = TokenCache.for_run(tmp_path, band, [s], 8, progress=False)
    assert other.dir != cache.dir and not cache.dir.exists() and other.path(s).is_file()
    with pytest.raises(ValueError, match="multiple"):
        TokenCache.for_run(tmp_path, band, [s], 6, progress=False)


def test_coarser_token_caches_are_pooled_from_stage_02s_without_encoding_again(
        small_dir, tmp_path, monkeypatch):
    """Stage 02 keeps every token; a coarser cache (stages 04/05) pooled from it holds
    exactly what encoding again would give, and the encoder is not run for it. The
    probe's window means are the tokens overlapping the window, averaged."""
    from conftest import stage_with_random_mae
    from sleepemo.features import pool_time, token_window
    from sleepemo.mae import model as mae_module
    from sleepemo.mae.model import TokenCache

    stage, ds, folds = stage_with_random_mae("fusion", tmp_path, small_dir,
                                             sets=["mae.stride=4"])
    mcfg = stage.cfg.mae
    band = BandFeatureCache.for_run(tmp_path, ds, folds, mcfg.bands, mcfg.feature, False,
                                    evoked=mcfg.evoked())
    s = folds.test_subjects[0]
    base = TokenCache.for_run(tmp_path, band, [s], mcfg.stride, progress=False)
    every = np.asarray(base.load(s))
    w = token_window((70, 130), mcfg.stride)
    np.testing.assert_array_equal(base.window_means(s, (70, 130)),
                                  every[:, :, w[0]:w[1]].mean(2).reshape(len(every), -1))

    def no_encoder(*a, **k):
        raise AssertionError("the encoder ran again")

    monkeypatch.setattr(mae_module, "load_encoder", no_encoder)
    pooled = TokenCache.for_run(tmp_path, band, [s], 8, progress=False)
    np.testing.assert_array_equal(pooled.load(s), pool_time(every, 8 // mcfg.stride))
    monkeypatch.undo()
    pooled.path(s).unlink()
    base.path(s).unlink()  # without stage 02's tokens the coarser cache is encoded
    again = TokenCache.for_run(tmp_path, band, [s], 8, progress=False)
    np.testing.assert_allclose(again.load(s), pool_time(every, 8 // mcfg.stride),
                               rtol=1e-5, atol=1e-6)
