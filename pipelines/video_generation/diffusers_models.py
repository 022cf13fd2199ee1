"""Users' diffusers-format video models from disk, and text-to-video sampling with them.

`load_video_model(folder)` reads `model_index.json` and loads each component with diffusers' / transformers' own
`from_pretrained`:
- `UNet3DConditionModel` (TextToVideoSDPipeline: ModelScope, Zeroscope, VideoCrafter2 converted);
- AnimateDiff: `UNetMotionModel`, or a `UNet2DConditionModel` plus a `MotionAdapter` (the folder's
  `motion_adapter`, or `motion_adapter=<folder>` beside a Stable Diffusion folder), joined by
  `UNetMotionModel.from_unet2d`;
with its VAE, text encoder, tokenizer and scheduler. A missing component is an error that names the folder, the
component and what was expected there.

`sample_latents` runs the denoising loop (seeds per sample, classifier-free guidance with a negative prompt, DDIM
or DPM-Solver++ built `from_config` of the folder's scheduler, a `step_hook` as sampling.generate has) and
`decode_latents` yields frames in temporal chunks (bounded memory whatever the length; VAE slicing / tiling when
the VAE has them). `generate_video` joins the two and hands each chunk to a `writer` as soon as it is decoded.

Frames are [B, n, 3, H, W] float in [-1, 1] (MovingDigits' [T, C, H, W] layout per sample), latents
[B, C, F, h, w] unscaled as the UNet sees them.
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mtp.pipelines.video_generation.temporal import extend_position_tables, max_positions

log = logging.getLogger(__name__)

SCHEDULERS = ("ddim", "dpmsolver++", "default")
_UNETS = {"UNet3DConditionModel": "unet3d", "UNetMotionModel": "animatediff", "UNet2DConditionModel": "animatediff"}
# component -> (what is expected, file that marks a saved component)
_EXPECTED = {
    "unet": ("a UNet3DConditionModel, UNetMotionModel or UNet2DConditionModel (+ motion_adapter)", "config.json"),
    "vae": ("an AutoencoderKL", "config.json"),
    "text_encoder": ("a transformers text encoder (CLIPTextModel)", "config.json"),
    "tokenizer": ("a transformers tokenizer (CLIPTokenizer: vocab.json + merges.txt or tokenizer.json)",
                  "tokenizer_config.json"),
    "scheduler": ("a diffusers scheduler (DDIMScheduler, ...)", "scheduler_config.json"),
    "motion_adapter": ("a MotionAdapter", "config.json"),
}


@dataclass
class VideoModel:
    """A loaded diffusers video model: its components and what kind of UNet it has."""
    folder: Path
    kind: str  # "unet3d" | "animatediff"
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def max_frames(self) -> int | None:
        """Length of the shortest temporal position table (AnimateDiff: 32), None when there is none."""
        return max_positions(self.unet)

    def to(self, device=None, dtype=None) -> "VideoModel":
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device=device, dtype=dtype)
        return self


def _read_index(folder: Path) -> dict:
    index_path = folder / "model_index.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"load_video_model: {folder} is not a folder (expected a diffusers pipeline folder "
                                f"with model_index.json)")
    if not index_path.is_file():
        raise FileNotFoundError(f"load_video_model: {folder} has no model_index.json (expected a diffusers "
                                f"pipeline folder: model_index.json + unet/, vae/, text_encoder/, tokenizer/, "
                                f"scheduler/)")
    try:
        return json.loads(index_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"load_video_model: {index_path} is not valid JSON: {e}") from None


def _component(folder: Path, index: dict, name: str) -> tuple[str, str]:
    """(library, class) of component `name`, after checking the index entry and the saved files."""
    expected, marker = _EXPECTED[name]
    entry = index.get(name)
    if not entry or not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[1] is None:
        raise FileNotFoundError(f"load_video_model: {folder} lacks component '{name}': model_index.json has "
                                f"{'no entry' if entry is None else repr(entry)} for it (expected {expected} "
                                f"in {folder / name})")
    sub = folder / name
    if not sub.is_dir():
        raise FileNotFoundError(f"load_video_model: {folder} lacks component '{name}': model_index.json lists "
                                f"{entry[1]} but {sub} does not exist (expected {expected})")
    if name != "tokenizer" and not (sub / marker).is_file():
        raise FileNotFoundError(f"load_video_model: {folder} component '{name}' is incomplete: {sub / marker} is "
                                f"missing (expected {expected})")
    if name == "tokenizer" and not any((sub / f).is_file() for f in ("vocab.json", "tokenizer.json", marker)):
        raise FileNotFoundError(f"load_video_model: {folder} component 'tokenizer' is incomplete: {sub} has no "
                                f"vocab.json, tokenizer.json or {marker} (expected {expected})")
    return entry[0], entry[1]


def _class(library: str, name: str, component: str, folder: Path):
    import importlib

    if library not in ("diffusers", "transformers"):
        raise ValueError(f"load_video_model: {folder} component '{component}' comes from library {library!r}; "
                         f"only diffusers and transformers components are loaded")
    module = importlib.import_module(library)
    cls = getattr(module, name, None)
    if cls is None:
        raise ValueError(f"load_video_model: {folder} component '{component}' is a {library}.{name}, which this "
                         f"{library} ({module.__version__}) does not have")
    return cls


def _load(folder: Path, index: dict, name: str, **kwargs):
    library, cls_name = _component(folder, index, name)
    cls = _class(library, cls_name, name, folder)
    try:
        return cls.from_pretrained(folder, subfolder=name, **kwargs)
    except Exception as e:  # a corrupt or mismatched component: say which one
        raise RuntimeError(f"load_video_model: loading {folder / name} as {library}.{cls_name} failed: {e}") from e


def _load_adapter(path: Path, dtype):
    from diffusers import MotionAdapter

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"load_video_model: motion adapter folder {path} has no config.json (expected a "
                                f"MotionAdapter saved by diffusers)")
    return MotionAdapter.from_pretrained(path, torch_dtype=dtype)


def load_video_model(folder, *, motion_adapter=None, device=None, dtype=None) -> VideoModel:
    """Load a diffusers video model folder (module docstring). `motion_adapter`: a MotionAdapter folder, for
    AnimateDiff from a Stable Diffusion folder; it overrides the folder's own `motion_adapter`."""
    folder = Path(folder).expanduser()
    index = _read_index(folder)
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    library, unet_cls = _component(folder, index, "unet")
    if unet_cls not in _UNETS:
        raise ValueError(f"load_video_model: {folder} has a {unet_cls} unet; expected one of {sorted(_UNETS)} "
                         f"(a video UNet, or a UNet2DConditionModel with a motion_adapter)")
    for name in ("vae", "text_encoder", "tokenizer", "scheduler"):  # fail on any missing part before loading
        _component(folder, index, name)
    unet = _load(folder, index, "unet", **kwargs)
    extra = {}
    if unet_cls == "UNet2DConditionModel":
        from diffusers import UNetMotionModel

        if motion_adapter is not None:
            adapter = _load_adapter(motion_adapter, dtype)
        elif "motion_adapter" in index:
            adapter = _load(folder, index, "motion_adapter", **kwargs)
        else:
            raise FileNotFoundError(f"load_video_model: {folder} has a UNet2DConditionModel unet and no "
                                    f"'motion_adapter' component (expected {_EXPECTED['motion_adapter'][0]} in "
                                    f"{folder / 'motion_adapter'}, or pass motion_adapter=<folder>)")
        unet = UNetMotionModel.from_unet2d(unet, adapter)
        extra["motion_adapter"] = adapter
    elif motion_adapter is not None:
        raise ValueError(f"load_video_model: motion_adapter= given but {folder} has a {unet_cls} unet (only a "
                         f"UNet2DConditionModel takes a motion adapter)")
    model = VideoModel(folder=folder, kind=_UNETS[unet_cls], unet=unet.eval(),
                       vae=_load(folder, index, "vae", **kwargs).eval(),
                       text_encoder=_load(folder, index, "text_encoder", **kwargs).eval(),
                       tokenizer=_load(folder, index, "tokenizer"),
                       scheduler=_load(folder, index, "scheduler"), extra=extra)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


