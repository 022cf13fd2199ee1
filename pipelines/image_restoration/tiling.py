"""Memory-bounded inference for image-to-image networks: overlapping tiles and x8 self-ensemble.

Tiles overlap by ``overlap`` input pixels. Each tile's output is weighted by a window that is
zero over the outer quarter of the overlap (where the tile's own border corrupts the result),
rises smoothly (sin^2) over the middle half, and is one elsewhere; image borders are not
down-weighted. The weighted outputs are normalised by the summed weights, so a network whose
receptive-field radius is below ``overlap / 4`` input pixels gives the same result tiled as whole.
Tiles form a full grid and each window is a product of a row and a column profile, so the summed
weights are a product too: two 1-D sums stand in for an image-sized weight map.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Forward = Callable[[torch.Tensor], torch.Tensor]


def _pad_to_multiple(x: torch.Tensor, multiple: int, pad_mode: str) -> torch.Tensor:
    """Pad bottom/right so height and width are multiples of ``multiple``."""
    height, width = x.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = pad_mode
    # Reflection needs a pad smaller than the side; fall back to edge replication for tiny inputs.
    if mode == "reflect" and (pad_h >= height or pad_w >= width):
        mode = "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _call(fn: Forward, x: torch.Tensor, scale: int) -> torch.Tensor:
    y = fn(x)
    expected = (x.shape[-2] * scale, x.shape[-1] * scale)
    if y.dim() != 4 or y.shape[0] != x.shape[0] or tuple(y.shape[-2:]) != expected:
        raise ValueError(f"tiled_forward: fn mapped input {tuple(x.shape)} to {tuple(y.shape)}; "
                         f"expected [B, C', H*{scale}, W*{scale}]")
    return y


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering [0, length): stride tile - overlap, last tile flush with the end."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _edge_ramp(length: int, overlap_out: int, fade_start: bool, fade_end: bool,
               device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """1-D blending weights of one tile along one axis, in output pixels."""
    weights = torch.ones(length, device=device, dtype=dtype)
    if overlap_out == 0:
        return weights
    # Distance of each pixel centre from the tile edge; zero weight for the outer quarter of the
    # overlap, sin^2 rise across the middle half.
    distance = torch.arange(length, device=device, dtype=dtype) + 0.5
    margin, rise = overlap_out / 4.0, overlap_out / 2.0

    def ramp(d: torch.Tensor) -> torch.Tensor:
        return torch.sin(0.5 * math.pi * ((d - margin) / rise).clamp(0.0, 1.0)) ** 2

    if fade_start:
        weights = weights * ramp(distance)
    if fade_end:
        weights = weights * ramp(length - distance)
    return weights


def tiled_forward(fn: Forward, x: torch.Tensor, scale: int, tile: int | None = None, overlap: int = 16,
                  size_multiple: int = 1, pad_mode: str = "reflect") -> torch.Tensor:
    """Apply an image-to-image network ``fn`` tile by tile and blend the tiles seamlessly.

    Args:
        fn: maps [B, C, h, w] to [B, C', h*scale, w*scale] (e.g. a model in eval mode).
        x: [B, C, H, W] float tensor.
        scale: output/input size ratio of ``fn`` (1 for denoising/deblocking).
        tile: tile side in input pixels; None (or an image no larger than it) runs ``fn`` once.
        overlap: input pixels shared by neighbouring tiles; keep it at least 4x the network's
            receptive-field radius for seamless output.
        size_multiple: the image is padded (bottom/right) to a multiple of this and the tile side
            rounded down to one, so every call of ``fn`` gets such sizes (window-attention models
            need their window size); the output is cropped back.
        pad_mode: ``F.pad`` mode for that padding ("reflect" like BasicSR/HAT, or "replicate").

    Returns:
        [B, C', H*scale, W*scale] tensor on ``x``'s device.
    """
    if x.dim() != 4 or not torch.is_floating_point(x):
        raise ValueError(f"tiled_forward: x must be a float [B, C, H, W] tensor, got {x.dtype} {tuple(x.shape)}")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"tiled_forward: scale must be a positive int, got {scale!r}")
    if size_multiple < 1:
        raise ValueError(f"tiled_forward: size_multiple must be >= 1, got {size_multiple}")
    if pad_mode not in ("reflect", "replicate", "constant", "circular"):
        raise ValueError(f"tiled_forward: unknown pad_mode {pad_mode!r}")
    height, width = x.shape[-2:]
    # Pad the whole image once: tiles at the image border then see the same padding as an
    # untiled run, and with tile sides that are multiples of size_multiple no tile needs more.
    x = _pad_to_multiple(x, size_multiple, pad_mode)
    padded_h, padded_w = x.shape[-2:]
    if tile is None or (padded_h <= tile and padded_w <= tile):
        return _call(fn, x, scale)[..., : height * scale, : width * scale]
    tile -= tile % size_multiple
    if overlap < 0 or tile <= overlap:
        raise ValueError(f"tiled_forward: need 0 <= overlap < tile (tile rounded down to a multiple of "
                         f"size_multiple={size_multiple}), got overlap={overlap}, tile={tile}")

    output = row_sum = col_sum = None
    tops, lefts = _tile_starts(padded_h, tile, overlap), _tile_starts(padded_w, tile, overlap)
    for top in tops:
        for left in lefts:
            bottom, right = min(top + tile, padded_h), min(left + tile, padded_w)
            y = _call(fn, x[..., top:bottom, left:right], scale)
            if output is None:
                output = y.new_zeros((y.shape[0], y.shape[1], padded_h * scale, padded_w * scale))
                row_sum = y.new_zeros(padded_h * scale)
                col_sum = y.new_zeros(padded_w * scale)
            # Only edges that touch another tile fade out; image borders keep full weight.
            w_rows = _edge_ramp(y.shape[-2], overlap * scale, top > 0, bottom < padded_h, y.device, y.dtype)
            w_cols = _edge_ramp(y.shape[-1], overlap * scale, left > 0, right < padded_w, y.device, y.dtype)
            rows, cols = slice(top * scale, bottom * scale), slice(left * scale, right * scale)
            output[..., rows, cols].addcmul_(y, w_rows[:, None] * w_cols[None, :])
            if left == lefts[0]:
                row_sum[rows] += w_rows
            if top == tops[0]:
                col_sum[cols] += w_cols
    # in place: at 8192 x 8192 output another image-sized float tensor would be 800 MB
    output.div_(row_sum[:, None]).div_(col_sum)
    return output[..., : height * scale, : width * scale]


def choose_tile_size(memory_budget_bytes: float, bytes_per_pixel_estimate: float, size_multiple: int = 1) -> int:
    """Largest square tile (input pixels per side, a multiple of ``size_multiple``) within a memory budget.

    ``bytes_per_pixel_estimate`` is the peak memory the network needs per *input* pixel of a tile
    (activations of the widest layer, times batch), e.g. measured once on a small tile.
    """
    if memory_budget_bytes <= 0 or bytes_per_pixel_estimate <= 0:
        raise ValueError(f"choose_tile_size: budget and bytes per pixel must be positive, got "
                         f"{memory_budget_bytes} and {bytes_per_pixel_estimate}")
    if size_multiple < 1:
        raise ValueError(f"choose_tile_size: size_multiple must be >= 1, got {size_multiple}")
    side = int(math.isqrt(int(memory_budget_bytes // bytes_per_pixel_estimate)))
    side -= side % size_multiple
    if side < size_multiple:
        raise ValueError(f"choose_tile_size: a budget of {memory_budget_bytes} bytes at {bytes_per_pixel_estimate} "
                         f"bytes/pixel does not fit even one {size_multiple}x{size_multiple} tile")
    return side


def _dihedral(x: torch.Tensor, index: int) -> torch.Tensor:
    """The index-th of the 8 flips/rotations of the last two dims (0 is the identity)."""
    if index >= 4:
        x = x.flip(-1)
    return torch.rot90(x, index % 4, dims=(-2, -1))


def _dihedral_inverse(x: torch.Tensor, index: int) -> torch.Tensor:
    x = torch.rot90(x, -(index % 4), dims=(-2, -1))
    if index >= 4:
        x = x.flip(-1)
    return x


def self_ensemble(fn: Forward, x: torch.Tensor) -> torch.Tensor:
    """x8 geometric self-ensemble: average of fn over all flips/90-degree rotations, each undone."""
    if x.dim() != 4:
        raise ValueError(f"self_ensemble: x must be [B, C, H, W], got {tuple(x.shape)}")
    total = None
    for index in range(8):
        y = _dihedral_inverse(fn(_dihedral(x, index)), index)
        total = y if total is None else total + y
    return total / 8
