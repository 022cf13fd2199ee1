"""HAT: Hybrid Attention Transformer for image super-resolution and restoration.

Re-implementation of "Activating More Pixels in Image Super-Resolution Transformer" (Chen et al., CVPR 2023)
whose state dict (key names, shapes and order) equals the official XPixelGroup/HAT release, so the
published ``params_ema`` checkpoints load strictly. Attention, its index buffers and the shifted-window
regions come from ``mtp.kernels`` (``window_attention``: the bias table read through its index, the shift
mask built from region ids).

The forward does not pad: inputs must be a multiple of ``size_multiple`` (= window_size). Callers pad
with :func:`pad_to_multiple` (reflect, bottom/right) and crop the output to ``(h * upscale, w * upscale)``.

Layout (same numbers as the official code, fewer copies): tokens stay [B, H*W, C] in image order, which is
also channels-last memory for the convolutions. Window attention reads them through one gather per block
that does the cyclic shift and the window partition at once (:class:`WindowPlan`, built once per forward),
and orders shifted windows by region pattern, so window attention runs each pattern group as one fused
call on a view, with a single [heads, N, N] bias (+ mask) instead of a materialised [B * nW, heads, N, N] one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from mtp.kernels import (
    order_windows_by_region,
    overlapping_relative_position_index,
    relative_position_index,
    shifted_window_region_ids,
    window_attention,
)
from torch import nn
from torch.utils.checkpoint import checkpoint

# Official hyper-parameters (options/test/*.yml); the scale is passed separately as `upscale`.
_HAT_COMMON = dict(in_chans=3, img_size=64, window_size=16, conv_scale=0.01, overlap_ratio=0.5, img_range=1.0,
                   mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv")
HAT_VARIANTS = {
    "hat_s": dict(_HAT_COMMON, embed_dim=144, depths=[6] * 6, num_heads=[6] * 6, compress_ratio=24, squeeze_factor=24),
    "hat": dict(_HAT_COMMON, embed_dim=180, depths=[6] * 6, num_heads=[6] * 6, compress_ratio=3, squeeze_factor=30),
    "hat_l": dict(_HAT_COMMON, embed_dim=180, depths=[6] * 12, num_heads=[6] * 12, compress_ratio=3, squeeze_factor=30),
}

_RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean used by the official model, applied as (x - mean) * img_range
_NUM_FEAT = 64  # reconstruction width, hard-coded in the official model


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad an image batch [B, C, H, W] at the bottom/right to a multiple of `multiple`.

    Returns the padded batch and the original (h, w), so the caller can crop the model output to
    (h * scale, w * scale) as the official HATModel.pre_process/post_process do.
    """
    if x.ndim != 4:
        raise ValueError(f"pad_to_multiple expects an image batch [B, C, H, W], got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h >= h or pad_w >= w:
        raise ValueError(f"image {h}x{w} is too small to reflect-pad to a multiple of {multiple}: "
                         f"each side must be larger than its padding ({pad_h}, {pad_w})")
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
    return x, (h, w)


def overlap_window_size(window_size: int, overlap_ratio: float) -> int:
    return int(window_size * overlap_ratio) + window_size


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * num_windows, ws, ws, C], windows in row-major order per image."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)


class WindowPlan:
    """Where every token of a (shifted) window partition comes from, for a batch of B maps of H x W.

    ``rows`` [B*H*W] picks, from tokens flattened to [B*H*W, C] in image order, the tokens in window order
    (torch.roll by -shift, then window_partition, as one gather); ``inverse`` puts them back (the reverse
    partition and roll). With a shift, windows are ordered so that windows of one region pattern are
    adjacent, and ``region_ids`` [nW, ws²] (in that order) give window attention the official mask
    (-100 between tokens of different regions); without a shift it is None.
    """

    def __init__(self, batch: int, height: int, width: int, window_size: int, shift_size: int, device=None):
        n = window_size * window_size
        tokens = torch.arange(height * width, device=device).view(1, height, width, 1)
        if shift_size:
            tokens = torch.roll(tokens, shifts=(-shift_size, -shift_size), dims=(1, 2))
        windows = window_partition(tokens, window_size).view(-1, n)  # [nW, ws²] image token per window slot
        self.region_ids = None
        if shift_size:
            region_ids = shifted_window_region_ids(height, width, window_size, shift_size, device)
            order = order_windows_by_region(region_ids)
            windows, self.region_ids = windows[order], region_ids[order]
        order = windows.reshape(-1)
        per_image = height * width
        offsets = torch.arange(batch, device=device)[:, None] * per_image
        self.rows = (offsets + order).reshape(-1)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(per_image, device=device)
        self.inverse = (offsets + inverse).reshape(-1)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H*W, C] image order -> [B, H*W, C] window order."""
        return x.reshape(-1, x.shape[-1]).index_select(0, self.rows).view(x.shape)

    def scatter(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of gather."""
        return x.reshape(-1, x.shape[-1]).index_select(0, self.inverse).view(x.shape)


