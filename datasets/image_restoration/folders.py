"""Image restoration datasets: paired HR/LR folders and HR-only folders degraded on the fly.

Items are dicts ``{"lq": float32 [C, h, w], "gt": float32 [C, H, W], "name": str}`` with RGB
values in [0, 1] (Gaussian-noise inputs are not clipped). Without ``patch_size`` whole images are
returned (evaluation, batch size 1); with it, aligned random crops of ``patch_size`` HR pixels,
optionally flipped/rotated. All randomness comes from ``numpy.random.default_rng((seed, epoch,
index))``, so an item is reproducible in any worker process; call ``set_epoch`` to draw new crops.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from mtp.files import resolve_data_root
from mtp.pipeline import InputError
from mtp.datasets.image_restoration.image_io import IMAGE_EXTENSIONS, declared_size, read_image
from mtp.datasets.image_restoration.matlab_resize import imresize

DEGRADATIONS = ("bicubic", "noise", "jpeg")


def _list_images(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"{what} folder {folder} holds no images with extensions {IMAGE_EXTENSIONS}")
    return files


def _load(path: Path) -> np.ndarray:
    """RGB image as its stored integer type (uint8/uint16), H x W x 3."""
    image = read_image(path)
    max_value = 255 if image.bit_depth == 8 else 65535
    dtype = np.uint8 if image.bit_depth == 8 else np.uint16
    return np.round(image.rgb * max_value).astype(dtype)


def _to_float(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) / np.float32(255)
    if img.dtype == np.uint16:
        return img.astype(np.float32) / np.float32(65535)
    return img.astype(np.float32)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(_to_float(img).transpose(2, 0, 1)))


def _mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    height, width = img.shape[:2]
    return img[: height - height % scale, : width - width % scale]


class _RestorationFolder(Dataset):
    """Per-item seeding, aligned cropping and dihedral augmentation shared by the SR folders."""

    def __init__(self, scale: int, patch_size: int | None, augment: bool, seed: int):
        if not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive int, got {scale!r}")
        if patch_size is not None and (patch_size < scale or patch_size % scale):
            raise ValueError(f"patch_size must be a positive multiple of scale={scale}, got {patch_size}")
        self.scale = scale
        self.patch_size = patch_size
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose which crops/augmentations training items use (same epoch, same items)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, index))

    def _crop_pair(self, lq: np.ndarray, gt: np.ndarray, name: str,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        lq_patch = self.patch_size // self.scale
        height, width = lq.shape[:2]
        if height < lq_patch or width < lq_patch:
            raise ValueError(f"{name}: low-quality image {height}x{width} is smaller than the "
                             f"{lq_patch}x{lq_patch} patch (patch_size={self.patch_size}, scale={self.scale})")
        top = int(rng.integers(0, height - lq_patch + 1))
        left = int(rng.integers(0, width - lq_patch + 1))
        s = self.scale
        lq = lq[top: top + lq_patch, left: left + lq_patch]
        gt = gt[top * s: (top + lq_patch) * s, left * s: (left + lq_patch) * s]
        return lq, gt

    @staticmethod
    def _augment(rng: np.random.Generator, *images: np.ndarray) -> tuple[np.ndarray, ...]:
        """Same horizontal flip, vertical flip and transpose (each with probability 1/2) for all images."""
        hflip, vflip, transpose = rng.random(3) < 0.5
        out = []
        for img in images:
            if hflip:
                img = img[:, ::-1]
            if vflip:
                img = img[::-1]
            if transpose:
                img = img.transpose(1, 0, 2)
            out.append(img)
        return tuple(out)

    def _item(self, lq: np.ndarray, gt: np.ndarray, name: str) -> dict:
        return {"lq": _to_tensor(lq), "gt": _to_tensor(gt), "name": name}


def _lr_key(stem: str, scale: int) -> str:
    """Name shared by an LR file and its HR partner: drops '_LR'/'_HR' and DIV2K's 'x4' suffix."""
    return re.sub(rf"(_LR|_HR|x{scale})$", "", stem)


