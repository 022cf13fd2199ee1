"""Video-Infinity (Tan et al. 2024, "Distributed Long Video Generation"): a long video is cut into clips of
`clip_frames`, each clip is denoised by its own process (torch.distributed: gloo on CPU, NCCL on GPU), and the
clips' temporal layers exchange context so the video is coherent:

- Clip parallelism, temporal convolutions: every `TemporalConv.pad_time` gets the neighbouring clips' edge
  frames (of the same activation) instead of zeros, so a clip's edge frames see exactly what they would in one
  long video; the first / last clip keep zero padding, as the unsplit model has.
- Dual-scope temporal attention: each frame attends to
    local keys: frames i-p..i+p of its clip extended by `context_frames` = p frames of each neighbour (the
      official window: padded positions i..i+2p);
    global keys: `global_frames` frames of the whole video, `global_frames // clips` strided frames from every
      clip (indices 0, s, 2s, ... with s = clip_frames // share), all-gathered;
  in one softmax, with the official timestep-dependent bias: while t >= `phase_t` (early, noisy steps: layout)
  the global logits get +`global_bias`; below it (detail) the local logits get +`local_bias` (official config:
  800, 10, 10).

Deliberate differences from the official code, each for exactness: the first / last clip's missing neighbour
context is masked (the official pads zero keys, which still take softmax weight); every clip shares exactly
`global_frames // clips` frames (the official truncates the concatenation, so later clips can share fewer);
exchanges are all-gathers (the official pairs neighbours in process groups), same values.

Two executions of the same computation:
- "distributed": this process denoises clip `rank` of `world_size` inside an initialised process group
  (`generate_clips(..., mode="distributed")`, e.g. under torchrun), or `generate_distributed` spawns the
  processes on one machine;
- "emulate": one process, the clips as a batch axis, exchanges done by slicing.
Each clip starts from its slice of the whole video's seeded noise, so both give the same video (tested with
2 CPU processes).

Supported models: our VideoUNet (TemporalAttention + TemporalConv). diffusers' UNet3DConditionModel's temporal
attention and TemporalConvLayer convolutions are patched by `install_video_infinity` too (per-conv exchange,
exact), but the samplers here drive our class-conditional model only.
"""
from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mtp.kernels import attention
from mtp.pipelines.video_generation.temporal import attention_output, install_temporal_processor

MODES = ("emulate", "distributed")


@dataclass(frozen=True)
class VideoInfinityConfig:
    """Dual-scope attention settings; defaults from the official example config. context_frames is capped at
    the clip length (context comes from the immediate neighbours only), and each clip shares
    min(clip length, max(1, global_frames // clips)) frames to the global scope."""
    context_frames: int = 8
    global_frames: int = 16
    phase_t: int = 800
    local_bias: float = 10.0
    global_bias: float = 10.0
    dynamic_bias: bool = True

    def __post_init__(self):
        if self.context_frames < 0 or self.global_frames < 0:
            raise ValueError(f"VideoInfinityConfig: context_frames and global_frames must be >= 0, got "
                             f"{self.context_frames}, {self.global_frames}")


# ---------------------------------------------------------------------------------------------- exchanges

class SliceExchange:
    """All clips in this process along a clip axis (dim 1 of [B, clips, ...]); exchanges are slices."""

    def __init__(self, clips: int):
        if clips < 1:
            raise ValueError(f"SliceExchange: clips must be >= 1, got {clips}")
        self.local = self.total = clips
        self.first = 0

    def edges(self, first: torch.Tensor, last: torch.Tensor):
        """first / last: [B, n, ...] edge frames of each clip -> (left, right) context per clip: the previous
        clip's last frames and the next clip's first frames (zeros where there is none)."""
        left = torch.cat([torch.zeros_like(last[:, :1]), last[:, :-1]], dim=1)
        right = torch.cat([first[:, 1:], torch.zeros_like(first[:, :1])], dim=1)
        return left, right

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return x


