"""InceptionTime (Ismail Fawaz et al., DMKD 2020): one network of the ensemble, for classification.

Layout as the authors' Keras model: `depth` Inception modules, each an optional 1x1 bottleneck (only when the
input has more than one channel) feeding three parallel convolutions, beside a max-pool(3) + 1x1 branch, all
`nb_filters` wide and without bias, concatenated (4 * nb_filters channels), then BatchNorm and ReLU; a
shortcut (1x1 conv + BatchNorm, added, ReLU) every third module; global average pooling; Linear.

Kernel sizes: kernel_size // 2**i for i = 0, 1, 2 (40, 20, 10 in the paper), each lowered to the next odd
number (39, 19, 9) so that 'same' padding is symmetric.

Variable length (x zero-padded at the end, mask True at real steps): padded steps are reset to zero after every
module and shortcut, the max-pool treats them as -inf, BatchNorm takes its training statistics over real steps
only, and the average pool is over real steps. A convolution near the end of a series therefore reads zeros
past it, exactly what its own 'same' zero padding reads on the unpadded series, so `model(x_pad, mask)` equals
`model(x)` on each series (up to float rounding), in eval mode and, per batch, in training statistics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over (B, C, T) whose training statistics (and running-stat updates) use only the steps
    where mask (B, T) is True, so padding does not shift them. Eval mode, or no mask, is plain BatchNorm1d."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None or not self.training or x.dim() != 3:
            return super().forward(x)
        weights = mask.to(x.dtype).unsqueeze(1)                      # (B, 1, T)
        count = weights.sum()
        if count < 2:
            raise ValueError(f"MaskedBatchNorm1d: need at least 2 real steps in a training batch, got {int(count)}")
        mean = (x * weights).sum(dim=(0, 2)) / count
        var = (((x - mean[:, None]) ** 2) * weights).sum(dim=(0, 2)) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * (count / (count - 1)), momentum)
        out = (x - mean[:, None]) * torch.rsqrt(var[:, None] + self.eps)
        if self.affine:
            out = out * self.weight[:, None] + self.bias[:, None]
        return out


def odd_kernel_sizes(kernel_size: int, count: int = 3) -> list[int]:
    """kernel_size // 2**i, each made odd (k - 1 when even) for symmetric 'same' padding."""
    sizes = [kernel_size // 2 ** i for i in range(count)]
    sizes = [k - 1 if k % 2 == 0 else k for k in sizes]
    if min(sizes) < 1:
        raise ValueError(f"kernel_size={kernel_size} is too small for {count} halvings")
    return sizes


def max_pool3(x: torch.Tensor) -> torch.Tensor:
    """F.max_pool1d(x, 3, stride=1, padding=1) as two elementwise maxima of shifted views: the same values,
    several times faster on CPU than the pooling kernel (which dominated a training step after the convolutions)."""
    left = F.pad(x[..., :-1], (1, 0), value=float("-inf"))
    right = F.pad(x[..., 1:], (0, 1), value=float("-inf"))
    return torch.maximum(torch.maximum(left, x), right)


def _zero_padding(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x.masked_fill(~mask.unsqueeze(1), 0.0)


class InceptionModule(nn.Module):
    def __init__(self, in_channels: int, nb_filters: int = 32, kernel_size: int = 40, bottleneck_size: int = 32,
                 use_bottleneck: bool = True):
        super().__init__()
        # as the authors' code: a single-channel input skips the bottleneck
        self.bottleneck = (nn.Conv1d(in_channels, bottleneck_size, 1, bias=False)
                           if use_bottleneck and in_channels > 1 else None)
        branch_in = bottleneck_size if self.bottleneck is not None else in_channels
        self.convs = nn.ModuleList(nn.Conv1d(branch_in, nb_filters, k, padding=k // 2, bias=False)
                                   for k in odd_kernel_sizes(kernel_size))
        self.pool_conv = nn.Conv1d(in_channels, nb_filters, 1, bias=False)
        self.bn = MaskedBatchNorm1d(4 * nb_filters)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # x has zeros at padded steps (the caller's invariant), which the convolutions read as 'same' padding
        branch = self.bottleneck(x) if self.bottleneck is not None else x
        outs = [conv(branch) for conv in self.convs]
        # max-pool(3, stride 1, 'same') reads -inf beyond the ends; padded steps must look the same, then be
        # zero again for the 1x1 conv
        pooled = max_pool3(x if mask is None else x.masked_fill(~mask.unsqueeze(1), float("-inf")))
        outs.append(self.pool_conv(_zero_padding(pooled, mask)))
        return _zero_padding(F.relu(self.bn(torch.cat(outs, dim=1), mask)), mask)


class Shortcut(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.bn = MaskedBatchNorm1d(out_channels)

    def forward(self, residual: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return _zero_padding(F.relu(x + self.bn(self.conv(residual), mask)), mask)


class InceptionTime(nn.Module):
    """One InceptionTime network: x (B, C, T) [, mask (B, T) bool, True = real] -> logits (B, num_classes).

    seq_length is accepted for the common constructor and unused: the network takes any length.
    """

    fixed_length = False

    def __init__(self, num_channels: int, seq_length: int | None, num_classes: int, *,
                 nb_filters: int = 32, depth: int = 6, kernel_size: int = 40, bottleneck_size: int = 32,
                 use_residual: bool = True, use_bottleneck: bool = True):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        width = 4 * nb_filters
        self.inception = nn.ModuleList(
            InceptionModule(num_channels if d == 0 else width, nb_filters, kernel_size, bottleneck_size,
                            use_bottleneck) for d in range(depth))
        # one shortcut after every third module; its input is the previous shortcut's output (or x)
        self.shortcuts = nn.ModuleList(
            Shortcut(num_channels if d == 2 else width, width)
            for d in range(depth) if use_residual and d % 3 == 2)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"InceptionTime: expected x of shape (B, C, T), got {tuple(x.shape)}")
        if mask is not None:
            if mask.shape != (x.shape[0], x.shape[2]):
                raise ValueError(f"InceptionTime: mask must be (B, T) = {(x.shape[0], x.shape[2])}, "
                                 f"got {tuple(mask.shape)}")
            mask = mask.to(device=x.device, dtype=torch.bool)
            if bool(mask.all()):
                mask = None  # an equal-length batch: the plain (faster) path gives the same result
            else:
                x = _zero_padding(x, mask)
        residual = x
        shortcuts = iter(self.shortcuts)
        for d, module in enumerate(self.inception):
            x = module(x, mask)
            if len(self.shortcuts) and d % 3 == 2:
                x = next(shortcuts)(residual, x, mask)
                residual = x
        if mask is None:
            pooled = x.mean(dim=2)
        else:
            # padded steps are already zero: the masked mean is the sum over the real-step count
            pooled = x.sum(dim=2) / mask.sum(dim=1, keepdim=True).clamp_min(1).to(x.dtype)
        return self.fc(pooled)


__all__ = ["InceptionTime", "InceptionModule", "MaskedBatchNorm1d", "Shortcut", "max_pool3", "odd_kernel_sizes"]
