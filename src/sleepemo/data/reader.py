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

from sleepemo import CHANNELS, SFREQ
from sleepemo.config import BAD_VALUES
from sleepemo.data import names
from sleepemo.data.names import CLASS_DIRS
from sleepemo.errors import InputError
from sleepemo.metric import read_solution
from sleepemo.progress import bar

_MAT5_MAGIC = b"MATLAB 5.0 MAT-file"

#: Largest array, in bytes as declared by the file (uncompressed, as it would sit in
#: memory), that the reader allocates; the sum over one file's arrays is held to it too.
#: The file's size on disk does not bound this: MATLAB v7.3 files are gzip-compressed HDF5
#: (and MATLAB 5 files zlib-compressed), gzip reaches ~1000:1 on constant data, and an
#: HDF5 chunked dataset with unwritten chunks stores nothing at all. The competition's
#: largest file holds ~23 MB of float64 trials, so 1 GiB leaves a 40-fold margin.
MAX_ARRAY_BYTES = 1 << 30


class DataError(InputError, ValueError):
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
    repairs: list["Repair"] = field(default_factory=list)


@dataclass(frozen=True)
class Repair:
    """NaN/Inf samples of one (trial, channel) replaced under ``bad_values='interpolate'``.

    ``method``: ``linear`` (interpolated along time from the channel's valid samples; the
    nearest valid value before the first or after the last), ``channel mean`` (the channel
    had no valid sample in the trial: the mean of the trial's other repaired-or-valid
    channels at each time) or ``zero`` (no channel of the trial had a valid sample).
    """

    file: str
    trial: int       # 0-based index in its file
    channel: str
    samples: int     # how many samples were replaced
    method: str

    FIELDS = ("file", "trial", "channel", "samples", "method")


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
    bad_values: str = "error"
    repairs: list[Repair] = field(default_factory=list)

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


class _Budget:
    """Bytes a file may make the reader allocate (:data:`MAX_ARRAY_BYTES`), checked
    against each array's declared size *before* it is read."""

    def __init__(self, path: Path, limit: int):
        self.path, self.limit, self.used = path, int(limit), 0

    def take(self, nbytes: int, what: str, verb: str = "declares") -> None:
        nbytes = int(nbytes)
        if self.used + nbytes > self.limit:
            before = f" (with the {_size(self.used)} before it)" if self.used else ""
            raise DataError(self.path, f"{what} {verb} {_size(nbytes)}{before}, over the "
                                       "reader's "
                                       f"limit of {_size(self.limit)} per file (MAX_ARRAY_"
                                       "BYTES in sleepemo.data.reader; a compressed file can "
                                       "declare far more than it stores)")
        self.used += nbytes


