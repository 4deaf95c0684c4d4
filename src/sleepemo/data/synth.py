"""Synthetic competition data in exactly the real file format (a stand-in, not the target).

The pipeline must always run, also without Kaggle credentials, so this module writes a
data folder with the real layout, file format, participant ids, trial counts, channel
order and sampling rate (``docs/competition.md``). Its signals are a plausible model of
NREM sleep EEG after a sound cue; nothing in the project is tuned to it.

Generative model, per participant p and trial i (µV, 200 Hz, generated from -0.5 s to
1.5 s and cropped to the stored 0-0.995 s so that no component starts at the edge):

- background: 16 independent 1/f^beta sources (beta ~ U(1.6, 2.1) per participant)
  mixed into the electrodes by a participant-specific matrix: a volume-conduction kernel
  over the electrodes' 10-20 template positions, perturbed per participant, times a
  participant gain and per-channel gains; plus 1 µV white sensor noise;
- slow oscillations (0.5-1.2 Hz, frontal) in about half the trials, random phase;
- sleep spindles (12-15 Hz, 0.5-1.2 s waxing-waning bursts, centro-parietal) in about a
  third of the trials at random onsets;
- a cue-evoked (phase-locked) response: small P2, a K-complex-like negativity around
  550 ms and a positivity around 900 ms, fronto-central, amplitude varying over trials
  (a ~ N(1, 0.4)) with 30 ms latency jitter;
- an induced (not phase-locked) theta burst (4-8 Hz, random phase, centred 500 ms, about
  100 ms wide) after every cue, amplitude lognormal over trials.

Where the emotional effect sits is the ``design``. There are two so that the pipeline is
checked on more than one kind of effect; nothing in the project is tuned to either.

- ``"theta"`` (the default): in emotional trials the theta burst's amplitude is
  multiplied by ``1 + shared + sign_p * individual_p``. ``individual_p`` ~ U(0.15, 0.30)
  with a sign that differs between participants (8 of the 14 training participants up,
  6 down, as reported; test participants up with probability 4/7), ``shared`` (0.05) is
  the weaker part common to everyone. Within a participant this gives a moderate
  theta-power effect in 350-650 ms; across participants a small one, as reported for the
  real data. The evoked response is the same in both classes.
- ``"evoked"``: the theta burst is the same in both classes (its power carries nothing);
  in emotional trials the evoked negativity (~550 ms) and positivity (~900 ms) are
  multiplied by ``1 + e_p`` with ``e_p`` ~ U(0.30, 0.70) per participant (the same sign
  for everyone, its size varying) and come ``evoked_shift`` (20 ms) later. Over the
  trial-to-trial amplitude variability and the background this is a moderate effect
  within a participant, one that only a model reading the evoked waveform can use; its
  range was chosen to make it about as strong as the theta design's (at full scale,
  seed 0, the within-participant AUC of the mean 450-650 ms Cz signal is 0.55-0.69, that
  of the theta design's theta power 0.54-0.66 in the direction of its sign).

Both designs draw the same random numbers for everything else (``e_p`` comes from a
separate stream), so with the same seed the neutral trials of the two are identical.

The truth (signs, effect sizes, seed) goes to ``synth.json``; the test labels to
``solution.csv`` (``subject,trial,label``), used only for local scoring.

CLI: ``python -m sleepemo.data.synth --out input/synthetic [--seed 0] [--scale 1.0]
[--design theta|evoked]``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from sleepemo import CHANNELS, N_TIMES, SFREQ
from sleepemo.data.montage import positions
from sleepemo.io import write_json
from sleepemo.progress import bar

#: Real per-participant trial counts (emotional, neutral).
TRAIN_COUNTS = {2: (269, 278), 3: (351, 334), 4: (400, 371), 5: (250, 311), 6: (386, 359),
                8: (449, 406), 9: (313, 309), 10: (200, 157), 11: (168, 172),
                13: (740, 754), 14: (411, 496), 15: (466, 510), 16: (320, 311),
                17: (315, 403)}
#: Real test participants and their trial counts.
TEST_COUNTS = {1: 372, 7: 479, 12: 883}
GENERATOR_VERSION = 1
#: Where the emotional effect sits (see the module docstring).
DESIGNS = ("theta", "evoked")
_PAD = 100  # samples generated before and after the stored second


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    scale: float = 1.0          # multiplies every trial count (min 8 per class)
    min_trials: int = 8
    shared_effect: float = 0.05
    individual_effect: tuple[float, float] = (0.15, 0.30)
    p_up: float = 4 / 7
    trial_format: str = "dense"  # "dense" (as the real files) or "cell" (object refs)
    version: int = GENERATOR_VERSION
    design: str = "theta"       # where the emotional effect sits: DESIGNS
    evoked_effect: tuple[float, float] = (0.30, 0.70)  # "evoked": e_p ~ U(a, b)
    evoked_shift: float = 0.02  # "evoked": latency shift (s) of emotional trials, * sign(e_p)

    def __post_init__(self):
        if self.design not in DESIGNS:
            raise ValueError(f"design must be one of {DESIGNS}, not {self.design!r}")


# --------------------------------------------------------------------------- signals
def _topo(pos: np.ndarray, centre: str, width: float = 0.06) -> np.ndarray:
    """A smooth topography peaking at the named electrode (which may be unrecorded)."""
    d = np.linalg.norm(pos - positions([centre])[0], axis=1)
    return np.exp(-(d ** 2) / (2 * width ** 2))


def _pink(rng: np.random.Generator, shape: tuple, beta: float, n: int) -> np.ndarray:
    """Gaussian noise with a 1/f^beta power spectrum along the last axis, unit variance."""
    spec = rng.standard_normal(shape + (n // 2 + 1,)) + 1j * rng.standard_normal(
        shape + (n // 2 + 1,))
    f = np.fft.rfftfreq(n, 1 / SFREQ)
    f[0] = f[1]
    spec *= f ** (-beta / 2)
    x = np.fft.irfft(spec, n=n, axis=-1)
    return x / x.std(axis=-1, keepdims=True)


class _Participant:
    """Fixed properties of one synthetic participant."""

    def __init__(self, rng: np.random.Generator, pos: np.ndarray, cfg: SynthConfig,
                 sign: int, evoked: float = 0.0):
        n = len(CHANNELS)
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        kernel = np.exp(-(d ** 2) / (2 * 0.035 ** 2))
        mix = kernel * (1 + 0.25 * rng.standard_normal((n, n)))
        self.mix = mix / np.linalg.norm(mix, axis=1, keepdims=True)
        self.gain = float(rng.lognormal(0.0, 0.25)) * rng.lognormal(0.0, 0.1, n)
        self.beta = float(rng.uniform(1.6, 2.1))
        self.bg_uv = 12.0
        self.topo_so = _topo(pos, "Fz", 0.08)
        self.topo_sp = _topo(pos, "Pz", 0.07) + 0.5 * _topo(pos, "Cz", 0.05)
        self.topo_erp = _topo(pos, "Cz", 0.08) * (1 + 0.15 * rng.standard_normal(n))
        self.topo_theta = (_topo(pos, "Fz", 0.07) + 0.6 * _topo(pos, "Cz", 0.06)) * (
            1 + 0.2 * rng.standard_normal(n))
        self.theta_freq = float(rng.uniform(5.0, 7.0))
        self.sign = sign
        self.individual = float(rng.uniform(*cfg.individual_effect))
        # drawn in both designs so that every later draw is the same
        self.effect = cfg.shared_effect + self.sign * self.individual \
            if cfg.design == "theta" else 0.0
        self.evoked = evoked if cfg.design == "evoked" else 0.0
        self.evoked_shift = float(np.sign(self.evoked)) * cfg.evoked_shift

    def trials(self, rng: np.random.Generator, y: np.ndarray) -> np.ndarray:
        """Simulate trials; returns (n_trials, n_chans, N_TIMES) in µV (float64)."""
        n_tr, n_ch = len(y), len(CHANNELS)
        n = N_TIMES + 2 * _PAD
        t = (np.arange(n) - _PAD) / SFREQ
        bg = _pink(rng, (n_tr, n_ch), self.beta, n) * self.bg_uv
        x = np.einsum("cs,nst->nct", self.mix, bg)
        # slow oscillations, in about half of the trials
        has_so = rng.random(n_tr) < 0.5
        f_so = rng.uniform(0.5, 1.2, n_tr)
        ph = rng.uniform(0, 2 * np.pi, n_tr)
        so = has_so[:, None] * 35.0 * np.sin(2 * np.pi * f_so[:, None] * t + ph[:, None])
        x += so[:, None, :] * self.topo_so[:, None]
        # spindles, in about a third of the trials
        has_sp = rng.random(n_tr) < 0.33
        onset = rng.uniform(-0.5, 1.0, n_tr)[:, None]
        dur = rng.uniform(0.5, 1.2, n_tr)[:, None]
        inside = (t >= onset) & (t <= onset + dur)
        env = np.where(inside, np.sin(np.pi * (t - onset) / dur) ** 2, 0.0)
        f_sp = rng.uniform(12.0, 15.0, n_tr)[:, None]
        sp = has_sp[:, None] * 15.0 * env * np.sin(2 * np.pi * f_sp * t
                                                    + rng.uniform(0, 2 * np.pi, (n_tr, 1)))
        x += sp[:, None, :] * self.topo_sp[:, None]
        # cue-evoked response; design "evoked": its late components carry the effect
        a = rng.normal(1.0, 0.4, n_tr)[:, None]
        jit = rng.normal(0.0, 0.03, n_tr)[:, None]
        late = 1.0 + self.evoked * y[:, None]          # exactly 1 and 0 in design "theta"
        lag = jit + self.evoked_shift * y[:, None]
        erp = (4.0 * np.exp(-((t - 0.2 - jit) ** 2) / (2 * 0.04 ** 2))
               - 20.0 * late * np.exp(-((t - 0.55 - lag) ** 2) / (2 * 0.08 ** 2))
               + 10.0 * late * np.exp(-((t - 0.9 - lag) ** 2) / (2 * 0.12 ** 2))) * a
        x += erp[:, None, :] * self.topo_erp[:, None]
        # induced theta burst; design "theta": its amplitude carries the effect
        amp = 7.0 * rng.lognormal(0.0, 0.35, n_tr) * (1.0 + self.effect * y)
        centre = rng.normal(0.5, 0.03, n_tr)[:, None]
        env = np.exp(-((t - centre) ** 2) / (2 * 0.1 ** 2))
        f_th = self.theta_freq + rng.normal(0.0, 0.5, n_tr)[:, None]
        th = amp[:, None] * env * np.sin(2 * np.pi * f_th * t
                                         + rng.uniform(0, 2 * np.pi, (n_tr, 1)))
        x += th[:, None, :] * self.topo_theta[:, None]
        x *= self.gain[:, None]
        x += rng.standard_normal(x.shape)
        return x[:, :, _PAD:_PAD + N_TIMES]


# --------------------------------------------------------------------------- MATLAB v7.3
_HEADER = (b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 "
           b"HDF5 schema 1.00 .")


def _mat_header() -> bytes:
    """The 128-byte MATLAB header at the start of the 512-byte HDF5 user block."""
    text = _HEADER.ljust(116, b" ")
    return text + b"\x00" * 8 + (0x0200).to_bytes(2, "little") + b"IM"


def _matlab_dataset(parent, name: str, value: np.ndarray, matlab_class: str):
    """Write a MATLAB-ordered array (axes reversed in HDF5)."""
    ds = parent.create_dataset(name, data=np.asarray(value).T)
    ds.attrs["MATLAB_class"] = np.bytes_(matlab_class)
    return ds


def _cell(f: h5py.File, parent, name: str, items: list[np.ndarray], matlab_class: str,
          shape: tuple[int, int]) -> None:
    """Write a MATLAB cell array: object references into the '#refs#' group."""
    refs_group = f.require_group("#refs#")
    refs = np.empty(len(items), dtype=h5py.ref_dtype)
    for i, item in enumerate(items):
        key = f"{name}_{i}"
        ds = _matlab_dataset(refs_group, key, item, matlab_class)
        if matlab_class == "char":
            ds.attrs["MATLAB_int_decode"] = np.int32(2)
        refs[i] = ds.ref
    ds = parent.create_dataset(name, data=refs.reshape(shape).T, dtype=h5py.ref_dtype)
    ds.attrs["MATLAB_class"] = np.bytes_("cell")


def write_mat73(path: str | Path, X: np.ndarray, times: np.ndarray,
                ch_names=CHANNELS, sfreq: float = SFREQ, trialinfo: np.ndarray | None = None,
                trial_format: str = "dense") -> Path:
    """Write a FieldTrip-style ``data`` struct as a MATLAB v7.3 (HDF5) file.

    Parameters
    ----------
    X : ndarray, shape (n_trials, n_chans, n_times)
        Stored as MATLAB double (n_trials, n_chans, n_times), i.e. HDF5 shape
        (n_times, n_chans, n_trials), or as a cell of per-trial (n_chans, n_times)
        matrices when ``trial_format='cell'``.
    trialinfo : ndarray, shape (n_trials, n_cols), optional
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        g = f.create_group("data")
        g.attrs["MATLAB_class"] = np.bytes_("struct")
        if trial_format == "dense":
            _matlab_dataset(g, "trial", X.astype(np.float64), "double")
        elif trial_format == "cell":
            _cell(f, g, "trial", [tr.astype(np.float64) for tr in X], "double", (1, len(X)))
        else:
            raise ValueError(f"trial_format must be 'dense' or 'cell', not {trial_format!r}")
        _matlab_dataset(g, "time", np.asarray(times, float)[None, :], "double")
        _matlab_dataset(g, "fsample", np.array([[float(sfreq)]]), "double")
        codes = [np.array([[ord(c) for c in ch]], dtype=np.uint16) for ch in ch_names]
        _cell(f, g, "label", codes, "char", (len(ch_names), 1))
        if trialinfo is not None:
            _matlab_dataset(g, "trialinfo", np.asarray(trialinfo, float), "double")
    with open(path, "r+b") as fh:
        fh.write(_mat_header())
    return path


