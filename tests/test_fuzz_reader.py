"""Hostile .mat files: every one ends in a clear one-line DataError naming the file or in a
correct read; never another exception type, a hang or a memory blow-up.

Property-based (hypothesis, ``derandomize=True`` so that the examples, hence the
reliability records, are the same on every run): truncation and bit flips anywhere in
valid MATLAB v7.3 (dense and cell) and MATLAB 5 (plain and compressed) files, trial arrays
of every dtype and odd shapes. Hand-made: references to nowhere, zero trials, arrays that
declare far more memory than the file holds (read in a subprocess under an address-space
limit), odd file names in a data folder. ``-m slow`` runs the properties with ten times
more examples.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sleepemo import CHANNELS, SFREQ
from sleepemo.data.reader import DataError, read_mat, scan
from sleepemo.data.synth import write_mat73

from conftest import random_trials

AREA = "reader: fuzzing"
OUTCOME = ("one-line DataError naming the file, or a correct read (float32, finite, "
           "consistent shapes); no other exception, no example over 2 s")
FAST, SLOW = 150, 1500  # examples per property: default run, -m slow
RUNS = [pytest.param(FAST, id="default"), pytest.param(SLOW, id="slow", marks=pytest.mark.slow)]
N_TIMES = 20  # short trials: the files' headers are a larger share of the bytes flipped
TIMES = np.arange(N_TIMES) / SFREQ
FORMATS = {"v73_dense": "MATLAB v7.3 file (dense trials)",
           "v73_cell": "MATLAB v7.3 file (trials in a cell)",
           "mat5": "MATLAB 5 file", "mat5_zip": "MATLAB 5 file (compressed)"}
TIMEOUT_S = 30  # a read that takes this long is a hang


@pytest.fixture(autouse=True, scope="module")
def _subnormal_floats():
    """Hypothesis draws floats only where subnormal floats exist, and a PyTorch stage run
    earlier in this process (``Stage.run`` -> ``flush_denormals``) leaves flush-to-zero
    on process-wide: off for this module's tests, put back afterwards."""
    import torch

    def flushed(tiny=5e-324):  # (an argument: not folded at compile time)
        return tiny * 1.0 == 0.0

    was = flushed()
    torch.set_flush_denormal(False)
    assert not flushed()
    yield
    torch.set_flush_denormal(was)


def fuzz(n: int, *strategies):
    """``@given(*strategies)`` with deterministic examples and a per-example deadline."""
    def wrap(fn):
        return settings(max_examples=n, derandomize=True, database=None,
                        deadline=timedelta(seconds=2), print_blob=False,
                        suppress_health_check=[HealthCheck.too_slow])(given(*strategies)(fn))
    return wrap


