"""ConDaFormer (Duan et al., "ConDaFormer: Disassembled Transformer with Local Structure Enhancement for 3D Point
Cloud Understanding", NeurIPS 2023): a sparse-voxel U-Net whose stages are disassembled window-attention blocks.

Official code: LHDuan/ConDaFormer (built on Pointcept/PointTransformerV2, package `pcr`), commit
1fa596e3a571d4961c092ce1aea15d5d4ef4fa64 (same model code as e0ce7dbb "first commit"):
pcr/models/condaformer/{condaformer,modules,utils}.py, libs/sptr, and libs/spconv/conv.py (its spconv patch).
State-dict names, order and shapes are the official ones, so its checkpoints load with strict=True
(`load_condaformer_checkpoint` reads the training checkpoint layout).

Layers
- stem: submanifold 3x3x3 conv (in -> base, no bias) + BatchNorm + LeakyReLU(0.2), then a residual BasicBlock
  (two 3x3x3 convs with BN, LeakyReLU(0.2), identity residual), on the pipeline's voxel indices.
- Grid_Pool k (k = 1..stages): LayerNorm + bias-free Linear per point, then cells of 2^k base voxels from the
  origin, per cloud: max of the features, count-weighted mean of the positions (the centroid of every original
  voxel in the cell), summed counts; ordered by (batch, z, y, x) cell; next sparse indices floor(xyz / 2^k).
- Block (pre-norm): x + attn(LN(x)), then + MLP(LN(x)) (hidden 4C, exact GELU); LayerNorm eps 1e-6.
- Attention: local structure enhancement (LSE) concat[BN(conv1x1(x)), BN(Linear(GELU(BN(dwconv3(x)))))] ->
  qkv -> heads = C / head_dim split into three plane groups (xy windows [w, w, 1], xz [w, 1, w], yz [1, w, w])
  with shared contextual relative tables q/k/v_table [2*qgl-1, 3, heads/3, head_dim]
  (mtp.kernels.sparse_window_attention) -> the same LSE structure with its own weights (conv_1_post,
  conv_3_post) -> proj. Odd blocks of a stage shift the windows by w/2 on every axis.
- Grid_Unpool: LN + Linear on the coarse features and on the skip; skip + 3-NN inverse-distance interpolation
  (weights 1 / (d + 1e-8), d Euclidean, same cloud, nearest first).
- Head: Linear -> BN -> ReLU -> Linear per voxel, gathered to the raw points through `inverse`.

Input: the official data dict. `coord` [N, 3] metric voxel positions, `discrete_coord` [N, 3] integer voxel
indices, `feat` [N, in_channels], `offset` [B] cumulative end index of each cloud (no leading 0), and optionally
`inverse` [R] (each raw point's voxel index inside its own cloud) with `length` [B] (raw points per cloud); the
output is logits per raw point [R, out_channels] when `inverse` is given, else per voxel [N, out_channels].

Deviations from the official code
- The forward does not mutate its input. The official forward edits `coord`, `discrete_coord` and `inverse` in
  place (its per-cloud normalisation and the offset added to `inverse`), so calling it twice on one dict
  shifts `inverse` twice; here they are copied first.
- No spconv, sptr or pointops: the submanifold convolutions are mtp.kernels.sparse_conv (plain torch), the
  attention mtp.kernels.sparse_window_attention, the kNN mtp.kernels.knn. The numerics follow the originals:
  spconv's 1x1x1 SubMConv3d computes features @ W.reshape(C_in, C_out) on the stored [C_out, 1, 1, 1, C_in]
  weight (a reshape, not a transpose; spconv issue #450) and is reproduced as such, because the official
  weights were trained through it; the depthwise convs are the patched conv.py's identity-masked dense ones.
- Under autocast (AMP training) the 3x3x3 submanifold convolutions run in float32; spconv casts their inputs to
  float16 (custom_fwd(cast_inputs=torch.float16)).
- BasicBlock has only the identity shortcut: the official one is only built with equal in/out channels
  (base -> base in the stem), so its 1x1 projection branch never exists in a checkpoint.
- A cloud with fewer than 3 coarse points interpolates from the points it has (pointops pads the missing
  neighbours with a 1e10 distance, i.e. a ~1e-10 weight).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from mtp.backbones.swinunetr import DropPath  # per-row stochastic depth, as timm's on [N, C]
from mtp.kernels import knn
from mtp.kernels.sparse_conv import submanifold_conv3d, submanifold_neighbours
from mtp.kernels.sparse_window_attention import sparse_window_attention, window_partition, window_quantise

LN_EPS = 1e-6
BN_EPS = 1e-5


class Voxels:
    """The active voxels [N, 4] (batch, x, y, z) of one level, with their neighbour maps built once per kernel."""

    def __init__(self, coords: torch.Tensor):
        self.coords = coords
        self._neighbours: dict[int, torch.Tensor] = {}

    def neighbours(self, kernel_size: int) -> torch.Tensor:
        if kernel_size not in self._neighbours:
            self._neighbours[kernel_size] = submanifold_neighbours(self.coords, kernel_size)
        return self._neighbours[kernel_size]


class SubMConv3d(nn.Module):
    """spconv.SubMConv3d without bias: weight [C_out, k, k, k, C_in/groups] (spconv 2.x layout)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1):
        super().__init__()
        if kernel_size == 1 and groups != 1:
            raise ValueError("SubMConv3d: a 1x1x1 conv must have groups=1")
        self.groups = groups
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, kernel_size, kernel_size, kernel_size,
                                               in_channels // groups))
        # spconv's default init (bound 1/sqrt(fan_in)); grouped convs get the official re-init over C_out * k^3
        fan = (in_channels // groups if groups == 1 else out_channels) * kernel_size ** 3
        bound = 1.0 / math.sqrt(fan)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, voxels: Voxels) -> torch.Tensor:
        if self.kernel_size == 1:
            # spconv's 1x1 path reads the stored weight as [C_in, C_out] (see the module docstring)
            return x @ self.weight.reshape(x.shape[1], -1)
        if torch.is_autocast_enabled(x.device.type):
            # under AMP the kernel's per-tap products would be half and its accumulator float: run it in float32
            with torch.autocast(x.device.type, enabled=False):
                return submanifold_conv3d(x.float(), voxels.coords, self.weight.float(), groups=self.groups,
                                          neighbours=voxels.neighbours(self.kernel_size))
        return submanifold_conv3d(x, voxels.coords, self.weight, groups=self.groups,
                                  neighbours=voxels.neighbours(self.kernel_size))


