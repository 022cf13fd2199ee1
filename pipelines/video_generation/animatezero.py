"""AnimateZero (Yu et al. 2023, "Video Diffusion Models are Zero-Shot Image Animators"), training-free image
animation with a video denoiser: the given image is frame 0 of the video, exactly, and the other frames follow it.

Two parts, as in the paper's appearance and temporal controls:
- First-frame injection (`FirstFrameInjector`, a `step_hook`): the image's clean latent (the pixels themselves
  for our pixel-space VideoUNet, the VAE latent for diffusers models) is noised to each step's level with one
  fixed noise draw, x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, and written into frame 0 after every scheduler
  step; after the last step frame 0 is the clean latent itself, so the output's first frame is the image.
  (The paper takes these latents from the text-to-image run that made the image; for a given image, noising its
  clean latent is the forward process those latents approximate.)
- Positional-corrected window attention (`AnimateZeroAttnProcessor`) in the temporal attention layers: frame i
  attends to the `window` frames ending at i (earlier ones; positions before 0 are filled with frame 0, as the
  paper pads), with the first frame's key/value always present:
    "replace" (default): the window's first key is replaced by frame 0's -> keys [0, i-w+2, ..., i];
    "concat": frame 0's key is put in front of the window -> keys [0, i-w+1, ..., i].
  Positional correction: where the layer's tokens carry an added positional embedding (AnimateDiff's table, our
  VideoUNet's sinusoid), the absolute embedding is taken off and each key gets the embedding of its slot in the
  window (0..L-1) and the query that of its own slot (L-1, the last), so every frame sees the positions of a
  window of the trained length whatever its index. UNet3D has no positional embedding: nothing to correct.
  The paper uses window attention in the encoder's motion modules and global attention in the decoder's, hence
  `layers="down"` by default.

Attention runs through `mtp.kernels.attention`, keys gathered per query block so memory stays bounded by
`block` query frames at a time. Degenerate case (tested): with T == window, the last frame's window is every
frame at its own position, so its output equals plain attention's.
"""
from __future__ import annotations

import torch

from mtp.kernels import attention
from mtp.pipelines.video_generation.temporal import (attention_output, install_temporal_processor,
                                                      position_table_for, temporal_tokens)

VARIANTS = ("replace", "concat")
_GATHER_BUDGET = 1 << 25  # elements of gathered keys per block (x2 with values)


def window_indices(num_frames: int, window: int, variant: str = "replace", device=None) -> torch.Tensor:
    """[T, L] frame index held by each key slot of each query frame (L = window, + 1 for "concat")."""
    if variant not in VARIANTS:
        raise ValueError(f"AnimateZero: variant must be one of {VARIANTS}, got {variant!r}")
    if window < 1:
        raise ValueError(f"AnimateZero: window must be >= 1, got {window}")
    i = torch.arange(num_frames, device=device)[:, None]
    frames = (i - window + 1 + torch.arange(window, device=device)[None]).clamp(min=0)
    if variant == "replace":
        frames[:, 0] = 0
        return frames
    return torch.cat([torch.zeros(num_frames, 1, dtype=frames.dtype, device=device), frames], dim=1)


def _no_bias(linear, x):
    return torch.nn.functional.linear(x, linear.weight)


