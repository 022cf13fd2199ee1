"""IMDN: the official Zheng222/IMDN checkpoints load strictly and super-resolve a real Set5 image."""
import cv2
import numpy as np
import pytest
import torch

from mtp.backbones.imdn import IMDN


pytestmark = pytest.mark.usefixtures("one_thread")


def load_official(path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("params_ema", state)
    return {key.removeprefix("module."): value for key, value in state.items()}


def read_rgb(path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return np.ascontiguousarray(image[:, :, ::-1])


def rgb_psnr(a: np.ndarray, b: np.ndarray, shave: int) -> float:
    a = a[shave:-shave, shave:-shave].astype(np.float64)
    b = b[shave:-shave, shave:-shave].astype(np.float64)
    return float(10 * np.log10(255.0 ** 2 / np.mean((a - b) ** 2)))


@pytest.mark.parametrize("scale", [2, 4])
def test_official_checkpoint_loads_strictly(weights_dir, scale):
    state = load_official(weights_dir / "imdn" / f"IMDN_x{scale}.pth")
    model = IMDN(upscale=scale)
    model.load_state_dict(state, strict=True)
    assert list(model.state_dict()) == list(state)


def test_x3_constructs_with_official_size():
    model = IMDN(upscale=3)
    assert model.upsampler[0].out_channels == 27
    assert sum(p.numel() for p in model.parameters()) == 703_059  # paper: 703K parameters for x3


def test_x4_beats_bicubic_on_set5(weights_dir, data_dir):
    folder = data_dir / "sr" / "Set5" / "image_SRF_4"
    lr = read_rgb(folder / "img_001_SRF_4_LR.png")
    hr = read_rgb(folder / "img_001_SRF_4_HR.png")
    model = IMDN(upscale=4).eval()
    model.load_state_dict(load_official(weights_dir / "imdn" / "IMDN_x4.pth"), strict=True)

    x = torch.from_numpy(lr.transpose(2, 0, 1).copy()).float().unsqueeze(0) / 255.0  # official: /255, no mean
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, hr.shape[0], hr.shape[1])
    sr = (y[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round()

    bicubic = cv2.resize(lr, (hr.shape[1], hr.shape[0]), interpolation=cv2.INTER_CUBIC)
    psnr_sr, psnr_bicubic = rgb_psnr(sr, hr, 4), rgb_psnr(bicubic, hr, 4)
    assert psnr_sr > psnr_bicubic + 1.0, (psnr_sr, psnr_bicubic)  # measured: 32.27 vs 30.59 dB


def test_bad_width_is_rejected():
    with pytest.raises(ValueError, match="divisible by 4"):
        IMDN(nf=30)
