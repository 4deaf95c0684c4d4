"""The field's reference deep decoders, from braindecode, as stage-01 anchors.

EEGNet (Lawhern et al. 2018, ``EEGNetv4``), ShallowFBCSPNet (Schirrmeister et al. 2017)
and EEG Conformer (Song et al. 2023: convolutions then self-attention), each trained
across the fold's training participants on the waveform of all channels. They answer one
question: is the design's own deep path (MAE, experts, fusion) behind the baselines
because of its idea or its training? A standard network trained the standard way is the
yardstick.

**Input** (label-free, one participant at a time, :meth:`DeepAnchor.transform`): band-pass
``band`` (0.5-40 Hz), every ``decim``-th sample (200 -> 100 Hz), each channel z-scored
over the participant's trials and timepoints; with ``align="euclidean"`` then whitened by
the participant's mean trial covariance (:func:`sleepemo.features.euclidean_align`),
computed from its own trials, so held-out and test participants are aligned the same way.

**Cropped training, sliding output.** The network sees crops of ``crop`` samples (at the
decimated rate: 50 = 0.5 s), one random crop of every training trial per epoch with the
trial's label (braindecode's cropped decoding; the crops also augment a small data set).
``predict_proba`` slides the crop over the trial every ``stride`` samples: each crop's
logit (class 1 minus class 0) belongs to the crop's centre, and is linearly interpolated
to every timepoint of the original trial (``output="timepoint"``, a per-timepoint model:
the metric's window can sit where the effect is); ``output="trial"`` gives the mean of the
crops' logits, one probability per trial (broadcast by the caller).

Training: AdamW with a cosine learning-rate schedule, ``epochs`` passes, batches of
``batch_size`` crops, cross-entropy, one CPU thread (two fold workers fill two cores), the
fold's seed for the weights, the crops and the batches: a fold's model is the same bit for
bit on every rerun. A fitted model pickles as its network's constructor arguments and
weights (numpy arrays), never as a pickled torch object, and is rebuilt when loaded.

The architectures' sizes are braindecode's defaults scaled to the decimated rate where
they are lengths of time (kernels, pools); ``net_params`` overrides any of them.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np
from sklearn.utils.validation import check_is_fitted

from sleepemo import features as F
from sleepemo.baselines.base import BaselineModel, lowpass_decimate

ALIGN = ("none", "euclidean")
OUTPUTS = ("timepoint", "trial")
#: registry names of the anchors (``sleepemo.baselines.REGISTRY``)
ANCHORS = ("eegnet", "shallow_fbcsp", "conformer")


@contextlib.contextmanager
def one_torch_thread():
    """torch on one intra-op thread inside the block: fold workers share the cores, and one
    thread keeps the sums' order, hence the outputs, the same on every run. oneDNN stays on
    (about 2x faster steps than the plain CPU kernels); its one convolution whose weight
    gradient depended on where the input happened to sit in memory (ShallowFBCSPNet's
    first layer, see :class:`_ChannelsAsInputConv`) is computed another way."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield torch
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _channels_as_input_conv():
    """braindecode's ``CombinedConv`` (ShallowFBCSPNet's temporal and spatial convolutions
    merged into one kernel) computed with the EEG channels as the convolution's input
    channels: the same parameters, the same merged kernel, the same output. As braindecode
    writes it (one input channel, a time x channels kernel) oneDNN's weight gradient
    differed from run to run with the same seed (up to 2e-3 after one step, whatever the
    determinism flags): its result depended on the input buffer's alignment. With the
    channels as input channels oneDNN's weight gradient is the same every time."""
    import torch
    from braindecode.models.modules import CombinedConv

    class _ChannelsAsInputConv(CombinedConv):
        def forward(self, x):  # x: (batch, 1, time, channels)
            w = (self.conv_time.weight * self.conv_spat.weight.permute(1, 0, 2, 3)).sum(0)
            bias = None
            if self.bias_time or self.bias_spat:
                bias = 0
                if self.bias_time:
                    bias = bias + (self.conv_spat.weight.squeeze().sum(-1)
                                   .mm(self.conv_time.bias.unsqueeze(-1)).squeeze())
                if self.bias_spat:
                    bias = bias + self.conv_spat.bias
            out = torch.nn.functional.conv1d(x[:, 0].transpose(1, 2).contiguous(),
                                             w.transpose(1, 2).contiguous(), bias)
            return out.unsqueeze(-1)  # (batch, filters, time, 1), as CombinedConv's

    return _ChannelsAsInputConv