class AnimateZeroAttnProcessor:
    """Positional-corrected window attention for a temporal self-attention layer (module docstring).

    positions: `positions(n, dim, device) -> [n, dim]`, the embedding the layer's tokens carry (None: none);
    `install_animatezero` finds it per layer. block: query frames per gathered block (None: from a budget).
    """

    def __init__(self, window: int = 16, variant: str = "replace", positions=None, block: int | None = None):
        if variant not in VARIANTS:
            raise ValueError(f"AnimateZero: variant must be one of {VARIANTS}, got {variant!r}")
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"AnimateZero: window must be a positive int, got {window!r}")
        if block is not None and block < 1:
            raise ValueError(f"AnimateZero: block must be >= 1, got {block}")
        self.window, self.variant, self.positions, self.block = window, variant, positions, block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        x = temporal_tokens("AnimateZeroAttnProcessor", attn, hidden_states, encoder_hidden_states, attention_mask)
        n, t, c = x.shape
        idx = window_indices(t, self.window, self.variant, device=x.device)
        slots = idx.shape[1]
        heads = attn.heads
        pe = None
        if self.positions is not None:
            pe = self.positions(max(t, slots), c, x.device).to(x.dtype)
            x = x - pe[:t]  # the tokens without their absolute positions
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        if pe is not None:  # linear layers: W(h + p) = W h + W p, so slot positions are added after projecting
            q = q + _no_bias(attn.to_q, pe[slots - 1])
            k_pos, v_pos = _no_bias(attn.to_k, pe[:slots]), _no_bias(attn.to_v, pe[:slots])
        d = q.shape[-1] // heads

        def split(y):  # [n, T, H*d] -> [n, H, T, d]
            return y.reshape(y.shape[0], y.shape[1], heads, -1).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        if getattr(attn, "norm_q", None) is not None:
            q = attn.norm_q(q)
        if pe is not None:
            k_pos = k_pos.reshape(slots, heads, d).transpose(0, 1)[None, :, None]  # [1, H, 1, L, d]
            v_pos = v_pos.reshape(slots, heads, d).transpose(0, 1)[None, :, None]
        block = self.block or max(1, min(t, _GATHER_BUDGET // max(1, n * slots * heads * d)))
        out = []
        for start in range(0, t, block):
            rows = idx[start:start + block]  # [b, L]
            kb, vb = k[:, :, rows], v[:, :, rows]  # [n, H, b, L, d]
            if pe is not None:
                kb, vb = kb + k_pos, vb + v_pos
            if getattr(attn, "norm_k", None) is not None:
                kb = attn.norm_k(kb)
            qb = q[:, :, start:start + block, None]  # [n, H, b, 1, d]
            out.append(attention(qb, kb, vb, scale=attn.scale)[:, :, :, 0])
        o = torch.cat(out, dim=2).transpose(1, 2).reshape(n, t, heads * d).to(q.dtype)
        return attention_output(attn, o, residual)


def _layer_filter(layers):
    if layers == "all" or layers is None:
        return None
    if layers == "down":  # the encoder half: diffusers' down_blocks (+ UNet3D's transformer_in), our `down.`
        return lambda name: name.startswith(("down_blocks", "down.", "transformer_in"))
    if callable(layers) or isinstance(layers, (list, tuple, set)):
        return layers
    raise ValueError(f"AnimateZero: layers must be 'down', 'all', a list of names or a callable, got {layers!r}")


def install_animatezero(model, window: int = 16, variant: str = "replace", layers="down", block=None):
    """Install AnimateZeroAttnProcessor on the model's temporal attention layers (`layers`: "down" = the
    encoder's, as the paper; "all"; names; or a predicate), each with its layer's positional embedding.
    Returns the restore handle of install_temporal_processor."""
    def factory(name, module):
        return AnimateZeroAttnProcessor(window, variant, positions=position_table_for(model, name), block=block)

    return install_temporal_processor(model, factory, layers=_layer_filter(layers))


# ---------------------------------------------------------------------------------- first-frame injection

class FirstFrameInjector:
    """A step_hook keeping frame 0 of [B, C, T, H, W] latents on the given clean frame's diffusion path.

    clean: [C, H, W] (every sample) or [B, C, H, W]. Call `bind(scheduler)` with the run's scheduler (timesteps
    set) before sampling; `initial(latents)` puts the noised frame into the starting noise.
    """

    def __init__(self, clean: torch.Tensor, noise_seed: int = 0):
        if clean.dim() == 3:
            clean = clean[None]
        if clean.dim() != 4:
            raise ValueError(f"AnimateZero: the first frame must be [C, H, W] or [B, C, H, W], got "
                             f"{tuple(clean.shape)}")
        self.clean = clean
        self.noise = torch.randn(tuple(clean.shape), generator=torch.Generator().manual_seed(int(noise_seed)))
        self.timesteps = None
        self.alphas_cumprod = None

    def bind(self, scheduler) -> "FirstFrameInjector":
        if len(getattr(scheduler, "timesteps", ())) == 0:
            raise ValueError("FirstFrameInjector.bind: call scheduler.set_timesteps(steps) first")
        self.timesteps = [int(t) for t in scheduler.timesteps]
        self.alphas_cumprod = scheduler.alphas_cumprod.detach().float().cpu()
        return self

    def noised(self, timestep, like: torch.Tensor) -> torch.Tensor:
        """The clean frame at the noise level of `timestep` (None: clean), shaped and typed like `like`."""
        clean = self.clean.to(device=like.device, dtype=torch.float32)
        if timestep is not None:
            abar = self.alphas_cumprod[int(timestep)]
            clean = abar.sqrt() * clean + (1 - abar).sqrt() * self.noise.to(like.device)
        return clean.to(like.dtype).expand(like.shape[0], *clean.shape[1:])

    def _set(self, latents, timestep):
        if self.timesteps is None:
            raise RuntimeError("FirstFrameInjector: bind(scheduler) was not called")
        if latents.shape[1:2] + latents.shape[3:] != self.clean.shape[1:] or self.clean.shape[0] not in (
                1, latents.shape[0]):
            raise ValueError(f"AnimateZero: first frame {tuple(self.clean.shape)} does not fit latents "
                             f"{tuple(latents.shape)} [B, C, T, H, W]")
        latents = latents.clone()
        latents[:, :, 0] = self.noised(timestep, latents[:, :, 0])
        return latents

    def initial(self, latents: torch.Tensor) -> torch.Tensor:
        return self._set(latents, self.timesteps[0] if self.timesteps else None)

    def __call__(self, step_index: int, timestep, latents: torch.Tensor) -> torch.Tensor:
        """After scheduler step `step_index`: latents are at the next timestep's level, clean after the last."""
        nxt = step_index + 1
        return self._set(latents, self.timesteps[nxt] if nxt < len(self.timesteps) else None)


def check_first_frame(image: torch.Tensor, expected: tuple, what: str = "model's frames") -> torch.Tensor:
    """image [C, H, W] or [B, C, H, W] against the expected (C, H, W): an error naming both shapes."""
    if image.dim() not in (3, 4) or tuple(image.shape[-3:]) != tuple(expected):
        raise ValueError(f"AnimateZero: image of shape {tuple(image.shape)} does not match the {what} "
                         f"[C, H, W] = {list(expected)}")
    return image


def animate(model, image: torch.Tensor, class_labels, num_frames: int, *, window: int = 16,
            variant: str = "replace", layers="down", noise_seed: int = 0, scheduler: str = "ddim",
            steps: int = 50, beta_schedule: str = "squaredcos_cap_v2", num_train_timesteps: int = 1000,
            **generate_kwargs) -> torch.Tensor:
    """Animate `image` ([C, H, W] or one per sample, in [-1, 1]) with our pixel-space VideoUNet through
    sampling.generate: [B, C, T, H, W] videos whose frame 0 is the image exactly.

    The image fixes C, H, W (they must be the model's channels and a size it takes). sampling.generate runs its
    hook after each step, so the very first model call sees pure noise in frame 0 rather than the image noised
    to t = 999; with the schedules used here sqrt(abar_999) < 1e-2, the same up to that factor.
    """
    from mtp.pipelines.video_generation import sampling

    image = torch.as_tensor(image, dtype=torch.float32)
    channels = int(getattr(model, "in_channels", image.shape[-3]))
    if image.dim() not in (3, 4) or image.shape[-3] != channels:
        raise ValueError(f"AnimateZero: image of shape {tuple(image.shape)} does not match the model's frames "
                         f"[C, H, W] = [{channels}, H, W]")
    if image.min() < -1 or image.max() > 1:
        raise ValueError(f"AnimateZero: image values must be in [-1, 1] (the model's scale), got "
                         f"[{float(image.min()):.3g}, {float(image.max()):.3g}]")
    multiple = int(getattr(model, "size_multiple", 1))
    height, width = image.shape[-2:]
    if height % multiple or width % multiple:
        raise ValueError(f"AnimateZero: image of shape {tuple(image.shape)} does not match the model's frames: "
                         f"H and W must be multiples of {multiple}")
    labels = torch.as_tensor(class_labels).reshape(-1)
    if image.dim() == 4 and image.shape[0] not in (1, len(labels)):
        raise ValueError(f"AnimateZero: {image.shape[0]} images for {len(labels)} class labels")
    if image.dim() == 4 and image.shape[0] > 1 and generate_kwargs.get("batch_size", 8) < len(labels):
        raise ValueError("AnimateZero: one image per sample needs batch_size >= the number of samples")
    injector = FirstFrameInjector(image, noise_seed)
    sched = sampling.make_scheduler(scheduler, beta_schedule, num_train_timesteps)
    sched.set_timesteps(steps)
    injector.bind(sched)
    with install_animatezero(model, window, variant, layers):
        return sampling.generate(model, labels, num_frames, int(height), int(width), channels=channels,
                                 scheduler=scheduler, steps=steps, step_hook=injector, beta_schedule=beta_schedule,
                                 num_train_timesteps=num_train_timesteps, **generate_kwargs)


def animate_diffusers(video_model, prompt, *, image: torch.Tensor | None = None, image_latent=None,
                      num_frames: int = 16, window: int = 16, variant: str = "replace", layers="down",
                      noise_seed: int = 0, return_latents: bool = False, **kwargs) -> dict:
    """AnimateZero on a diffusers video model (diffusers_models.VideoModel): `image` [3, H, W] in [-1, 1] is
    VAE-encoded (its size sets height / width), or `image_latent` [C, h, w] is used as it is. Keyword arguments
    go to diffusers_models.generate_video. Frame 0 of the latents is the image latent exactly; decoded, the
    first frame is the VAE's decoding of that latent."""
    from mtp.pipelines.video_generation.diffusers_models import encode_image, generate_video

    f = video_model.vae_scale_factor
    if image_latent is None:
        if image is None:
            raise ValueError("animate_diffusers: give image= (pixels) or image_latent=")
        image = torch.as_tensor(image, dtype=torch.float32)
        h, w = kwargs.get("height") or image.shape[-2], kwargs.get("width") or image.shape[-1]
        check_first_frame(image, (3, h, w), f"requested frames (height={h}, width={w})")
        if h % f or w % f:
            raise ValueError(f"animate_diffusers: image size {h}x{w} is not a multiple of the VAE factor {f}")
        image_latent = encode_image(video_model, image)
        kwargs.setdefault("height", h)
        kwargs.setdefault("width", w)
    else:
        image_latent = torch.as_tensor(image_latent)
        h = kwargs.setdefault("height", image_latent.shape[-2] * f)
        w = kwargs.setdefault("width", image_latent.shape[-1] * f)
        check_first_frame(image_latent, (video_model.latent_channels, h // f, w // f),
                          f"model's latent frames (height={h}, width={w})")
    injector = FirstFrameInjector(image_latent.to(video_model.dtype), noise_seed)
    with install_animatezero(video_model.unet, window, variant, layers):
        out = generate_video(video_model, prompt, num_frames=num_frames, step_hook=injector, return_latents=True,
                             **kwargs)
    out["image_latent"] = injector.clean
    if not return_latents:
        out.pop("latents")
    return out
