"""Long-video generation cost with our VideoUNet: plain temporal attention vs FreeLong (mtp.kernels path) vs FreeLong
as the official code computes it, over frame counts, on the CPU; and diffusers' FreeNoise where it applies.

    python benchmarks/video_generation_bench.py                     # every case; the trained model if present
    python benchmarks/video_generation_bench.py --weights runs/video_unet_moving_digits/model.safetensors
    python benchmarks/video_generation_bench.py --cases plain_64 freelong_64 freelong_reference_64 --steps 10
    python benchmarks/video_generation_bench.py --frames 16 32 --no-freenoise-tiny       # quick
    python benchmarks/video_generation_bench.py --only-targets --targets 30   # issue 16's targets

Model: `--weights` (default runs/video_unet_moving_digits/model.safetensors, the export of
recipes/video_generation/video_unet_moving_digits.yaml) through mtp.Pipeline("video_generation", weights=...), its
sampling options (noise schedule) included; without the file, a randomly initialised `video_unet` from the backbone
registry whose zero-initialised layers (attention outputs, the last conv) are re-drawn N(0, 0.02), seeded, so the
temporal attention matters and the FreeLong paths have something to agree on (`"weights": "random"` in the lines).

Sampling: sampling.generate, DDIM, `--steps` (10) steps, classifier-free guidance `--guidance` (2.0: two samples per
denoiser call), one video of class `--label`, seed `--seed`, 32x32 frames, `--threads` (1) torch threads.

Cases (each in a fresh child interpreter; peak RSS = that child's ru_maxrss via os.wait4):
  plain_T                the model's own TemporalAttnProcessor (global attention over all T frames), T in --frames;
  freelong_T             FreeLongAttnProcessor (window --window, "adjusted" mask, blend at every level, as the
                         pipeline's temporal="freelong"): global attention + banded local attention through
                         mtp.kernels, SpectralBlend as one FFT pair on the token layout;
  freelong_reference_T   FreeLongAttnProcessor(reference=True): dense softmax with a materialised [T, T] local mask
                         and spectral_blend_reference ([B, C, T, H, W] permute, fftshift, three FFTs), for T in
                         --reference-frames (64, 128);
  freenoise              diffusers' FreeNoise is an AnimateDiffPipeline feature (AnimateDiffFreeNoiseMixin: motion
                         modules' BasicTransformerBlocks swapped for FreeNoiseTransformerBlock, latent windows of 16
                         frames blended, noise re-used per window). Our VideoUNet has neither, so it does not apply:
                         one line says so. The tiny_animatediff_{plain,freenoise}_T cases (T = --goal-frames; skip
                         them with --no-freenoise-tiny) measure it on a tiny randomly initialised AnimateDiff model
                         (tests/video_generation/diffusers_tiny.py, 32x32 frames, text prompt, its own VAE) against
                         plain extension of the same model (position tables extended, pipelines/video_generation/
                         temporal.py): a cost comparison of the two on a model where FreeNoise exists.

Memory cases memory_{plain,freelong}_T (T in --frames) and memory_freelong_reference_T (--reference-frames) run
--memory-steps (2) steps after a 1-step warm-up at T = --window, with MALLOC_MMAP_THRESHOLD_=65536 so that every
tensor above 64 KiB is its own mapping, returned to the system when freed (glibc otherwise keeps freed blocks, and
RSS would show the allocator's history rather than what sampling holds); the warm-up puts code pages and one-off
buffers into RSS before the baseline. Their sampling_rss_mib is what sampling T frames holds above that.

Fields: seconds (the generate call), step_s_median (median denoising step, from the callback), temporal_attention_s
(time inside the temporal attention processors, timed around each call), rss_before_mib (the child's ru_maxrss once
the model is built, before sampling), rss_after_sampling_mib (its ru_maxrss right after), sampling_rss_mib = after -
before (what sampling added), peak_rss_mib (the child's ru_maxrss when the case is done), process_peak_rss_mib
(os.wait4's, which also counts the interpreter's shutdown: the CUDA build of torch adds about 100 MiB there, after
the work), total_s / cpu_s of the child, load averages. freelong_reference lines add max_abs_diff_vs_freelong (the
videos of the two paths after all steps: float round-off, amplified by sampling) and forward_max_abs_diff (one
denoiser call on the same input through both paths, after sampling).
A last `summary` line gives freelong/plain ratios (whole generation and attention alone) at --goal-frames (64) and
the memory growth check: the peak RSS added per frame between consecutive frame counts (flat for linear growth,
rising for a quadratic term) may not exceed 1.25 x the first step's (+ 0.5 MiB/frame).
Goal (issue 16): SpectralBlend adds at most 20% over plain attention (FreeLong's median denoising step <= 1.2 x
plain's, whole model; the attention layers alone are reported beside it) and peak memory grows at most linearly
with the frame count.

With --targets N, `target_*` lines score N generated videos per setting with evaluation.score_videos (16 frames; 64
frames plain; 64 frames FreeLong) and a `targets_summary` line checks issue 16's targets: 16-frame class agreement
>= 0.80 and warping error <= 3x the real clips'; at 64 frames FreeLong's class agreement within 0.05 of the 16-frame
figure and its feature drift below plain extension's.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from child_run import run_worker, torch_versions  # noqa: E402  (beside this script)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = REPO / "runs" / "video_unet_moving_digits" / "model.safetensors"
GOAL_TIME_RATIO = 1.2
LINEAR_SLACK = 1.25
MMAP_THRESHOLD = 65536   # memory cases: every tensor above 64 KiB its own mmap, unmapped when freed


# ------------------------------------------------------------------------------------------------- the child
class TimedProcessor:
    """Wraps a temporal attention processor and adds up the seconds spent in it; other attributes (set_hw) are
    the wrapped processor's, so the model sees the same interface."""

    def __init__(self, inner, clock: list):
        self.inner, self.clock = inner, clock

    def __call__(self, attn, hidden_states, *args, **kwargs):
        started = time.perf_counter()
        out = self.inner(attn, hidden_states, *args, **kwargs)
        self.clock[0] += time.perf_counter() - started
        return out

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _build_model(spec: dict):
    """(model, sampling kwargs, weights description)."""
    import torch

    weights = spec["weights"]
    if weights:
        from mtp.pipeline import Pipeline

        pipe = Pipeline("video_generation", weights=weights, device="cpu")
        c = pipe.config
        return pipe.model.eval(), dict(beta_schedule=c["beta_schedule"], num_train_timesteps=c["num_train_timesteps"],
                                       height=c["height"], width=c["width"]), str(weights)
    from mtp.registry import BACKBONES

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["seed"])
        model = BACKBONES.get("video_unet").build()
        with torch.no_grad():
            for p in model.parameters():
                if not p.abs().sum():
                    p.normal_(0.0, 0.02)
    return model.eval(), dict(height=32, width=32), "random"


