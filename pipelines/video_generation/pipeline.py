"""Video generation (task `video_generation`): class-conditional videos from our pixel-space VideoUNet.

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
REQUEST_KEYS = ("class", "seed", "frames", "name")


@dataclass
class VideoGenerationOptions:
    classes: Optional[list] = None      # class names in label order; None: "0".."num_classes-1"
    num_frames: int = 16                # frames per video unless a request says otherwise
    height: int = 32
    width: int = 32
    channels: int = 1
    scheduler: str = "ddim"             # ddim | dpmsolver++
    steps: int = 50
    guidance_scale: float = 2.0         # classifier-free guidance; 1 = conditional model only
    eta: float = 1.0                    # 1 stochastic (DDIM eta / SDE DPM-Solver++, seeded per sample); 0 deterministic
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
    beta_schedule: str = "squaredcos_cap_v2"  # the training noise schedule (sampling must use the same)
    num_train_timesteps: int = 1000
    label_dropout: float = 0.1          # training: share of labels replaced by the null class (for guidance)
    min_snr_gamma: Optional[float] = 5.0  # training: Min-SNR-gamma loss weights min(SNR, gamma) / SNR; None: plain MSE

    def validate(self):
        choices = {"scheduler": SCHEDULERS, "temporal": TEMPORAL_METHODS, "beta_schedule": BETA_SCHEDULES,
                   "freelong_mask": ("adjusted", "strict")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {', '.join(valid)}")
        for name in ("num_frames", "height", "width", "channels", "steps", "batch_size", "preview_scale",
                     "freelong_window", "clip_frames", "num_train_timesteps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected an integer >= 1")
        if self.infinity_context_frames < 0 or self.infinity_global_frames < 0:
            raise ValueError("infinity_context_frames and infinity_global_frames must be >= 0")
        if self.infinity_context_frames > self.clip_frames:
            raise ValueError(f"infinity_context_frames={self.infinity_context_frames}: at most clip_frames="
                             f"{self.clip_frames} (context comes from the neighbouring clips only)")
        if not 0 <= self.eta <= 1 or (self.scheduler != "ddim" and self.eta not in (0, 1)):
            raise ValueError(f"eta={self.eta}: expected 0..1 for scheduler='ddim', 0 or 1 for dpmsolver++")
        if (self.x0_prior_mean is None) != (self.x0_prior_var is None):
            raise ValueError("x0_prior_mean and x0_prior_var go together (both set, or both None)")
        if (self.x0_prior_var is not None and not self.x0_prior_var > 0) or not self.x0_prior_eps_var > 0:
            raise ValueError(f"x0_prior_var={self.x0_prior_var}, x0_prior_eps_var={self.x0_prior_eps_var}: expected > 0")
        if not self.fps > 0:
            raise ValueError(f"fps={self.fps}: expected > 0")
        if self.guidance_scale < 0:
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
    """One generated video: `video` [T, C, H, W] in [-1, 1] (MovingDigits' layout) and its request."""

    video: torch.Tensor
    class_id: int
    class_name: str
    seed: int
    name: str

    @property
    def num_frames(self) -> int:
        return int(self.video.shape[0])

    def save(self, folder, formats=("mp4", "png"), fps: float = 8.0, overwrite: bool = False,
             preview_scale: int = 4) -> list[Path]:
        """Write the requested formats into `folder` as <name>.<format>; existing files are refused before
        anything is written unless `overwrite`."""
        folder = Path(folder)
        targets = [folder / f"{self.name}.{fmt}" for fmt in formats]
        existing = [str(p) for p in targets if p.exists()]
        if existing and not overwrite:
            raise FileExistsError(f"{', '.join(existing)} exist(s); pass overwrite=True to replace")
        written = []
        for fmt, path in zip(formats, targets):
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
        return {"name": self.name, "class": self.class_id, "class_name": self.class_name, "seed": self.seed,
                "frames": self.num_frames}


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
        if self.config["classes"] is None and self.model is not None:
            self.config["classes"] = [str(i) for i in range(int(getattr(self.model, "num_classes", 10)))]

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

    def _request(self, raw, index: int, where: str) -> dict:
        if not isinstance(raw, dict):
            raw = {"class": raw}
        unknown = [k for k in raw if k not in REQUEST_KEYS]
        if unknown:
            raise InputError(f"{where}: unknown request key(s) {unknown}; valid: {', '.join(REQUEST_KEYS)}")
        if "class" not in raw:
            raise InputError(f"{where}: a request needs 'class' (an id or a name)")
        cid = self.class_id(raw["class"])
        frames = raw.get("frames", self.config["num_frames"])
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise InputError(f"{where}: frames={frames!r}: expected an integer >= 1")
        seed = raw.get("seed", self.config["seed"] + index)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"{where}: seed={seed!r}: expected an integer")
        name = str(raw.get("name") or f"{self.config['classes'][cid]}_s{seed}_{frames}f")
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise InputError(f"{where}: name={name!r}: expected a plain file name")
        return {"class": cid, "seed": seed, "frames": frames, "name": name}

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
            requests = [self._request(r, i, f"{path}, request {i}") for i, r in enumerate(items)]
            return {"requests": requests, "source": str(path), "single": False}
        return {"requests": [self._request(source, 0, "request")], "source": "request", "single": True}

    def preprocess(self, item: dict) -> dict:
        names = [r["name"] for r in item["requests"]]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InputError(f"{item['source']}: request names {dup} repeat; give each request its own name or seed")
        return item

    def forward(self, inputs: list[dict]) -> list:
        flat = [r for one in inputs for r in one["requests"]]
        videos = {}
        for frames in sorted({r["frames"] for r in flat}):
            group = [i for i, r in enumerate(flat) if r["frames"] == frames]
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
            videos = self.forward([{"requests": requests}])[0]
            report = RunReport(output=str(folder))
            for v in videos:
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
    def temporal_method(self, num_frames: int):
        """Install the `temporal` option's processors on the model's TemporalAttention layers for one run
        (Video-Infinity installs its own, per clip, inside its sampler)."""
        method = self.config["temporal"]
        if method in ("plain", "video_infinity"):
            yield
            return
        from mtp.pipelines.video_generation.freelong import FreeLongAttnProcessor, FreeLongConfig
        from mtp.pipelines.video_generation.temporal import install_temporal_processor

        config = FreeLongConfig(window=self.config["freelong_window"], d_s=self.config["freelong_d_s"],
                                d_t=self.config["freelong_d_t"], mask=self.config["freelong_mask"],
                                local_only_tokens=())
        handle = install_temporal_processor(self.model, lambda name, module: FreeLongAttnProcessor(config))
        try:
            yield
        finally:
            handle.restore()

    def generate_videos(self, classes, frames: int | None = None, seeds=None, names=None, progress=None,
                        step_hook=None) -> list[GeneratedVideo]:
        """Generate one video per class (ids or names) with this pipeline's sampling options."""
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
