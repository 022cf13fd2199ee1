"""Submanifold sparse 3D convolution in plain torch (spconv 2.x's SubMConv3d semantics, no spconv).

A sparse tensor is integer voxel coordinates [N, 4] = (batch, x, y, z) with features [N, C_in]. A submanifold
convolution outputs at exactly the input voxels; each kernel tap reads the neighbour voxel at that offset, and a
missing neighbour counts as zero. Like spconv (and F.conv3d) it is a cross-correlation: tap (a, b, c) of a
kernel (kx, ky, kz) reads the voxel at (x + a - kx // 2, y + b - ky // 2, z + c - kz // 2) in the same batch.

Weights use spconv 2.x's stored layout [C_out, kx, ky, kz, C_in / groups], so spconv checkpoints load as they
are. Odd kernel sizes only (as spconv's submanifold conv). Grouped convolution (depthwise: groups = C_in =
C_out, weight [C, kx, ky, kz, 1]) follows F.conv3d's channel grouping.

Fast path (`submanifold_conv3d`): coordinates are encoded into int64 keys, sorted once, and every tap's
neighbours are found with torch.searchsorted (`submanifold_neighbours`); then per tap gather -> matmul ->
index_add, the centre tap first as spconv does (its result then matches spconv's bit for bit on ConDaFormer's
reference fixture). The neighbour map depends only on the coordinates and kernel size, so a stack of convolutions on
the same voxels can build it once and pass it in. Reference (`submanifold_conv3d_reference`): scatter into a
dense grid, F.conv3d, read back at the active voxels; memory grows with the bounding box, so it is for tests.

Not here: spconv's 1x1 quirk (spconv 2.x computes a 1x1x1 SubMConv3d as features @ W.reshape(C_in, C_out), a
reshape and not a transpose of the stored [C_out, 1, 1, 1, C_in] weight; spconv issue #450). That is a
property of checkpoints trained through spconv, so the backbone that needs it applies it
(mtp.backbones.condaformer); this kernel computes the mathematically correct convolution for every size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_coords(fn: str, coords: torch.Tensor) -> None:
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"{fn}: coords must be [N, 4] (batch, x, y, z), got shape {tuple(coords.shape)}")
    if coords.dtype.is_floating_point or coords.dtype == torch.bool or coords.is_complex():
        raise ValueError(f"{fn}: coords must be an integer tensor, got {coords.dtype}")
    if coords.numel() and int(coords.min()) < 0:
        raise ValueError(f"{fn}: coords must be non-negative (batch first, then x, y, z voxel indices)")


def _check_kernel(fn: str, weight: torch.Tensor, in_channels: int, groups: int) -> tuple[int, int, int]:
    if weight.dim() != 5:
        raise ValueError(f"{fn}: weight must be [C_out, kx, ky, kz, C_in/groups] (spconv layout), "
                         f"got shape {tuple(weight.shape)}")
    c_out, kx, ky, kz, c_in_g = weight.shape
    if any(k % 2 == 0 for k in (kx, ky, kz)):
        raise ValueError(f"{fn}: submanifold kernel sizes must be odd, got {(kx, ky, kz)}")
    if groups < 1 or in_channels % groups or c_out % groups or c_in_g * groups != in_channels:
        raise ValueError(f"{fn}: weight {tuple(weight.shape)} with groups={groups} does not fit "
                         f"{in_channels} input channels")
    return kx, ky, kz


def _check_features(fn: str, features: torch.Tensor, coords: torch.Tensor) -> None:
    if features.dim() != 2 or features.shape[0] != coords.shape[0]:
        raise ValueError(f"{fn}: features must be [N, C_in] with N = {coords.shape[0]} rows of coords, "
                         f"got shape {tuple(features.shape)}")


def kernel_offsets(kernel_size: tuple[int, int, int], device=None) -> torch.Tensor:
    """Offsets [kx*ky*kz, 3] of the taps in spconv's weight order (x slowest, z fastest)."""
    axes = [torch.arange(k, device=device) - k // 2 for k in kernel_size]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def submanifold_neighbours(coords: torch.Tensor, kernel_size: int | tuple[int, int, int]) -> torch.Tensor:
    """Neighbour map [K, N] (long): entry [t, i] is the row of the voxel that tap t of voxel i reads, or -1.

    Duplicate coordinates are a ValueError (spconv would silently produce wrong sums). Rows may be in any
    order: the map follows the rows given.
    """
    _check_coords("submanifold_neighbours", coords)
    if isinstance(kernel_size, int):
        kernel_size = (kernel_size,) * 3
    if any(k % 2 == 0 or k < 1 for k in kernel_size):
        raise ValueError(f"submanifold_neighbours: kernel sizes must be odd and positive, got {kernel_size}")
    coords = coords.long()
    n = coords.shape[0]
    offsets = kernel_offsets(kernel_size, coords.device)
    if n == 0:
        return torch.empty(offsets.shape[0], 0, dtype=torch.long, device=coords.device)
    # Pad each spatial axis by the kernel radius so that every neighbour key is unique and non-negative.
    pad = torch.tensor([0] + [k // 2 for k in kernel_size], device=coords.device)
    span = coords.max(0).values + 2 * pad + 1
    if float(torch.log2(span.double()).sum()) >= 62:
        raise ValueError("submanifold_neighbours: coordinate range too large for int64 keys")
    strides = torch.stack([span[1] * span[2] * span[3], span[2] * span[3], span[3], torch.ones_like(span[3])])
    keys = ((coords + pad) * strides).sum(1)
    sorted_keys, order = torch.sort(keys)
    if n > 1 and bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
        first = int((sorted_keys[1:] == sorted_keys[:-1]).nonzero()[0, 0])
        raise ValueError(f"submanifold_neighbours: duplicate voxel coordinate {coords[order[first]].tolist()} "
                         f"(rows {int(order[first])} and {int(order[first + 1])}); merge duplicates first")
    offset_keys = (offsets * strides[1:]).sum(1)
    wanted = keys[None, :] + offset_keys[:, None]
    pos = torch.searchsorted(sorted_keys, wanted).clamp_(max=n - 1)
    found = sorted_keys[pos] == wanted
    return torch.where(found, order[pos], torch.full_like(pos, -1))


def submanifold_conv3d(features: torch.Tensor, coords: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None = None, groups: int = 1,
                       neighbours: torch.Tensor | None = None) -> torch.Tensor:
    """Submanifold convolution -> [N, C_out]: features [N, C_in], coords [N, 4], weight [C_out, kx, ky, kz, C_in/g].

    `neighbours` is an optional precomputed `submanifold_neighbours(coords, weight's kernel size)`.
    """
    _check_coords("submanifold_conv3d", coords)
    _check_features("submanifold_conv3d", features, coords)
    kernel = _check_kernel("submanifold_conv3d", weight, features.shape[1], groups)
    if neighbours is None:
        neighbours = submanifold_neighbours(coords, kernel)
    elif neighbours.shape != (kernel[0] * kernel[1] * kernel[2], coords.shape[0]):
        raise ValueError(f"submanifold_conv3d: neighbours must be [K, N] = "
                         f"{(kernel[0] * kernel[1] * kernel[2], coords.shape[0])}, got {tuple(neighbours.shape)}")
    c_out, c_in_g = weight.shape[0], weight.shape[-1]
    # [K, groups, C_out/g, C_in/g]: tap-major, so tap t is one matrix (per group)
    taps = weight.reshape(c_out, -1, c_in_g).permute(1, 0, 2).reshape(-1, groups, c_out // groups, c_in_g)
    n = features.shape[0]
    out = features.new_zeros(n, c_out)
    grouped_in = features.reshape(n, groups, c_in_g)
    centre = taps.shape[0] // 2
    # the centre tap first, then the others in weight order: spconv's order, so the float sums round alike
    for t in [centre] + [t for t in range(taps.shape[0]) if t != centre]:
        src = neighbours[t]
        if bool((src >= 0).all()):
            contrib = torch.einsum("ngi,goi->ngo", grouped_in[src], taps[t]) if groups > 1 else \
                features[src] @ taps[t, 0].t()
            out += contrib.reshape(n, c_out)
            continue
        dst = (src >= 0).nonzero().squeeze(1)
        if dst.numel() == 0:
            continue
        gathered = grouped_in[src[dst]]
        contrib = torch.einsum("ngi,goi->ngo", gathered, taps[t]) if groups > 1 else \
            gathered[:, 0] @ taps[t, 0].t()
        out.index_add_(0, dst, contrib.reshape(-1, c_out))
    if bias is not None:
        out = out + bias
    return out


def submanifold_conv3d_reference(features: torch.Tensor, coords: torch.Tensor, weight: torch.Tensor,
                                 bias: torch.Tensor | None = None, groups: int = 1) -> torch.Tensor:
    """Dense reference of `submanifold_conv3d`: scatter into a [B, C, X, Y, Z] grid, F.conv3d, read back."""
    _check_coords("submanifold_conv3d_reference", coords)
    _check_features("submanifold_conv3d_reference", features, coords)
    kernel = _check_kernel("submanifold_conv3d_reference", weight, features.shape[1], groups)
    coords = coords.long()
    if torch.unique(coords, dim=0).shape[0] != coords.shape[0]:
        raise ValueError("submanifold_conv3d_reference: duplicate voxel coordinates")
    shape = (coords.max(0).values + 1).tolist()
    grid = features.new_zeros(shape[0], features.shape[1], *shape[1:])
    b, x, y, z = coords.unbind(1)
    grid[b, :, x, y, z] = features
    dense = F.conv3d(grid, weight.permute(0, 4, 1, 2, 3), bias, padding=tuple(k // 2 for k in kernel), groups=groups)
    return dense[b, :, x, y, z]