class SparseSequential(nn.Sequential):
    """spconv.SparseSequential on (features, voxels): sparse modules get the voxels, the others features only."""

    def forward(self, x: torch.Tensor, voxels: Voxels) -> torch.Tensor:
        for module in self:
            x = module(x, voxels) if isinstance(module, (SubMConv3d, BasicBlock)) else module(x)
        return x


class BasicBlock(nn.Module):
    """Residual block of two submanifold 3x3x3 convs with BatchNorm and LeakyReLU(0.2), identity shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        # spconv.SparseSequential(nn.Identity()) in the official code: no parameters, so no state-dict entry
        self.proj = nn.Sequential(nn.Identity())
        self.conv1 = SubMConv3d(channels, channels, 3)
        self.bn1 = nn.BatchNorm1d(channels, eps=BN_EPS)
        self.relu = nn.LeakyReLU(negative_slope=0.2)
        self.conv2 = SubMConv3d(channels, channels, 3)
        self.bn2 = nn.BatchNorm1d(channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor, voxels: Voxels) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x, voxels)))
        out = self.bn2(self.conv2(out, voxels))
        return self.relu(out + self.proj(x))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _lse(dim: int) -> tuple[SparseSequential, SparseSequential]:
    """The two LSE branches: 1x1 conv + BN (C/2), and depthwise 3x3x3 conv + BN + GELU + Linear + BN (C/2)."""
    conv_1 = SparseSequential(SubMConv3d(dim, dim // 2, 1), nn.BatchNorm1d(dim // 2, eps=BN_EPS))
    conv_3 = SparseSequential(SubMConv3d(dim, dim, 3, groups=dim), nn.BatchNorm1d(dim, eps=BN_EPS), nn.GELU(),
                              nn.Linear(dim, dim // 2), nn.BatchNorm1d(dim // 2, eps=BN_EPS))
    return conv_1, conv_3


class WindowAttention(nn.Module):
    """Disassembled (xy / xz / yz plane) window attention with local structure enhancement before and after."""

    def __init__(self, dim: int, num_heads: int, window_size: float, quant_size: float, shift: bool):
        super().__init__()
        if num_heads % 3:
            raise ValueError(f"ConDaFormer: heads ({num_heads} = {dim} / head_dim) must be divisible by 3")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.shift = shift
        self.quant_grid_length = int((window_size + 1e-4) / quant_size)
        # [w, w, 1], [w, 1, w], [1, w, w]: the three planes, float32 as the official numpy arrays
        planes = torch.full((3, 3), float(window_size))
        planes[0, 2] = planes[1, 1] = planes[2, 0] = 1.0
        self.register_buffer("plane_windows", planes, persistent=False)
        self.register_buffer("quant_size", torch.full((3,), float(quant_size)), persistent=False)
        table = (2 * self.quant_grid_length - 1, 3, num_heads // 3, self.head_dim)
        self.q_table = nn.Parameter(nn.init.trunc_normal_(torch.zeros(table), std=0.02))
        self.k_table = nn.Parameter(nn.init.trunc_normal_(torch.zeros(table), std=0.02))
        self.v_table = nn.Parameter(nn.init.trunc_normal_(torch.zeros(table), std=0.02))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.conv_1, self.conv_3 = _lse(dim)
        self.conv_1_post, self.conv_3_post = _lse(dim)

    def forward(self, x: torch.Tensor, voxels: Voxels, xyz: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        n, c = x.shape
        x = torch.cat([self.conv_1(x, voxels), self.conv_3(x, voxels)], dim=1)
        q, k, v = self.qkv(x).reshape(n, 3, self.num_heads, self.head_dim).unbind(1)
        q = q * self.scale
        # the attention runs in float32 even under autocast, as sptr's CUDA ops
        q, k, v = q.float(), k.float(), v.float()
        group = self.num_heads // 3
        outs = []
        for p in range(3):
            heads = slice(p * group, (p + 1) * group)
            window = self.plane_windows[p]
            ids = window_partition(xyz, batch, window, self.shift)
            quant = window_quantise(xyz, window, self.quant_size, self.shift)
            outs.append(sparse_window_attention(q[:, heads], k[:, heads], v[:, heads], ids, quant,
                                                self.q_table.float(), self.k_table.float(), self.v_table.float()))
        x = torch.cat(outs, dim=1).reshape(n, c)
        x = torch.cat([self.conv_1_post(x, voxels), self.conv_3_post(x, voxels)], dim=1)
        return self.proj(x)


class Block(nn.Module):
    """BasicBlock_Attention: pre-norm attention and MLP residuals."""

    def __init__(self, dim: int, head_dim: int, window_size: float, quant_size: float, shift: bool,
                 drop_path: float, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = WindowAttention(dim, dim // head_dim, window_size, quant_size, shift)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, voxels: Voxels, xyz: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), voxels, xyz, batch))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Level:
    """One resolution: features, sparse voxels, positions (base-voxel units), counts and cloud ids."""

    def __init__(self, feat: torch.Tensor, voxels: Voxels, xyz: torch.Tensor, count: torch.Tensor,
                 batch: torch.Tensor):
        self.feat, self.voxels, self.xyz, self.count, self.batch = feat, voxels, xyz, count, batch


class GridPool(nn.Module):
    """Grid_Pool: LN + Linear per point, then max-pool into cells of 2^k base voxels (see module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, level: int):
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels, bias=False)
        self.norm = nn.LayerNorm(in_channels, eps=LN_EPS)
        self.stride = 2 ** level

    def forward(self, level: Level) -> tuple[Level, torch.Tensor]:
        """-> (pooled level, parent index [N_fine] of each finer point)."""
        feat = self.linear(self.norm(level.feat))
        xyz, batch = level.xyz, level.batch.long()
        cell = (xyz / float(self.stride)).long()  # positions are >= 0: truncation is floor
        extent = cell.max(0).values + 1
        key = ((batch * extent[2] + cell[:, 2]) * extent[1] + cell[:, 1]) * extent[0] + cell[:, 0]
        unique, parent, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
        m = unique.shape[0]
        # the official torch.sort (not stable): the same order within a cell gives bit-identical centroid sums
        order = torch.sort(parent).indices
        grouped = parent[order]
        count = level.count.new_zeros(m, 1).index_add_(0, grouped, level.count[order]).clamp_(min=1)
        xyz_sum = xyz.new_zeros(m, 3).index_add_(0, grouped, (xyz * level.count)[order])
        xyz_next = xyz_sum / count
        feat_next = feat.new_zeros(m, feat.shape[1]).scatter_reduce_(
            0, grouped[:, None].expand(-1, feat.shape[1]), feat[order], "amax", include_self=False)
        batch_next = unique // (extent[0] * extent[1] * extent[2])
        index = torch.div(xyz_next, self.stride, rounding_mode="floor").int()
        voxels = Voxels(torch.cat([batch_next[:, None].int(), index], dim=1))
        return Level(feat_next, voxels, xyz_next, count, batch_next), parent


