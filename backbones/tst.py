"""TST (Zerveas et al., KDD 2021): a Transformer encoder for multivariate series, supervised classification.

As the paper's classifier: Linear input projection C -> d_model scaled by sqrt(d_model), learnable positional
encoding (one vector per step up to seq_length) with dropout, `num_layers` post-norm encoder layers with
BatchNorm in place of LayerNorm and a GELU feed-forward, then GELU, dropout, padded steps zeroed, the
(seq_length * d_model) features flattened into a Linear to the classes. The output layer ties the model to
seq_length: shorter inputs are zero-padded (mask extended), longer ones are refused unless what lies beyond
seq_length is padding only.

Variable length: the mask (B, T) bool, True at real steps, becomes the attention key mask, so real steps never
see padded ones; BatchNorm takes its training statistics over real steps only (MaskedBatchNorm1d); padded
steps are zeroed before the output layer. The logits of a series thus do not depend on the padding after it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mtp.backbones.inception_time import MaskedBatchNorm1d
from mtp.kernels import Dropout, attention


class BatchNormEncoderLayer(nn.Module):
    """x = BN(x + drop(MHA(x))); x = BN(x + drop(W2 drop(gelu(W1 x)))) on tokens (B, T, d_model)."""

    def __init__(self, d_model: int, n_heads: int, dim_feedforward: int, dropout: float = 0.1):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.attn_dropout = n_heads, dropout
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = MaskedBatchNorm1d(d_model)
        self.norm2 = MaskedBatchNorm1d(d_model)
        self.dropout = Dropout(dropout)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        # the initialisation nn.MultiheadAttention uses, as the paper's layer was built on it
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    @staticmethod
    def _norm(norm: MaskedBatchNorm1d, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return norm(x.transpose(1, 2), mask).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, steps, d_model = x.shape
        q, k, v = (self.in_proj(x).view(batch, steps, 3, self.n_heads, d_model // self.n_heads)
                   .permute(2, 0, 3, 1, 4).unbind(0))
        keep = None if mask is None else mask[:, None, None, :]     # keys only: (B, 1, 1, T)
        out = attention(q, k, v, mask=keep, dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.dropout1(self.out_proj(out.transpose(1, 2).reshape(batch, steps, d_model)))
        x = self._norm(self.norm1, x, mask)
        x = x + self.dropout2(self.linear2(self.dropout(F.gelu(self.linear1(x)))))
        return self._norm(self.norm2, x, mask)


class TST(nn.Module):
    """TST classifier: x (B, C, T) with T <= seq_length [, mask (B, T) bool, True = real] -> (B, num_classes)."""

    fixed_length = True  # the flattened output layer is sized for seq_length steps (the pipeline pads to it)

    def __init__(self, num_channels: int, seq_length: int, num_classes: int, *, d_model: int = 64,
                 n_heads: int = 8, num_layers: int = 3, dim_feedforward: int = 256, dropout: float = 0.1):
        super().__init__()
        if seq_length < 1:
            raise ValueError(f"TST needs seq_length >= 1, got {seq_length}")
        self.num_channels, self.seq_length, self.d_model = num_channels, seq_length, d_model
        self.project = nn.Linear(num_channels, d_model)
        self.pos_embedding = nn.Parameter(torch.empty(seq_length, d_model).uniform_(-0.02, 0.02))
        self.pos_dropout = Dropout(dropout)
        self.layers = nn.ModuleList(BatchNormEncoderLayer(d_model, n_heads, dim_feedforward, dropout)
                                    for _ in range(num_layers))
        self.out_dropout = Dropout(dropout)
        self.head = nn.Linear(seq_length * d_model, num_classes)

    def _fit_length(self, x: torch.Tensor, mask: torch.Tensor | None):
        """Pad or trim x (B, C, T) and mask to seq_length steps; the mask is None only when no step is padding."""
        steps, limit = x.shape[2], self.seq_length
        if steps > limit:
            # trailing padding beyond seq_length carries nothing: drop it; real steps there cannot be used
            if mask is None or mask[:, limit:].any():
                raise ValueError(f"TST: input length {steps} exceeds the seq_length {limit} the model was built "
                                 f"for (its output layer flattens seq_length x d_model); build it with "
                                 f"seq_length >= {steps}")
            return x[:, :, :limit], mask[:, :limit]
        if steps < limit:
            if mask is None:
                mask = torch.ones(x.shape[0], steps, dtype=torch.bool, device=x.device)
            return F.pad(x, (0, limit - steps)), F.pad(mask, (0, limit - steps), value=False)
        return x, mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.num_channels:
            raise ValueError(f"TST: expected x of shape (B, {self.num_channels}, T), got {tuple(x.shape)}")
        if mask is not None:
            if mask.shape != (x.shape[0], x.shape[2]):
                raise ValueError(f"TST: mask must be (B, T) = {(x.shape[0], x.shape[2])}, got {tuple(mask.shape)}")
            mask = mask.to(device=x.device, dtype=torch.bool)
        x, mask = self._fit_length(x, mask)
        h = self.project(x.transpose(1, 2)) * math.sqrt(self.d_model)
        h = self.pos_dropout(h + self.pos_embedding)
        for layer in self.layers:
            h = layer(h, mask)
        h = self.out_dropout(F.gelu(h))
        if mask is not None:
            h = h * mask.unsqueeze(-1).to(h.dtype)
        return self.head(h.flatten(1))


__all__ = ["TST", "BatchNormEncoderLayer"]
