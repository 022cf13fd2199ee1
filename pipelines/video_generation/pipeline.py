"""Video generation (task `video_generation`): class-conditional videos from our pixel-space VideoUNet, or
text-to-video from a diffusers model folder.

Models: `weights` a file is our VideoUNet; `weights` a folder is a diffusers UNet3D or AnimateDiff model
(model_index.json, or a UNet2DConditionModel + motion_adapter; `motion_adapter` option for a separate adapter folder) loaded by
diffusers_models.load_video_model. Its requests carry "prompt" (+ "negative_prompt") instead of "class"; the VAE
decodes `decode_chunk` frames at a time (slicing on) and, with `output`, each chunk goes straight into the MP4
(writers.Mp4Writer, renamed into place when complete). Frames beyond a motion module's position table extend it
for the run. Defaults that differ by model (height/width, guidance_scale, eta): see MODEL_DEFAULTS.
AnimateZero: a request's "image" (a file, read grey for 1-channel models, or an array) becomes frame 0
(animatezero.py; `animatezero_window`, `animatezero_variant`); our model needs the image at its frame size.

Inputs are generation requests: a class (id or name), a dict ``{"class": 3, "seed": 7, "frames": 64, "name":
"three"}`` (only "class" is required), a list of those, or a JSON/YAML file holding one request or a list of
them (folder runs pick up .json/.yaml/.yml files). Outputs per request: ``<name>.mp4`` (H.264 at ``fps``),
optionally ``<name>.gif``, ``<name>.png`` (all frames in a grid) and ``<name>.pt`` (the video tensor [T, C, H, W]
in [-1, 1]). A request file writes its requests into a folder named after it, plus ``manifest.json`` (written
last: the item is done when it exists). Nothing is overwritten unless asked.

Sampling: DDIM (or DPM-Solver++) with `eta` 1 by default, i.e. stochastic and seeded per sample: with this small
epsilon-predicting model, deterministic sampling (eta 0) leaves visible noise (the near-zero-SNR first steps' x0
estimates are noise that the ODE carries to the end), while the stochastic sampler gives clean, coherent digits;
`x0_prior_mean`/`x0_prior_var` (the training data's pixel mean and variance, set by the recipe) shrink those
early estimates toward the data mean, which removes the grey cast they otherwise leave on the background.

Defaults: a request's seed is the `seed` option (plus the request's position in a list or file), its frame count
`num_frames`, its name ``<class>_s<seed>_<frames>f``.

Training (`mtp run`): MovingDigits clips (new motion every epoch), DDPM epsilon-prediction MSE under diffusers'
DDPMScheduler (`beta_schedule`, default squaredcos_cap_v2, 1000 steps), uniform timesteps weighted by Min-SNR-gamma
(`min_snr_gamma`), and the class label replaced by the null class with probability `label_dropout` so one model
serves classifier-free guidance.

Long videos: `temporal` selects how the temporal attention layers work on more frames than trained on: "plain"
(attention over all frames), "freelong" (FreeLong's SpectralBlend of global and `freelong_window`-frame local
attention), "video_infinity" (Video-Infinity's clips of `clip_frames` frames with dual-scope attention and
neighbour-context temporal convolutions, video_infinity.py, run in one process).
"""
from __future__ import annotations

import contextlib
import json
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from mtp.pipeline import InputError, OptionError, RunReport, TaskPipeline
from mtp.pipelines.video_generation import writers
from mtp.pipelines.video_generation.sampling import BETA_SCHEDULES, SCHEDULERS, generate, training_scheduler

REQUEST_SUFFIXES = (".json", ".yaml", ".yml")
FORMATS = ("mp4", "gif", "png", "pt")
TEMPORAL_METHODS = ("plain", "freelong", "video_infinity")
REQUEST_KEYS = ("class", "prompt", "negative_prompt", "image", "seed", "frames", "name")
# defaults that differ by model: (our VideoUNet, a diffusers text-to-video model); None in the options means these
MODEL_DEFAULTS = {"guidance_scale": (2.0, 7.5), "eta": (1.0, 0.0)}


