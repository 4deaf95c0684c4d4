"""Reader for the competition files.

Layout (the competition's, ``docs/method.md``)::

    <root>/training/sleep_emo/S_<id>_cleaned.mat   emotional trials of participant <id>
    <root>/training/sleep_neu/S_<id>_cleaned.mat   neutral trials (same file name!)
    <root>/testing/test_subject_<id>.mat           unlabelled trials
    <root>/solution.csv                            optional: test labels, local scoring only

Each file is a MATLAB struct ``data`` (FieldTrip style). MATLAB v7.3 files are HDF5 with a
512-byte header and are read with h5py; older (v5) files with :func:`scipy.io.loadmat`.
HDF5 stores MATLAB arrays with the axes reversed, so the HDF5 ``trial`` array of shape
(n_times, n_chans, n_trials) is the MATLAB array (n_trials, n_chans, n_times). A field may
also be a MATLAB cell, i.e. an array of HDF5 object references (one per trial, each a
(n_chans, n_times) matrix in MATLAB order); it is dereferenced.

The class of a training trial comes from its folder, never from ``trialinfo`` (whose first
column is the cue identity). Every problem is reported as a :class:`DataError` that names
the file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np
import scipy.io

from . import CHANNELS, SFREQ

CLASS_DIRS = {"sleep_emo": 1, "sleep_neu": 0}
_TRAIN_RE = re.compile(r"^S_?(\d+)(?:_cleaned)?\.mat$", re.IGNORECASE)
_TEST_RE = re.compile(r"^test_subject_?(\d+)\.mat$", re.IGNORECASE)
_MAT5_MAGIC = b"MATLAB 5.0 MAT-file"


class DataError(ValueError):
    """A competition file or folder is missing, malformed or inconsistent."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass
class Recording:
    """The contents of one .mat file.

    Attributes
    ----------
    X : ndarray, shape (n_trials, n_chans, n_times), float32
        Trials from the cue on (time >= 0).
    times : ndarray, shape (n_times,)
    ch_names : tuple of str
    sfreq : float
    trialinfo : ndarray, shape (n_trials, n_cols) or None
    """

    path: Path
    X: np.ndarray
    times: np.ndarray
    ch_names: tuple[str, ...]
    sfreq: float
    trialinfo: np.ndarray | None = None


@dataclass
class Subject:
    """All trials of one participant.

    Attributes
    ----------
    subject : int
        Participant id as in the file name.
    X : ndarray, shape (n_trials, n_chans, n_times), float32
        Training participants: emotional trials first, then neutral ones.
    y : ndarray of int8, shape (n_trials,) or None
        1 = emotional (file in ``sleep_emo/``), 0 = neutral; None for test participants.
    trial : ndarray of int, shape (n_trials,)
        0-based index of each trial in its own file (the submission's trial number).
    trialinfo : ndarray, shape (n_trials, n_cols) or None
    """

    subject: int
    X: np.ndarray
    y: np.ndarray | None
    trial: np.ndarray
    files: tuple[Path, ...]
    trialinfo: np.ndarray | None = None

    @property
    def n_trials(self) -> int:
        return int(self.X.shape[0])


@dataclass
class Dataset:
    """Training and test participants of one data folder, sharing channels and rate."""

    root: Path
    train: dict[int, Subject]
    test: dict[int, Subject]
    ch_names: tuple[str, ...]
    sfreq: float
    times: np.ndarray
    solution: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_times(self) -> int:
        return int(self.times.size)

    @property
    def n_chans(self) -> int:
        return len(self.ch_names)

    def subject(self, sid: int) -> Subject:
        """A training or test participant by id."""
        return self.train[sid] if sid in self.train else self.test[sid]

    def train_ids(self) -> list[int]:
        return sorted(self.train)

    def test_ids(self) -> list[int]:
        return sorted(self.test)


# --------------------------------------------------------------------------- one file
def _check_file(path: Path) -> str:
    """Return 'hdf5' or 'mat5', or raise DataError for an unreadable file."""
    if not path.is_file():
        raise DataError(path, "file not found")
    size = path.stat().st_size
    if size == 0:
        raise DataError(path, "file is empty (0 bytes)")
    with open(path, "rb") as fh:
        head = fh.read(128)
    if h5py.is_hdf5(path):
        return "hdf5"
    if head.startswith(_MAT5_MAGIC):
        return "mat5"
    if head.startswith(b"MATLAB 7.3"):
        raise DataError(path, f"truncated or corrupt MATLAB v7.3 file ({size} bytes): "
                              "no readable HDF5 superblock")
    raise DataError(path, "not a MATLAB file (neither HDF5/v7.3 nor MATLAB 5.0 format)")