class GridUnpool(nn.Module):
    """Grid_Unpool: projected skip + 3-NN inverse-distance interpolation of the projected coarse features."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_channels, eps=LN_EPS), nn.Linear(in_channels, out_channels))
        self.proj_skip = nn.Sequential(nn.LayerNorm(skip_channels, eps=LN_EPS),
                                       nn.Linear(skip_channels, out_channels))

    def forward(self, coarse: torch.Tensor, coarse_level: Level, skip: torch.Tensor, skip_level: Level) -> torch.Tensor:
        coarse = self.proj(coarse)
        out = self.proj_skip(skip)
        interp = torch.zeros_like(out)
        for b in torch.unique(skip_level.batch).tolist():
            fine = (skip_level.batch == b).nonzero().squeeze(1)
            src = (coarse_level.batch == b).nonzero().squeeze(1)
            k = min(3, src.shape[0])
            idx, d2 = knn(skip_level.xyz[fine][None], coarse_level.xyz[src][None], k)
            recip = 1.0 / (d2[0].sqrt() + 1e-8)
            weight = recip / recip.sum(1, keepdim=True)
            acc = torch.zeros(fine.shape[0], coarse.shape[1], dtype=coarse.dtype, device=coarse.device)
            for i in range(k):  # nearest first, as pointops accumulates
                acc = acc + coarse[src[idx[0, :, i]]] * weight[:, i:i + 1]
            interp = interp.index_copy(0, fine, acc)
        return out + interp


def offset_to_batch(offset: torch.Tensor) -> torch.Tensor:
    """Cloud id [N] of each point from cumulative end offsets [B]."""
    counts = torch.diff(offset.long(), prepend=offset.new_zeros(1).long())
    return torch.repeat_interleave(torch.arange(offset.shape[0], device=offset.device), counts)


class ConDaFormer(nn.Module):
    """ConDaFormer (official `ConDaFormer-v1m1`): len(layers) // 2 encoder stages, as many decoder levels.

    `channels`/`layers` list the encoder stages then the decoder levels (coarse to fine). Defaults are the
    official class defaults; the released ScanNet config is channels (96, 192, 384, 384, 384, 192, 96, 48),
    layers (2, 2, 6, 2, 0, 0, 0, 0), voxel_size 0.02, window_size 10.
    """

    # tells the point-cloud pipeline to voxelise clouds into the official data dict (not [B, N, 3] crops)
    input_format = "voxel_dict"

    def __init__(self, in_channels: int, out_channels: int, voxel_size: float = 0.04, window_size: float = 4,
                 quant_size: float = 0.25, base_channels: int = 48, head_dim: int = 16,
                 drop_path_rate: float = 0.3,
                 channels: Sequence[int] = (48, 96, 192, 384, 384, 192, 96, 48),
                 layers: Sequence[int] = (3, 9, 3, 3, 0, 0, 0, 0)):
        super().__init__()
        if len(layers) % 2 or len(layers) != len(channels) or not layers:
            raise ValueError(f"ConDaFormer: channels {tuple(channels)} and layers {tuple(layers)} must have the "
                             "same, even, non-zero length")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.voxel_size = voxel_size
        self.num_stages = stages = len(layers) // 2
        channels, layers = list(channels), list(layers)
        enc_rates = torch.linspace(0, drop_path_rate, sum(layers[:stages]), device="cpu").tolist()
        dec_rates = torch.linspace(0, drop_path_rate, sum(layers[stages:]), device="cpu").tolist()

        def blocks(dim: int, count: int, rates: list[float]) -> nn.ModuleList:
            return nn.ModuleList([Block(dim, head_dim, window_size, quant_size, shift=i % 2 == 1,
                                        drop_path=rates[i]) for i in range(count)])

        self.stem = SparseSequential(SubMConv3d(in_channels, base_channels, 3),
                                     nn.BatchNorm1d(base_channels, eps=BN_EPS),
                                     nn.LeakyReLU(negative_slope=0.2),
                                     BasicBlock(base_channels))
        # registration order is the official one: pool1, block1, pool2, ..., unpool1, block{S+1}, ..., final
        done = 0
        for s in range(stages):
            self.add_module(f"pool{s + 1}", GridPool(base_channels if s == 0 else channels[s - 1], channels[s], s + 1))
            self.add_module(f"block{s + 1}", blocks(channels[s], layers[s], enc_rates[done:done + layers[s]]))
            done += layers[s]
        last = sum(layers[stages:]) - 1
        for j in range(stages):
            skip = channels[stages - j - 2] if j < stages - 1 else base_channels
            self.add_module(f"unpool{j + 1}", GridUnpool(channels[stages + j - 1], skip, channels[stages + j]))
            count = layers[stages + j]
            # the decoder's rates run backwards, as the official cur_dps bookkeeping
            self.add_module(f"block{stages + j + 1}",
                            blocks(channels[stages + j], count, [dec_rates[last - i] for i in range(count)]))
            last -= count
        self.final = nn.Sequential(nn.Linear(channels[-1], channels[-1]), nn.BatchNorm1d(channels[-1]),
                                   nn.ReLU(inplace=True), nn.Linear(channels[-1], out_channels))

    def normalise(self, coord: torch.Tensor, discrete_coord: torch.Tensor, batch: torch.Tensor,
                  num_clouds: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per cloud: positions in voxel units aligned to the voxel grid, voxel indices from 0 (no mutation).

        Same float32 operations in the same order as the official forward, so points on pooling-cell borders
        land in the same cell.
        """
        coord, discrete_coord = coord.clone(), discrete_coord.clone()
        for b in range(num_clouds):
            rows = (batch == b).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            c, d = coord[rows], discrete_coord[rows]
            c = c - c.min(0).values
            c = c / self.voxel_size
            d = d - d.min(0).values
            c = c - torch.min(c - d, dim=0).values
            coord[rows], discrete_coord[rows] = c, d
        return coord, discrete_coord

    def forward_features(self, data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-voxel logits plus the intermediates: stem_out, pool{k}_{feat,xyz,count,batch,indices,parent},
        stage{k}_out, encoder_out, coord_normalized, logits_voxel."""
        batch = offset_to_batch(data["offset"])
        coord, discrete = self.normalise(data["coord"], data["discrete_coord"], batch, data["offset"].shape[0])
        voxels = Voxels(torch.cat([batch[:, None].int(), discrete.int()], dim=1))
        record: dict[str, torch.Tensor] = {"coord_normalized": coord}
        level = Level(self.stem(data["feat"], voxels), voxels, coord,
                      torch.ones(coord.shape[0], 1, dtype=coord.dtype, device=coord.device), batch)
        record["stem_out"] = level.feat
        levels = [level]
        for s in range(1, self.num_stages + 1):
            level, parent = getattr(self, f"pool{s}")(level)
            record.update({f"pool{s}_feat": level.feat, f"pool{s}_xyz": level.xyz, f"pool{s}_count": level.count,
                           f"pool{s}_batch": level.batch, f"pool{s}_indices": level.voxels.coords.long(),
                           f"pool{s}_parent": parent})
            level.feat = self._run_blocks(getattr(self, f"block{s}"), level, s)
            record[f"stage{s}_out"] = level.feat
            levels.append(level)
        record["encoder_out"] = level.feat
        out = level.feat
        for j in range(1, self.num_stages + 1):
            fine = levels[self.num_stages - j]
            out = getattr(self, f"unpool{j}")(out, levels[self.num_stages - j + 1], fine.feat, fine)
            stage = self.num_stages - j
            out = self._run_blocks(getattr(self, f"block{self.num_stages + j}"),
                                   Level(out, fine.voxels, fine.xyz, fine.count, fine.batch), stage)
        record["logits_voxel"] = self.final(out)
        return record

    @staticmethod
    def _run_blocks(blocks: nn.ModuleList, level: Level, stage: int) -> torch.Tensor:
        x = level.feat
        xyz = level.xyz / float(2 ** stage)  # attention works in the stage's own voxel units
        for block in blocks:
            x = block(x, level.voxels, xyz, level.batch)
        return x

    def forward(self, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Logits per raw point [R, out_channels] if data has `inverse` (+ `length`), else per voxel.

        The input dict and its tensors are left unchanged (the official forward edits coord, discrete_coord and
        inverse in place).
        """
        logits = self.forward_features(data)["logits_voxel"]
        if "inverse" not in data:
            return logits
        return logits[global_inverse(data["inverse"], data["length"], data["offset"])]


class ConDaFormerSmall(ConDaFormer):
    """ConDaFormer-small (official `ConDaFormer_Small`, `ConDaFormer-small-v1m1`): three encoder stages.

    Defaults are the official class defaults; the released S3DIS config adds window_size 8 and
    drop_path_rate 0.5.
    """

    def __init__(self, in_channels: int, out_channels: int, voxel_size: float = 0.04, window_size: float = 4,
                 quant_size: float = 0.25, base_channels: int = 48, head_dim: int = 16,
                 drop_path_rate: float = 0.3, channels: Sequence[int] = (96, 192, 384, 192, 96, 48),
                 layers: Sequence[int] = (2, 6, 2, 0, 0, 0)):
        super().__init__(in_channels, out_channels, voxel_size, window_size, quant_size, base_channels, head_dim,
                         drop_path_rate, channels, layers)


def global_inverse(inverse: torch.Tensor, length: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Cloud-local voxel index of each raw point -> index into the concatenated voxels (cloud i adds offset[i-1])."""
    starts = torch.cat([offset.new_zeros(1), offset[:-1]]).long()
    return inverse.long() + torch.repeat_interleave(starts, length.long())


def load_condaformer_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an official ConDaFormer checkpoint into `model` strictly; returns the model.

    Reads `{'state_dict': ...}` (pcr's Trainer layout; a bare state dict also works), drops the DDP `module.`
    prefix and renames the older relative_pos_{query,key,value}_table keys to q/k/v_table, as the official
    tools/test.py does. Any missing, unexpected or mis-shaped key is a RuntimeError that lists them all.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    renames = {"relative_pos_query_table": "q_table", "relative_pos_key_table": "k_table",
               "relative_pos_value_table": "v_table"}
    cleaned = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for old, new in renames.items():
            key = key.replace(old, new)
        cleaned[key] = value
    own = model.state_dict()
    missing = [k for k in own if k not in cleaned]
    unexpected = [k for k in cleaned if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(cleaned[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in cleaned and cleaned[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        lines = [f"{path}: checkpoint does not match {type(model).__name__}"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise RuntimeError("\n".join(lines))
    model.load_state_dict(cleaned, strict=True)
    return model