@dataclass
class VideoGenerationOptions:
    classes: Optional[list] = None      # class names in label order; None: "0".."num_classes-1"
    num_frames: int = 16                # frames per video unless a request says otherwise
    height: Optional[int] = None        # None: 32 for our model; a diffusers model's own size (or the image's)
    width: Optional[int] = None
    channels: int = 1
    scheduler: str = "ddim"             # ddim | dpmsolver++
    steps: int = 50
    guidance_scale: Optional[float] = None  # classifier-free guidance; 1: conditional only (None: MODEL_DEFAULTS)
    eta: Optional[float] = None         # 1 stochastic (DDIM eta / SDE DPM-Solver++, seeded per sample); 0 deterministic
    x0_prior_mean: Optional[float] = None  # data mean and variance (training pixels, [-1, 1] scale): shrink the
    x0_prior_var: Optional[float] = None   # low-SNR x0 estimates toward the mean (sampling.shrink_eps); None: off
    x0_prior_eps_var: float = 1e-3      # the model's epsilon error variance assumed by that shrinkage
    seed: int = 0
    batch_size: int = 8                 # videos per denoiser call (x2 under guidance): bounds memory
    fps: float = 8.0
    formats: list = field(default_factory=lambda: ["mp4", "png"])  # any of mp4, gif, png, pt
    preview_scale: int = 4              # GIF/PNG pixel repetition (32 x 32 digits are tiny)
    temporal: str = "plain"             # plain | freelong | video_infinity
    freelong_window: int = 16           # FreeLong's local window (the training clip length)
    freelong_d_s: float = 0.25
    freelong_d_t: float = 0.25
    freelong_mask: str = "adjusted"     # adjusted (LaVie) | strict (VideoCrafter2)
    clip_frames: int = 16               # Video-Infinity: frames per clip (the training clip length)
    infinity_context_frames: int = 8    # Video-Infinity: neighbour frames in local attention (<= clip_frames)
    infinity_global_frames: int = 16    # Video-Infinity: frames of the whole video every frame also attends to
    animatezero_window: int = 16        # AnimateZero (requests with "image"): frames each frame attends to
    animatezero_variant: str = "replace"  # replace | concat: how frame 0's key joins the window
    decode_chunk: int = 8               # diffusers models: frames per VAE decode (VAE slicing on)
    motion_adapter: Optional[str] = None  # diffusers: a MotionAdapter folder beside a Stable Diffusion folder
    beta_schedule: str = "squaredcos_cap_v2"  # the training noise schedule (sampling must use the same)
    num_train_timesteps: int = 1000
    label_dropout: float = 0.1          # training: share of labels replaced by the null class (for guidance)
    min_snr_gamma: Optional[float] = 5.0  # training: Min-SNR-gamma loss weights min(SNR, gamma) / SNR; None: plain MSE

    def validate(self):
        choices = {"scheduler": SCHEDULERS, "temporal": TEMPORAL_METHODS, "beta_schedule": BETA_SCHEDULES,
                   "freelong_mask": ("adjusted", "strict"), "animatezero_variant": ("replace", "concat")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {', '.join(valid)}")
        for name in ("num_frames", "height", "width", "channels", "steps", "batch_size", "preview_scale",
                     "freelong_window", "clip_frames", "num_train_timesteps", "animatezero_window", "decode_chunk"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected an integer >= 1")
        if self.infinity_context_frames < 0 or self.infinity_global_frames < 0:
            raise ValueError("infinity_context_frames and infinity_global_frames must be >= 0")
        if self.infinity_context_frames > self.clip_frames:
            raise ValueError(f"infinity_context_frames={self.infinity_context_frames}: at most clip_frames="
                             f"{self.clip_frames} (context comes from the neighbouring clips only)")
        if self.eta is not None and (not 0 <= self.eta <= 1 or (self.scheduler != "ddim" and self.eta not in (0, 1))):
            raise ValueError(f"eta={self.eta}: expected 0..1 for scheduler='ddim', 0 or 1 for dpmsolver++")
        if (self.x0_prior_mean is None) != (self.x0_prior_var is None):
            raise ValueError("x0_prior_mean and x0_prior_var go together (both set, or both None)")
        if (self.x0_prior_var is not None and not self.x0_prior_var > 0) or not self.x0_prior_eps_var > 0:
            raise ValueError(f"x0_prior_var={self.x0_prior_var}, x0_prior_eps_var={self.x0_prior_eps_var}: expected > 0")
        if not self.fps > 0:
            raise ValueError(f"fps={self.fps}: expected > 0")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise ValueError(f"guidance_scale={self.guidance_scale}: expected >= 0")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma={self.min_snr_gamma}: expected > 0 (or None for plain MSE)")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout={self.label_dropout}: expected in [0, 1)")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"formats={self.formats}: expected a non-empty list of {', '.join(FORMATS)}")
        if self.classes is not None and len(set(map(str, self.classes))) != len(self.classes):
            raise ValueError(f"classes={self.classes}: names must be distinct")