def _h5_read(f: h5py.File, obj, path: Path, name: str) -> np.ndarray | list:
    """Read a dataset in MATLAB axis order; dereference cell arrays (object references)."""
    if not isinstance(obj, h5py.Dataset):
        raise DataError(path, f"'data/{name}' is a {type(obj).__name__}, expected an array")
    raw = obj[()]
    if h5py.check_dtype(ref=obj.dtype) is h5py.Reference:
        refs = np.asarray(raw).T.ravel()
        out = []
        for ref in refs:
            if not ref:
                raise DataError(path, f"'data/{name}' holds an empty object reference")
            target = f[ref]
            out.append(np.asarray(target[()]).T)
        return out
    return np.asarray(raw).T


def _char(arr: np.ndarray) -> str:
    """MATLAB char array (uint16 codes) to str."""
    return "".join(chr(int(c)) for c in np.asarray(arr).ravel() if int(c))


def _stack_trials(path: Path, value) -> np.ndarray:
    """Turn a dense array or a list of dereferenced cell elements into (n_trials, C, T)."""
    if isinstance(value, list):
        if len(value) == 1 and np.ndim(value[0]) == 3:
            arr = value[0]
        else:
            shapes = {np.shape(v) for v in value}
            if any(len(s) != 2 for s in shapes):
                raise DataError(path, "'data/trial' cell elements must be 2-D "
                                      f"(n_chans, n_times); got shapes {sorted(shapes)}")
            if len(shapes) != 1:
                raise DataError(path, "'data/trial' cell elements have inconsistent shapes "
                                      f"{sorted(shapes)}")
            arr = np.stack(value)
    else:
        arr = value
        if arr.ndim == 2:  # MATLAB drops a trailing singleton axis: a single trial
            arr = arr[None]
    if arr.ndim != 3:
        raise DataError(path, f"'data/trial' has {arr.ndim} dimensions (shape {arr.shape}); "
                              "expected (n_trials, n_chans, n_times)")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(path, f"'data/trial' is not numeric (dtype {arr.dtype})")
    return arr


def _fields_hdf5(path: Path) -> dict:
    out = {}
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise DataError(path, "missing struct 'data' (found: "
                                      f"{sorted(k for k in f.keys() if k != '#refs#')})")
            g = f["data"]
            if not isinstance(g, h5py.Group):
                raise DataError(path, "'data' is not a struct")
            if "trial" not in g:
                raise DataError(path, f"missing 'data/trial' (fields: {sorted(g.keys())})")
            for name in ("trial", "time", "label", "fsample", "trialinfo"):
                if name in g:
                    out[name] = _h5_read(f, g[name], path, name)
    except DataError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise DataError(path, f"truncated or corrupt HDF5 file ({exc})") from exc
    if "label" in out:
        lab = out["label"]
        out["label"] = [_char(v) for v in lab] if isinstance(lab, list) else None
    if isinstance(out.get("time"), list):  # FieldTrip keeps one time vector per trial
        out["time"] = out["time"][0]
    return out


def _fields_mat5(path: Path) -> dict:
    try:
        mat = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=False)
    except Exception as exc:  # scipy raises several types for broken files
        raise DataError(path, f"truncated or corrupt MATLAB 5 file ({exc})") from exc
    if "data" not in mat:
        raise DataError(path, "missing struct 'data' (found: "
                              f"{sorted(k for k in mat if not k.startswith('__'))})")
    data = np.asarray(mat["data"]).ravel()[0]
    names = getattr(data, "_fieldnames", [])
    if "trial" not in names:
        raise DataError(path, f"missing 'data/trial' (fields: {sorted(names)})")
    out = {}
    for name in ("trial", "time", "label", "fsample", "trialinfo"):
        if name in names:
            val = getattr(data, name)
            if val.dtype == object:  # a cell array
                items = [np.asarray(v) for v in val.ravel()]
                if name == "label":
                    out[name] = [str(np.asarray(v).ravel()[0]) if v.size else "" for v in items]
                elif name == "time":
                    out[name] = items[0]
                else:
                    out[name] = items
            else:
                out[name] = val
    return out


