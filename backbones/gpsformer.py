"""GPSFormer (Wang et al., ECCV 2024): point-cloud classification with global perception and local structure fitting.

Paper: C. Wang, M. Wu, S.-K. Lam, X. Ning, S. Yu, R. Wang, W. Li, T. Srikanthan, "GPSFormer: A Global
Perception and Local Structure Fitting-based Transformer for Point Cloud Understanding", ECCV 2024,
arXiv:2407.13519.

PAPER-ONLY RE-IMPLEMENTATION. The official repository (changshuowang/GPSFormer) holds a README and a licence
only; no code, config or checkpoint has been released. So no official checkpoint can load here, no numeric
parity with the authors' model is possible, and state-dict names are this module's own. Every choice the
paper leaves open is listed below. Published accuracies are not reproduced by anything in this module.

Architecture (classification)
- Embedding: a per-point linear layer + BatchNorm + ReLU lifts [xyz, features] to `embed_dim` channels.
- Three cascaded GPS stages. Each runs the Global Perception Module (GPM) on its input points, then farthest
  point sampling (FPS) of `num_points[i]` centroids, then LSFConv from the input points to the centroids,
  which sets the stage's width `widths[i]` (64, 128, 256 in the standard model).
- GPM = ADGConv -> residual cross-attention (RCA) -> multi-head self-attention (MHA):
  - ADGConv: a learned offset moves each feature, f^_i = f_i + phi(f_i); its `k` nearest features (k = 20) are
    found around f^_i in feature space, and an EdgeConv-style edge function, max-pooled over the neighbours,
    gives f^a_i.
  - RCA: f^r = f^a + Attn(query f^, key f^a, value f^a).
  - MHA: self-attention over all points of the cloud on f^r.
- LSFConv (Taylor-series inspired), per ball-query scale (radii 0.1, 0.2, 0.4 with 8, 16, 32 neighbours in
  every stage): a low-order term, an aggregation of transformed neighbour features, plus a high-order term
  aggregating T(f_i, f_j) = sign(u)^s |u|^p, u = w_j * W(f_j - f_i), with s = 1 and a learnable exponent p;
  the per-channel weight w_j = xi(h(p_i, p_j)) is predicted from h = [p_i, p_j, p_j - p_i, |p_j - p_i|].
- Head: global max and mean pooling, then an MLP to the class logits.

Variants: GPSFormerCls() is the standard model; GPSFormerCls.elite() the small one. Parameter counts with
num_classes=15 (ScanObjectNN): standard 1,631,320, elite 584,888 (40 classes: 1,637,745 and 591,313).
Secondary sources (a paper note, a benchmark listing; the paper's tables were not read) give 2.36M and
0.68M. The gap comes from layer internals the descriptions do not pin down (decisions below).

Sampling and grouping are mtp.kernels': farthest_point_sample (starts at index 0, deterministic, ties to the
lower index) and ball_query (the first `nsample` points in index order, padded with the first found, as
PointNet++'s CUDA op). Attention goes through mtp.kernels.attention. The feature-space kNN of ADGConv is
computed here (mtp.kernels.points.knn takes 3-D points only).

Inputs, channels-last: xyz [B, N, 3], features [B, N, in_channels] or None, lengths [B] or None. Points at index
>= lengths[b], or with a non-finite coordinate, are invalid: never sampled or grouped, never a feature-space
neighbour or an attention key, and outside BatchNorm's training statistics. After the first FPS every point is
valid (with FPS's duplicates when a cloud has fewer valid points than num_points[0], exactly as the unpadded
cloud), so in eval mode a padded batch gives each cloud's own logits, up to float rounding.

Decisions the paper leaves open (or whose text could not be consulted here: only the abstract of
arXiv:2407.13519 was reachable, the architecture facts above come from secondary summaries of the paper)
1. Stage layout: GPM runs at the stage's input width (embed_dim = 64, then 64, then 128), LSFConv maps it to
   widths[i]. Centroids per stage: num_points = (512, 256, 128) for 1024 input points.
2. ADGConv offset phi: one linear layer, zero-initialised, so training starts from a plain dynamic feature
   graph (f^ = f). Neighbours of f^_i are searched among the unshifted features f_j; the point itself is
   neither forced in nor excluded (it is a neighbour when it ranks among the k nearest). Exact ties in the
   squared feature distance are left to torch.topk (the lower index is not guaranteed).
3. ADGConv edge function: W_n f_j + W_c f^_i (the same family as EdgeConv's Theta (f_j - f^_i) + Phi f^_i),
   BatchNorm, LeakyReLU(0.2), max over the k neighbours.
4. RCA and MHA: `heads` heads (4), linear q/k/v/out projections, pre-LayerNorm on their inputs; MHA has a
   residual and is followed by a residual feed-forward block (LayerNorm, Linear x ffn_ratio (2), GELU,
   Linear), as a Transformer block. No positional encoding: the features already embed xyz.
5. LSFConv low-order term: Linear on [f_j, (p_j - p_i) / r] + BatchNorm + ReLU, max over the neighbours.
6. LSFConv high-order term: W is a bias-free linear layer (so W(f_j - f_i) = W f_j - W f_i), xi is Linear(10, C)
   + BatchNorm + ReLU + Linear(C, C), h uses absolute p_i, p_j and (p_j - p_i) / r, |p_j - p_i| / r;
   T is BatchNorm-ed, then max-pooled over the neighbours. Max aggregation for both terms makes ball query's
   padding (repeats of the first neighbour) harmless.
7. Learnable exponent p: one scalar per LSFConv scale, p = 0.5 + 2.5 * sigmoid(theta), so p stays in
   (0.5, 3.0) with a smooth gradient everywhere; initialised to p = 1 (the paper's ABF case, s = 1, p = 1).
   |u|^p is computed as max(|u|, 1e-4)^p: the gradient of |u|^p at 0 is undefined for p < 1; the clamp bounds
   it by p * 1e-4^(p - 1) and sign(0) = 0 keeps T(0) = 0.
8. Multi-scale fusion: the three scales' (low + high) outputs are concatenated, Linear + BatchNorm, added to a
   shortcut of the centroid's own feature (identity, or Linear when the width changes), then ReLU.
9. Head: [max, mean] pooling (2 x widths[-1]) -> Linear 512 + BN + ReLU + Dropout(0.5) -> Linear 256 + BN +
   ReLU + Dropout(0.5) -> Linear num_classes.
10. Elite variant: the paper names GPSFormer-elite (0.68M) without its configuration here; ours halves every
    width (embed 32, widths 32, 64, 128), same k, radii and neighbour counts.
11. No input normalisation inside the model (centring and unit-sphere scaling belong to the dataset
    transforms; ScanObjectNN and ModelNet40 should be normalised alike). Voting / test-time augmentation is
    not part of the model; report single-pass and voting accuracies separately.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtp.backbones.pointnet2 import gather_points, masked_batch_norm
from mtp.kernels import ball_query, farthest_point_sample
from mtp.kernels.attention import attention
from mtp.kernels.points import valid_points

P_MIN, P_MAX, P_INIT, P_EPS = 0.5, 3.0, 1.0, 1e-4


def _bn(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """BatchNorm of channels-last x [B, *, C], statistics over mask [B, *] only (see masked_batch_norm)."""
    return masked_batch_norm(bn, x.movedim(-1, 1), mask).movedim(1, -1)


def _zero_invalid(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return x if valid is None else torch.where(valid[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))


# ---------------------------------------------------------------------------------------------- GPM


class ADGConv(nn.Module):
    """Adaptive deformable graph convolution: kNN around the offset feature f + phi(f) in feature space.

    forward(f [B, N, C], valid [B, N] | None) -> (f^a [B, N, C], shifted f^ [B, N, C]).
    """

    def __init__(self, channels: int, k: int):
        super().__init__()
        self.k = k
        self.offset = nn.Linear(channels, channels)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.neighbour = nn.Linear(channels, channels, bias=False)
        self.centre = nn.Linear(channels, channels)
        self.bn = nn.BatchNorm2d(channels)

    def neighbours(self, query: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Indices [B, N, k] of the k keys nearest each query (squared Euclidean distance); invalid keys last."""
        d = (query.square().sum(-1, keepdim=True) + keys.square().sum(-1).unsqueeze(1)
             - 2 * query @ keys.transpose(1, 2))
        if valid is not None:
            d = d.masked_fill(~valid[:, None, :], float("inf"))
        return d.topk(self.k, dim=-1, largest=False).indices

    def forward(self, f: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        shifted = f + self.offset(f)
        index = self.neighbours(shifted.detach(), f.detach(), valid)              # the graph is not differentiable
        edge = gather_points(self.neighbour(f), index) + self.centre(shifted).unsqueeze(2)  # [B, N, k, C]
        mask = None if valid is None else valid.unsqueeze(-1) & torch.gather(
            valid, 1, index.flatten(1)).view_as(index)
        edge = F.leaky_relu(_bn(self.bn, edge, mask), 0.2)
        if mask is not None:
            edge = edge.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        return _zero_invalid(edge.amax(2), valid), shifted


class Attention(nn.Module):
    """Multi-head attention of queries x [B, N, C] over keys/values y [B, M, C] (key_mask [B, M] | None)."""

    def __init__(self, channels: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, y: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)                 # [B, H, N, D]
        k, v = self.kv(y).view(b, y.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = attention(q, k, v, mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(out.transpose(1, 2).reshape(b, n, c))


class GlobalPerception(nn.Module):
    """GPM: ADGConv, residual cross-attention (query: the shifted features), self-attention, feed-forward.

    forward(f [B, N, C], valid [B, N] | None) -> [B, N, C] (zeros at invalid points).
    """

    def __init__(self, channels: int, k: int, heads: int, ffn_ratio: float = 2.0, attn_dropout: float = 0.0):
        super().__init__()
        self.adg = ADGConv(channels, k)
        self.norm_q, self.norm_kv = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.cross = Attention(channels, heads, attn_dropout)
        self.norm_self = nn.LayerNorm(channels)
        self.self_attn = Attention(channels, heads, attn_dropout)
        hidden = int(channels * ffn_ratio)
        self.ffn = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, hidden), nn.GELU(),
                                 nn.Linear(hidden, channels))

    def forward(self, f: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        fa, shifted = self.adg(f, valid)
        x = fa + self.cross(self.norm_q(shifted), self.norm_kv(fa), valid)
        h = self.norm_self(x)
        x = x + self.self_attn(h, h, valid)
        x = x + self.ffn(x)
        return _zero_invalid(x, valid)


# ---------------------------------------------------------------------------------------------- LSFConv


class LSFBranch(nn.Module):
    """One ball-query scale of LSFConv: low-order (max of transformed neighbours) + high-order term.

    forward(xyz [B, N, 3], f [B, N, C_in], centre_xyz [B, S, 3], centre_f [B, S, C_in], lengths) -> [B, S, C_out].
    """

    def __init__(self, in_channels: int, out_channels: int, radius: float, nsample: int):
        super().__init__()
        self.radius, self.nsample = radius, nsample
        self.low_f = nn.Linear(in_channels, out_channels)
        self.low_p = nn.Linear(3, out_channels, bias=False)
        self.low_bn = nn.BatchNorm2d(out_channels)
        self.high = nn.Linear(in_channels, out_channels, bias=False)
        self.xi_in = nn.Linear(10, out_channels)
        self.xi_bn = nn.BatchNorm2d(out_channels)
        self.xi_out = nn.Linear(out_channels, out_channels)
        self.high_bn = nn.BatchNorm2d(out_channels)
        # p = P_MIN + (P_MAX - P_MIN) * sigmoid(theta), initialised at P_INIT
        init = (P_INIT - P_MIN) / (P_MAX - P_MIN)
        self.exponent_logit = nn.Parameter(torch.tensor(math.log(init / (1 - init))))

    @property
    def exponent(self) -> torch.Tensor:
        return P_MIN + (P_MAX - P_MIN) * torch.sigmoid(self.exponent_logit)

    def forward(self, xyz, f, centre_xyz, centre_f, lengths=None):
        # indices carry no gradient; detached, the kernels also take coordinates that require grad
        index, _ = ball_query(centre_xyz.detach(), xyz.detach(), self.radius, self.nsample, lengths=lengths)
        p_j = gather_points(xyz, index)                                           # [B, S, K, 3]
        p_i = centre_xyz.unsqueeze(2).expand_as(p_j)
        rel = (p_j - p_i) / self.radius
        low = self.low_f(f)
        low = gather_points(low, index) + self.low_p(rel)
        low = F.relu(_bn(self.low_bn, low)).amax(2)

        g = self.high(f)
        diff = gather_points(g, index) - self.high(centre_f).unsqueeze(2)         # W (f_j - f_i)
        h = torch.cat([p_i, p_j, rel, rel.norm(dim=-1, keepdim=True)], -1)
        u = self.xi_out(F.relu(_bn(self.xi_bn, self.xi_in(h)))) * diff          # w_j * W (f_j - f_i)
        t = torch.sign(u) * u.abs().clamp_min(P_EPS).pow(self.exponent)
        high = _bn(self.high_bn, t).amax(2)
        return low + high


class LSFConv(nn.Module):
    """Multi-scale local structure fitting convolution from points (xyz, f) to centroids, fused and added to a
    shortcut of the centroid's own feature. forward(...) as LSFBranch -> [B, S, out_channels]."""

    def __init__(self, in_channels: int, out_channels: int, radii: Sequence[float], nsamples: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList(LSFBranch(in_channels, out_channels, r, k) for r, k in zip(radii, nsamples))
        self.fuse = nn.Linear(len(self.branches) * out_channels, out_channels, bias=False)
        self.fuse_bn = nn.BatchNorm1d(out_channels)
        self.shortcut = (nn.Identity() if in_channels == out_channels
                         else nn.Linear(in_channels, out_channels, bias=False))

    def forward(self, xyz, f, centre_xyz, centre_f, lengths=None):
        out = torch.cat([branch(xyz, f, centre_xyz, centre_f, lengths) for branch in self.branches], -1)
        return F.relu(_bn(self.fuse_bn, self.fuse(out)) + self.shortcut(centre_f))


class GPSStage(nn.Module):
    """GPM on the input points, FPS of num_points centroids, LSFConv to them.

    forward(xyz [B, N, 3], f [B, N, C_in], lengths, valid [B, N] | None) -> (centroids [B, S, 3], [B, S, C_out]).
    """

    def __init__(self, in_channels: int, out_channels: int, num_points: int, k: int, heads: int,
                 radii: Sequence[float], nsamples: Sequence[int], ffn_ratio: float, attn_dropout: float):
        super().__init__()
        self.num_points = num_points
        self.gpm = GlobalPerception(in_channels, k, heads, ffn_ratio, attn_dropout)
        self.lsf = LSFConv(in_channels, out_channels, radii, nsamples)

    def forward(self, xyz, f, lengths=None, valid=None):
        f = self.gpm(f, valid)
        index = farthest_point_sample(xyz.detach(), self.num_points, lengths=lengths)
        centre_xyz, centre_f = gather_points(xyz, index), gather_points(f, index)
        return centre_xyz, self.lsf(xyz, f, centre_xyz, centre_f, lengths)


# ---------------------------------------------------------------------------------------------- model


class GPSFormerCls(nn.Module):
    """GPSFormer classification. forward(xyz [B, N, 3], features [B, N, in_channels] | None, lengths [B] | None)
    -> logits [B, num_classes]. N must be >= num_points[0]; see the module docstring for every default."""

    def __init__(self, num_classes: int = 15, in_channels: int = 0, embed_dim: int = 64,
                 widths: Sequence[int] = (64, 128, 256), num_points: Sequence[int] = (512, 256, 128), k: int = 20,
                 radii: Sequence[float] = (0.1, 0.2, 0.4), nsamples: Sequence[int] = (8, 16, 32), heads: int = 4,
                 ffn_ratio: float = 2.0, head_widths: Sequence[int] = (512, 256), dropout: float = 0.5,
                 attn_dropout: float = 0.0):
        super().__init__()
        name = type(self).__name__
        widths, num_points = list(widths), list(num_points)
        if not widths or len(widths) != len(num_points):
            raise ValueError(f"{name}: widths and num_points need one entry per stage, got {widths} and {num_points}")
        if len(radii) != len(nsamples) or not radii:
            raise ValueError(f"{name}: radii and nsamples need one entry per scale, got {list(radii)} and "
                             f"{list(nsamples)}")
        if any(b > a for a, b in zip(num_points, num_points[1:])) or min(num_points) < 1:
            raise ValueError(f"{name}: num_points must be positive and non-increasing (each stage samples from the "
                             f"previous one's points), got {num_points}")
        gpm_inputs = num_points[:-1]
        if k < 1 or (gpm_inputs and k > min(gpm_inputs)):
            raise ValueError(f"{name}: k={k} must be >= 1 and <= the points every later stage's GPM sees "
                             f"(num_points[:-1] = {gpm_inputs})")
        stage_in = [embed_dim] + widths[:-1]
        if any(c % heads for c in stage_in):
            raise ValueError(f"{name}: heads={heads} must divide every GPM width {stage_in}")
        self.num_classes, self.in_channels, self.k, self.num_points = num_classes, in_channels, k, num_points
        self.embed = nn.Linear(3 + in_channels, embed_dim, bias=False)
        self.embed_bn = nn.BatchNorm1d(embed_dim)
        self.stages = nn.ModuleList(
            GPSStage(c_in, c_out, s, k, heads, radii, nsamples, ffn_ratio, attn_dropout)
            for c_in, c_out, s in zip(stage_in, widths, num_points))
        layers, last = [], 2 * widths[-1]
        for width in head_widths:
            layers += [nn.Linear(last, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(dropout)]
            last = width
        layers.append(nn.Linear(last, num_classes))
        self.head = nn.Sequential(*layers)

    @classmethod
    def elite(cls, **kwargs) -> "GPSFormerCls":
        """The small variant (decision 10 of the module docstring): every width halved."""
        return cls(**{**dict(embed_dim=32, widths=(32, 64, 128)), **kwargs})

    def _check_inputs(self, xyz, features, lengths):
        name = type(self).__name__
        if not isinstance(xyz, torch.Tensor) or xyz.dim() != 3 or xyz.shape[-1] != 3:
            raise ValueError(f"{name}: xyz must be [B, N, 3], got {tuple(getattr(xyz, 'shape', ()))}")
        b, n = xyz.shape[:2]
        if n < max(self.num_points[0], self.k):
            raise ValueError(f"{name}: xyz has N={n} points, fewer than the first stage needs "
                             f"(num_points[0]={self.num_points[0]} centroids, k={self.k} feature neighbours)")
        if self.in_channels:
            if features is None or tuple(features.shape) != (b, n, self.in_channels):
                got = None if features is None else tuple(features.shape)
                raise ValueError(f"{name}: features must be [B, N, {self.in_channels}] (in_channels), got {got}")
        elif features is not None and features.shape[-1] != 0:
            raise ValueError(f"{name}: built with in_channels=0, got features {tuple(features.shape)}")
        else:
            features = None
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=xyz.device)
            if lengths.shape != (b,) or lengths.is_floating_point() or lengths.dtype == torch.bool:
                raise ValueError(f"{name}: lengths must be an integer tensor of shape [{b}], got {lengths.dtype} "
                                 f"{tuple(lengths.shape)}")
            lengths = lengths.long()
        return features, lengths

    def forward(self, xyz: torch.Tensor, features: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        features, lengths = self._check_inputs(xyz, features, lengths)
        valid = valid_points(xyz, lengths)
        mask = None if bool(valid.all()) else valid
        x = _zero_invalid(xyz, mask)
        f = x if features is None else torch.cat([x, _zero_invalid(features, mask)], -1)
        f = _zero_invalid(F.relu(_bn(self.embed_bn, self.embed(f), mask)), mask)
        for stage in self.stages:
            xyz, f = stage(xyz, f, lengths, mask)
            lengths = mask = None                          # sampled levels hold valid points only
        return self.head(torch.cat([f.amax(1), f.mean(1)], -1))