def _size(nbytes: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""  # unreachable


def _h5_dataset(obj, path: Path, what: str, budget: _Budget) -> np.ndarray | None:
    """One HDF5 dataset's values (HDF5 axis order) after the size check; None for a
    MATLAB empty array (``MATLAB_empty`` attribute) or an HDF5 null dataspace."""
    if not isinstance(obj, h5py.Dataset):
        kind = "struct (HDF5 group)" if isinstance(obj, h5py.Group) else type(obj).__name__
        raise DataError(path, f"{what} is a {kind}, expected an array")
    if obj.is_virtual:
        raise DataError(path, f"{what} is an HDF5 virtual dataset (its data would come from "
                              "other files)")
    if obj.shape is None or obj.attrs.get("MATLAB_empty", 0):
        return None
    budget.take(int(np.prod(obj.shape, dtype=object)) * obj.dtype.itemsize,
                f"{what} (shape {obj.shape}, {obj.dtype})")
    return obj[()]


def _h5_read(f: h5py.File, obj, path: Path, name: str,
             budget: _Budget) -> np.ndarray | list | None:
    """Read a dataset in MATLAB axis order; dereference cell arrays (object references)."""
    what = f"'data/{name}'"
    raw = _h5_dataset(obj, path, what, budget)
    if raw is None:
        return None
    if h5py.check_dtype(ref=obj.dtype) is h5py.Reference:
        refs = np.asarray(raw).T.ravel()
        out = []
        for i, ref in enumerate(refs):
            if not ref:
                raise DataError(path, f"{what} holds an empty object reference")
            try:
                target = f[ref]
            except (KeyError, ValueError) as exc:  # h5py raises these for dangling refs
                raise DataError(path, f"{what} element {i} is an object reference to "
                                      f"nothing ({exc})") from exc
            val = _h5_dataset(target, path, f"{what} element {i}", budget)
            out.append(np.zeros((0, 0)) if val is None else np.asarray(val).T)
        return out
    if obj.dtype.names is not None:  # a compound type; MATLAB writes complex so
        kind = "complex" if set(obj.dtype.names) == {"real", "imag"} else "compound"
        raise DataError(path, f"{what} holds {kind} values (dtype {obj.dtype}); expected "
                              "real numbers")
    return np.asarray(raw).T


def _char(arr: np.ndarray) -> str:
    """MATLAB char array (uint16 codes) to str."""
    return "".join(chr(int(c)) for c in np.asarray(arr).ravel() if int(c))


def _real(path: Path, what: str, arr) -> np.ndarray:
    """``arr`` as a numpy array of real numbers (integers or floats), else DataError.
    Booleans, complex numbers, strings and objects are refused: none is an EEG sample,
    a time or a rate."""
    arr = np.asarray(arr)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(path, f"{what} is not real-valued numbers (dtype {arr.dtype})")
    return arr


def _stack_trials(path: Path, value) -> np.ndarray:
    """Turn a dense array or a list of dereferenced cell elements into (n_trials, C, T)."""
    if value is None:
        raise DataError(path, "'data/trial' is empty (a MATLAB empty array: no trials)")
    if isinstance(value, list):
        if not value:
            raise DataError(path, "'data/trial' is an empty cell array (no trials)")
        value = [_real(path, "'data/trial'", v) for v in value]
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
        arr = _real(path, "'data/trial'", value)
        if arr.ndim == 2:  # one (n_chans, n_times) trial
            arr = arr[None]
    if arr.ndim != 3:
        raise DataError(path, f"'data/trial' has {arr.ndim} dimensions (shape {arr.shape}); "
                              "expected (n_trials, n_chans, n_times)")
    return arr


def _fields_hdf5(path: Path, max_bytes: int = MAX_ARRAY_BYTES) -> dict:
    out = {}
    budget = _Budget(path, max_bytes)
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
                if name not in g:
                    continue
                if isinstance(g.get(name, getlink=True), h5py.ExternalLink):
                    raise DataError(path, f"'data/{name}' is a link to another file")
                out[name] = _h5_read(f, g[name], path, name, budget)
    except DataError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise DataError(path, f"truncated or corrupt HDF5 file ({_one_line(exc)})") from exc
    if "label" in out:
        lab = out["label"]
        out["label"] = _labels(path, lab) if isinstance(lab, list) else None
    if isinstance(out.get("time"), list):  # FieldTrip keeps one time vector per trial
        out["time"] = out["time"][0] if out["time"] else None
    return out


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _labels(path: Path, cells: list) -> list[str]:
    """MATLAB cell of char arrays (uint16 codes) to channel names."""
    try:
        return [_char(_real(path, "'data/label'", v)) for v in cells]
    except (ValueError, OverflowError) as exc:  # DataError is a ValueError too
        raise DataError(path, "'data/label' is not a cell of channel names "
                              f"({getattr(exc, 'problem', _one_line(exc))})") from None


# MATLAB 5 format (MathWorks, "MAT-File Format"): data types of element tags, and the
# bytes per element scipy allocates for each array class (char becomes 4-byte unicode).
_MI_COMPRESSED, _MI_MATRIX = 15, 14
_MX_CELL, _MX_STRUCT, _MX_OBJECT, _MX_SPARSE = 1, 2, 3, 5
_MX_ITEMSIZE = {4: 4, 6: 8, 7: 4, 8: 1, 9: 1, 10: 2, 11: 2, 12: 4, 13: 4, 14: 8, 15: 8}
# element types of data sub-elements (numbers, UTF text); scipy's compiled reader indexes
# a table with the type and crashes (SIGSEGV) on others, so they are refused first
_MI_SIZE = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8, 16: 1, 17: 2, 18: 4}
_MI_DATA = set(_MI_SIZE)


