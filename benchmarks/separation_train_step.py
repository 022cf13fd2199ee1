"""What one Conv-TasNet training step costs on this CPU: the budget behind the FSDD separation recipe.

Times forward + backward + Adam step of the recipe's Conv-TasNet (recipes/speech_separation/conv_tasnet_fsdd.yaml)
on random 1 s mixtures at 8 kHz, for several batch sizes, in float32 and under bf16 autocast, and prints one JSON
line per case with the milliseconds per mixture (the mean of the timed steps after two warm-up steps):

  python benchmarks/separation_train_step.py --threads 2

With `--profile`, it also prints torch.profiler's table of the operators' own CPU time for the recipe's batch (8).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="2,4,8,16")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per case (after 2 warm-up steps)")
    parser.add_argument("--seconds", type=float, default=1.0, help="mixture length")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from mtp.config import load_recipe
    from mtp.registry import BACKBONES

    torch.set_num_threads(args.threads)
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "speech_separation" / "conv_tasnet_fsdd.yaml")
    model = BACKBONES.get(recipe.backbone.name).build(**recipe.backbone.kwargs)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    samples = int(args.seconds * recipe.options["sample_rate"])

    def step(mixture, bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            estimates = model(mixture)
        loss = estimates.float().pow(2).mean()  # the cost does not depend on the loss's form
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in (int(b) for b in args.batch_sizes.split(",")):
        mixture = torch.randn(batch, samples)
        for bf16 in (False, True):
            for _ in range(2):
                step(mixture, bf16)
            started = time.perf_counter()
            for _ in range(args.steps):
                step(mixture, bf16)
            seconds = (time.perf_counter() - started) / args.steps
            print(json.dumps({"bench": "separation_train_step", "model": recipe.backbone.name, "batch": batch,
                              "seconds_audio": args.seconds, "precision": "bf16-mixed" if bf16 else "32-true",
                              "threads": args.threads, "step_ms": round(seconds * 1000, 1),
                              "ms_per_mixture": round(seconds * 1000 / batch, 1)}), flush=True)
    if args.profile:
        from torch.profiler import profile

        mixture = torch.randn(8, samples)
        with profile() as prof:
            for _ in range(3):
                step(mixture, False)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