class WindowPlans:
    """The plans of one forward pass, built on first use per (window size, shift) and shared by all blocks."""

    def __init__(self, batch: int, height: int, width: int, device):
        self.batch, self.size, self.device = batch, (height, width), device
        self._plans = {}

    def get(self, window_size: int, shift_size: int) -> WindowPlan:
        key = (window_size, shift_size)
        if key not in self._plans:
            self._plans[key] = WindowPlan(self.batch, *self.size, window_size, shift_size, self.device)
        return self._plans[key]


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class ChannelAttention(nn.Module):
    """RCAN squeeze-excitation: global pool -> bottleneck 1x1 convs -> sigmoid gate."""

    def __init__(self, num_feat: int, squeeze_factor: int):
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(num_feat, num_feat // squeeze_factor, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat // squeeze_factor, num_feat, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel attention block: the convolution branch that runs beside window attention in each HAB."""

    def __init__(self, num_feat: int, compress_ratio: int, squeeze_factor: int):
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1),
            nn.GELU(),
            nn.Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeeze_factor),
        )

    def forward(self, x):
        return self.cab(x)

    def features_and_gate(self, x):
        """The convolution output before channel attention and its [B, C, 1, 1] gate (forward = their product)."""
        features = self.cab[:3](x)
        return features, self.cab[3].attention(features)


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias=True, qk_scale=None,
                 attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, rpi, region_ids):
        """x: [B, nW * ws², C] tokens in window order; rpi: [ws², ws²] bias-table index; region_ids: [nW, ws²]
        shifted-window regions (tokens attend within their region) or None (WindowPlan.region_ids)."""
        b, length, c = x.shape
        n, heads = rpi.shape[0], self.num_heads
        qkv = self.qkv(x).view(b * (length // n), n, 3, heads, c // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B * nW, heads, n, d]
        out = window_attention(q, k, v, self.relative_position_bias_table, rpi, shift_mask=region_ids,
                               scale=self.scale, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, length, c)))


