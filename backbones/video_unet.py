"""VideoUNet: a small pixel-space, class-conditional, epsilon-predicting factorised video denoiser.

``VideoUNet(...)(x, timesteps, class_labels) -> eps`` with x float [B, C, T, H, W] (values on the [-1, 1] scale),
timesteps LongTensor [B] (0..999) and class_labels LongTensor [B], where ``num_classes`` is the null class used for
classifier-free guidance. H and W must be multiples of 2 ** (len(widths) - 1); T is any length >= 1.

Factorised (space, then time) as in Video Diffusion Models (Ho et al. 2022) and AnimateDiff's motion modules: each
level has 2D residual conv blocks applied to every frame (GroupNorm + SiLU, the time + class embedding added
between the two convolutions), a ``TemporalConv`` (kernel 3 over T) and, at the levels listed in
``attention_levels``, a ``TemporalAttention`` block. Levels are joined by stride-2 convolutions on the way down and
nearest upsampling + conv on the way up, with skip connections (concatenation) as in the DDPM U-Net.

The temporal layers are built so that training-free long-video methods install on them exactly as on diffusers'
motion modules:
- ``TemporalAttention`` is duck-typed like a diffusers ``Attention`` (to_q/to_k/to_v/to_out/heads/scale/processor,
  ``set_processor``); ``forward(hidden_states [(B*H*W), T, C])`` returns ``self.processor(self, hidden_states)``;
  the default ``TemporalAttnProcessor`` is plain attention through ``mtp.kernels.attention``.
- Temporal positions: a fixed sinusoidal embedding of the frame index (0..T-1, computed for any T, no table) is
  added to the pre-normed tokens by the enclosing ``TemporalTransformer`` before they reach the attention, so every
  processor (plain, FreeLong, Video-Infinity) sees the same position-aware tokens; the residual is added outside.
- ``TemporalConv`` pads T through its ``pad_time(x, p)`` method (zeros by default), which Video-Infinity may replace
  with frames of the neighbouring clip.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[N] positions (timesteps or frame indices) -> [N, dim] (cos | sin halves, as the DDPM / diffusers one)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=positions.device) / half)
    args = positions.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


class ResBlock2D(nn.Module):
    """Per-frame residual block: GN-SiLU-conv, + embedding, GN-SiLU-conv; x [N, C, H, W], emb [N, E]."""

    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable from the first step
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class TemporalConv(nn.Module):
    """Residual convolution over time: x [B, C, T, H, W] -> same shape, x + conv(pad_time(SiLU(GN(x)))).

    ``conv`` is an nn.Conv3d with kernel (k, 1, 1) and no padding of its own; ``pad_time`` adds the k // 2 frames
    on each side (zeros here), so a caller may supply real context frames instead (Video-Infinity)."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"TemporalConv: kernel_size must be odd and >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.conv = nn.Conv3d(channels, channels, (kernel_size, 1, 1))
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def pad_time(self, x: torch.Tensor, p: int) -> torch.Tensor:
        """x [B, C, T, H, W] -> [B, C, T + 2p, H, W] with p zero frames at each end."""
        return F.pad(x, (0, 0, 0, 0, p, p))

    def forward(self, x):
        h = F.silu(self.norm(x))
        return x + self.conv(self.pad_time(h, self.kernel_size // 2))


class TemporalAttnProcessor:
    """Plain multi-head self-attention over frames through mtp.kernels.attention (no residual: the caller adds it)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        from mtp.kernels import attention

        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("TemporalAttnProcessor: temporal self-attention only (no encoder_hidden_states or mask)")
        n, t, c = hidden_states.shape
        heads = attn.heads

        def split(x):
            return x.reshape(n, t, heads, c // heads).transpose(1, 2)

        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        out = attention(q, k, v, scale=attn.scale).transpose(1, 2).reshape(n, t, c)
        return attn.to_out[1](attn.to_out[0](out))


class TemporalAttention(nn.Module):
    """Self-attention over frames, duck-typed like diffusers' ``Attention`` (see the module docstring).

    forward(hidden_states [(B*H*W), T, C]) -> [(B*H*W), T, C] = self.processor(self, hidden_states)."""

    def __init__(self, channels: int, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        if channels % heads:
            raise ValueError(f"TemporalAttention: channels ({channels}) must be divisible by heads ({heads})")
        self.heads, self.scale = heads, (channels // heads) ** -0.5
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(dropout)])
        nn.init.zeros_(self.to_out[0].weight)  # starts as no temporal mixing, like AnimateDiff's zero-init
        nn.init.zeros_(self.to_out[0].bias)
        self.processor = TemporalAttnProcessor()

    def set_processor(self, processor) -> None:
        self.processor = processor

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        return self.processor(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, **kwargs)


class TemporalTransformer(nn.Module):
    """x [B, C, T, H, W] -> x + attn(LayerNorm(tokens) + sinusoid(frame index)), tokens [(B*H*W), T, C]."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.channels = channels
        self.norm = nn.LayerNorm(channels)
        self.attn = TemporalAttention(channels, heads)

    def forward(self, x):
        b, c, t, h, w = x.shape
        tokens = x.permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)
        pos = sinusoidal_embedding(torch.arange(t, device=x.device), c).to(x.dtype)
        set_hw = getattr(self.attn.processor, "set_hw", None)
        if set_hw is not None:  # processors that work on the frame grid (FreeLong's SpectralBlend) get its size
            set_hw((h, w))
        out = tokens + self.attn(self.norm(tokens) + pos)
        return out.reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2)