# --------------------------------------------------------------------------- data folder
def _count(n: int, cfg: SynthConfig) -> int:
    return max(cfg.min_trials, int(round(n * cfg.scale)))


def generate(out: str | Path, cfg: SynthConfig = SynthConfig(), progress: bool = True,
             force: bool = False) -> Path:
    """Write a synthetic data folder at ``out`` and return it.

    The folder is built in a temporary sibling and renamed into place, so an interrupted
    run leaves nothing that looks complete. An existing folder made with the same
    settings is reused; a folder made with other settings raises unless ``force``.
    """

    out = Path(out)
    meta_path = out / "synth.json"
    if out.exists():
        # a key missing from an older synth.json had today's default (same data)
        made = {**json.loads(json.dumps(asdict(SynthConfig()))),
                **json.loads(meta_path.read_text())["config"]} if meta_path.is_file() else None
        if made == json.loads(json.dumps(asdict(cfg))):
            return out
        if not force:
            raise FileExistsError(f"{out} exists and was not made with these settings; "
                                  "pass force=True (--force) or another --out")
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        root = np.random.SeedSequence(cfg.seed)
        pos = positions(CHANNELS)
        times = np.arange(N_TIMES) / SFREQ
        subjects = sorted(TRAIN_COUNTS) + sorted(TEST_COUNTS)
        seeds = dict(zip(subjects, root.spawn(len(subjects))))
        rng0 = np.random.default_rng(root.spawn(1)[0])
        n_up = int(round(cfg.p_up * len(TRAIN_COUNTS)))
        signs = dict(zip(sorted(TRAIN_COUNTS), rng0.permutation(
            [1] * n_up + [-1] * (len(TRAIN_COUNTS) - n_up))))
        signs.update({s: 1 if rng0.random() < cfg.p_up else -1 for s in sorted(TEST_COUNTS)})
        # a stream of its own, so that the theta design's draws stay as they were
        rng_ev = np.random.default_rng(root.spawn(1)[0])
        evoked = dict(zip(subjects, rng_ev.uniform(*cfg.evoked_effect, len(subjects))))
        truth, solution = {}, []
        for sid in bar(subjects, desc="synthetic participants", enabled=progress):
            rng = np.random.default_rng(seeds[sid])
            part = _Participant(rng, pos, cfg, int(signs[sid]), float(evoked[sid]))
            if cfg.design == "theta":
                truth[sid] = {"sign": part.sign, "individual": part.individual,
                              "effect": part.effect, "theta_freq": part.theta_freq}
            else:  # the theta burst carries nothing; "effect" is the evoked one
                truth[sid] = {"sign": int(np.sign(part.evoked)), "effect": part.evoked,
                              "evoked_effect": part.evoked,
                              "evoked_shift_ms": 1000 * part.evoked_shift,
                              "theta_effect": 0.0, "theta_freq": part.theta_freq}
            if sid in TRAIN_COUNTS:
                n_emo, n_neu = (_count(n, cfg) for n in TRAIN_COUNTS[sid])
                for cls, lab, n in (("sleep_emo", 1, n_emo), ("sleep_neu", 0, n_neu)):
                    X = part.trials(rng, np.full(n, lab))
                    info = np.c_[rng.integers(1, 5, n), np.arange(1, n + 1)]
                    write_mat73(tmp / "training" / cls / f"S_{sid}_cleaned.mat", X, times,
                                trialinfo=info, trial_format=cfg.trial_format)
            else:
                n = _count(TEST_COUNTS[sid], cfg)
                y = rng.permutation(np.r_[np.ones(n // 2, int), np.zeros(n - n // 2, int)])
                X = part.trials(rng, y)
                write_mat73(tmp / "testing" / f"test_subject_{sid}.mat", X, times,
                            trial_format=cfg.trial_format)
                solution += [(sid, i, int(v)) for i, v in enumerate(y)]
        lines = ["subject,trial,label"] + [f"{s},{i},{v}" for s, i, v in solution]
        (tmp / "solution.csv").write_text("\n".join(lines) + "\n")
        write_json(tmp / "synth.json", {"config": asdict(cfg), "participants": truth,
                                        "note": "synthetic stand-in for the real data"})
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def generate_subset(out: str | Path, scale: float, train, test=None, seed: int = 0) -> Path:
    """Synthetic data (``seed``) at ``scale`` of the real trial counts in ``out``, keeping
    the training participants ``train`` and the test participants ``test`` (default:
    all; ``solution.csv`` keeps their rows): small LOPO data for tests and benches."""
    root = generate(out, SynthConfig(seed=seed, scale=scale), progress=False)
    for f in (root / "training").glob("*/S_*_cleaned.mat"):
        if int(f.name.split("_")[1]) not in train:
            f.unlink()
    if test is not None:
        for f in (root / "testing").glob("test_subject_*.mat"):
            if int(f.stem.split("_")[2]) not in test:
                f.unlink()
        header, *rows = (root / "solution.csv").read_text().splitlines()
        kept = [r for r in rows if int(r.split(",", 1)[0]) in test]
        (root / "solution.csv").write_text("\n".join([header, *kept]) + "\n")
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sleepemo.data.synth", description=__doc__.split(
        "\n")[0])
    ap.add_argument("--out", default="input/synthetic", help="data folder to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply every trial count (e.g. 0.05 for a smoke test)")
    ap.add_argument("--format", choices=("dense", "cell"), default="dense",
                    help="store data/trial as a dense array (real files) or a cell")
    ap.add_argument("--design", choices=DESIGNS, default="theta",
                    help="where the emotional effect sits: theta-burst power (default) or "
                         "the evoked response")
    ap.add_argument("--force", action="store_true", help="replace an existing folder")
    args = ap.parse_args(argv)
    cfg = SynthConfig(seed=args.seed, scale=args.scale, trial_format=args.format,
                      design=args.design)
    out = generate(args.out, cfg, force=args.force)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
