"""PointNet++ (Qi et al., NeurIPS 2017): hierarchical point-set learning, classification and segmentation.

Layers
- PointNetSetAbstraction (single-scale grouping, SSG): farthest point sampling of `npoint` centroids, a ball
  query of `nsample` neighbours within `radius` around each, a shared MLP (1x1 Conv2d + BatchNorm2d + ReLU) on
  [relative xyz, features] and a max over each group. `group_all=True` is one group of every point around the
  origin (absolute xyz, as the official code; the new xyz is [B, 1, 3] zeros).
- PointNetSetAbstractionMsg (multi-scale grouping, MSG): one FPS, then one ball query + MLP + max per radius,
  the branches concatenated. Its groups are [features, relative xyz] (features first), as the official MSG.
- PointNetFeaturePropagation: inverse-distance weighted interpolation of the sparse level's features at the
  dense level's points from their 3 nearest sparse points, weights 1 / (d^2 + 1e-8) normalised (d^2 squared
  distance), a single sparse point broadcast; concatenated after the dense level's skip features
  ([skip, interpolated]); a shared MLP (1x1 Conv1d + BatchNorm1d + ReLU).

Sampling and grouping are mtp.kernels' farthest_point_sample, ball_query and knn, with PointNet++'s CUDA
conventions: FPS starts at index 0 (yanx27's torch port starts at a random index; its checkpoints are trained
with that, which only changes which centroids are drawn), ball query keeps the first `nsample` points in index
order (not the nearest) padded with the first found, ties to the lower index.

Models (inputs channels-last: xyz [B, N, 3], features [B, N, in_channels] or None, lengths [B] or None)
- PointNet2ClsSSG / PointNet2ClsMSG -> logits [B, num_classes]. `features` are the extra per-point channels
  (normals: in_channels=3), as yanx27's `normal_channel`.
- PointNet2SemSegSSG / PointNet2SemSegMSG (S3DIS) -> logits [B, N, num_classes]. The first level's features are
  [xyz, features], as yanx27 feeds its 9 S3DIS channels whose first three are the xyz themselves: `features` are
  the remaining 6 (colour, normalised room coordinates), in_channels=6.
- PointNet2PartSegSSG / PointNet2PartSegMSG (ShapeNetPart) -> logits [B, N, num_classes]; forward also takes
  `category` (long [B] or one-hot [B, num_categories]). The first level's features are [xyz, features]
  (features: normals or none); the last FP's skip is [one-hot category, xyz, xyz, features], as the official
  part-segmentation model.

Logits are returned, not yanx27's log-softmax (same argmax; apply log_softmax for its NLL loss).

State-dict names and shapes are yanx27/Pointnet_Pointnet2_pytorch's (models/pointnet2_*.py), so its checkpoints
(`model_state_dict` of best_model.pth) load with strict=True: `sa{i}.mlp_convs.{j}.weight/bias` (Conv2d, 1x1),
`sa{i}.mlp_bns.{j}.*` (BatchNorm2d) for SSG levels, `sa{i}.conv_blocks.{r}.{j}.*` / `sa{i}.bn_blocks.{r}.{j}.*`
for MSG levels, `fp{i}.mlp_convs.{j}.*` (Conv1d) / `fp{i}.mlp_bns.{j}.*` (BatchNorm1d); classification heads
`fc1, bn1, drop1, fc2, bn2, drop2, fc3`; segmentation heads `conv1, bn1, drop1, conv2` (Conv1d, 1x1). The
sampling sizes (npoints, radii, nsamples) are constructor arguments and change no parameter shape.

Padded batches: points at index >= lengths[b], or with a non-finite coordinate, are invalid. They are never
sampled or grouped (the kernels take `lengths` at the first level; later levels hold sampled points only, with
FPS's duplicates when a cloud has fewer valid points than npoint, exactly as the unpadded cloud), never enter a
max or BatchNorm's training statistics, and their segmentation logits are zeros. So in eval mode a padded batch
gives each cloud's own logits (up to float rounding).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtp.kernels import ball_query, farthest_point_sample, knn
from mtp.kernels.points import valid_points

# ---------------------------------------------------------------------------------------------- helpers


def gather_points(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values [B, N, C], index long [B, ...] -> [B, ..., C] (values[b, index[b, ...]])."""
    b, c = values.shape[0], values.shape[-1]
    flat = index.reshape(b, -1, 1).expand(-1, -1, c)
    return torch.gather(values, 1, flat).reshape(*index.shape, c)


