"""Super-resolution, denoising and JPEG restoration pipelines.

Preprocessing reads any 8/16-bit gray/RGB/RGBA image with OpenCV; the network sees RGB in [0, 1]; alpha
is resized on its own (bicubic) and re-attached; outputs keep the input's bit depth and grayness. Large
images run in overlapping tiles whose size is chosen from a memory budget, with padding to the model's
size multiple done exactly as the official HAT pipeline (reflect bottom/right, crop after).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from mtp.backbones import sr_detect
from mtp.datasets.image_restoration.folders import HROnlyFolder, PairedImageFolder
from mtp.pipelines.image_restoration import metrics as image_metrics
from mtp.datasets.image_restoration.image_io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    read_image,
    write_image,
)
from mtp.pipelines.image_restoration.tiling import (
    choose_tile_size,
    self_ensemble,
    tiled_forward,
)

from mtp.config import check_kwargs
from mtp.files import resolve_data_root
from mtp.pipeline import InputError, TaskPipeline
from mtp.weights import WeightsError, compare, load_into, load_state_dict_file

log = logging.getLogger("mtp.image_restoration")
DEFAULT_CPU_BUDGET = 1.5 * 2 ** 30  # bytes of activations for one tile


def _bytes_per_input_pixel(model) -> float:
    """Peak activation bytes per input pixel of a tile, for picking a tile size from a memory budget.

    Calibrated with benchmarks/sr_bench.py (peak RSS on tiles of several sizes) for the shipped models.
    """
    if hasattr(model, "window_size"):  # HAT: ~17 token maps in its widest block, or the 64-channel upsampler
        return 4.0 * max(17 * model.conv_first.out_channels, 2.5 * 64 * getattr(model, "upscale", 1) ** 2)
    return 4.0 * 64 * 20  # IMDN: six 64-channel block outputs, their concatenation, oneDNN's reorder buffers


def available_memory() -> int:
    """Bytes of memory the system can give without swapping (Linux MemAvailable; free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass
class RestorationOptions:
    scale: Optional[int] = None          # super-resolution factor; with weights it is read from them
    tile: Union[int, str, None] = "auto"  # input tile side in pixels, "auto" (from max_memory) or None (whole image)
    tile_overlap: int = 16               # input pixels shared by neighbouring tiles
    max_memory: Optional[float] = None   # bytes for one tile's activations; default 1.5 GiB on CPU, half of free CUDA
    self_ensemble: bool = False          # x8 flips/rotations averaged
    output_format: Optional[str] = None  # e.g. "png": change the output extension; None keeps the input's
    min_size: int = 2                    # smaller inputs are rejected (a 1x1 image cannot be reflect-padded)
    max_pixels: Optional[int] = None     # larger inputs are rejected before decoding; None: what memory holds

    def validate(self):
        if self.tile is not None and self.tile != "auto" and (not isinstance(self.tile, int) or self.tile < 8):
            raise ValueError(f"tile={self.tile!r}: expected 'auto', null (whole image) or a side of at least 8 pixels")
        if self.tile_overlap < 0:
            raise ValueError(f"tile_overlap={self.tile_overlap}: expected 0 or more pixels")
        if self.max_memory is not None and self.max_memory <= 0:
            raise ValueError(f"max_memory={self.max_memory}: expected a positive number of bytes")
        if self.output_format is not None and "." + self.output_format.lstrip(".").lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"output_format={self.output_format!r}: expected one of "
                             f"{', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}")
        if self.min_size < 1 or (self.max_pixels is not None and self.max_pixels < 1):
            raise ValueError("min_size and max_pixels must be positive")


@dataclass
class DenoisingOptions(RestorationOptions):
    sigma: float = 25                    # noise level (0-255 scale) when evaluating on clean images


@dataclass
class JPEGOptions(RestorationOptions):
    quality: int = 10                    # JPEG quality when evaluating on clean images

    def validate(self):
        super().validate()
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality={self.quality}: expected 1-100")