# --------------------------------------------------------------------------------------------- sampling

def make_scheduler(model: VideoModel, name: str = "ddim"):
    """A fresh scheduler for one run: DDIM or DPM-Solver++ built from the folder's scheduler config (its betas,
    prediction type, timestep spacing), or a copy of the folder's own ("default")."""
    if name == "default":
        return copy.deepcopy(model.scheduler)
    if name == "ddim":
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(model.scheduler.config)
    if name in ("dpmsolver++", "dpm++", "dpmsolver"):
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler.from_config(model.scheduler.config, algorithm_type="dpmsolver++")
    raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {name!r}")


def _as_list(x, what: str) -> list:
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    out = list(x)
    if not all(isinstance(p, str) for p in out):
        raise TypeError(f"{what} must be a string or a list of strings, got {x!r}")
    return out


def batch_prompts(prompt, negative_prompt=None, seeds=None) -> tuple[list[str], list[str], list[int]]:
    """One (prompt, negative prompt, seed) per sample: a single prompt with several seeds makes one video per
    seed; several prompts without seeds use seeds 0..B-1."""
    prompts = _as_list(prompt, "prompt")
    if not prompts:
        raise ValueError("prompt: at least one prompt is needed")
    seeds = list(range(len(prompts))) if seeds is None else [int(s) for s in (seeds if isinstance(
        seeds, (list, tuple)) else [seeds])]
    n = max(len(prompts), len(seeds))
    if len(prompts) not in (1, n) or len(seeds) not in (1, n):
        raise ValueError(f"got {len(prompts)} prompts and {len(seeds)} seeds; give one of each per sample, or one "
                         f"prompt with several seeds")
    prompts = prompts * n if len(prompts) == 1 else prompts
    seeds = seeds * n if len(seeds) == 1 else seeds
    negatives = _as_list(negative_prompt, "negative_prompt") or [""]
    if len(negatives) not in (1, n):
        raise ValueError(f"got {len(negatives)} negative prompts for {n} samples")
    negatives = negatives * n if len(negatives) == 1 else negatives
    return prompts, negatives, seeds