class DistExchange:
    """One clip per process (rank r holds clip r of world_size) in the default or given process group."""

    def __init__(self, group=None):
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DistExchange: torch.distributed is not initialised (init_process_group first, or "
                               "use mode='emulate')")
        self.dist, self.group = dist, group
        self.rank, self.total = dist.get_rank(group), dist.get_world_size(group)
        self.local, self.first = 1, self.rank

    def _all_gather(self, x):
        x = x.contiguous()
        out = [torch.empty_like(x) for _ in range(self.total)]
        self.dist.all_gather(out, x, group=self.group)
        return out

    def edges(self, first, last):
        both = self._all_gather(torch.cat([first, last], dim=1))  # [B, 2, ...] per rank
        zeros = torch.zeros_like(first)
        left = both[self.rank - 1][:, 1:2] if self.rank > 0 else zeros
        right = both[self.rank + 1][:, 0:1] if self.rank < self.total - 1 else zeros
        return left, right

    def gather(self, x):
        return torch.cat(self._all_gather(x), dim=1)


def neighbour_context(exchange, x: torch.Tensor, p: int, dim: int):
    """x [B, n, ...] with frames along `dim` -> (left, right), each p frames of the neighbouring clips."""
    frames = x.shape[dim]
    if p > frames:
        raise ValueError(f"Video-Infinity: {p} context frames exceed the clip's {frames} frames (context comes "
                         f"from the immediate neighbours only)")
    return exchange.edges(x.narrow(dim, 0, p), x.narrow(dim, frames - p, p))


class _State:
    """What the processors need per model call: the batch (rows per clip axis) and the timestep."""

    def __init__(self, exchange, config):
        self.exchange, self.config = exchange, config
        self.batch = None
        self.timestep = None


# ------------------------------------------------------------------------------------ dual-scope attention

