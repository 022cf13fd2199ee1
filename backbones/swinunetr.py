"""SwinUNETR: a 3D Swin transformer encoder with a convolutional U-Net decoder, for volumetric segmentation.

Re-implementation of "Swin UNETR: Swin Transformers for Semantic Segmentation of Brain Tumors in MRI Images"
(Hatamizadeh et al., BrainLes 2021) whose state dict (key names, order, shapes, the eight int64
``relative_position_index`` buffers) equals MONAI's ``SwinUNETR``, so the released BraTS 2021 and BTCV
checkpoints load strictly. (Shifted-)window attention goes through ``mtp.kernels.window_attention``: the bias
table is read through its index and shifted windows get region ids, never a materialised [nW, N, N] mask.

Numerics follow MONAI's model, including what a careful re-implementation would change:

- ``patch_merging`` picks the order in which the 8 strided sub-volumes are concatenated before
  ``LayerNorm(8C)`` + ``Linear(8C, 2C)``. ``"legacy"`` (the default) is MONAI <= 1.4's order, with two
  sub-volumes repeated and two never used; every released BraTS/BTCV checkpoint was trained with it, so it is
  the one that runs them as trained. ``"merging"`` is MONAI >= 1.5's ``downsample="merging"`` (each
  sub-volume once); ``"mergingv2"`` is MONAI's ``"mergingv2"``. All three load the same weights.
- A window covering a whole axis shrinks to that axis and stops shifting there (per axis); the bias is then
  read through the top-left ``[:n, :n]`` corner of the full window's index, as MONAI does.
- Tokens padded to a multiple of the window are zeros after ``norm1`` and take part in attention unmasked.
- Only odd blocks of a stage are shifted; their mask (-100 across regions) is built on the padded size.

Input: [B, in_channels, D, H, W] with every spatial axis a multiple of ``patch_size * 16`` (32 for the
released models: the patch embedding and four patch mergings each halve it) and more than one voxel in the
1/32 bottleneck (instance norm needs two); other sizes raise ``ValueError``. Output: raw logits
[B, out_channels, D, H, W]. Larger or odd-sized volumes run in sliding windows whose roi meets the rule.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mtp.backbones.hat import init_transformer_weights  # the same Swin initialisation
from mtp.kernels import relative_position_index, window_attention, window_region_ids

# (d, h, w) offset of each strided sub-volume, in concatenation order
PATCH_MERGING_ORDERS = {
    "legacy": ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1)),
    "merging": ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)),
    "mergingv2": tuple(itertools.product((0, 1), repeat=3)),
}
MERGINGS = 4  # every stage, the last included, ends with a patch merging


def window_partition(x: torch.Tensor, window: tuple) -> torch.Tensor:
    """[B, D, H, W, C] -> [B * nW, wd * wh * ww, C]; windows batch-major, then d-major over the window grid."""
    b, d, h, w, c = x.shape
    wd, wh, ww = window
    x = x.view(b, d // wd, wd, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(-1, wd * wh * ww, c)


def window_reverse(windows: torch.Tensor, window: tuple, size: tuple) -> torch.Tensor:
    """Inverse of window_partition: [B * nW, N, C] -> [B, D, H, W, C] for size (B, D, H, W)."""
    b, d, h, w = size
    wd, wh, ww = window
    x = windows.view(b, d // wd, h // wh, w // ww, wd, wh, ww, -1).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, d, h, w, -1)


def stage_window(size: tuple, window: tuple, shift: tuple) -> tuple[tuple, tuple]:
    """Window and shift used on a map of `size`: an axis no longer than the window takes the axis length as
    window and is not shifted (MONAI's get_window_size)."""
    used_window = tuple(n if n <= w else w for n, w in zip(size, window))
    used_shift = tuple(0 if n <= w else s for n, w, s in zip(size, window, shift))
    return used_window, used_shift


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's whole residual branch while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside 3D windows with a learned relative-position bias (MONAI's names)."""

    def __init__(self, dim: int, num_heads: int, window_size: tuple, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(math.prod(2 * w - 1 for w in window_size), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(tuple(window_size)))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, region_ids: torch.Tensor | None) -> torch.Tensor:
        """x: [B * nW, N, C] window tokens; region_ids: [nW, N] for shifted windows, else None."""
        windows, n, c = x.shape
        qkv = self.qkv(x).view(windows, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # a shrunk window reads the corner of the full window's index, as the released models were trained
        out = window_attention(q, k, v, self.relative_position_bias_table, self.relative_position_index[:n, :n],
                               shift_mask=region_ids, scale=self.scale,
                               dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(windows, n, c)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.drop1 = nn.Dropout(drop)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.linear2(self.drop1(F.gelu(self.linear1(x)))))


class SwinTransformerBlock3D(nn.Module):
    """Pre-norm (shifted-)window attention and MLP on channels-last maps [B, D, H, W, C]."""

    def __init__(self, dim, num_heads, window_size, mlp_ratio, qkv_bias, drop, attn_drop, drop_path,
                 use_checkpoint):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, num_heads, window_size, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def attend(self, x, window, shift, region_ids):
        b, d, h, w, _ = x.shape
        x = self.norm1(x)
        pad = [(-n) % size for n, size in zip((d, h, w), window)]
        if any(pad):  # zeros after the norm: they attend and are attended to, then are cropped
            x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
        if any(shift):
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        size = x.shape[:4]
        x = window_reverse(self.attn(window_partition(x, window), region_ids), window, size)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :d, :h, :w] if any(pad) else x

    def forward(self, x, window, shift, region_ids):
        checkpointed = self.use_checkpoint and torch.is_grad_enabled()
        if checkpointed:
            attended = checkpoint(self.attend, x, window, shift, region_ids, use_reentrant=False)
        else:
            attended = self.attend(x, window, shift, region_ids)
        x = x + self.drop_path(attended)
        mlp = (lambda t: self.drop_path(self.mlp(self.norm2(t))))
        return x + (checkpoint(mlp, x, use_reentrant=False) if checkpointed else mlp(x))


class PatchMerging(nn.Module):
    """Concatenate the 8 strided sub-volumes in `order` (PATCH_MERGING_ORDERS), LayerNorm(8C), Linear(8C, 2C)."""

    def __init__(self, dim: int, order: str):
        super().__init__()
        self.offsets = PATCH_MERGING_ORDERS[order]
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(8 * dim)

    def forward(self, x):
        d, h, w = x.shape[1:4]
        if d % 2 or h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        x = torch.cat([x[:, i::2, j::2, k::2] for i, j, k in self.offsets], dim=-1)
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    """One stage: `depth` blocks (odd ones shifted by half a window), then a patch merging."""

    def __init__(self, dim, depth, num_heads, window_size, drop_path, patch_merging, **block_kwargs):
        super().__init__()
        self.window_size = window_size
        self.shift_size = tuple(w // 2 for w in window_size)
        self.blocks = nn.ModuleList([
            SwinTransformerBlock3D(dim, num_heads, window_size, drop_path=drop_path[i], **block_kwargs)
            for i in range(depth)])
        self.downsample = PatchMerging(dim, patch_merging)

    def forward(self, x):
        size = tuple(x.shape[1:4])
        window, shift = stage_window(size, self.window_size, self.shift_size)
        region_ids = None
        if any(shift):  # one set of regions per stage, on the padded size
            padded = tuple(math.ceil(n / w) * w for n, w in zip(size, window))
            region_ids = window_region_ids(padded, window, shift, device=x.device)
        for i, block in enumerate(self.blocks):
            if i % 2 and region_ids is not None:
                x = block(x, window, shift, region_ids)
            else:
                x = block(x, window, (0, 0, 0), None)
        return self.downsample(x)


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x)


class SwinTransformer3D(nn.Module):
    """The encoder (MONAI's ``swinViT``): five hidden states, the patch embedding's and each stage's."""

    def __init__(self, in_channels, feature_size, depths, num_heads, window_size, patch_size, mlp_ratio,
                 qkv_bias, drop_rate, attn_drop_rate, dropout_path_rate, use_checkpoint, patch_merging):
        super().__init__()
        self.patch_embed = PatchEmbed(in_channels, feature_size, patch_size)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, dropout_path_rate, sum(depths), device="cpu").tolist()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            stage = BasicLayer(feature_size * 2 ** i, depth, heads, window_size, rates[start:start + depth],
                               patch_merging, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                               attn_drop=attn_drop_rate, use_checkpoint=use_checkpoint)
            self.add_module(f"layers{i + 1}", nn.ModuleList([stage]))

    def stages(self):
        return [getattr(self, f"layers{i + 1}")[0] for i in range(MERGINGS)]

    def forward(self, x: torch.Tensor, normalize: bool = True) -> list[torch.Tensor]:
        x = self.pos_drop(self.patch_embed(x)).permute(0, 2, 3, 4, 1)  # channels-last from here on
        hidden = [x]
        for stage in self.stages():
            x = stage(x)
            hidden.append(x)
        # the parameter-free norm applies only to what leaves the encoder; the next stage reads raw features
        if normalize:
            hidden = [F.layer_norm(h, h.shape[-1:]) for h in hidden]
        return [h.permute(0, 4, 1, 2, 3) for h in hidden]