class _Short(Exception):
    """A MATLAB 5 element runs past the end of what contains it."""


class _Mat5Stream:
    """Sequential bytes of a MATLAB 5 file or of one compressed element, read or skipped
    in bounded memory; ``left`` bytes may still be read (None: until the source ends)."""

    def __init__(self, read, left: int | None):
        self._read, self.left = read, left
        self.last_nbytes = 0

    def read(self, n: int) -> bytes:
        if self.left is not None and n > self.left:
            raise _Short
        out = b""
        while len(out) < n:
            chunk = self._read(min(n - len(out), 1 << 16))
            if not chunk:
                raise _Short
            out += chunk
        if self.left is not None:
            self.left -= n
        return out

    def skip(self, n: int) -> None:
        while n > 0:
            step = min(n, 1 << 16)
            self.read(step)
            n -= step

    def at_end(self) -> bool:
        return self.left == 0

    def sub(self, n: int) -> "_Mat5Stream":
        if self.left is not None and n > self.left:
            raise _Short
        if self.left is not None:
            self.left -= n
        remaining = [n]

        def read(k):
            k = min(k, remaining[0])
            data = self._read(k) if k else b""
            remaining[0] -= len(data)
            return data
        return _Mat5Stream(read, n)


def _zlib_stream(raw: _Mat5Stream, budget: _Budget) -> _Mat5Stream:
    """The decompressed bytes of a compressed element (``raw``), produced on demand; the
    decompressed total counts against ``budget`` (a zlib bomb is refused early)."""
    import zlib

    z = zlib.decompressobj()
    pending = [b""]

    def read(k):
        while not pending[0]:
            if z.unconsumed_tail:
                data = z.decompress(z.unconsumed_tail, 1 << 16)
            elif raw.left:
                data = z.decompress(raw.read(min(raw.left, 1 << 16)), 1 << 16)
            else:
                return b""
            budget.take(len(data), "a compressed MATLAB 5 element", "decompresses to")
            pending[0] = data
        out, pending[0] = pending[0][:k], pending[0][k:]
        return out
    return _Mat5Stream(read, None)


def _mat5_tag(s: _Mat5Stream, order: str) -> tuple[int, int, bool]:
    """(data type, byte count, small-element format) of the next element tag."""
    mdtype, nbytes = np.frombuffer(s.read(8), dtype=f"{order}u4").tolist()
    if mdtype >> 16:  # small data element: type and count share the first word
        return mdtype & 0xFFFF, mdtype >> 16, True
    return mdtype, nbytes, False


def _corrupt5(budget: _Budget, problem: str) -> DataError:
    return DataError(budget.path, f"corrupt MATLAB 5 file: {problem}")


