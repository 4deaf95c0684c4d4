"""Electrode positions from MNE's template montages."""
from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=1)
def montage():
    """The 10-20 template montage (``colin27_1020``; ``standard_1020`` on older MNE)."""
    import mne

    names = mne.channels.get_builtin_montages()
    return mne.channels.make_standard_montage(
        "colin27_1020" if "colin27_1020" in names else "standard_1020")


def positions(ch_names) -> np.ndarray:
    """Positions (m) of the named electrodes, shape (n_chans, 3)."""
    pos = montage().get_positions()["ch_pos"]
    missing = [ch for ch in ch_names if ch not in pos]
    if missing:
        raise KeyError(f"electrodes {missing} are not in the 10-20 template montage")
    return np.array([pos[ch] for ch in ch_names])
