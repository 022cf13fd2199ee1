"""Where a trained VideoUNet's flow-warping error comes from: the whole frame, or the digit strokes alone.

    bash scripts/env.sh python benchmarks/video_warping_probe.py \
        --weights runs/video_unet_moving_digits/model.safetensors --samples 4

One JSON line per source (generated with the export's own sampling options, and real MovingDigits test clips):
the warping error per clip as scored (evaluation.score_videos uses the same metrics.warping_error), the mean
frame-to-frame change of background pixels (below 10 % grey in both frames) and their mean level; for the
generated clips also the warping error once their background is set to black. A diagnosis tool, not a target.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from mtp import Pipeline
from mtp.pipelines.video_generation import metrics
from mtp.pipelines.video_generation.evaluation import real_reference_clips

DARK = 0.1  # background: below 10 % grey on the [0, 1] scale


def describe(videos) -> dict:
    unit = [(v.squeeze(1).numpy() + 1.0) / 2.0 for v in videos]  # [T, H, W] in [0, 1]
    return {"warping_error": [round(float(metrics.warping_error(v)), 5) for v in videos],
            "background_frame_change": [round(float(np.abs(np.diff(x, axis=0))[(x[:-1] < DARK) & (x[1:] < DARK)]
                                                    .mean()), 5) for x in unit],
            "background_level": [round(float(x[x < DARK].mean()), 5) for x in unit]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="an exported run's model.safetensors")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = Pipeline("video_generation", weights=args.weights, device="cpu")
    classes = [(3 * i) % 10 for i in range(args.samples)]
    generated = [v.video for v in pipe.generate_videos(classes, frames=args.frames, seeds=list(range(args.samples)),
                                                       progress=False)]
    real, _ = real_reference_clips(args.samples, args.frames, split="test", seed=0)
    blackened = [torch.where((v + 1) / 2 < DARK, torch.full_like(v, -1.0), v) for v in generated]
    print(json.dumps({"source": "generated", "classes": classes, **describe(generated),
                      "warping_error_background_black": [round(float(metrics.warping_error(v)), 5)
                                                         for v in blackened]}))
    print(json.dumps({"source": "real", **describe(list(real))}))


if __name__ == "__main__":
    main()