def masked_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """bn(x) for x [B, C, *], with training statistics (and running-stat updates) over positions where mask
    [B, *] is True only. Eval mode, no mask or a full mask is plain bn(x); the module's parameters and buffers
    are bn's own, so state-dict names are untouched."""
    if mask is None or not bn.training or bool(mask.all()):
        return bn(x)
    m = mask.unsqueeze(1).to(x.dtype)                                      # [B, 1, *]
    dims = [0] + list(range(2, x.dim()))
    count = m.sum()
    if count < 2:
        raise ValueError(f"masked_batch_norm: need at least 2 valid positions in a training batch, got {int(count)}")
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean = (x * m).sum(dims) / count
    var = (((x - mean.view(shape)) ** 2) * m).sum(dims) / count
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked += 1
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.lerp_(mean.detach(), momentum)
            bn.running_var.lerp_(var.detach() * count / (count - 1), momentum)
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y


def _mlp(convs: nn.ModuleList, bns: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor | None = None):
    for conv, bn in zip(convs, bns):
        x = F.relu(masked_batch_norm(bn, conv(x), mask))
    return x


def _conv_mlp(conv: type, in_channel: int, mlp: Sequence[int]) -> tuple[nn.ModuleList, nn.ModuleList]:
    norm = nn.BatchNorm2d if conv is nn.Conv2d else nn.BatchNorm1d
    convs, bns = nn.ModuleList(), nn.ModuleList()
    last = in_channel
    for width in mlp:
        convs.append(conv(last, width, 1))
        bns.append(norm(width))
        last = width
    return convs, bns


def _clean(x: torch.Tensor | None, valid: torch.Tensor) -> torch.Tensor | None:
    """Zero x [B, N, C] where valid [B, N] is False (so padding never turns into NaN downstream)."""
    if x is None or bool(valid.all()):
        return x
    return torch.where(valid[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))


def _sample(xyz: torch.Tensor, npoint: int, lengths: torch.Tensor | None) -> torch.Tensor:
    """FPS centroids [B, npoint, 3] (start at index 0, invalid points never drawn)."""
    return gather_points(xyz, farthest_point_sample(xyz, npoint, lengths=lengths))


def _ball_group(xyz, features, new_xyz, radius, nsample, lengths, xyz_first: bool):
    """Ball-query groups [B, S, K, 3 + C] of (relative xyz, features) and their indices [B, S, K]."""
    index, _ = ball_query(new_xyz, xyz, radius, nsample, lengths=lengths)
    rel = gather_points(xyz, index) - new_xyz.unsqueeze(2)
    if features is None:
        return rel, index
    grouped = gather_points(features, index)
    return (torch.cat([rel, grouped], -1) if xyz_first else torch.cat([grouped, rel], -1)), index


# ---------------------------------------------------------------------------------------------- layers