@torch.no_grad()
def encode_prompts(model: VideoModel, prompts: list[str]) -> torch.Tensor:
    """[B, L, D] text-encoder states, prompts padded / truncated to the tokenizer's length (with a warning)."""
    tok = model.tokenizer
    max_len = int(min(tok.model_max_length, getattr(model.text_encoder.config, "max_position_embeddings", 10 ** 9)))
    ids = tok(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt").input_ids
    full = tok(prompts, padding="longest", return_tensors="pt").input_ids
    if full.shape[1] > ids.shape[1]:
        log.warning("prompts longer than the tokenizer's %d tokens were truncated", max_len)
    out = model.text_encoder(ids.to(model.device))
    return out[0].to(model.dtype)


def initial_latents(seeds, shape, device, dtype) -> torch.Tensor:
    """[B, *shape] standard normal noise, sample i from a CPU torch.Generator seeded seeds[i] (the same video on
    any device)."""
    noise = [torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device=device, dtype=dtype)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="denoising", unit="step")


@torch.no_grad()
def sample_latents(model: VideoModel, prompt, *, negative_prompt=None, seeds=None, num_frames: int = 16,
                   height: int | None = None, width: int | None = None, steps: int = 25,
                   guidance_scale: float = 7.5, scheduler: str = "ddim", eta: float = 0.0, latents=None,
                   step_hook=None, callback=None, progress: bool = True, position_mode: str = "extend",
                   clip_frames: int | None = None, video_infinity=None, unet_kwargs=None) -> torch.Tensor:
    """Denoise and return the final latents [B, C, F, h, w] (not scaled by the VAE factor yet).

    step_hook(step_index, timestep, latents) -> latents runs after each scheduler step, as in sampling.generate
    (latents then at the level of the next timestep, clean after the last); a hook with `bind(scheduler)` is
    given the run's scheduler first and one with `initial(latents)` may change the starting noise (AnimateZero's
    first-frame injection uses both). callback(step_index, timestep, latents) observes each step.
    Frame counts beyond the motion modules' position tables extend them for this run (`position_mode`).
    clip_frames: run Video-Infinity's single-process emulation, the video cut into clips of this many frames
    (`video_infinity`: its VideoInfinityConfig; default settings when None).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    prompts, negatives, seeds = batch_prompts(prompt, negative_prompt, seeds)
    f = model.vae_scale_factor
    sample = model.unet.config.sample_size
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    height = height or (sample or 32) * f
    width = width or (sample or 32) * f
    if height % f or width % f:
        raise ValueError(f"height and width must be multiples of the VAE factor {f}, got {height} x {width}")
    shape = (model.latent_channels, num_frames, height // f, width // f)
    device, dtype = model.device, model.dtype
    sched = make_scheduler(model, scheduler)
    sched.set_timesteps(steps, device=device)
    if latents is None:
        latents = initial_latents(seeds, shape, device, dtype) * sched.init_noise_sigma
    elif tuple(latents.shape) != (len(seeds),) + shape:
        raise ValueError(f"latents must be {(len(seeds),) + shape}, got {tuple(latents.shape)}")
    if hasattr(step_hook, "bind"):
        step_hook.bind(sched)
    if hasattr(step_hook, "initial"):
        latents = step_hook.initial(latents)
    cfg = guidance_scale > 1.0
    text = encode_prompts(model, prompts + negatives if cfg else prompts)
    clips, call_frames = 1, num_frames
    undo = []
    if clip_frames is not None:
        from mtp.pipelines.video_generation.video_infinity import SliceExchange, install_video_infinity

        if clip_frames < 1 or num_frames % clip_frames:
            raise ValueError(f"num_frames ({num_frames}) must be a whole number of clips of clip_frames "
                             f"({clip_frames}) frames")
        clips, call_frames = num_frames // clip_frames, clip_frames
        undo.append(install_video_infinity(model.unet, SliceExchange(clips), video_infinity).restore)
    text = text.repeat_interleave(clips, dim=0)  # one row per (sample, clip), clip fastest
    # AnimateDiff's UNet takes one text state per frame (diffusers >= 0.30 repeats them in the pipeline)
    context = text.repeat_interleave(call_frames, dim=0) if _text_per_frame(model.unet) else text

    def to_clips(x):  # [B, C, clips * F, h, w] -> [B * clips, C, F, h, w]
        b, c, _, h, w = x.shape
        return x.reshape(b, c, clips, call_frames, h, w).transpose(1, 2).reshape(b * clips, c, call_frames, h, w)

    def from_clips(x):
        bn, c, _, h, w = x.shape
        return x.reshape(bn // clips, clips, c, call_frames, h, w).transpose(1, 2).reshape(
            bn // clips, c, num_frames, h, w)

    step_kwargs = {"eta": eta} if scheduler == "ddim" else {}
    undo.append(extend_position_tables(model.unet, call_frames, position_mode).restore)
    bar = _progress(len(sched.timesteps), progress)
    try:
        for i, t in enumerate(sched.timesteps):
            x = torch.cat([latents, latents]) if cfg else latents
            x = sched.scale_model_input(x, t)
            eps = model.unet(to_clips(x), t, encoder_hidden_states=context, **(unet_kwargs or {})).sample
            eps = from_clips(eps)
            if cfg:
                cond, uncond = eps.chunk(2)
                eps = uncond + guidance_scale * (cond - uncond)
            latents = sched.step(eps, t, latents, **step_kwargs).prev_sample
            if step_hook is not None:
                latents = step_hook(i, t, latents)
            if callback is not None:
                callback(i, t, latents)
            if bar is not None:
                bar.update(1)
    finally:
        for restore in reversed(undo):
            restore()
        if bar is not None:
            bar.close()
    return latents


@functools.cache
def _motion_unet_repeats_text(cls) -> bool:
    import inspect

    return "encoder_hidden_states.repeat_interleave" in inspect.getsource(cls.forward)


def _text_per_frame(unet) -> bool:
    return type(unet).__name__ == "UNetMotionModel" and not _motion_unet_repeats_text(type(unet))


def configure_vae(vae, slicing: bool = True, tiling: bool = False) -> None:
    """Turn VAE slicing / tiling on or off where the VAE supports them (AutoencoderKL does)."""
    for flag, on, off in ((slicing, "enable_slicing", "disable_slicing"), (tiling, "enable_tiling", "disable_tiling")):
        method = getattr(vae, on if flag else off, None)
        if method is not None:
            method()
        elif flag:
            log.warning("%s has no %s; decoding without it", type(vae).__name__, on)


@torch.no_grad()
def decode_latents(model: VideoModel, latents: torch.Tensor, *, chunk: int = 8, slicing: bool = True,
                   tiling: bool = False):
    """Yield (start_frame, frames [B, n, 3, H, W] in [-1, 1]) for consecutive chunks of at most `chunk` frames,
    so only one chunk of pixels is in memory at a time."""
    if latents.dim() != 5:
        raise ValueError(f"decode_latents: latents must be [B, C, F, h, w], got {tuple(latents.shape)}")
    if chunk < 1:
        raise ValueError(f"decode_latents: chunk must be >= 1, got {chunk}")
    vae = model.vae
    configure_vae(vae, slicing, tiling)
    scaling = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    b, c, frames = latents.shape[:3]
    for start in range(0, frames, chunk):
        z = latents[:, :, start:start + chunk]
        n = z.shape[2]
        z = z.permute(0, 2, 1, 3, 4).reshape(b * n, c, *z.shape[-2:])
        z = z.to(dtype=vae.dtype) / scaling + shift
        pixels = vae.decode(z).sample.float().clamp(-1, 1)
        yield start, pixels.reshape(b, n, *pixels.shape[1:])


@torch.no_grad()
def encode_image(model: VideoModel, image: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] or [3, H, W] pixels in [-1, 1] -> VAE latents [B, C, h, w] as the UNet sees them (the
    posterior mean, scaled)."""
    if image.dim() == 3:
        image = image[None]
    posterior = model.vae.encode(image.to(device=model.device, dtype=model.vae.dtype)).latent_dist
    shift = getattr(model.vae.config, "shift_factor", None) or 0.0
    return ((posterior.mean - shift) * model.vae.config.scaling_factor).to(model.dtype)


