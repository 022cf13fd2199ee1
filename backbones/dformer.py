"""D-Former: a U-shaped transformer whose blocks alternate local and dilated 3D self-attention.

Re-implementation of "D-Former: A U-shaped Dilated Transformer for 3D Medical Image Segmentation" (Wu, Liao, Chen,
Wang, Chen, Gao, Wu; Neural Computing and Applications 2022, arXiv 2201.00462). The state dict (key names, order,
shapes; no buffers) equals that of ``SegNetwork`` in the only public code, ``kkk55596/D-Former`` ``model.py``
(commit dc3deb7, no licence, not confirmed to be what produced the paper's numbers). No checkpoint is released:
load a bare state dict. Attention runs through ``mtp.kernels.attention``.

Architecture, as in that file (``../shared/fixtures/dformer/README.md`` has the walk-through):

- patch embedding Conv3d(kernel = stride = patch_size) + LayerNorm; 4 encoder stages of width E * 2^i, each a
  PosCNN (depthwise 3x3x3 conv plus the identity, once per stage), then its blocks, then a PatchMerging (8
  strided sub-volumes concatenated W fastest, LayerNorm(8C), Linear(8C, 2C)) except after the last stage;
- blocks are pre-norm attention + MLP (4x, exact GELU). Even blocks of a stage attend inside non-overlapping
  ``group_size`` windows (LS-MSA; the normalised map is zero-padded at the far end and padded keys are masked);
  odd blocks attend in dilated groups (GS-MSA): with stride I = n // g per axis, the tokens whose coordinates
  agree mod I form one group of n // I tokens. There is no relative position bias and no shift;
- when a stage's feature height is below ``group_size[1]``, every block of it, LS or GS, attends over the whole
  volume in one window;
- the decoder mirrors the encoder: PatchExpand3D (Linear(C, 4C) split as (2, 2, 2, C/2), LayerNorm) on the
  normalised bottleneck, then for the three finer levels cat([decoder, skip]) -> Linear(2C, C) -> PosCNN ->
  blocks -> PatchExpand3D (not at the finest). The skip of a level is the *input* of the encoder stage there;
- heads ``final.j``: FinalPatchExpand_X4 (Linear(C, prod(patch) C) split as (p0, p1, p2, C), LayerNorm) and a
  bias-free 1x1x1 conv, on the 1/4, 1/2 and full token resolution decoder features (j = 2, 1, 0). Only the
  full-resolution map is LayerNorm'd (``norm_up``) before its head. Outputs are raw logits.

Reference behaviour kept, and the switches that change it (defaults are the reference's):

- ``head_channels=14``: the reference hard-codes 14 head channels and ignores ``num_classes``. ``None`` makes the
  heads ``num_classes`` wide (the only parameters that change are ``final.{0,1,2}.1.weight``).
- Deep supervision: with ``deep_supervision=True`` (default) and ``do_ds`` True, forward returns the tuple
  (full-resolution logits from ``final.0``, 1/2-resolution logits from ``final.1``), in train *and* eval mode,
  as the reference does; set ``model.do_ds = False`` (nnU-Net's switch) for the full-resolution tensor alone.
  ``final.2`` is built (its weights are in the state dict) but the reference throws its output away, so it gets
  no gradient; ``ds_outputs=3`` appends its 1/4-resolution logits to the tuple. Here it is not computed when
  it would be discarded (nothing numeric depends on it).
- Token embedding width: the reference's ``SegNetwork`` never passes ``embed_dim`` to its encoder, so only 96
  runs there; here ``embed_dim`` reaches the encoder (with 96 it is exactly the reference).
- ``interval_list`` ([8, 4, 2, 1] in the reference) only pads maps before dilated blocks, and never does so for
  inputs that satisfy the size rule, so it is not an argument here.
- The reference switches a block to whole-volume attention by overwriting the block's settings, so its choice
  sticks for later calls with other sizes. Here the choice is made on every call from the map's height: the
  same numbers for a model called at one size, but no dependence on earlier calls.
- Padded keys of a local window get -1e6 in the reference; here a boolean mask (-inf), the same in float32
  (exp(-1e6) underflows to 0, and every window holds a real token) and safe in half precision.
- Init: PyTorch's default layer init, as the reference without a pretrained 2-D Swin (whose inflation is not
  supported: ``pretrain`` must be None). LayerNorm eps is 1e-5 everywhere.

Input: [B, in_chan, D, H, W] with each spatial size a positive multiple of 8 x patch_size on its axis (16, 32, 32
with the default patch (2, 4, 4)): three patch mergings, and the decoder's x2 must meet the skip. A dilated
block outside the whole-volume case also needs, on each axis, n >= g and n divisible by n // g. Other sizes raise
``ValueError`` (the reference pads a size that is not a multiple of the patch and returns a larger output; here
such inputs are rejected).
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mtp.backbones.swinunetr import DropPath
from mtp.kernels import attention

MERGINGS = 3  # patch mergings in the encoder; the token grid must be a multiple of 2**3 on every axis
REFERENCE_HEAD_CHANNELS = 14
MERGE_OFFSETS = tuple(itertools.product((0, 1), repeat=3))  # (d, h, w) offsets, W fastest


def _triple(value, name: str) -> tuple:
    t = (value,) * 3 if isinstance(value, int) else tuple(value)
    if len(t) != 3 or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in t):
        raise ValueError(f"{name} must be a positive int or 3 of them (D, H, W), got {value!r}")
    return t


def group_tokens(x: torch.Tensor, outer: tuple, inner: tuple, dilated: bool) -> torch.Tensor:
    """[B, D, H, W, C] with each axis n = outer * inner -> [B, groups, tokens, C].

    Local (``dilated=False``): a group is one block of ``inner`` tokens, groups ordered by the block index (d, h, w
    major). Dilated: a group is every token with the same coordinate mod ``inner`` (coordinate = o * inner + i),
    groups ordered by the remainder i, tokens inside by the quotient o.
    """
    b, c = x.shape[0], x.shape[-1]
    x = x.reshape(b, outer[0], inner[0], outer[1], inner[1], outer[2], inner[2], c)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7) if dilated else x.permute(0, 1, 3, 5, 2, 4, 6, 7)
    groups, tokens = (math.prod(inner), math.prod(outer)) if dilated else (math.prod(outer), math.prod(inner))
    return x.reshape(b, groups, tokens, c)


def ungroup_tokens(x: torch.Tensor, outer: tuple, inner: tuple, dilated: bool) -> torch.Tensor:
    """Inverse of group_tokens: [B, groups, tokens, C] -> [B, D, H, W, C]."""
    b, c = x.shape[0], x.shape[-1]
    if dilated:
        x = x.reshape(b, inner[0], inner[1], inner[2], outer[0], outer[1], outer[2], c).permute(0, 4, 1, 5, 2, 6, 3, 7)
    else:
        x = x.reshape(b, outer[0], outer[1], outer[2], inner[0], inner[1], inner[2], c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, outer[0] * inner[0], outer[1] * inner[1], outer[2] * inner[2], c)


def stage_layout(size: tuple, group_size: tuple) -> tuple[bool, tuple]:
    """(whole_volume, group) for a map of ``size`` (D, H, W): the reference attends over the whole volume in one
    window when the height is below group_size[1] (only the height is tested)."""
    if size[1] < group_size[1]:
        return True, tuple(size)
    return False, group_size


def dilated_problem(size: tuple, group_size: tuple) -> str | None:
    """Why dilated groups of ``group_size`` cannot tile a map of ``size``, or None."""
    for axis, n, g in zip("DHW", size, group_size):
        if n < g:
            return f"{axis} = {n} is below group_size {g} on that axis"
        if n % (n // g):
            return f"{axis} = {n} is not divisible by its dilation stride {n} // {g} = {n // g}"
    return None


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()  # exact (erf) GELU
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention inside token groups [B, groups, N, C], no position bias."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, G, N, C]; keep: bool [G, N], False at padded keys (or None)."""
        b, g, n, c = x.shape
        qkv = self.qkv(x).view(b, g, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # [B, G, heads, N, hd]
        mask = keep[:, None, None, :] if keep is not None else None
        out = attention(q, k, v, mask=mask, scale=self.scale, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(2, 3).reshape(b, g, n, c)))