def read_mat(path: str | Path) -> Recording:
    """Read one competition file.

    Returns
    -------
    Recording
        Trials as float32 (n_trials, n_chans, n_times), restricted to time >= 0.

    Raises
    ------
    DataError
        Naming the file: empty, truncated, not HDF5/MAT, no ``data/trial``, wrong shape,
        NaN/Inf values, a time vector or channel list that does not fit the trials.
    """
    path = Path(path)
    kind = _check_file(path)
    fields = _fields_hdf5(path) if kind == "hdf5" else _fields_mat5(path)
    X = _stack_trials(path, fields["trial"])
    n_trials, n_chans, n_times = X.shape
    if n_trials == 0 or n_chans == 0 or n_times == 0:
        raise DataError(path, f"'data/trial' is empty (shape {X.shape})")

    times = None
    if fields.get("time") is not None:
        times = np.asarray(fields["time"], dtype=float).ravel()
        if times.size != n_times:
            raise DataError(path, f"'data/time' has {times.size} values but trials have "
                                  f"{n_times} samples (trial shape {X.shape} as "
                                  "(n_trials, n_chans, n_times))")
    if fields.get("fsample") is not None:
        sfreq = float(np.asarray(fields["fsample"]).ravel()[0])
    elif times is not None and times.size > 1:
        sfreq = float(np.round(1.0 / np.median(np.diff(times)), 6))
    else:
        sfreq = SFREQ
    if times is None:
        times = np.arange(n_times) / sfreq
    keep = times >= -1e-9
    if not keep.any():
        raise DataError(path, "no samples at time >= 0 in 'data/time'")
    if not keep.all():
        X, times = X[:, :, keep], times[keep]

    labels = fields.get("label")
    if labels:
        if len(labels) != n_chans:
            raise DataError(path, f"'data/label' names {len(labels)} channels but trials "
                                  f"have {n_chans} (trial shape {X.shape})")
        ch_names = tuple(labels)
    elif n_chans == len(CHANNELS):
        ch_names = CHANNELS
    else:
        ch_names = tuple(f"EEG{i:03d}" for i in range(n_chans))

    X = np.ascontiguousarray(X, dtype=np.float32)
    bad = ~np.isfinite(X)
    if bad.any():
        trials = np.unique(np.nonzero(bad)[0])
        raise DataError(path, f"{int(bad.sum())} NaN/Inf values in 'data/trial' "
                              f"(trials {trials[:5].tolist()}{' ...' if trials.size > 5 else ''})")

    info = fields.get("trialinfo")
    if isinstance(info, list) or info is None:
        info = None
    else:
        info = np.atleast_2d(np.asarray(info))
        if info.shape[0] != n_trials:
            info = info.T if info.shape[1] == n_trials else None
    return Recording(path=path, X=X, times=times, ch_names=ch_names, sfreq=sfreq,
                     trialinfo=info)


# --------------------------------------------------------------------------- a folder
def _ids(folder: Path, pattern: re.Pattern) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        m = pattern.match(p.name)
        if not m:
            continue
        sid = int(m.group(1))
        if sid in found:
            raise DataError(p, f"participant {sid} has two files here ({found[sid].name})")
        found[sid] = p
    return found


def _check_same(ref: Recording, rec: Recording) -> None:
    if rec.ch_names != ref.ch_names:
        raise DataError(rec.path, f"channels {list(rec.ch_names)} differ from "
                                  f"{list(ref.ch_names)} in {ref.path}")
    if rec.X.shape[1:] != ref.X.shape[1:]:
        raise DataError(rec.path, f"trials of shape {rec.X.shape[1:]} (n_chans, n_times) "
                                  f"differ from {ref.X.shape[1:]} in {ref.path}")
    if not np.isclose(rec.sfreq, ref.sfreq):
        raise DataError(rec.path, f"sampling rate {rec.sfreq} Hz differs from "
                                  f"{ref.sfreq} Hz in {ref.path}")


def _info(*recs: Recording) -> np.ndarray | None:
    infos = [r.trialinfo for r in recs]
    if any(i is None for i in infos) or len({i.shape[1] for i in infos}) != 1:
        return None
    return np.concatenate(infos)


