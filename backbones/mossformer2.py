"""MossFormer2 speech separation (Zhao et al., ICASSP 2024), the ClearerVoice-Studio `MossFormer2_SS_16K` model.

`MossFormer2` is the official `MossFormer` class of
clearvoice/clearvoice/models/mossformer2_ss/mossformer2.py (modelscope/ClearerVoice-Studio @ 6b3774dc): the
module that `MossFormer2_SS_16K(args).model` holds and that the released checkpoints' `model` dict loads into.
State-dict names, order and shapes are the official ones (strict loading works), including what the
official layout implies:
- one rotary embedding (rotary-embedding-torch 0.8.3 semantics: interleaved pairs on the first 32 of the
  128 query/key dims, a non-trainable `freqs` parameter [16]) is shared by every FLASH layer, so its
  `freqs` appears under each layer's key but once in `parameters()`;
- `mask_net.pos_enc.inv_freq` is a persistent buffer.

Internals fixed by the official code (not constructor arguments): group size 256, query/key dim 128,
expansion 4, FSMN inner width 256 with lorder 20, a depth-2 dilated dense net, depthwise kernel 17,
ScaleNorm in the FLASH layers.

Differences from the official forward, none changing results: the output is one tensor
(B, num_spks, T) instead of a list of num_spks tensors [B, T]; the squeeze() calls that would drop the
batch dim for batch 1 are explicit; FLASH attention runs through mtp.kernels.linear_attention (grouped
quadratic + chunked linear), the 1x1 convolutions inside the Gated-FSMN blocks run as matmuls on
channels-last tensors, and the decoder runs all speakers in one call.

Inference (autograd off) takes a leaner route to the same values (float rounding apart; a test holds both
routes to the official outputs): the dilated dense convolutions run undilated over the time axis's phases
(`DilatedDenseNet._forward_polyphase`), the quadratic attention is added into the linear attention's output
in place, and residuals, SiLU and gates are applied in place instead of allocating new activations. Training
keeps the official layout, whose backward oneDNN runs fastest.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mtp.kernels import Dropout, chunked_linear_attention, group_quadratic_attention

GROUP_SIZE = 256
QUERY_KEY_DIM = 128
EXPANSION_FACTOR = 4.0
ATTN_DROPOUT = 0.1
FSMN_INNER_CHANNELS = 256
FSMN_LORDER = 20
CONV_MODULE_KERNEL = 17


# ------------------------------------------------------------------------------------------------ pieces

class ScaleNorm(nn.Module):
    """x / max(||x|| / sqrt(dim), eps) * g over the last dim."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.scale, self.eps = dim ** -0.5, eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x):
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


class RotaryEmbedding(nn.Module):
    """rotary-embedding-torch 0.8.3's `RotaryEmbedding(dim)` as MossFormer2 uses it (language freqs,
    theta 10000, positions 0..n-1, interleaved pairs, dims past `dim` untouched)."""

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def rotate_queries_or_keys(self, t: torch.Tensor, seq_dim: int = -2) -> torch.Tensor:
        n = t.shape[seq_dim]
        angles = torch.arange(n, device=t.device, dtype=self.freqs.dtype)[:, None] * self.freqs
        angles = angles.repeat_interleave(2, dim=-1)          # [n, dim]: pair i -> dims 2i, 2i+1
        angles = angles.reshape(n, *([1] * (-seq_dim - 2)), -1)
        rot = angles.shape[-1]
        head, tail = t[..., :rot], t[..., rot:]
        pairs = head.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        head = head * angles.cos().to(t.dtype) + rotated * angles.sin().to(t.dtype)
        return torch.cat((head, tail), dim=-1)


