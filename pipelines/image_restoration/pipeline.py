"""Super-resolution, denoising and JPEG restoration pipelines.

Preprocessing reads any 8/16-bit gray/RGB/RGBA image with OpenCV; the network sees RGB in [0, 1]; alpha
is resized on its own (bicubic) and re-attached; outputs keep the input's bit depth and grayness. Large
images run in overlapping tiles whose size is chosen from a memory budget, with padding to the model's
size multiple done exactly as the official HAT pipeline (reflect bottom/right, crop after).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from mtp.backbones import sr_detect
from mtp.datasets.sr import HROnlyFolder, PairedImageFolder
from mtp.pipelines.image_restoration import metrics as image_metrics
from mtp.pipelines.image_restoration.image_io import (
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
from mtp.files import resolve_data_path
from mtp.pipeline import InputError, TaskPipeline
from mtp.registry import DATASETS, UnknownNameError
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


class ImageRestorationPipeline(TaskPipeline):
    """Shared by all image-to-image tasks; subclasses fix the scale rule and the degradation."""

    input_suffixes = IMAGE_EXTENSIONS
    max_batch_items = 1  # images differ in size; tiles give the parallelism
    default_backbone = "hat"
    scales: ClassVar[tuple] = (1,)
    options = {
        "scale": None,           # super-resolution factor; with weights it is read from them
        "tile": "auto",          # input tile side in pixels, "auto" (from max_memory) or None (whole image)
        "tile_overlap": 16,      # input pixels shared by neighbouring tiles
        "max_memory": None,      # bytes for one tile's activations; default 1.5 GiB on CPU, half of free CUDA memory
        "self_ensemble": False,  # x8 flips/rotations averaged
        "output_format": None,   # e.g. "png": change the output extension; None keeps the input's
        "min_size": 2,           # smaller inputs are rejected (a 1x1 image cannot be reflect-padded)
        "max_pixels": None,      # larger inputs are rejected before decoding; None: what available memory holds
    }

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
            from mtp.pipelines.image_restoration.image_io import Image
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

    def output_path(self, relative: Path) -> Path:
        fmt = self.config["output_format"]
        return relative.with_suffix("." + fmt.lstrip(".")) if fmt else relative

    def save(self, result: dict, path: Path, overwrite: bool) -> list[Path]:
        depth = result["bit_depth"]
        if depth == 16 and path.suffix.lower() in (".jpg", ".jpeg", ".webp", ".bmp"):
            depth = 8  # the format cannot hold more
        return [write_image(path, result["rgb"], alpha=result["alpha"], bit_depth=depth,
                            is_gray=result["is_gray"], overwrite=overwrite)]

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, data, protocol: str = "basicsr", crop_border: int | None = None,
                 test_y_channel: bool = True, limit: int | None = None) -> dict:
        """PSNR/SSIM over a test set: a paired folder (Set5 `image_SRF_s`, DIV2K layout) or HR-only images
        degraded by the task. Outputs are rounded to the input's bit depth first, as saved files are."""
        dataset = self._eval_dataset(Path(data)) if isinstance(data, (str, Path)) else data
        crop = self.scale if crop_border is None else crop_border
        totals = {"psnr": 0.0, "ssim": 0.0}
        per_image = {}
        count = len(dataset) if limit is None else min(limit, len(dataset))
        for index in range(count):
            sample = dataset[index]
            out = self.restore(sample["lq"][None])[0].permute(1, 2, 0).cpu().numpy()
            pred = np.round(out * 255.0).astype(np.uint8)
            gt = np.round(np.clip(sample["gt"].permute(1, 2, 0).numpy(), 0, 1) * 255.0).astype(np.uint8)
            scores = {name: float(getattr(image_metrics, name)(pred, gt, crop_border=crop, protocol=protocol,
                                                               test_y_channel=test_y_channel))
                      for name in totals}
            per_image[sample["name"]] = scores
            for name in totals:
                totals[name] += scores[name]
        if count == 0:
            raise InputError(f"{data}: no images to evaluate")
        result = {name: total / count for name, total in totals.items()}
        result.update(images=count, protocol=protocol, crop_border=crop, y_channel=test_y_channel,
                      per_image=per_image)
        return result

    def _eval_dataset(self, folder: Path):
        folder = resolve_data_path(folder)
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
                   device=device, backbone_kwargs=recipe.backbone.kwargs, **recipe.options)
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

    def datasets(self, recipe) -> dict:
        splits = {}
        wanted = set(recipe.data.splits) | {recipe.eval.split} | ({"train"} if recipe.train else set())
        for split in sorted(wanted):
            source = recipe.data.for_split(split)
            if not source.name:
                raise ValueError(f"data.splits.{split}.name: no dataset given for the {split} split")
            try:
                builder = DATASETS.get(source.name)
            except UnknownNameError as err:
                raise UnknownNameError(f"data.splits.{split}.name: {err}") from None
            if source.root is None:
                raise ValueError(f"data.splits.{split}.root: {self.task} needs an image folder")
            kwargs = dict(source.kwargs)
            check_kwargs(builder.load(), kwargs, f"data.splits.{split}.kwargs")
            if kwargs.get("lr_dir") is not None:  # a second folder, looked up like the root
                kwargs["lr_dir"] = resolve_data_path(kwargs["lr_dir"])
            kwargs.setdefault("scale", self.scale)
            splits[split] = builder.load()(resolve_data_path(source.root), **{**builder.kwargs, **kwargs})
        return splits

    def training_loss(self, batch):
        # Padding to the window multiple (then cropping) lets any patch size train, as at inference.
        out = tiled_forward(self.model, batch["lq"], self.scale, size_multiple=self.size_multiple)
        return F.l1_loss(out, batch["gt"])

    def evaluate_split(self, dataset, recipe) -> dict:
        return self.evaluate(dataset, **recipe.eval.options)


class SuperResolutionPipeline(ImageRestorationPipeline):
    task = "super_resolution"
    scales = (2, 3, 4)


class DenoisingPipeline(ImageRestorationPipeline):
    """Colour Gaussian denoising; `sigma` (0-255 scale) is used when evaluating on clean images."""

    task = "denoising"
    options = {**ImageRestorationPipeline.options, "sigma": 25}

    def clean_folder_dataset(self, folder, **kwargs):
        return HROnlyFolder(folder, degradation="noise", sigma=self.config["sigma"], **kwargs)


class JPEGRestorationPipeline(ImageRestorationPipeline):
    """JPEG artefact removal; `quality` (10-40) is used when evaluating on clean images."""

    task = "jpeg_restoration"
    options = {**ImageRestorationPipeline.options, "quality": 10}

    def clean_folder_dataset(self, folder, **kwargs):
        return HROnlyFolder(folder, degradation="jpeg", quality=self.config["quality"], **kwargs)


__all__ = ["SuperResolutionPipeline", "DenoisingPipeline", "JPEGRestorationPipeline", "ImageReadError"]
