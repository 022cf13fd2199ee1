"""Squeezeformer-CTC (Kim et al., NeurIPS 2022) as NVIDIA NeMo builds it (`EncDecCTCModelBPE` with a
`SqueezeformerEncoder`), so NeMo's six released LibriSpeech checkpoints load strictly and decode the same.

`SqueezeformerCTC` holds three parts under NeMo's names (state-dict keys, order and shapes are NeMo's):
- `preprocessor`: `AudioToMelSpectrogramPreprocessor` (pre-emphasis, STFT, Slaney mel filterbank, log,
  per-feature normalisation), computed with torch/torchaudio. It follows the NeMo >= 2.5 front end:
  `floor(N / hop)` frames, zero (not reflect) STFT padding and pre-emphasis zeroed past each length. NeMo
  <= 2.4, which trained the released models, gave one frame more (137/81 vs 138/82 for the reference
  fixture) and different edge frames.
- `encoder`: depthwise-striding subsampling, relative-position attention with per-layer biases, scaled
  post-LN blocks (MHA -> FF -> Conv -> FF), and one U-Net time reduction / recovery pair.
- `decoder`: a 1x1 Conv1d CTC head with log-softmax; the blank is the last class.

`load_nemo(path)` reads a `.nemo` archive (config, weights, SentencePiece files) and returns the model with
its vocabulary and tokenizer path; `detect(state_dict)` recognises the architecture from shapes alone.
"""
from __future__ import annotations

import math
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mtp.kernels import Dropout, attention, varlen_attention

SUBSAMPLING_KERNEL = 3
TIME_REDUCE_KERNEL = 5
TIME_REDUCE_STRIDE = 2
NORMALIZE_EPS = 1e-5            # added to the std of the per-feature normalisation (not to the variance)

# The released front end (examples/asr/conf/squeezeformer/squeezeformer_ctc_bpe.yaml); NeMo's class defaults
# differ (20 ms windows, 64 mels, pad_to 16), so a model built without a config uses these.
RELEASED_PREPROCESSOR = dict(sample_rate=16000, normalize="per_feature", window_size=0.025, window_stride=0.01,
                             window="hann", features=80, n_fft=512, log=True, frame_splicing=1, dither=1e-5,
                             pad_to=0, pad_value=0.0)


# ------------------------------------------------------------------------------------------------ front end

_WINDOWS = {"hann": torch.hann_window, "hamming": torch.hamming_window, "blackman": torch.blackman_window,
            "bartlett": torch.bartlett_window}


class FilterbankFeatures(nn.Module):
    """The featurizer's checkpoint buffers: the analysis window and the mel matrix [1, n_mels, n_fft//2+1]."""

    def __init__(self, window: torch.Tensor, fb: torch.Tensor):
        super().__init__()
        self.register_buffer("window", window)
        self.register_buffer("fb", fb)


class MelPreprocessor(nn.Module):
    """NeMo's `AudioToMelSpectrogramPreprocessor` (its argument names and defaults), NeMo >= 2.5 semantics.

    forward(waveform [B, N], lengths [B]) -> (features [B, features, 1 + N // hop], feature_lengths [B]),
    always computed in float32. Frames at and beyond `N_b // hop` are `pad_value`.
    """

    def __init__(self, sample_rate: int = 16000, window_size: float | None = 0.02,
                 window_stride: float | None = 0.01, n_window_size: int | None = None,
                 n_window_stride: int | None = None, window: str = "hann", normalize: str | None = "per_feature",
                 n_fft: int | None = None, preemph: float | None = 0.97, features: int = 64, lowfreq: float = 0.0,
                 highfreq: float | None = None, log: bool = True, log_zero_guard_type: str = "add",
                 log_zero_guard_value: float | str = 2 ** -24, dither: float = 1e-5, pad_to: int = 16,
                 frame_splicing: int = 1, exact_pad: bool = False, pad_value: float = 0.0, mag_power: float = 2.0,
                 mel_norm: str | None = "slaney"):
        super().__init__()
        if (window_size is not None and n_window_size is not None) or \
                (window_stride is not None and n_window_stride is not None):
            raise ValueError("MelPreprocessor: give the window in seconds (window_size/window_stride) or in "
                             "samples (n_window_size/n_window_stride), not both")
        win = n_window_size if n_window_size is not None else int(window_size * sample_rate)
        hop = n_window_stride if n_window_stride is not None else int(window_stride * sample_rate)
        if win <= 0 or hop <= 0:
            raise ValueError(f"MelPreprocessor: window ({win}) and stride ({hop}) must be positive sample counts")
        if window not in _WINDOWS:
            raise ValueError(f"MelPreprocessor: window {window!r} is not supported; use one of {sorted(_WINDOWS)}")
        if normalize not in ("per_feature", "all_features", None):
            raise ValueError(f"MelPreprocessor: normalize={normalize!r} is not supported; use 'per_feature', "
                             "'all_features' or None")
        if log_zero_guard_type not in ("add", "clamp"):
            raise ValueError(f"MelPreprocessor: log_zero_guard_type must be 'add' or 'clamp', got "
                             f"{log_zero_guard_type!r}")
        if isinstance(log_zero_guard_value, str) and log_zero_guard_value not in ("tiny", "eps"):
            raise ValueError(f"MelPreprocessor: log_zero_guard_value must be a number, 'tiny' or 'eps', got "
                             f"{log_zero_guard_value!r}")
        if frame_splicing != 1:
            raise ValueError(f"MelPreprocessor: frame_splicing={frame_splicing} is not supported (only 1)")
        if exact_pad:
            raise ValueError("MelPreprocessor: exact_pad=True (reflect-padded STFT without centring) is not "
                             "supported; the Squeezeformer releases use exact_pad=False")
        if not isinstance(pad_to, int) or pad_to < 0:
            raise ValueError(f"MelPreprocessor: pad_to must be an integer >= 0, got {pad_to!r}")
        self.sample_rate, self.win_length, self.hop_length = int(sample_rate), win, hop
        self.n_fft = n_fft or 2 ** math.ceil(math.log2(win))
        if self.n_fft < win:
            raise ValueError(f"MelPreprocessor: n_fft ({self.n_fft}) is shorter than the window ({win})")
        self.features, self.normalize, self.preemph = features, normalize, preemph
        self.log, self.log_zero_guard_type, self.log_zero_guard_value = log, log_zero_guard_type, log_zero_guard_value
        self.dither, self.pad_to, self.pad_value, self.mag_power = dither, pad_to, pad_value, mag_power
        window_tensor = _WINDOWS[window](win, periodic=False)   # NeMo's window is symmetric
        with torch.device("cpu"):   # also when the model is built on the meta device
            fb = mel_filterbank(sample_rate, self.n_fft, features, lowfreq, highfreq or sample_rate / 2, mel_norm)
        self.featurizer = FilterbankFeatures(window_tensor, fb[None].to(window_tensor.device))

    def feature_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths, self.hop_length, rounding_mode="floor").long()

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None):
        if waveform.dim() != 2:
            raise ValueError(f"MelPreprocessor: expected a (batch, samples) waveform, got {tuple(waveform.shape)}")
        batch, samples = waveform.shape
        lengths = check_lengths(lengths, batch, samples, "waveform", waveform.device)
        frames = self.feature_lengths(lengths)
        min_frames = 2 if self.normalize else 1   # an unbiased std needs two frames
        if int(frames.min()) < min_frames:
            b = int(frames.argmin())
            raise ValueError(f"MelPreprocessor: utterance {b} has {int(lengths[b])} samples, fewer than the "
                             f"{min_frames * self.hop_length} needed for {min_frames} frame(s)")
        x = waveform.float()
        valid_samples = torch.arange(samples, device=x.device)[None, :] < lengths[:, None]
        if self.training and self.dither > 0:
            x = x + self.dither * torch.randn_like(x)
        if self.preemph is not None:
            x = torch.cat((x[:, :1], x[:, 1:] - self.preemph * x[:, :-1]), dim=1)
        x = x.masked_fill(~valid_samples, 0.0)   # NeMo >= 2.5: the filter's tail past each length is dropped
        with torch.autocast(x.device.type, enabled=False):
            spec = torch.stft(x, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                              window=self.featurizer.window.float(), center=True, pad_mode="constant",
                              return_complex=True)
            spec = torch.view_as_real(spec).pow(2).sum(-1)   # power
            if self.mag_power != 2.0:
                spec = spec.pow(self.mag_power / 2.0)
            x = torch.matmul(self.featurizer.fb.float(), spec)
        if self.log:
            guard = self._log_guard(x.dtype)
            x = torch.log(x + guard) if self.log_zero_guard_type == "add" else torch.log(x.clamp(min=guard))
        valid = (torch.arange(x.shape[-1], device=x.device)[None, :] < frames[:, None])[:, None, :]
        if self.normalize:
            x = _normalize(x, valid, frames, per_feature=self.normalize == "per_feature")
        x = x.masked_fill(~valid, self.pad_value)
        if self.pad_to > 0 and x.shape[-1] % self.pad_to:
            x = F.pad(x, (0, self.pad_to - x.shape[-1] % self.pad_to), value=self.pad_value)
        return x, frames

    def _log_guard(self, dtype) -> float:
        if isinstance(self.log_zero_guard_value, str):
            return getattr(torch.finfo(dtype), self.log_zero_guard_value)
        return float(self.log_zero_guard_value)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float,
                   norm: str | None = "slaney") -> torch.Tensor:
    """[n_mels, n_fft//2+1]: librosa's default mel matrix (Slaney mel scale, optional Slaney area norm), via
    torchaudio."""
    from torchaudio.functional import melscale_fbanks

    if norm not in ("slaney", None):
        raise ValueError(f"mel_filterbank: norm {norm!r} is not supported; use 'slaney' or None")
    return melscale_fbanks(n_fft // 2 + 1, float(fmin), float(fmax), n_mels, sample_rate, norm=norm,
                           mel_scale="slaney").T.contiguous()


