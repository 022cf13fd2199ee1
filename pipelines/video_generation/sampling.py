"""Sampling an epsilon-predicting video denoiser (our VideoUNet or any model with the same call) with diffusers'
schedulers and classifier-free guidance.

Pixel space, no VAE: the whole video [B, C, T, H, W] is denoised at once (long videos too; the temporal method
installed on the model's TemporalAttention layers decides how frames far apart interact). Memory is bounded by
`batch_size` samples per denoiser call (x2 under guidance).

The noise schedule must be the one the model was trained with (`beta_schedule`, `num_train_timesteps`); both
schedulers use "trailing" timestep spacing, so the first step starts from t = 999 (pure noise) whatever `steps`
is. DDIM (eta 0) clips its x0 estimate to [-1, 1]; DPM-Solver++ (2nd order multistep) uses dynamic thresholding
to the same range: the data are in [-1, 1].
"""
from __future__ import annotations

import sys

import torch

SCHEDULERS = ("ddim", "dpmsolver++")
BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")


def noise_schedule_config(beta_schedule: str = "squaredcos_cap_v2", num_train_timesteps: int = 1000) -> dict:
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule {beta_schedule!r}: expected one of {', '.join(BETA_SCHEDULES)}")
    return {"num_train_timesteps": int(num_train_timesteps), "beta_schedule": beta_schedule}


def training_scheduler(beta_schedule: str = "squaredcos_cap_v2", num_train_timesteps: int = 1000):
    """The DDPM forward process the model is trained on (add_noise)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**noise_schedule_config(beta_schedule, num_train_timesteps), clip_sample=False)


def make_scheduler(kind: str, beta_schedule: str = "squaredcos_cap_v2", num_train_timesteps: int = 1000,
                   stochastic: bool = False):
    """A fresh sampling scheduler (DPM-Solver++ keeps per-run state, so one per generated batch); `stochastic`
    selects DPM-Solver++'s SDE variant (sde-dpmsolver++) (DDIM takes its eta per step instead)."""
    config = noise_schedule_config(beta_schedule, num_train_timesteps)
    if kind == "ddim":
        from diffusers import DDIMScheduler

        return DDIMScheduler(**config, clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True,
                             timestep_spacing="trailing", prediction_type="epsilon")
    if kind == "dpmsolver++":
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler(**config, algorithm_type="sde-dpmsolver++" if stochastic else "dpmsolver++",
                                           solver_order=2,
                                           thresholding=True, sample_max_value=1.0, timestep_spacing="trailing",
                                           prediction_type="epsilon", lower_order_final=True)
    raise ValueError(f"scheduler {kind!r}: expected one of {', '.join(SCHEDULERS)}")


def initial_noise(seeds, shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """[len(seeds), *shape] standard normal noise, sample i drawn from torch.Generator().manual_seed(seeds[i]) on
    the CPU (the same values on every device and in any batch)."""
    noise = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device=device, dtype=dtype)