@dataclass
class GeneratedVideo:
    """One generated video: `video` [T, C, H, W] in [-1, 1] (MovingDigits' layout) and its request (a class for our
    model, a prompt for a diffusers one). `video` is None when it went straight to an MP4 and nothing else needed
    it; `written` lists such files."""

    video: Optional[torch.Tensor]
    class_id: Optional[int]
    class_name: Optional[str]
    seed: int
    name: str
    prompt: Optional[str] = None
    image: Optional[str] = None         # AnimateZero's first frame: its file, or "array"
    frames: int = 0
    written: list = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.video.shape[0]) if self.video is not None else self.frames

    def save(self, folder, formats=("mp4", "png"), fps: float = 8.0, overwrite: bool = False,
             preview_scale: int = 4) -> list[Path]:
        """Write the requested formats into `folder` as <name>.<format>; existing files are refused before
        anything is written unless `overwrite`."""
        folder = Path(folder)
        targets = [folder / f"{self.name}.{fmt}" for fmt in formats]
        existing = [str(p) for p in targets if p.exists() and p not in self.written]
        if existing and not overwrite:
            raise FileExistsError(f"{', '.join(existing)} exist(s); pass overwrite=True to replace")
        written = []
        for fmt, path in zip(formats, targets):
            if path in self.written:
                continue
            if self.video is None:
                raise ValueError(f"{self.name}: the frames were not kept (only {self.written} written)")
            if fmt == "mp4":
                written.append(writers.write_mp4(self.video, path, fps=fps, overwrite=overwrite))
            elif fmt == "gif":
                written.append(writers.write_gif(self.video, path, fps=fps, overwrite=overwrite, scale=preview_scale))
            elif fmt == "png":
                written.append(writers.write_png_grid(self.video, path, overwrite=overwrite, scale=preview_scale))
            elif fmt == "pt":
                written.append(writers.write_tensor(self.video, path, overwrite=overwrite))
        return written

    def record(self) -> dict:
        out = {"name": self.name, "seed": self.seed, "frames": self.num_frames}
        out.update({"prompt": self.prompt} if self.prompt is not None else
                   {"class": self.class_id, "class_name": self.class_name})
        return {**out, **({"image": self.image} if self.image is not None else {})}


class DiffusersVideo(torch.nn.Module):
    """A diffusers video model (diffusers_models.VideoModel) as the pipeline's `model`: its networks are submodules,
    so moving the pipeline's model moves them all."""

    def __init__(self, video):
        super().__init__()
        self.unet, self.vae, self.text_encoder = video.unet, video.vae, video.text_encoder
        self.video = video