def _normalize(x: torch.Tensor, valid: torch.Tensor, frames: torch.Tensor, per_feature: bool) -> torch.Tensor:
    """(x - mean) / (unbiased std + 1e-5) over each utterance's valid frames, per mel bin or over all bins."""
    dims = (-1,) if per_feature else (-2, -1)
    count = frames.to(x.dtype).view(-1, 1, 1) * (1 if per_feature else x.shape[1])
    masked = x.masked_fill(~valid, 0.0)
    mean = masked.sum(dims, keepdim=True) / count
    var = (masked - mean).masked_fill(~valid, 0.0).pow(2).sum(dims, keepdim=True) / (count - 1)
    return (x - mean) / (var.sqrt() + NORMALIZE_EPS)


def check_lengths(lengths, batch: int, size: int, what: str, device) -> torch.Tensor:
    if lengths is None:
        return torch.full((batch,), size, dtype=torch.long, device=device)
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.shape != (batch,) or lengths.is_floating_point() or lengths.is_complex():
        raise ValueError(f"{what} lengths must be {batch} integers (one per batch item), got "
                         f"{tuple(lengths.shape)} {lengths.dtype}")
    lengths = lengths.long()
    if batch and (int(lengths.min()) < 1 or int(lengths.max()) > size):
        raise ValueError(f"{what} lengths must lie in [1, {size}] (the padded size), got {lengths.tolist()}")
    return lengths


# ------------------------------------------------------------------------------------------------ encoder parts