class Conv(nn.Module):
    """A bias-free (or not) 3D (transposed) convolution under MONAI's ``.conv`` key."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, bias=False, transposed=False):
        super().__init__()
        if transposed:
            self.conv = nn.ConvTranspose3d(in_channels, out_channels, kernel_size, stride, bias=bias)
        else:
            self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2,
                                  bias=bias)

    def forward(self, x):
        return self.conv(x)


def _instance_norm(x):
    return F.instance_norm(x, eps=1e-5)  # affine-free, no running statistics, also in eval()


class ResBlock(nn.Module):
    """conv3-IN-LeakyReLU-conv3-IN plus the input (projected by conv1x1-IN when channels change), LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = Conv(in_channels, out_channels, 3)
        self.conv2 = Conv(out_channels, out_channels, 3)
        self.conv3 = Conv(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x):
        out = _instance_norm(self.conv2(F.leaky_relu(_instance_norm(self.conv1(x)), 0.01)))
        residual = x if self.conv3 is None else _instance_norm(self.conv3(x))
        return F.leaky_relu(out + residual, 0.01)


class EncoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.layer = ResBlock(in_channels, out_channels)

    def forward(self, x):
        return self.layer(x)


class DecoderBlock(nn.Module):
    """Transposed conv x2, then the residual block on cat(upsampled, skip)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.transp_conv = Conv(in_channels, out_channels, 2, stride=2, transposed=True)
        self.conv_block = ResBlock(2 * out_channels, out_channels)

    def forward(self, x, skip):
        return self.conv_block(torch.cat((self.transp_conv(x), skip), dim=1))


class OutBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = Conv(in_channels, out_channels, 1, bias=True)

    def forward(self, x):
        return self.conv(x)


class SwinUNETR(nn.Module):
    """SwinUNETR with MONAI's state-dict layout; see the module docstring for the input rule and the switch."""

    def __init__(self, in_channels: int = 4, out_channels: int = 3, feature_size: int = 48,
                 depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), window_size=7, patch_size: int = 2,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, dropout_path_rate: float = 0.0, normalize: bool = True,
                 use_checkpoint: bool = False, patch_merging: str = "legacy"):
        super().__init__()
        depths, num_heads = tuple(depths), tuple(num_heads)
        window = (window_size,) * 3 if isinstance(window_size, int) else tuple(window_size)
        _check_config(in_channels, out_channels, feature_size, depths, num_heads, window, patch_size,
                      (drop_rate, attn_drop_rate, dropout_path_rate), patch_merging)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.window_size, self.patch_size, self.normalize = window, patch_size, normalize
        self.patch_merging = patch_merging
        self.size_multiple = patch_size * 2 ** MERGINGS
        fs = feature_size
        self.swinViT = SwinTransformer3D(in_channels, fs, depths, num_heads, window, patch_size, mlp_ratio,
                                         qkv_bias, drop_rate, attn_drop_rate, dropout_path_rate, use_checkpoint,
                                         patch_merging)
        self.encoder1 = EncoderBlock(in_channels, fs)
        self.encoder2 = EncoderBlock(fs, fs)
        self.encoder3 = EncoderBlock(2 * fs, 2 * fs)
        self.encoder4 = EncoderBlock(4 * fs, 4 * fs)
        self.encoder10 = EncoderBlock(16 * fs, 16 * fs)
        self.decoder5 = DecoderBlock(16 * fs, 8 * fs)
        self.decoder4 = DecoderBlock(8 * fs, 4 * fs)
        self.decoder3 = DecoderBlock(4 * fs, 2 * fs)
        self.decoder2 = DecoderBlock(2 * fs, fs)
        self.decoder1 = DecoderBlock(fs, fs)
        self.out = OutBlock(fs, out_channels)
        self.apply(init_transformer_weights)
        self.register_load_state_dict_post_hook(_check_index_buffers)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5:
            raise ValueError(f"SwinUNETR expects volumes [B, C, D, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"SwinUNETR was built for {self.in_channels} input channels, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        spatial, m = tuple(x.shape[2:]), self.size_multiple
        if any(n == 0 or n % m for n in spatial):
            raise ValueError(f"SwinUNETR input spatial size {spatial} must be a positive multiple of {m} on every "
                             f"axis (patch_size {self.patch_size} x {MERGINGS} patch mergings); pad the volume or "
                             f"use a sliding-window roi that is")
        if math.prod(n // m for n in spatial) < 2:
            raise ValueError(f"SwinUNETR input spatial size {spatial} leaves a single voxel at 1/{m}, where "
                             f"instance norm needs at least two; use e.g. ({m}, {m}, {2 * m})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        hidden = self.swinViT(x, self.normalize)
        enc0 = self.encoder1(x)  # the raw input, not a transformer feature
        enc1 = self.encoder2(hidden[0])
        enc2 = self.encoder3(hidden[1])
        enc3 = self.encoder4(hidden[2])
        dec4 = self.encoder10(hidden[4])
        dec3 = self.decoder5(dec4, hidden[3])  # hidden state 3 is a skip without an encoder block
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        return self.out(self.decoder1(dec0, enc0))


def _check_config(in_channels, out_channels, feature_size, depths, num_heads, window, patch_size, rates,
                  patch_merging):
    if patch_merging not in PATCH_MERGING_ORDERS:
        raise ValueError(f"patch_merging must be one of {sorted(PATCH_MERGING_ORDERS)}, got {patch_merging!r} "
                         "('legacy' runs the released BraTS/BTCV checkpoints as trained)")
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("patch_size", patch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(feature_size, int) or feature_size < 12 or feature_size % 12:
        raise ValueError(f"feature_size must be a positive multiple of 12, got {feature_size!r}")
    if len(depths) != MERGINGS or len(num_heads) != MERGINGS:
        raise ValueError(f"depths and num_heads need {MERGINGS} entries (one per stage), got {depths} and "
                         f"{num_heads}")
    for i, heads in enumerate(num_heads):
        if heads < 1 or (feature_size * 2 ** i) % heads:
            raise ValueError(f"stage {i + 1} width {feature_size * 2 ** i} is not divisible by num_heads {heads}")
    if len(window) != 3 or any(not isinstance(w, int) or w < 1 for w in window):
        raise ValueError(f"window_size must be a positive int or 3 of them, got {window!r}")
    if any(not 0.0 <= r < 1.0 for r in rates):
        raise ValueError(f"drop_rate, attn_drop_rate and dropout_path_rate must be in [0, 1), got {rates}")


def _check_index_buffers(model: SwinUNETR, incompatible_keys):
    """A loaded index must be the one computed for the window, or every attention bias would be silently off."""
    expected = relative_position_index(model.window_size)
    for name, buffer in model.named_buffers():
        if name.endswith("relative_position_index") and not buffer.is_meta and \
                not torch.equal(buffer.cpu(), expected):
            raise ValueError(f"state dict key {name!r} differs from the index computed for window_size="
                             f"{model.window_size}: the checkpoint was made for another window or is corrupted")
