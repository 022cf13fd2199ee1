"""PSNR / SSIM exactly as the super-resolution literature computes them.

Two protocols, both on images scaled to [0, 255] and evaluated in float64:

* ``"basicsr"`` follows BasicSR's ``calculate_psnr`` / ``calculate_ssim`` (the numbers most
  PyTorch SR papers report): the BT.601 luma is kept as an unrounded float, with the same
  float32 intermediate steps as BasicSR's ``to_y_channel``.
* ``"matlab"`` follows the MATLAB evaluation scripts: images are 8-bit, and ``rgb2ycbcr`` on
  uint8 rounds the luma to an integer before PSNR/SSIM.

SSIM is Wang et al.'s: 11x11 Gaussian window (sigma 1.5), "valid" filtering, C1 = (0.01*255)^2,
C2 = (0.03*255)^2, averaged over the map (and over channels when not on Y).

Images are numpy H x W x C arrays in **RGB** order (as returned by ``image_io.read_image``; note
that ``cv2.imread`` gives BGR), uint8, uint16 or float in [0, 1]. Grayscale images (H x W or
H x W x 1) are replicated to three channels first, as BasicSR's colour image loader does.
To reproduce BasicSR's published figures pass uint8 images, as its test loop does.
"""

from __future__ import annotations

import cv2
import numpy as np

PROTOCOLS = ("basicsr", "matlab")

# BT.601 "studio swing" luma for R, G, B on the [0, 255] scale (MATLAB rgb2ycbcr, first row).
_Y_COEFFS = np.array([65.481, 128.553, 24.966])
_Y_OFFSET = 16.0


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown metric protocol {protocol!r}; expected one of {PROTOCOLS}")


def _as_rgb(img: np.ndarray, name: str) -> np.ndarray:
    """Validate an image and return it as H x W x 3 (gray replicated), original dtype."""
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(img).__name__}")
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3):
        raise ValueError(f"{name}: expected an RGB H x W x 3 or gray H x W (x 1) image, got shape {img.shape}")
    if img.dtype not in (np.uint8, np.uint16) and not np.issubdtype(img.dtype, np.floating):
        raise TypeError(f"{name}: expected uint8, uint16 or float in [0, 1], got dtype {img.dtype}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return img


def _to_255(img: np.ndarray) -> np.ndarray:
    """float64 image on the [0, 255] scale."""
    if img.dtype == np.uint8:
        return img.astype(np.float64)
    if img.dtype == np.uint16:
        return img.astype(np.float64) * (255.0 / 65535.0)
    return img.astype(np.float64) * 255.0


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """8-bit image, like MATLAB's im2uint8 (round half away from zero, saturate)."""
    if img.dtype == np.uint8:
        return img
    scaled = img.astype(np.float64) / 257.0 if img.dtype == np.uint16 else img.astype(np.float64) * 255.0
    return np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8)


def _prepare(img: np.ndarray, protocol: str) -> np.ndarray:
    """H x W x 3 float64 on [0, 255]; under the MATLAB protocol quantised to 8 bit first."""
    return _to_255(_to_uint8(img)) if protocol == "matlab" else _to_255(img)


def _luma(rgb255: np.ndarray, protocol: str) -> np.ndarray:
    """Y channel (H x W, float64, [16, 235] scale) of an RGB [0, 255] float64 image."""
    if protocol == "matlab":
        # rgb2ycbcr on uint8 evaluates in double and rounds the result back to uint8.
        y = np.dot(rgb255, _Y_COEFFS / 255.0) + _Y_OFFSET
        return np.clip(np.floor(y + 0.5), 0, 255)
    # BasicSR's to_y_channel: float32 image in [0, 1], dot with the coefficients in float64,
    # divided by 255 and cast to float32, then * 255 in float32.
    x = rgb255.astype(np.float32) / np.float32(255.0)
    y = np.dot(x, _Y_COEFFS) + _Y_OFFSET
    y = (y / 255.0).astype(np.float32) * np.float32(255.0)
    return y.astype(np.float64)


def rgb_to_y(img: np.ndarray, protocol: str = "basicsr") -> np.ndarray:
    """BT.601 luma of an RGB image as float64 H x W on the [16, 235] scale.

    ``protocol="matlab"`` rounds to integers (MATLAB ``rgb2ycbcr`` on uint8); ``"basicsr"``
    keeps the float value.
    """
    _check_protocol(protocol)
    return _luma(_prepare(_as_rgb(img, "img"), protocol), protocol)


