"""PatchTST (Nie et al., ICLR 2023) as in thuml's Time-Series-Library `models/PatchTST.py`.

Channel-independent: every series is cut into overlapping patches (patch_len 16, stride 8, the end
padded by repeating the last value), patches are tokens of a Transformer encoder with BatchNorm as
its final norm, and a flatten head maps all patch features to the horizon. Inputs are instance
normalised (mean / population std + 1e-5) and the forecast is scaled back. Parameter and buffer names
equal the official ones.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from mtp.backbones.itransformer import AttentionLayer, Encoder, EncoderLayer
from mtp.kernels import Dropout


def sinusoidal_table(length: int, d_model: int) -> torch.Tensor:
    """[1, length, d_model] fixed sin/cos position table (Vaswani et al.)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)
    return table.unsqueeze(0)


class PositionalEmbedding(nn.Module):
    def __init__(self, d_model: int, max_len: int = 5000):
        super().__init__()
        # Persistent (in the state dict) because the official checkpoints carry it.
        self.register_buffer("pe", sinusoidal_table(max_len, d_model))

    def forward(self, x):
        return self.pe[:, : x.size(1)]


class PatchEmbedding(nn.Module):
    """[B, N, L] -> ([B*N, patch_num, d_model], N)."""

    def __init__(self, d_model: int, patch_len: int, stride: int, padding: int, dropout: float):
        super().__init__()
        self.patch_len, self.stride, self.padding = patch_len, stride, padding
        self.value_embedding = nn.Linear(patch_len, d_model, bias=False)
        self.position_embedding = PositionalEmbedding(d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x):
        n_vars = x.shape[1]
        x = torch.cat([x, x[..., -1:].expand(*x.shape[:-1], self.padding)], dim=-1)   # replicate-pad the end
        patches = x.unfold(-1, self.patch_len, self.stride)
        patches = patches.reshape(-1, patches.shape[2], patches.shape[3])
        return self.dropout(self.value_embedding(patches) + self.position_embedding(patches)), n_vars


class Transpose(nn.Module):
    def __init__(self, dim0: int, dim1: int):
        super().__init__()
        self.dim0, self.dim1 = dim0, dim1

    def forward(self, x):
        return x.transpose(self.dim0, self.dim1)


class FlattenHead(nn.Module):
    def __init__(self, nf: int, target_window: int, head_dropout: float = 0.0):
        super().__init__()
        self.flatten = nn.Flatten(start_dim=-2)
        self.linear = nn.Linear(nf, target_window)
        self.dropout = Dropout(head_dropout)

    def forward(self, x):   # [B, N, d_model, patch_num] -> [B, N, target_window]
        return self.dropout(self.linear(self.flatten(x)))


class PatchTST(nn.Module):
    """forward(x [B, seq_len, N], x_mark ignored) -> [B, pred_len, N]. Defaults are TSL run.py's."""

    def __init__(self, seq_len: int = 96, pred_len: int = 96, d_model: int = 512, n_heads: int = 8,
                 e_layers: int = 2, d_ff: int = 2048, dropout: float = 0.1, activation: str = "gelu",
                 factor: int = 1, patch_len: int = 16, stride: int = 8):
        super().__init__()
        if seq_len < patch_len:
            raise ValueError(f"seq_len={seq_len} is shorter than patch_len={patch_len}")
        self.seq_len, self.pred_len, self.factor = seq_len, pred_len, factor
        self.patch_embedding = PatchEmbedding(d_model, patch_len, stride, stride, dropout)
        self.encoder = Encoder(
            [EncoderLayer(AttentionLayer(d_model, n_heads, dropout), d_model, d_ff, dropout, activation)
             for _ in range(e_layers)],
            norm_layer=nn.Sequential(Transpose(1, 2), nn.BatchNorm1d(d_model), Transpose(1, 2)))
        self.patch_num = int((seq_len - patch_len) / stride + 2)
        self.head_nf = d_model * self.patch_num
        self.head = FlattenHead(self.head_nf, pred_len, head_dropout=dropout)

    def forward(self, x, x_mark=None):
        if x.ndim != 3 or x.shape[1] != self.seq_len:
            raise ValueError(f"x: expected [B, {self.seq_len}, N], got {tuple(x.shape)}")
        means = x.mean(1, keepdim=True).detach()
        x = x - means
        stdev = torch.sqrt(torch.var(x, dim=1, keepdim=True, unbiased=False) + 1e-5)
        x = x / stdev
        tokens, n_vars = self.patch_embedding(x.transpose(1, 2))
        tokens, _ = self.encoder(tokens)
        # [B*N, patch_num, d_model] -> [B, N, d_model, patch_num]: the official flatten order.
        tokens = tokens.reshape(-1, n_vars, tokens.shape[-2], tokens.shape[-1]).transpose(2, 3)
        out = self.head(tokens).transpose(1, 2)
        return out * stdev + means