class DiffusionLossMetric:
    """Mean epsilon-prediction MSE over samples (each at fixed, evenly spread timesteps; weighted as in training)."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def update(self, prediction, target=None):
        self.total += float(prediction.sum())
        self.count += int(prediction.numel())

    def compute(self) -> dict:
        return {"diffusion_loss": self.total / max(1, self.count)}


class VideoGenerationPipeline(TaskPipeline):
    task = "video_generation"
    default_backbone = "video_unet"
    input_suffixes = REQUEST_SUFFIXES
    Options = VideoGenerationOptions
    metrics = ("diffusion_loss",)
    eval_batch_size = 8
    train_drop_last = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._noise = None
        diffusers = self.video_model is not None
        for name, defaults in MODEL_DEFAULTS.items():
            if self.config[name] is None:
                self.config[name] = defaults[diffusers]
        if not diffusers:
            self.config["height"] = self.config["height"] or 32
            self.config["width"] = self.config["width"] or 32
        if self.config["classes"] is None and self.model is not None and not diffusers:
            self.config["classes"] = [str(i) for i in range(int(getattr(self.model, "num_classes", 10)))]

    # ------------------------------------------------------------------ diffusers models from disk
    @staticmethod
    def is_diffusers_folder(weights) -> bool:
        """A folder is a diffusers model (model_index.json + components); our model's weights are one file."""
        return bool(weights) and Path(str(weights)).expanduser().is_dir()

    def build_model(self, backbone, weights, **kwargs):
        """Our VideoUNet from its weights file, or a diffusers UNet3D / AnimateDiff folder (load_video_model;
        a missing or broken component fails naming it)."""
        if not self.is_diffusers_folder(weights):
            return super().build_model(backbone, weights, **kwargs)
        if backbone or kwargs:
            raise OptionError(f"weights={weights} is a diffusers model folder: it brings its own networks, so "
                              f"backbone={backbone!r} / backbone_kwargs={kwargs} cannot apply")
        from mtp.pipelines.video_generation.diffusers_models import load_video_model

        return DiffusersVideo(load_video_model(weights, motion_adapter=self.config["motion_adapter"]))

    def _check_dtype(self, backbone) -> None:
        if not self.is_diffusers_folder(self.weights):  # a diffusers folder runs in any dtype torch has
            super()._check_dtype(backbone)

    @property
    def video_model(self):
        """The loaded diffusers_models.VideoModel, or None for our VideoUNet."""
        return self.model.video if isinstance(self.model, DiffusersVideo) else None

    # ------------------------------------------------------------------ noise schedule
    @property
    def noise_scheduler(self):
        key = (self.config["beta_schedule"], self.config["num_train_timesteps"])
        if self._noise is None or self._noise[0] != key:
            self._noise = (key, training_scheduler(*key))
        return self._noise[1]

    @property
    def null_class(self) -> int:
        return int(self.model.null_class)

    # ------------------------------------------------------------------ training
    def datasets(self, recipe) -> dict:
        """MovingDigits for every split the recipe needs (data.name must be moving_digits). data.kwargs go to
        MovingDigits; `split` in a split's kwargs picks its handwriting (default: train for train, test
        otherwise); the training split redraws its motion every epoch unless told otherwise."""
        from mtp.config import check_kwargs
        from mtp.datasets.video_generation import MovingDigits
        from mtp.registry import DATASETS

        wanted = {recipe.eval.split} | set(recipe.data.splits) | ({"train"} if recipe.train else set())
        splits = {}
        for split in sorted(wanted):
            source = recipe.data.for_split(split)
            DATASETS.get(source.name)  # an unknown name fails with the registered ones
            if source.name != "moving_digits":
                raise ValueError(f"data.splits.{split}.name: video_generation trains on 'moving_digits', got "
                                 f"{source.name!r}")
            kwargs = {"split": "train" if split == "train" else "test", **source.kwargs}
            if split == "train":
                kwargs.setdefault("redraw_each_epoch", True)
            check_kwargs(MovingDigits, kwargs, f"data.splits.{split}.kwargs")
            splits[split] = MovingDigits(**kwargs)
        return splits

    def _clips(self, batch) -> torch.Tensor:
        """A MovingDigits batch's videos [B, T, C, H, W] -> the model's [B, C, T, H, W] on its device."""
        param = next(self.model.parameters())  # where Lightning put the model (the pipeline's device at inference)
        return batch["video"].to(param.device, param.dtype).transpose(1, 2)

    def training_loss(self, batch):
        x0 = self._clips(batch)
        labels = torch.as_tensor(batch["label"], device=x0.device).long()
        b = x0.shape[0]
        noise = torch.randn_like(x0)
        sched = self.noise_scheduler
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), device=x0.device)
        drop = torch.rand(b, device=x0.device) < self.config["label_dropout"]
        labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        xt = sched.add_noise(x0, noise, t)
        per_sample = (self.model(xt, t, labels) - noise).pow(2).flatten(1).mean(1)
        return (per_sample * self.loss_weights(t)).mean()

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma (Hang et al. 2023) for epsilon prediction: min(SNR_t, gamma) / SNR_t. Nearly clean steps
        (high SNR), whose epsilon is hard to guess and irrelevant to the sample, no longer dominate the loss; the
        noisy steps that make layout and motion keep weight 1. None: all ones (the plain DDPM loss)."""
        gamma = self.config["min_snr_gamma"]
        if gamma is None:
            return torch.ones(len(t), device=t.device)
        abar = self.noise_scheduler.alphas_cumprod.to(t.device)[t].float()
        snr = abar / (1 - abar)
        return snr.clamp(max=gamma) / snr

    def _fixed_loss(self, batch) -> torch.Tensor:
        """Per-sample epsilon MSE with noise seeded by the clips' ids and timesteps spread evenly over [0, T):
        deterministic, so validation and test numbers compare across checkpoints."""
        x0 = self._clips(batch)
        b = x0.shape[0]
        ids = list(batch["id"])
        generator = torch.Generator().manual_seed(zlib.crc32("|".join(ids).encode()))
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        total = self.noise_scheduler.config.num_train_timesteps
        offsets = torch.arange(b, dtype=torch.float64) + torch.rand(b, generator=generator, dtype=torch.float64)
        t = (offsets / b * total).long().clamp_(0, total - 1).to(x0.device)
        labels = torch.as_tensor(batch["label"], device=x0.device).long()
        xt = self.noise_scheduler.add_noise(x0, noise, t)
        return (self.model(xt, t, labels) - noise).pow(2).flatten(1).mean(1) * self.loss_weights(t)

    def validation_loss(self, batch):
        return self._fixed_loss(batch).mean()

    # ------------------------------------------------------------------ evaluation (denoising loss)
    def evaluation_dataset(self, data, split: str = "test"):
        if isinstance(data, torch.utils.data.Dataset):
            return data
        raise InputError(f"video_generation evaluation takes a MovingDigits dataset, got {type(data).__name__}; "
                         f"generated-video quality is scored by pipelines/video_generation/evaluation.py")

    def evaluation_step(self, batch) -> tuple:
        return self._fixed_loss(batch).float().cpu(), None

    def write_artifacts(self, run_dir: Path, splits: dict, recipe) -> list[Path]:
        """One 16-frame sample per class (DDIM, the run's guidance) as MP4 + PNG grid under samples/."""
        videos = self.generate_videos(list(range(len(self.config["classes"]))), frames=self.config["num_frames"],
                                      seeds=[1000 + i for i in range(len(self.config["classes"]))], progress=False)
        written = []
        for v in videos:
            written += v.save(run_dir / "samples", formats=("mp4", "png"), fps=self.config["fps"], overwrite=True,
                              preview_scale=self.config["preview_scale"])
        return written

    # ------------------------------------------------------------------ requests
    def class_id(self, value) -> int:
        classes = [str(c) for c in self.config["classes"]]
        if isinstance(value, bool):
            value = None
        if isinstance(value, int) and 0 <= value < len(classes):
            return value
        if isinstance(value, str) and value in classes:
            return classes.index(value)
        raise InputError(f"class {value!r}: not a class of this model; valid: ids 0..{len(classes) - 1} or names "
                         f"{classes}")

    def _request(self, raw, index: int, where: str, base: Optional[Path] = None) -> dict:
        """A checked request: our model takes a class, a diffusers model a prompt (a bare value is either);
        "image" (a file, relative to `base` when there, or an array) makes it an AnimateZero request."""
        diffusers = self.video_model is not None
        if not isinstance(raw, dict):
            raw = {"prompt" if diffusers else "class": raw}
        unknown = [k for k in raw if k not in REQUEST_KEYS]
        if unknown:
            raise InputError(f"{where}: unknown request key(s) {unknown}; valid: {', '.join(REQUEST_KEYS)}")
        frames = raw.get("frames", self.config["num_frames"])
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise InputError(f"{where}: frames={frames!r}: expected an integer >= 1")
        seed = raw.get("seed", self.config["seed"] + index)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"{where}: seed={seed!r}: expected an integer")
        request = {"seed": seed, "frames": frames}
        if diffusers:
            if "class" in raw:
                raise InputError(f"{where}: 'class' is for our class-conditional VideoUNet; this model "
                                 f"({self.weights}, diffusers {self.video_model.kind}) is text-to-video: give "
                                 f"'prompt' (and optionally 'negative_prompt')")
            for key in ("prompt", "negative_prompt"):
                if key in raw and not isinstance(raw[key], str):
                    raise InputError(f"{where}: {key}={raw[key]!r}: expected a string")
            if not raw.get("prompt", "").strip():
                raise InputError(f"{where}: a request to this text-to-video model needs a non-empty 'prompt'")
            request.update(prompt=raw["prompt"], negative_prompt=raw.get("negative_prompt"))
            stem = re.sub(r"[^A-Za-z0-9]+", "-", raw["prompt"]).strip("-")[:40] or "video"
        else:
            bad = [k for k in ("prompt", "negative_prompt") if k in raw]
            if bad:
                raise InputError(f"{where}: {bad[0]!r} needs a text-to-video diffusers model (weights=<folder with "
                                 f"model_index.json>); this VideoUNet is class-conditional: give 'class'")
            if "class" not in raw:
                raise InputError(f"{where}: a request needs 'class' (an id or a name)")
            request["class"] = self.class_id(raw["class"])
            stem = self.config["classes"][request["class"]]
        if raw.get("image") is not None:
            request["image"], request["image_source"] = self._first_frame(raw["image"], where, base)
        name = str(raw.get("name") or f"{stem}_s{seed}_{frames}f")
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise InputError(f"{where}: name={name!r}: expected a plain file name")
        request["name"] = name
        return request

    def _first_frame(self, value, where: str, base: Optional[Path]) -> tuple[torch.Tensor, str]:
        """AnimateZero's image as [C, H, W] in [-1, 1]: a file read with PIL (grey for a 1-channel model, else
        RGB), a uint8 array [H, W(, C)] of pixels, or a float array/tensor [C, H, W] already in [-1, 1]. Our model
        needs its frame size and channels exactly (an error naming both)."""
        import numpy as np

        channels = 3 if self.video_model is not None else self.config["channels"]
        if isinstance(value, (str, Path)):
            path = Path(value).expanduser()
            if not path.is_absolute() and base is not None and (base / path).exists():
                path = base / path
            if not path.is_file():
                raise InputError(f"{where}: image {value!r}: no such file")
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(path) as im:
                    pixels = np.asarray(im.convert("L" if channels == 1 else "RGB"))
            except (UnidentifiedImageError, OSError) as err:
                raise InputError(f"{where}: image {path}: not a readable image ({err})") from None
            source = str(path)
        else:
            pixels, source = value, "array"
        if isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8:
            image = torch.from_numpy(np.array(pixels)).float() / 127.5 - 1
            image = image[None] if image.dim() == 2 else image.permute(2, 0, 1)
        else:
            try:
                image = torch.as_tensor(pixels).detach().float().cpu()
            except (TypeError, ValueError, RuntimeError) as err:
                raise InputError(f"{where}: image: expected a file path or an array, got {type(value).__name__} "
                                 f"({err})") from None
            image = image[None] if image.dim() == 2 else image
            if image.numel() and (image.min() < -1 or image.max() > 1):
                raise InputError(f"{where}: image values [{float(image.min()):.3g}, {float(image.max()):.3g}]: "
                                 f"float arrays must be in [-1, 1] (or give uint8 pixels)")
        c = self.config
        want = (channels, c["height"] or image.shape[-2], c["width"] or image.shape[-1]) if image.dim() == 3 else None
        if want is None or tuple(image.shape) != want:
            frames = ("frames" if self.video_model is not None else
                      "VideoUNet's frames (options height, width, channels)")
            raise InputError(f"{where}: image {source} is [C, H, W] = {list(image.shape)}, but the model's "
                             f"{frames} are {list(want) if want else [channels, c['height'], c['width']]}")
        return image, source

    def load(self, source):
        if isinstance(source, (str, Path)) and (Path(source).suffix.lower() in REQUEST_SUFFIXES or
                                                Path(source).is_file()):
            path = Path(source)
            if not path.is_file():
                raise InputError(f"{path}: no such request file")
            import yaml

            try:
                raw = yaml.safe_load(path.read_text()) if path.suffix.lower() != ".json" else json.loads(path.read_text())
            except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as err:
                raise InputError(f"{path}: not a readable request file ({err})") from None
            items = raw if isinstance(raw, list) else [raw]
            if not items or raw is None:
                raise InputError(f"{path}: no requests (expected a request or a list of requests)")
            requests = [self._request(r, i, f"{path}, request {i}", path.parent) for i, r in enumerate(items)]
            return {"requests": requests, "source": str(path), "single": False}
        return {"requests": [self._request(source, 0, "request")], "source": "request", "single": True}

    def preprocess(self, item: dict) -> dict:
        names = [r["name"] for r in item["requests"]]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InputError(f"{item['source']}: request names {dup} repeat; give each request its own name or seed")
        return item

    def forward(self, inputs: list[dict]) -> list:
        """Our model: class requests batched by frame count, AnimateZero (image) requests one by one; a diffusers
        model: one request at a time."""
        flat = [r for one in inputs for r in one["requests"]]
        videos = {}
        for i, r in enumerate(flat):
            if self.video_model is not None:
                videos[i] = self._diffusers_video(r)
            elif "image" in r:
                videos[i] = self._animate(r)
        for frames in sorted({r["frames"] for i, r in enumerate(flat) if i not in videos}):
            group = [i for i, r in enumerate(flat) if r["frames"] == frames and i not in videos]
            out = self.generate_videos([flat[i]["class"] for i in group], frames, [flat[i]["seed"] for i in group],
                                       names=[flat[i]["name"] for i in group])
            videos.update(zip(group, out))
        results, k = [], 0
        for one in inputs:
            results.append([videos[k + j] for j in range(len(one["requests"]))])
            k += len(one["requests"])
        return results

    def postprocess(self, output, item, inputs):
        return output[0] if item["single"] else output

    def output_paths(self, relative: Path) -> list[Path]:
        return [relative.with_name(self.stem(relative)) / "manifest.json"]

    def save(self, result, paths: list[Path], overwrite: bool) -> list[Path]:
        from mtp.files import write_text_atomic

        folder = paths[0].parent
        videos = result if isinstance(result, list) else [result]
        written = []
        for v in videos:
            written += v.save(folder, self.config["formats"], self.config["fps"], overwrite,
                              self.config["preview_scale"])
        manifest = {"videos": [v.record() for v in videos], "options": self.sampling_record()}
        written.append(write_text_atomic(paths[0], json.dumps(manifest, indent=2)))
        return written

    def sampling_record(self) -> dict:
        keys = ("scheduler", "steps", "guidance_scale", "eta", "x0_prior_mean", "x0_prior_var", "x0_prior_eps_var",
                "temporal", "fps", "height", "width")
        record = {k: self.config[k] for k in keys}
        if self.config["temporal"] == "freelong":
            record.update({k: self.config[k] for k in ("freelong_window", "freelong_d_s", "freelong_d_t",
                                                       "freelong_mask")})
        if self.config["temporal"] == "video_infinity":
            record.update({k: self.config[k] for k in ("clip_frames", "infinity_context_frames",
                                                       "infinity_global_frames")})
        if self.video_model is not None:
            record.update(model=f"diffusers {self.video_model.kind}: {self.weights}",
                          decode_chunk=self.config["decode_chunk"])
        record.update({k: self.config[k] for k in ("animatezero_window", "animatezero_variant")})
        return record

    def __call__(self, inputs, output=None, batch_size: int = 1, num_workers: int = 0, overwrite: bool = False,
                 progress=None, shard=None, **options):
        """Requests (a class, a dict, a list of them) or request files / a folder of them. With `output` and
        requests, each video is written into that folder (<name>.<format>) and a RunReport returned; existing
        files are refused unless `overwrite`."""
        if output is None or self._is_paths(inputs):
            return super().__call__(inputs, output, batch_size, num_workers, overwrite, progress, shard, **options)
        with self.options_for_call(options):
            start = time.perf_counter()
            items = inputs if isinstance(inputs, list) else [inputs]
            requests = [self._request(r, i, f"request {i}") for i, r in enumerate(items)]
            self.preprocess({"requests": requests, "source": "requests"})
            folder = Path(output)
            clash = [str(folder / f"{r['name']}.{fmt}") for r in requests for fmt in self.config["formats"]
                     if (folder / f"{r['name']}.{fmt}").exists()]
            if clash and not overwrite:
                raise FileExistsError(f"{', '.join(clash[:5])}{' ...' if len(clash) > 5 else ''} exist(s); pass "
                                      f"overwrite=True (--overwrite) to replace, or another output folder")
            report = RunReport(output=str(folder))
            if self.video_model is not None:  # MP4s are written chunk by chunk as the VAE decodes
                videos = [self._diffusers_to_folder(r, folder, overwrite) for r in requests]
            else:
                videos = self.forward([{"requests": requests}])[0]
            for v in videos:
                report.written += [str(p) for p in v.written]
                report.written += [str(p) for p in v.save(folder, self.config["formats"], self.config["fps"],
                                                          overwrite, self.config["preview_scale"])]
                report.items_written += 1
            report.seconds = time.perf_counter() - start
            return report

    @staticmethod
    def _is_paths(inputs) -> bool:
        items = inputs if isinstance(inputs, list) else [inputs]
        return all(isinstance(i, Path) or (isinstance(i, str) and (Path(i).suffix.lower() in REQUEST_SUFFIXES
                                                                     or Path(i).is_dir())) for i in items)

    # ------------------------------------------------------------------ generation
    @contextlib.contextmanager
    def temporal_method(self, num_frames: int, model=None, table=None, batch_size=None):
        """Install the `temporal` option's processors on the temporal attention layers of `model` (default: ours)
        for one run (Video-Infinity installs its own, per clip, inside its sampler). A diffusers model's layers
        do not know their frame size: FreeLong finds it as table[rows // batch_size] (tokens per frame -> (H, W))."""
        method = self.config["temporal"]
        if method in ("plain", "video_infinity"):
            yield
            return
        from mtp.pipelines.video_generation.freelong import FreeLongAttnProcessor, FreeLongConfig
        from mtp.pipelines.video_generation.temporal import install_temporal_processor

        config = FreeLongConfig(window=self.config["freelong_window"], d_s=self.config["freelong_d_s"],
                                d_t=self.config["freelong_d_t"], mask=self.config["freelong_mask"],
                                **({} if model is not None else {"local_only_tokens": ()}))
        handle = install_temporal_processor(model if model is not None else self.model,
                                            lambda name, module: FreeLongAttnProcessor(config, table=table,
                                                                                       batch_size=batch_size))
        try:
            yield
        finally:
            handle.restore()

    def generate_videos(self, classes, frames: int | None = None, seeds=None, names=None, progress=None,
                        step_hook=None) -> list[GeneratedVideo]:
        """Generate one video per class (ids or names) with this pipeline's sampling options."""
        if self.video_model is not None:
            raise OptionError("generate_videos makes class-conditional videos with our VideoUNet; this pipeline runs a "
                              "diffusers text-to-video model: call it with prompt requests")
        c = self.config
        ids = [self.class_id(x) for x in classes]
        frames = c["num_frames"] if frames is None else frames
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise InputError(f"frames={frames!r}: expected an integer >= 1")
        seeds = [c["seed"] + i for i in range(len(ids))] if seeds is None else list(seeds)
        multiple = getattr(self.model, "size_multiple", 1)
        if c["height"] % multiple or c["width"] % multiple:
            raise OptionError(f"height/width {c['height']}x{c['width']}: the model needs multiples of {multiple}")
        prior = None if c["x0_prior_mean"] is None else (c["x0_prior_mean"], c["x0_prior_var"], c["x0_prior_eps_var"])
        common = dict(scheduler=c["scheduler"], steps=c["steps"], guidance_scale=c["guidance_scale"],
                      progress=True if progress is None else progress, beta_schedule=c["beta_schedule"],
                      num_train_timesteps=c["num_train_timesteps"])
        if c["temporal"] == "video_infinity":
            video = self._video_infinity(ids, frames, seeds, step_hook, common, prior)
        else:
            with self.temporal_method(frames):
                video = generate(self.model, ids, frames, c["height"], c["width"], c["channels"], seeds=seeds,
                                 step_hook=step_hook, batch_size=c["batch_size"], eta=c["eta"], x0_prior=prior,
                                 **common)
        classes_ = [str(x) for x in c["classes"]]
        names = names or [f"{classes_[i]}_s{s}_{frames}f" for i, s in zip(ids, seeds)]
        return [GeneratedVideo(video[j].transpose(0, 1).contiguous(), ids[j], classes_[ids[j]], int(seeds[j]), names[j])
                for j in range(len(ids))]

    def _video_infinity(self, ids, frames, seeds, step_hook, common, prior) -> torch.Tensor:
        """Video-Infinity in one process (clips as a batch axis, helper module video_infinity.py), `clip_frames`
        frames per clip, in batches of `batch_size` videos."""
        from mtp.pipelines.video_generation.video_infinity import VideoInfinityConfig, generate_clips

        c = self.config
        config = VideoInfinityConfig(context_frames=c["infinity_context_frames"],
                                     global_frames=c["infinity_global_frames"])
        if step_hook is not None:
            raise OptionError("temporal='video_infinity' takes no step_hook (video_infinity.py's sampler)")
        if frames % c["clip_frames"]:
            raise InputError(f"frames={frames}: temporal='video_infinity' needs a multiple of clip_frames="
                             f"{c['clip_frames']}")
        out = []
        for i in range(0, len(ids), c["batch_size"]):
            out.append(generate_clips(self.model, ids[i:i + c["batch_size"]], frames, c["height"], c["width"],
                                      clip_frames=c["clip_frames"], config=config, channels=c["channels"],
                                      seeds=seeds[i:i + c["batch_size"]], eta=c["eta"], x0_prior=prior, **common))
        return torch.cat(out)

    def _animate(self, r: dict) -> GeneratedVideo:
        """AnimateZero with our VideoUNet: frame 0 is the request's image exactly."""
        from mtp.pipelines.video_generation.animatezero import animate

        c = self.config
        if c["temporal"] != "plain":
            raise OptionError(f"temporal={c['temporal']!r}: AnimateZero (a request with 'image') installs its own "
                              f"temporal attention; use temporal='plain'")
        prior = None if c["x0_prior_mean"] is None else (c["x0_prior_mean"], c["x0_prior_var"], c["x0_prior_eps_var"])
        try:
            video = animate(self.model, r["image"], [r["class"]], r["frames"], window=c["animatezero_window"],
                            variant=c["animatezero_variant"], noise_seed=r["seed"], scheduler=c["scheduler"],
                            steps=c["steps"], beta_schedule=c["beta_schedule"],
                            num_train_timesteps=c["num_train_timesteps"], guidance_scale=c["guidance_scale"],
                            seeds=[r["seed"]], batch_size=c["batch_size"], eta=c["eta"], x0_prior=prior)
        except ValueError as err:
            raise InputError(f"{r['name']}: {err}") from None
        name = str(c["classes"][r["class"]])
        return GeneratedVideo(video[0].transpose(0, 1).contiguous(), r["class"], name, r["seed"], r["name"],
                              image=r["image_source"])

    def _diffusers_video(self, r: dict, mp4=None, keep: bool = True) -> GeneratedVideo:
        """One prompt request with the diffusers model (AnimateZero when it has an image). Each decoded chunk of
        `decode_chunk` frames goes to `mp4` (a writers.Mp4Writer) as it is made; the frames are kept in memory
        only if `keep`."""
        from mtp.pipelines.video_generation import diffusers_models
        from mtp.pipelines.video_generation.animatezero import animate_diffusers

        c, video = self.config, self.video_model
        kwargs = dict(negative_prompt=r["negative_prompt"], seeds=[r["seed"]], steps=c["steps"],
                      guidance_scale=c["guidance_scale"], scheduler=c["scheduler"], eta=c["eta"],
                      decode_chunk=c["decode_chunk"], vae_slicing=True)
        kwargs.update({k: c[k] for k in ("height", "width") if c[k] is not None})
        if "image" in r and c["temporal"] != "plain":
            raise OptionError(f"temporal={c['temporal']!r}: AnimateZero (a request with 'image') installs its own "
                              f"temporal attention; use temporal='plain'")
        if c["temporal"] == "video_infinity":
            from mtp.pipelines.video_generation.video_infinity import VideoInfinityConfig

            if r["frames"] % c["clip_frames"]:
                raise InputError(f"frames={r['frames']}: temporal='video_infinity' needs a multiple of "
                                 f"clip_frames={c['clip_frames']}")
            kwargs.update(clip_frames=c["clip_frames"], video_infinity=VideoInfinityConfig(
                context_frames=c["infinity_context_frames"], global_frames=c["infinity_global_frames"]))
        table = None
        if c["temporal"] == "freelong":  # each UNet level's latent frame size (stride-2 downsampling rounds up)
            f = video.vae_scale_factor
            sample = video.unet.config.sample_size
            sample = sample[0] if isinstance(sample, (list, tuple)) else sample
            h, w = kwargs.get("height", (sample or 32) * f) // f, kwargs.get("width", (sample or 32) * f) // f
            table = {}
            for _ in range(len(video.unet.config.block_out_channels)):
                table[h * w] = (h, w)
                h, w = -(-h // 2), -(-w // 2)
        chunks = []

        def writer(start, frames):  # frames [1, n, 3, H, W] in [-1, 1]
            frames = frames[0].float().cpu()
            if mp4 is not None:
                mp4.write(frames)
            if keep:
                chunks.append(frames)

        try:
            with self.temporal_method(r["frames"], video.unet, table, 2 if c["guidance_scale"] > 1 else 1):
                if "image" in r:
                    animate_diffusers(video, r["prompt"], image=r["image"], num_frames=r["frames"],
                                      window=c["animatezero_window"], variant=c["animatezero_variant"],
                                      noise_seed=r["seed"], writer=writer, **kwargs)
                else:
                    diffusers_models.generate_video(video, r["prompt"], num_frames=r["frames"], writer=writer, **kwargs)
        except ValueError as err:
            raise InputError(f"{r['name']}: {err}") from None
        return GeneratedVideo(torch.cat(chunks) if keep else None, None, None, r["seed"], r["name"],
                              prompt=r["prompt"], image=r.get("image_source"), frames=r["frames"])

    def _diffusers_to_folder(self, r: dict, folder: Path, overwrite: bool) -> GeneratedVideo:
        """One diffusers request into `folder`: the MP4 streamed (atomically) while decoding, then the other
        formats, which are the only reason to keep the frames."""
        c = self.config
        keep = any(f != "mp4" for f in c["formats"])
        if "mp4" not in c["formats"]:
            v = self._diffusers_video(r)
        else:
            with writers.Mp4Writer(folder / f"{r['name']}.mp4", fps=c["fps"], overwrite=overwrite) as mp4:
                v = self._diffusers_video(r, mp4, keep)
            v.written.append(mp4.path)
        v.written += v.save(folder, c["formats"], c["fps"], overwrite, c["preview_scale"])
        return v