class _Level(nn.Module):
    """One stage: residual 2D blocks per frame, then a TemporalConv and (optionally) a TemporalTransformer after
    each block."""

    def __init__(self, cin: int, cout: int, emb_dim: int, blocks: int, attention: bool, heads: int):
        super().__init__()
        self.res = nn.ModuleList(ResBlock2D(cin if i == 0 else cout, cout, emb_dim) for i in range(blocks))
        self.tconv = nn.ModuleList(TemporalConv(cout) for _ in range(blocks))
        self.tattn = nn.ModuleList(TemporalTransformer(cout, heads) for _ in range(blocks)) if attention else None

    def forward(self, x, emb):  # x [B, C, T, H, W], emb [B*T, E]
        b, _, t, h, w = x.shape
        for i, res in enumerate(self.res):
            y = res(x.transpose(1, 2).reshape(b * t, -1, h, w), emb)
            x = y.reshape(b, t, -1, h, w).transpose(1, 2)
            x = self.tconv[i](x)
            if self.tattn is not None:
                x = self.tattn[i](x)
        return x


def _per_frame(fn, x):
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


class VideoUNet(nn.Module):
    """Factorised video U-Net (module docstring). widths[i] channels at level i (resolution / 2**i)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple = (32, 64, 128),
                 blocks_per_level: int = 1, attention_levels: tuple = (1, 2), heads: int = 4,
                 emb_dim: int = 128, patch_size: int = 1):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if patch_size < 1:
            raise ValueError(f"VideoUNet: patch_size must be >= 1, got {patch_size}")
        if len(widths) < 2 or in_channels < 1 or num_classes < 1 or blocks_per_level < 1:
            raise ValueError(f"VideoUNet: need >= 2 widths, in_channels >= 1, num_classes >= 1 and "
                             f"blocks_per_level >= 1, got widths={widths}, in_channels={in_channels}, "
                             f"num_classes={num_classes}, blocks_per_level={blocks_per_level}")
        bad = [lvl for lvl in attention_levels if not 0 <= lvl < len(widths)]
        if bad:
            raise ValueError(f"VideoUNet: attention_levels {bad} outside 0..{len(widths) - 1}")
        self.in_channels, self.num_classes, self.widths = in_channels, num_classes, widths
        self.null_class, self.patch_size = num_classes, int(patch_size)
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embedding = nn.Embedding(num_classes + 1, emb_dim)  # last row: the null class (CFG)
        # patch_size p > 1: frames are folded p x p into channels (pixel_unshuffle) before the stem and unfolded after
        # the head, so the U-Net runs at 1/p resolution: p = 2 makes a CPU step ~4x cheaper
        cells = in_channels * self.patch_size ** 2
        self.stem = nn.Conv2d(cells, widths[0], 3, padding=1)
        levels = len(widths)
        att = set(attention_levels)
        self.down = nn.ModuleList(_Level(widths[max(i - 1, 0)], widths[i], emb_dim, blocks_per_level, i in att, heads)
                                  for i in range(levels))
        self.downsample = nn.ModuleList(nn.Conv2d(widths[i], widths[i], 3, stride=2, padding=1)
                                        for i in range(levels - 1))
        self.mid = _Level(widths[-1], widths[-1], emb_dim, 1, True, heads)
        self.upsample = nn.ModuleList(nn.Conv2d(widths[i + 1], widths[i + 1], 3, padding=1)
                                      for i in range(levels - 1))
        # up level i takes the upsampled deeper features concatenated with level i's skip
        self.up = nn.ModuleList(_Level((widths[i + 1] if i < levels - 1 else widths[i]) + widths[i], widths[i],
                                       emb_dim, blocks_per_level, i in att, heads) for i in range(levels))
        self.out_norm = nn.GroupNorm(_groups(widths[0]), widths[0])
        self.out = nn.Conv2d(widths[0], cells, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def size_multiple(self) -> int:
        return self.patch_size * 2 ** (len(self.widths) - 1)

    def temporal_attentions(self) -> list[TemporalAttention]:
        return [m for m in self.modules() if isinstance(m, TemporalAttention)]

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"VideoUNet expects x [B, {self.in_channels}, T, H, W], got {tuple(x.shape)}")
        b, _, t, h, w = x.shape
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(f"VideoUNet: H and W must be multiples of {m}, got {h} x {w}")
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(b)
        class_labels = torch.as_tensor(class_labels, device=x.device, dtype=torch.long).reshape(-1).expand(b)
        if ((class_labels < 0) | (class_labels > self.num_classes)).any():
            raise ValueError(f"VideoUNet: class_labels must be in 0..{self.num_classes} ({self.num_classes} = null), "
                             f"got {class_labels.tolist()}")
        emb = self.time_mlp(sinusoidal_embedding(timesteps, self.emb_dim).to(x.dtype)) + self.class_embedding(class_labels)
        emb = emb.repeat_interleave(t, dim=0)  # one row per frame: [B*T, E], frame-major within a clip
        p = self.patch_size
        x = _per_frame(lambda y: self.stem(F.pixel_unshuffle(y, p) if p > 1 else y), x)
        skips = []
        for i, level in enumerate(self.down):
            x = level(x, emb)
            skips.append(x)
            if i < len(self.downsample):
                x = _per_frame(self.downsample[i], x)
        x = self.mid(x, emb)
        for i in reversed(range(len(self.up))):
            if i < len(self.upsample):
                x = _per_frame(lambda y, i=i: self.upsample[i](F.interpolate(y, scale_factor=2.0, mode="nearest")), x)
            x = self.up[i](torch.cat([x, skips[i]], dim=1), emb)
        out = _per_frame(lambda y: self.out(F.silu(self.out_norm(y))), x)
        return _per_frame(lambda y: F.pixel_shuffle(y, p), out) if p > 1 else out