@contextmanager
def time_limit(seconds: float = TIMEOUT_S):
    """Fail instead of hanging (Python-level loops; the deadline flags slow C calls)."""
    def alarm(signum, frame):
        raise TimeoutError(f"read took over {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def outcome(path: Path, **kw):
    """Read ``path``: the Recording, or None after checking the DataError is one line that
    names the file. Any other exception fails the test."""
    try:
        with time_limit():
            rec = read_mat(path, **kw)
    except DataError as exc:
        msg = str(exc)
        assert msg.startswith(f"{path}: ") and "\n" not in msg and exc.path == path, msg
        return None
    n_trials, n_chans, n_times = rec.X.shape
    assert rec.X.dtype == np.float32 and min(rec.X.shape) > 0 and np.isfinite(rec.X).all()
    assert rec.times.shape == (n_times,) and len(rec.ch_names) == n_chans
    assert np.isfinite(rec.sfreq) and rec.sfreq > 0
    return rec


def _mat5(path: Path, X: np.ndarray, compress: bool, **fields) -> Path:
    data = {"trial": X, "time": TIMES[None, :X.shape[-1]], "fsample": SFREQ,
            "label": np.array(CHANNELS[:X.shape[1]], dtype=object)[:, None],
            "trialinfo": np.c_[np.arange(len(X)) % 4 + 1, np.arange(len(X))]}
    data.update(fields)
    scipy.io.savemat(path, {"data": data}, do_compression=compress)
    return path


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """name -> (bytes of a small valid file, its trials)."""
    d = tmp_path_factory.mktemp("valid")
    X = random_trials(3, n_times=N_TIMES)
    info = np.c_[[1, 2, 3], [0, 1, 2]]
    paths = {"v73_dense": write_mat73(d / "a.mat", X, TIMES, trialinfo=info),
             "v73_cell": write_mat73(d / "b.mat", X, TIMES, trialinfo=info,
                                     trial_format="cell"),
             "mat5": _mat5(d / "c.mat", X, False), "mat5_zip": _mat5(d / "d.mat", X, True)}
    for p in paths.values():  # the starting points are read correctly
        np.testing.assert_allclose(read_mat(p).X, X, rtol=1e-6)
    return {k: (p.read_bytes(), X) for k, p in paths.items()}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------ byte-level damage
@pytest.mark.parametrize("n", RUNS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_at_any_offset(valid, work, fmt, n, reliability):
    data, X = valid[fmt]
    path = work / f"trunc_{fmt}.mat"

    @fuzz(n, st.integers(0, len(data) - 1))
    def run(cut):
        path.write_bytes(data[:cut])
        rec = outcome(path)
        if rec is not None:  # only unused bytes were cut: the same trials
            np.testing.assert_allclose(rec.X, X, rtol=1e-6)

    run()
    reliability(AREA, f"{FORMATS[fmt]} truncated at a random offset (hypothesis, {n} "
                "examples)", OUTCOME + "; a read gives the original trials")


@pytest.mark.parametrize("n", RUNS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_bit_flips_anywhere(valid, work, fmt, n, reliability):
    data, _ = valid[fmt]
    path = work / f"flip_{fmt}.mat"
    flips = st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 7)),
                     min_size=1, max_size=8)

    @fuzz(n, flips)
    def run(where):
        b = bytearray(data)
        for i, bit in where:
            b[i] ^= 1 << bit
        path.write_bytes(bytes(b))
        outcome(path)

    run()
    reliability(AREA, f"{FORMATS[fmt]} with 1-8 bits flipped anywhere (hypothesis, {n} "
                "examples)", OUTCOME)


@pytest.mark.parametrize("n", RUNS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_random_bytes_written_anywhere(valid, work, fmt, n, reliability):
    data, _ = valid[fmt]
    path = work / f"bytes_{fmt}.mat"

    @fuzz(n, st.integers(0, len(data) - 1), st.binary(min_size=1, max_size=64))
    def run(at, junk):
        path.write_bytes(data[:at] + junk + data[at + len(junk):])
        outcome(path)

    run()
    reliability(AREA, f"{FORMATS[fmt]} with 1-64 random bytes written at a random offset "
                f"(hypothesis, {n} examples)", OUTCOME)


# ------------------------------------------------------------------ types and shapes
def _replace_trial(path: Path, **create) -> Path:
    """A valid v7.3 file whose ``data/trial`` is replaced (``create_dataset`` arguments);
    time and labels are removed so that any trial shape may be read."""
    write_mat73(path, random_trials(1, n_times=N_TIMES), TIMES)
    with h5py.File(path, "r+") as f:
        for name in ("trial", "time", "label"):
            del f["data"][name]
        f["data"].create_dataset("trial", **create)
    return path


NUMERIC = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
           np.float16, np.float32, np.float64]


@pytest.mark.parametrize("n", RUNS)
def test_integer_and_float_trials_read_as_float32(work, n, reliability):
    path = work / "dtype.mat"
    arrays = hnp.arrays(st.sampled_from(NUMERIC), (N_TIMES, 16, 2),
                        elements={"allow_nan": False, "allow_infinity": False})

    @fuzz(n, arrays)
    def run(arr):
        _replace_trial(path, data=arr)
        rec = outcome(path)
        with np.errstate(over="ignore"):
            want = arr.T.astype(np.float32)
        if rec is None:  # only values beyond float32's range may be refused
            assert not np.isfinite(want).all()
        else:
            np.testing.assert_array_equal(rec.X, want)

    run()
    reliability(AREA, f"trials stored as every integer and float dtype, any values "
                f"(hypothesis, {n} examples)", "read exactly as float32; float64 values "
                "beyond float32's range: one-line DataError (NaN/Inf after conversion)")


REFUSED = {
    "numpy complex": dict(data=np.ones((N_TIMES, 16, 2), np.complex128)),
    "MATLAB complex (real/imag compound)": dict(data=np.zeros(
        (N_TIMES, 16, 2), np.dtype([("real", "<f8"), ("imag", "<f8")]))),
    "bool": dict(data=np.ones((N_TIMES, 16, 2), bool)),
    "fixed-length strings": dict(data=np.full((N_TIMES, 16, 2), b"ab")),
    "variable-length strings": dict(data=np.array(["x"] * 4, dtype=object),
                                    dtype=h5py.string_dtype()),
}