class ImageRestorationPipeline(TaskPipeline):
    """Shared by all image-to-image tasks; subclasses fix the scale rule and the degradation."""

    input_suffixes = IMAGE_EXTENSIONS
    max_batch_items = 1  # images differ in size; tiles give the parallelism
    default_backbone = "hat"
    scales: ClassVar[tuple] = (1,)
    metrics = ("psnr", "ssim")
    Options = RestorationOptions

    # ------------------------------------------------------------------ model
    def build_model(self, backbone, weights, **kwargs):
        scale = self.config["scale"]
        if scale is not None and scale not in self.scales:
            raise ValueError(f"{self.task}: scale {scale!r} is not supported; expected one of {self.scales}")
        if not weights:
            entry = self.backbone_entry(backbone)
            upscale = scale or self.scales[-1]
            self.model_kwargs = {**entry.kwargs, "upscale": upscale, **kwargs}
            self.arch = None
            return entry.build(upscale=upscale, **kwargs)
        source = str(weights)
        state = load_state_dict_file(weights)
        try:
            arch = sr_detect.detect(state)
        except ValueError as err:
            raise WeightsError(f"{source}: {err}") from None
        asked = backbone
        if asked is not None:
            self.backbone_entry(asked)  # an unknown name fails with the valid ones
            family = arch.variant or arch.name
            if asked != family:
                raise WeightsError(f"{source} holds {family} (x{arch.scale}) weights, but backbone {asked!r} "
                                   f"was asked for; drop --backbone to use what the file holds")
        if scale is not None and scale != arch.scale:
            raise WeightsError(f"{source} is a x{arch.scale} model, but scale={scale} was asked for")
        if arch.scale not in self.scales:
            raise WeightsError(f"{source} is a x{arch.scale} model; {self.task} needs scale {self.scales}")
        model = sr_detect.build(arch)
        load_into(model, state, source=source)
        self.arch, self.model_kwargs = arch, dict(arch.kwargs)
        return model

    def official_release(self, spec, options: dict) -> str:
        scale = options.get("scale") or self.scales[-1]
        return f"x{scale}" if f"x{scale}" in spec.weights else super().official_release(spec, options)

    @property
    def scale(self) -> int:
        return int(getattr(self.model, "upscale", 1))

    @property
    def size_multiple(self) -> int:
        return int(getattr(self.model, "size_multiple", 1))

    def tile_size(self, height: int, width: int) -> int | None:
        tile = self.config["tile"]
        if tile is None or tile != "auto":
            return tile
        budget = self.config["max_memory"]
        if budget is None:
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                budget = free / 2
            else:
                budget = DEFAULT_CPU_BUDGET
        per_pixel = _bytes_per_input_pixel(self.model)
        side = choose_tile_size(float(budget), per_pixel, self.size_multiple)
        if max(height, width) <= side:
            return None
        # tiled_forward keeps an output-sized weighted sum of the whole image beside each tile: they share the
        # budget (down to a quarter of it for tiles, as the output has to exist anyway)
        element = torch.finfo(self.dtype).bits // 8
        accumulation = height * width * self.scale ** 2 * getattr(self.model, "out_chans", 3) * element
        return choose_tile_size(max(float(budget) - accumulation, budget / 4), per_pixel, self.size_multiple)

    def pixel_limit(self) -> dict:
        """read_image's max_pixels (and why): the option, or what available memory holds for the whole-image
        buffers (the decoded input, ~16 B per pixel, and the float output plus its integer copy, ~18 B per
        output pixel); a tile's activations have their own budget (max_memory)."""
        if self.config["max_pixels"] is not None:
            return {"max_pixels": int(self.config["max_pixels"]), "max_pixels_reason": " (option max_pixels)"}
        available = available_memory()
        per_pixel = 16 + 18 * self.scale ** 2
        return {"max_pixels": available // per_pixel,
                "max_pixels_reason": f" at x{self.scale} in the {available / 2 ** 30:.1f} GiB of memory available "
                                     f"(about {per_pixel} bytes per input pixel); split the image or set max_pixels"}

    # ------------------------------------------------------------------ stages
    def load(self, source):
        if isinstance(source, (str, Path)):
            return read_image(source, min_size=self.config["min_size"], **self.pixel_limit())
        if isinstance(source, np.ndarray):  # an RGB array, uint8/uint16 or float in [0, 1]
            if source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (3, 4)):
                raise InputError(f"array input: expected H x W, H x W x 3 or H x W x 4, got {source.shape}")
            depth = 16 if source.dtype == np.uint16 else 8
            scaled = source.astype(np.float32) / (65535.0 if depth == 16 else 255.0 if source.dtype == np.uint8 else 1.0)
            gray = scaled.ndim == 2
            rgb = np.repeat(scaled[..., None], 3, axis=2) if gray else scaled[..., :3]
            alpha = scaled[..., 3] if not gray and scaled.shape[2] == 4 else None
            from mtp.datasets.image_restoration.image_io import Image
            return Image(rgb=np.ascontiguousarray(rgb), alpha=alpha, bit_depth=depth, is_gray=gray, path=Path("<array>"))
        raise InputError(f"{self.task}: expected an image path or a numpy array, got {type(source).__name__}")

    def preprocess(self, item) -> dict:
        return {"lq": torch.from_numpy(np.ascontiguousarray(item.rgb.transpose(2, 0, 1)))[None]}

    def restore(self, lq: torch.Tensor) -> torch.Tensor:
        """[1, 3, H, W] in [0, 1] -> [1, 3, sH, sW], tiled and padded as needed; clamped to [0, 1]."""
        lq = lq.to(self.device, self.dtype)
        tile = self.tile_size(*lq.shape[-2:])

        def run(x):
            return tiled_forward(self.model, x, self.scale, tile=tile, overlap=self.config["tile_overlap"],
                                 size_multiple=self.size_multiple, pad_mode="reflect")

        with torch.inference_mode():
            out = self_ensemble(run, lq) if self.config["self_ensemble"] else run(lq)
            return out.float().clamp_(0, 1)  # in place: a large image's output is the biggest tensor here

    def forward(self, inputs: list[dict]) -> list:
        return [self.restore(x["lq"]) for x in inputs]

    def postprocess(self, output: torch.Tensor, item, inputs: dict) -> dict:
        rgb = output[0].permute(1, 2, 0).cpu().numpy()
        alpha = item.alpha
        if alpha is not None and alpha.shape != rgb.shape[:2]:
            alpha = np.clip(cv2.resize(alpha, rgb.shape[1::-1], interpolation=cv2.INTER_CUBIC), 0, 1)
        return {"rgb": rgb, "alpha": alpha, "bit_depth": item.bit_depth, "is_gray": item.is_gray}

    def output_paths(self, relative: Path) -> list[Path]:
        fmt = self.config["output_format"]
        return [relative.with_name(self.stem(relative) + "." + fmt.lstrip(".")) if fmt else relative]

    def save(self, result: dict, paths: list[Path], overwrite: bool) -> list[Path]:
        (path,) = paths
        depth = result["bit_depth"]
        if depth == 16 and path.suffix.lower() in (".jpg", ".jpeg", ".webp", ".bmp"):
            depth = 8  # the format cannot hold more
        return [write_image(path, result["rgb"], alpha=result["alpha"], bit_depth=depth,
                            is_gray=result["is_gray"], overwrite=overwrite)]

    # ------------------------------------------------------------------ evaluation
    def evaluation_dataset(self, data, split: str = "test"):
        """A paired folder (Set5 `image_SRF_s`, DIV2K layout), HR-only images degraded by the task, or a dataset."""
        return self._eval_dataset(Path(data)) if isinstance(data, (str, Path)) else data

    def evaluation_loader(self, dataset, batch_size):
        from torch.utils.data import DataLoader

        return DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=lambda batch: batch)  # sizes differ

    def evaluation_step(self, batch) -> tuple:
        """Outputs are rounded to 8 bits first, as saved files are; metrics compare uint8 RGB images."""
        names, preds, gts = [], [], []
        for sample in batch:
            out = self.restore(sample["lq"][None])[0].permute(1, 2, 0).cpu().numpy()
            preds.append(np.round(out * 255.0).astype(np.uint8))
            gts.append(np.round(np.clip(sample["gt"].permute(1, 2, 0).numpy(), 0, 1) * 255.0).astype(np.uint8))
            names.append(sample["name"])
        return {"names": names, "images": preds}, gts

    def metric_option_names(self) -> set:
        return {"protocol", "crop_border", "test_y_channel"}

    def metric_kwargs(self, name: str, options: dict) -> dict:
        crop = options.get("crop_border")
        return {"crop_border": self.scale if crop is None else crop, "protocol": options.get("protocol", "basicsr"),
                "test_y_channel": options.get("test_y_channel", True)}

    def _eval_dataset(self, folder: Path):
        folder = resolve_data_root(folder, "data")
        if self.scale == 1:  # restoration: clean images degraded here (an LR partner has another size)
            return self.clean_folder_dataset(folder, seed=0)
        return PairedImageFolder(folder, scale=self.scale)

    def clean_folder_dataset(self, folder, **kwargs):
        return HROnlyFolder(folder, degradation="bicubic", scale=self.scale, **kwargs)

    # ------------------------------------------------------------------ training from a recipe
    @classmethod
    def from_recipe(cls, recipe):
        from mtp.registry import BACKBONES

        if recipe.backbone.kwargs:
            check_kwargs(BACKBONES.get(recipe.backbone.name or cls.default_backbone).load(), recipe.backbone.kwargs,
                         "backbone.kwargs", recipe.output.name or "recipe")
        device = "cpu" if recipe.train is None or recipe.train.accelerator == "cpu" else "auto"
        # Training: the recipe's backbone and scale define the model and `weights` only initialise it
        # (a x2 model starts x3/x4 training); evaluation reads architecture and scale from the weights.
        finetune = recipe.train is not None and recipe.backbone.weights
        pipe = cls(backbone=recipe.backbone.name, weights=None if finetune else recipe.backbone.weights,
                   device=device, backbone_kwargs=recipe.backbone.kwargs,
                   pretrained=False if recipe.train else None, **recipe.options)
        if finetune:
            pipe.init_from(recipe.backbone.weights)
        return pipe

    def init_from(self, weights) -> None:
        """Load pretrained weights to train from; every tensor must fit except the scale-specific upsampler
        (the official finetune options load x2 weights into x3/x4 models and skip what does not fit)."""
        source = str(weights)
        state = load_state_dict_file(weights)
        report = compare(self.model, state)
        misfits = report.missing + report.unexpected + [key for key, _, _ in report.mismatched]
        if any(not key.startswith("upsample.") for key in misfits):
            raise WeightsError(f"backbone.weights: {source} does not fit the recipe's "
                               f"{self.backbone_name or self.default_backbone} (x{self.scale}) model:\n"
                               f"{report.format()}")
        load_into(self.model, state, strict=False, source=source)
        if misfits:
            log.info("%s: scale-specific upsampler tensors not loaded into the x%d model: %s", source, self.scale,
                     ", ".join(misfits))

    def dataset_kwargs(self, split: str) -> dict:
        return {"scale": self.scale}

    def training_loss(self, batch):
        # Padding to the window multiple (then cropping) lets any patch size train, as at inference.
        out = tiled_forward(self.model, batch["lq"], self.scale, size_multiple=self.size_multiple)
        return F.l1_loss(out, batch["gt"])


class SuperResolutionPipeline(ImageRestorationPipeline):
    task = "super_resolution"
    scales = (2, 3, 4)


class DenoisingPipeline(ImageRestorationPipeline):
    """Colour Gaussian denoising; `sigma` (0-255 scale) is used when evaluating on clean images."""

    task = "denoising"
    Options = DenoisingOptions

    def clean_folder_dataset(self, folder, **kwargs):
        return HROnlyFolder(folder, degradation="noise", sigma=self.config["sigma"], **kwargs)


class JPEGRestorationPipeline(ImageRestorationPipeline):
    """JPEG artefact removal; `quality` (10-40) is used when evaluating on clean images."""

    task = "jpeg_restoration"
    Options = JPEGOptions

    def clean_folder_dataset(self, folder, **kwargs):
        return HROnlyFolder(folder, degradation="jpeg", quality=self.config["quality"], **kwargs)


__all__ = ["SuperResolutionPipeline", "DenoisingPipeline", "JPEGRestorationPipeline", "ImageReadError"]
