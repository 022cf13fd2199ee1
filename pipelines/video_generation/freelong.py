"""FreeLong's SpectralBlend temporal attention (Lu et al., NeurIPS 2024), training-free long-video sampling.

A temporal attention layer runs twice on the same projections: globally (every frame sees every frame) and
locally (each frame sees a band of about `window` frames). The two outputs, laid out as [B, C, T, H, W], are
blended in the 3-D (T, H, W) Fourier domain: the low frequencies come from the global branch, the high ones
from the local branch, through a Gaussian low-pass filter G and its complement 1 - G.

Numerics follow the official code (aniki-ly/FreeLong, LaVie and VideoCrafter2 examples):
- filter: exp(-((d_s/d_t * t)^2 + h^2 + w^2) / (2 d_s^2)) on the grid `arange(N) * 2 / N - 1` per axis (so d_s,
  d_t are standard deviations where the band edge is 1, not cutoff radii); for odd N no grid point is 0, the
  filter is half a bin off-centre and peaks below 1. That is reproduced, not fixed.
- blend: complex `fftn` over (T, H, W), `fftshift`, mix, `ifftshift`, `ifftn`, `.real`, always in float32.
- local window, two variants: "adjusted" (LaVie: frames max(0, i-w/2)..min(T-1, i+w/2), shifted inward to
  exactly w frames where fewer remain near an edge) and "strict" (VideoCrafter2: the same band, never shifted).
- token layout: temporal tokens are [(B*H*W), T, C], batch outermost, (h, w) row-major.
- the largest official level (40x64 latents = 2560 tokens) returns the local branch unblended.

Each computation has a fast path (mtp.kernels attention; the local branch as banded block attention that builds no
T x T mask beyond 4 windows of frames, and one dense masked call below, where that is cheaper; the blend with one pair
of real FFTs on the token layout) and a `*_reference` twin that follows the official code literally, with
materialised masks, for the tests.

Modules mirror the official layer names so the official state dicts load strictly: `LaVieFreeLongBlock`
(LaVie's BasicTransformerBlock with `attn_temp` = `LaVieTemporalAttention`: rotary + T5 relative-position bias)
and `VC2FreeLongBlock` (VideoCrafter2's TemporalBasicTransformerBlock, FreeLong on attn1 and attn2).
`FreeLongAttnProcessor` applies the same computation to a diffusers `Attention` used as temporal
self-attention (duck-typed: diffusers is never imported here).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mtp.kernels import attention
from mtp.pipelines.video_generation.temporal import temporal_tokens

# token count per frame (H*W) -> latent (H, W) at 320x512, the official table
OFFICIAL_D2HW = {2560: (40, 64), 640: (20, 32), 160: (10, 16), 40: (5, 8)}
MASK_VARIANTS = ("adjusted", "strict")
_FFT_DIMS = (-3, -2, -1)
DENSE_BAND_WINDOWS = 4  # banded_attention: up to this many windows, one dense masked call (see there)


@dataclass(frozen=True)
class FreeLongConfig:
    """FreeLong's settings; the defaults are the official ones (window 16, d_s = d_t = 0.25).

    mask: "adjusted" (LaVie) or "strict" (VideoCrafter2) local window.
    local_only_tokens: per-frame token counts (H*W) whose layers return the local branch unblended; the
      official code does that at its largest level, 40x64 = 2560 tokens. Pass () to blend everywhere.
    block: query rows per block of the banded local attention (default: the window).
    """
    window: int = 16
    d_s: float = 0.25
    d_t: float = 0.25
    mask: str = "adjusted"
    local_only_tokens: tuple = (2560,)
    block: int | None = None

    def __post_init__(self):
        if not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"FreeLongConfig: window must be a positive int, got {self.window!r}")
        if self.mask not in MASK_VARIANTS:
            raise ValueError(f"FreeLongConfig: mask must be one of {MASK_VARIANTS}, got {self.mask!r}")
        if self.d_s < 0 or self.d_t < 0:
            raise ValueError(f"FreeLongConfig: d_s and d_t must be >= 0, got {self.d_s}, {self.d_t}")
        if self.block is not None and self.block < 1:
            raise ValueError(f"FreeLongConfig: block must be a positive int, got {self.block!r}")


# ----------------------------------------------------------------------------------------------- the filter

def _check_thw(shape) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in shape)
    if len(shape) < 3 or any(n < 1 for n in shape[-3:]):
        raise ValueError(f"FreeLong filter: shape must end with (T, H, W), all >= 1, got {shape}")
    return shape[-3], shape[-2], shape[-1]


def gaussian_low_pass_filter_reference(shape, d_s: float = 0.25, d_t: float = 0.25) -> torch.Tensor:
    """The official filter, element by element in Python floats: [T, H, W] float32, centred (fftshift layout)."""
    t_len, h_len, w_len = _check_thw(shape)
    mask = torch.zeros(t_len, h_len, w_len)
    if d_s == 0 or d_t == 0:
        return mask
    for t in range(t_len):
        for h in range(h_len):
            for w in range(w_len):
                d_square = ((d_s / d_t * (2 * t / t_len - 1)) ** 2 + (2 * h / h_len - 1) ** 2
                            + (2 * w / w_len - 1) ** 2)
                mask[t, h, w] = math.exp(-1 / (2 * d_s ** 2) * d_square)
    return mask


@functools.lru_cache(maxsize=64)
def _filters(t_len: int, h_len: int, w_len: int, d_s: float, d_t: float, device: torch.device):
    """(centred [T, H, W], unshifted [T, H, W]) float32 Gaussian low-pass, cached per shape, cutoffs, device."""
    if d_s == 0 or d_t == 0:  # the official convention: an all-zero low-pass (the output is the local branch)
        lpf = torch.zeros(t_len, h_len, w_len, dtype=torch.float64)
    else:
        def grid(n):  # arange(N) * 2 / N - 1: zero at index N/2 for even N, no zero at all for odd N
            return torch.arange(n, dtype=torch.float64) * 2 / n - 1
        d_square = ((d_s / d_t * grid(t_len))[:, None, None] ** 2 + grid(h_len)[None, :, None] ** 2
                    + grid(w_len)[None, None, :] ** 2)
        lpf = torch.exp(-d_square / (2 * d_s ** 2))
    lpf = lpf.to(torch.float32)
    # X * ifftshift(G) == ifftshift(fftshift(X) * G): the unshifted filter spares shifting the spectra
    return lpf.to(device), torch.fft.ifftshift(lpf, dim=_FFT_DIMS).to(device)


@functools.lru_cache(maxsize=64)
def _half_filters(t_len: int, h_len: int, w_len: int, d_s: float, d_t: float, device: torch.device):
    """The unshifted filter made symmetric, Gs(k) = (G(k) + G(-k)) / 2, kept for T frequencies 0..T//2:
    [T//2 + 1, H, W]. For real x, Re(ifftn(fftn(x) * G)) == irfftn(rfftn(x) * Gs): the real part only sees the
    symmetric half of G (G is real), so the half spectrum is exact for odd sizes too (where G is not symmetric)."""
    lpf = _filters(t_len, h_len, w_len, d_s, d_t, device)[1]
    mirrored = torch.roll(lpf.flip(_FFT_DIMS), shifts=(1, 1, 1), dims=_FFT_DIMS)  # G(-k mod N)
    return ((lpf + mirrored) / 2)[: t_len // 2 + 1].contiguous()


def gaussian_low_pass_filter(shape, d_s: float = 0.25, d_t: float = 0.25, device=None) -> torch.Tensor:
    """FreeLong's Gaussian low-pass over (T, H, W), [T, H, W] float32 in centred (fftshift-ed) layout.

    d_t acts on the time axis, d_s on both spatial axes. Cached per (shape, d_s, d_t, device): do not modify
    the returned tensor in place.
    """
    t_len, h_len, w_len = _check_thw(shape)
    if d_s < 0 or d_t < 0:
        raise ValueError(f"FreeLong filter: d_s and d_t must be >= 0, got {d_s}, {d_t}")
    return _filters(t_len, h_len, w_len, float(d_s), float(d_t), torch.device(device or "cpu"))[0]


# ---------------------------------------------------------------------------------------- the spectral blend

def spectral_blend_reference(global_x: torch.Tensor, local_x: torch.Tensor, lpf: torch.Tensor) -> torch.Tensor:
    """Official `freq_mix_3d` on [..., T, H, W] tensors: low band of `global_x`, high band of `local_x`.

    `lpf` is centred (as `gaussian_low_pass_filter` returns it) and broadcasts to the inputs. Computed in
    float32, returned in the input dtype.
    """
    dtype = global_x.dtype
    g_freq = torch.fft.fftshift(torch.fft.fftn(global_x.float(), dim=_FFT_DIMS), dim=_FFT_DIMS)
    l_freq = torch.fft.fftshift(torch.fft.fftn(local_x.float(), dim=_FFT_DIMS), dim=_FFT_DIMS)
    lpf = lpf.to(device=g_freq.device, dtype=torch.float32)
    mixed = g_freq * lpf + l_freq * (1 - lpf)
    mixed = torch.fft.ifftshift(mixed, dim=_FFT_DIMS)
    return torch.fft.ifftn(mixed, dim=_FFT_DIMS).real.to(dtype)


def spectral_blend(global_x: torch.Tensor, local_x: torch.Tensor, d_s: float = 0.25, d_t: float = 0.25,
                   dims=_FFT_DIMS) -> torch.Tensor:
    """The same blend, faster: local + irfftn(rfftn(global - local) * Gs), Gs the symmetric part of ifftshift(G).

    Exact by linearity of the FFT and of `.real` (one real transform pair over half the T frequencies instead of
    three complex transforms; see `_half_filters`). `dims` are the (T, H, W) axes of the inputs, so the token
    layout [B, H, W, T, C] works without a permute.
    """
    if global_x.shape != local_x.shape:
        raise ValueError(f"spectral_blend: branch shapes differ, {tuple(global_x.shape)} vs {tuple(local_x.shape)}")
    dims = tuple(d % global_x.dim() for d in dims)
    if len(dims) != 3 or len(set(dims)) != 3:
        raise ValueError(f"spectral_blend: dims must name three distinct axes (T, H, W), got {dims}")
    shape = [global_x.shape[d] for d in dims]
    lpf = _half_filters(*shape, float(d_s), float(d_t), global_x.device)
    # lay the [T//2 + 1, H, W] filter along `dims` for broadcasting
    order = sorted(range(3), key=lambda i: dims[i])
    view = [1] * global_x.dim()
    for d, n in zip(dims, (shape[0] // 2 + 1, *shape[1:])):
        view[d] = n
    lpf = lpf.permute(*order).reshape(view)
    local32 = local_x.float()
    t_dim, h_dim, w_dim = dims  # T listed last: the real transform halves the T axis
    diff = torch.fft.rfftn(global_x.float() - local32, dim=(h_dim, w_dim, t_dim)) * lpf
    return (local32 + torch.fft.irfftn(diff, s=(shape[1], shape[2], shape[0]), dim=(h_dim, w_dim, t_dim))
            ).to(global_x.dtype)


def _check_tokens(x: torch.Tensor, hw, name: str) -> tuple[int, int, int]:
    if x.dim() != 3:
        raise ValueError(f"{name}: temporal tokens must be [(B*H*W), T, C], got shape {tuple(x.shape)}")
    h, w = hw
    if h < 1 or w < 1 or x.shape[0] % (h * w):
        raise ValueError(f"{name}: {x.shape[0]} rows are not a whole number of {h}x{w} frames")
    return x.shape[0] // (h * w), h, w


def spectral_blend_tokens(global_tokens: torch.Tensor, local_tokens: torch.Tensor, hw, d_s: float = 0.25,
                          d_t: float = 0.25, *, reference: bool = False) -> torch.Tensor:
    """Blend two temporal-token tensors [(B*H*W), T, C] (the official `combine` for a known (H, W))."""
    if global_tokens.shape != local_tokens.shape:
        raise ValueError(f"spectral_blend_tokens: branch shapes differ, {tuple(global_tokens.shape)} vs "
                         f"{tuple(local_tokens.shape)}")
    b, h, w = _check_tokens(global_tokens, hw, "spectral_blend_tokens")
    t_len, c = global_tokens.shape[1:]
    if reference:
        def to_bcthw(x):
            return x.reshape(b, h, w, t_len, c).permute(0, 4, 3, 1, 2)
        lpf = gaussian_low_pass_filter((t_len, h, w), d_s, d_t, device=global_tokens.device)
        out = spectral_blend_reference(to_bcthw(global_tokens), to_bcthw(local_tokens), lpf)
        return out.permute(0, 3, 4, 2, 1).reshape(b * h * w, t_len, c)
    # FFT straight on the [B, H, W, T, C] view: no permuted copies
    out = spectral_blend(global_tokens.reshape(b, h, w, t_len, c), local_tokens.reshape(b, h, w, t_len, c),
                         d_s, d_t, dims=(3, 1, 2))
    return out.reshape(b * h * w, t_len, c)


def tokens_to_bcthw(x: torch.Tensor, hw) -> torch.Tensor:
    """[(B*H*W), T, C] -> [B, C, T, H, W] (a view)."""
    b, h, w = _check_tokens(x, hw, "tokens_to_bcthw")
    return x.reshape(b, h, w, *x.shape[1:]).permute(0, 4, 3, 1, 2)


def resolve_hw(rows: int, *, hw=None, batch_size: int | None = None, table=None) -> tuple[int, int]:
    """(H, W) of temporal tokens with `rows` = B*H*W rows: `hw` if given, else table[rows // batch_size].

    The official code uses the table {2560: (40, 64), 640: (20, 32), 160: (10, 16), 40: (5, 8)} (320x512 only)
    with batch_size 2 (LaVie, CFG pair in one batch) or 1 (VideoCrafter2).
    """
    if hw is not None:
        h, w = (int(n) for n in hw)
        if h < 1 or w < 1 or rows % (h * w):
            raise ValueError(f"FreeLong: {rows} temporal rows are not a whole number of {h}x{w} frames")
        return h, w
    table = OFFICIAL_D2HW if table is None else table
    if not batch_size or rows % batch_size:
        raise ValueError(f"FreeLong: cannot infer (H, W) from {rows} rows with batch_size={batch_size}; pass hw")
    d = rows // batch_size
    if d not in table:
        raise ValueError(f"FreeLong: {d} tokens per frame is not in the level table {sorted(table)} (the official "
                         f"table only covers 320x512 latents); pass hw=(H, W)")
    return tuple(table[d])


# ------------------------------------------------------------------------------------------- the local window

def _check_window(length: int, window: int, variant: str) -> None:
    if variant not in MASK_VARIANTS:
        raise ValueError(f"FreeLong local mask: variant must be one of {MASK_VARIANTS}, got {variant!r}")
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"FreeLong local mask: window must be a positive int, got {window!r}")
    if window > length:
        raise ValueError(f"FreeLong local mask: window {window} is larger than the video length {length}; "
                         f"use a window <= T (the local branch would be the global one)")


def local_window_bounds(length: int, window: int = 16, variant: str = "adjusted", device=None):
    """Per query frame i, the key frames [start_i, end_i) of the local branch (end exclusive), int64 [T] each.

    "strict": max(0, i - w//2) .. min(T-1, i + w//2) (9..w+1 frames for w = 16);
    "adjusted": the same, but rows with fewer than w frames are moved inward to exactly w frames.
    """
    _check_window(length, window, variant)
    i = torch.arange(length, device=device)
    half = window // 2
    start = (i - half).clamp(min=0)
    end = (i + half + 1).clamp(max=length)
    if variant == "adjusted":
        short = end - start < window
        end = torch.where(short & (start == 0), torch.full_like(end, window), end)
        start = torch.where(short & (start > 0), torch.full_like(start, length - window), start)
    return start, end


def local_mask_reference(length: int, window: int = 16, variant: str = "adjusted") -> torch.Tensor:
    """The official materialised [T, T] mask, row by row.

    "adjusted" (LaVie `get_adjusted_local_mask`): float, 0 where allowed and -inf elsewhere (added to logits).
    "strict" (VideoCrafter2 `get_local_mask`): bool, True where allowed (masked_fill(-inf) elsewhere).
    """
    _check_window(length, window, variant)
    half = window // 2
    if variant == "strict":
        mask = torch.zeros(length, length, dtype=torch.bool)
        for i in range(length):
            mask[i, max(0, i - half):min(length, i + half + 1)] = True
        return mask
    mask = torch.full((length, length), float("-inf"))
    for i in range(length):
        start, end = max(0, i - half), min(length, i + half + 1)
        if end - start < window:
            if start == 0:
                end = min(length, window)
            else:
                start = max(0, end - window)
        mask[i, start:end] = 0
    return mask


def banded_attention(q, k, v, start: torch.Tensor, end: torch.Tensor, *, scale=None, bias_fn=None,
                     block: int | None = None) -> torch.Tensor:
    """Attention where query i sees only keys [start_i, end_i); q, k, v: [..., T, D], start/end int64 [T].

    Queries go in blocks of `block` rows; each block attends to the smallest key span covering its rows (at most
    block + window keys), through mtp.kernels.attention with a bool mask [n_blocks, block, span]. Memory and
    work are O(T * (block + window)) instead of O(T^2); no T x T mask is built unless the span reaches T. With
    `block` None, videos of at most DENSE_BAND_WINDOWS windows go as one dense call with a [T, T] mask: there the
    band's key gathers cost more than the keys they skip (CPU, T = 64, window 16: 6.4 ms banded vs 3.8 ms dense
    per call at the VideoUNet's level-1 shapes; even at T = 128).
    `bias_fn(q_pos [nb, block], k_pos [nb, span])` may return an additive bias [..., nb, block, span]
    (LaVie's relative-position bias, evaluated only inside the band).
    """
    t_len = q.shape[-2]
    if k.shape[-2] != t_len or v.shape[-2] != t_len:
        raise ValueError(f"banded_attention: q, k, v need the same length, got {q.shape[-2]}, {k.shape[-2]}, "
                         f"{v.shape[-2]}")
    if start.shape != (t_len,) or end.shape != (t_len,):
        raise ValueError(f"banded_attention: start/end must be [T={t_len}], got {tuple(start.shape)}, "
                         f"{tuple(end.shape)}")
    width = int((end - start).max())
    if block is None and t_len <= DENSE_BAND_WINDOWS * width:
        block = t_len
    block = max(1, min(int(block or width), t_len))
    n_blocks = -(-t_len // block)
    pad = n_blocks * block - t_len
    # padded query rows repeat the last row's window and are cut off afterwards
    rows = torch.arange(n_blocks * block, device=q.device).clamp(max=t_len - 1).view(n_blocks, block)
    starts, ends = start.to(q.device)[rows], end.to(q.device)[rows]
    lo, hi = starts.min(1).values, ends.max(1).values
    span = min(int((hi - lo).max()), t_len)
    first = lo.clamp(max=t_len - span)  # keep every block's span inside [0, T)
    k_pos = first[:, None] + torch.arange(span, device=q.device)  # [nb, span]
    keep = (k_pos[:, None, :] >= starts[:, :, None]) & (k_pos[:, None, :] < ends[:, :, None])  # [nb, block, span]
    qb = F.pad(q, (0, 0, 0, pad)) if pad else q
    qb = qb.reshape(*q.shape[:-2], n_blocks, block, q.shape[-1])
    if n_blocks == 1 and span == t_len:  # one dense block: the keys as they are, no gather
        kb, vb = k.unsqueeze(-3), v.unsqueeze(-3)
    else:
        kb, vb = k[..., k_pos, :], v[..., k_pos, :]  # [..., nb, span, D]: the band's keys, O(T * span)
    bias = None if bias_fn is None else bias_fn(rows, k_pos)
    out = attention(qb, kb, vb, bias=bias, mask=keep, scale=scale)
    return out.reshape(*q.shape[:-2], n_blocks * block, v.shape[-1])[..., :t_len, :]


# ---------------------------------------------------------------------------------- LaVie's positional terms

class RotaryEmbedding(nn.Module):
    """Rotary embedding as rotary-embedding-torch's `RotaryEmbedding(dim)` used by LaVie: interleaved pairs,
    absolute positions 0..T-1 along dim -2, only the first `dim` channels rotated. `freqs` is a frozen
    parameter (the official state dict stores it)."""

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        self.dim = dim
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def rotate_queries_or_keys(self, t: torch.Tensor) -> torch.Tensor:
        if t.shape[-1] < self.dim:
            raise ValueError(f"RotaryEmbedding: head dim {t.shape[-1]} is smaller than the rotary dim {self.dim}")
        pos = torch.arange(t.shape[-2], device=t.device, dtype=self.freqs.dtype)
        angles = (pos[:, None] * self.freqs).repeat_interleave(2, dim=-1)  # [T, dim], pairs interleaved
        mid, rest = t[..., : self.dim], t[..., self.dim:]
        x1, x2 = mid.unflatten(-1, (-1, 2)).unbind(-1)
        rotated_half = torch.stack((-x2, x1), dim=-1).flatten(-2)
        mid = mid * angles.cos() + rotated_half * angles.sin()
        return torch.cat((mid.to(t.dtype), rest), dim=-1)


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int = 32,
                             max_distance: int = 32) -> torch.Tensor:
    """T5 buckets of (key - query) offsets, bidirectional: half the buckets per sign, exact below a quarter."""
    n = -relative_position
    num_buckets //= 2
    ret = (n < 0).long() * num_buckets
    n = n.abs()
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = max_exact + (torch.log(n.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return ret + torch.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """LaVie's T5-style temporal bias: one learned table [num_buckets, heads], indexed by bucketed offsets."""

    def __init__(self, heads: int = 8, num_buckets: int = 32, max_distance: int = 32):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def between(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Bias for query positions [..., Lq] (or [..., Lq, 1]) and key positions [..., Lk]: [heads, ..., Lq, Lk]."""
        rel = k_pos.unsqueeze(-2) - q_pos.unsqueeze(-1)
        values = self.relative_attention_bias(relative_position_bucket(rel, self.num_buckets, self.max_distance))
        return values.movedim(-1, 0)

    def forward(self, n: int, device=None) -> torch.Tensor:
        pos = torch.arange(n, device=device or self.relative_attention_bias.weight.device)
        return self.between(pos, pos)  # [heads, n, n]


# ------------------------------------------------------------------------------------------- attention layers

def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(-3, -2)  # [N, L, h*d] -> [N, h, L, d]


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-3, -2).flatten(-2)


class CrossAttention(nn.Module):
    """Plain multi-head (cross-)attention with the official names: to_q/to_k/to_v without bias, to_out.0."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head, self.scale = heads, dim_head, dim_head ** -0.5
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(dropout)])

    def qkv(self, x, context=None):
        context = x if context is None else context
        return (_split_heads(self.to_q(x), self.heads), _split_heads(self.to_k(context), self.heads),
                _split_heads(self.to_v(context), self.heads))

    def out(self, heads_out: torch.Tensor) -> torch.Tensor:
        return self.to_out[1](self.to_out[0](_merge_heads(heads_out)))

    def forward(self, x, context=None):
        q, k, v = self.qkv(x, context)
        return self.out(attention(q, k, v, scale=self.scale))


class TemporalSelfAttention(CrossAttention):
    """VideoCrafter2's temporal CrossAttention (plain, no relative position) with FreeLong's two branches."""

    def freelong_branches(self, x: torch.Tensor, window: int, mask: str = "strict", *, block=None,
                          reference: bool = False):
        """(global, local) attention outputs for temporal tokens x [N, T, C], sharing one q/k/v projection."""
        q, k, v = self.qkv(x)
        t_len = x.shape[1]
        if reference:
            keep = local_mask_reference(t_len, window, mask)
            if mask == "adjusted":
                keep = keep == 0
            sim = (q @ k.transpose(-1, -2)) * self.scale
            glob = sim.softmax(-1) @ v
            loc = sim.masked_fill(~keep.to(x.device), float("-inf")).softmax(-1) @ v
            return self.out(glob), self.out(loc)
        start, end = local_window_bounds(t_len, window, mask, device=x.device)
        glob = attention(q, k, v, scale=self.scale)
        loc = banded_attention(q, k, v, start, end, scale=self.scale, block=block)
        return self.out(glob), self.out(loc)


class LaVieTemporalAttention(CrossAttention):
    """LaVie's TemporalAttention: q pre-scaled by dim_head**-0.5, rotary on q and k (absolute positions),
    T5 relative-position bias added to the logits of both branches."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, rotary_dim: int | None = 32,
                 dropout: float = 0.0, rotary_emb: RotaryEmbedding | None = None):
        super().__init__(query_dim, heads, dim_head, dropout=dropout)
        self.time_rel_pos_bias = RelativePositionBias(heads=heads, num_buckets=32, max_distance=32)
        if rotary_emb is None and rotary_dim:
            rotary_emb = RotaryEmbedding(rotary_dim)
        self.rotary_emb = rotary_emb

    def _qkv(self, x):
        q, k, v = self.qkv(x)
        q = q * self.scale
        if self.rotary_emb is not None:
            q, k = self.rotary_emb.rotate_queries_or_keys(q), self.rotary_emb.rotate_queries_or_keys(k)
        return q, k, v

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One branch, as the official module: global, or with an additive [T, T] mask."""
        q, k, v = self._qkv(x)
        bias = self.time_rel_pos_bias(x.shape[1], device=x.device).to(q.dtype)
        # the relative-position bias is a dense [heads, T, T] term by construction (global branch)
        return self.out(attention(q, k, v, bias=bias, mask=attention_mask, scale=1.0))

    def _reference_branch(self, q, k, v, bias, mask):
        scores = q @ k.transpose(-1, -2) + bias
        if mask is not None:
            scores = scores + mask
        scores = scores - scores.amax(-1, keepdim=True).detach()
        return self.out(scores.softmax(-1) @ v)

    def freelong_branches(self, x: torch.Tensor, window: int, mask: str = "adjusted", *, block=None,
                          reference: bool = False):
        """(global, local) outputs for temporal tokens x [N, T, C]; one projection, rotary and bias table."""
        q, k, v = self._qkv(x)
        t_len = x.shape[1]
        if reference:
            bias = self.time_rel_pos_bias(t_len, device=x.device)
            local = local_mask_reference(t_len, window, mask)
            if local.dtype == torch.bool:
                local = torch.zeros(local.shape).masked_fill(~local, float("-inf"))
            return (self._reference_branch(q, k, v, bias, None),
                    self._reference_branch(q, k, v, bias, local.to(x.device)))
        bias = self.time_rel_pos_bias(t_len, device=x.device).to(q.dtype)
        glob = attention(q, k, v, bias=bias, scale=1.0)
        start, end = local_window_bounds(t_len, window, mask, device=x.device)

        def band_bias(q_pos, k_pos):  # [heads, nb, block, span], only the band's offsets
            return self.time_rel_pos_bias.between(q_pos, k_pos).to(q.dtype)

        loc = banded_attention(q, k, v, start, end, scale=1.0, bias_fn=band_bias, block=block)
        return self.out(glob), self.out(loc)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with the official names ff.net.0.proj / ff.net.2 (inner = 4 * dim)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x):
        return self.net(x)


def _blend_or_local(glob, loc, hw, config: FreeLongConfig, reference: bool):
    if hw[0] * hw[1] in config.local_only_tokens:  # the official largest level: local branch only
        return loc
    return spectral_blend_tokens(glob, loc, hw, config.d_s, config.d_t, reference=reference)


def _check_temporal_input(x: torch.Tensor, dim: int, name: str):
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name}: temporal tokens must be [(B*H*W), T, {dim}], got shape {tuple(x.shape)}")


# --------------------------------------------------------------------------------------------------- blocks

class LaVieFreeLongBlock(nn.Module):
    """LaVie's BasicTransformerBlock with FreeLong's temporal step (official key names, loads strictly).

    forward: spatial self-attention, text cross-attention, temporal attention, GEGLU FF, each pre-norm with a
    residual. In eval mode the temporal step is FreeLong's (global + local branch, spectral blend, residual
    once after the blend); in training mode it is plain global temporal attention, as in the official code.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int | None = None,
                 rotary_dim: int | None = 32, video_length: int = 128, local_window: int = 16,
                 d_s: float = 0.25, d_t: float = 0.25, mask: str = "adjusted", batch_size: int = 2,
                 local_only_tokens: tuple = (2560,), dropout: float = 0.0, rotary_emb=None, block=None):
        super().__init__()
        self.dim, self.video_length, self.batch_size = dim, video_length, batch_size
        self.config = FreeLongConfig(window=local_window, d_s=d_s, d_t=d_t, mask=mask,
                                     local_only_tokens=tuple(local_only_tokens), block=block)
        self.attn1 = CrossAttention(dim, heads, dim_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim=cross_attention_dim, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.attn_temp = LaVieTemporalAttention(dim, heads, dim_head, rotary_dim=rotary_dim, dropout=dropout,
                                                rotary_emb=rotary_emb)
        self.norm_temp = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)
        self.norm3 = nn.LayerNorm(dim)

    def freelong_temporal(self, hidden_states: torch.Tensor, video_length: int | None = None, hw=None, *,
                          reference: bool = False) -> torch.Tensor:
        """FreeLong temporal step on [(B*H*W), T, C]: blend(global, local) + input.

        hw: the (H, W) of a frame; None infers it as the official code does (table[rows // batch_size]).
        """
        _check_temporal_input(hidden_states, self.dim, "LaVieFreeLongBlock.freelong_temporal")
        if video_length is not None and hidden_states.shape[1] != video_length:
            raise ValueError(f"LaVieFreeLongBlock: tokens have {hidden_states.shape[1]} frames, "
                             f"video_length={video_length}")
        hw = resolve_hw(hidden_states.shape[0], hw=hw, batch_size=self.batch_size)
        cfg = self.config
        glob, loc = self.attn_temp.freelong_branches(self.norm_temp(hidden_states), cfg.window, cfg.mask,
                                                     block=cfg.block, reference=reference)
        return _blend_or_local(glob, loc, hw, cfg, reference) + hidden_states

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                video_length: int | None = None, hw=None, *, reference: bool = False) -> torch.Tensor:
        """hidden_states [(B*T), H*W, C] (frames of one video adjacent); encoder_hidden_states [(B*T), L, D]."""
        video_length = video_length or self.video_length
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.dim:
            raise ValueError(f"LaVieFreeLongBlock: hidden_states must be [(B*T), H*W, {self.dim}], got "
                             f"{tuple(hidden_states.shape)}")
        if hidden_states.shape[0] % video_length:
            raise ValueError(f"LaVieFreeLongBlock: {hidden_states.shape[0]} rows are not a whole number of "
                             f"{video_length}-frame videos")
        tokens = hidden_states.shape[1]
        if hw is None:
            hw = resolve_hw(tokens, batch_size=1)
        elif hw[0] * hw[1] != tokens:
            raise ValueError(f"LaVieFreeLongBlock: hw={tuple(hw)} does not match {tokens} tokens per frame")
        x = self.attn1(self.norm1(hidden_states)) + hidden_states
        x = self.attn2(self.norm2(x), encoder_hidden_states) + x
        b = x.shape[0] // video_length
        x = x.reshape(b, video_length, tokens, self.dim).transpose(1, 2).reshape(b * tokens, video_length, self.dim)
        if self.training:
            x = self.attn_temp(self.norm_temp(x)) + x
        else:
            x = self.freelong_temporal(x, video_length, hw, reference=reference)
        x = x.reshape(b, tokens, video_length, self.dim).transpose(1, 2).reshape(b * video_length, tokens, self.dim)
        return self.ff(self.norm3(x)) + x


class VC2FreeLongBlock(nn.Module):
    """VideoCrafter2's TemporalBasicTransformerBlock with FreeLong on attn1 and on attn2 (both temporal
    self-attention), then the GEGLU FF; official key names, loads strictly.

    The official code adds the residual to each branch before the blend; here it is added once after it, which
    is the same up to rounding (the two filters sum to 1).
    """

    def __init__(self, dim: int, n_heads: int, d_head: int, video_length: int = 128, local_window: int = 16,
                 d_s: float = 0.25, d_t: float = 0.25, mask: str = "strict", batch_size: int = 1,
                 local_only_tokens: tuple = (2560,), dropout: float = 0.0, block=None):
        super().__init__()
        self.dim, self.video_length, self.batch_size = dim, video_length, batch_size
        self.config = FreeLongConfig(window=local_window, d_s=d_s, d_t=d_t, mask=mask,
                                     local_only_tokens=tuple(local_only_tokens), block=block)
        self.attn1 = TemporalSelfAttention(dim, n_heads, d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = TemporalSelfAttention(dim, n_heads, d_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def freelong_attn(self, x: torch.Tensor, norm: nn.LayerNorm, attn: TemporalSelfAttention, hw, *,
                      reference: bool = False) -> torch.Tensor:
        cfg = self.config
        glob, loc = attn.freelong_branches(norm(x), cfg.window, cfg.mask, block=cfg.block, reference=reference)
        if reference:  # the official order: residual on both branches, then the blend
            return _blend_or_local(glob + x, loc + x, hw, cfg, reference=True)
        return _blend_or_local(glob, loc, hw, cfg, reference=False) + x

    def forward(self, x: torch.Tensor, hw=None, *, reference: bool = False) -> torch.Tensor:
        """x: temporal tokens [(B*H*W), T, C]; hw None infers (H, W) as the official code (table[rows])."""
        _check_temporal_input(x, self.dim, "VC2FreeLongBlock")
        hw = resolve_hw(x.shape[0], hw=hw, batch_size=self.batch_size)
        x = self.freelong_attn(x, self.norm1, self.attn1, hw, reference=reference)
        x = self.freelong_attn(x, self.norm2, self.attn2, hw, reference=reference)
        return self.ff(self.norm3(x)) + x


# ------------------------------------------------------------------------------------- diffusers processor

class FreeLongAttnProcessor:
    """FreeLong for a diffusers `Attention` used as temporal self-attention (AnimateDiff / UNet3D motion
    layers: hidden_states [(B*H*W), F, C]). Duck-typed on the Attention's attributes (to_q, to_k, to_v,
    to_out, heads, scale, norm_q/norm_k, residual_connection, rescale_output_factor); diffusers is not imported.

    Plain attention in both branches (as VideoCrafter2), `config.mask` selects the local window. The frame size
    is `hw` when set (set it per call site with `set_hw`), else table[rows // batch_size]. `reference=True`
    computes as the official code does (dense softmax attention, a materialised [T, T] local mask,
    `spectral_blend_reference` on the [B, C, T, H, W] layout): the same result, for tests and benchmarks.
    """

    def __init__(self, config: FreeLongConfig | None = None, hw=None, batch_size: int | None = None,
                 table=None, reference: bool = False):
        self.config = config or FreeLongConfig(mask="strict")
        self.hw, self.batch_size, self.table = hw, batch_size, table
        self.reference = bool(reference)

    def set_hw(self, hw) -> None:
        self.hw = hw

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        hidden_states = temporal_tokens("FreeLongAttnProcessor", attn, hidden_states, encoder_hidden_states,
                                        attention_mask)
        hw = resolve_hw(hidden_states.shape[0], hw=self.hw, batch_size=self.batch_size, table=self.table)
        heads = attn.heads
        q = _split_heads(attn.to_q(hidden_states), heads)
        k = _split_heads(attn.to_k(hidden_states), heads)
        v = _split_heads(attn.to_v(hidden_states), heads)
        if getattr(attn, "norm_q", None) is not None:
            q = attn.norm_q(q)
        if getattr(attn, "norm_k", None) is not None:
            k = attn.norm_k(k)
        cfg = self.config
        if self.reference:
            keep = local_mask_reference(hidden_states.shape[1], cfg.window, cfg.mask)
            keep = (keep if keep.dtype == torch.bool else keep == 0).to(q.device)
            sim = (q @ k.transpose(-1, -2)) * attn.scale
            glob = sim.softmax(-1) @ v
            loc = sim.masked_fill(~keep, float("-inf")).softmax(-1) @ v
        else:
            start, end = local_window_bounds(hidden_states.shape[1], cfg.window, cfg.mask, device=q.device)
            glob = attention(q, k, v, scale=attn.scale)
            loc = banded_attention(q, k, v, start, end, scale=attn.scale, block=cfg.block)

        def out(o):
            o = attn.to_out[0](_merge_heads(o).to(q.dtype))
            return attn.to_out[1](o) if len(attn.to_out) > 1 else o

        hidden_states = _blend_or_local(out(glob), out(loc), hw, cfg, reference=self.reference)
        if getattr(attn, "residual_connection", False):
            hidden_states = hidden_states + residual
        return hidden_states / getattr(attn, "rescale_output_factor", 1.0)