class HAB(nn.Module):
    """Hybrid attention block: (shifted) window attention + scaled channel-attention conv branch, then MLP."""

    def __init__(self, dim, input_resolution, num_heads, window_size, shift_size, compress_ratio, squeeze_factor,
                 conv_scale, mlp_ratio, qkv_bias=True, qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0,
                 norm_layer=nn.LayerNorm):
        super().__init__()
        # as official: a window covering the whole (nominal) image is shrunk to it and never shifted
        if min(input_resolution) <= window_size:
            shift_size = 0
            window_size = min(input_resolution)
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size={window_size}), got {shift_size}")
        self.window_size = window_size
        self.shift_size = shift_size
        self.conv_scale = conv_scale

        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x, x_size, rpi_sa, plans: WindowPlans):
        h, w = x_size
        b, _, c = x.shape
        x_norm = self.norm1(x)

        # [B, H*W, C] tokens are channels-last memory of [B, C, H, W]: the convolutions need no copy
        features, gate = self.conv_block.features_and_gate(x_norm.view(b, h, w, c).permute(0, 3, 1, 2))
        features = features.permute(0, 2, 3, 1).reshape(b, h * w, c)
        gate = gate.reshape(b, 1, c) * self.conv_scale

        plan = plans.get(self.window_size, self.shift_size)
        attn_x = plan.scatter(self.attn(plan.gather(x_norm), rpi_sa, plan.region_ids))

        x = torch.addcmul(x + self.drop_path(attn_x), features, gate)  # + conv_scale * CAB(x_norm)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class OCAB(nn.Module):
    """Overlapping cross-attention: queries from ws x ws windows attend to enlarged, overlapping key windows."""

    def __init__(self, dim, window_size, overlap_ratio, num_heads, qkv_bias=True, qk_scale=None, mlp_ratio=2,
                 norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.overlap_win_size = overlap_window_size(window_size, overlap_ratio)

        self.norm1 = norm_layer(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((window_size + self.overlap_win_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, x_size, rpi, plans: WindowPlans):
        h, w = x_size
        b, _, c = x.shape
        ws, ows, heads = self.window_size, self.overlap_win_size, self.num_heads
        d = c // heads
        plan = plans.get(ws, 0)
        qkv = self.qkv(self.norm1(x))  # [B, H*W, 3C]

        q = plan.gather(qkv[..., :c]).view(-1, ws * ws, heads, d).transpose(1, 2)  # [B * nW, heads, ws², d]
        # keys/values: zero-padded ows x ows windows at stride ws, as the official nn.Unfold takes them
        pad = (ows - ws) // 2
        kv = F.pad(qkv.view(b, h, w, 3 * c)[..., c:], (0, 0, pad, pad, pad, pad))
        del qkv  # q and kv are copies now; freeing it early lowers the peak memory of large tiles
        kv = kv.unfold(1, ows, ws).unfold(2, ows, ws)  # [B, nH, nW, 2C, ows, ows] view
        kv = kv.permute(0, 1, 2, 4, 5, 3).reshape(-1, ows * ows, 2, heads, d)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # [B * nW, heads, ows², d]
        if k.shape[0] != q.shape[0]:
            raise ValueError(f"OCAB: {h}x{w} map gives {k.shape[0]} key windows for {q.shape[0]} query windows "
                             f"(window {ws}, overlap window {ows})")
        out = window_attention(q, k, v, self.relative_position_bias_table, rpi, scale=self.scale)  # [B*nW, heads, ws², d]

        x = plan.scatter(self.proj(out.transpose(1, 2).reshape(b, h * w, c))) + x
        return x + self.mlp(self.norm2(x))


def _residual_conv(dim: int, resi_connection: str) -> nn.Module:
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "3conv":
        # SwinIR's lighter bottleneck, for checkpoints trained with it
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1))
    if resi_connection == "identity":
        return nn.Identity()
    raise ValueError(f"resi_connection must be '1conv', '3conv' or 'identity', got {resi_connection!r}")


class AttenBlocks(nn.Module):
    """The HABs of one RHAG (shift alternating 0 / ws/2), closed by one OCAB."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, compress_ratio, squeeze_factor,
                 conv_scale, overlap_ratio, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop, drop_path, norm_layer,
                 use_checkpoint):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList([
            HAB(dim, input_resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, compress_ratio,
                squeeze_factor, conv_scale, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop, drop_path[i], norm_layer)
            for i in range(depth)])
        self.overlap_attn = OCAB(dim, window_size, overlap_ratio, num_heads, qkv_bias, qk_scale, mlp_ratio,
                                 norm_layer)

    def forward(self, x, x_size, rpi_sa, rpi_oca, plans):
        for block in self.blocks:
            if self.use_checkpoint and self.training:
                x = checkpoint(block, x, x_size, rpi_sa, plans, use_reentrant=False)
            else:
                x = block(x, x_size, rpi_sa, plans)
        return self.overlap_attn(x, x_size, rpi_oca, plans)


class RHAG(nn.Module):
    """Residual hybrid attention group: attention blocks -> conv on the image layout -> + input."""

    def __init__(self, dim, resi_connection, **blocks_kwargs):
        super().__init__()
        self.residual_group = AttenBlocks(dim=dim, **blocks_kwargs)
        self.conv = _residual_conv(dim, resi_connection)

    def forward(self, x, x_size, rpi_sa, rpi_oca, plans):
        y = self.residual_group(x, x_size, rpi_sa, rpi_oca, plans)
        y = self.conv(_tokens_to_image(y, x_size))
        return y.flatten(2).transpose(1, 2) + x


class PatchEmbed(nn.Module):
    """[B, C, H, W] -> [B, H*W, C] tokens (one pixel per token), optionally normalised."""

    def __init__(self, embed_dim: int, norm_layer=None):
        super().__init__()
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x):
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


def _tokens_to_image(x: torch.Tensor, x_size) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], x_size[0], x_size[1])


class Upsample(nn.Sequential):
    """Conv + PixelShuffle stages: log2(scale) x2 stages for powers of two, one x3 stage for 3, none for 1."""

    def __init__(self, scale: int, num_feat: int):
        layers = []
        if scale >= 1 and scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"upscale {scale} is not supported: use 1, 3 or a power of two")
        super().__init__(*layers)


class HAT(nn.Module):
    """Hybrid Attention Transformer with the official constructor and state-dict layout.

    upscale 2/3/4/8 for super-resolution, 1 for restoration at the input size. Only the official
    'pixelshuffle' reconstruction is implemented.
    """

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6), window_size=7, compress_ratio=3, squeeze_factor=30, conv_scale=0.01,
                 overlap_ratio=0.5, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.1, norm_layer=nn.LayerNorm, ape=False, patch_norm=True, use_checkpoint=False,
                 upscale=2, img_range=1.0, upsampler="pixelshuffle", resi_connection="1conv"):
        super().__init__()
        if upsampler != "pixelshuffle":
            raise ValueError(f"HAT upsampler {upsampler!r} is not supported: only 'pixelshuffle' (official)")
        if len(depths) != len(num_heads):
            raise ValueError(f"HAT depths {list(depths)} and num_heads {list(num_heads)} must have the same length")
        self.window_size = window_size
        self.size_multiple = window_size
        self.shift_size = window_size // 2
        self.overlap_ratio = overlap_ratio
        self.upscale = upscale
        self.upsampler = upsampler
        self.img_range = img_range
        self.in_chans = in_chans
        self.out_chans = in_chans
        # plain attribute (not a buffer), as official: it must stay out of the state dict
        self.mean = torch.tensor(_RGB_MEAN).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1)

        # persistent, so they are the first two state-dict keys like the released checkpoints
        self.register_buffer("relative_position_index_SA", relative_position_index(window_size))
        self.register_buffer("relative_position_index_OCA", overlapping_relative_position_index(
            window_size, overlap_window_size(window_size, overlap_ratio)))
        self.register_load_state_dict_post_hook(_check_index_buffers)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)

        self.ape = ape
        self.patch_embed = PatchEmbed(embed_dim, norm_layer if patch_norm else None)
        resolution = (img_size // patch_size, img_size // patch_size)
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, resolution[0] * resolution[1], embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)

        total_depth = sum(depths)
        drop_path = [drop_path_rate * i / max(total_depth - 1, 1) for i in range(total_depth)]
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(RHAG(
                dim=embed_dim, resi_connection=resi_connection, input_resolution=resolution, depth=depth,
                num_heads=heads, window_size=window_size, compress_ratio=compress_ratio,
                squeeze_factor=squeeze_factor, conv_scale=conv_scale, overlap_ratio=overlap_ratio,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                attn_drop=attn_drop_rate, drop_path=drop_path[start:start + depth], norm_layer=norm_layer,
                use_checkpoint=use_checkpoint))
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = _residual_conv(embed_dim, resi_connection)

        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, _NUM_FEAT, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.upsample = Upsample(upscale, _NUM_FEAT)
        self.conv_last = nn.Conv2d(_NUM_FEAT, in_chans, 3, 1, 1)

        self.apply(init_transformer_weights)

    def forward_features(self, x):
        x_size = (x.shape[2], x.shape[3])
        plans = WindowPlans(x.shape[0], *x_size, device=x.device)
        x = self.patch_embed(x)
        if self.ape:
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        for layer in self.layers:
            x = layer(x, x_size, self.relative_position_index_SA, self.relative_position_index_OCA, plans)
        return _tokens_to_image(self.norm(x), x_size)

    def forward(self, x):
        h, w = x.shape[-2:]
        if h % self.window_size or w % self.window_size:
            raise ValueError(f"HAT input {h}x{w} must be a multiple of window_size={self.window_size}; "
                             "reflect-pad it first (backbones.hat.pad_to_multiple) and crop the output")
        mean = self.mean.to(x)
        # channels-last from the first convolution on: tokens and feature maps then share one memory layout
        x = ((x - mean) * self.img_range).contiguous(memory_format=torch.channels_last)
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        return (x / self.img_range + mean).contiguous()


def init_transformer_weights(module):
    """The Swin/ViT initialisation: truncated-normal (std 0.02) Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _check_index_buffers(model: HAT, incompatible_keys):
    """Loaded index buffers must equal the computed ones, or every attention bias would be silently wrong."""
    expected = {
        "relative_position_index_SA": lambda: relative_position_index(model.window_size),
        "relative_position_index_OCA": lambda: overlapping_relative_position_index(
            model.window_size, overlap_window_size(model.window_size, model.overlap_ratio)),
    }
    for name, compute in expected.items():
        loaded = getattr(model, name)
        if loaded.is_meta:
            continue
        if not torch.equal(loaded.cpu(), compute()):
            raise ValueError(f"state dict key {name!r} differs from the index computed for window_size="
                             f"{model.window_size}, overlap_ratio={model.overlap_ratio}: the checkpoint was "
                             "made for another window configuration or is corrupted")
