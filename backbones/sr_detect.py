"""Recognise a super-resolution architecture and its hyper-parameters from a state dict alone.

`detect(state_dict)` returns an :class:`SRArchitecture` (name, variant, scale, constructor kwargs, size
multiple, channels); `build(arch)` constructs the matching model, ready for a strict `load_state_dict`.
The state dict must be the bare model weights: take `params_ema` / strip `module.` before calling.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from mtp.backbones.hat import HAT, HAT_VARIANTS, overlap_window_size
from mtp.backbones.imdn import IMDN


@dataclass
class SRArchitecture:
    name: str  # "hat" | "imdn"
    variant: str | None  # a HAT_VARIANTS key when the hyper-parameters match one, else None
    scale: int
    kwargs: dict = field(default_factory=dict)  # constructor kwargs for build()
    size_multiple: int = 1  # input height/width must be a multiple of this (pad, run, crop)
    in_channels: int = 3
    out_channels: int = 3

    @property
    def backbone(self) -> str:
        """The registered backbone name these weights fit (a HAT variant, or the family)."""
        return self.variant or self.name

    @property
    def tasks(self) -> tuple:
        """What the weights are for follows from the scale: x1 models restore, x2-x4 upscale."""
        return ("super_resolution",) if self.scale > 1 else ("denoising", "jpeg_restoration")


def _shape(state_dict: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return tuple(state_dict[key].shape)


def _ratio(dim: int, reduced: int, what: str) -> int:
    """Invert the official `dim // ratio == reduced`, as an exact integer."""
    ratio = dim // reduced
    if ratio < 1 or dim // ratio != reduced:
        raise ValueError(f"cannot infer {what}: {dim} channels reduced to {reduced} is no integer ratio")
    return ratio


def _count_indexed(keys, pattern: str) -> int:
    """Number of distinct integers captured by `pattern` (e.g. blocks of one layer)."""
    indices = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    if indices and indices != set(range(len(indices))) and indices != set(range(1, len(indices) + 1)):
        raise ValueError(f"non-contiguous indices {sorted(indices)} for keys matching {pattern!r}")
    return len(indices)


def _pixelshuffle_scale(state_dict, prefix: str, num_feat: int) -> int:
    """Scale of the official Upsample stack: conv(4*num_feat)+shuffle(2) per x2 stage, or one conv(9*num_feat)."""
    stages = [key for key in state_dict if re.fullmatch(rf"{re.escape(prefix)}\.\d+\.weight", key)]
    if not stages:
        return 1
    widths = [_shape(state_dict, key)[0] for key in sorted(stages, key=lambda k: int(k.split(".")[-2]))]
    if all(width == 4 * num_feat for width in widths):
        return 2 ** len(widths)
    if widths == [9 * num_feat]:
        return 3
    raise ValueError(f"unrecognised upsampler widths {widths} under '{prefix}' for {num_feat} features")


def _detect_hat(sd) -> SRArchitecture:
    embed_dim, in_chans = _shape(sd, "conv_first.weight")[:2]
    num_layers = _count_indexed(sd, r"layers\.(\d+)\.")
    depths = [_count_indexed(sd, rf"layers\.{i}\.residual_group\.blocks\.(\d+)\.") for i in range(num_layers)]
    num_heads = [_shape(sd, f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table")[1]
                 for i in range(num_layers)]

    block = "layers.0.residual_group.blocks.0."
    if "relative_position_index_SA" in sd:
        window_size = math.isqrt(_shape(sd, "relative_position_index_SA")[0])
    else:  # (2ws-1)² table; differs from window_size only if the official small-image shrink applied
        window_size = (math.isqrt(_shape(sd, block + "attn.relative_position_bias_table")[0]) + 1) // 2
    if "relative_position_index_OCA" in sd:
        overlap_size = math.isqrt(_shape(sd, "relative_position_index_OCA")[1])
    else:  # OCAB table side is ws + ows - 1
        ocab_table = _shape(sd, "layers.0.residual_group.overlap_attn.relative_position_bias_table")[0]
        overlap_size = math.isqrt(ocab_table) + 1 - window_size
    overlap_ratio = (overlap_size - window_size) / window_size
    if overlap_window_size(window_size, overlap_ratio) != overlap_size:
        raise ValueError(f"HAT overlap window {overlap_size} is inconsistent with window_size {window_size}")

    compress_ratio = _ratio(embed_dim, _shape(sd, block + "conv_block.cab.0.weight")[0], "HAT compress_ratio")
    squeeze_factor = _ratio(embed_dim, _shape(sd, block + "conv_block.cab.3.attention.1.weight")[0],
                            "HAT squeeze_factor")
    mlp_ratio = _shape(sd, block + "mlp.fc1.weight")[0] / embed_dim
    if "layers.0.conv.weight" in sd:
        resi_connection = "1conv"
    elif "layers.0.conv.0.weight" in sd:
        resi_connection = "3conv"
    else:
        resi_connection = "identity"
    num_feat = _shape(sd, "conv_before_upsample.0.weight")[0]
    scale = _pixelshuffle_scale(sd, "upsample", num_feat)

    kwargs = dict(
        upscale=scale, in_chans=in_chans, img_size=64, window_size=window_size, compress_ratio=compress_ratio,
        squeeze_factor=squeeze_factor, conv_scale=0.01, overlap_ratio=overlap_ratio, img_range=1.0,
        depths=depths, embed_dim=embed_dim, num_heads=num_heads,
        mlp_ratio=int(mlp_ratio) if mlp_ratio.is_integer() else mlp_ratio,
        upsampler="pixelshuffle", resi_connection=resi_connection,
        qkv_bias=f"{block}attn.qkv.bias" in sd, patch_norm="patch_embed.norm.weight" in sd,
    )
    block_window = (math.isqrt(_shape(sd, block + "attn.relative_position_bias_table")[0]) + 1) // 2
    if block_window < window_size:  # official HAB shrinks its window to img_size when img_size <= window_size
        kwargs["img_size"] = block_window
    if "absolute_pos_embed" in sd:  # its token count fixes the (only usable) input size
        kwargs.update(ape=True, img_size=math.isqrt(_shape(sd, "absolute_pos_embed")[1]))
    variant = next((name for name, preset in HAT_VARIANTS.items()
                    if all(kwargs.get(key) == value for key, value in preset.items())), None)
    return SRArchitecture("hat", variant, scale, kwargs, size_multiple=window_size,
                          in_channels=in_chans, out_channels=in_chans)


def _detect_imdn(sd) -> SRArchitecture:
    nf, in_nc = _shape(sd, "fea_conv.weight")[:2]
    num_modules = _count_indexed(sd, r"IMDB(\d+)\.")
    shuffle_channels = _shape(sd, "upsampler.0.weight")[0]
    out_nc = in_nc  # the released models map RGB to RGB; out_nc * scale² is all the weights reveal
    scale = math.isqrt(shuffle_channels // out_nc)
    if out_nc * scale * scale != shuffle_channels:
        raise ValueError(f"IMDN upsampler.0 has {shuffle_channels} output channels: not {out_nc} x scale²")
    kwargs = dict(in_nc=in_nc, nf=nf, num_modules=num_modules, out_nc=out_nc, upscale=scale)
    return SRArchitecture("imdn", None, scale, kwargs, size_multiple=IMDN.size_multiple,
                          in_channels=in_nc, out_channels=out_nc)


# name -> (keys that must all be present, detector, model class)
_ARCHITECTURES = {
    "hat": (("conv_first.weight", "layers.0.residual_group.overlap_attn.relative_position_bias_table",
             "conv_before_upsample.0.weight"), _detect_hat, HAT),
    "imdn": (("fea_conv.weight", "IMDB1.c1.weight", "IMDB1.cca.conv_du.0.weight", "upsampler.0.weight"),
             _detect_imdn, IMDN),
}


def detect(state_dict: Mapping[str, torch.Tensor]) -> SRArchitecture:
    """Identify the SR architecture and its constructor kwargs from the keys and shapes of `state_dict`."""
    for name, (required, detector, _) in _ARCHITECTURES.items():
        if all(key in state_dict for key in required):
            return detector(state_dict)
    keys = list(state_dict)
    hint = ""
    if keys and all(k.startswith("module.") for k in keys):
        hint = " (all keys start with 'module.': strip that prefix first)"
    elif any(k in ("params", "params_ema", "state_dict", "model") for k in keys):
        hint = " (this looks like a checkpoint wrapper: pass the inner state dict, e.g. 'params_ema')"
    raise ValueError(f"unrecognised super-resolution state dict: tried {', '.join(_ARCHITECTURES)}; "
                     f"{len(keys)} keys, first ones {keys[:5]}{hint}")


def build(arch: SRArchitecture) -> nn.Module:
    """Construct the (randomly initialised) model that `arch` describes."""
    if arch.name not in _ARCHITECTURES:
        raise ValueError(f"unknown SR architecture {arch.name!r}; known: {', '.join(_ARCHITECTURES)}")
    from mtp.registry import construct

    return construct(_ARCHITECTURES[arch.name][2], **arch.kwargs)