class ScaleBias(nn.Module):
    """x * scale + bias per channel (NeMo's ScaleBiasLayer); fixed buffers of 1 and 0 without adaptive scale."""

    def __init__(self, d_model: int, adaptive_scale: bool = True):
        super().__init__()
        if adaptive_scale:
            self.scale = nn.Parameter(torch.ones(d_model))
            self.bias = nn.Parameter(torch.zeros(d_model))
        else:
            self.register_buffer("scale", torch.ones(d_model))
            self.register_buffer("bias", torch.zeros(d_model))

    def forward(self, x):
        return x * self.scale + self.bias


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.activation = nn.SiLU()
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(d_ff, d_model)
        with torch.no_grad():   # the Squeezeformer initialisation (uniform, bound = fan_in ** -0.5)
            for linear, bound in ((self.linear1, d_model ** -0.5), (self.linear2, d_ff ** -0.5)):
                nn.init.uniform_(linear.weight, -bound, bound)
                nn.init.uniform_(linear.bias, -bound, bound)

    def forward(self, x):
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class ConvModule(nn.Module):
    """pointwise d->2d, SiLU (not GLU, so the depthwise conv has 2d channels), depthwise, BatchNorm, SiLU,
    pointwise 2d->d; padded frames are zeroed before the depthwise conv."""

    def __init__(self, d_model: int, kernel_size: int):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"conv_kernel_size must be odd (symmetric padding), got {kernel_size}")
        inner = 2 * d_model
        self.pointwise_conv1 = nn.Conv1d(d_model, inner, 1)
        self.depthwise_conv = nn.Conv1d(inner, inner, kernel_size, padding=(kernel_size - 1) // 2, groups=inner)
        self.batch_norm = nn.BatchNorm1d(inner)
        self.pointwise_conv2 = nn.Conv1d(inner, d_model, 1)
        with torch.no_grad():
            for conv, bound in ((self.pointwise_conv1, d_model ** -0.5), (self.pointwise_conv2, d_model ** -0.5),
                                (self.depthwise_conv, kernel_size ** -0.5)):
                nn.init.uniform_(conv.weight, -bound, bound)
                nn.init.uniform_(conv.bias, -bound, bound)

    def forward(self, x, pad_mask):
        x = F.silu(self.pointwise_conv1(x.transpose(1, 2)))
        x = x.masked_fill(pad_mask[:, None, :], 0.0)
        x = F.silu(self.batch_norm(self.depthwise_conv(x)))
        return self.pointwise_conv2(x).transpose(1, 2)


class RelPositionAttention(nn.Module):
    """Transformer-XL attention: scores = ((q + u) k^T + shift((q + v) p^T)) / sqrt(d_head).

    The content term and the softmax run in mtp.kernels; the position term enters them as an additive bias,
    computed here because it depends on the queries. With full context (``keep`` None) a padded batch goes
    through as packed sequences (``varlen_attention``), so no score is computed for a padded frame; a limited
    context passes its band mask ``keep`` instead.
    """

    def __init__(self, d_model: int, n_heads: int, dropout_att: float, shared_biases=None):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads, self.d_head, self.dropout_att = n_heads, d_model // n_heads, dropout_att
        if shared_biases is None:
            self.pos_bias_u = nn.Parameter(torch.zeros(n_heads, self.d_head))
            self.pos_bias_v = nn.Parameter(torch.zeros(n_heads, self.d_head))
        else:   # untie_biases=False: every layer registers the same two parameters
            self.pos_bias_u, self.pos_bias_v = shared_biases
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x, pos_emb, keep, pad_mask):
        batch, time, d_model = x.shape
        heads = (batch, time, self.n_heads, self.d_head)
        q = self.linear_q(x).view(heads)
        k = self.linear_k(x).view(heads).transpose(1, 2)
        v = self.linear_v(x).view(heads).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(1, -1, self.n_heads, self.d_head).transpose(1, 2)
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        position_scores = relative_shift(torch.matmul(q_v, p.transpose(-2, -1))) / math.sqrt(self.d_head)
        dropout_p = self.dropout_att if self.training else 0.0
        if keep is not None or not pad_mask.any():
            out = attention(q_u, k, v, bias=position_scores, mask=keep, dropout_p=dropout_p).transpose(1, 2)
        else:   # valid frames are a prefix of each row: pack them; a padded frame's output stays zero
            valid = ~pad_mask
            cu_seqlens = torch.nn.functional.pad(valid.sum(1).cumsum(0), (1, 0))
            packed = varlen_attention(*(t.transpose(1, 2)[valid] for t in (q_u, k, v)), cu_seqlens, cu_seqlens,
                                      time, time, bias=position_scores, dropout_p=dropout_p)
            out = x.new_zeros(heads)
            out[valid] = packed
        return self.linear_out(out.reshape(batch, time, d_model))


def relative_shift(scores: torch.Tensor) -> torch.Tensor:
    """[..., T, 2T-1] scores against positions T-1 .. -(T-1) -> [..., T, T] with [i, j] the score for i - j.

    Row i needs columns T-1-i .. 2T-2-i, i.e. a stride of 2T-2 between rows: a strided view of the same
    storage, instead of the pad-and-reshape copy of the reference code.
    """
    scores = scores.contiguous()
    *lead, time, width = scores.shape
    if width != 2 * time - 1:
        raise ValueError(f"relative_shift: expected [..., T, 2T-1] scores, got {tuple(scores.shape)}")
    strides = scores.stride()
    return scores.as_strided((*lead, time, time), (*strides[:-2], width - 1, 1),
                             scores.storage_offset() + time - 1)