def worker(spec_path: str, out_path: str) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    if spec["method"] == "freenoise_tiny":
        result = _freenoise_worker(spec)
    else:
        result = _unet_worker(spec)
    result.update(torch_versions())
    result["rss_at_exit_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out_path).write_text(json.dumps(result))


def _unet_worker(spec: dict) -> dict:
    import torch

    from mtp.pipelines.video_generation.freelong import FreeLongAttnProcessor, FreeLongConfig
    from mtp.pipelines.video_generation.sampling import generate, make_scheduler
    from mtp.pipelines.video_generation.temporal import install_temporal_processor

    import tqdm.auto  # noqa: F401

    model, sampling, described = _build_model(spec)
    clock = [0.0]
    method = spec["method"]
    if method == "plain":
        def factory(name, module):
            return TimedProcessor(module.processor, clock)
    else:
        config = FreeLongConfig(window=spec["window"], mask="adjusted", local_only_tokens=())
        reference = method == "freelong_reference"

        def factory(name, module):
            return TimedProcessor(FreeLongAttnProcessor(config, reference=reference), clock)
    handle = install_temporal_processor(model, factory)
    make_scheduler("ddim")   # diffusers and tqdm imported before the baseline, so sampling_rss_mib is sampling's own
    if spec.get("warmup_frames"):   # memory cases: code pages and one-off buffers in RSS before the baseline
        generate(model, [spec["label"]], spec["warmup_frames"], sampling["height"], sampling["width"], 1,
                 scheduler="ddim", steps=1, guidance_scale=spec["guidance"], seeds=[spec["seed"]], progress=False,
                 **{k: v for k, v in sampling.items() if k in ("beta_schedule", "num_train_timesteps")})
        clock[0] = 0.0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stamps = []
    started = time.perf_counter()
    video = generate(model, [spec["label"]], spec["frames"], sampling["height"], sampling["width"], 1,
                     scheduler="ddim", steps=spec["steps"], guidance_scale=spec["guidance"], seeds=[spec["seed"]],
                     progress=False, callback=lambda i, t, x: stamps.append(time.perf_counter()),
                     **{k: v for k, v in sampling.items() if k in ("beta_schedule", "num_train_timesteps")})
    seconds = time.perf_counter() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    handle.restore()
    steps = [b - a for a, b in zip([started] + stamps[:-1], stamps)]
    torch.save(video, Path(spec["scratch"]) / "video.pt")
    result = {"seconds": seconds, "step_s_median": statistics.median(steps), "temporal_attention_s": clock[0],
              "rss_before_mib": rss_before, "rss_after_mib": rss_after, "weights": described,
              "layers": len(handle.names),
              "video_shape": list(video.shape)}
    if method == "freelong_reference":   # after sampling (the peak is already taken): one denoiser call, both paths
        x = torch.randn(1, 1, spec["frames"], sampling["height"], sampling["width"],
                        generator=torch.Generator().manual_seed(spec["seed"]))
        outs = []
        for ref in (False, True):
            with install_temporal_processor(model, lambda n, m, ref=ref: FreeLongAttnProcessor(config, reference=ref)):
                with torch.inference_mode():
                    outs.append(model(x, torch.tensor([500]), torch.tensor([spec["label"]])))
        result["forward_max_abs_diff"] = float((outs[0] - outs[1]).abs().max())
    return result


def _freenoise_worker(spec: dict) -> dict:
    """A tiny AnimateDiff pipeline at spec['frames'] frames: FreeNoise (enable_free_noise) or plain extension."""
    import torch

    sys.path.insert(0, str(REPO / "tests" / "video_generation"))
    from diffusers import AnimateDiffPipeline, UNetMotionModel
    from diffusers_tiny import (tiny_motion_adapter, tiny_scheduler, tiny_text_encoder, tiny_tokenizer, tiny_unet2d,
                                tiny_vae)

    from mtp.pipelines.video_generation.temporal import extend_position_tables

    tok = tiny_tokenizer()
    adapter = tiny_motion_adapter()
    unet = UNetMotionModel.from_unet2d(tiny_unet2d(), adapter).eval()
    pipe = AnimateDiffPipeline(vae=tiny_vae(), text_encoder=tiny_text_encoder(len(tok.get_vocab())), tokenizer=tok,
                               unet=unet, motion_adapter=adapter, scheduler=tiny_scheduler())
    pipe.set_progress_bar_config(disable=True)
    if spec["variant"] == "freenoise":
        pipe.enable_free_noise(context_length=16, context_stride=4)
    else:
        extend_position_tables(pipe.unet, spec["frames"])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stamps = []
    started = time.perf_counter()
    out = pipe("a digit moving", num_frames=spec["frames"], height=32, width=32, num_inference_steps=spec["steps"],
               guidance_scale=spec["guidance"], generator=torch.Generator().manual_seed(spec["seed"]),
               output_type="pt", callback_on_step_end=lambda p, i, t, kw: stamps.append(time.perf_counter()) or kw)
    seconds = time.perf_counter() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"seconds": seconds, "rss_after_mib": rss_after,
            "step_s_median": statistics.median(steps) if steps else None,
            "temporal_attention_s": None, "rss_before_mib": rss_before,
            "weights": "tiny random AnimateDiff (tests/video_generation/diffusers_tiny.py)",
            "video_shape": list(out.frames.shape)}


