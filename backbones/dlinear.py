"""DLinear (Zeng et al., AAAI 2023): moving-average trend/seasonal split, one linear map per part.

Parameter names follow thuml's Time-Series-Library `models/DLinear.py` (`Linear_Seasonal`,
`Linear_Trend`; a ModuleList of per-channel layers when `individual`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MovingAverage(nn.Module):
    """Centred moving average over time with the ends padded by repeating the edge values.

    x [B, L, N] -> [B, L, N]. The kernel must be odd so the output keeps the input length.
    """

    def __init__(self, kernel_size: int = 25):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"moving_avg={kernel_size}: expected an odd kernel size >= 1")
        self.kernel_size = kernel_size

    def forward(self, x):
        pad = (self.kernel_size - 1) // 2
        # Replicate padding along time, then a stride-1 average: the trend of each channel.
        padded = F.pad(x.transpose(1, 2), (pad, pad), mode="replicate")
        return F.avg_pool1d(padded, self.kernel_size, stride=1).transpose(1, 2)


class SeriesDecomposition(nn.Module):
    """x -> (seasonal = x - trend, trend = moving average of x)."""

    def __init__(self, kernel_size: int = 25):
        super().__init__()
        self.moving_avg = MovingAverage(kernel_size)

    def forward(self, x):
        trend = self.moving_avg(x)
        return x - trend, trend


class DLinear(nn.Module):
    """forward(x [B, seq_len, N], x_mark ignored) -> [B, pred_len, N].

    individual=True gives each of the `enc_in` channels its own pair of linear maps. Weights start
    at 1/seq_len (a mean over the window), as in the official code.
    """

    def __init__(self, seq_len: int = 96, pred_len: int = 96, enc_in: int = 7, moving_avg: int = 25,
                 individual: bool = False):
        super().__init__()
        self.seq_len, self.pred_len, self.channels, self.individual = seq_len, pred_len, enc_in, individual
        self.decomposition = SeriesDecomposition(moving_avg)
        n_maps = enc_in if individual else 1
        seasonal = [self._mean_init_linear() for _ in range(n_maps)]
        trend = [self._mean_init_linear() for _ in range(n_maps)]
        self.Linear_Seasonal = nn.ModuleList(seasonal) if individual else seasonal[0]
        self.Linear_Trend = nn.ModuleList(trend) if individual else trend[0]

    def _mean_init_linear(self) -> nn.Linear:
        layer = nn.Linear(self.seq_len, self.pred_len)
        with torch.no_grad():
            layer.weight.fill_(1.0 / self.seq_len)
        return layer

    def _per_channel(self, layers: nn.ModuleList, x):
        # x [B, N, L]: one batched matmul over the stacked per-channel weights instead of a Python loop.
        weight = torch.stack([layer.weight for layer in layers])        # [N, H, L]
        bias = torch.stack([layer.bias for layer in layers])            # [N, H]
        return torch.einsum("bnl,nhl->bnh", x, weight) + bias

    def forward(self, x, x_mark=None):
        if x.ndim != 3 or x.shape[1] != self.seq_len:
            raise ValueError(f"x: expected [B, {self.seq_len}, N], got {tuple(x.shape)}")
        if self.individual and x.shape[2] != self.channels:
            raise ValueError(f"x has {x.shape[2]} channels; individual DLinear was built for enc_in={self.channels}")
        seasonal, trend = (part.transpose(1, 2) for part in self.decomposition(x))
        if self.individual:
            out = self._per_channel(self.Linear_Seasonal, seasonal) + self._per_channel(self.Linear_Trend, trend)
        else:
            out = self.Linear_Seasonal(seasonal) + self.Linear_Trend(trend)
        return out.transpose(1, 2)