def _pair(pred: np.ndarray, target: np.ndarray, crop_border: int, protocol: str,
          test_y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 H x W x C on [0, 255], border shaved, optionally reduced to Y."""
    _check_protocol(protocol)
    pred = _as_rgb(pred, "pred")
    target = _as_rgb(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
    if not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative int, got {crop_border!r}")
    height, width = pred.shape[:2]
    if 2 * crop_border >= min(height, width):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {height}x{width} image")
    if crop_border:
        pred = pred[crop_border:-crop_border, crop_border:-crop_border]
        target = target[crop_border:-crop_border, crop_border:-crop_border]
    pred = _prepare(pred, protocol)
    target = _prepare(target, protocol)
    if test_y_channel:
        return _luma(pred, protocol)[..., None], _luma(target, protocol)[..., None]
    return pred, target


def psnr(pred: np.ndarray, target: np.ndarray, crop_border: int = 0, protocol: str = "basicsr",
         test_y_channel: bool = True) -> float:
    """PSNR in dB with peak 255; ``inf`` for identical images.

    Args:
        pred, target: RGB (not BGR) H x W x 3 or gray images; uint8, uint16 or float in [0, 1].
        crop_border: pixels shaved from every side before measuring (the SR scale by convention).
        protocol: ``"basicsr"`` (float luma) or ``"matlab"`` (8-bit images, rounded luma).
        test_y_channel: measure on the BT.601 Y channel instead of RGB.
    """
    a, b = _pair(pred, target, crop_border, protocol, test_y_channel)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0 * 255.0 / mse))


def _ssim_single(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two float64 single-channel [0, 255] images with 'valid' 11x11 Gaussian filtering."""
    if min(a.shape) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after cropping, got {a.shape[0]}x{a.shape[1]}")
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    g = cv2.getGaussianKernel(11, 1.5)
    window = np.outer(g, g)

    def local_mean(x: np.ndarray) -> np.ndarray:
        # Filtering the full image then cutting 5 pixels per side equals 'valid' filtering.
        return cv2.filter2D(x, -1, window)[5:-5, 5:-5]

    mu_a, mu_b = local_mean(a), local_mean(b)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = local_mean(a * a) - mu_aa
    var_b = local_mean(b * b) - mu_bb
    cov = local_mean(a * b) - mu_ab
    ssim_map = ((2 * mu_ab + c1) * (2 * cov + c2)) / ((mu_aa + mu_bb + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim(pred: np.ndarray, target: np.ndarray, crop_border: int = 0, protocol: str = "basicsr",
         test_y_channel: bool = True) -> float:
    """SSIM (Wang et al. 2004), same arguments and conventions as :func:`psnr`.

    Without ``test_y_channel`` the SSIM of each RGB channel is averaged.
    """
    a, b = _pair(pred, target, crop_border, protocol, test_y_channel)
    return float(np.mean([_ssim_single(a[..., c], b[..., c]) for c in range(a.shape[2])]))


class ImageMetric:
    """Streaming mean of a per-image score (registered in METRICS as ``psnr`` / ``ssim``).

    ``update(prediction, targets)`` takes ``{"names": [...], "images": [...]}`` and the matching target
    images; ``compute()`` gives the mean over every image, the protocol used, and the per-image scores.
    """

    score = staticmethod(psnr)
    name = "psnr"

    def __init__(self, crop_border: int = 0, protocol: str = "basicsr", test_y_channel: bool = True):
        _check_protocol(protocol)
        self.crop_border, self.protocol, self.test_y_channel = crop_border, protocol, test_y_channel
        self.reset()

    def reset(self) -> None:
        self.per_image: dict[str, float] = {}

    def update(self, prediction: dict, targets: list) -> None:
        for name, pred, target in zip(prediction["names"], prediction["images"], targets):
            self.per_image[name] = self.score(pred, target, crop_border=self.crop_border, protocol=self.protocol,
                                              test_y_channel=self.test_y_channel)

    def compute(self) -> dict:
        if not self.per_image:
            raise ValueError(f"{self.name}: compute() before any update()")
        return {self.name: float(np.mean(list(self.per_image.values()))), "images": len(self.per_image),
                "protocol": self.protocol, "crop_border": self.crop_border, "y_channel": self.test_y_channel,
                f"per_image_{self.name}": dict(self.per_image)}


class PSNRMetric(ImageMetric):
    score = staticmethod(psnr)
    name = "psnr"


class SSIMMetric(ImageMetric):
    score = staticmethod(ssim)
    name = "ssim"