@pytest.mark.parametrize("kind", REFUSED)
def test_non_real_trials_are_refused(work, kind, reliability):
    path = _replace_trial(work / "refused.mat", **REFUSED[kind])
    with pytest.raises(DataError, match="'data/trial' (is not real-valued numbers|holds "
                                        "(complex|compound) values)") as e:
        read_mat(path)
    assert str(e.value).startswith(str(path)) and outcome(path) is None
    reliability(AREA, f"trials stored as {kind}", "one-line DataError naming the file and "
                "the dtype (our choice: none of these is an EEG sample)")


@pytest.mark.parametrize("n", RUNS)
def test_odd_shapes(work, n, reliability):
    path = work / "shape.mat"

    @fuzz(n, st.lists(st.integers(0, 3), min_size=0, max_size=5))
    def run(shape):
        values = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
        _replace_trial(path, data=values)
        rec = outcome(path)
        ok = len(shape) in (2, 3) and 0 not in shape
        assert (rec is not None) == ok, (shape, rec)
        if ok:  # HDF5 holds MATLAB's axes reversed; a 2-D array is one trial
            np.testing.assert_array_equal(rec.X, values.T.reshape((-1,) * (3 - len(shape))
                                                                  + values.T.shape))

    run()
    reliability(AREA, f"trial arrays of 0-5 dimensions with 0-3 elements per axis (1-D, 4-D, "
                f"zero-size axes, 1 channel, 1 sample; hypothesis, {n} examples)",
                "2-D and 3-D arrays without empty axes read with the right axis order; "
                "the others: one-line DataError")


def _zero_trials(path: Path, how: str) -> Path:
    if how == "MATLAB empty array":
        _replace_trial(path, data=np.array([0, 16, N_TIMES], np.uint64))
        with h5py.File(path, "r+") as f:
            f["data/trial"].attrs["MATLAB_empty"] = np.uint8(1)
    elif how == "HDF5 zero-size dataset":
        _replace_trial(path, shape=(N_TIMES, 16, 0), dtype="f8")
    elif how == "empty cell":
        _replace_trial(path, shape=(1, 0), dtype=h5py.ref_dtype)
    elif how == "HDF5 null dataspace":
        _replace_trial(path, data=h5py.Empty("f8"))
    else:  # MATLAB 5
        _mat5(path, np.zeros((0, 16, N_TIMES)), False)
    return path


@pytest.mark.parametrize("how", ["MATLAB empty array", "HDF5 zero-size dataset",
                                 "empty cell", "HDF5 null dataspace", "MATLAB 5"])
def test_zero_trials(work, how, reliability):
    path = _zero_trials(work / "zero.mat", how)
    with pytest.raises(DataError, match="'data/trial' is (an )?empty") as e:
        read_mat(path)
    assert str(e.value).startswith(str(path))
    reliability(AREA, f"zero trials ({how})", "one-line DataError: 'data/trial' is empty")


# ------------------------------------------------------------------ object references
def _cell_file(path: Path) -> Path:
    return write_mat73(path, random_trials(3, n_times=N_TIMES), TIMES, trial_format="cell")


def _set_ref(path: Path, target) -> None:
    with h5py.File(path, "r+") as f:
        refs = f["data/trial"][()]
        refs.ravel()[0] = target(f)
        f["data/trial"][...] = refs


def _dangling(path: Path) -> None:
    """Point the first reference at an address where no object is."""
    with h5py.File(path, "r") as f:
        offset = f["data/trial"].id.get_offset()
    b = bytearray(path.read_bytes())
    b[offset:offset + 8] = struct.pack("<Q", 600)  # inside the superblock's area
    path.write_bytes(bytes(b))


def _named_type(f):
    f["a_type"] = np.dtype("f8")
    return f["a_type"].ref


REFERENCES = {
    "to an address holding no object": (_dangling, "object reference to nothing"),
    "empty (null)": (lambda p: _set_ref(p, lambda f: h5py.Reference()),
                     "empty object reference"),
    "to a group": (lambda p: _set_ref(p, lambda f: f["data"].ref), "is a struct"),
    "to a named datatype": (lambda p: _set_ref(p, _named_type), "is a Datatype"),
    "to the cell itself (a cell of cells)": (
        lambda p: _set_ref(p, lambda f: f["data/trial"].ref), "not real-valued"),
}