def _walk_mat5_matrix(s: _Mat5Stream, order: str, budget: _Budget, depth: int) -> None:
    """Check one miMATRIX element: its declared sizes (and its children's) against the
    budget, and that its sub-elements are the ones its class needs, without reading its
    arrays. scipy's compiled reader trusts these headers (a wrong one can crash it)."""
    if depth > 32:
        raise _corrupt5(budget, "cells/structs nested more than 32 deep")
    if s.at_end():  # an empty matrix (e.g. an empty cell element) has no sub-elements
        return
    _, flags = _mat5_field(s, order, budget, "array flags", {6}, limit=8)
    if len(flags) != 8:
        raise _corrupt5(budget, f"array flags of {len(flags)} bytes (expected 8)")
    word = int(np.frombuffer(flags[:4], dtype=f"{order}u4")[0])
    cls, is_complex = word & 0xFF, bool(word & 0x800)
    _, dims = _mat5_field(s, order, budget, "dimensions", {5}, limit=4 * 64)
    shape = np.frombuffer(dims, dtype=f"{order}i4").tolist() if len(dims) % 4 == 0 else []
    if len(shape) < 2 or min(shape) < 0:
        raise _corrupt5(budget, f"array dimensions {shape or dims!r}")
    n = int(np.prod(shape, dtype=object))
    _mat5_field(s, order, budget, "array name", {1}, limit=1 << 16)
    what = f"array of shape {tuple(shape)}"
    children = 0
    if cls in (_MX_STRUCT, _MX_OBJECT):
        if cls == _MX_OBJECT:
            _mat5_field(s, order, budget, "class name", {1}, limit=1 << 16)
        _, flen = _mat5_field(s, order, budget, "field name length", {5}, limit=4)
        flen = int(np.frombuffer(flen, dtype=f"{order}i4")[0]) if len(flen) == 4 else 0
        _, names = _mat5_field(s, order, budget, "field names", {1}, limit=1 << 20)
        if flen <= 0 or len(names) % flen:
            raise _corrupt5(budget, f"struct field names ({len(names)} bytes) not in "
                                    f"blocks of the declared length {flen}")
        budget.take(n * max(len(names) // flen, 1) * 8, f"MATLAB 5 {what}")
        children = n * (len(names) // flen)
    elif cls == _MX_CELL:
        budget.take(n * 8, f"MATLAB 5 {what}")
        children = n
    elif cls in _MX_ITEMSIZE:
        budget.take(n * _MX_ITEMSIZE[cls] * (2 if is_complex else 1), f"MATLAB 5 {what}")
        for part in ("real part", "imaginary part")[: 1 + is_complex]:
            if n == 0 and s.at_end():
                break
            mdtype, nbytes = _mat5_field(s, order, budget, f"{what}'s {part}", _MI_DATA)[0], \
                s.last_nbytes
            size = _MI_SIZE[mdtype]
            ok = (n <= nbytes <= 4 * n) if mdtype == 16 else nbytes == n * size
            if not ok:
                raise _corrupt5(budget, f"{what}'s {part} holds {nbytes} bytes of element "
                                        f"type {mdtype} ({n} values declared)")
        if not s.at_end():
            raise _corrupt5(budget, f"{what} has more sub-elements than its class takes")
        return
    elif cls != _MX_SPARSE:  # function handles, opaque objects: not in a data file
        raise _corrupt5(budget, f"unsupported MATLAB array class {cls}")
    for _ in range(children):
        mdtype, nbytes, small = _mat5_tag(s, order)
        if mdtype != _MI_MATRIX or small:
            raise _corrupt5(budget, f"cell or struct element of type {mdtype} (expected a "
                                    "matrix)")
        child = s.sub(nbytes)
        _walk_mat5_matrix(child, order, budget, depth + 1)
        if not child.at_end():
            raise _corrupt5(budget, "a cell or struct element longer than its contents")
    if cls == _MX_SPARSE:
        while not s.at_end():  # row indices, column starts, values
            _mat5_field(s, order, budget, what, _MI_DATA)
    elif not s.at_end():
        raise _corrupt5(budget, f"{what} has more sub-elements than its class takes")


def _mat5_field(s: _Mat5Stream, order: str, budget: _Budget, what: str, types: set[int],
                limit: int | None = None) -> tuple[int, bytes]:
    """Read one sub-element of an allowed type: small ones (flags, dimensions, names, at
    most ``limit`` bytes) are returned, data ones are skipped after the size check.
    The byte count is left in ``s.last_nbytes``."""
    first = int(np.frombuffer(s.read(4), dtype=f"{order}u4")[0])
    mdtype = first & 0xFFFF if first >> 16 else first
    if mdtype not in types:
        expected = ("a number or text type" if types == _MI_DATA
                    else " or ".join(map(str, sorted(types))))
        raise _corrupt5(budget, f"{what} has element type {mdtype} (expected {expected})")
    if first >> 16:  # small data element format: 2-byte count, 2-byte type, 4 bytes data
        s.last_nbytes = first >> 16
        if s.last_nbytes > 4:
            raise _corrupt5(budget, f"{what}: small element of {s.last_nbytes} bytes")
        return mdtype, s.read(4)[: s.last_nbytes]
    nbytes = s.last_nbytes = int(np.frombuffer(s.read(4), dtype=f"{order}u4")[0])
    if limit is not None and nbytes > limit:
        raise _corrupt5(budget, f"{what} of {nbytes} bytes")
    if limit is None:
        budget.take(nbytes, what)  # scipy allocates the declared count before reading
        s.skip(nbytes)
        data = b""
    else:
        data = s.read(nbytes)
    s.skip((-nbytes) % 8)
    return mdtype, data


def _check_mat5_sizes(path: Path, max_bytes: int) -> None:
    """Walk a MATLAB 5 file's element headers (decompressing in bounded memory) and refuse
    one whose arrays declare more than ``max_bytes``, before scipy allocates them."""
    budget, unzipped = _Budget(path, max_bytes), _Budget(path, max_bytes)
    with open(path, "rb") as fh:
        head = fh.read(128)
        if len(head) < 128:
            raise DataError(path, "truncated MATLAB 5 file (header shorter than 128 bytes)")
        order = {b"IM": "<", b"MI": ">"}.get(head[126:128])
        if order is None:
            raise DataError(path, "corrupt MATLAB 5 header (no endian indicator)")
        top = _Mat5Stream(fh.read, path.stat().st_size - 128)
        try:
            while not top.at_end():
                mdtype, nbytes, small = _mat5_tag(top, order)
                if small:
                    continue
                if mdtype == _MI_COMPRESSED:
                    raw = top.sub(nbytes)
                    inner = _zlib_stream(raw, unzipped)
                    mdtype, nbytes, small = _mat5_tag(inner, order)
                    if mdtype == _MI_MATRIX and not small:
                        _walk_mat5_matrix(inner.sub(nbytes), order, budget, 0)
                    raw.skip(raw.left)
                elif mdtype == _MI_MATRIX:
                    body = top.sub(nbytes)
                    _walk_mat5_matrix(body, order, budget, 0)
                    body.skip(body.left)
                else:
                    top.skip(min(nbytes + (-nbytes) % 8, top.left))
        except _Short:
            raise DataError(path, "truncated or corrupt MATLAB 5 file (an element runs past "
                                  "the end of the data that holds it)") from None
        except Exception as exc:  # zlib.error for corrupt compressed data
            if isinstance(exc, DataError):
                raise
            raise DataError(path, "truncated or corrupt MATLAB 5 file "
                                  f"({_one_line(exc)})") from None


def _fields_mat5(path: Path, max_bytes: int = MAX_ARRAY_BYTES) -> dict:
    _check_mat5_sizes(path, max_bytes)
    try:
        mat = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=False)
    except Exception as exc:  # scipy raises several types for broken files
        raise DataError(path, f"truncated or corrupt MATLAB 5 file ({_one_line(exc)})") \
            from exc
    if "data" not in mat:
        raise DataError(path, "missing struct 'data' (found: "
                              f"{sorted(k for k in mat if not k.startswith('__'))})")
    data = np.asarray(mat["data"]).ravel()
    names = getattr(data[0], "_fieldnames", []) if data.size else []
    if "trial" not in names:
        raise DataError(path, f"missing 'data/trial' (fields: {sorted(names)})")
    data = data[0]
    out = {}
    for name in ("trial", "time", "label", "fsample", "trialinfo"):
        if name in names:
            val = np.asarray(getattr(data, name))
            if val.dtype == object:  # a cell array
                items = [np.asarray(v) for v in val.ravel()]
                if name == "label":
                    out[name] = [str(v.ravel()[0]) if v.size else "" for v in items]
                elif name == "time":
                    out[name] = items[0] if items else None
                else:
                    out[name] = items
            else:
                out[name] = val
    return out


def read_mat(path: str | Path, bad_values: str = "error",
             max_bytes: int = MAX_ARRAY_BYTES) -> Recording:
    """Read one competition file.

    Parameters
    ----------
    bad_values : {'error', 'interpolate'}
        NaN/Inf samples (or values beyond float32's range): raise a DataError naming the
        trials, or repair them (:func:`repair_bad_values`; listed in ``Recording.repairs``).
    max_bytes : int
        Refuse arrays declaring more bytes than this (before allocating them).

    Returns
    -------
    Recording
        Trials as float32 (n_trials, n_chans, n_times), restricted to time >= 0.

    Raises
    ------
    DataError
        Naming the file: empty, truncated, not HDF5/MAT, no ``data/trial``, wrong shape or
        type, arrays over ``max_bytes``, NaN/Inf values (policy ``error``), a time vector,
        rate or channel list that does not fit the trials.
    """
    if bad_values not in BAD_VALUES:
        raise ValueError(f"bad_values must be one of {BAD_VALUES}, not {bad_values!r}")
    path = Path(path)
    kind = _check_file(path)
    fields = (_fields_hdf5 if kind == "hdf5" else _fields_mat5)(path, max_bytes)
    X = _stack_trials(path, fields["trial"])
    n_trials, n_chans, n_times = X.shape
    if n_trials == 0 or n_chans == 0 or n_times == 0:
        raise DataError(path, f"'data/trial' is empty (shape {X.shape})")

    times = None
    if fields.get("time") is not None:
        times = _real(path, "'data/time'", fields["time"]).astype(float).ravel()
        if times.size != n_times:
            raise DataError(path, f"'data/time' has {times.size} values but trials have "
                                  f"{n_times} samples (trial shape {X.shape} as "
                                  "(n_trials, n_chans, n_times))")
        if not np.isfinite(times).all():
            raise DataError(path, "'data/time' has NaN/Inf values")
    fsample = fields.get("fsample")
    if fsample is not None and np.size(fsample):
        sfreq = float(_real(path, "'data/fsample'", fsample).ravel()[0])
    elif times is not None and times.size > 1:
        with np.errstate(divide="ignore"):
            sfreq = float(np.round(1.0 / np.median(np.diff(times)), 6))
    else:
        sfreq = SFREQ
    if not (np.isfinite(sfreq) and sfreq > 0):
        raise DataError(path, f"sampling rate {sfreq} Hz ('data/fsample' or the steps of "
                              "'data/time') is not a positive number")
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

    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: Inf, caught below
        X = np.ascontiguousarray(X, dtype=np.float32)
    repairs: list[Repair] = []
    bad = ~np.isfinite(X)
    if bad.any():
        if bad_values == "error":
            trials = np.unique(np.nonzero(bad)[0])
            raise DataError(path, f"{int(bad.sum())} NaN/Inf values in 'data/trial' "
                                  f"(trials {trials[:5].tolist()}"
                                  f"{' ...' if trials.size > 5 else ''}); "
                                  "--set data.bad_values=interpolate repairs them")
        X, repairs = repair_bad_values(X, path, ch_names)

    info = fields.get("trialinfo")
    if isinstance(info, list) or info is None:
        info = None
    else:
        info = np.atleast_2d(np.asarray(info))
        if info.ndim != 2 or not np.issubdtype(info.dtype, np.number):
            info = None  # optional and never a label: a malformed one is left out
        elif info.shape[0] != n_trials:
            info = info.T if info.shape[1] == n_trials else None
    return Recording(path=path, X=X, times=times, ch_names=ch_names, sfreq=sfreq,
                     trialinfo=info, repairs=repairs)


def repair_bad_values(X: np.ndarray, path: str | Path = "",
                      ch_names: tuple[str, ...] | None = None
                      ) -> tuple[np.ndarray, list[Repair]]:
    """Replace NaN/Inf samples (policy ``data.bad_values=interpolate``).

    Within each (trial, channel): linear interpolation along time between the valid
    samples, the nearest valid value before the first and after the last one. A channel
    without any valid sample in a trial gets the mean, at each time, of that trial's other
    channels (after their own repair); a trial without any valid sample gets zeros. No
    trial is dropped.

    Parameters
    ----------
    X : ndarray, shape (n_trials, n_chans, n_times)

    Returns
    -------
    X : ndarray, same shape and dtype, all finite (a repaired copy)
    repairs : list of Repair, one per (trial, channel) changed
    """
    X = np.array(X, copy=True)
    n_chans, n_times = X.shape[1:]
    names = ch_names or tuple(str(c) for c in range(n_chans))
    bad = ~np.isfinite(X)
    repairs = []  # (trial, channel index, Repair)
    t = np.arange(n_times)
    for trial in np.flatnonzero(bad.any(axis=(1, 2))):
        empty = []
        for ch in np.flatnonzero(bad[trial].any(axis=1)):
            ok = ~bad[trial, ch]
            if ok.any():
                X[trial, ch, ~ok] = np.interp(t[~ok], t[ok], X[trial, ch, ok])
                method = "linear"
            else:
                empty.append(ch)
                continue
            repairs.append((trial, ch, Repair(str(path), int(trial), names[ch],
                                              int((~ok).sum()), method)))
        full = np.setdiff1d(np.arange(n_chans), empty)
        for ch in empty:
            if full.size:
                X[trial, ch] = X[trial, full].mean(axis=0)
                method = "channel mean"
            else:
                X[trial, ch] = 0
                method = "zero"
            repairs.append((trial, ch, Repair(str(path), int(trial), names[ch], n_times,
                                              method)))
    return X, [r for _, _, r in sorted(repairs, key=lambda x: x[:2])]


# --------------------------------------------------------------------------- a folder
def _ids(folder: Path, pattern: re.Pattern) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        m = pattern.match(p.name)
        if not m:
            continue
        if not p.is_file():
            what = ("a broken symbolic link" if p.is_symlink() and not p.exists()
                    else "not a regular file")
            raise DataError(p, f"named like a data file but {what}")
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
        by_class[cls] = _ids(folder, names.TRAIN)
    emo, neu = by_class["sleep_emo"], by_class["sleep_neu"]
    for a, b, other in ((emo, neu, "sleep_neu"), (neu, emo, "sleep_emo")):
        for sid in sorted(set(a) - set(b)):
            raise DataError(a[sid], f"participant {sid} has no file in training/{other}/ "
                                    "(each training participant needs both classes)")
    if not emo:
        raise DataError(root / "training", "no training files S_<id>_cleaned.mat found")
    test = _ids(root / "testing", names.TEST)
    if not test:
        raise DataError(root / "testing", "no test files test_subject_<id>.mat found")
    both = sorted(set(emo) & set(test))
    if both:
        raise DataError(test[both[0]], f"participant(s) {both} appear in both training/ "
                                       "and testing/")
    return {s: (emo[s], neu[s]) for s in sorted(emo)}, dict(sorted(test.items()))


def load_dataset(root: str | Path, subjects: Iterable[int] | None = None,
                 progress: bool = True, bad_values: str = "error") -> Dataset:
    """Read every file of a data folder.

    Parameters
    ----------
    root : path
        Folder holding ``training/`` and ``testing/``.
    subjects : iterable of int, optional
        Read only these participants (training or test); default all.
    progress : bool
        Show a progress bar.
    bad_values : {'error', 'interpolate'}
        What NaN/Inf samples do (config ``data.bad_values``, :func:`read_mat`); the
        repairs made are in ``Dataset.repairs``. Every trial is kept either way.
    """

    root = Path(root)
    train_files, test_files = scan(root)
    wanted = None if subjects is None else set(subjects)
    jobs = [("train", s, f) for s, f in train_files.items()] + \
           [("test", s, (f,)) for s, f in test_files.items()]
    if wanted is not None:
        jobs = [j for j in jobs if j[1] in wanted]
    ref: Recording | None = None
    train, test, repairs = {}, {}, []
    for split, sid, files in bar(jobs, desc="reading .mat files", unit="participant",
                                 enabled=progress):
        recs = [read_mat(p, bad_values) for p in files]
        repairs += [r for rec in recs for r in rec.repairs]
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
                   sfreq=ref.sfreq, times=ref.times, solution=sol if sol.is_file() else None,
                   bad_values=bad_values, repairs=repairs)


def load_solution(path: str | Path, dataset: Dataset | None = None) -> dict[int, np.ndarray]:
    """Read ``solution.csv`` (``subject,trial,label``) into participant -> labels.

    Parsing and row checks are :func:`sleepemo.metric.read_solution`'s; with ``dataset``
    given, also checks that the file covers exactly the test trials.
    """

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