class PairedImageFolder(_RestorationFolder):
    """HR images with pre-made LR partners, matched by file name.

    Supported layouts:
      * one folder with ``*_HR.png`` and ``*_LR.png`` (Set5/Set14 ``image_SRF_s``): give only ``hr_dir``;
      * DIV2K: ``hr_dir=DIV2K_train_HR`` (``0001.png``), ``lr_dir=DIV2K_train_LR_bicubic/X4``
        (``0001x4.png``); giving ``DIV2K_train_LR_bicubic`` itself picks its ``X{scale}`` subfolder;
      * two folders with identical file names.
    HR images up to ``scale - 1`` pixels larger than ``scale`` x LR are cropped (bottom/right) to match.
    """

    def __init__(self, hr_dir: str | os.PathLike, lr_dir: str | os.PathLike | None = None, *, scale: int,
                 patch_size: int | None = None, augment: bool = False, seed: int = 0):
        super().__init__(scale, patch_size, augment, seed)
        hr_dir = Path(hr_dir)
        hr_files = _list_images(hr_dir, "HR")
        if lr_dir is None:
            lr_files = [p for p in hr_files if p.stem.endswith("_LR")]
            hr_files = [p for p in hr_files if p.stem.endswith("_HR")]
            if not hr_files:
                raise ValueError(f"{hr_dir}: without lr_dir the folder must hold *_HR / *_LR image pairs")
        else:
            lr_dir = resolve_data_root(lr_dir, "lr_dir")  # relative: under $MTP_DATA_DIR, like the root
            if (lr_dir / f"X{scale}").is_dir():
                lr_dir = lr_dir / f"X{scale}"
            lr_files = _list_images(lr_dir, "LR")
        lr_by_key = {_lr_key(p.stem, scale): p for p in lr_files}
        missing = [p.name for p in hr_files if _lr_key(p.stem, scale) not in lr_by_key]
        if missing:
            where = lr_dir if lr_dir is not None else hr_dir
            raise ValueError(f"{len(missing)} HR image(s) have no LR partner in {where} "
                             f"(looked for the same name, name_LR or name x{scale}): {missing[:5]}")
        self.pairs = [(lr_by_key[_lr_key(p.stem, scale)], p) for p in hr_files]
        self._check_scale(scale)

    def _check_scale(self, scale: int) -> None:
        """The folder's LR/HR size ratio must be the model's scale: x2 weights on x4 pairs fail here, up front,
        read from the first pair's headers."""
        lr_path, hr_path = self.pairs[0]
        sizes = [declared_size(p.read_bytes()[:1 << 16], p.suffix) for p in (lr_path, hr_path)]
        if None in sizes:
            return  # a header that does not say: __getitem__ checks the decoded sizes
        (lh, lw), (hh, hw) = sizes
        if not (lh * scale <= hh < (lh + 1) * scale and lw * scale <= hw < (lw + 1) * scale):
            ratio = f"x{hh / lh:.3g}" if lh else "?"
            raise InputError(f"{hr_path.parent}: HR {hr_path.name} is {hh}x{hw} and LR {lr_path.name} is {lh}x{lw} "
                             f"({ratio}), but the model is x{scale}; use x{round(hh / lh) if lh else '?'} weights or "
                             f"the folder of x{scale} pairs")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        lr_path, hr_path = self.pairs[index]
        lq, gt = _load(lr_path), _load(hr_path)
        s = self.scale
        expected = (lq.shape[0] * s, lq.shape[1] * s)
        if not (expected[0] <= gt.shape[0] < expected[0] + s and expected[1] <= gt.shape[1] < expected[1] + s):
            raise ValueError(f"{hr_path} is {gt.shape[0]}x{gt.shape[1]} but {lr_path} is {lq.shape[0]}x{lq.shape[1]}; "
                             f"expected HR = {s} x LR")
        gt = gt[: expected[0], : expected[1]]
        name = _lr_key(hr_path.stem, s)
        if self.patch_size is not None:
            rng = self._rng(index)
            lq, gt = self._crop_pair(lq, gt, name, rng)
            if self.augment:
                lq, gt = self._augment(rng, lq, gt)
        return self._item(lq, gt, name)


