"""iTransformer (Liu et al., ICLR 2024): attention across variates, one token per whole series.

State-dict names and shapes equal thuml/iTransformer's `model/iTransformer.py`, so its checkpoints load
strictly. The encoder pieces (`AttentionLayer`, `EncoderLayer`, `Encoder`) follow thuml's
`layers/Transformer_EncDec.py` naming and are reused by PatchTST.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from mtp.kernels import Dropout, attention, dropout


def activation_function(name: str):
    if name not in ("relu", "gelu"):
        raise ValueError(f"activation={name!r}: expected 'relu' or 'gelu'")
    return F.relu if name == "relu" else F.gelu   # exact (erf) GELU, as the official code


class PointwiseConv(nn.Conv1d):
    """A kernel-size-1 Conv1d applied to channels-last input as a matmul.

    Keeps the official parameter layout [out, in, 1] (checkpoints load as is) but skips the two
    transposes and the convolution call of the original, which dominate on small token counts.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x):
        return F.linear(x, self.weight.squeeze(-1), self.bias)


class AttentionLayer(nn.Module):
    """Multi-head full attention with separate q/k/v/out projections (thuml names)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.attn_dropout = n_heads, dropout
        self.query_projection = nn.Linear(d_model, d_model)
        self.key_projection = nn.Linear(d_model, d_model)
        self.value_projection = nn.Linear(d_model, d_model)
        self.out_projection = nn.Linear(d_model, d_model)

    def forward(self, x, return_attention: bool = False, n_queries: int | None = None):
        """Self-attention over the tokens of x [B, T, d_model]; with n_queries only the first n_queries
        tokens attend (to all T), which is all a last layer needs when later tokens are discarded."""
        batch, tokens, d_model = x.shape
        head_dim = d_model // self.n_heads
        # One fused projection instead of three small matmuls.
        weight = torch.cat([self.query_projection.weight, self.key_projection.weight, self.value_projection.weight])
        bias = torch.cat([self.query_projection.bias, self.key_projection.bias, self.value_projection.bias])
        qkv = F.linear(x, weight, bias).view(batch, tokens, 3, self.n_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if n_queries is not None:
            q, tokens = q[:, :, :n_queries], n_queries
        scale = 1.0 / math.sqrt(head_dim)
        dropout_p = self.attn_dropout if self.training else 0.0
        if return_attention:
            # Maps are wanted: explicit softmax(q k^T) so the probabilities can be returned.
            probs = dropout(((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1), dropout_p)
            out = probs @ v
        else:
            probs, out = None, attention(q, k, v, scale=scale, dropout_p=dropout_p)
        out = out.transpose(1, 2).reshape(batch, tokens, d_model)
        return self.out_projection(out), probs


class EncoderLayer(nn.Module):
    """Post-norm block: x = norm1(x + attn(x)); out = norm2(x + ffn(x)), FFN as 1x1 convolutions."""

    def __init__(self, attention_layer: AttentionLayer, d_model: int, d_ff: int | None = None,
                 dropout: float = 0.1, activation: str = "relu"):
        super().__init__()
        d_ff = d_ff or 4 * d_model
        self.attention = attention_layer
        self.conv1 = PointwiseConv(d_model, d_ff)
        self.conv2 = PointwiseConv(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.activation = activation_function(activation)

    def forward(self, x, return_attention: bool = False, n_out: int | None = None):
        new_x, attn = self.attention(x, return_attention, n_out)
        if n_out is not None:
            x = x[:, :n_out]
        x = self.norm1(x + self.dropout(new_x))
        y = self.dropout(self.activation(self.conv1(x)))
        y = self.dropout(self.conv2(y))
        return self.norm2(x + y), attn


class Encoder(nn.Module):
    def __init__(self, attn_layers, norm_layer: nn.Module | None = None):
        super().__init__()
        self.attn_layers = nn.ModuleList(attn_layers)
        self.norm = norm_layer

    def forward(self, x, return_attention: bool = False, n_out: int | None = None):
        """n_out: only the first n_out tokens of the output are wanted, so the last layer computes
        just those (same values, less work)."""
        attns = []
        for index, layer in enumerate(self.attn_layers):
            last = index == len(self.attn_layers) - 1
            x, attn = layer(x, return_attention, n_out if last else None)
            attns.append(attn)
        if self.norm is not None:
            x = self.norm(x)
        return x, attns


class InvertedEmbedding(nn.Module):
    """Each variate's whole look-back window (and each time-feature series) becomes one token."""

    def __init__(self, seq_len: int, d_model: int, dropout: float = 0.1):
        super().__init__()
        self.value_embedding = nn.Linear(seq_len, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x, x_mark=None):
        tokens = x.transpose(1, 2) if x_mark is None else torch.cat([x, x_mark], dim=2).transpose(1, 2)
        return self.dropout(self.value_embedding(tokens))


