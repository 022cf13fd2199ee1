import numpy as np
import pytest
import torch
from torch import nn

from mtp.datasets.image_restoration.image_io import read_image
from mtp.pipelines.image_restoration.tiling import choose_tile_size, self_ensemble, tiled_forward


class TinyUpsampler(nn.Module):
    """conv-relu-conv-PixelShuffle: receptive-field radius 2 input pixels, well inside overlap / 4."""

    def __init__(self, scale: int, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x):
        return self.body(x)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    peak = b.abs().max().item()
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


@pytest.fixture(scope="module")
def lr_image(data_dir):
    # 170 x 170: not a multiple of the tile or of size_multiple, so every code path is exercised.
    rgb = read_image(data_dir / "sr" / "Set5" / "image_SRF_3" / "img_001_SRF_3_LR.png").rgb
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous()


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return TinyUpsampler(scale=2).eval()


@torch.no_grad()
def test_tiled_equals_untiled(lr_image, net):
    whole = net(lr_image)
    for tile, overlap, multiple in ((64, 16, 1), (48, 16, 8), (100, 12, 1)):
        tiled = tiled_forward(net, lr_image, scale=2, tile=tile, overlap=overlap, size_multiple=multiple)
        assert tiled.shape == whole.shape == (1, 3, 340, 340)
        # Padding the whole image to a multiple first changes the border like tiling does.
        reference = tiled_forward(net, lr_image, scale=2, size_multiple=multiple)
        assert _psnr(tiled, reference) > 50, (tile, overlap, multiple)
    assert _psnr(tiled_forward(net, lr_image, scale=2, tile=64), whole) > 50
    # Without overlap the tile borders show: the test above would notice missing blending.
    seams = tiled_forward(net, lr_image, scale=2, tile=64, overlap=0)
    assert _psnr(seams, whole) < 50


@torch.no_grad()
def test_small_images_run_whole_and_padding_is_cropped(lr_image, net):
    crop = lr_image[..., :37, :45]
    np.testing.assert_array_equal(tiled_forward(net, crop, scale=2, tile=64).numpy(), net(crop).numpy())
    padded = tiled_forward(net, crop, scale=2, size_multiple=16)
    assert padded.shape == (1, 3, 74, 90)
    # The reflected rows only reach the last output rows within the receptive field.
    np.testing.assert_allclose(padded[..., :60, :80].numpy(), net(crop)[..., :60, :80].numpy(), atol=1e-6)


def test_bad_arguments(lr_image, net):
    with pytest.raises(ValueError, match="overlap"):
        tiled_forward(net, lr_image, scale=2, tile=16, overlap=16)
    with pytest.raises(ValueError, match=r"H\*3"):
        tiled_forward(net, lr_image, scale=3, tile=64)
    with pytest.raises(ValueError, match="float"):
        tiled_forward(net, lr_image[0], scale=2)


def test_choose_tile_size_fits_budget(lr_image, net):
    tile = choose_tile_size(memory_budget_bytes=2_000_000, bytes_per_pixel_estimate=100, size_multiple=16)
    assert tile % 16 == 0 and tile * tile * 100 <= 2_000_000 < (tile + 16) ** 2 * 100
    assert choose_tile_size(1e9, 4) == 15811
    with pytest.raises(ValueError, match="does not fit"):
        choose_tile_size(1000, 100, size_multiple=8)
    with torch.no_grad():
        out = tiled_forward(net, lr_image, scale=2, tile=tile, overlap=16, size_multiple=16)
    assert out.shape == (1, 3, 340, 340)


@torch.no_grad()
def test_self_ensemble(lr_image, net):
    x = lr_image[..., :40, :52]
    # A convolution with a kernel invariant to flips and transposes, then nearest upsampling,
    # commutes with all 8 transforms: the ensemble must equal the plain output.
    torch.manual_seed(1)
    kernel = torch.randn(3, 3, 5, 5)
    kernel = kernel + kernel.flip(-1)
    kernel = kernel + kernel.flip(-2)
    kernel = kernel + kernel.transpose(-1, -2)
    kernel = kernel / kernel.abs().sum(dim=(1, 2, 3), keepdim=True)  # outputs stay O(1)

    def equivariant(t):
        return torch.nn.functional.interpolate(torch.nn.functional.conv2d(t, kernel, padding=2), scale_factor=2)

    torch.testing.assert_close(self_ensemble(equivariant, x), equivariant(x), rtol=0, atol=1e-5)
    # For any network the ensemble itself is equivariant, and differs from a single pass.
    ensembled = self_ensemble(net, x)
    assert ensembled.shape == (1, 3, 80, 104)
    assert _psnr(ensembled, net(x)) < 60
    torch.testing.assert_close(self_ensemble(net, x.flip(-1)), ensembled.flip(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(self_ensemble(net, x.transpose(-1, -2)), ensembled.transpose(-1, -2),
                               rtol=0, atol=1e-5)