# ------------------------------------------------------------------------------------------------ the parent
def _cases(args) -> list[dict]:
    cases = []
    for frames in args.frames:
        cases.append({"case": f"plain_{frames}", "method": "plain", "frames": frames})
        cases.append({"case": f"freelong_{frames}", "method": "freelong", "frames": frames})
    if args.memory_steps:
        for frames in args.frames:
            for method in ("plain", "freelong"):
                cases.append({"case": f"memory_{method}_{frames}", "method": method, "frames": frames,
                              "memory": True})
        for frames in args.reference_frames:
            cases.append({"case": f"memory_freelong_reference_{frames}", "method": "freelong_reference",
                          "frames": frames, "memory": True})
    for frames in args.reference_frames:
        cases.append({"case": f"freelong_reference_{frames}", "method": "freelong_reference", "frames": frames})
    if args.freenoise_tiny:
        for variant in ("plain", "freenoise"):
            cases.append({"case": f"tiny_animatediff_{variant}_{args.goal_frames}", "method": "freenoise_tiny",
                          "variant": variant, "frames": args.goal_frames})
    if args.cases:
        known = {c["case"] for c in cases}
        unknown = [c for c in args.cases if c not in known]
        if unknown:
            raise SystemExit(f"unknown case(s) {unknown}; with these options the cases are {sorted(known)}")
        cases = [c for c in cases if c["case"] in args.cases]
    return cases