class PointNetSetAbstraction(nn.Module):
    """Single-scale set abstraction. in_channel counts the MLP's input: 3 (relative xyz) + feature channels.

    forward(xyz [B, N, 3], features [B, N, C] | None, lengths [B] | None) -> (new_xyz [B, S, 3],
    new_features [B, S, mlp[-1]]); S = npoint, or 1 with group_all.
    """

    def __init__(self, npoint: int | None, radius: float | None, nsample: int | None, in_channel: int,
                 mlp: Sequence[int], group_all: bool = False):
        super().__init__()
        if not group_all and (npoint is None or radius is None or nsample is None):
            raise ValueError("PointNetSetAbstraction: npoint, radius and nsample are needed unless group_all")
        self.npoint, self.radius, self.nsample, self.group_all = npoint, radius, nsample, group_all
        self.mlp_convs, self.mlp_bns = _conv_mlp(nn.Conv2d, in_channel, mlp)

    def group(self, xyz: torch.Tensor, features: torch.Tensor | None = None, lengths: torch.Tensor | None = None):
        """(new_xyz [B, S, 3], grouped [B, S, K, 3 + C], index [B, S, K] or None for group_all, valid mask
        [B, S, K] or None). Grouped channels: [relative xyz, features] (group_all: absolute xyz)."""
        if self.group_all:
            valid = valid_points(xyz, lengths)
            xyz, features = _clean(xyz, valid), _clean(features, valid)
            grouped = xyz if features is None else torch.cat([xyz, features], -1)
            new_xyz = xyz.new_zeros(xyz.shape[0], 1, 3)
            return new_xyz, grouped.unsqueeze(1), None, valid.unsqueeze(1)
        new_xyz = _sample(xyz, self.npoint, lengths)
        grouped, index = _ball_group(xyz, features, new_xyz, self.radius, self.nsample, lengths, xyz_first=True)
        return new_xyz, grouped, index, None

    def forward(self, xyz: torch.Tensor, features: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        new_xyz, grouped, _, valid = self.group(xyz, features, lengths)
        x = grouped.permute(0, 3, 2, 1)                                     # [B, C, K, S]
        mask = None if valid is None else valid.transpose(1, 2)            # [B, K, S]
        x = _mlp(self.mlp_convs, self.mlp_bns, x, mask)
        if mask is not None and not bool(mask.all()):
            x = x.masked_fill(~mask.unsqueeze(1), float("-inf"))
        return new_xyz, x.amax(2).transpose(1, 2)                           # [B, S, C']


class PointNetSetAbstractionMsg(nn.Module):
    """Multi-scale set abstraction: one FPS, a ball query + MLP + max per (radius, nsample, mlp), concatenated.
    in_channel counts the feature channels only (the relative xyz, 3, is added), as the official MSG layer.

    forward(xyz [B, N, 3], features [B, N, C] | None, lengths) -> (new_xyz [B, S, 3], [B, S, sum(mlp[-1])]).
    """

    def __init__(self, npoint: int, radius_list: Sequence[float], nsample_list: Sequence[int], in_channel: int,
                 mlp_list: Sequence[Sequence[int]]):
        super().__init__()
        if not len(radius_list) == len(nsample_list) == len(mlp_list):
            raise ValueError("PointNetSetAbstractionMsg: radius_list, nsample_list and mlp_list need equal lengths")
        self.npoint, self.radius_list, self.nsample_list = npoint, list(radius_list), list(nsample_list)
        self.conv_blocks, self.bn_blocks = nn.ModuleList(), nn.ModuleList()
        for mlp in mlp_list:
            convs, bns = _conv_mlp(nn.Conv2d, in_channel + 3, mlp)
            self.conv_blocks.append(convs)
            self.bn_blocks.append(bns)

    def group(self, xyz, features=None, lengths=None):
        """(new_xyz [B, S, 3], [(grouped [B, S, K_r, C + 3], index [B, S, K_r]) per radius]);
        grouped channels: [features, relative xyz]."""
        new_xyz = _sample(xyz, self.npoint, lengths)
        return new_xyz, [_ball_group(xyz, features, new_xyz, r, k, lengths, xyz_first=False)
                         for r, k in zip(self.radius_list, self.nsample_list)]

    def forward(self, xyz, features=None, lengths=None):
        new_xyz, groups = self.group(xyz, features, lengths)
        out = [_mlp(convs, bns, grouped.permute(0, 3, 2, 1)).amax(2)
               for (grouped, _), convs, bns in zip(groups, self.conv_blocks, self.bn_blocks)]
        return new_xyz, torch.cat(out, 1).transpose(1, 2)


class PointNetFeaturePropagation(nn.Module):
    """Feature propagation from a sparse level (xyz2, features2) to a dense one (xyz1, skip features1).
    in_channel = skip channels + sparse feature channels.

    forward(xyz1 [B, N, 3], xyz2 [B, S, 3], features1 [B, N, C1] | None, features2 [B, S, C2], mask1 [B, N]
    | None (valid dense points: the others are not queried and stay out of BatchNorm's statistics),
    lengths2 [B] | None (valid sparse points)) -> [B, N, mlp[-1]].
    """

    def __init__(self, in_channel: int, mlp: Sequence[int]):
        super().__init__()
        self.mlp_convs, self.mlp_bns = _conv_mlp(nn.Conv1d, in_channel, mlp)

    @staticmethod
    def interpolate(xyz1: torch.Tensor, xyz2: torch.Tensor, features2: torch.Tensor,
                    lengths2: torch.Tensor | None = None) -> torch.Tensor:
        """Inverse squared-distance weighted mean of features2 over the 3 nearest xyz2 of each xyz1."""
        b, n, _ = xyz1.shape
        s = xyz2.shape[1]
        if s == 1:
            return features2.expand(b, n, features2.shape[-1])
        index, d2 = knn(xyz1, xyz2, min(3, s), lengths=lengths2)
        recip = 1.0 / (d2 + 1e-8)                                           # +inf distances (invalid) -> 0
        weight = recip / recip.sum(-1, keepdim=True).clamp_min(torch.finfo(recip.dtype).tiny)
        return (gather_points(features2, index) * weight.unsqueeze(-1)).sum(2)

    def forward(self, xyz1, xyz2, features1, features2, mask1=None, lengths2=None):
        if mask1 is not None:
            xyz1 = _clean(xyz1, mask1)
        x = self.interpolate(xyz1, xyz2, features2, lengths2)
        if features1 is not None:
            x = torch.cat([features1, x], -1)
        x = _mlp(self.mlp_convs, self.mlp_bns, x.transpose(1, 2), mask1)
        return x.transpose(1, 2)


# ---------------------------------------------------------------------------------------------- models


def _check_inputs(name: str, xyz: torch.Tensor, features: torch.Tensor | None, in_channels: int, lengths):
    if not isinstance(xyz, torch.Tensor) or xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"{name}: xyz must be [B, N, 3], got {tuple(getattr(xyz, 'shape', ()))}")
    if in_channels:
        if features is None or features.shape != (*xyz.shape[:2], in_channels):
            got = None if features is None else tuple(features.shape)
            raise ValueError(f"{name}: features must be [B, N, {in_channels}] (in_channels), got {got}")
    elif features is not None and features.shape[-1] != 0:
        raise ValueError(f"{name}: built with in_channels=0, got features {tuple(features.shape)}")
    else:
        features = None
    if lengths is not None:
        lengths = torch.as_tensor(lengths, device=xyz.device).long()
    valid = valid_points(xyz, lengths)
    return features, lengths, valid