class DFormerBlock3D(nn.Module):
    """Pre-norm group attention and MLP on channels-last maps [B, D, H, W, C]; ``gsm`` 0 = local, 1 = dilated."""

    def __init__(self, dim, num_heads, group_size, gsm, mlp_ratio=4.0, qkv_bias=True, drop=0.0, attn_drop=0.0,
                 drop_path=0.0, use_checkpoint=False):
        super().__init__()
        self.group_size = group_size
        self.gsm = gsm
        self.use_checkpoint = use_checkpoint
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[1:4])
        whole, group = stage_layout(size, self.group_size)
        x = self.norm1(x)
        if self.gsm == 1 and not whole:  # dilated: stride n // g, n // stride tokens per group
            stride = tuple(n // g for n, g in zip(size, group))
            outer = tuple(n // s for n, s in zip(size, stride))
            out = self.attn(group_tokens(x, outer, stride, dilated=True))
            return ungroup_tokens(out, outer, stride, dilated=True)
        pad = tuple((-n) % g for n, g in zip(size, group))
        keep = None
        if any(pad):  # zeros after the norm, at the far end; padded keys masked, padded queries cropped
            x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
        outer = tuple(n // g for n, g in zip(x.shape[1:4], group))
        if any(pad):
            real = torch.zeros(x.shape[1:4], dtype=torch.bool, device=x.device)
            real[:size[0], :size[1], :size[2]] = True
            keep = group_tokens(real[None, ..., None], outer, group, dilated=False)[0, ..., 0]  # [G, N]
        out = ungroup_tokens(self.attn(group_tokens(x, outer, group, dilated=False), keep), outer, group,
                             dilated=False)
        return out[:, :size[0], :size[1], :size[2]] if any(pad) else out

    def forward(self, x):
        checkpointed = self.use_checkpoint and torch.is_grad_enabled()
        attended = checkpoint(self.attend, x, use_reentrant=False) if checkpointed else self.attend(x)
        x = x + self.drop_path(attended)
        mlp = (lambda t: self.drop_path(self.mlp(self.norm2(t))))
        return x + (checkpoint(mlp, x, use_reentrant=False) if checkpointed else mlp(x))


class PatchMerging(nn.Module):
    """[B, D, H, W, C] -> [B, D/2, H/2, W/2, 2C]: 8 strided sub-volumes (W fastest), LayerNorm(8C), Linear."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(8 * dim)

    def forward(self, x):
        x = torch.cat([x[:, d::2, h::2, w::2] for d, h, w in MERGE_OFFSETS], dim=-1)
        return self.reduction(self.norm(x))


def _unfold_channels(x: torch.Tensor, factors: tuple) -> torch.Tensor:
    """[B, D, H, W, (f0 f1 f2 c)] -> [B, D f0, H f1, W f2, c]."""
    b, d, h, w, channels = x.shape
    c = channels // math.prod(factors)
    x = x.reshape(b, d, h, w, *factors, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, d * factors[0], h * factors[1], w * factors[2], c)


class PatchExpand3D(nn.Module):
    """[B, D, H, W, C] -> [B, 2D, 2H, 2W, C/2]: Linear(C, 4C), channels split as (2, 2, 2, C/2), LayerNorm."""

    def __init__(self, dim: int):
        super().__init__()
        self.expand = nn.Linear(dim, 4 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x):
        return self.norm(_unfold_channels(self.expand(x), (2, 2, 2)))


class PosCNN(nn.Module):
    """Conditional position encoding on channels-last maps: x + depthwise Conv3d 3x3x3 (x)."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv3d(dim, dim, 3, 1, 1, bias=True, groups=dim))

    def forward(self, x):
        x = x.permute(0, 4, 1, 2, 3)
        return (self.proj(x) + x).permute(0, 2, 3, 4, 1)


def _blocks(dim, depth, num_heads, group_size, drop_path, **kwargs) -> nn.ModuleList:
    return nn.ModuleList([DFormerBlock3D(dim, num_heads, group_size, gsm=i % 2, drop_path=drop_path[i], **kwargs)
                          for i in range(depth)])


class BasicLayer(nn.Module):
    """Encoder stage on channels-first maps: PosCNN, blocks, PatchMerging (state dict: blocks, downsample,
    pos_block)."""

    def __init__(self, dim, depth, num_heads, group_size, drop_path, downsample: bool, **kwargs):
        super().__init__()
        self.blocks = _blocks(dim, depth, num_heads, group_size, drop_path, **kwargs)
        self.downsample = PatchMerging(dim) if downsample else None
        self.pos_block = PosCNN(dim)

    def forward(self, x):
        x = self.pos_block(x.permute(0, 2, 3, 4, 1))
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x.permute(0, 4, 1, 2, 3)


class BasicLayer_up(nn.Module):  # noqa: N801 (the reference's name)
    """Decoder stage on channels-last maps: PosCNN, blocks, PatchExpand3D (state dict in that order)."""

    def __init__(self, dim, depth, num_heads, group_size, drop_path, upsample: bool, **kwargs):
        super().__init__()
        self.blocks = _blocks(dim, depth, num_heads, group_size, drop_path, **kwargs)
        self.pos_block = PosCNN(dim)
        self.upsample = PatchExpand3D(dim) if upsample else None

    def forward(self, x):
        x = self.pos_block(x)
        for block in self.blocks:
            x = block(x)
        return self.upsample(x) if self.upsample is not None else x


class PatchEmbed3D(nn.Module):
    """Conv3d with kernel = stride = patch_size, then LayerNorm over channels; channels-first in and out."""

    def __init__(self, patch_size: tuple, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class DFormer3D(nn.Module):
    """Encoder and decoder (the reference's ``model_down``): returns the decoder features [1/4 (4E), 1/2 (2E),
    full token resolution (E, after ``norm_up``)], channels-last."""

    def __init__(self, patch_size, in_chans, embed_dim, depths, num_heads, group_size, mlp_ratio=4.0,
                 qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False):
        super().__init__()
        stages = len(depths)
        self.num_layers = stages
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        block_kwargs = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
                            use_checkpoint=use_checkpoint)

        def stage_rates(i):
            return rates[sum(depths[:i]):sum(depths[:i + 1])]

        self.layers = nn.ModuleList([
            BasicLayer(embed_dim * 2 ** i, depths[i], num_heads[i], group_size, stage_rates(i),
                       downsample=i < stages - 1, **block_kwargs) for i in range(stages)])
        self.layers_up = nn.ModuleList()
        self.concat_back_dim = nn.ModuleList()
        for i in range(stages):
            level = stages - 1 - i  # the encoder stage this decoder stage mirrors
            dim = embed_dim * 2 ** level
            if i == 0:
                self.layers_up.append(PatchExpand3D(dim))
                self.concat_back_dim.append(nn.Identity())
            else:
                self.layers_up.append(BasicLayer_up(dim, depths[level], num_heads[level], group_size,
                                                    stage_rates(level), upsample=i < stages - 1, **block_kwargs))
                self.concat_back_dim.append(nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(embed_dim * 2 ** (stages - 1))
        self.norm_up = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.pos_drop(self.patch_embed(x))
        skips = []
        for layer in self.layers:
            skips.append(x.permute(0, 2, 3, 4, 1))  # the stage's input, before its PosCNN
            x = layer(x)
        x = self.norm(x.permute(0, 2, 3, 4, 1))
        features = []
        for i, layer_up in enumerate(self.layers_up):
            if i > 0:
                x = self.concat_back_dim[i](torch.cat([x, skips[self.num_layers - 1 - i]], dim=-1))
            x = layer_up(x)
            if i < 2:
                features.append(x)
        features.append(self.norm_up(x))
        return features


class FinalPatchExpand_X4(nn.Module):  # noqa: N801 (the reference's name; it expands by the patch size)
    """[B, D, H, W, C] -> [B, C, p0 D, p1 H, p2 W]: Linear(C, prod(p) C) split as (p0, p1, p2, C), LayerNorm."""

    def __init__(self, dim: int, patch_size: tuple):
        super().__init__()
        self.patch_size = patch_size
        self.expand = nn.Linear(dim, math.prod(patch_size) * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(_unfold_channels(self.expand(x), self.patch_size)).permute(0, 4, 1, 2, 3)


class SegNetwork(nn.Module):
    """D-Former with the reference's names; see the module docstring for the defaults, switches and input rule."""

    def __init__(self, num_classes: int = 14, in_chan: int = 1, embed_dim: int = 96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24), patch_size=(2, 4, 4), group_size=(2, 8, 8), deep_supervision: bool = True,
                 pretrain=None, head_channels: int | None = REFERENCE_HEAD_CHANNELS, ds_outputs: int = 2,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, use_checkpoint: bool = False):
        super().__init__()
        depths, num_heads = tuple(depths), tuple(num_heads)
        patch_size, group_size = _triple(patch_size, "patch_size"), _triple(group_size, "group_size")
        head_channels = num_classes if head_channels is None else head_channels
        _check_config(num_classes, in_chan, embed_dim, depths, num_heads, head_channels, ds_outputs, pretrain,
                      (drop_rate, attn_drop_rate, drop_path_rate))
        self._deep_supervision = deep_supervision
        self.do_ds = deep_supervision
        self.num_classes = num_classes
        self.ds_outputs = ds_outputs
        self.in_channels, self.out_channels = in_chan, head_channels
        self.patch_size, self.group_size, self.depths = patch_size, group_size, depths
        self.size_multiples = tuple(p * 2 ** MERGINGS for p in patch_size)  # per axis (D, H, W)
        self.size_multiple = math.lcm(*self.size_multiples)
        self.model_down = DFormer3D(patch_size, in_chan, embed_dim, depths, num_heads, group_size, mlp_ratio,
                                    qkv_bias, drop_rate, attn_drop_rate, drop_path_rate, use_checkpoint)
        self.final = nn.ModuleList([
            nn.Sequential(FinalPatchExpand_X4(embed_dim * 2 ** i, patch_size),
                          nn.Conv3d(embed_dim * 2 ** i, head_channels, kernel_size=1, bias=False))
            for i in range(len(depths) - 1)])

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5:
            raise ValueError(f"D-Former expects volumes [B, C, D, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"D-Former was built for {self.in_channels} input channels (in_chan), got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        spatial = tuple(x.shape[2:])
        if any(n == 0 or n % m for n, m in zip(spatial, self.size_multiples)):
            raise ValueError(f"D-Former input spatial size {spatial} (D, H, W) must be a positive multiple of "
                             f"{self.size_multiples} (8 x patch_size {self.patch_size}: the patch embedding and "
                             f"{MERGINGS} patch mergings, whose x2 upsampling must meet the skips); pad or crop the "
                             f"volume, or use a sliding-window roi that is")
        tokens = tuple(n // p for n, p in zip(spatial, self.patch_size))
        for stage, depth in enumerate(self.depths):
            size = tuple(t // 2 ** stage for t in tokens)
            whole, _ = stage_layout(size, self.group_size)
            problem = None if whole or depth < 2 else dilated_problem(size, self.group_size)
            if problem:
                raise ValueError(f"D-Former input spatial size {spatial} gives a {size} map at stage {stage}, where "
                                 f"the dilated blocks of group_size {self.group_size} cannot group it: {problem}; "
                                 f"use another size (e.g. D, H, W all a multiple of "
                                 f"{tuple(m * g for m, g in zip(self.size_multiples, self.group_size))})")

    def forward(self, x: torch.Tensor):
        self.check_input(x)
        features = self.model_down(x)  # [1/4, 1/2, full] token resolution
        if not (self._deep_supervision and self.do_ds):
            return self.final[0](features[2])
        outputs = [self.final[0](features[2]), self.final[1](features[1])]
        if self.ds_outputs == 3:
            outputs.append(self.final[2](features[0]))
        return tuple(outputs)


def _check_config(num_classes, in_chan, embed_dim, depths, num_heads, head_channels, ds_outputs, pretrain, rates):
    for name, value in (("num_classes", num_classes), ("in_chan", in_chan), ("embed_dim", embed_dim),
                        ("head_channels", head_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if len(depths) != MERGINGS + 1 or len(num_heads) != MERGINGS + 1:
        raise ValueError(f"depths and num_heads need {MERGINGS + 1} entries (one per stage), got {depths} and "
                         f"{num_heads}")
    if any(not isinstance(d, int) or d < 0 for d in depths):
        raise ValueError(f"depths must be non-negative ints, got {depths}")
    for i, heads in enumerate(num_heads):
        if not isinstance(heads, int) or heads < 1 or (embed_dim * 2 ** i) % heads:
            raise ValueError(f"stage {i} width {embed_dim * 2 ** i} is not divisible by num_heads {heads}")
    if ds_outputs not in (2, 3):
        raise ValueError(f"ds_outputs must be 2 (the reference: final.0, final.1) or 3 (adds final.2), got "
                         f"{ds_outputs!r}")
    if pretrain is not None:
        raise ValueError("pretrain: inflating a 2-D Swin checkpoint is not supported (the paper trains from "
                         "scratch); build with pretrain=None and load a D-Former state dict")
    if any(not 0.0 <= r < 1.0 for r in rates):
        raise ValueError(f"drop_rate, attn_drop_rate and drop_path_rate must be in [0, 1), got {rates}")
