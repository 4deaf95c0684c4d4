"""Leave-one-participant-out folds, written once to ``folds.json`` and read by every stage.

Fold k holds out training participant ``valid[0]``; nothing fitted in that fold may see
its labels. The file also records the data fingerprint and the order of the out-of-fold
rows (training participants ascending, each participant's trials as read: emotional file
first, then neutral), so that a later stage cannot pair predictions with the wrong data.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sleepemo.data.reader import Dataset, scan
from sleepemo.errors import InputError
from sleepemo.io import file_sha256, read_json, write_json


def data_fingerprint(root: str | Path, repaired_by: str | None = None) -> str:
    """sha256 over every competition file's relative path and content, and over the
    ``data.bad_values`` policy when it changed values (``repaired_by``), so that nothing
    computed from repaired data is reused for data read another way."""
    train, test = scan(root)
    files = [f for pair in train.values() for f in pair] + list(test.values())
    h = hashlib.sha256()
    if repaired_by:
        h.update(f"bad_values={repaired_by}\n".encode())
    for f in sorted(files):
        h.update(str(f.relative_to(root)).encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Folds:
    """The LOPO split of one dataset."""

    data_root: str
    data_fingerprint: str
    train_subjects: tuple[int, ...]
    test_subjects: tuple[int, ...]
    n_trials: dict
    n_times: int

    @property
    def n_folds(self) -> int:
        return len(self.train_subjects)

    def held_out(self, k: int) -> int:
        return self.train_subjects[k]

    def train_of(self, k: int) -> list[int]:
        return [s for s in self.train_subjects if s != self.held_out(k)]

    def split_rows(self, pred, which: str = "train") -> dict:
        """Cut an array whose rows follow this file's order (training participants for
        ``which='train'``, test participants for ``'test'``) into participant blocks."""
        subjects = {"train": self.train_subjects, "test": self.test_subjects}[which]
        out, start = {}, 0
        for s in subjects:
            out[s] = pred[start:start + self.n_trials[s]]
            start += self.n_trials[s]
        if start != len(pred):
            raise ValueError(f"{len(pred)} prediction rows but the {which} participants "
                             f"have {start}")
        return out

    def labels_of(self, ds: Dataset, k: int, shuffle: bool = False, seed: int = 0) -> dict:
        """Labels of fold k's training participants: the only labels fold k may use.
        ``shuffle`` permutes them within each participant (a leakage alarm)."""
        import numpy as np

        labels = {s: np.asarray(ds.train[s].y) for s in self.train_of(k)}
        if shuffle:
            rng = np.random.default_rng([seed, k, 77])
            labels = {s: rng.permutation(y) for s, y in labels.items()}
        return labels

    def to_json(self) -> dict:
        return {"data_root": self.data_root, "data_fingerprint": self.data_fingerprint,
                "train_subjects": list(self.train_subjects),
                "test_subjects": list(self.test_subjects),
                "n_trials": {str(k): v for k, v in self.n_trials.items()},
                "n_times": self.n_times,
                "folds": [{"fold": k, "valid": [self.held_out(k)], "train": self.train_of(k)}
                          for k in range(self.n_folds)]}

    @classmethod
    def from_json(cls, d: dict) -> "Folds":
        folds = cls(d["data_root"], d["data_fingerprint"], tuple(d["train_subjects"]),
                    tuple(d["test_subjects"]), {int(k): v for k, v in d["n_trials"].items()},
                    int(d["n_times"]))
        for f in d["folds"]:  # the file is the authority: refuse one edited inconsistently
            if f["valid"] != [folds.held_out(f["fold"])] or f["train"] != folds.train_of(
                    f["fold"]):
                raise ValueError(f"fold {f['fold']} in folds.json is not leave-one-out")
        return folds

    def check(self, ds: Dataset) -> None:
        """Raise an :class:`~sleepemo.errors.InputError` (one line, exit 2) if ``ds`` is
        not the dataset these folds were made for."""
        if trial_counts(ds) != self.n_trials or ds.n_times != self.n_times:
            raise InputError(f"folds.json was made for other data ({self.data_root}), not "
                             f"{ds.root}; rerun stage 00 with --force or use another --out")


def balanced(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n // 2`` trials of each class of labels ``y`` (with replacement only
    if a class has fewer)."""
    out = []
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        if len(idx) == 0:
            raise ValueError("a participant without trials of both classes cannot give a "
                             "class-balanced draw")
        out.append(rng.choice(idx, size=n // 2, replace=len(idx) < n // 2))
    return np.concatenate(out)


def trial_counts(ds: Dataset) -> dict[int, int]:
    """Participant -> number of trials, training and test participants alike."""
    return {s: ds.subject(s).n_trials for s in ds.train_ids() + ds.test_ids()}


def make_folds(ds: Dataset) -> Folds:
    repaired_by = ds.bad_values if ds.repairs else None
    return Folds(str(ds.root), data_fingerprint(ds.root, repaired_by), tuple(ds.train_ids()),
                 tuple(ds.test_ids()), trial_counts(ds), ds.n_times)


def write_folds(ds: Dataset, path: str | Path, force: bool = False) -> tuple[Folds, bool]:
    """Write ``folds.json`` once. Returns (folds, written).

    An existing file for the same data is kept as it is; one for other data raises unless
    ``force``.
    """
    path = Path(path)
    new = make_folds(ds)
    if path.exists() and not force:
        old = Folds.from_json(read_json(path))
        if old.data_fingerprint != new.data_fingerprint:
            raise FileExistsError(f"{path} was made for other data ({old.data_root}; or "
                                  "the same files read with another data.bad_values); "
                                  "pass --force to replace it or use another --out")
        return old, False
    write_json(path, new.to_json())
    return new, True


def read_folds(path: str | Path) -> Folds:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run src/00_folds.py first")
    return Folds.from_json(read_json(path))
