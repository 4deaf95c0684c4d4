"""The competition's file-name rules, in one place: which file holds which participant.

Training files are ``S_<id>_cleaned.mat`` (``S<id>.mat``, ``S_<id>.mat`` and any case are
accepted too) in both class folders; test files are ``test_subject_<id>.mat``. Ids are
ASCII digits only: ``\\d`` would take ``S_\\u0662_cleaned.mat`` (an Arabic-Indic two) for
S_2. The reader (:func:`sleepemo.data.reader.scan`) and ``sleepemo predict`` both ask here.
"""
from __future__ import annotations

import re

#: the class folders of ``training/`` and their labels (1: emotional)
CLASS_DIRS = {"sleep_emo": 1, "sleep_neu": 0}
TRAIN = re.compile(r"^S_?([0-9]+)(?:_cleaned)?\.mat$", re.IGNORECASE)
TEST = re.compile(r"^test_subject_?([0-9]+)\.mat$", re.IGNORECASE)
#: what a participant's file may be called, said in error messages
EXPECTED = "S_<id>_cleaned.mat (training) or test_subject_<id>.mat (testing)"


def participant_id(name: str, pattern: re.Pattern | None = None) -> int | None:
    """The participant id in file name ``name`` (a training or a test file's, or only
    ``pattern``'s), or None if the name follows neither rule."""
    for p in (pattern,) if pattern is not None else (TRAIN, TEST):
        m = p.match(name)
        if m:
            return int(m.group(1))
    return None
