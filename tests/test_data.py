"""The reader: real layout and format, and a clear error naming the file for bad input."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import scipy.io

from sleepemo import CHANNELS, N_TIMES, SFREQ
from sleepemo.data.reader import DataError, load_dataset, load_solution, read_mat
from sleepemo.data.synth import write_mat73

from conftest import random_trials

TIMES = np.arange(N_TIMES) / SFREQ


def test_dense_file_is_read_in_matlab_axis_order(tmp_path):
    X = random_trials(5)
    path = write_mat73(tmp_path / "a.mat", X, TIMES, trialinfo=np.c_[[1, 2, 3, 4, 1], 1:6])
    with h5py.File(path, "r") as f:  # the real files' HDF5 axis order
        assert f["data/trial"].shape == (N_TIMES, len(CHANNELS), 5)
    with open(path, "rb") as fh:
        assert fh.read(19) == b"MATLAB 7.3 MAT-file"
    rec = read_mat(path)
    assert rec.X.dtype == np.float32 and rec.X.shape == (5, 16, N_TIMES)
    np.testing.assert_allclose(rec.X, X, rtol=1e-6)
    assert rec.ch_names == CHANNELS and rec.sfreq == SFREQ
    np.testing.assert_array_equal(rec.trialinfo[:, 0], [1, 2, 3, 4, 1])


def test_cell_trials_behind_object_references_are_dereferenced(tmp_path):
    X = random_trials(4)
    dense = read_mat(write_mat73(tmp_path / "d.mat", X, TIMES))
    cell = read_mat(write_mat73(tmp_path / "c.mat", X, TIMES, trial_format="cell"))
    with h5py.File(tmp_path / "c.mat", "r") as f:
        assert h5py.check_dtype(ref=f["data/trial"].dtype) is h5py.Reference
    np.testing.assert_array_equal(cell.X, dense.X)
    assert cell.ch_names == dense.ch_names


def test_matlab5_file_is_read_with_scipy(tmp_path):
    X = random_trials(3)
    data = {"trial": X, "time": TIMES[None, :], "fsample": 200.0,
            "label": np.array(CHANNELS, dtype=object)[:, None]}
    scipy.io.savemat(tmp_path / "v5.mat", {"data": data})
    rec = read_mat(tmp_path / "v5.mat")
    np.testing.assert_allclose(rec.X, X, rtol=1e-6)
    assert rec.ch_names == CHANNELS and rec.sfreq == 200.0


def test_pre_cue_samples_are_dropped(tmp_path):
    times = np.arange(-40, N_TIMES) / SFREQ
    X = random_trials(3, n_times=times.size)
    rec = read_mat(write_mat73(tmp_path / "p.mat", X, times))
    assert rec.X.shape[-1] == N_TIMES and rec.times[0] == 0
    np.testing.assert_allclose(rec.X, X[:, :, 40:], rtol=1e-6)


def test_labels_come_from_the_folder_not_trialinfo(make_folder):
    root = make_folder(train={2: (3, 4), 3: (4, 3)})
    # trialinfo column 0 (a cue id) says "1" for every neutral trial and "2" for every
    # emotional one: a reader that took it as the class would get the classes reversed
    for cls, n, cue in (("sleep_emo", 3, 2), ("sleep_neu", 4, 1)):
        write_mat73(root / "training" / cls / "S_2_cleaned.mat", random_trials(n), TIMES,
                    trialinfo=np.c_[np.full(n, cue), np.arange(n)])
    ds = load_dataset(root, progress=False)
    assert ds.train[2].y.tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert ds.train[2].trialinfo[:, 0].tolist() == [2, 2, 2, 1, 1, 1, 1]
    assert ds.train[3].y.tolist() == [1] * 4 + [0] * 3
    assert ds.train[2].trial.tolist() == [0, 1, 2, 0, 1, 2, 3]
    assert ds.test[1].y is None and ds.test[1].n_trials == 5
    assert ds.train_ids() == [2, 3] and ds.test_ids() == [1]


# ------------------------------------------------------------------ bad input
def _msg(exc_info) -> str:
    return str(exc_info.value)


@pytest.mark.parametrize("missing", ["training", "testing"])
def test_missing_top_folder(make_folder, missing):
    root = make_folder()
    shutil.rmtree(root / missing)
    with pytest.raises(DataError, match=f"missing folder '{missing}/'") as e:
        load_dataset(root, progress=False)
    assert str(root / missing) in _msg(e)


def test_missing_class_folder(make_folder):
    root = make_folder()
    shutil.rmtree(root / "training" / "sleep_neu")
    with pytest.raises(DataError, match="missing class folder 'training/sleep_neu/'"):
        load_dataset(root, progress=False)


def test_participant_in_only_one_class_folder(make_folder):
    root = make_folder()
    (root / "training" / "sleep_neu" / "S_3_cleaned.mat").unlink()
    with pytest.raises(DataError, match="participant 3 has no file in training/sleep_neu/") \
            as e:
        load_dataset(root, progress=False)
    assert "sleep_emo/S_3_cleaned.mat" in _msg(e)


def test_participant_in_training_and_testing(make_folder):
    root = make_folder(test={2: 4})
    with pytest.raises(DataError, match=r"participant\(s\) \[2\] appear in both"):
        load_dataset(root, progress=False)


def test_inconsistent_channels_between_files(make_folder):
    root = make_folder()
    bad = root / "training" / "sleep_neu" / "S_3_cleaned.mat"
    write_mat73(bad, random_trials(3, n_chans=15), TIMES, ch_names=CHANNELS[:15])
    with pytest.raises(DataError, match="channels .* differ") as e:
        load_dataset(root, progress=False)
    assert str(bad) in _msg(e)


def test_inconsistent_trial_length_between_files(make_folder):
    root = make_folder()
    bad = root / "testing" / "test_subject_1.mat"
    write_mat73(bad, random_trials(3, n_times=150), TIMES[:150])
    with pytest.raises(DataError, match=r"trials of shape \(16, 150\)") as e:
        load_dataset(root, progress=False)
    assert str(bad) in _msg(e)


def test_time_vector_that_does_not_fit_the_trials(tmp_path):
    path = write_mat73(tmp_path / "t.mat", random_trials(3), TIMES[:150])
    with pytest.raises(DataError, match="'data/time' has 150 values but trials have 200"):
        read_mat(path)


def test_wrong_number_of_dimensions(tmp_path):
    path = tmp_path / "w.mat"
    write_mat73(path, random_trials(2), TIMES)
    with h5py.File(path, "r+") as f:
        del f["data/trial"]
        f["data"].create_dataset("trial", data=np.zeros((2, 3, 4, 5)))
    with pytest.raises(DataError, match="'data/trial' has 4 dimensions") as e:
        read_mat(path)
    assert str(path) in _msg(e)


@pytest.mark.parametrize("value,word", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_nan_or_inf(tmp_path, value, word):
    X = random_trials(4)
    X[2, 5, 17] = value
    path = write_mat73(tmp_path / "n.mat", X, TIMES)
    with pytest.raises(DataError, match=r"1 NaN/Inf values in 'data/trial' \(trials \[2\]\)") \
            as e:
        read_mat(path)
    assert str(path) in _msg(e)


def test_empty_file(tmp_path):
    path = tmp_path / "S_2_cleaned.mat"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"file is empty \(0 bytes\)") as e:
        read_mat(path)
    assert str(path) in _msg(e)


def test_truncated_file(tmp_path):
    path = write_mat73(tmp_path / "x.mat", random_trials(20), TIMES)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        read_mat(path)
    assert str(path) in _msg(e)


def test_truncated_after_header(tmp_path):
    path = write_mat73(tmp_path / "x.mat", random_trials(2), TIMES)
    path.write_bytes(path.read_bytes()[:300])  # MATLAB header, no HDF5 superblock
    with pytest.raises(DataError, match="truncated or corrupt MATLAB v7.3 file"):
        read_mat(path)


def test_not_a_matlab_file(tmp_path):
    path = tmp_path / "x.mat"
    path.write_text("id,prediction\n1_0_0,0.5\n")
    with pytest.raises(DataError, match="not a MATLAB file") as e:
        read_mat(path)
    assert str(path) in _msg(e)


def test_missing_data_trial(tmp_path):
    path = write_mat73(tmp_path / "x.mat", random_trials(2), TIMES)
    with h5py.File(path, "r+") as f:
        del f["data/trial"]
    with pytest.raises(DataError, match="missing 'data/trial'") as e:
        read_mat(path)
    assert str(path) in _msg(e)


def test_missing_data_struct(tmp_path):
    path = tmp_path / "x.mat"
    with h5py.File(path, "w") as f:
        f.create_dataset("something", data=np.zeros(3))
    with pytest.raises(DataError, match=r"missing struct 'data' \(found: \['something'\]\)"):
        read_mat(path)


def test_solution_must_match_the_test_trials(make_folder):
    root = make_folder(test={1: 5})
    (root / "solution.csv").write_text("subject,trial,label\n" +
                                       "".join(f"1,{i},{i % 2}\n" for i in range(4)))
    ds = load_dataset(root, progress=False)
    with pytest.raises(DataError, match="test participant 1 do not match its 5 trials"):
        load_solution(ds.solution, ds)