def scan(root: str | Path) -> tuple[dict[int, tuple[Path, Path]], dict[int, Path]]:
    """Find the files of a data folder without reading them.

    Returns
    -------
    train : dict  participant -> (emotional file, neutral file)
    test : dict  participant -> test file
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "data folder not found")
    for sub in ("training", "testing"):
        if not (root / sub).is_dir():
            raise DataError(root / sub, f"missing folder '{sub}/' in the data folder")
    by_class = {}
    for cls in CLASS_DIRS:
        folder = root / "training" / cls
        if not folder.is_dir():
            raise DataError(folder, f"missing class folder 'training/{cls}/'")
        by_class[cls] = _ids(folder, _TRAIN_RE)
    emo, neu = by_class["sleep_emo"], by_class["sleep_neu"]
    for a, b, other in ((emo, neu, "sleep_neu"), (neu, emo, "sleep_emo")):
        for sid in sorted(set(a) - set(b)):
            raise DataError(a[sid], f"participant {sid} has no file in training/{other}/ "
                                    "(each training participant needs both classes)")
    if not emo:
        raise DataError(root / "training", "no training files S_<id>_cleaned.mat found")
    test = _ids(root / "testing", _TEST_RE)
    if not test:
        raise DataError(root / "testing", "no test files test_subject_<id>.mat found")
    both = sorted(set(emo) & set(test))
    if both:
        raise DataError(test[both[0]], f"participant(s) {both} appear in both training/ "
                                       "and testing/")
    return {s: (emo[s], neu[s]) for s in sorted(emo)}, dict(sorted(test.items()))


def load_dataset(root: str | Path, subjects: Iterable[int] | None = None,
                 progress: bool = True) -> Dataset:
    """Read every file of a data folder.

    Parameters
    ----------
    root : path
        Folder holding ``training/`` and ``testing/``.
    subjects : iterable of int, optional
        Read only these participants (training or test); default all.
    progress : bool
        Show a progress bar.
    """
    from .progress import bar

    root = Path(root)
    train_files, test_files = scan(root)
    wanted = None if subjects is None else set(subjects)
    jobs = [("train", s, f) for s, f in train_files.items()] + \
           [("test", s, (f,)) for s, f in test_files.items()]
    if wanted is not None:
        jobs = [j for j in jobs if j[1] in wanted]
    ref: Recording | None = None
    train, test = {}, {}
    for split, sid, files in bar(jobs, desc="reading .mat files", unit="participant",
                                 enabled=progress):
        recs = [read_mat(p) for p in files]
        for rec in recs:
            ref = ref or rec
            _check_same(ref, rec)
        if split == "train":
            emo, neu = recs
            train[sid] = Subject(
                subject=sid, X=np.concatenate([emo.X, neu.X]),
                y=np.r_[np.ones(len(emo.X), np.int8), np.zeros(len(neu.X), np.int8)],
                trial=np.r_[np.arange(len(emo.X)), np.arange(len(neu.X))],
                files=tuple(files), trialinfo=_info(emo, neu))
        else:
            (rec,) = recs
            test[sid] = Subject(subject=sid, X=rec.X, y=None, trial=np.arange(len(rec.X)),
                                files=tuple(files), trialinfo=rec.trialinfo)
    if ref is None:
        raise DataError(root, "no participants selected")
    sol = root / "solution.csv"
    return Dataset(root=root, train=train, test=test, ch_names=ref.ch_names,
                   sfreq=ref.sfreq, times=ref.times, solution=sol if sol.is_file() else None)


def load_solution(path: str | Path, dataset: Dataset | None = None) -> dict[int, np.ndarray]:
    """Read ``solution.csv`` (``subject,trial,label``) into participant -> labels.

    Parsing and row checks are :func:`sleepemo.metric.read_solution`'s; with ``dataset``
    given, also checks that the file covers exactly the test trials.
    """
    from .metric import read_solution

    path = Path(path)
    try:
        df = read_solution(path)
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read solution file ({exc})") from exc
    out = {}
    for sid, g in df.sort_values(["subject", "trial"]).groupby("subject"):
        trials = g["trial"].to_numpy()
        if not np.array_equal(trials, np.arange(len(trials))):
            raise DataError(path, f"participant {sid}: trials are not 0..{len(trials) - 1}")
        out[int(sid)] = g["label"].to_numpy().astype(np.int8)
    if dataset is not None:
        for sid, subj in dataset.test.items():
            if sid not in out or len(out[sid]) != subj.n_trials:
                raise DataError(path, f"labels for test participant {sid} do not match its "
                                      f"{subj.n_trials} trials")
    return out
