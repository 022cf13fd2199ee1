"""Autoformer (Wu et al., NeurIPS 2021) as in thuml's Time-Series-Library `models/Autoformer.py`.

Series decomposition inside every block plus the Auto-Correlation mechanism: period-based
dependencies from FFT cross-correlation, then aggregation of the top-k time-delayed values.
Training uses the batch-shared delays, evaluation per-sample delays, as the official code does.
Parameter and buffer names equal the official ones.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mtp.backbones.dlinear import SeriesDecomposition
from mtp.backbones.itransformer import Dropout, PointwiseConv, activation_function
from mtp.backbones.patchtst import PositionalEmbedding

# Number of thuml `timeF` features per frequency letter (their TimeFeatureEmbedding table).
_TIME_FEATURE_COUNT = {"h": 4, "t": 5, "s": 6, "m": 1, "a": 1, "w": 2, "d": 3, "b": 3}


class AutoCorrelation(nn.Module):
    """q/k/v [B, L, H, E] -> [B, L, H, E]; the returned map is the raw correlation [B, L, H, E]."""

    def __init__(self, factor: int = 1):
        super().__init__()
        self.factor = factor

    def _aggregate_shared(self, values, mean_corr):
        # Training: the top-k delays are shared by the whole batch (the official speed-up).
        length = values.shape[-1]
        top_k = int(self.factor * math.log(length))
        delays = torch.topk(mean_corr.mean(0), top_k, dim=-1).indices                # [k]
        weights = torch.softmax(mean_corr[:, delays], dim=-1)                         # [B, k]
        positions = (torch.arange(length, device=values.device) + delays[:, None]) % length   # [k, L]
        patterns = values[..., positions]                                             # [B, H, E, k, L]
        return torch.einsum("bhekl,bk->bhel", patterns, weights)

    def _aggregate_per_sample(self, values, mean_corr):
        # Evaluation: every sample picks its own top-k delays.
        batch, heads, channels, length = values.shape
        top_k = int(self.factor * math.log(length))
        weights, delays = torch.topk(mean_corr, top_k, dim=-1)                        # [B, k]
        weights = torch.softmax(weights, dim=-1)
        positions = (torch.arange(length, device=values.device) + delays[..., None]) % length  # [B, k, L]
        shape = (batch, heads, channels, top_k, length)
        patterns = torch.gather(values.unsqueeze(3).expand(shape), -1, positions[:, None, None].expand(shape))
        return torch.einsum("bhekl,bk->bhel", patterns, weights)

    def forward(self, queries, keys, values):
        length, source = queries.shape[1], values.shape[1]
        if length > source:
            pad = queries.new_zeros(queries.shape[0], length - source, *queries.shape[2:])
            values, keys = torch.cat([values, pad], dim=1), torch.cat([keys, pad], dim=1)
        else:
            values, keys = values[:, :length], keys[:, :length]
        # Cross-correlation over time for every head/channel via FFT: [B, H, E, L].
        q_fft = torch.fft.rfft(queries.permute(0, 2, 3, 1).contiguous(), dim=-1)
        k_fft = torch.fft.rfft(keys.permute(0, 2, 3, 1).contiguous(), dim=-1)
        corr = torch.fft.irfft(q_fft * torch.conj(k_fft), dim=-1)
        mean_corr = corr.mean(dim=(1, 2))                                             # [B, L]
        values = values.permute(0, 2, 3, 1)
        aggregate = self._aggregate_shared if self.training else self._aggregate_per_sample
        return aggregate(values, mean_corr).permute(0, 3, 1, 2), corr.permute(0, 3, 1, 2)


class AutoCorrelationLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, factor: int = 1):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.inner_correlation = AutoCorrelation(factor)
        self.query_projection = nn.Linear(d_model, d_model)
        self.key_projection = nn.Linear(d_model, d_model)
        self.value_projection = nn.Linear(d_model, d_model)
        self.out_projection = nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values):
        batch, length, _ = queries.shape
        source = keys.shape[1]
        q = self.query_projection(queries).view(batch, length, self.n_heads, -1)
        k = self.key_projection(keys).view(batch, source, self.n_heads, -1)
        v = self.value_projection(values).view(batch, source, self.n_heads, -1)
        out, corr = self.inner_correlation(q, k, v)
        return self.out_projection(out.reshape(batch, length, -1)), corr


class SeasonalLayerNorm(nn.Module):
    """LayerNorm, then the time-average removed (the official `my_Layernorm`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.layernorm = nn.LayerNorm(channels)

    def forward(self, x):
        x_hat = self.layernorm(x)
        return x_hat - x_hat.mean(dim=1, keepdim=True)


class TokenEmbedding(nn.Module):
    """Values -> d_model with a width-3 circular convolution over time."""

    def __init__(self, c_in: int, d_model: int):
        super().__init__()
        self.tokenConv = nn.Conv1d(c_in, d_model, kernel_size=3, padding=1, padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.tokenConv.weight, mode="fan_in", nonlinearity="leaky_relu")

    def forward(self, x):
        return self.tokenConv(x.transpose(1, 2)).transpose(1, 2)


class TimeFeatureEmbedding(nn.Module):
    def __init__(self, d_model: int, freq: str = "h"):
        super().__init__()
        if freq not in _TIME_FEATURE_COUNT:
            raise ValueError(f"freq={freq!r}: expected one of {sorted(_TIME_FEATURE_COUNT)}")
        self.embed = nn.Linear(_TIME_FEATURE_COUNT[freq], d_model, bias=False)

    def forward(self, x_mark):
        return self.embed(x_mark)


class DataEmbeddingWithoutPosition(nn.Module):
    """value + time-feature embedding. The position table exists only so official checkpoints load
    strictly: the official `DataEmbedding_wo_pos` registers it but never adds it."""

    def __init__(self, c_in: int, d_model: int, freq: str = "h", dropout: float = 0.1):
        super().__init__()
        self.value_embedding = TokenEmbedding(c_in, d_model)
        self.position_embedding = PositionalEmbedding(d_model)
        self.temporal_embedding = TimeFeatureEmbedding(d_model, freq)
        self.dropout = Dropout(dropout)

    def forward(self, x, x_mark=None):
        out = self.value_embedding(x)
        if x_mark is not None:
            out = out + self.temporal_embedding(x_mark)
        return self.dropout(out)


class EncoderLayer(nn.Module):
    def __init__(self, attention: AutoCorrelationLayer, d_model: int, d_ff: int, moving_avg: int,
                 dropout: float, activation: str):
        super().__init__()
        self.attention = attention
        self.conv1 = PointwiseConv(d_model, d_ff, bias=False)
        self.conv2 = PointwiseConv(d_ff, d_model, bias=False)
        self.decomp1 = SeriesDecomposition(moving_avg)
        self.decomp2 = SeriesDecomposition(moving_avg)
        self.dropout = Dropout(dropout)
        self.activation = activation_function(activation)

    def forward(self, x):
        new_x, corr = self.attention(x, x, x)
        x, _ = self.decomp1(x + self.dropout(new_x))
        y = self.dropout(self.activation(self.conv1(x)))
        y = self.dropout(self.conv2(y))
        x, _ = self.decomp2(x + y)
        return x, corr


class Encoder(nn.Module):
    def __init__(self, attn_layers, norm_layer: nn.Module):
        super().__init__()
        self.attn_layers = nn.ModuleList(attn_layers)
        self.norm = norm_layer

    def forward(self, x):
        corrs = []
        for layer in self.attn_layers:
            x, corr = layer(x)
            corrs.append(corr)
        return self.norm(x), corrs


class DecoderLayer(nn.Module):
    """Seasonal path through self- and cross-correlation; the trends removed on the way are summed and
    projected to c_out channels."""

    def __init__(self, self_attention: AutoCorrelationLayer, cross_attention: AutoCorrelationLayer,
                 d_model: int, c_out: int, d_ff: int, moving_avg: int, dropout: float, activation: str):
        super().__init__()
        self.self_attention = self_attention
        self.cross_attention = cross_attention
        self.conv1 = PointwiseConv(d_model, d_ff, bias=False)
        self.conv2 = PointwiseConv(d_ff, d_model, bias=False)
        self.decomp1 = SeriesDecomposition(moving_avg)
        self.decomp2 = SeriesDecomposition(moving_avg)
        self.decomp3 = SeriesDecomposition(moving_avg)
        self.dropout = Dropout(dropout)
        self.projection = nn.Conv1d(d_model, c_out, kernel_size=3, padding=1, padding_mode="circular", bias=False)
        self.activation = activation_function(activation)

    def forward(self, x, cross):
        x, trend1 = self.decomp1(x + self.dropout(self.self_attention(x, x, x)[0]))
        x, trend2 = self.decomp2(x + self.dropout(self.cross_attention(x, cross, cross)[0]))
        y = self.dropout(self.activation(self.conv1(x)))
        y = self.dropout(self.conv2(y))
        x, trend3 = self.decomp3(x + y)
        residual_trend = self.projection((trend1 + trend2 + trend3).transpose(1, 2)).transpose(1, 2)
        return x, residual_trend


class Decoder(nn.Module):
    def __init__(self, layers, norm_layer: nn.Module, projection: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm_layer
        self.projection = projection

    def forward(self, x, cross, trend):
        for layer in self.layers:
            x, residual_trend = layer(x, cross)
            trend = trend + residual_trend
        return self.projection(self.norm(x)), trend


class Autoformer(nn.Module):
    """forward(x [B, seq_len, N], x_mark [B, seq_len, F] | None, y_mark | None) -> [B, pred_len, N].

    The decoder input is built here as the official model does: the decomposition of the last
    label_len input steps, followed by the input mean (trend) and zeros (seasonal) for the horizon.
    y_mark holds the decoder's time features, either for label_len + pred_len steps (thuml's
    batch_y_mark) or for the pred_len future steps only (the label part is then taken from x_mark).
    N must equal enc_in; dec_in and c_out default to enc_in. Defaults are TSL run.py's.
    """

    def __init__(self, seq_len: int = 96, label_len: int = 48, pred_len: int = 96, enc_in: int = 7,
                 dec_in: int | None = None, c_out: int | None = None, d_model: int = 512, n_heads: int = 8,
                 e_layers: int = 2, d_layers: int = 1, d_ff: int = 2048, moving_avg: int = 25, factor: int = 1,
                 dropout: float = 0.1, embed: str = "timeF", freq: str = "h", activation: str = "gelu",
                 output_attention: bool = False):
        super().__init__()
        if embed != "timeF":
            raise ValueError(f"embed={embed!r}: only 'timeF' time features are supported")
        if not 0 < label_len <= seq_len:
            raise ValueError(f"label_len={label_len}: expected 0 < label_len <= seq_len={seq_len}")
        dec_in, c_out = dec_in or enc_in, c_out or enc_in
        if c_out != enc_in:
            raise ValueError(f"c_out={c_out} must equal enc_in={enc_in}: the decoder adds its trend to the input's")
        self.seq_len, self.label_len, self.pred_len, self.enc_in = seq_len, label_len, pred_len, enc_in
        self.output_attention = bool(output_attention)
        self.decomp = SeriesDecomposition(moving_avg)
        self.enc_embedding = DataEmbeddingWithoutPosition(enc_in, d_model, freq, dropout)

        def correlation():
            return AutoCorrelationLayer(d_model, n_heads, factor)

        self.encoder = Encoder(
            [EncoderLayer(correlation(), d_model, d_ff, moving_avg, dropout, activation) for _ in range(e_layers)],
            norm_layer=SeasonalLayerNorm(d_model))
        self.dec_embedding = DataEmbeddingWithoutPosition(dec_in, d_model, freq, dropout)
        self.decoder = Decoder(
            [DecoderLayer(correlation(), correlation(), d_model, c_out, d_ff, moving_avg, dropout, activation)
             for _ in range(d_layers)],
            norm_layer=SeasonalLayerNorm(d_model),
            projection=nn.Linear(d_model, c_out))

    def _decoder_marks(self, x_mark, y_mark):
        if x_mark is None and y_mark is None:
            return None
        if x_mark is None or y_mark is None:
            raise ValueError("Autoformer needs both x_mark and y_mark (future time features), or neither")
        if y_mark.shape[1] == self.pred_len:
            return torch.cat([x_mark[:, -self.label_len:], y_mark], dim=1)
        if y_mark.shape[1] != self.label_len + self.pred_len:
            raise ValueError(f"y_mark: expected {self.pred_len} or {self.label_len + self.pred_len} steps, "
                             f"got shape {tuple(y_mark.shape)}")
        return y_mark

    def forward(self, x, x_mark=None, y_mark=None):
        if x.ndim != 3 or x.shape[1] != self.seq_len or x.shape[2] != self.enc_in:
            raise ValueError(f"x: expected [B, {self.seq_len}, {self.enc_in}], got {tuple(x.shape)}")
        dec_mark = self._decoder_marks(x_mark, y_mark)
        seasonal, trend = self.decomp(x)
        horizon_mean = x.mean(dim=1, keepdim=True).expand(-1, self.pred_len, -1)
        trend_init = torch.cat([trend[:, -self.label_len:], horizon_mean], dim=1)
        seasonal_init = F.pad(seasonal[:, -self.label_len:], (0, 0, 0, self.pred_len))
        enc_out, corrs = self.encoder(self.enc_embedding(x, x_mark))
        seasonal_part, trend_part = self.decoder(self.dec_embedding(seasonal_init, dec_mark), enc_out, trend_init)
        out = (trend_part + seasonal_part)[:, -self.pred_len:]
        return (out, corrs) if self.output_attention else out