def _targets(args, weights, common: dict) -> list[dict]:
    """Issue 16's targets on --targets samples per setting (classes i % 10, seeds 0..N-1), generated through the
    pipeline with the exported model's own sampling options (the recipe's: DDIM, eta, x0 prior, guidance), only
    --target-steps overriding its step count: 16-frame samples, and 4x16 = 64 frames plain, with FreeLong
    (window 16) and with Video-Infinity (clips of 16 frames), each scored by evaluation.score_videos against 64 real
    MovingDigits test clips of the same length (frame classifier: evaluation.frame_classifier(), trained on real
    train frames once and cached)."""
    import torch

    from mtp import Pipeline
    from mtp.pipelines.video_generation import evaluation as E

    torch.set_num_threads(args.threads)
    if weights is None:
        raise SystemExit("--targets needs the trained export (--weights or the recipe's run folder)")
    pipe = Pipeline("video_generation", weights=str(weights), device="cpu")
    classifier = E.frame_classifier()
    n, short, long = args.targets, args.window, 4 * args.window
    labels = [i % classifier.num_classes for i in range(n)]
    settings = {"16f": (short, "plain"), "64f_plain": (long, "plain"), "64f_freelong": (long, "freelong"),
                "64f_video_infinity": (long, "video_infinity")}
    lines, scores = [], {}
    for name, (frames, method) in settings.items():
        overrides = {"temporal": method, "freelong_window": args.window, "clip_frames": args.window}
        if args.target_steps:
            overrides["steps"] = args.target_steps
        started = time.perf_counter()
        with pipe.options_for_call(overrides):
            sampling = {k: pipe.config[k] for k in ("scheduler", "steps", "guidance_scale", "eta", "x0_prior_mean",
                                                    "x0_prior_var", "freelong_window", "freelong_mask",
                                                    "clip_frames", "infinity_context_frames",
                                                    "infinity_global_frames")}
            videos = pipe.generate_videos(labels, frames=frames, seeds=list(range(n)), progress=False)
        seconds = time.perf_counter() - started
        video = torch.stack([v.video for v in videos])  # [N, T, 1, H, W]
        real, real_labels = E.real_reference_clips(64, frames, split="test", seed=0)
        score = E.score_videos(video, labels, classifier, real, real_labels)
        scores[name] = score
        lines.append({"case": f"target_{name}", "method": method, "frames": frames, "samples": n,
                      "sampling": sampling, "weights": str(weights), "generate_s": round(seconds, 1),
                      "classifier_test_frame_accuracy": classifier.info.get("test_frame_accuracy"),
                      **{k: round(v, 5) if isinstance(v, float) else v for k, v in score.items()}})
        print(json.dumps({**common, **lines[-1]}), flush=True)
    base, plain = scores["16f"], scores["64f_plain"]
    long_methods = ("freelong", "video_infinity")
    lines.append({"case": "targets_summary", "samples": n, "weights": str(weights),
                  "class_agreement_16f": round(base["class_agreement"], 4),
                  "class_agreement_16f_at_least_0.80": base["class_agreement"] >= 0.80,
                  "warping_error_ratio_16f": round(base["warping_error_ratio"], 3),
                  "warping_error_ratio_16f_at_most_3": base["warping_error_ratio"] <= 3.0,
                  "class_agreement_64f": {m: round(scores[f"64f_{m}"]["class_agreement"], 4)
                                          for m in ("plain",) + long_methods},
                  "within_0.05_of_16f": {m: abs(scores[f"64f_{m}"]["class_agreement"] - base["class_agreement"])
                                         <= 0.05 for m in ("plain",) + long_methods},
                  "drift_features_64f": {**{m: round(scores[f"64f_{m}"]["drift_features"], 4)
                                            for m in ("plain",) + long_methods},
                                         "real": round(plain["real_drift_features"], 4)},
                  "drift_below_plain": {m: scores[f"64f_{m}"]["drift_features"] < plain["drift_features"]
                                        for m in long_methods}})
    print(json.dumps({**common, **lines[-1]}), flush=True)
    return lines