def generate(model, class_labels, num_frames: int, height: int, width: int, channels: int = 1,
             scheduler: str = "ddim", steps: int = 50, guidance_scale: float = 2.0, seeds=None,
             progress: bool = True, callback=None, step_hook=None, batch_size: int = 8,
             beta_schedule: str = "squaredcos_cap_v2", num_train_timesteps: int = 1000,
             null_class: int | None = None, eta: float = 0.0, x0_prior=None) -> torch.Tensor:
    """Videos [B, C, T, H, W] in [-1, 1], one per entry of `class_labels`.

    seeds: one per sample (sample i starts from noise seeded seeds[i]); None: 0..B-1.
    guidance_scale: classifier-free guidance, eps = eps(null) + g * (eps(class) - eps(null)); 1 (or a null class
      label) runs the conditional model alone. null_class: the label of "no class" (default `model.null_class`).
    step_hook(step_index, timestep, latents) -> latents: runs after each scheduler step (AnimateZero re-injects
      the first frame there). callback(step_index, timestep, latents): observes each step.
    eta: 0 samples the deterministic ODE; 1 the stochastic sampler (DDIM with eta 1, the DDPM posterior; for
      dpmsolver++ its SDE variant), whose fresh noise each step corrects an imperfect denoiser's drift (with
      epsilon prediction, the first steps' x0 estimates at near-zero SNR are noise, which deterministic samplers
      carry to the end). DDIM takes any eta in [0, 1], DPM-Solver++ 0 or 1. Sample i draws that noise from its own
      generator (seeded seeds[i], after its initial noise), so results do not depend on the batch.
    x0_prior: (mean, var, eps_var) or None: error-aware shrinkage of each step's x0 estimate toward the data mean
      (see `shrink_eps`); None leaves the model's estimate as it is.
    """
    labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
    n = len(labels)
    if n == 0:
        raise ValueError("generate: no class labels given")
    seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"generate: {len(seeds)} seeds for {n} class labels; give one seed per sample")
    for name, value in (("num_frames", num_frames), ("height", height), ("width", width), ("channels", channels),
                        ("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"generate: {name} must be an int >= 1, got {value!r}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"generate: scheduler {scheduler!r}: expected one of {', '.join(SCHEDULERS)}")
    if not 0.0 <= eta <= 1.0 or (scheduler != "ddim" and eta not in (0.0, 1.0)):
        raise ValueError(f"generate: eta={eta}: expected 0..1 for ddim, 0 or 1 for dpmsolver++")
    null = getattr(model, "null_class", None) if null_class is None else null_class
    guided = guidance_scale != 1.0
    if guided and null is None:
        raise ValueError("generate: guidance needs the model's null class (model.null_class or null_class=...)")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(batches) * steps, desc="denoising", unit="step", file=sys.stderr, disable=not progress)
    outputs = []
    was_training = model.training
    model.eval()
    try:
        # no_grad rather than inference_mode: processors may cache tensors (FreeLong's filters) that a later
        # forward with autograd would refuse if they were inference tensors
        with torch.no_grad(), bar:
            for rows in batches:
                sched = make_scheduler(scheduler, beta_schedule, num_train_timesteps, stochastic=bool(eta))
                sched.set_timesteps(steps, device=device)
                shape = (channels, num_frames, height, width)
                gens = [torch.Generator().manual_seed(seeds[i]) for i in rows]
                latents = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device, dtype)
                latents = latents * sched.init_noise_sigma
                cond = labels[rows].to(device)
                model_labels = torch.cat([cond, torch.full_like(cond, null)]) if guided else cond

                def fresh_noise(gens=gens):
                    return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device, dtype)

                for index, t in enumerate(sched.timesteps):
                    latents = denoise_step(model, sched, latents, t, model_labels, guidance_scale,
                                           x0_prior=x0_prior, eta=eta, kind=scheduler, fresh_noise=fresh_noise)
                    if step_hook is not None:
                        latents = step_hook(index, t, latents)
                    if callback is not None:
                        callback(index, t, latents)
                    bar.update(1)
                outputs.append(latents.float().clamp_(-1.0, 1.0).cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs)


def denoise_step(model, sched, latents, t, model_labels, guidance_scale: float, *, x0_prior=None, eta: float = 0.0,
                 kind: str = "ddim", fresh_noise=None) -> torch.Tensor:
    """One sampling step: epsilon (classifier-free guided unless guidance_scale is 1, when `model_labels` holds the
    conditional rows then the null rows), optionally shrunk by the x0 prior, then the scheduler's update (stochastic
    with `fresh_noise()` when eta)."""
    x_in = sched.scale_model_input(latents, t)
    guided = guidance_scale != 1.0
    x_in = torch.cat([x_in, x_in]) if guided else x_in
    timesteps = torch.full((len(x_in),), int(t), device=latents.device, dtype=torch.long)
    eps = model(x_in, timesteps, model_labels)
    if guided:
        eps_c, eps_u = eps.chunk(2)
        eps = eps_u + guidance_scale * (eps_c - eps_u)
    if x0_prior is not None:
        eps = shrink_eps(eps, x_in[:len(latents)], sched.alphas_cumprod[int(t)], *x0_prior)
    if eta:
        extra = {"eta": eta} if kind == "ddim" else {}
        return sched.step(eps, t, latents, variance_noise=fresh_noise(), **extra).prev_sample
    return sched.step(eps, t, latents).prev_sample


def shrink_eps(eps: torch.Tensor, x: torch.Tensor, alpha_bar, mean: float, var: float, eps_var: float) -> torch.Tensor:
    """The epsilon whose x0 estimate is the model's, clipped to [-1, 1], then shrunk toward the data `mean`:
    x0 = mean + var / (var + err) * (x0_model - mean), err = (1 - a) / a * eps_var the variance an epsilon error of
    variance `eps_var` gives the estimate at alpha_bar a (a Wiener / Gaussian-prior posterior mean, prior
    N(mean, var)).

    Why: at near-zero SNR (the first steps from t = 999) the estimate (x - sqrt(1 - a) eps) / sqrt(a) amplifies the
    model's small epsilon error ~10^4-fold; clipped, it is a random +-1 pattern of mean ~0, which the next steps read
    as a bright image and carry to the end (grey backgrounds). Shrunk, the early estimates are the data mean; from
    moderate SNR on the weight is ~1 and the model's estimate is used as it is.
    """
    a = torch.as_tensor(alpha_bar, dtype=torch.float32, device=x.device)
    x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1.0, 1.0)
    weight = var / (var + (1 - a) / a * eps_var)
    x0 = mean + weight * (x0 - mean)
    return ((x - a.sqrt() * x0) / (1 - a).sqrt()).to(eps.dtype)