@pytest.mark.parametrize("case", REFERENCES)
def test_bad_object_references(work, case, reliability):
    path = _cell_file(work / "refs.mat")
    damage, message = REFERENCES[case]
    damage(path)
    with pytest.raises(DataError, match=message) as e:
        read_mat(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    reliability(AREA, f"a trial cell's object reference {case}",
                "one-line DataError naming the file and the element")


# ------------------------------------------------------------------ enormous declarations
def _mat5_dims(path: Path, dims: tuple[int, int, int], compress: bool,
               data_bytes: int | None = None) -> Path:
    """A MATLAB 5 file whose trial array's header declares ``dims`` (and its data element
    ``data_bytes``) while the file holds a (3, 16, 20) array."""
    X = random_trials(3, n_times=N_TIMES)
    raw = _mat5(path.with_suffix(".tmp"), X, False).read_bytes()
    old = struct.pack("<2I3i", 5, 12, *X.shape)
    assert raw.count(old) == 1
    raw = raw.replace(old, struct.pack("<2I3i", 5, 12, *dims))
    if data_bytes is not None:  # the trial's real part: double, 3 * 16 * 20 values
        tag = struct.pack("<2I", 9, X.size * 8)
        assert raw.count(tag) == 1
        raw = raw.replace(tag, struct.pack("<2I", 9, data_bytes))
    if compress:  # one compressed element holding the patched matrix element
        head, body = raw[:128], raw[128:]
        z = zlib.compress(body)
        raw = head + struct.pack("<2I", 15, len(z)) + z
    path.write_bytes(raw)
    return path


def _enormous(d: Path) -> dict[str, Path]:
    """Files that declare ~238 GiB (or 4 GiB) while holding a few kB."""
    huge = (2000, 16, 10**6)  # HDF5 order: 10**6 trials of 16 x 2000 float64
    cases = {}
    p = _replace_trial(d / "h5_dense.mat", shape=huge, dtype="f8", chunks=(2000, 16, 1))
    cases["HDF5 chunked dataset (10**6, 16, 2000) float64, no data written"] = p
    p = _cell_file(d / "h5_cell.mat")
    with h5py.File(p, "r+") as f:
        f.create_dataset("big", shape=huge, dtype="f8", chunks=(2000, 16, 1))
    _set_ref(p, lambda f: f["big"].ref)
    cases["a trial cell's reference to a chunked (10**6, 16, 2000) float64 dataset with "
          "no data written"] = p
    cases["MATLAB 5 header declaring (10**6, 16, 2000) double"] = _mat5_dims(
        d / "m5.mat", (10**6, 16, 2000), False)
    cases["compressed MATLAB 5 element declaring (10**6, 16, 2000) double"] = _mat5_dims(
        d / "m5z.mat", (10**6, 16, 2000), True)
    cases["compressed MATLAB 5 data element declaring 4 GiB"] = _mat5_dims(
        d / "m5n.mat", (3, 16, N_TIMES), True, data_bytes=2**32 - 8)
    return cases


_LIMITED_READ = textwrap.dedent("""
    import json, resource, sys
    import h5py, numpy as np
    from sleepemo.data.reader import DataError, read_mat
    status = open("/proc/self/status").read()
    vm = int(next(l for l in status.splitlines() if l.startswith("VmSize")).split()[1]) * 1024
    limit = vm + 256 * 2**20  # what is mapped now, plus 256 MiB
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {}
    for path in sys.argv[1:]:
        try:
            read_mat(path)
            out[path] = "read"
        except DataError as exc:
            out[path] = str(exc)
    def control(fn):
        try:
            fn()
            return "allocated"
        except MemoryError:
            return "MemoryError"
    out["control: 1 GiB under the limit"] = control(lambda: np.ones(2**27))
    with h5py.File(sys.argv[1], "r") as f:  # the read that the size check prevents
        out["control: h5py reads the dense case"] = control(lambda: f["data/trial"][()])
    out["rss_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    print(json.dumps(out))
""")


def test_enormous_declarations_are_refused_without_allocating(tmp_path, reliability):
    cases = _enormous(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _LIMITED_READ, *map(str, cases.values())],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    # the limit bites: without the size check, the same read fails for lack of memory
    assert out["control: 1 GiB under the limit"] == "MemoryError"
    assert out["control: h5py reads the dense case"] == "MemoryError"
    for case, path in cases.items():
        msg = out[str(path)]
        assert msg.startswith(f"{path}: ") and "over the reader's limit of 1.0 GiB" in msg, msg
        assert "MAX_ARRAY_BYTES" in msg
        reliability(AREA, f"{case}, read under an address-space limit of 256 MiB above "
                    "the interpreter's", "one-line DataError naming the file, the declared "
                    "size and the limit, before allocating (under the same limit, reading "
                    "the array raises MemoryError)")
    assert out["rss_growth_mb"] < 64, out


def test_the_limit_counts_all_arrays_of_a_file(work, reliability):
    """Many small references add up: the sum over a file's arrays is held to the limit."""
    X = random_trials(3, n_times=N_TIMES)  # 3 cells of 16 x 20 float64 = 2560 bytes each
    path = write_mat73(work / "sum.mat", X, TIMES, trial_format="cell")
    # the whole file: the cell (3 references of 8 bytes), its 3 trials, time, rate, labels
    assert outcome(path, max_bytes=3 * 2560 + 1000) is not None
    with pytest.raises(DataError, match=r"'data/trial' element 2 \(shape \(20, 16\), "
                                        r"float64\) declares 2.5 KiB \(with the 5.0 KiB "
                                        r"before it\), over the reader's limit"):
        read_mat(path, max_bytes=24 + 3 * 2560 - 1)
    reliability(AREA, "a trial cell whose elements are each under the size limit but "
                "together over it", "one-line DataError at the element that crosses it")


# ------------------------------------------------------------------ file names in a folder
def _add(root: Path, name: str, where=("sleep_emo", "sleep_neu"), kind="file"):
    X = random_trials(2, n_times=N_TIMES)
    for cls in where:
        p = root / "training" / cls / name
        if kind == "file":
            write_mat73(p, X, TIMES)
        elif kind == "dir":
            p.mkdir()
        else:
            p.symlink_to(p.parent / "no_such_target.mat")
    return root / "training" / where[0] / name


# name, classes, kind, expected participants or error
NAMES = [
    ("S_4 _cleaned.mat", "space in the name", ("sleep_emo", "sleep_neu"), "file", [2, 3]),
    ("S_\u0664_cleaned.mat", "Arabic-Indic digit four", ("sleep_emo", "sleep_neu"), "file",
     [2, 3]),
    ("S_4_cl\u00e9aned.mat", "accented letter", ("sleep_emo", "sleep_neu"), "file", [2, 3]),
    ("S_04_cleaned.mat", "leading zero", ("sleep_emo", "sleep_neu"), "file", [2, 3, 4]),
    ("S_02_cleaned.mat", "leading zero, beside S_2", ("sleep_emo",), "file",
     "participant 2 has two files here"),
    ("S_4_cleaned.MAT", "upper-case .MAT", ("sleep_emo", "sleep_neu"), "file", [2, 3, 4]),
    ("S_2_cleaned.mat.bak", "a .bak copy", ("sleep_emo", "sleep_neu"), "file", [2, 3]),
    ("S_4_cleaned.mat", "a directory", ("sleep_emo",), "dir",
     "named like a data file but not a regular file"),
    ("S_4_cleaned.mat", "a dangling symlink", ("sleep_emo",), "link",
     "named like a data file but a broken symbolic link"),
]


@pytest.mark.parametrize("name,label,where,kind,expected", NAMES,
                         ids=[n[1] for n in NAMES])
def test_odd_file_names_in_a_data_folder(make_folder, name, label, where, kind, expected,
                                         reliability):
    root = make_folder(train={2: (2, 2), 3: (2, 2)}, test={1: 2})
    path = _add(root, name, where, kind)
    if isinstance(expected, list):
        train, test = scan(root)
        assert sorted(train) == expected and sorted(test) == [1]
        outcome_text = (f"scan finds participants {expected}" + (
            "" if len(expected) == 2 else f" (the file read as S{expected[-1]})") +
            ("; the file is ignored" if len(expected) == 2 else ""))
    else:
        with pytest.raises(DataError, match=expected) as e:
            scan(root)
        assert str(e.value).startswith(str(path.parent)) and path.name in str(e.value)
        outcome_text = f"one-line DataError naming it: '{expected}'"
    reliability("reader: file names", f"{label} ({name!r} in training/"
                f"{'+'.join(where)}/)", outcome_text)