def relative_positions(length: int, d_model: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[1, 2L-1, d] sinusoids for positions L-1 .. -(L-1) (descending): sin in even channels, cos in odd."""
    positions = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device)[:, None]
    freqs = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / d_model))
    table = torch.zeros(2 * length - 1, d_model, device=device)
    table[:, 0::2] = torch.sin(positions * freqs)
    table[:, 1::2] = torch.cos(positions * freqs)
    return table[None].to(dtype)


class SqueezeformerLayer(nn.Module):
    """One block: for each of MHA, FF1, Conv, FF2: x = LayerNorm(x + module(scale_bias(x))).

    Modules are registered in NeMo's order (FF1, Conv, MHA, FF2: the state-dict order), which is not the
    order they run in.
    """

    def __init__(self, d_model: int, d_ff: int, n_heads: int, conv_kernel_size: int, dropout: float,
                 dropout_att: float, adaptive_scale: bool, shared_biases=None):
        super().__init__()
        self.norm_feed_forward1 = nn.LayerNorm(d_model)
        self.feed_forward1 = FeedForward(d_model, d_ff, dropout)
        self.feed_forward1_scale = ScaleBias(d_model, adaptive_scale)
        self.norm_conv = nn.LayerNorm(d_model)
        self.conv = ConvModule(d_model, conv_kernel_size)
        self.conv_scale = ScaleBias(d_model, adaptive_scale)
        self.norm_self_att = nn.LayerNorm(d_model)
        self.self_attn = RelPositionAttention(d_model, n_heads, dropout_att, shared_biases)
        self.self_attn_scale = ScaleBias(d_model, adaptive_scale)
        self.norm_feed_forward2 = nn.LayerNorm(d_model)
        self.feed_forward2 = FeedForward(d_model, d_ff, dropout)
        self.feed_forward2_scale = ScaleBias(d_model, adaptive_scale)
        self.dropout = Dropout(dropout)

    def forward(self, x, pos_emb, keep, pad_mask):
        x = self.norm_self_att(x + self.dropout(self.self_attn(self.self_attn_scale(x), pos_emb, keep, pad_mask)))
        x = self.norm_feed_forward1(x + self.dropout(self.feed_forward1(self.feed_forward1_scale(x))))
        x = self.norm_conv(x + self.dropout(self.conv(self.conv_scale(x), pad_mask)))
        return self.norm_feed_forward2(x + self.dropout(self.feed_forward2(self.feed_forward2_scale(x))))


class DepthwiseStridingSubsampling(nn.Module):
    """`dw_striding`: Conv2d(1->C, 3, s2) + ReLU, then per further x2 a depthwise Conv2d(C, 3, s2) + pointwise
    1x1 + ReLU, over (time, freq); then Linear(C * F', d) over the channel-major flattening.

    As in NeMo >= 2.5, every conv input is zeroed past the running valid length, so a padded batch gives
    each utterance the frames it gets alone.
    """

    def __init__(self, feat_in: int, d_model: int, factor: int, channels: int):
        super().__init__()
        stages = int(math.log2(factor)) if factor > 1 else 0
        if factor < 2 or 2 ** stages != factor:
            raise ValueError(f"subsampling_factor must be a power of 2 >= 2, got {factor}")
        freq = feat_in
        for _ in range(stages):
            freq = _strided_length(freq)
        pad = (SUBSAMPLING_KERNEL - 1) // 2
        self.out = nn.Linear(channels * freq, d_model)   # registered first, as in NeMo's state dict
        layers = [nn.Conv2d(1, channels, SUBSAMPLING_KERNEL, stride=2, padding=pad), nn.ReLU()]
        for _ in range(stages - 1):
            layers += [nn.Conv2d(channels, channels, SUBSAMPLING_KERNEL, stride=2, padding=pad, groups=channels),
                       nn.Conv2d(channels, channels, 1), nn.ReLU()]
        self.conv = nn.Sequential(*layers)
        with torch.no_grad():
            first_bound = 1.0 / SUBSAMPLING_KERNEL
            nn.init.uniform_(self.conv[0].weight, -first_bound, first_bound)
            nn.init.uniform_(self.conv[0].bias, -first_bound, first_bound)
            for i in range(2, len(self.conv), 3):
                for conv, bound in ((self.conv[i], SUBSAMPLING_KERNEL ** -1.0), (self.conv[i + 1], channels ** -0.5)):
                    nn.init.uniform_(conv.weight, -bound, bound)
                    nn.init.uniform_(conv.bias, -bound, bound)
            out_bound = (d_model * feat_in / stages) ** -0.5
            nn.init.uniform_(self.out.weight, -out_bound, out_bound)
            nn.init.uniform_(self.out.bias, -out_bound, out_bound)

    def forward(self, x, lengths):
        """x [B, T, F], lengths [B] -> ([B, T', d], lengths [B])."""
        x = x[:, None]
        for layer in self.conv:
            if isinstance(layer, nn.Conv2d):
                x = x * _time_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)
                x = layer(x)
                if layer.stride[0] > 1:
                    lengths = _strided_length(lengths)
            else:
                x = layer(x)
        x = x * _time_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)
        batch, channels, time, freq = x.shape
        return self.out(x.transpose(1, 2).reshape(batch, time, channels * freq)), lengths


def _strided_length(length):
    """Output length of a kernel-3, stride-2, padding-1 convolution."""
    return (length + 2 * ((SUBSAMPLING_KERNEL - 1) // 2) - SUBSAMPLING_KERNEL) // 2 + 1


def _time_mask(lengths: torch.Tensor, time: int) -> torch.Tensor:
    """[B, time] bool, True on valid frames."""
    return torch.arange(time, device=lengths.device)[None, :] < lengths[:, None]


class TimeReduction(nn.Module):
    """U-Net down: zero padded frames, depthwise Conv1d(k=5, stride 2, padding 3 = k - stride), pointwise
    Conv1d; the output keeps ceil(T/2) frames, the length of the masks subsampled with [::2]."""

    def __init__(self, d_model: int):
        super().__init__()
        self.dw_conv = nn.Conv1d(d_model, d_model, TIME_REDUCE_KERNEL, stride=TIME_REDUCE_STRIDE,
                                 padding=TIME_REDUCE_KERNEL - TIME_REDUCE_STRIDE, groups=d_model)
        self.pw_conv = nn.Conv1d(d_model, d_model, 1)
        with torch.no_grad():
            for conv, bound in ((self.dw_conv, TIME_REDUCE_KERNEL ** -0.5), (self.pw_conv, d_model ** -0.5)):
                nn.init.uniform_(conv.weight, -bound, bound)
                nn.init.uniform_(conv.bias, -bound, bound)

    def forward(self, x, keep, pad_mask):
        x = x.masked_fill(pad_mask[:, :, None], 0.0).transpose(1, 2)
        x = self.pw_conv(self.dw_conv(x)).transpose(1, 2)
        pad_mask = pad_mask[:, ::TIME_REDUCE_STRIDE]
        if keep is not None:
            keep = keep[:, :, ::TIME_REDUCE_STRIDE, ::TIME_REDUCE_STRIDE]
        return x[:, :pad_mask.shape[1]], keep, pad_mask


class SqueezeformerEncoder(nn.Module):
    """NeMo's SqueezeformerEncoder (dw_striding subsampling, rel_pos attention, BatchNorm conv modules).

    forward(features [B, feat_in, T], lengths [B]) -> (encoded [B, d_model, T'], lengths [B]), with
    T' = the subsampled length; the time reduction does not change the returned lengths.
    """

    def __init__(self, feat_in: int = 80, n_layers: int = 16, d_model: int = 144, n_heads: int = 4,
                 ff_expansion_factor: int = 4, conv_kernel_size: int = 31, subsampling_factor: int = 4,
                 subsampling_conv_channels: int = -1, xscaling: bool = True, untie_biases: bool = True,
                 adaptive_scale: bool = True, att_context_size=(-1, -1), time_reduce_idx: int | None = None,
                 time_recovery_idx: int | None = None, dropout: float = 0.1, dropout_emb: float = 0.0,
                 dropout_att: float = 0.1):
        super().__init__()
        if d_model % 2:
            raise ValueError(f"d_model must be even (sin/cos position channels), got {d_model}")
        if time_reduce_idx is None and time_recovery_idx is not None:
            raise ValueError("time_recovery_idx needs a time_reduce_idx")
        if time_reduce_idx is not None:
            time_recovery_idx = n_layers - 1 if time_recovery_idx is None else time_recovery_idx
            if not 0 <= time_reduce_idx < time_recovery_idx < n_layers:
                raise ValueError(f"need 0 <= time_reduce_idx ({time_reduce_idx}) < time_recovery_idx "
                                 f"({time_recovery_idx}) < n_layers ({n_layers})")
        if len(att_context_size) != 2:
            raise ValueError(f"att_context_size must be [left, right], got {att_context_size!r}")
        self.d_model, self.xscale = d_model, math.sqrt(d_model) if xscaling else None
        self.time_reduce_idx, self.time_recovery_idx = time_reduce_idx, time_recovery_idx
        self.att_context_size = [int(c) for c in att_context_size]
        channels = d_model if subsampling_conv_channels == -1 else subsampling_conv_channels
        self.pre_encode = DepthwiseStridingSubsampling(feat_in, d_model, subsampling_factor, channels)
        self.dropout, self.dropout_emb = Dropout(dropout), Dropout(dropout_emb)
        shared = None
        if not untie_biases:
            shared = (nn.Parameter(torch.zeros(n_heads, d_model // n_heads)),
                      nn.Parameter(torch.zeros(n_heads, d_model // n_heads)))
        self.layers = nn.ModuleList(
            SqueezeformerLayer(d_model, d_model * ff_expansion_factor, n_heads, conv_kernel_size, dropout,
                               dropout_att, adaptive_scale, shared) for _ in range(n_layers))
        if time_reduce_idx is not None:
            self.time_reduce_layer = TimeReduction(d_model)
            self.time_recovery_layer = nn.Linear(d_model, d_model)
        self.pre_ln = nn.LayerNorm(d_model)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None):
        if features.dim() != 3:
            raise ValueError(f"SqueezeformerEncoder: expected features [batch, feat_in, time], got "
                             f"{tuple(features.shape)}")
        lengths = check_lengths(lengths, features.shape[0], features.shape[-1], "feature", features.device)
        x, lengths = self.pre_encode(features.transpose(1, 2), lengths)
        if self.xscale is not None:
            x = x * self.xscale
        x = self.dropout(x)
        pos_emb = self.dropout_emb(relative_positions(x.shape[1], self.d_model, x.device, x.dtype))
        valid = _time_mask(lengths, x.shape[1])
        keep = self._attention_keep(valid)
        pad_mask = ~valid
        x = self.pre_ln(x)
        cache = None
        for index, layer in enumerate(self.layers):
            if index == self.time_reduce_idx:
                cache = (x, keep, pad_mask, pos_emb)
                x, keep, pad_mask = self.time_reduce_layer(x, keep, pad_mask)
                pos_emb = relative_positions(x.shape[1], self.d_model, x.device, x.dtype)
            if index == self.time_recovery_idx:
                full_rate, keep, pad_mask, pos_emb = cache
                x = torch.repeat_interleave(x, TIME_REDUCE_STRIDE, dim=1)[:, :full_rate.shape[1]]
                x = full_rate + self.time_recovery_layer(x)
            x = layer(x, pos_emb, keep, pad_mask)
        return x.transpose(1, 2), lengths

    def _attention_keep(self, valid: torch.Tensor) -> torch.Tensor | None:
        """A limited context's [B, 1, T, T] bool: query and key both valid and within the window. None for full
        context: the attention then packs the valid frames itself."""
        left, right = self.att_context_size
        if left < 0 and right < 0:
            return None
        keep = valid[:, :, None] & valid[:, None, :]
        if left >= 0:
            keep = keep.triu(-left)
        if right >= 0:
            keep = keep.tril(right)
        return keep[:, None]


class CTCDecoder(nn.Module):
    """NeMo's ConvASRDecoder: Conv1d(d, V+1, 1) and log-softmax; the blank is the last class (V)."""

    def __init__(self, feat_in: int, num_classes: int):
        super().__init__()
        self.decoder_layers = nn.Sequential(nn.Conv1d(feat_in, num_classes + 1, 1))
        nn.init.xavier_uniform_(self.decoder_layers[0].weight)

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.decoder_layers(encoded).transpose(1, 2), dim=-1)


# ------------------------------------------------------------------------------------------------ the model

class CTCModel(nn.Module):
    """What every CTC acoustic model here shares: a `preprocessor` (waveform -> features), `num_classes` labels
    and the blank after them (NeMo's convention)."""

    num_classes: int
    preprocessor: MelPreprocessor

    @property
    def blank_index(self) -> int:
        return self.num_classes

    @property
    def sample_rate(self) -> int:
        return self.preprocessor.sample_rate

    def extract_features(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None):
        """waveform [B, N] at `sample_rate`, lengths [B] in samples -> (features, feature_lengths)."""
        return self.preprocessor(waveform, lengths)

    def transcribe_logits(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None):
        """waveform [B, N] at `sample_rate` -> (log_probs [B, T', V+1], encoded_lengths [B])."""
        return self(*self.extract_features(waveform, lengths))


class SqueezeformerCTC(CTCModel):
    """NeMo's `EncDecCTCModelBPE` with a Squeezeformer encoder; defaults are the released xsmall model.

    forward(features [B, feat_in, T], feature_lengths [B]) -> (log_probs [B, T', num_classes + 1],
    encoded_lengths [B] int64); `transcribe_logits(waveform, lengths)` runs the front end first. Log-probs on
    frames at or past `encoded_lengths` are computed (from padding) but carry no meaning, as in NeMo.
    `preprocessor` holds MelPreprocessor arguments (NeMo names); missing ones take the released values.
    """

    def __init__(self, num_classes: int = 128, feat_in: int = 80, d_model: int = 144, n_layers: int = 16,
                 n_heads: int = 4, time_reduce_idx: int | None = 7, time_recovery_idx: int | None = None,
                 ff_expansion_factor: int = 4, conv_kernel_size: int = 31, subsampling_factor: int = 4,
                 subsampling_conv_channels: int = -1, xscaling: bool = True, untie_biases: bool = True,
                 adaptive_scale: bool = True, att_context_size=(-1, -1), dropout: float = 0.1,
                 dropout_emb: float = 0.0, dropout_att: float = 0.1, preprocessor: dict | None = None):
        super().__init__()
        front = {**RELEASED_PREPROCESSOR, **(preprocessor or {})}
        if "features" in (preprocessor or {}) and front["features"] != feat_in:
            raise ValueError(f"preprocessor features ({front['features']}) must equal feat_in ({feat_in})")
        front["features"] = feat_in
        if num_classes < 1:
            raise ValueError(f"num_classes (the vocabulary size, without the blank) must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.preprocessor = MelPreprocessor(**front)
        self.encoder = SqueezeformerEncoder(
            feat_in=feat_in, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
            ff_expansion_factor=ff_expansion_factor, conv_kernel_size=conv_kernel_size,
            subsampling_factor=subsampling_factor, subsampling_conv_channels=subsampling_conv_channels,
            xscaling=xscaling, untie_biases=untie_biases, adaptive_scale=adaptive_scale,
            att_context_size=att_context_size, time_reduce_idx=time_reduce_idx, time_recovery_idx=time_recovery_idx,
            dropout=dropout, dropout_emb=dropout_emb, dropout_att=dropout_att)
        self.decoder = CTCDecoder(d_model, num_classes)

    @property
    def subsampling_factor(self) -> int:
        return 2 ** sum(1 for m in self.encoder.pre_encode.conv if isinstance(m, nn.Conv2d) and m.stride[0] > 1)

    def forward(self, features: torch.Tensor, feature_lengths: torch.Tensor | None = None):
        dtype = self.encoder.pre_ln.weight.dtype
        encoded, lengths = self.encoder(features.to(dtype), feature_lengths)
        return self.decoder(encoded), lengths


# ------------------------------------------------------------------------------------------------ detection

@dataclass
class SqueezeformerArchitecture:
    kwargs: dict                        # SqueezeformerCTC constructor arguments read from the shapes
    variant: str | None = None          # the registered preset with these hyper-parameters, if any
    tasks: tuple = ("speech_recognition",)

    @property
    def backbone(self) -> str | None:
        """The registered backbone these weights fit; None when no preset has this architecture."""
        return self.variant


_LAYER_KEY = re.compile(r"encoder\.layers\.(\d+)\.")
_SUBSAMPLING_CONV_KEY = re.compile(r"encoder\.pre_encode\.conv\.(\d+)\.weight$")


def detect(state_dict: Mapping[str, torch.Tensor]) -> SqueezeformerArchitecture:
    """The architecture of a NeMo Squeezeformer-CTC state dict, from shapes; ValueError if it is not one.

    Shapes cannot tell where the time reduction sits: it is taken from the registered preset with the same
    width, depth and heads, or must come from the model's config (load_nemo reads it there).
    """
    def shape(key):
        if key not in state_dict:
            raise ValueError(f"not a Squeezeformer-CTC state dict: no {key!r}")
        return tuple(state_dict[key].shape)

    d_model = shape("encoder.pre_ln.weight")[0]
    n_heads = shape("encoder.layers.0.self_attn.pos_bias_u")[0]
    layers = {int(m.group(1)) for k in state_dict if (m := _LAYER_KEY.match(k))}
    if layers != set(range(len(layers))):
        raise ValueError(f"encoder layer indices are not contiguous from 0: {sorted(layers)}")
    channels = shape("encoder.pre_encode.conv.0.weight")[0]
    conv_keys = {int(m.group(1)) for k in state_dict if (m := _SUBSAMPLING_CONV_KEY.match(k))}
    stages = 1 + sum(1 for i in conv_keys if i >= 2 and (i - 2) % 3 == 0)   # conv.0, then dw at 2, 5, ...
    vocab_plus_blank = shape("decoder.decoder_layers.0.weight")[0]
    if "preprocessor.featurizer.fb" in state_dict:
        feat_in = shape("preprocessor.featurizer.fb")[1]
    else:   # the Linear after the convs sees channels * (feat_in halved `stages` times)
        feat_in = shape("encoder.pre_encode.out.weight")[1] // channels * 2 ** stages
    kwargs = dict(num_classes=vocab_plus_blank - 1, feat_in=feat_in, d_model=d_model, n_layers=len(layers),
                  n_heads=n_heads,
                  ff_expansion_factor=shape("encoder.layers.0.feed_forward1.linear1.weight")[0] // d_model,
                  conv_kernel_size=shape("encoder.layers.0.conv.depthwise_conv.weight")[-1],
                  subsampling_factor=2 ** stages, subsampling_conv_channels=-1 if channels == d_model else channels)
    if "encoder.time_reduce_layer.dw_conv.weight" not in state_dict:
        kwargs["time_reduce_idx"] = None
        return SqueezeformerArchitecture(kwargs, _matching_preset(kwargs))
    variant = _matching_preset(dict(kwargs, time_reduce_idx=0), _SHAPE_KEYS)
    if variant is not None:
        preset = _effective(_presets()[variant])
        kwargs.update(time_reduce_idx=preset["time_reduce_idx"], time_recovery_idx=preset["time_recovery_idx"])
    return SqueezeformerArchitecture(kwargs, variant)


def _presets() -> dict:
    from mtp.registry import BACKBONES

    return {e.name: e.kwargs for e in BACKBONES.entries() if e.target == f"{__name__}:SqueezeformerCTC"}


_ARCHITECTURE_KEYS = ("feat_in", "d_model", "n_layers", "n_heads", "ff_expansion_factor", "conv_kernel_size",
                      "subsampling_factor", "subsampling_conv_channels", "time_reduce_idx", "time_recovery_idx")


def _effective(kwargs: Mapping) -> dict:
    """Architecture settings with defaults filled in and the -1/None shorthands spelled out."""
    import inspect

    full = {name: p.default for name, p in inspect.signature(SqueezeformerCTC).parameters.items()}
    full.update(kwargs)
    if full["subsampling_conv_channels"] == -1:
        full["subsampling_conv_channels"] = full["d_model"]
    if full["time_reduce_idx"] is not None and full["time_recovery_idx"] is None:
        full["time_recovery_idx"] = full["n_layers"] - 1
    return {k: full[k] for k in _ARCHITECTURE_KEYS}


_SHAPE_KEYS = _ARCHITECTURE_KEYS[:-2]   # all but where the time reduction sits


def _matching_preset(kwargs: Mapping, keys=_ARCHITECTURE_KEYS) -> str | None:
    """The registered preset whose architecture equals `kwargs` on `keys` (the vocabulary size may differ)."""
    wanted = _effective(kwargs)
    for name, preset in _presets().items():
        have = _effective(preset)
        same_reduction = (have["time_reduce_idx"] is None) == (wanted["time_reduce_idx"] is None)
        if same_reduction and all(have[k] == wanted[k] for k in keys):
            return name
    return None


# ------------------------------------------------------------------------------------------------ .nemo archives

class NemoArchiveError(ValueError):
    pass


@dataclass
class NemoModel:
    """What a .nemo archive holds, ready to use."""

    model: SqueezeformerCTC
    config: dict                            # model_config.yaml as read
    kwargs: dict                            # the SqueezeformerCTC arguments built from it
    vocabulary: list | None = None          # decoder.vocabulary: token pieces, index = class id
    tokenizer_model: Path | None = None     # the SentencePiece model, extracted from the archive
    tokenizer_files: dict = field(default_factory=dict)   # config key (model_path, vocab_path, ...) -> file
    variant: str | None = None              # the registered preset these weights match


_ENCODER_ARGS = {"feat_in", "n_layers", "d_model", "n_heads", "ff_expansion_factor", "conv_kernel_size",
                 "subsampling_factor", "subsampling_conv_channels", "xscaling", "untie_biases", "adaptive_scale",
                 "att_context_size", "time_reduce_idx", "time_recovery_idx", "dropout", "dropout_emb", "dropout_att"}
# encoder settings that must have one value, because only that one is implemented
_ENCODER_FIXED = {"subsampling": "dw_striding", "self_attention_model": "rel_pos", "conv_norm_type": "batch_norm"}
_PREPROCESSOR_ARGS = set(RELEASED_PREPROCESSOR) | {"n_window_size", "n_window_stride", "preemph", "lowfreq",
                                                  "highfreq", "log_zero_guard_type", "log_zero_guard_value",
                                                  "exact_pad", "mag_power", "mel_norm"}
# preprocessor settings that only affect training-time augmentation or nothing at all
_PREPROCESSOR_IGNORED = {"rng", "nb_augmentation_prob", "nb_max_freq", "max_duration", "use_grads"}
_PREPROCESSOR_FIXED = {"use_torchaudio": False, "stft_conv": False, "stft_exact_pad": False}


def kwargs_from_nemo_config(config: Mapping, source: str = "model_config.yaml") -> tuple[dict, list | None]:
    """(SqueezeformerCTC arguments, vocabulary) from a NeMo model config (its `preprocessor`, `encoder` and
    `decoder` sections).

    Settings this implementation does not cover are refused by name rather than ignored.
    """
    def section(name: str, target: str) -> dict:
        value = config.get(name)
        if not isinstance(value, Mapping):
            raise NemoArchiveError(f"{source}: no {name!r} section")
        value = dict(value)
        cls = str(value.pop("_target_", target))
        if cls.rsplit(".", 1)[-1] != target:
            raise NemoArchiveError(f"{source}: {name} is {cls}, expected NeMo's {target} (not a Squeezeformer-CTC "
                                   f"model)")
        return value

    encoder = section("encoder", "SqueezeformerEncoder")
    for key, wanted in _ENCODER_FIXED.items():
        if encoder.pop(key, wanted) != wanted:
            raise NemoArchiveError(f"{source}: encoder.{key}={config['encoder'][key]!r} is not supported (only "
                                   f"{wanted!r})")
    feat_out = encoder.pop("feat_out", -1)
    if feat_out not in (-1, None, encoder.get("d_model")):
        raise NemoArchiveError(f"{source}: encoder.feat_out={feat_out} (an output projection) is not supported")
    encoder.pop("pos_emb_max_len", None)   # positions are computed for any length
    unknown = sorted(set(encoder) - _ENCODER_ARGS)
    if unknown:
        raise NemoArchiveError(f"{source}: unknown encoder setting(s) {unknown}")
    if encoder.get("att_context_size") is None:
        encoder.pop("att_context_size", None)

    decoder = section("decoder", "ConvASRDecoder")
    vocabulary = decoder.pop("vocabulary", None)
    vocabulary = list(vocabulary) if vocabulary else None
    num_classes = decoder.pop("num_classes", -1)
    if num_classes in (-1, None):
        if not vocabulary:
            raise NemoArchiveError(f"{source}: decoder has neither num_classes nor a vocabulary")
        num_classes = len(vocabulary)
    if vocabulary and len(vocabulary) != num_classes:
        raise NemoArchiveError(f"{source}: decoder.num_classes={num_classes} but the vocabulary has "
                               f"{len(vocabulary)} entries")
    if not decoder.pop("add_blank", True):
        raise NemoArchiveError(f"{source}: decoder.add_blank=False is not supported (the blank is the last class)")
    if decoder.get("feat_in") not in (None, -1, encoder.get("d_model")):
        raise NemoArchiveError(f"{source}: decoder.feat_in={decoder['feat_in']} differs from encoder.d_model="
                               f"{encoder.get('d_model')}")
    decoder.pop("feat_in", None)
    decoder.pop("init_mode", None)
    if decoder:
        raise NemoArchiveError(f"{source}: unknown decoder setting(s) {sorted(decoder)}")

    preprocessor = section("preprocessor", "AudioToMelSpectrogramPreprocessor")
    for key, wanted in _PREPROCESSOR_FIXED.items():
        if preprocessor.pop(key, wanted) != wanted:
            raise NemoArchiveError(f"{source}: preprocessor.{key}={config['preprocessor'][key]!r} is not supported")
    for key in _PREPROCESSOR_IGNORED:
        preprocessor.pop(key, None)
    unknown = sorted(set(preprocessor) - _PREPROCESSOR_ARGS)
    if unknown:
        raise NemoArchiveError(f"{source}: unknown preprocessor setting(s) {unknown}")
    # the archive's config is complete: a missing key means NeMo's class default, not the released value
    front = {**_nemo_preprocessor_defaults(), **preprocessor}
    for seconds, samples in (("window_size", "n_window_size"), ("window_stride", "n_window_stride")):
        if preprocessor.get(samples) is not None and seconds not in preprocessor:
            front[seconds] = None
    feat_in = encoder.get("feat_in", front["features"])
    if front["features"] != feat_in:
        raise NemoArchiveError(f"{source}: preprocessor.features={front['features']} but encoder.feat_in={feat_in}")
    return dict(encoder, num_classes=int(num_classes), preprocessor=front), vocabulary


def _nemo_preprocessor_defaults() -> dict:
    import inspect

    return {name: p.default for name, p in inspect.signature(MelPreprocessor).parameters.items()}


def _resolve_interpolations(config: dict, source: str = "model_config.yaml") -> dict:
    """Resolve OmegaConf `${a.b}` references (absolute, or under a leading `model.`) in a plain dict."""
    pattern = re.compile(r"\$\{([^}]+)\}")

    def lookup(path: str, depth: int):
        node = config
        for part in path.removeprefix("model.").split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise NemoArchiveError(f"{source}: cannot resolve ${{{path}}}")
            node = node[part]
        return resolve(node, depth + 1)

    def resolve(value, depth: int = 0):
        if depth > 20:
            raise NemoArchiveError(f"{source}: interpolations nest too deeply (a cycle?)")
        if isinstance(value, str):
            whole = pattern.fullmatch(value)
            if whole:
                return lookup(whole.group(1), depth)
            return pattern.sub(lambda m: str(lookup(m.group(1), depth)), value)
        if isinstance(value, Mapping):
            return {k: resolve(v, depth) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, depth) for v in value]
        return value

    return resolve(config)


def _member(archive: tarfile.TarFile, name: str) -> tarfile.TarInfo | None:
    """A member by base name, as NeMo writes it (`./name`) or without the leading `./`."""
    for candidate in (f"./{name}", name):
        try:
            info = archive.getmember(candidate)
        except KeyError:
            continue
        if info.isfile():
            return info
    return None


def load_nemo(path: str | Path, extract_dir: str | Path | None = None) -> NemoModel:
    """Read a NeMo Squeezeformer-CTC `.nemo` archive: build the model its config describes (size checked
    against the weights' shapes), load the weights strictly, and extract the tokenizer files.

    Tokenizer files go to `extract_dir` (default: the mtp weights cache, one folder per archive name and
    size). Only named members are read; nothing in the archive is executed or unpickled.
    """
    import yaml

    from mtp.files import atomic_path, cache_dir
    from mtp.weights import WeightsError, compare, extract_state_dict, safe_reason

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such .nemo file")
    try:
        archive = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise NemoArchiveError(f"{path}: not a .nemo archive (a tar file, optionally gzipped): {err}") from err
    with archive:
        config_info, weights_info = _member(archive, "model_config.yaml"), _member(archive, "model_weights.ckpt")
        missing = [name for name, info in (("model_config.yaml", config_info), ("model_weights.ckpt", weights_info))
                   if info is None]
        if missing:
            raise NemoArchiveError(f"{path}: missing {missing}; a .nemo holds ./model_config.yaml and "
                                   f"./model_weights.ckpt (found {archive.getnames()[:10]})")
        try:
            config = yaml.safe_load(archive.extractfile(config_info).read())
        except yaml.YAMLError as err:
            raise NemoArchiveError(f"{path}: model_config.yaml is not valid YAML ({err})") from err
        if not isinstance(config, dict):
            raise NemoArchiveError(f"{path}: model_config.yaml does not hold a mapping")
        config = _resolve_interpolations(config, f"{path}:model_config.yaml")
        kwargs, vocabulary = kwargs_from_nemo_config(config, f"{path}:model_config.yaml")
        try:
            # read in place (tar members are seekable): a large model is not copied into memory twice
            raw = torch.load(archive.extractfile(weights_info), map_location="cpu", weights_only=True)
        except Exception as err:
            raise NemoArchiveError(f"{path}: model_weights.ckpt is not a readable tensor checkpoint "
                                   f"({type(err).__name__}: {safe_reason(err)})") from err
        if not isinstance(raw, dict):
            raise NemoArchiveError(f"{path}: model_weights.ckpt holds {type(raw).__name__}, expected a state dict")
        state = extract_state_dict(raw, source=f"{path}:model_weights.ckpt")
        tokenizer_members = _tokenizer_members(archive, config)
        tokenizer_files = {}
        if tokenizer_members:
            folder = Path(extract_dir) if extract_dir else \
                cache_dir("weights") / "nemo" / f"{path.stem}-{path.stat().st_size}"
            for key, info in tokenizer_members.items():
                target = folder / Path(info.name).name
                with atomic_path(target, overwrite=True) as tmp:
                    tmp.write_bytes(archive.extractfile(info).read())
                tokenizer_files[key] = target

    source = f"{path}:model_weights.ckpt"
    try:
        found = detect(state)
    except ValueError as err:
        raise WeightsError(f"{source}: {err}") from err
    from_config, from_weights = _effective(kwargs), _effective(found.kwargs)
    differ = [f"{k}: weights {from_weights[k]} vs config {from_config[k]}" for k in _SHAPE_KEYS
              if from_weights[k] != from_config[k]]
    if found.kwargs["num_classes"] != kwargs["num_classes"]:
        differ.append(f"num_classes: weights {found.kwargs['num_classes']} vs config {kwargs['num_classes']}")
    if differ:
        raise WeightsError(f"{source} does not match model_config.yaml: {'; '.join(differ)}")
    # Built on the meta device and filled by assignment: no memory or time spent on an initialisation the
    # weights replace. Shared (tied) position biases need real storage to stay shared.
    tied = not kwargs.get("untie_biases", True)
    with torch.device("cpu" if tied else "meta"):
        model = SqueezeformerCTC(**kwargs)
    report = compare(model, state)
    if not report.ok:
        raise WeightsError(f"{source} does not fit SqueezeformerCTC({_describe(kwargs)}):\n{report.format()}")
    model.load_state_dict(state, strict=True, assign=not tied)
    model.eval()
    return NemoModel(model=model, config=config, kwargs=kwargs, vocabulary=vocabulary,
                     tokenizer_model=tokenizer_files.get("model_path"), tokenizer_files=tokenizer_files,
                     variant=_matching_preset(kwargs))


def _describe(kwargs: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items() if k in _ARCHITECTURE_KEYS or k == "num_classes")


_TOKENIZER_KEYS = {"model_path": "tokenizer.model", "vocab_path": "vocab.txt", "spe_tokenizer_vocab": "tokenizer.vocab"}


def _tokenizer_members(archive: tarfile.TarFile, config: Mapping) -> dict:
    """config tokenizer key -> tar member, following `nemo:<file>` references, else by file-name suffix."""
    tokenizer = config.get("tokenizer") if isinstance(config.get("tokenizer"), Mapping) else {}
    found = {}
    files = [m for m in archive.getmembers() if m.isfile()]
    for key, suffix in _TOKENIZER_KEYS.items():
        ref = tokenizer.get(key)
        info = None
        if isinstance(ref, str) and ref.startswith("nemo:"):
            info = _member(archive, ref[len("nemo:"):])
            if info is None:
                raise NemoArchiveError(f"{archive.name}: tokenizer.{key} points at {ref}, which the archive lacks")
        else:
            matches = [m for m in files if Path(m.name).name.endswith(suffix)]
            info = matches[0] if len(matches) == 1 else None
        if info is not None:
            found[key] = info
    return found


__all__ = ["SqueezeformerCTC", "SqueezeformerEncoder", "MelPreprocessor", "CTCDecoder", "NemoModel",
           "NemoArchiveError", "SqueezeformerArchitecture", "detect", "load_nemo", "kwargs_from_nemo_config",
           "mel_filterbank", "relative_positions", "relative_shift", "check_lengths", "RELEASED_PREPROCESSOR"]
