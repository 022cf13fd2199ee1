"""Super-resolution inference on CPU: mtp's HAT-S, HAT and IMDN against spandrel's implementations of the
same architectures with the same weights, and HAT-S on a large image through the tiled SR pipeline.

    bash scripts/bench_env.sh python benchmarks/sr_bench.py                    # every case
    bash scripts/bench_env.sh python benchmarks/sr_bench.py --cases hat_s imdn --rounds 3 --runs 3
    bash scripts/bench_env.sh python benchmarks/sr_bench.py --cases tiled --tiled-size 512
    bash scripts/bench_env.sh python benchmarks/sr_bench.py --cases memory     # tile-memory calibration
    ... --baseline DIR    also time DIR/backbones/{hat,imdn}.py, e.g. an older commit exported with
                          `git archive COMMIT backbones | tar -x -C DIR`

Runs in the environment of scripts/bench_env.sh (spandrel needs torchvision, which needs the registry's
torch). Float32, `torch.set_num_threads(--threads)`, `torch.inference_mode()`.

Prints one JSON line per case. Model cases (x4): HAT-S and HAT on a 64x64 input with random weights of the
official shapes (O(1) scale, so every branch matters), IMDN on 256x256 with the official IMDN_x4.pth. The
same state dict is loaded into every implementation and the outputs are compared first (max abs diff).
Each (case, implementation) is then timed in its own subprocess, so its peak RSS (ru_maxrss, which
includes the interpreter and libraries; `setup_rss_mb` is the RSS before the first forward) is its own;
the implementations alternate over `--rounds` subprocesses each, so a machine shared with other jobs
slows them alike. `ms` is the median over all timed runs after one warm-up run per subprocess.

The tiled case runs HAT-S x4 on a --tiled-size square RGB image through mtp's SuperResolutionPipeline
with tile="auto" (the tile side comes from the pipeline's memory budget) and reports wall time, the tile
side and the process's peak RSS, which must stay under --rss-limit-gb.

The memory case calibrates the tile-size rule: for each model it measures the peak RSS rise of one
forward on two input sizes (fresh processes), takes the slope in bytes per input pixel and checks that the
pipeline's estimate (_bytes_per_input_pixel) is at least that.

Child processes get OMP_WAIT_POLICY=PASSIVE unless it is set: on a machine with more busy threads than
cores, OpenMP's default spin-waiting makes 2-thread runs several times slower and the timings erratic.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = Path(os.environ.get("MTP_WEIGHTS_DIR", ROOT.parent / "shared" / "weights"))
MODEL_CASES = {
    # our module and class, HAT_VARIANTS key, input side, weights ("random" or a file under MTP_WEIGHTS_DIR)
    "hat_s": dict(module="hat", cls="HAT", variant="hat_s", side=64, weights="random"),
    "hat": dict(module="hat", cls="HAT", variant="hat", side=64, weights="random"),
    "imdn": dict(module="imdn", cls="IMDN", variant=None, side=256, weights="imdn/IMDN_x4.pth"),
}
SCALE = 4
MEMORY_SIDES = {"hat_s": (192, 320), "hat": (192, 320), "imdn": (256, 512)}  # input sides for the slope
TOLERANCE = 1e-5  # max abs diff allowed, times max(1, max abs output): the HAT fixtures' rule


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


# ---------------------------------------------------------------------------------------------- weights
def random_official_state(variant: str, seed: int = 0) -> dict:
    """HAT weights of the official shapes at O(1) scale: the default init (Linear std 0.02, zero biases,
    unit LayerNorms) leaves several branches almost invisible, so an implementation difference could hide."""
    from mtp.backbones.hat import HAT, HAT_VARIANTS

    model = HAT(**HAT_VARIANTS[variant], upscale=SCALE)
    generator = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            continue  # the index buffers
        noise = torch.randn(tensor.shape, generator=generator)
        if "relative_position_bias_table" in key:
            tensor.copy_(noise)
        elif tensor.dim() > 1:  # linear / conv weights: unit gain per output
            tensor.copy_(noise / tensor[0].numel() ** 0.5)
        elif "norm" in key and key.endswith("weight"):
            tensor.copy_(1 + 0.2 * noise)
        else:
            tensor.copy_(0.2 * noise)
    return state


def prepare_weights(cases: list[str], folder: Path) -> dict[str, Path]:
    """One state-dict file per model case; every implementation loads this same file."""
    from mtp.weights import load_state_dict_file

    files = {}
    for case in cases:
        spec = MODEL_CASES[case]
        if spec["weights"] == "random":
            state = random_official_state(spec["variant"])
        else:
            source = WEIGHTS_DIR / spec["weights"]
            if not source.is_file():
                raise SystemExit(f"sr_bench: {case} needs {source} (set MTP_WEIGHTS_DIR to the folder holding "
                                 f"{spec['weights']})")
            state = load_state_dict_file(source)  # strips the official `module.` prefix
        files[case] = folder / f"{case}.pth"
        torch.save(dict(state), files[case])
    return files


# ---------------------------------------------------------------------------------------------- models
def build(case: str, impl: str, weights: Path, baseline: Path | None) -> torch.nn.Module:
    spec = MODEL_CASES[case]
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if impl == "spandrel":
        import spandrel

        model = spandrel.ModelLoader().load_from_state_dict(state).model
    else:
        if impl == "ours":
            module = importlib.import_module(f"mtp.backbones.{spec['module']}")
        else:  # the same file from another checkout
            path = baseline / "backbones" / f"{spec['module']}.py"
            loader_spec = importlib.util.spec_from_file_location(f"baseline_{spec['module']}", path)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        cls = getattr(module, spec["cls"])
        kwargs = dict(module.HAT_VARIANTS[spec["variant"]]) if spec["variant"] else {}
        model = cls(**kwargs, upscale=SCALE)
        model.load_state_dict(state, strict=True)
    own = model.state_dict()
    differing = [key for key, value in state.items() if key not in own or not torch.equal(own[key], value)]
    if differing or len(own) != len(state):
        raise SystemExit(f"sr_bench: {impl} {case} did not take the weights as given (e.g. {differing[:3]})")
    return model.eval()


def model_input(case: str) -> torch.Tensor:
    side = MODEL_CASES[case]["side"]
    return torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(1234))


def child_check(args) -> dict:
    """Outputs of every implementation on the same input, compared with ours."""
    x = model_input(args.case)
    outputs, errors = {}, {}
    for impl in args.impls:
        try:
            model = build(args.case, impl, args.weights, args.baseline)
        except Exception as err:  # e.g. spandrel has no such architecture
            errors[impl] = f"{type(err).__name__}: {err}".rstrip(": ")[:300]
            continue
        with torch.inference_mode():
            outputs[impl] = model(x)
    if "ours" not in outputs:
        raise SystemExit(f"sr_bench: our {args.case} failed to build: {errors.get('ours')}")
    reference = outputs["ours"]
    scale = max(1.0, reference.abs().max().item())
    diffs = {impl: (out - reference).abs().max().item() for impl, out in outputs.items() if impl != "ours"}
    return {"max_abs_diff": diffs, "output_max_abs": reference.abs().max().item(),
            "equal": all(diff <= TOLERANCE * scale for diff in diffs.values()), "unavailable": errors,
            "output_shape": list(reference.shape)}


def child_time(args) -> dict:
    model = build(args.case, args.impl, args.weights, args.baseline)
    x = model_input(args.case)
    setup_rss = current_rss_mb()
    times = []
    with torch.inference_mode():
        model(x)  # warm-up: oneDNN primitive caches, allocator
        for _ in range(args.runs):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return {"ms": [round(t * 1e3, 1) for t in times], "setup_rss_mb": round(setup_rss, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def child_memory(args) -> dict:
    model = build(args.case, "ours", args.weights, None)
    x = torch.rand(1, 3, args.side, args.side, generator=torch.Generator().manual_seed(1234))
    setup_rss = current_rss_mb()
    with torch.inference_mode():
        model(x)
    return {"setup_rss_mb": round(setup_rss, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}


def child_tiled(args) -> dict:
    import cv2
    import numpy as np

    from mtp.pipeline import Pipeline

    options = {} if args.max_memory is None else {"max_memory": args.max_memory}
    pipe = Pipeline("super_resolution", weights=str(args.weights), device="cpu", **options)
    with tempfile.TemporaryDirectory() as folder:
        # file to file, as `mtp predict` runs: decode, tiles, blend, 8-bit PNG written atomically
        source, out_dir = Path(folder) / "in" / "big.png", Path(folder) / "out"
        source.parent.mkdir()
        image = np.random.default_rng(0).integers(0, 256, (args.tiled_size, args.tiled_size, 3), dtype=np.uint8)
        cv2.imwrite(str(source), image)
        del image
        setup_rss = current_rss_mb()
        start = time.perf_counter()
        report = pipe(str(source.parent), output=str(out_dir), progress=False)
        seconds = time.perf_counter() - start
        if not report.ok or len(report.written) != 1:
            raise SystemExit(f"sr_bench: tiled run failed: {report}")
        written = cv2.imread(str(report.written[0]), cv2.IMREAD_UNCHANGED)
    expected = (args.tiled_size * SCALE, args.tiled_size * SCALE, 3)
    if written.shape != expected:
        raise SystemExit(f"sr_bench: tiled output is {written.shape}, expected {expected}")
    return {"seconds": round(seconds, 1), "tile": pipe.tile_size(args.tiled_size, args.tiled_size),
            "tile_overlap": pipe.config["tile_overlap"], "budget_bytes": args.max_memory,
            "setup_rss_mb": round(setup_rss, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}


# ---------------------------------------------------------------------------------------------- parent
def run_child(args, mode: str, **extra) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--threads", str(args.threads)]
    for key, value in extra.items():
        if value is None:
            continue
        command += [f"--{key.replace('_', '-')}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"sr_bench: {mode} child failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_model(args, case: str, weights: Path) -> dict:
    impls = ["ours", "spandrel"] + (["baseline"] if args.baseline else [])
    load_before = load_average()
    check = run_child(args, "check", case=case, weights=weights, impls=impls, baseline=args.baseline)
    timed = [impl for impl in impls if impl not in check["unavailable"]]
    runs = {impl: [] for impl in timed}
    for round_index in range(args.rounds):
        order = timed if round_index % 2 == 0 else timed[::-1]
        for impl in order:
            runs[impl].append(run_child(args, "time", case=case, impl=impl, weights=weights, runs=args.runs,
                                        baseline=args.baseline))
    result = {"case": case, "scale": SCALE, "input": [1, 3, MODEL_CASES[case]["side"], MODEL_CASES[case]["side"]],
              "threads": args.threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
              "load_avg_before": load_before, "load_avg_after": load_average(), **check}
    for impl, children in runs.items():
        all_ms = [ms for child in children for ms in child["ms"]]
        result[impl] = {"ms": round(statistics.median(all_ms), 1), "ms_runs": all_ms,
                        "peak_rss_mb": max(child["peak_rss_mb"] for child in children),
                        "setup_rss_mb": max(child["setup_rss_mb"] for child in children)}
    if "spandrel" in runs:
        result["speedup_vs_spandrel"] = round(result["spandrel"]["ms"] / result["ours"]["ms"], 2)
    if "baseline" in runs:
        result["speedup_vs_baseline"] = round(result["baseline"]["ms"] / result["ours"]["ms"], 2)
    return result


def bench_memory(args, case: str, weights: Path) -> dict:
    from mtp.pipelines.image_restoration.pipeline import _bytes_per_input_pixel

    sides = MEMORY_SIDES[case]
    children = [run_child(args, "memory", case=case, weights=weights, side=side) for side in sides]
    rises = [round(child["peak_rss_mb"] - child["setup_rss_mb"], 1) for child in children]
    slope = (rises[1] - rises[0]) * 2 ** 20 / (sides[1] ** 2 - sides[0] ** 2)
    estimate = _bytes_per_input_pixel(build(case, "ours", weights, None))
    return {"case": f"memory_{case}", "scale": SCALE, "sides": list(sides), "activation_mb": rises,
            "measured_bytes_per_input_pixel": round(slope), "pipeline_estimate": round(estimate),
            "estimate_covers": estimate >= slope}


def bench_tiled(args, weights: Path) -> dict:
    load_before = load_average()
    child = run_child(args, "tiled", weights=weights, tiled_size=args.tiled_size, max_memory=args.max_memory)
    return {"case": "tiled_hat_s", "scale": SCALE, "input": [args.tiled_size, args.tiled_size, 3],
            "threads": args.threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
            "load_avg_before": load_before, "load_avg_after": load_average(), **child,
            "rss_limit_mb": args.rss_limit_gb * 1024, "under_limit": child["peak_rss_mb"] < args.rss_limit_gb * 1024}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=[*MODEL_CASES, "memory", "tiled"],
                        default=[*MODEL_CASES, "memory", "tiled"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="subprocesses per implementation, alternating")
    parser.add_argument("--runs", type=int, default=3, help="timed forwards per subprocess, after one warm-up")
    parser.add_argument("--baseline", type=Path, default=None, help="a checkout whose backbones/ to time too")
    parser.add_argument("--tiled-size", type=int, default=2048)
    parser.add_argument("--max-memory", type=float, default=None,
                        help="the pipeline's max_memory (bytes) for the tiled case; default: its own default")
    parser.add_argument("--rss-limit-gb", type=float, default=3.0)
    # internal: one measurement in a fresh process
    parser.add_argument("--child", choices=["check", "time", "memory", "tiled"], help=argparse.SUPPRESS)
    parser.add_argument("--side", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--impls", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline is not None and not (args.baseline / "backbones").is_dir():
        parser.error(f"--baseline {args.baseline}: no backbones/ folder there")
    torch.set_num_threads(args.threads)

    if args.child:
        children = {"check": child_check, "time": child_time, "memory": child_memory, "tiled": child_tiled}
        print(json.dumps(children[args.child](args)))
        return 0

    failed = False
    with tempfile.TemporaryDirectory(prefix="sr_bench_") as folder:
        model_cases = [case for case in args.cases if case in MODEL_CASES]
        needed = set(model_cases) | (set(MEMORY_SIDES) if "memory" in args.cases else set())
        weights = prepare_weights(sorted(needed | ({"hat_s"} if "tiled" in args.cases else set())), Path(folder))
        for case in model_cases:
            result = bench_model(args, case, weights[case])
            failed |= not result["equal"]
            print(json.dumps(result), flush=True)
        if "memory" in args.cases:
            for case in MEMORY_SIDES:
                result = bench_memory(args, case, weights[case])
                failed |= not result["estimate_covers"]
                print(json.dumps(result), flush=True)
        if "tiled" in args.cases:
            result = bench_tiled(args, weights["hat_s"])
            failed |= not result["under_limit"]
            print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