class ScaledSinuEmbedding(nn.Module):
    """Absolute [n, dim] positions cat(sin, cos)(t * inv_freq) times a learnt scalar."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, n: int) -> torch.Tensor:
        t = torch.arange(n, device=self.inv_freq.device).type_as(self.inv_freq)
        sinu = t[:, None] * self.inv_freq
        return torch.cat((sinu.sin(), sinu.cos()), dim=-1) * self.scale


class OffsetScale(nn.Module):
    """Per-head affine copies of x: [..., d] -> [..., heads, d]."""

    def __init__(self, dim: int, heads: int = 1):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(heads, dim))
        self.beta = nn.Parameter(torch.zeros(heads, dim))
        nn.init.normal_(self.gamma, std=0.02)

    def forward(self, x):
        return x.unsqueeze(-2) * self.gamma + self.beta


class _Transpose(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


class _DepthwiseConv1d(nn.Module):
    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2, groups=channels,
                              bias=False)

    def forward(self, x):
        return self.conv(x)


def _time_last(x: torch.Tensor) -> torch.Tensor:
    """[B, T, C] -> a [B, C, 1, T] view for a depthwise conv over time. Inference keeps it a channels-last view
    (oneDNN's depthwise forward is fastest there, and no copy is made); with autograd on, a contiguous copy,
    because oneDNN's channels-last depthwise backward is several times slower than the plain layout's."""
    view = x.transpose(1, 2).unsqueeze(2)
    return view.contiguous() if torch.is_grad_enabled() and x.requires_grad else view


class ConvModule(nn.Module):
    """x + depthwise_conv(x) on channels-last x [B, T, C] ('same' padding, odd kernel)."""

    def __init__(self, in_channels: int, kernel_size: int = CONV_MODULE_KERNEL):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"ConvModule: kernel_size={kernel_size} must be odd for 'same' padding")
        # index 1 holds the conv, as the official Sequential(Transpose, DepthwiseConv1d)
        self.sequential = nn.Sequential(_Transpose(), _DepthwiseConv1d(in_channels, kernel_size))

    def forward(self, x):
        conv = self.sequential[1].conv
        y = F.conv2d(_time_last(x), conv.weight.unsqueeze(2), padding=(0, conv.padding[0]), groups=conv.groups)
        y = y.squeeze(2).transpose(1, 2)
        return x + y if torch.is_grad_enabled() else y.add_(x)   # inference: no new buffer


class FFConvM(nn.Module):
    """norm -> Linear -> SiLU -> ConvModule -> Dropout, channels last."""

    def __init__(self, dim_in: int, dim_out: int, norm_klass=nn.LayerNorm, dropout: float = 0.1):
        super().__init__()
        self.mdl = nn.Sequential(norm_klass(dim_in), nn.Linear(dim_in, dim_out), nn.SiLU(), ConvModule(dim_out),
                                 Dropout(dropout))

    def forward(self, x):
        if torch.is_grad_enabled():
            return self.mdl(x)
        norm, linear, _, conv, dropout = self.mdl       # inference: SiLU in place, dropout is the identity
        return conv(F.silu(linear(norm(x)), inplace=True)) if not dropout.training else self.mdl(x)


# ------------------------------------------------------------------------------------------------ FLASH layer

class FLASHShareAFFConvM(nn.Module):
    """The official `FLASH_ShareA_FFConvM` (non-causal): one shared attention, two gated outputs.

    Token shift on half the channels; to_hidden gives v, u; to_qk + OffsetScale give the quadratic and
    linear queries/keys, rotated; attention = within-group relu^2 attention + global linear attention,
    applied to [v, u] at once; out = (att_u * v) * sigmoid(att_v * u); residual + to_out(out).
    """

    def __init__(self, *, dim: int, group_size: int = GROUP_SIZE, query_key_dim: int = QUERY_KEY_DIM,
                 expansion_factor: float = 1.0, dropout: float = 0.1, rotary_pos_emb: RotaryEmbedding | None = None,
                 norm_klass=nn.LayerNorm, shift_tokens: bool = True):
        super().__init__()
        hidden_dim = int(dim * expansion_factor)
        self.group_size, self.shift_tokens = group_size, shift_tokens
        self.rotary_pos_emb = rotary_pos_emb
        self.dropout = Dropout(dropout)   # on the quadratic scores; applied inside the kernel
        self.to_hidden = FFConvM(dim, hidden_dim, norm_klass, dropout)
        self.to_qk = FFConvM(dim, query_key_dim, norm_klass, dropout)
        self.qk_offset_scale = OffsetScale(query_key_dim, heads=4)
        self.to_out = FFConvM(dim * 2, dim, norm_klass, dropout)

    def forward(self, x, *, mask: torch.Tensor | None = None):
        """x [B, n, dim]; mask [B, n] bool (True = real frame) or None (what the separation model passes)."""
        residual = x
        if self.shift_tokens:
            shifted, kept = x.chunk(2, dim=-1)
            x = torch.cat((F.pad(shifted, (0, 0, 1, -1)), kept), dim=-1)
        hidden = self.to_hidden(x)
        qk = self.qk_offset_scale(self.to_qk(x))                       # [B, n, 4, d]
        if self.rotary_pos_emb is not None:
            qk = self.rotary_pos_emb.rotate_queries_or_keys(qk, seq_dim=-3)
        quad_q, lin_q, quad_k, lin_k = qk.unbind(dim=-2)
        p = self.dropout.p if self.training else 0.0
        v, u = hidden.chunk(2, dim=-1)
        att = chunked_linear_attention(lin_q, lin_k, hidden, mask)
        if not torch.is_grad_enabled() and p == 0:   # inference: sums and gates in place, no new buffers
            group_quadratic_attention(quad_q, quad_k, hidden, mask, group_size=self.group_size, accumulate=att)
            att_v, att_u = att.chunk(2, dim=-1)
            gate = torch.sigmoid_(att_v.mul_(u))
            return self.to_out(att_u.mul_(v).mul_(gate)).add_(residual)
        att = att + group_quadratic_attention(quad_q, quad_k, hidden, mask, group_size=self.group_size, dropout_p=p)
        att_v, att_u = att.chunk(2, dim=-1)
        return residual + self.to_out((att_u * v) * torch.sigmoid(att_v * u))


# ------------------------------------------------------------------------------------------------ Gated FSMN

class DilatedDenseNet(nn.Module):
    """Dense stack of depthwise dilated convolutions over time (kernel 2*lorder-1, dilation 2^i), each
    followed by InstanceNorm and PReLU; layer i sees the cat of all previous outputs and the input."""

    def __init__(self, depth: int = 4, lorder: int = 20, in_channels: int = 64):
        super().__init__()
        self.depth, self.in_channels = depth, in_channels
        self.paddings, self.dilations = [], []
        for i in range(depth):
            dil = 2 ** i
            self.dilations.append(dil)
            self.paddings.append(lorder + (dil - 1) * (lorder - 1) - 1)
            # Conv2d [C, i+1, 2*lorder-1, 1] as the official (a 1-D conv over time with a trailing unit dim)
            setattr(self, f"conv{i + 1}", nn.Conv2d(in_channels * (i + 1), in_channels, (2 * lorder - 1, 1),
                                                    dilation=(dil, 1), groups=in_channels, bias=False))
            setattr(self, f"norm{i + 1}", nn.InstanceNorm2d(in_channels, affine=True))
            setattr(self, f"prelu{i + 1}", nn.PReLU(in_channels))

    def forward(self, x):
        """x [B, T, C] -> [B, T, C] (the last layer's output)."""
        if not (torch.is_grad_enabled() and x.requires_grad):
            return self._forward_polyphase(x)
        skip = _time_last(x)  # time on the last axis of [B, C, 1, T]
        for i in range(self.depth):
            conv, norm, prelu = (getattr(self, f"{name}{i + 1}") for name in ("conv", "norm", "prelu"))
            out = F.conv2d(skip, conv.weight.transpose(2, 3), padding=(0, self.paddings[i]),
                           dilation=(1, self.dilations[i]), groups=self.in_channels)
            out = F.prelu(F.instance_norm(out, weight=norm.weight, bias=norm.bias, eps=norm.eps), prelu.weight)
            skip = torch.cat((out, skip), dim=1)
        return out.squeeze(2).transpose(1, 2)

    def _forward_polyphase(self, x):
        """The same layers, channels last and without dilation, for inference. oneDNN's channels-last
        depthwise convolution is fast only undilated and with one input channel per group (a dilated one ran
        ~300x slower than the undilated one here), so each layer runs as: the time axis split into its
        `dilation` phases, laid side by side as channels (a free view), one undilated depthwise convolution
        over every input channel (each group's weights spread over its inputs), then each group's inputs
        summed. Equal to `forward` up to float rounding."""
        batch, frames, channels = x.shape
        skip = x.contiguous()
        for i in range(self.depth):
            conv, norm, prelu = (getattr(self, f"{name}{i + 1}") for name in ("conv", "norm", "prelu"))
            dil, width = self.dilations[i], skip.shape[-1]              # width = channels * (i + 1)
            extra = -frames % dil                                       # whole phases; zeros, as the padding
            phases = F.pad(skip, (0, 0, 0, extra)) if extra else skip
            phases = phases.reshape(batch, -1, dil * width)             # [B, T / dil, (phase, input channel)]
            weight = conv.weight.reshape(width, 1, 1, -1).repeat(dil, 1, 1, 1)
            out = F.conv2d(phases.transpose(1, 2).unsqueeze(2), weight, padding=(0, (weight.shape[-1] - 1) // 2),
                           groups=dil * width)
            out = out.squeeze(2).transpose(1, 2).reshape(batch, -1, width)[:, :frames]
            summed = out[..., 0::i + 1]                                 # group c: inputs c*(i+1) .. c*(i+1)+i
            for r in range(1, i + 1):
                summed = summed + out[..., r::i + 1]
            # instance norm of each item = batch-mode batch norm of its [T, C] rows (one fast channels-last pass)
            out = torch.stack([F.batch_norm(item, None, None, norm.weight, norm.bias, training=True, eps=norm.eps)
                               for item in summed])
            out = F.prelu(out.view(-1, channels), prelu.weight).view(batch, frames, channels)
            skip = torch.cat((out, skip), dim=-1)
        return out


class UniDeepFsmnDilated(nn.Module):
    """x + DilatedDenseNet(project(relu(linear(x)))), channels last."""

    def __init__(self, input_dim: int, output_dim: int, lorder: int, hidden_size: int, depth: int = 2):
        super().__init__()
        self.linear = nn.Linear(input_dim, hidden_size)
        self.project = nn.Linear(hidden_size, output_dim, bias=False)
        self.conv = DilatedDenseNet(depth=depth, lorder=lorder, in_channels=output_dim)

    def forward(self, x):
        return x + self.conv(self.project(F.relu(self.linear(x))))


class GatedFSMNDilated(nn.Module):
    """to_v(x) * fsmn(to_u(x)) + x."""

    def __init__(self, in_channels: int, out_channels: int, lorder: int, hidden_size: int):
        super().__init__()
        self.to_u = FFConvM(in_channels, hidden_size, nn.LayerNorm, 0.1)
        self.to_v = FFConvM(in_channels, hidden_size, nn.LayerNorm, 0.1)
        self.fsmn = UniDeepFsmnDilated(in_channels, out_channels, lorder, hidden_size)

    def forward(self, x):
        return self.to_v(x) * self.fsmn(self.to_u(x)) + x


class GatedFSMNBlockDilated(nn.Module):
    """The official `Gated_FSMN_Block_Dilated`: 1x1 conv + PReLU, channel LayerNorm, gated FSMN, channel
    LayerNorm, 1x1 conv, residual. Runs channels last ([B, T, C]) throughout; the 1x1 convs as matmuls."""

    def __init__(self, dim: int, inner_channels: int = FSMN_INNER_CHANNELS):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(dim, inner_channels, kernel_size=1), nn.PReLU())
        self.norm1 = nn.LayerNorm(inner_channels)   # the official CLayerNorm, applied on [B, C, T] transposed
        self.gated_fsmn = GatedFSMNDilated(inner_channels, inner_channels, lorder=FSMN_LORDER,
                                           hidden_size=inner_channels)
        self.norm2 = nn.LayerNorm(inner_channels)
        self.conv2 = nn.Conv1d(inner_channels, dim, kernel_size=1)

    def forward(self, x):
        conv1, prelu = self.conv1
        h = prelu(F.linear(x, conv1.weight.squeeze(-1), conv1.bias))
        h = self.norm2(self.gated_fsmn(self.norm1(h)))
        return F.linear(h, self.conv2.weight.squeeze(-1), self.conv2.bias) + x


class MossformerBlockGFSMN(nn.Module):
    """`depth` x (FLASH layer -> Gated-FSMN block); one rotary embedding shared by all FLASH layers."""

    def __init__(self, *, dim: int, depth: int, group_size: int = GROUP_SIZE, query_key_dim: int = QUERY_KEY_DIM,
                 expansion_factor: float = EXPANSION_FACTOR, attn_dropout: float = ATTN_DROPOUT,
                 shift_tokens: bool = True):
        super().__init__()
        rotary_pos_emb = RotaryEmbedding(dim=min(32, query_key_dim))
        self.fsmn = nn.ModuleList([GatedFSMNBlockDilated(dim) for _ in range(depth)])
        self.layers = nn.ModuleList([
            FLASHShareAFFConvM(dim=dim, group_size=group_size, query_key_dim=query_key_dim,
                               expansion_factor=expansion_factor, dropout=attn_dropout,
                               rotary_pos_emb=rotary_pos_emb, norm_klass=ScaleNorm, shift_tokens=shift_tokens)
            for _ in range(depth)])

    def forward(self, x, *, mask=None):
        for flash, fsmn in zip(self.layers, self.fsmn):
            x = fsmn(flash(x, mask=mask))
        return x


class MossFormerM(nn.Module):
    """MossformerBlock_GFSMN followed by LayerNorm(eps=1e-6); [B, L, N] -> [B, L, N]."""

    def __init__(self, num_blocks: int, d_model: int, group_size: int = GROUP_SIZE,
                 query_key_dim: int = QUERY_KEY_DIM, expansion_factor: float = EXPANSION_FACTOR,
                 attn_dropout: float = ATTN_DROPOUT):
        super().__init__()
        self.mossformerM = MossformerBlockGFSMN(dim=d_model, depth=num_blocks, group_size=group_size,
                                                query_key_dim=query_key_dim, expansion_factor=expansion_factor,
                                                attn_dropout=attn_dropout)
        self.norm = nn.LayerNorm(d_model, eps=1e-6)

    def forward(self, src):
        return self.norm(self.mossformerM(src))


# ------------------------------------------------------------------------------------------------ mask net

class GlobalLayerNorm(nn.Module):
    """Mean/var over (C, L) per sample, affine per channel ('gln')."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, 1))
        self.bias = nn.Parameter(torch.zeros(dim, 1))

    def forward(self, x):
        mean = x.mean((1, 2), keepdim=True)
        var = ((x - mean) ** 2).mean((1, 2), keepdim=True)
        return self.weight * (x - mean) / torch.sqrt(var + self.eps) + self.bias


class CumulativeLayerNorm(nn.LayerNorm):
    """LayerNorm over channels of [B, C, L] ('cln')."""

    def __init__(self, dim: int):
        super().__init__(dim, eps=1e-8)

    def forward(self, x):
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def select_norm(norm: str, dim: int) -> nn.Module:
    """The official choices for [B, C, L] inputs: 'gln', 'cln', 'ln' (GroupNorm(1, C)); anything else BatchNorm."""
    if norm == "gln":
        return GlobalLayerNorm(dim)
    if norm == "cln":
        return CumulativeLayerNorm(dim)
    if norm == "ln":
        return nn.GroupNorm(1, dim, eps=1e-8)
    return nn.BatchNorm1d(dim)


class ComputationBlock(nn.Module):
    """MossFormerM over time, then norm and an optional skip; [B, N, S] -> [B, N, S]."""

    def __init__(self, num_blocks: int, out_channels: int, norm: str | None = "ln", skip_around_intra: bool = True):
        super().__init__()
        self.intra_mdl = MossFormerM(num_blocks=num_blocks, d_model=out_channels)
        self.skip_around_intra = skip_around_intra
        self.norm = norm
        if norm is not None:
            self.intra_norm = select_norm(norm, out_channels)

    def forward(self, x):
        intra = self.intra_mdl(x.transpose(1, 2)).transpose(1, 2)
        if self.norm is not None:
            intra = self.intra_norm(intra)
        return intra + x if self.skip_around_intra else intra


class MossFormerMaskNet(nn.Module):
    """Encoder features [B, N, S] -> non-negative masks [num_spks, B, N, S] (official `MossFormer_MaskNet`)."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 24, norm: str = "ln", num_spks: int = 2,
                 skip_around_intra: bool = True, use_global_pos_enc: bool = True, max_length: int = 20000):
        super().__init__()
        self.num_spks, self.num_blocks = num_spks, num_blocks
        self.max_length = max_length   # accepted and unused, as in the official code
        self.norm = select_norm(norm, in_channels)
        self.conv1d_encoder = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.use_global_pos_enc = use_global_pos_enc
        if use_global_pos_enc:
            self.pos_enc = ScaledSinuEmbedding(out_channels)
        self.mdl = ComputationBlock(num_blocks, out_channels, norm, skip_around_intra=skip_around_intra)
        self.conv1d_out = nn.Conv1d(out_channels, out_channels * num_spks, kernel_size=1)
        self.conv1_decoder = nn.Conv1d(out_channels, in_channels, 1, bias=False)
        self.prelu = nn.PReLU()
        self.activation = nn.ReLU()
        self.output = nn.Sequential(nn.Conv1d(out_channels, out_channels, 1), nn.Tanh())
        self.output_gate = nn.Sequential(nn.Conv1d(out_channels, out_channels, 1), nn.Sigmoid())

    def forward(self, x):
        x = self.conv1d_encoder(self.norm(x))
        if self.use_global_pos_enc:
            x = x + self.pos_enc(x.shape[-1]).transpose(0, 1)
        x = self.conv1d_out(self.prelu(self.mdl(x)))
        batch, _, frames = x.shape
        x = x.view(batch * self.num_spks, -1, frames)       # channels are speaker-major
        x = self.conv1_decoder(self.output(x) * self.output_gate(x))
        x = self.activation(x.view(batch, self.num_spks, -1, frames))
        return x.transpose(0, 1)


class Encoder(nn.Module):
    """Waveform [B, T] -> relu(Conv1d(1, C, k, stride k/2)) [B, C, S]."""

    def __init__(self, kernel_size: int = 2, out_channels: int = 64, in_channels: int = 1):
        super().__init__()
        self.conv1d = nn.Conv1d(in_channels, out_channels, kernel_size, stride=kernel_size // 2, bias=False)
        self.in_channels = in_channels

    def forward(self, x):
        if self.in_channels == 1:
            x = x.unsqueeze(1)
        return F.relu(self.conv1d(x))


class Decoder(nn.ConvTranspose1d):
    """[B, C, S] -> [B, T'] for one output channel (explicit squeeze: batch 1 keeps its dim)."""

    def forward(self, x):
        return super().forward(x).squeeze(1)


# ------------------------------------------------------------------------------------------------ model

class MossFormer2(nn.Module):
    """Encoder -> MaskNet -> masked features -> transposed-conv decoder, per speaker.

    forward(mixture [B, T]) -> [B, num_spks, T]. The official forward returns a list of num_spks tensors
    [B, T]; this stacks them on dim 1 (`list(out.unbind(1))` gives the official form). As there, the
    decoded length (S - 1) * k/2 + k is zero-padded or trimmed to T.
    """

    def __init__(self, in_channels: int = 512, out_channels: int = 512, num_blocks: int = 24, kernel_size: int = 16,
                 norm: str = "ln", num_spks: int = 2, skip_around_intra: bool = True, use_global_pos_enc: bool = True,
                 max_length: int = 20000):
        super().__init__()
        if in_channels != out_channels:
            # the official decoder takes out_channels but is fed the in_channels-wide masked encoding
            raise ValueError(f"MossFormer2: in_channels={in_channels} must equal out_channels={out_channels}")
        self.num_spks = num_spks
        self.enc = Encoder(kernel_size=kernel_size, out_channels=in_channels, in_channels=1)
        self.mask_net = MossFormerMaskNet(in_channels, out_channels, num_blocks=num_blocks, norm=norm,
                                          num_spks=num_spks, skip_around_intra=skip_around_intra,
                                          use_global_pos_enc=use_global_pos_enc, max_length=max_length)
        self.dec = Decoder(in_channels=out_channels, out_channels=1, kernel_size=kernel_size,
                           stride=kernel_size // 2, bias=False)

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        if mixture.dim() != 2:
            raise ValueError(f"MossFormer2: expected a mixture [B, T], got {tuple(mixture.shape)}")
        x = self.enc(mixture)                                   # [B, N, S]
        sep = x.unsqueeze(0) * self.mask_net(x)                 # [spk, B, N, S]
        est = self.dec(sep.flatten(0, 1))                       # [spk * B, T_est]
        est = est.view(self.num_spks, x.shape[0], -1).transpose(0, 1)
        length, est_length = mixture.shape[-1], est.shape[-1]
        return F.pad(est, (0, length - est_length)) if length > est_length else est[..., :length]


def state_dict_from_checkpoint(obj) -> dict:
    """The model state dict in a ClearerVoice checkpoint ({'model': sd, 'optimizer': ...}) or a bare state
    dict, with a DataParallel `module.` prefix removed."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise TypeError(f"state_dict_from_checkpoint: expected a state dict or {{'model': state_dict}}, "
                        f"got {type(obj).__name__}")
    return {(key[len("module."):] if key.startswith("module.") else key): value for key, value in obj.items()}


__all__ = ["MossFormer2", "state_dict_from_checkpoint"]
