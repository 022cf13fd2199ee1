"""MPTSNet (Mu, Shahzad, Zhu, AAAI 2025): multiscale periodic local patterns and global dependencies for
multivariate time-series classification.

State-dict names, order and shapes equal the official code (MUYang99/MPTSNet @ 46990d3, `model/MPTSNet.py`,
`model/layers.py`), including the persistent sinusoidal `pe` buffers, so its `best_model` files load strictly.
The numerics follow the official forward (checked against ../shared/fixtures/mptsnet); the differences are
in how it is computed, not what:
- the six Inception kernels are averaged into one convolution (the mean of 'same' convolutions is a
  convolution with the centred, averaged kernels), and every period's columns go through the CNN at once;
- attention runs through `mtp.kernels.attention` with nn.MultiheadAttention's parameter names;
- the period amplitudes are computed in torch (float64 FFT), not numpy;
- the head does not cast its input with `.float()` (an official bug that breaks float64 runs).

Layout: the model takes (B, C, T); a PeriodicBlock maps (B, E, T) -> (B, E, T).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtp.kernels import Dropout, attention

NUM_BLOCKS = 2            # hard-coded in the official Model
CNN_WIDTH = 1024          # hard-coded Inception width
NUM_KERNELS = 6           # Inception kernels 1, 3, ..., 11
CBAM_REDUCTION = 16
FLAG_PE_LENGTH = 20000    # DataEmbedding_v1's fixed table length
DEFAULT_NUM_HEADS = 4     # not recoverable from a state dict; every official config uses 4


# ---------------------------------------------------------------------------------------------- period search
def find_periods(train_x, k: int = 5) -> list[int]:
    """The official `fft_main_periods_wo_duplicates`: the top-k distinct FFT periods of the training set.

    train_x: (N, C, T) after the official preprocessing (NaN -> 0). The series is the mean over samples and
    channels; amplitude 2/T |X[f]| over bins 0..T//2-1; f == 0 and f == 1 dropped by exact float comparison
    against numpy's bin values (which are not whole numbers for some T, so bin 1 can survive and give period T);
    period = round((1/f) * T), half to even; the first k distinct periods in descending amplitude order.
    """
    x = np.asarray(train_x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"find_periods: expected train_x of shape (samples, channels, length), got {x.shape}")
    series = x.mean(axis=(0, 1))
    length = series.shape[0]
    # numpy 1.x (the official environment) took this FFT in float64 whatever the input dtype
    amplitude = 2.0 / length * np.abs(np.fft.fft(series))[: length // 2]
    freqs = np.fft.fftfreq(length, 1.0 / length)[: length // 2]
    keep = (freqs != 0) & (freqs != 1)
    amplitude, freqs = amplitude[keep], freqs[keep]
    order = np.argsort(-amplitude, kind="stable")
    periods: list[int] = []
    for f in freqs[order]:
        period = int(np.round((1.0 / f) * length))   # (1/f)*T, not T/f: they round differently (749/214)
        if period not in periods:
            periods.append(period)
            if len(periods) == k:
                break
    return periods


def amplitude_bin(seq_length: int, period: int) -> int:
    """Bin (0..T//2-1) nearest to T/p; the lower one on a tie, as numpy's argmin picks it."""
    target = seq_length / period
    bins = range(max(seq_length // 2, 1))
    return min(bins, key=lambda b: abs(b - target))


@torch.no_grad()
def period_amplitudes(x: torch.Tensor, bins: Sequence[int]) -> torch.Tensor:
    """Per-sample amplitudes (B, k) of x (B, E, T): 2/T |FFT| of the channel mean at each period's bin.
    Float64 FFT on the detached input, as the official numpy code; the result takes x's dtype."""
    series = x.detach().to(torch.float64).mean(dim=1)
    spectrum = torch.fft.rfft(series, dim=-1)[:, list(bins)]
    return (spectrum.abs() * (2.0 / x.shape[-1])).to(x.dtype)


# ---------------------------------------------------------------------------------------------- building blocks
def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """[length, dim] sine/cosine table computed in float32 like the official buffers (bit-equal)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div[: dim // 2])
    return table


class PositionalEmbedding(nn.Module):
    """Data-embedding table, buffer `pe` [1, L, E]."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(max_len, dim).unsqueeze(0))

    def forward(self, length: int) -> torch.Tensor:
        return self.pe[:, :length]


class PositionalEncoding(nn.Module):
    """Transformer table, buffer `pe` [L, 1, d] (sequence-first in the official code)."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(max_len, dim).unsqueeze(1))

    def forward(self, length: int) -> torch.Tensor:
        """[1, length, d] for batch-first addition."""
        return self.pe[:length].transpose(0, 1)


class TokenEmbedding(nn.Module):
    def __init__(self, num_channels: int, embed_dim: int, kernel_size: int):
        super().__init__()
        self.tokenConv = nn.Conv1d(num_channels, embed_dim, kernel_size, padding=kernel_size // 2,
                                   padding_mode="circular", bias=False)
        # init as thuml's TokenEmbedding, whose names this keeps (the fixtures fix weights, not inits)
        nn.init.kaiming_normal_(self.tokenConv.weight, mode="fan_in", nonlinearity="leaky_relu")

    def forward(self, x):  # (B, C, T) -> (B, E, T)
        return self.tokenConv(x)


class DataEmbedding(nn.Module):
    """Conv (k=3 circular; k=1 for the flag path's DataEmbedding_v1) + sinusoidal table + dropout."""

    def __init__(self, num_channels: int, embed_dim: int, max_len: int, kernel_size: int, dropout: float):
        super().__init__()
        self.value_embedding = TokenEmbedding(num_channels, embed_dim, kernel_size)
        self.position_embedding = PositionalEmbedding(embed_dim, max_len)
        self.dropout = Dropout(dropout)

    def forward(self, x):  # (B, C, T) -> (B, T, E), the official layout
        h = self.value_embedding(x).transpose(1, 2)
        return self.dropout(h + self.position_embedding(h.shape[1]))


class SelfAttention(nn.Module):
    """nn.MultiheadAttention's parameters (names, shapes, init; no attention dropout, as the official 0)
    with the product computed by mtp.kernels.attention. Batch-first input."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x):  # (B, L, d)
        batch, length, dim = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = attention(q, k, v).transpose(1, 2).reshape(batch, length, dim)
        return self.out_proj(out)


class TransformerBlock(nn.Module):
    """Post-norm: x = ln1(x + attn(x)); x = ln2(x + ffn(x)); ReLU FFN, no dropout."""

    def __init__(self, dim: int, num_heads: int, ff_dim: int):
        super().__init__()
        self.attention = SelfAttention(dim, num_heads)
        self.ffn = nn.Sequential(nn.Linear(dim, ff_dim), nn.ReLU(), nn.Linear(ff_dim, dim))
        self.layernorm1 = nn.LayerNorm(dim)
        self.layernorm2 = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.layernorm1(x + self.attention(x))
        return self.layernorm2(x + self.ffn(x))


def _blocks(dim, num_heads, ff_dim, num_layers):
    return nn.ModuleList([TransformerBlock(dim, num_heads, ff_dim) for _ in range(num_layers)])


def _cls_output(layer: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    """layer(cat([tokens, cls broadcast over tokens])) for h = [cls, tokens], without materialising the
    concatenation: the cls half of the product is computed once per sample."""
    dim = h.shape[-1]
    tokens, cls = h[:, 1:], h[:, :1]
    return F.linear(tokens, layer.weight[:, :dim], layer.bias) + F.linear(cls, layer.weight[:, dim:])


class ClsTransformer(nn.Module):
    """Time-point transformer (flag False): no input projection, cls prepended, table [T+1, 1, E]."""

    def __init__(self, seq_length, dim, num_heads, ff_dim, num_layers):
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))   # N(0, 1): an assumption, as for the window one
        self.positional_encoding = PositionalEncoding(dim, seq_length + 1)
        self.transformer_blocks = _blocks(dim, num_heads, ff_dim, num_layers)
        self.output_layer = nn.Linear(2 * dim, dim)

    def forward(self, x):  # (B, L, E) -> (B, L, E)
        h = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        h = h + self.positional_encoding(h.shape[1])
        for block in self.transformer_blocks:
            h = block(h)
        return _cls_output(self.output_layer, h)


class ClsWindowTransformer(nn.Module):
    """Window transformer (flag False): Linear(E*p -> Et), cls prepended, table [T//p+2, 1, Et], blocks,
    Linear(2Et -> E*p) on [token, cls]."""

    def __init__(self, token_dim, max_tokens, dim, num_heads, ff_dim, num_layers):
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.embedding = nn.Linear(token_dim, dim)
        self.positional_encoding = PositionalEncoding(dim, max_tokens + 1)
        self.transformer_blocks = _blocks(dim, num_heads, ff_dim, num_layers)
        self.output_layer = nn.Linear(2 * dim, token_dim)

    def forward(self, x):  # (B, n, E*p) -> (B, n, E*p)
        h = self.embedding(x)
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
        h = h + self.positional_encoding(h.shape[1])
        for block in self.transformer_blocks:
            h = block(h)
        return _cls_output(self.output_layer, h)


class Transformer(nn.Module):
    """Time-point transformer (flag True): table [T, 1, E] and blocks. Its `embedding` Linear is in the
    official state dict but never applied; it is kept (unused) so checkpoints load strictly."""

    def __init__(self, seq_length, dim, num_heads, ff_dim, num_layers):
        super().__init__()
        self.embedding = nn.Linear(dim, dim)
        self.positional_encoding = PositionalEncoding(dim, seq_length)
        self.transformer_blocks = _blocks(dim, num_heads, ff_dim, num_layers)

    def forward(self, x):
        h = x + self.positional_encoding(x.shape[1])
        for block in self.transformer_blocks:
            h = block(h)
        return h


class WindowTransformer(nn.Module):
    """Window transformer (flag True): Linear(E*p -> Et), table [T//p+1, 1, Et], blocks, Linear(Et -> E*p)."""

    def __init__(self, token_dim, max_tokens, dim, num_heads, ff_dim, num_layers):
        super().__init__()
        self.embedding = nn.Linear(token_dim, dim)
        self.positional_encoding = PositionalEncoding(dim, max_tokens)
        self.transformer_blocks = _blocks(dim, num_heads, ff_dim, num_layers)
        self.output_layer = nn.Linear(dim, token_dim)

    def forward(self, x):
        h = self.embedding(x)
        h = h + self.positional_encoding(h.shape[1])
        for block in self.transformer_blocks:
            h = block(h)
        return self.output_layer(h)


class ChannelAttention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        hidden = channels // CBAM_REDUCTION
        self.fc = nn.Sequential(nn.Conv1d(channels, hidden, 1, bias=False), nn.ReLU(),
                                nn.Conv1d(hidden, channels, 1, bias=False))

    def forward(self, x):  # (N, C, L) -> gate (N, C, 1)
        pooled = torch.stack([x.mean(dim=-1), x.amax(dim=-1)], dim=1)        # (N, 2, C): avg, max
        # the shared 1x1-conv MLP as two matmuls on the pooled vectors
        hidden = F.relu(F.linear(pooled, self.fc[0].weight.squeeze(-1)))
        return torch.sigmoid(F.linear(hidden, self.fc[2].weight.squeeze(-1)).sum(dim=1)).unsqueeze(-1)


class SpatialAttention(nn.Module):
    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x):  # (N, C, L) -> gate (N, 1, L)
        pooled = torch.stack([x.mean(dim=1), x.amax(dim=1)], dim=1)
        return torch.sigmoid(self.conv1(pooled))


class CBAM(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.channel_attention = ChannelAttention(channels)
        self.spatial_attention = SpatialAttention()

    def forward(self, x):
        x = x * self.channel_attention(x)
        return x * self.spatial_attention(x)


class InceptionCBAM(nn.Module):
    """Mean of six 'same' Conv1d (kernels 1..11, with bias), then CBAM."""

    def __init__(self, in_channels: int, out_channels: int, num_kernels: int = NUM_KERNELS):
        super().__init__()
        self.kernels = nn.ModuleList([nn.Conv1d(in_channels, out_channels, 2 * i + 1, padding=i)
                                      for i in range(num_kernels)])
        self.CBAMBlock = CBAM(out_channels)

    def merged_kernel(self):
        """The one convolution equal to the mean of the six (centred zero-padded kernels, averaged)."""
        count = len(self.kernels)
        weight = sum(F.pad(conv.weight, (count - 1 - i, count - 1 - i)) for i, conv in enumerate(self.kernels))
        bias = sum(conv.bias for conv in self.kernels)
        return weight / count, bias / count

    def forward(self, x, merged=None):  # (N, C_in, L) -> (N, C_out, L)
        weight, bias = self.merged_kernel() if merged is None else merged
        return self.CBAMBlock(F.conv1d(x, weight, bias, padding=len(self.kernels) - 1))


# ---------------------------------------------------------------------------------------------- the model
class PeriodicBlock(nn.Module):
    """One MPTSNet block: per period, tile -> shared CNN (tile residual) -> window transformer -> untile;
    amplitude-softmax-weighted sum over periods + time-point transformer + input."""

    def __init__(self, periods, seq_length, embed_dim, embed_dim_t, num_heads, ff_dim, num_layers, flag):
        super().__init__()
        self.periods = list(periods)
        self.seq_length = seq_length
        self.bins = [amplitude_bin(seq_length, p) for p in self.periods]
        self.cnn = nn.Sequential(InceptionCBAM(embed_dim, CNN_WIDTH), nn.GELU(), InceptionCBAM(CNN_WIDTH, embed_dim))
        time_point, window = (Transformer, WindowTransformer) if flag else (ClsTransformer, ClsWindowTransformer)
        self.transformer = time_point(seq_length, embed_dim, num_heads, ff_dim, num_layers)
        # the official tables have T//p + 1 token rows (plus the cls row on the cls path)
        self.transformers = nn.ModuleList([
            window(embed_dim * p, seq_length // p + 1, embed_dim_t, num_heads, ff_dim, num_layers)
            for p in self.periods])

    def run_cnn(self, cols, merged=None):
        """self.cnn(cols); `merged` holds both Inceptions' merged kernels, built once per block forward."""
        first, act, second = self.cnn
        merged = merged or (None, None)
        return second(act(first(cols, merged[0])), merged[1])

    def period_branch(self, x, period, window_transformer, merged=None):
        batch, dim, length = x.shape
        tiles = -(-length // period)                     # = T//p + 1 when p does not divide T
        h = F.pad(x, (0, tiles * period - length)) if tiles * period != length else x
        # official layout: (e, i, j) is time i*n + j, i < p (chunk), j < n (offset); one column per offset
        cols = h.reshape(batch, dim, period, tiles).permute(0, 3, 1, 2).reshape(batch * tiles, dim, period)
        cols = cols + self.run_cnn(cols, merged)
        tokens = window_transformer(cols.reshape(batch, tiles, dim * period))   # token = e*p + i
        out = tokens.reshape(batch, tiles, dim, period).permute(0, 2, 3, 1).reshape(batch, dim, tiles * period)
        return out[..., :length]

    def forward(self, x):  # (B, E, T) -> (B, E, T)
        weights = torch.softmax(period_amplitudes(x, self.bins), dim=-1)      # (B, k), no gradient
        merged = (self.cnn[0].merged_kernel(), self.cnn[2].merged_kernel())   # shared by all periods
        out = x + self.transformer(x.transpose(1, 2)).transpose(1, 2)
        for i, (period, window_transformer) in enumerate(zip(self.periods, self.transformers)):
            out = out + weights[:, i, None, None] * self.period_branch(x, period, window_transformer, merged)
        return out


class MPTSNet(nn.Module):
    """MPTSNet classifier. x (B, C, T) -> logits (B, num_classes).

    periods: from `find_periods` on the training set (see `data_config`); flag=True is the official PEMS-SF
    variant (k=1 embedding, no cls tokens). `mask` is accepted and ignored: the official model sees the
    zero padding as data.
    """

    fixed_length = True  # the positional tables and the head are sized for seq_length (the pipeline pads to it)

    def __init__(self, periods, num_channels, seq_length, num_classes, flag=False, embed_dim=64, embed_dim_t=256,
                 num_heads=4, ff_dim=256, num_layers=1, dropout=0.1):
        super().__init__()
        periods = [int(p) for p in periods]
        if not periods or any(p < 1 or p > seq_length for p in periods):
            raise ValueError(f"periods={periods}: need at least one period, each in 1..seq_length={seq_length}")
        if seq_length < 2:
            raise ValueError(f"seq_length={seq_length}: the period amplitudes need T >= 2")
        if embed_dim < CBAM_REDUCTION:
            raise ValueError(f"embed_dim={embed_dim}: CBAM's reduction of {CBAM_REDUCTION} needs embed_dim >= 16")
        self.periods, self.flag = periods, bool(flag)
        self.num_channels, self.seq_length, self.num_classes = num_channels, seq_length, num_classes
        self.enc_embedding = DataEmbedding(num_channels, embed_dim, FLAG_PE_LENGTH if flag else seq_length,
                                           kernel_size=1 if flag else 3, dropout=dropout)
        self.layer_norm = nn.LayerNorm(embed_dim)      # one LayerNorm, after both blocks; registered first
        self.model = nn.ModuleList([
            PeriodicBlock(periods, seq_length, embed_dim, embed_dim_t, num_heads, ff_dim, num_layers, flag)
            for _ in range(NUM_BLOCKS)])
        self.dropout = Dropout(dropout)
        self.fc = nn.Linear(embed_dim * seq_length, num_classes)

    def forward(self, x, mask=None):
        if x.dim() != 3 or x.shape[1] != self.num_channels or x.shape[2] != self.seq_length:
            raise ValueError(f"MPTSNet: expected x of shape (B, {self.num_channels}, {self.seq_length}), "
                             f"got {tuple(x.shape)}")
        h = self.enc_embedding(x).transpose(1, 2)                       # (B, E, T)
        for block in self.model:
            h = self.layer_norm(block(h).transpose(1, 2)).transpose(1, 2)
        h = self.dropout(F.gelu(h))
        return self.fc(h.reshape(h.shape[0], -1))                       # flattened in (E, T) order

    @staticmethod
    def data_config(train_x) -> dict:
        """The official train.py recipe from the preprocessed training array (N, C, T)."""
        channels, length = np.asarray(train_x).shape[1:]
        embed_dim = min(max(4 * channels, 64), 256)
        periods = find_periods(train_x)
        if not periods:
            raise ValueError(f"the period search found no period in series of {length} steps (it needs bins "
                             f"beyond f=1, i.e. at least 6 steps)")
        return {"periods": periods, "embed_dim": embed_dim,
                "embed_dim_t": min(max(4 * embed_dim, 256), 512)}

    @staticmethod
    def config_from_state_dict(state_dict) -> dict:
        return config_from_state_dict(state_dict)  # the module function below


def config_from_state_dict(state_dict) -> dict:
    """Constructor kwargs recovered from an official state dict's shapes (num_heads is not recoverable: 4)."""
    conv = state_dict["enc_embedding.value_embedding.tokenConv.weight"]
    embed_dim, num_channels = int(conv.shape[0]), int(conv.shape[1])
    flag = "model.0.transformer.cls_token" not in state_dict
    fc = state_dict["fc.weight"]
    periods, i = [], 0
    while f"model.0.transformers.{i}.embedding.weight" in state_dict:
        periods.append(int(state_dict[f"model.0.transformers.{i}.embedding.weight"].shape[1]) // embed_dim)
        i += 1
    if not periods:
        raise ValueError("config_from_state_dict: no model.0.transformers.{i}.embedding.weight entries")
    prefix = "model.0.transformer.transformer_blocks."
    num_layers = len({key[len(prefix):].split(".")[0] for key in state_dict if key.startswith(prefix)})
    return {
        "periods": periods,
        "flag": flag,
        "num_channels": num_channels,
        "seq_length": int(fc.shape[1]) // embed_dim,
        "num_classes": int(fc.shape[0]),
        "embed_dim": embed_dim,
        "embed_dim_t": int(state_dict["model.0.transformers.0.embedding.weight"].shape[0]),
        "num_heads": DEFAULT_NUM_HEADS,
        "ff_dim": int(state_dict[prefix + "0.ffn.0.weight"].shape[0]),
        "num_layers": num_layers,
    }


__all__ = ["MPTSNet", "PeriodicBlock", "config_from_state_dict", "find_periods", "period_amplitudes"]