def _round(value, digits=3):
    return None if value is None else round(value, digits)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help=f"model export (default {DEFAULT_WEIGHTS.relative_to(REPO)} "
                                                        f"if present, else a random model)")
    parser.add_argument("--random", action="store_true", help="use a random model even if the export exists")
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--reference-frames", type=int, nargs="*", default=[64, 128])
    parser.add_argument("--goal-frames", type=int, default=64, help="frame count of the time-ratio goal")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--window", type=int, default=16, help="FreeLong's local window (the trained length)")
    parser.add_argument("--label", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-steps", type=int, default=2,
                        help="steps of the memory cases (0: none); the peak is reached in the first step")
    parser.add_argument("--cases", nargs="*", default=None, help="only these case names")
    parser.add_argument("--no-freenoise-tiny", dest="freenoise_tiny", action="store_false",
                        help="skip FreeNoise vs plain extension on a tiny random AnimateDiff model")
    parser.add_argument("--targets", type=int, default=0, metavar="N",
                        help="also score N samples per setting against issue 16's targets (e.g. 30; 0: skip)")
    parser.add_argument("--target-steps", type=int, default=0, help="sampling steps of the target samples (0: the "
                        "model's own, the recipe's 50)")
    parser.add_argument("--only-targets", action="store_true", help="skip the timing and memory cases")
    parser.add_argument("--keep", default=None, help="keep the case folders (spec, result, log, video.pt) here")
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0

    weights = None
    if not args.random:
        weights = Path(args.weights) if args.weights else DEFAULT_WEIGHTS
        if not weights.is_file():
            if args.weights:
                raise SystemExit(f"--weights {weights}: no such file")
            weights = None
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO / "benchmarks"), os.environ.get("PYTHONPATH")) if p)}
    common = {"bench": "video_generation_bench", "steps": args.steps, "guidance": args.guidance,
              "scheduler": "ddim", "threads": args.threads, "label": args.label, "seed": args.seed, "size": [32, 32]}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="video_bench_") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        print(json.dumps({**common, "case": "freenoise", "applies": False, "model": "VideoUNet",
                          "reason": "FreeNoise is diffusers' AnimateDiffPipeline feature (enable_free_noise swaps the "
                                    "motion modules' BasicTransformerBlocks for FreeNoiseTransformerBlock and "
                                    "re-schedules the latent noise inside that pipeline); VideoUNet has no motion "
                                    "modules and is sampled by sampling.generate, so there is nothing to enable. "
                                    "The tiny_animatediff_* cases measure it on a tiny AnimateDiff model."}),
              flush=True)
        for case in ([] if args.only_targets else _cases(args)):
            spec = {**case, "weights": str(weights) if weights and case["method"] != "freenoise_tiny" else None,
                    "steps": args.steps, "guidance": args.guidance, "window": args.window, "label": args.label,
                    "seed": args.seed, "threads": args.threads, "scratch": str(root / case["case"])}
            case_env = env
            if case.get("memory"):
                spec.update(steps=args.memory_steps, warmup_frames=args.window)
                case_env = {**env, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
            r = run_worker(sys.executable, __file__, spec, root / case["case"], args.threads, extra_env=case_env,
                           cwd=REPO)
            line = {**common, "case": case["case"], "method": case.get("variant", case["method"]),
                    "frames": case["frames"], "window": args.window if "freelong" in case["method"] else None,
                    "weights": r["weights"], "seconds": _round(r["seconds"]),
                    "step_s_median": _round(r["step_s_median"]),
                    "temporal_attention_s": _round(r["temporal_attention_s"]),
                    "rss_before_mib": round(r["rss_before_mib"], 1),
                    "rss_after_sampling_mib": round(r["rss_after_mib"], 1),
                    "peak_rss_mib": round(r["rss_at_exit_mib"], 1),
                    "process_peak_rss_mib": r["peak_rss_mib"],
                    "sampling_rss_mib": round(r["rss_after_mib"] - r["rss_before_mib"], 1),
                    "total_s": r["total_s"], "cpu_s": r["cpu_s"], "loadavg_before": r["loadavg_before"],
                    "loadavg_after": r["loadavg_after"], "torch": r["torch"], "torch_threads": r["torch_threads"]}
            if case.get("memory"):
                line.update(steps=args.memory_steps, warmup_frames=args.window, malloc_mmap_threshold=MMAP_THRESHOLD)
            if "forward_max_abs_diff" in r:
                line["forward_max_abs_diff"] = r["forward_max_abs_diff"]
            if (case["method"] == "freelong_reference" and not case.get("memory")
                    and f"freelong_{case['frames']}" in results):
                import torch

                fast = torch.load(root / f"freelong_{case['frames']}" / "video.pt")
                ref = torch.load(root / case["case"] / "video.pt")
                line["max_abs_diff_vs_freelong"] = float((fast - ref).abs().max())
            results[case["case"]] = line
            print(json.dumps(line), flush=True)
    if results:
        print(json.dumps({**common, **_summary(results, args)}), flush=True)
    if args.targets:
        _targets(args, weights, common)  # prints one line per setting as it finishes, then the summary
    return 0


def _summary(results: dict, args) -> dict:
    out = {"case": "summary", "goal_time_ratio": GOAL_TIME_RATIO}
    t = args.goal_frames
    plain, free, ref = results.get(f"plain_{t}"), results.get(f"freelong_{t}"), results.get(f"freelong_reference_{t}")
    if plain and free:
        out["frames"] = t
        out["freelong_over_plain_seconds"] = round(free["seconds"] / plain["seconds"], 3)
        out["freelong_over_plain_step"] = round(free["step_s_median"] / plain["step_s_median"], 3)
        out["freelong_over_plain_attention"] = round(free["temporal_attention_s"] / plain["temporal_attention_s"], 3)
        out["freelong_extra_share_of_plain_generation"] = round(
            (free["seconds"] - plain["seconds"]) / plain["seconds"], 3)
        out["meets_time_goal"] = out["freelong_over_plain_step"] <= GOAL_TIME_RATIO   # the median step: robust to load
    if free and ref:
        out["reference_over_freelong_seconds"] = round(ref["seconds"] / free["seconds"], 3)
        out["reference_over_freelong_attention"] = round(ref["temporal_attention_s"] / free["temporal_attention_s"], 3)
        out["reference_max_abs_diff"] = ref.get("max_abs_diff_vs_freelong")
    tiny_plain, tiny_free = results.get(f"tiny_animatediff_plain_{t}"), results.get(f"tiny_animatediff_freenoise_{t}")
    if tiny_plain and tiny_free:
        out["tiny_animatediff_freenoise_over_plain_seconds"] = round(tiny_free["seconds"] / tiny_plain["seconds"], 3)
    for method in ("plain", "freelong"):
        for prefix in ("memory_", ""):   # the memory cases when they ran, else the timing cases
            rows = sorted((r["frames"], r["sampling_rss_mib"], r["peak_rss_mib"]) for r in results.values()
                          if r["case"] == f"{prefix}{method}_{r['frames']}")
            if len(rows) >= 2:
                break
        if len(rows) < 2:
            continue
        out[f"{method}_memory_from"] = f"{prefix}{method}_T cases"
        out[f"{method}_sampling_rss_mib"] = {str(f): m for f, m, _ in rows}
        out[f"{method}_peak_rss_mib"] = {str(f): p for f, _, p in rows}
        # MiB per added frame between consecutive frame counts: linear growth keeps it flat, quadratic growth (a
        # [T, T] term) makes it rise with T. At most linear: no step costs more per frame than LINEAR_SLACK x the
        # first step's (+ 0.5 MiB/frame for the allocator's granularity).
        per_frame = [round((m2 - m1) / (f2 - f1), 3) for (f1, m1, _), (f2, m2, _) in zip(rows, rows[1:])]
        out[f"{method}_sampling_mib_per_added_frame"] = per_frame
        out[f"{method}_memory_at_most_linear"] = all(v <= LINEAR_SLACK * max(per_frame[0], 0.0) + 0.5
                                                     for v in per_frame[1:])
    return out


if __name__ == "__main__":
    sys.exit(main())