class DeepAnchor(BaselineModel):
    """A braindecode network under LOPO (see the module docstring); subclasses name the
    network (``NET``) and its default sizes (:meth:`architecture`)."""

    NET = ""

    def __init__(self, random_state=0, align="none", output="timepoint", band=(0.5, 40.0),
                 decim=2, crop=50, stride=5, epochs=8, batch_size=128, lr=1e-3,
                 weight_decay=1e-3, net_params=None):
        super().__init__(random_state)
        self.align, self.output, self.band, self.decim = align, output, band, decim
        self.crop, self.stride, self.epochs, self.batch_size = crop, stride, epochs, batch_size
        self.lr, self.weight_decay, self.net_params = lr, weight_decay, net_params

    @property
    def online(self) -> bool:
        return self.align == "none"  # the alignment needs all of the participant's trials

    # ------------------------------------------------------------ input
    def transform(self, X, sfreq):
        if self.align not in ALIGN:
            raise ValueError(f"align must be one of {ALIGN}, not {self.align!r}")
        wave = F.zscore_participant(lowpass_decimate(X, sfreq, tuple(self.band),
                                                     int(self.decim)))
        if self.align == "euclidean":
            wave = F.euclidean_align(wave)
        return np.ascontiguousarray(wave, dtype=np.float32)

    # ------------------------------------------------------------ network
    def architecture(self) -> dict:
        """Default constructor arguments of the network for ``crop`` samples at
        200 / ``decim`` Hz (lengths of time scaled from the papers' rates)."""
        return {}

    def _net_kwargs(self, n_chans: int) -> dict:
        return {"n_chans": int(n_chans), "n_outputs": 2, "n_times": int(self.crop),
                **self.architecture(), **dict(self.net_params or {})}

    def _build(self, kwargs: dict):
        import warnings

        import braindecode.models as bd

        with warnings.catch_warnings():  # braindecode's notes on renamed arguments
            warnings.simplefilter("ignore")
            return getattr(bd, self.NET)(**kwargs)

    def _check(self, n_times: int) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, not {self.output!r}")
        if not 1 <= int(self.crop) <= n_times:
            raise ValueError(f"crop of {self.crop} samples does not fit trials of "
                             f"{n_times} samples (at 200/{self.decim} Hz)")
        if int(self.stride) < 1 or int(self.epochs) < 1 or int(self.batch_size) < 1:
            raise ValueError("stride, epochs and batch_size must be >= 1")

    def fit(self, feats, labels):
        X = np.concatenate(feats).astype(np.float32)
        y = np.concatenate(labels).astype(np.int64)
        n, n_chans, n_times = X.shape
        self._check(n_times)
        crop, bs = int(self.crop), int(self.batch_size)
        rng = np.random.default_rng(self.random_state)
        with one_torch_thread() as torch:
            torch.manual_seed(int(self.random_state))
            self.net_kwargs_ = self._net_kwargs(n_chans)
            net = self._build(self.net_kwargs_)
            steps = int(self.epochs) * -(-n // bs)
            opt = torch.optim.AdamW(net.parameters(), lr=float(self.lr),
                                    weight_decay=float(self.weight_decay))
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
            window = torch.arange(crop)
            net.train()
            for _ in range(int(self.epochs)):
                order = rng.permutation(n)
                starts = rng.integers(0, n_times - crop + 1, size=n)
                for b in range(0, n, bs):
                    idx = torch.from_numpy(order[b:b + bs])
                    t0 = torch.from_numpy(starts[order[b:b + bs]])
                    xb = Xt[idx].gather(2, (t0[:, None] + window).unsqueeze(1)
                                        .expand(-1, n_chans, -1))
                    loss = torch.nn.functional.cross_entropy(
                        net(xb).reshape(len(idx), 2), yt[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
            net.eval()
        self.net_ = net
        self.n_times_ = int(n_times)
        return self

    def _logits(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every crop's logit, (n_trials, n_crops), and the crops' centres in samples of
        the decimated trial."""
        # a writable copy: the features may be a read-only cache, which torch warns about
        X = np.array(feats, dtype=np.float32)
        n_times, crop, stride = X.shape[-1], int(self.crop), int(self.stride)
        self._check(n_times)
        starts = list(range(0, n_times - crop + 1, stride))
        if starts[-1] != n_times - crop:
            starts.append(n_times - crop)
        out = np.empty((len(X), len(starts)), dtype=np.float32)
        with one_torch_thread() as torch, torch.no_grad():
            for j, s in enumerate(starts):
                for b in range(0, len(X), 1024):
                    o = self.net_(torch.from_numpy(X[b:b + 1024, :, s:s + crop]))
                    o = o.reshape(-1, 2).double()
                    out[b:b + 1024, j] = (o[:, 1] - o[:, 0]).numpy()
        return out, np.asarray(starts) + (crop - 1) / 2

    def predict_proba(self, feats):
        check_is_fitted(self)
        logits, centres = self._logits(feats)
        if self.output == "trial":
            return 1.0 / (1.0 + np.exp(-logits.astype(np.float64).mean(axis=1)))
        decim = int(self.decim)  # decimated sample j is original sample j * decim
        t = np.arange(np.asarray(feats).shape[-1] * decim) / decim
        curve = np.stack([np.interp(t, centres, row) for row in logits.astype(np.float64)])
        return 1.0 / (1.0 + np.exp(-curve))

    # ------------------------------------------------------------ pickling
    def __getstate__(self):
        state = dict(self.__dict__)
        net = state.pop("net_", None)
        if net is not None:  # weights as numpy arrays: no torch object in the pickle
            state["net_weights_"] = {k: v.detach().cpu().numpy().copy()
                                     for k, v in net.state_dict().items()}
        return state

    def __setstate__(self, state):
        state = dict(state)
        weights = state.pop("net_weights_", None)
        self.__dict__.update(state)
        if weights is not None:
            import torch

            net = self._build(self.net_kwargs_)
            net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in
                                 weights.items()})
            self.net_ = net.eval()


class EEGNet(DeepAnchor):
    """EEGNet (braindecode ``EEGNetv4``) on 0.5 s crops of the 0.5-40 Hz waveform, slid
    over the trial: a per-timepoint deep anchor."""

    NET = "EEGNetv4"

    def architecture(self):
        # temporal kernel 64 samples at 128 Hz (0.5 s) -> 0.32 s at 100 Hz
        return {"kernel_length": 32}


class ShallowFBCSP(DeepAnchor):
    """ShallowFBCSPNet (braindecode) on 0.5 s crops of the 0.5-40 Hz waveform, slid over
    the trial: a per-timepoint deep anchor."""

    NET = "ShallowFBCSPNet"

    def _build(self, kwargs):
        net = super()._build(kwargs)
        first = getattr(net, "conv_time_spat", None)
        if first is not None and type(first).__name__ == "CombinedConv":
            first.__class__ = _channels_as_input_conv()  # same parameters, see there
        return net

    def architecture(self):
        # at 250 Hz: kernel 25 (100 ms), pool 75 (300 ms) every 15 (60 ms) -> 100 Hz
        return {"filter_time_length": 10, "pool_time_length": 30, "pool_time_stride": 6,
                "final_conv_length": "auto", "add_log_softmax": False}


class Conformer(DeepAnchor):
    """EEG Conformer (braindecode ``EEGConformer``: convolutions, then self-attention over
    time) on 0.5 s crops of the 0.5-40 Hz waveform, slid over the trial."""

    NET = "EEGConformer"

    def architecture(self):
        # at 250 Hz: kernel 25, pool 75 every 15 -> 13, 15 every 5 at 100 Hz (5 tokens of
        # 0.5 s crops); two attention layers of 4 heads instead of 6 of 10 (small data)
        return {"filter_time_length": 13, "pool_time_length": 15, "pool_time_stride": 5,
                "att_depth": 2, "att_heads": 4, "final_fc_length": "auto",
                "add_log_softmax": False}
