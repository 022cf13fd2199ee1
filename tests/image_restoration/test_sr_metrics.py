import cv2
import numpy as np
import pytest

from mtp.datasets.image_restoration.matlab_resize import imresize
from mtp.pipelines.image_restoration.metrics import psnr, rgb_to_y, ssim

# Set5 bicubic baseline measured with the official MATLAB protocol (Y channel, border = scale).
MATLAB_BICUBIC_SET5 = {2: (33.6404, 0.9292), 3: (30.3864, 0.8678), 4: (28.4177, 0.8101)}


def _read_rgb(path):
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def _set5_bicubic(data_dir, scale):
    """(name, bicubic upsampling of the official LR, HR) as RGB uint8."""
    folder = data_dir / "sr" / "Set5" / f"image_SRF_{scale}"
    for hr_path in sorted(folder.glob("*_HR.png")):
        lr = _read_rgb(hr_path.with_name(hr_path.name.replace("_HR", "_LR")))
        yield hr_path.name, imresize(lr, scale), _read_rgb(hr_path)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_matlab_protocol_reproduces_set5_bicubic_baseline(data_dir, scale):
    psnrs, ssims = [], []
    for _, up, hr in _set5_bicubic(data_dir, scale):
        psnrs.append(psnr(up, hr, crop_border=scale, protocol="matlab"))
        ssims.append(ssim(up, hr, crop_border=scale, protocol="matlab"))
    assert len(psnrs) == 5
    target_psnr, target_ssim = MATLAB_BICUBIC_SET5[scale]
    # The published figures have 4 decimals: they must be the rounded values of ours.
    assert abs(np.mean(psnrs) - target_psnr) <= 5e-5, np.mean(psnrs)
    assert abs(np.mean(ssims) - target_ssim) <= 5e-5, np.mean(ssims)


def test_basicsr_protocol_uses_unrounded_float_luma(data_dir):
    name, up, hr = next(_set5_bicubic(data_dir, 4))
    value = psnr(up, hr, crop_border=4, protocol="basicsr")

    # Same measurement written out directly in float64 (BasicSR differs only by float32 steps).
    def luma(img):
        return img[4:-4, 4:-4].astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255 + 16

    mse = np.mean((luma(up) - luma(hr)) ** 2)
    assert value == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-4), name
    # Rounding the luma (MATLAB) moves the figure measurably.
    assert abs(value - psnr(up, hr, crop_border=4, protocol="matlab")) > 1e-3
    y = rgb_to_y(hr, "basicsr")
    assert y.shape == hr.shape[:2] and np.count_nonzero(y != np.round(y)) > 0
    np.testing.assert_array_equal(rgb_to_y(hr, "matlab"), np.round(rgb_to_y(hr, "matlab")))


def test_rgb_psnr_ssim_and_identity(data_dir):
    _, up, hr = next(_set5_bicubic(data_dir, 2))
    mse = np.mean((up[2:-2, 2:-2].astype(np.float64) - hr[2:-2, 2:-2]) ** 2)
    assert psnr(up, hr, 2, test_y_channel=False) == pytest.approx(10 * np.log10(255**2 / mse), rel=1e-12)
    assert psnr(hr, hr, 2) == float("inf")
    assert ssim(hr, hr, 2) == pytest.approx(1.0, abs=1e-12)
    rgb_ssim = ssim(up, hr, 2, test_y_channel=False)
    assert 0.5 < rgb_ssim < 1.0
    # SSIM is symmetric in its arguments.
    assert ssim(hr, up, 2) == pytest.approx(ssim(up, hr, 2), abs=1e-12)


def test_input_types_are_equivalent(data_dir):
    _, up, hr = next(_set5_bicubic(data_dir, 3))
    for protocol in ("basicsr", "matlab"):
        reference = psnr(up, hr, 3, protocol)
        as_float = psnr(up.astype(np.float32) / 255, hr.astype(np.float32) / 255, 3, protocol)
        as_uint16 = psnr(up.astype(np.uint16) * 257, hr.astype(np.uint16) * 257, 3, protocol)
        assert as_float == pytest.approx(reference, abs=1e-6)
        assert as_uint16 == pytest.approx(reference, abs=1e-6)
        assert ssim(up.astype(np.float64) / 255, hr.astype(np.float64) / 255, 3, protocol) == pytest.approx(
            ssim(up, hr, 3, protocol), abs=1e-9)
    # Gray images count as three equal channels.
    gray_up, gray_hr = up[..., 1], hr[..., 1]
    replicated = np.repeat(gray_up[..., None], 3, axis=2), np.repeat(gray_hr[..., None], 3, axis=2)
    assert psnr(gray_up, gray_hr, 3) == psnr(*replicated, 3)
    assert ssim(gray_up[..., None], gray_hr[..., None], 3) == ssim(*replicated, 3)
    # White and black map to the ends of the studio-swing luma range.
    extremes = np.array([[[255, 255, 255], [0, 0, 0]]], np.uint8)
    np.testing.assert_allclose(rgb_to_y(extremes, "matlab"), [[235, 16]])
    np.testing.assert_allclose(rgb_to_y(extremes, "basicsr"), [[235, 16]], atol=1e-4)


def test_bad_inputs_are_rejected():
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(img, img[:30])
    with pytest.raises(ValueError, match="protocol"):
        psnr(img, img, protocol="skimage")
    with pytest.raises(ValueError, match="crop_border"):
        ssim(img, img, crop_border=16)
    with pytest.raises(ValueError, match="11x11"):
        ssim(img, img, crop_border=11)
    with pytest.raises(ValueError, match="RGB"):
        psnr(np.zeros((32, 32, 4)), np.zeros((32, 32, 4)))
    with pytest.raises(TypeError, match="dtype"):
        psnr(img.astype(np.int32), img.astype(np.int32))
