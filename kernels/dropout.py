"""Dropout with cheap CPU sampling, for the small models whose step time it dominates.

`F.dropout` on CPU draws one Bernoulli sample per element from torch's MT19937; here every 64-bit draw of
numpy's SFC64 generator gives four 16-bit uniforms, compared against p rounded to a multiple of 1/65536
(the scale matches the rounded p, so the output stays unbiased). The SFC64 seed is drawn from torch's
global generator, so `torch.manual_seed` governs the masks as it governs `F.dropout`'s. Other devices
use `F.dropout`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout of x with probability p (identity when not training or p == 0)."""
    if not training or p == 0.0:
        return x
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    drop_count = round(p * 65536)
    n = x.numel()
    seed = int(torch.randint(0, 2 ** 63 - 1, (1,)))
    raw = np.random.SFC64(seed).random_raw((n + 3) // 4)
    keep = torch.from_numpy(raw.view(np.int16)[:n]).view(x.shape) >= drop_count - 32768
    return x * (keep * (65536 / (65536 - drop_count))).to(x.dtype)


class Dropout(nn.Dropout):
    """nn.Dropout (same constructor, no parameters) with the cheaper CPU sampling of `dropout`."""

    def forward(self, x):
        return dropout(x, self.p, self.training)


__all__ = ["Dropout", "dropout"]