class _PointNet2(nn.Module):
    """Shared encoder / decoder loops over sa1..saL and fpL..fp1."""

    n_levels: int

    def _encode(self, xyz, features, lengths):
        xyzs, feats = [xyz], [features]
        for i in range(1, self.n_levels + 1):
            new_xyz, new_feats = getattr(self, f"sa{i}")(xyzs[-1], feats[-1], lengths=lengths)
            lengths = None                                    # sampled levels hold valid points only
            xyzs.append(new_xyz)
            feats.append(new_feats)
        return xyzs, feats


class _PointNet2Cls(_PointNet2):
    def _head(self, num_classes: int, dropout: Sequence[float]):
        """After the SA levels, so that the state dict's order is yanx27's too."""
        self.fc1 = nn.Linear(1024, 512)
        self.bn1 = nn.BatchNorm1d(512)
        self.drop1 = nn.Dropout(dropout[0])
        self.fc2 = nn.Linear(512, 256)
        self.bn2 = nn.BatchNorm1d(256)
        self.drop2 = nn.Dropout(dropout[1])
        self.fc3 = nn.Linear(256, num_classes)

    def forward(self, xyz: torch.Tensor, features: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """xyz [B, N, 3], features [B, N, in_channels] | None, lengths [B] | None -> logits [B, num_classes]."""
        features, lengths, valid = _check_inputs(type(self).__name__, xyz, features, self.in_channels, lengths)
        _, feats = self._encode(xyz, _clean(features, valid), lengths)
        x = feats[-1].flatten(1)                                            # [B, 1024]
        x = self.drop1(F.relu(self.bn1(self.fc1(x))))
        x = self.drop2(F.relu(self.bn2(self.fc2(x))))
        return self.fc3(x)


class PointNet2ClsSSG(_PointNet2Cls):
    """PointNet++ SSG classification (ModelNet40): SA(512, 0.2, 32, [64, 64, 128]), SA(128, 0.4, 64,
    [128, 128, 256]), group-all SA([256, 512, 1024]), FC 512-256-num_classes with BatchNorm and dropout 0.4.
    yanx27's pointnet2_cls_ssg names; in_channels=3 is its normal_channel=True."""

    n_levels = 3

    def __init__(self, num_classes: int = 40, in_channels: int = 0, npoints: Sequence[int] = (512, 128),
                 radii: Sequence[float] = (0.2, 0.4), nsamples: Sequence[int] = (32, 64),
                 dropout: Sequence[float] = (0.4, 0.4)):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.sa1 = PointNetSetAbstraction(npoints[0], radii[0], nsamples[0], 3 + in_channels, [64, 64, 128])
        self.sa2 = PointNetSetAbstraction(npoints[1], radii[1], nsamples[1], 128 + 3, [128, 128, 256])
        self.sa3 = PointNetSetAbstraction(None, None, None, 256 + 3, [256, 512, 1024], group_all=True)
        self._head(num_classes, dropout)


class PointNet2ClsMSG(_PointNet2Cls):
    """PointNet++ MSG classification (ModelNet40): MSG(512, r [0.1, 0.2, 0.4], k [16, 32, 128]),
    MSG(128, r [0.2, 0.4, 0.8], k [32, 64, 128]), group-all SA([256, 512, 1024]), FC 512-256-num_classes
    (dropout 0.4, 0.5). yanx27's pointnet2_cls_msg names; in_channels=3 is its normal_channel=True."""

    n_levels = 3

    def __init__(self, num_classes: int = 40, in_channels: int = 0, npoints: Sequence[int] = (512, 128),
                 radii: Sequence[Sequence[float]] = ((0.1, 0.2, 0.4), (0.2, 0.4, 0.8)),
                 nsamples: Sequence[Sequence[int]] = ((16, 32, 128), (32, 64, 128)),
                 dropout: Sequence[float] = (0.4, 0.5)):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.sa1 = PointNetSetAbstractionMsg(npoints[0], radii[0], nsamples[0], in_channels,
                                             [[32, 32, 64], [64, 64, 128], [64, 96, 128]])
        self.sa2 = PointNetSetAbstractionMsg(npoints[1], radii[1], nsamples[1], 320,
                                             [[64, 64, 128], [128, 128, 256], [128, 128, 256]])
        self.sa3 = PointNetSetAbstraction(None, None, None, 640 + 3, [256, 512, 1024], group_all=True)
        self._head(num_classes, dropout)


class _PointNet2Seg(_PointNet2):
    def _head(self, num_classes: int, dropout: float):
        self.conv1 = nn.Conv1d(128, 128, 1)
        self.bn1 = nn.BatchNorm1d(128)
        self.drop1 = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(128, num_classes, 1)

    def _segment(self, xyz, features, lengths, skip0):
        """Encoder, decoder (fpL..fp1, fp1's skip is skip0(xyz, l0 features)) and head -> [B, N, classes]."""
        features, lengths, valid = _check_inputs(type(self).__name__, xyz, features, self.in_channels, lengths)
        clean_xyz = _clean(xyz, valid)
        l0 = torch.cat([clean_xyz, features], -1) if features is not None else clean_xyz
        xyzs, feats = self._encode(xyz, _clean(l0, valid), lengths)
        xyzs[0] = clean_xyz
        mask = None if bool(valid.all()) else valid
        up = feats[-1]
        for i in range(self.n_levels, 0, -1):
            skip = feats[i - 1] if i > 1 else skip0(clean_xyz, feats[0])
            up = getattr(self, f"fp{i}")(xyzs[i - 1], xyzs[i], skip, up, mask1=mask if i == 1 else None)
        x = up.transpose(1, 2)                                              # [B, 128, N]
        x = self.drop1(F.relu(masked_batch_norm(self.bn1, self.conv1(x), mask)))
        x = self.conv2(x).transpose(1, 2)
        return x if mask is None else x.masked_fill(~mask.unsqueeze(-1), 0.0)


class _PointNet2SemSeg(_PointNet2Seg):
    def forward(self, xyz: torch.Tensor, features: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """xyz [B, N, 3], features [B, N, in_channels], lengths [B] | None -> logits [B, N, num_classes]."""
        return self._segment(xyz, features, lengths, lambda xyz0, feats0: None)


class PointNet2SemSegSSG(_PointNet2SemSeg):
    """PointNet++ SSG semantic segmentation (S3DIS, yanx27's pointnet2_sem_seg): SA(1024, 0.1, 32, [32, 32, 64]),
    SA(256, 0.2, 32, [64, 64, 128]), SA(64, 0.4, 32, [128, 128, 256]), SA(16, 0.8, 32, [256, 256, 512]);
    FP [256, 256], [256, 256], [256, 128], [128, 128, 128]; conv 128 + BatchNorm + dropout 0.5, conv
    num_classes. The first level's features are [xyz, features] (in_channels=6: yanx27's 9 S3DIS channels)."""

    n_levels = 4

    def __init__(self, num_classes: int = 13, in_channels: int = 6, npoints: Sequence[int] = (1024, 256, 64, 16),
                 radii: Sequence[float] = (0.1, 0.2, 0.4, 0.8), nsamples: Sequence[int] = (32, 32, 32, 32),
                 dropout: float = 0.5):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        widths = [[32, 32, 64], [64, 64, 128], [128, 128, 256], [256, 256, 512]]
        last = 3 + in_channels
        for i, mlp in enumerate(widths):
            setattr(self, f"sa{i + 1}", PointNetSetAbstraction(npoints[i], radii[i], nsamples[i], last + 3, mlp))
            last = mlp[-1]
        self.fp4 = PointNetFeaturePropagation(512 + 256, [256, 256])
        self.fp3 = PointNetFeaturePropagation(256 + 128, [256, 256])
        self.fp2 = PointNetFeaturePropagation(256 + 64, [256, 128])
        self.fp1 = PointNetFeaturePropagation(128, [128, 128, 128])
        self._head(num_classes, dropout)


class PointNet2SemSegMSG(_PointNet2SemSeg):
    """PointNet++ MSG semantic segmentation (S3DIS, yanx27's pointnet2_sem_seg_msg): four MSG levels
    (1024, 256, 64, 16 centroids; radii (0.05, 0.1), (0.1, 0.2), (0.2, 0.4), (0.4, 0.8); 16 and 32 neighbours),
    FP [256, 256], [256, 256], [256, 128], [128, 128, 128], the SSG head."""

    n_levels = 4

    def __init__(self, num_classes: int = 13, in_channels: int = 6, npoints: Sequence[int] = (1024, 256, 64, 16),
                 radii: Sequence[Sequence[float]] = ((0.05, 0.1), (0.1, 0.2), (0.2, 0.4), (0.4, 0.8)),
                 nsamples: Sequence[Sequence[int]] = ((16, 32),) * 4, dropout: float = 0.5):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        widths = [[[16, 16, 32], [32, 32, 64]], [[64, 64, 128], [64, 96, 128]],
                  [[128, 196, 256], [128, 196, 256]], [[256, 256, 512], [256, 384, 512]]]
        last = 3 + in_channels
        for i, mlps in enumerate(widths):
            setattr(self, f"sa{i + 1}", PointNetSetAbstractionMsg(npoints[i], radii[i], nsamples[i], last, mlps))
            last = sum(m[-1] for m in mlps)
        self.fp4 = PointNetFeaturePropagation(512 + 512 + 256 + 256, [256, 256])
        self.fp3 = PointNetFeaturePropagation(128 + 128 + 256, [256, 256])
        self.fp2 = PointNetFeaturePropagation(32 + 64 + 256, [256, 128])
        self.fp1 = PointNetFeaturePropagation(128, [128, 128, 128])
        self._head(num_classes, dropout)


class _PointNet2PartSeg(_PointNet2Seg):
    def forward(self, xyz: torch.Tensor, features: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                category: torch.Tensor | None = None) -> torch.Tensor:
        """xyz [B, N, 3], features [B, N, in_channels] | None, lengths [B] | None, category long [B] or one-hot
        [B, num_categories] -> logits [B, N, num_classes]."""
        if category is None:
            raise ValueError(f"{type(self).__name__}: category (the object category of each cloud) is required")
        category = torch.as_tensor(category, device=xyz.device)
        if category.dim() == 1 and not category.is_floating_point():
            one_hot = F.one_hot(category.long(), self.num_categories).to(xyz.dtype)
        elif category.shape == (xyz.shape[0], self.num_categories):
            one_hot = category.to(xyz.dtype)
        else:
            raise ValueError(f"{type(self).__name__}: category must be long [B] or one-hot [B, "
                             f"{self.num_categories}], got {category.dtype} {tuple(category.shape)}")

        def skip0(xyz0, feats0):
            return torch.cat([one_hot.unsqueeze(1).expand(-1, xyz0.shape[1], -1), xyz0, feats0], -1)

        return self._segment(xyz, features, lengths, skip0)


class PointNet2PartSegSSG(_PointNet2PartSeg):
    """PointNet++ SSG part segmentation (ShapeNetPart, yanx27's pointnet2_part_seg_ssg): SA(512, 0.2, 32,
    [64, 64, 128]), SA(128, 0.4, 64, [128, 128, 256]), group-all SA([256, 512, 1024]); FP [256, 256], [256, 128],
    [128, 128, 128] (the last with the one-hot category and xyz in its skip); conv head. in_channels=3: normals."""

    n_levels = 3

    def __init__(self, num_classes: int = 50, num_categories: int = 16, in_channels: int = 0,
                 npoints: Sequence[int] = (512, 128), radii: Sequence[float] = (0.2, 0.4),
                 nsamples: Sequence[int] = (32, 64), dropout: float = 0.5):
        super().__init__()
        self.num_classes, self.num_categories, self.in_channels = num_classes, num_categories, in_channels
        self.sa1 = PointNetSetAbstraction(npoints[0], radii[0], nsamples[0], 6 + in_channels, [64, 64, 128])
        self.sa2 = PointNetSetAbstraction(npoints[1], radii[1], nsamples[1], 128 + 3, [128, 128, 256])
        self.sa3 = PointNetSetAbstraction(None, None, None, 256 + 3, [256, 512, 1024], group_all=True)
        self.fp3 = PointNetFeaturePropagation(1024 + 256, [256, 256])
        self.fp2 = PointNetFeaturePropagation(256 + 128, [256, 128])
        self.fp1 = PointNetFeaturePropagation(128 + num_categories + 6 + in_channels, [128, 128, 128])
        self._head(num_classes, dropout)


class PointNet2PartSegMSG(_PointNet2PartSeg):
    """PointNet++ MSG part segmentation (ShapeNetPart, yanx27's pointnet2_part_seg_msg): MSG(512, r [0.1, 0.2,
    0.4], k [32, 64, 128]), MSG(128, r [0.4, 0.8], k [64, 128]), group-all SA([256, 512, 1024]); FP [256, 256],
    [256, 128], [128, 128]; conv head. in_channels=3: normals."""

    n_levels = 3

    def __init__(self, num_classes: int = 50, num_categories: int = 16, in_channels: int = 0,
                 npoints: Sequence[int] = (512, 128),
                 radii: Sequence[Sequence[float]] = ((0.1, 0.2, 0.4), (0.4, 0.8)),
                 nsamples: Sequence[Sequence[int]] = ((32, 64, 128), (64, 128)), dropout: float = 0.5):
        super().__init__()
        self.num_classes, self.num_categories, self.in_channels = num_classes, num_categories, in_channels
        self.sa1 = PointNetSetAbstractionMsg(npoints[0], radii[0], nsamples[0], 3 + in_channels,
                                             [[32, 32, 64], [64, 64, 128], [64, 96, 128]])
        self.sa2 = PointNetSetAbstractionMsg(npoints[1], radii[1], nsamples[1], 128 + 128 + 64,
                                             [[128, 128, 256], [128, 196, 256]])
        self.sa3 = PointNetSetAbstraction(None, None, None, 512 + 3, [256, 512, 1024], group_all=True)
        self.fp3 = PointNetFeaturePropagation(1024 + 512, [256, 256])
        self.fp2 = PointNetFeaturePropagation(256 + 320, [256, 128])
        self.fp1 = PointNetFeaturePropagation(128 + num_categories + 6 + in_channels, [128, 128])
        self._head(num_classes, dropout)