class HROnlyFolder(_RestorationFolder):
    """Clean images degraded on the fly.

    degradation:
      * ``"bicubic"``: MATLAB bicubic downscaling by ``scale`` (HR mod-cropped to a multiple of it);
      * ``"noise"``: additive white Gaussian noise, independent per colour channel, ``sigma`` on
        the 0-255 scale, not clipped (the usual colour-denoising protocol);
      * ``"jpeg"``: OpenCV JPEG compression at ``quality``.
    In training mode (``patch_size`` set) the HR crop is taken first and then degraded.
    Noise is drawn from the per-item generator, so evaluation noise is fixed by ``seed``.

    ``pattern`` (a glob on file names, e.g. ``"*_HR.png"``) selects the clean images. Without it, a folder
    in the SelfExSR benchmark layout (Set5 ``image_SRF_s``: every image named ``*_HR`` or ``*_LR``) gives
    its ``*_HR`` images only, as its LR images are not clean images of their own.
    """

    def __init__(self, hr_dir: str | os.PathLike, degradation: str = "bicubic", *, scale: int = 1,
                 sigma: float | None = None, quality: int | None = None, patch_size: int | None = None,
                 augment: bool = False, seed: int = 0, pattern: str | None = None):
        if degradation not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {degradation!r}; expected one of {DEGRADATIONS}")
        if degradation != "bicubic" and scale != 1:
            raise ValueError(f"degradation {degradation!r} keeps the size; scale must be 1, got {scale}")
        if degradation == "noise" and (sigma is None or sigma < 0):
            raise ValueError(f"degradation 'noise' needs sigma >= 0 on the 0-255 scale, got {sigma!r}")
        if degradation == "jpeg" and (quality is None or not 1 <= quality <= 100):
            raise ValueError(f"degradation 'jpeg' needs quality in 1..100, got {quality!r}")
        super().__init__(scale, patch_size, augment, seed)
        self.degradation = degradation
        self.sigma = sigma
        self.quality = quality
        files = _list_images(Path(hr_dir), "HR")
        if pattern is not None:
            files = [path for path in files if fnmatch.fnmatch(path.name, pattern)]
            if not files:
                raise ValueError(f"HR folder {hr_dir} holds no images matching pattern {pattern!r}")
        elif all(path.stem.endswith(("_HR", "_LR")) for path in files):
            files = [path for path in files if path.stem.endswith("_HR")] or files
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def _degrade(self, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.degradation == "bicubic":
            return imresize(gt, 1.0 / self.scale)
        if self.degradation == "noise":
            noise = rng.standard_normal(gt.shape, dtype=np.float32) * np.float32(self.sigma / 255.0)
            return _to_float(gt) + noise
        if gt.dtype != np.uint8:
            gt = np.round(_to_float(gt) * 255).astype(np.uint8)  # JPEG is 8-bit
        ok, encoded = cv2.imencode(".jpg", gt[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(self.quality)])
        if not ok:
            raise RuntimeError(f"OpenCV failed to JPEG-encode an image of shape {gt.shape}")
        return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1]

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        gt = _mod_crop(_load(path), self.scale)
        rng = self._rng(index)
        if self.patch_size is not None:
            height, width = gt.shape[:2]
            p = self.patch_size
            if height < p or width < p:
                raise ValueError(f"{path}: image {height}x{width} is smaller than patch_size={p}")
            # Crop on the scale grid so bicubic borders fall on the same pixel phase as full images.
            top = self.scale * int(rng.integers(0, (height - p) // self.scale + 1))
            left = self.scale * int(rng.integers(0, (width - p) // self.scale + 1))
            gt = gt[top: top + p, left: left + p]
            if self.augment:
                (gt,) = self._augment(rng, gt)
        return self._item(self._degrade(gt, rng), gt, path.stem)
