"""Conv-TasNet (Luo & Mesgarani, 2019) as torchaudio builds it, taking and returning the separation domain's
layout: mixture (B, T) -> estimates (B, num_sources, T). State-dict names are torchaudio's, so its trained
bundles (e.g. CONVTASNET_BASE_LIBRI2MIX) load as they are."""
from __future__ import annotations

import torch
import torchaudio


class ConvTasNet(torchaudio.models.ConvTasNet):
    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        if mixture.dim() != 2:
            raise ValueError(f"ConvTasNet: expected a (batch, samples) mixture, got shape {tuple(mixture.shape)}")
        return super().forward(mixture[:, None, :])
