"""Forecasting training cost: `mtp run` on the ETTh1-96 iTransformer recipe, timed epoch by epoch.

    python benchmarks/forecast_bench.py                                  # recipes/forecasting/ett_itransformer.yaml, 2 threads
    python benchmarks/forecast_bench.py --recipe recipes/forecasting/ett_dlinear.yaml --threads 1 train.epochs=2

Prints one JSON line: seconds per training epoch (train batches only) and per epoch with its
validation pass, fit / engine-total / process wall seconds, peak RSS of the run, the test MSE/MAE, the
load average before and after, and the ratios to the official thuml/iTransformer code measured on
this machine class. The run happens in a child process (a fresh interpreter, as a user's `mtp run`),
so its peak RSS is the child's ru_maxrss; the epoch timer is a Lightning callback added here, not
in the engine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "recipes" / "forecasting" / "ett_itransformer.yaml"

# thuml/iTransformer run.py with scripts/multivariate_forecasting/ETT/iTransformer_ETTh1.sh (96), CPU,
# 2 threads, this machine class. Its epochs also run a test pass, hence two per-epoch figures.
OFFICIAL = {"mse": 0.3858, "mae": 0.4045, "train_epoch_s": 11.0, "epoch_with_eval_s": 30.0,
            "total_s": 358.0, "peak_rss_mib": 818.0}


def _worker(recipe_path: str, overrides: list[str], times_path: str) -> None:
    """Run the recipe through the engine with an epoch timer attached; write the timings as JSON."""
    import lightning as L

    from mtp import engine
    from mtp.config import load_recipe

    class EpochTimer(L.Callback):
        def __init__(self):
            self.train, self.with_val, self._train_start = [], [], None

        def on_train_epoch_start(self, trainer, module):
            self._train_start = time.perf_counter()

        def on_validation_epoch_start(self, trainer, module):
            # Validation runs after the epoch's last training batch: the training part ends here.
            if self._train_start is not None and len(self.train) == len(self.with_val):
                self.train.append(time.perf_counter() - self._train_start)

        def on_train_epoch_end(self, trainer, module):
            if len(self.train) == len(self.with_val):   # no validation this epoch
                self.train.append(time.perf_counter() - self._train_start)
            self.with_val.append(time.perf_counter() - self._train_start)

    timer = EpochTimer()
    build_callbacks = engine._callbacks
    engine._callbacks = lambda *args, **kwargs: [*build_callbacks(*args, **kwargs), timer]
    result = engine.run(load_recipe(recipe_path, overrides), overwrite=True, progress=False)
    Path(times_path).write_text(json.dumps({"train": timer.train, "with_val": timer.with_val, "result": result}))


def _summary(values: list[float]) -> dict:
    if not values:
        return {"median": None, "mean": None, "first": None}
    return {"median": round(statistics.median(values), 3), "mean": round(statistics.fmean(values), 3),
            "first": round(values[0], 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="forecasting recipe (default: ETTh1-96)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (train.threads)")
    parser.add_argument("--out", default=None, help="run folder parent (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides KEY=VALUE, as for `mtp run`")
    parser.add_argument("--worker", nargs=2, metavar=("RECIPE", "TIMES_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        _worker(args.worker[0], args.overrides, args.worker[1])
        return 0
    if not Path(args.recipe).is_file():
        parser.error(f"--recipe {args.recipe}: no such file")
    if "MTP_DATA_DIR" not in os.environ and (REPO.parent / "shared" / "data").is_dir():
        os.environ["MTP_DATA_DIR"] = str(REPO.parent / "shared" / "data")

    with tempfile.TemporaryDirectory(prefix="forecast_bench_") as scratch:
        out = args.out or scratch
        times_path = Path(scratch) / "times.json"
        overrides = [*args.overrides, f"train.threads={args.threads}", f"output.dir={out}", "output.plots=false"]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        load_before = os.getloadavg()
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, *overrides, "--worker", args.recipe, str(times_path)],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        load_after = os.getloadavg()
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            print(f"forecast_bench: the run failed (exit {proc.returncode})", file=sys.stderr)
            return proc.returncode
        times = json.loads(times_path.read_text())

    result = times["result"]
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024   # Linux: KiB
    train_epoch, with_val = _summary(times["train"]), _summary(times["with_val"])
    report = {
        "recipe": Path(args.recipe).name, "overrides": args.overrides, "threads": args.threads,
        "epochs_run": len(times["train"]),
        "train_epoch_s": train_epoch, "epoch_with_val_s": with_val,
        "fit_s": result["fit_seconds"], "engine_total_s": result["total_seconds"],
        "process_wall_s": round(wall, 2), "peak_rss_mib": round(peak_mib, 1),
        "mse": round(result["metrics"]["mse"], 4), "mae": round(result["metrics"]["mae"], 4),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "official": OFFICIAL,
    }
    if Path(args.recipe).resolve() == DEFAULT_RECIPE.resolve() and train_epoch["median"]:
        report["ratio_to_official"] = {
            "train_epoch": round(train_epoch["median"] / OFFICIAL["train_epoch_s"], 3),
            "epoch_with_eval": round(with_val["median"] / OFFICIAL["epoch_with_eval_s"], 3),
            "total": round(wall / OFFICIAL["total_s"], 3),
            "peak_rss": round(peak_mib / OFFICIAL["peak_rss_mib"], 3),
        }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
