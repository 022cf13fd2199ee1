import cv2
import numpy as np
import pytest

from mtp.datasets.image_restoration.matlab_resize import imresize


def _set5_pairs(data_dir, scale):
    folder = data_dir / "sr" / "Set5" / f"image_SRF_{scale}"
    hr_files = sorted(folder.glob("*_HR.png"))
    assert len(hr_files) == 5, f"expected 5 Set5 HR images in {folder}"
    for hr_path in hr_files:
        lr_path = hr_path.with_name(hr_path.name.replace("_HR", "_LR"))
        yield hr_path.name, cv2.imread(str(hr_path), cv2.IMREAD_COLOR), cv2.imread(str(lr_path), cv2.IMREAD_COLOR)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_regenerates_set5_lr_bit_exactly(data_dir, scale):
    for name, hr, lr in _set5_pairs(data_dir, scale):
        # Channels are resized independently, so BGR in gives BGR out.
        out = imresize(hr, 1 / scale)
        assert out.dtype == np.uint8 and out.shape == lr.shape, name
        mismatches = int(np.count_nonzero(out != lr))
        assert mismatches == 0, f"{name}: {mismatches} pixels differ from the official LR"


def test_output_shape_and_channels_agree_with_scale(data_dir):
    _, hr, lr = next(_set5_pairs(data_dir, 3))
    by_shape = imresize(hr, output_shape=lr.shape[:2])
    np.testing.assert_array_equal(by_shape, lr)
    # A single channel (2-D array) is resized exactly like that channel of the colour image.
    np.testing.assert_array_equal(imresize(hr[..., 1], 1 / 3), lr[..., 1])


def test_integer_images_are_rounded_after_each_pass(data_dir):
    _, hr, lr = next(_set5_pairs(data_dir, 4))
    as_float = imresize(hr.astype(np.float64), 1 / 4)
    assert as_float.dtype == np.float64
    # Without the intermediate rounding the result is close to, but not equal to, MATLAB's uint8 output.
    difference = np.abs(np.round(as_float) - lr.astype(np.float64))
    assert difference.max() <= 1 and np.count_nonzero(difference) > 0
    # uint16 follows the same rules on its own range: 257 * v keeps the 8-bit result to within 1/257.
    as_uint16 = imresize(hr.astype(np.uint16) * 257, 1 / 4)
    assert as_uint16.dtype == np.uint16
    assert np.abs(as_uint16.astype(np.float64) / 257 - lr).max() <= 1


def test_upscaling_shapes_constants_and_identity(data_dir):
    _, _, lr = next(_set5_pairs(data_dir, 4))
    up = imresize(lr, 4)
    assert up.shape == (lr.shape[0] * 4, lr.shape[1] * 4, 3)
    np.testing.assert_array_equal(imresize(lr, 1.0), lr)
    flat = np.full((7, 9), 0.25)
    np.testing.assert_allclose(imresize(flat, (3, 0.5)), np.full((21, 5), 0.25), atol=1e-12)
    odd = imresize(lr, output_shape=(100, 37))
    assert odd.shape == (100, 37, 3)
    # Bicubic overshoots at edges; float output is not clipped.
    steps = np.zeros((8, 8))
    steps[:, 4:] = 1.0
    up_steps = imresize(steps, 2)
    assert up_steps.min() < 0 and up_steps.max() > 1


def test_bad_arguments_are_rejected():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(img, 0.5, output_shape=(4, 4))
    with pytest.raises(ValueError, match="exactly one"):
        imresize(img)
    with pytest.raises(ValueError, match="positive"):
        imresize(img, -2)
    with pytest.raises(ValueError, match="shape"):
        imresize(np.zeros((2, 2, 2, 2)), 2)
    with pytest.raises(TypeError, match="numpy"):
        imresize([[1, 2], [3, 4]], 2)
    with pytest.raises(TypeError, match="dtype"):
        imresize(np.zeros((4, 4), bool), 2)
