"""A small 2D U-Net for range images (organised point clouds laid out as H x W images of per-pixel features), the
image-grid approach to point-cloud segmentation of SqueezeSeg (Wu et al. 2018) and RangeNet++ (Milioto et al.
2019), with the encoder-decoder of U-Net (Ronneberger et al. 2015).

``RangeUNet(in_channels, out_channels, widths=(16, 32, 64, 128))``: [B, C_in, H, W] -> [B, C_out, H, W]. Each
level is two 3x3 conv + BatchNorm + ReLU blocks; levels are joined by 2x2 max-pooling on the way down and 2x2
transposed convolutions on the way up, with the encoder's features concatenated (skip connections), then a 1x1
convolution to ``out_channels`` logits. H and W must be multiples of 2 ** (len(widths) - 1).

Plain torch only. Widths 16-128 (0.48 M parameters with 11 inputs): a CPU-sized network, wide enough for the
few object/table/boundary cues a tabletop scene needs; three poolings give a receptive field of about 100
pixels, wider than the contact between two objects and than most objects at 320 x 240.
"""
from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class RangeUNet(nn.Module):
    """U-Net over a range image (module docstring): [B, in_channels, H, W] -> [B, out_channels, H, W] logits."""

    # selects the point_cloud_segmentation pipeline's organised-grid path (range_instances: features, grouping)
    input_format = "organised_grid"

    def __init__(self, in_channels: int = 11, out_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        if in_channels < 1 or out_channels < 1 or len(widths) < 2:
            raise ValueError(f"need in_channels >= 1, out_channels >= 1 and >= 2 widths, got {in_channels}, "
                             f"{out_channels}, {widths}")
        self.in_channels, self.out_channels, self.widths = in_channels, out_channels, tuple(widths)
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                for i in reversed(range(len(widths) - 1)))
        self.merge = nn.ModuleList(_block(2 * widths[i], widths[i]) for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        multiple = 2 ** (len(self.widths) - 1)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"RangeUNet expects [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        if x.shape[2] % multiple or x.shape[3] % multiple:
            raise ValueError(f"RangeUNet: H and W must be multiples of {multiple}, got {x.shape[2]} x {x.shape[3]}")
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = nn.functional.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)