class DualScopeAttnProcessor:
    """Video-Infinity's temporal attention (module docstring) for a temporal self-attention layer whose tokens
    are [(B * clips * H * W), F, C] (clip axis inside the batch, as the emulation lays it out)."""

    def __init__(self, state: _State):
        self.state = state

    def masks(self, frames: int, n_global: int, device, dtype) -> torch.Tensor:
        """Additive [n_local, F, F + 2p + G] mask + phase bias for this process's clips."""
        st, cfg = self.state, self.state.config
        p, ex = min(cfg.context_frames, frames), st.exchange
        i = torch.arange(frames, device=device)[:, None]
        j = torch.arange(frames + 2 * p, device=device)[None]
        band = (j >= i) & (j <= i + 2 * p)  # frames i-p..i+p in padded coordinates
        clip = torch.arange(ex.first, ex.first + ex.local, device=device)[:, None, None]
        keep = band[None] & ~((j[None] < p) & (clip == 0)) & ~((j[None] >= p + frames) & (clip == ex.total - 1))
        local = torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(~keep, float("-inf"))
        glob = torch.zeros(ex.local, frames, n_global, dtype=dtype, device=device)
        if cfg.dynamic_bias and st.timestep is not None:
            if st.timestep >= cfg.phase_t:
                glob = glob + cfg.global_bias
            else:
                local = local + cfg.local_bias
        return torch.cat([local, glob], dim=-1)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("DualScopeAttnProcessor: temporal self-attention only")
        st, cfg = self.state, self.state.config
        ex = st.exchange
        if st.batch is None:
            raise RuntimeError("DualScopeAttnProcessor: the model's batch is unknown (install with "
                               "install_video_infinity, which hooks the model's forward)")
        residual = hidden_states
        x = hidden_states
        if getattr(attn, "group_norm", None) is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        rows, frames, _ = x.shape
        b, n = st.batch, ex.local
        if rows % (b * n):
            raise ValueError(f"DualScopeAttnProcessor: {rows} token rows are not batch {b} x {n} clips x H*W")
        heads = attn.heads

        def split(y):  # [rows, F, H*d] -> [B, n, HW, heads, F, d]
            return y.reshape(b, n, rows // (b * n), frames, heads, -1).permute(0, 1, 2, 4, 3, 5)

        q = split(attn.to_q(x))
        kv = torch.cat([split(attn.to_k(x)), split(attn.to_v(x))], dim=-1)  # one exchange for both
        if getattr(attn, "norm_q", None) is not None:
            q = attn.norm_q(q)
        d = q.shape[-1]
        p = min(cfg.context_frames, frames)  # context comes from the immediate neighbours only
        if p:
            left, right = neighbour_context(ex, kv, p, dim=4)
            parts = [left, kv, right]
        else:
            parts = [kv]
        share = min(frames, max(1, cfg.global_frames // ex.total)) if cfg.global_frames else 0
        n_global = 0
        if share:
            stride = max(frames // share, 1)
            picked = kv[:, :, :, :, torch.arange(0, frames, stride, device=kv.device)[:share]]
            every = ex.gather(picked)  # [B, clips, HW, heads, share, 2d]
            _, total, hw, _, _, width = every.shape
            every = every.permute(0, 2, 3, 1, 4, 5).reshape(b, 1, hw, heads, total * share, width)
            parts.append(every.expand(b, n, hw, heads, total * share, width))
            n_global = total * share
        keys = torch.cat(parts, dim=4)
        k, v = keys[..., :d], keys[..., d:]
        if getattr(attn, "norm_k", None) is not None:
            k = attn.norm_k(k)
        mask = self.masks(frames, n_global, x.device, q.dtype)[None, :, None, None]  # [1, n, 1, 1, F, L]
        out = attention(q, k, v, mask=mask, scale=attn.scale)  # [B, n, HW, heads, F, d]
        out = out.permute(0, 1, 2, 4, 3, 5).reshape(rows, frames, heads * d).to(q.dtype)
        return attention_output(attn, out, residual)


# ----------------------------------------------------------------------------------- temporal convolutions

def _context_pad(state: _State, x: torch.Tensor, p: int) -> torch.Tensor:
    """x [B*n, C, F, H, W] -> [B*n, C, F + 2p, H, W] padded with the neighbouring clips' frames."""
    if p == 0:
        return x
    n = state.exchange.local
    xs = x.reshape(x.shape[0] // n, n, *x.shape[1:])
    left, right = neighbour_context(state.exchange, xs, p, dim=3)
    return torch.cat([left, xs, right], dim=3).reshape(x.shape[0], x.shape[1], -1, *x.shape[3:])


def _patch_temporal_convs(model, state: _State) -> list:
    """Replace pad_time of our TemporalConv and the temporal padding of diffusers' TemporalConvLayer convs;
    returns undo callables."""
    undo = []
    for module in model.modules():
        cls = type(module).__name__
        if cls == "TemporalConv" and hasattr(module, "pad_time"):
            module.pad_time = lambda x, p, _s=state: _context_pad(_s, x, p)
            undo.append(lambda m=module: m.__dict__.pop("pad_time", None))
        elif cls == "TemporalConvLayer":
            for conv in module.modules():
                if isinstance(conv, torch.nn.Conv3d) and conv.kernel_size[0] > 1:
                    pt = conv.padding[0]

                    def forward(x, _c=conv, _p=pt, _s=state):
                        x = _context_pad(_s, x, _p)
                        return F.conv3d(x, _c.weight, _c.bias, _c.stride, (0,) + tuple(_c.padding[1:]),
                                        _c.dilation, _c.groups)
                    conv.forward = forward
                    undo.append(lambda c=conv: c.__dict__.pop("forward", None))
    return undo


class VideoInfinityHandle:
    def __init__(self, undo: list):
        self._undo = undo

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()


def install_video_infinity(model, exchange, config: VideoInfinityConfig | None = None) -> VideoInfinityHandle:
    """Install dual-scope attention on every temporal attention layer, neighbour-context padding on every
    temporal convolution, and a forward pre-hook that records each call's batch and timestep. `exchange`:
    SliceExchange(clips) (emulation: the model's batch is B * clips, clip fastest) or DistExchange()."""
    config = config or VideoInfinityConfig()
    state = _State(exchange, config)

    def pre_hook(module, args, kwargs):
        x = args[0] if args else kwargs.get("x", kwargs.get("sample"))
        t = args[1] if len(args) > 1 else kwargs.get("timesteps", kwargs.get("timestep"))
        if x.shape[0] % exchange.local:
            raise ValueError(f"Video-Infinity: batch {x.shape[0]} is not a whole number of {exchange.local} clips")
        state.batch = x.shape[0] // exchange.local
        t = torch.as_tensor(t).reshape(-1)
        if (t != t[0]).any():
            raise ValueError("Video-Infinity: all clips must be at the same timestep in one call")
        state.timestep = int(t[0])

    handle = install_temporal_processor(model, lambda name, module: DualScopeAttnProcessor(state))
    undo = [handle.restore]
    try:
        undo += _patch_temporal_convs(model, state)
        hook = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
        undo.append(hook.remove)
    except BaseException:
        VideoInfinityHandle(undo).restore()
        raise
    return VideoInfinityHandle(undo)


# ------------------------------------------------------------------------------------------------ sampling

def _denoise(model, latents, labels, null, scheduler, steps, guidance_scale, progress, desc, *, eta=0.0,
             fresh_noise=None, x0_prior=None, kind="ddim"):
    from tqdm.auto import tqdm

    from mtp.pipelines.video_generation.sampling import denoise_step

    guided = guidance_scale != 1.0
    model_labels = torch.cat([labels, torch.full_like(labels, null)]) if guided else labels
    for t in tqdm(scheduler.timesteps, desc=desc, unit="step", disable=not progress):
        latents = denoise_step(model, scheduler, latents, t, model_labels, guidance_scale, x0_prior=x0_prior,
                               eta=eta, kind=kind, fresh_noise=fresh_noise)
    return latents


def generate_clips(model, class_labels, num_frames: int, height: int, width: int, *, clip_frames: int,
                   mode: str = "emulate", config: VideoInfinityConfig | None = None, channels: int = 1,
                   scheduler: str = "ddim", steps: int = 50, guidance_scale: float = 2.0, seeds=None,
                   progress: bool = True, beta_schedule: str = "squaredcos_cap_v2",
                   num_train_timesteps: int = 1000, null_class: int | None = None, group=None,
                   eta: float = 0.0, x0_prior=None) -> torch.Tensor:
    """Videos [B, C, num_frames, H, W] in [-1, 1] by Video-Infinity with `num_frames / clip_frames` clips.

    mode "emulate": all clips here, as a batch axis. mode "distributed": inside an initialised process group of
    exactly num_frames / clip_frames processes, this one denoises clip `rank`; every process returns the whole
    video (all-gathered). Same seeds -> the same video in both modes.
    eta, x0_prior: as `sampling.generate`; the stochastic sampler's fresh noise is drawn for the whole video from
    each sample's generator (seeded seeds[i], after its initial noise) and sliced per clip, so both modes agree.
    """
    from mtp.pipelines.video_generation.sampling import make_scheduler

    if mode not in MODES:
        raise ValueError(f"generate_clips: mode must be one of {MODES}, got {mode!r}")
    if clip_frames < 1 or num_frames % clip_frames:
        raise ValueError(f"generate_clips: num_frames ({num_frames}) must be a whole number of clips of "
                         f"clip_frames ({clip_frames}) frames")
    clips = num_frames // clip_frames
    labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
    seeds = list(range(len(labels))) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(labels):
        raise ValueError(f"generate_clips: {len(seeds)} seeds for {len(labels)} class labels")
    null = getattr(model, "null_class", None) if null_class is None else null_class
    if guidance_scale != 1.0 and null is None:
        raise ValueError("generate_clips: guidance needs the model's null class (model.null_class or null_class=)")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    if mode == "emulate":
        exchange = SliceExchange(clips)
    else:
        exchange = DistExchange(group)
        if exchange.total != clips:
            raise ValueError(f"generate_clips: {clips} clips need {clips} processes, the group has "
                             f"{exchange.total}")
    if not 0.0 <= eta <= 1.0 or (scheduler != "ddim" and eta not in (0.0, 1.0)):
        raise ValueError(f"generate_clips: eta={eta}: expected 0..1 for ddim, 0 or 1 for dpmsolver++")
    sched = make_scheduler(scheduler, beta_schedule, num_train_timesteps, stochastic=bool(eta))
    sched.set_timesteps(steps, device=device)
    shape = (channels, num_frames, height, width)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    noise = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device, dtype) * sched.init_noise_sigma
    b = len(labels)

    def local_clips(video):
        # [B, C, clips, F, H, W] -> this process's clips as batch rows [B * local, C, F, H, W], clip fastest
        chunks = video.reshape(b, channels, clips, clip_frames, height, width)
        chunks = chunks[:, :, exchange.first:exchange.first + exchange.local].permute(0, 2, 1, 3, 4, 5)
        return chunks.reshape(b * exchange.local, channels, clip_frames, height, width)

    def fresh_noise():  # every process draws the whole video's noise, so the clips' noise does not depend on ranks
        return local_clips(torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device, dtype))

    latents = local_clips(noise)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), install_video_infinity(model, exchange, config):
            latents = _denoise(model, latents, labels.to(device).repeat_interleave(exchange.local), null, sched,
                               steps, guidance_scale, progress, f"video-infinity {mode}", eta=eta,
                               fresh_noise=fresh_noise, x0_prior=x0_prior, kind=scheduler)
            latents = latents.reshape(b, exchange.local, channels, clip_frames, height, width)
            latents = exchange.gather(latents)  # [B, clips, C, F, H, W]
    finally:
        model.train(was_training)
    video = latents.permute(0, 2, 1, 3, 4, 5).reshape(b, channels, num_frames, height, width)
    return video.float().clamp(-1, 1).cpu()


# ------------------------------------------------------------------------------------- local process group

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, backend, model_factory, state_dict, kwargs, out_path, threads):
    import torch.distributed as dist

    torch.set_num_threads(threads)
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        model = model_factory()
        model.load_state_dict(state_dict)
        model.to(device)
        video = generate_clips(model, mode="distributed", **kwargs)
        if rank == 0:
            torch.save(video, out_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def generate_distributed(model_factory, state_dict, world_size: int, *, backend: str | None = None,
                         threads_per_process: int = 1, **kwargs) -> torch.Tensor:
    """Spawn `world_size` local processes (one clip each; NCCL with one GPU per process when CUDA has enough,
    else gloo on the CPU), each building `model_factory()` and loading `state_dict`, and return the video
    (`generate_clips` keyword arguments; num_frames must be world_size clips of clip_frames)."""
    import torch.multiprocessing as mp

    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo"
    if kwargs.get("num_frames") != world_size * kwargs.get("clip_frames", -1):
        raise ValueError(f"generate_distributed: num_frames ({kwargs.get('num_frames')}) must be world_size "
                         f"({world_size}) x clip_frames ({kwargs.get('clip_frames')})")
    state_dict = {k: v.detach().cpu() for k, v in state_dict.items()}
    kwargs.setdefault("progress", False)
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "video.pt")
        mp.spawn(_worker, args=(world_size, free_port(), backend, model_factory, state_dict, kwargs, out_path,
                                threads_per_process), nprocs=world_size, join=True)
        return torch.load(out_path)