def generate_video(model: VideoModel, prompt, *, writer=None, return_latents: bool = False, decode_chunk: int = 8,
                   vae_slicing: bool = True, vae_tiling: bool = False, progress: bool = True, **sampling) -> dict:
    """Sample (keyword arguments as `sample_latents`) and decode in temporal chunks.

    writer(start_frame, frames [B, n, 3, H, W] in [-1, 1]) receives each decoded chunk as soon as it exists (write
    it to disk there: memory then stays bounded by one chunk). Without a writer the frames are gathered and
    returned. Returns {"frames": [B, T, 3, H, W] (no writer only), "latents": [B, C, F, h, w] (on request),
    "seconds": {"sampling": s, "decoding": s}}.
    """
    t0 = time.perf_counter()
    latents = sample_latents(model, prompt, progress=progress, **sampling)
    t1 = time.perf_counter()
    chunks = []
    for start, frames in decode_latents(model, latents, chunk=decode_chunk, slicing=vae_slicing, tiling=vae_tiling):
        if writer is not None:
            writer(start, frames)
        else:
            chunks.append(frames)
    out = {"seconds": {"sampling": t1 - t0, "decoding": time.perf_counter() - t1}}
    if writer is None:
        out["frames"] = torch.cat(chunks, dim=1)
    if return_latents:
        out["latents"] = latents
    return out