class ITransformer(nn.Module):
    """forward(x [B, seq_len, N], x_mark [B, seq_len, F] or None) -> [B, pred_len, N].

    Time features, when given, are extra tokens (N + F in total); only the N variate tokens are
    projected to the horizon. use_norm standardises each input series over time (population
    variance + 1e-5) and restores the scale of the forecast; marks are never normalised.
    Defaults are thuml run.py's. enc_in/dec_in/c_out/label_len are not used by the model; `factor`,
    `embed`, `freq` and `class_strategy` are kept for config parity but do not change the model.
    """

    def __init__(self, seq_len: int = 96, pred_len: int = 96, d_model: int = 512, n_heads: int = 8,
                 e_layers: int = 2, d_ff: int = 2048, dropout: float = 0.1, activation: str = "gelu",
                 use_norm: bool = True, embed: str = "timeF", freq: str = "h", factor: int = 1,
                 output_attention: bool = False, class_strategy: str = "projection"):
        super().__init__()
        self.seq_len, self.pred_len = seq_len, pred_len
        self.use_norm, self.output_attention = bool(use_norm), bool(output_attention)
        self.embed, self.freq, self.factor, self.class_strategy = embed, freq, factor, class_strategy
        self.enc_embedding = InvertedEmbedding(seq_len, d_model, dropout)
        self.encoder = Encoder(
            [EncoderLayer(AttentionLayer(d_model, n_heads, dropout), d_model, d_ff, dropout, activation)
             for _ in range(e_layers)],
            norm_layer=nn.LayerNorm(d_model))
        self.projector = nn.Linear(d_model, pred_len)

    @classmethod
    def from_configs(cls, configs) -> ITransformer:
        """Build from thuml's `configs` namespace (or a dict); keys the model does not read are ignored."""
        values = dict(configs) if isinstance(configs, dict) else vars(configs)
        names = inspect.signature(cls.__init__).parameters
        return cls(**{name: values[name] for name in names if name in values})

    def forward(self, x, x_mark=None):
        if x.ndim != 3 or x.shape[1] != self.seq_len:
            raise ValueError(f"x: expected [B, {self.seq_len}, N], got {tuple(x.shape)}")
        if x_mark is not None and (x_mark.ndim != 3 or x_mark.shape[:2] != x.shape[:2]):
            raise ValueError(f"x_mark: expected [{x.shape[0]}, {self.seq_len}, F], got {tuple(x_mark.shape)}")
        n_vars = x.shape[2]
        if self.use_norm:
            means = x.mean(1, keepdim=True).detach()
            x = x - means
            stdev = torch.sqrt(torch.var(x, dim=1, keepdim=True, unbiased=False) + 1e-5)
            x = x / stdev
        tokens = self.enc_embedding(x, x_mark)
        # Only the variate tokens are projected, so the time-feature tokens are dropped in the last
        # layer (the official model computes and then discards them); full maps need all tokens.
        tokens, attns = self.encoder(tokens, self.output_attention, None if self.output_attention else n_vars)
        out = self.projector(tokens[:, :n_vars]).transpose(1, 2)
        if self.use_norm:
            out = out * stdev + means
        return (out, attns) if self.output_attention else out
