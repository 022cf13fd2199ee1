"""mtp against neuralforecast on ETTh1-96: iTransformer, DLinear and PatchTST, same data, same settings.

    bash scripts/forecast_peer_env.sh python benchmarks/forecast_peers.py                 # all 6 cases
    bash scripts/forecast_peer_env.sh python benchmarks/forecast_peers.py --models dlinear --impl mtp --epochs 1

Every case (model x implementation) trains and tests in a fresh child interpreter with 2 torch threads
(torch.set_num_threads and OMP/MKL_NUM_THREADS), on the CPU; its peak RSS is that child's ru_maxrss (os.wait4).
Both implementations run in the same venv (scripts/forecast_peer_env.sh), so with the same torch build.
One JSON line per case, then one ratio line per model (mtp / neuralforecast: epoch time, total, peak RSS).

Fields: train_epoch_s = median seconds of an epoch's training steps (validation excluded; every epoch's in
train_epochs_s), epoch_with_val_s =
median with the validation pass, fit_s / eval_s = training / test-prediction seconds, total_s = wall seconds of
the child process (interpreter start, imports, data, fit, test), test_mse / test_mae on the z-scored scale over
every test window, windows = stride-1 windows per split, cpu_s = the child's user + system CPU seconds,
loadavg_before/after = os.getloadavg() around the child. The timings are only meaningful on an otherwise idle
machine: with another multi-threaded job on the same cores, torch's threads contend and epochs take several
times longer (read the load averages). For the peer, train and val windows are those its settings select
(complete windows inside each split); its test windows are counted from its output (distinct cutoffs).

Ours: `mtp.engine.run(load_recipe(...))` on recipes/forecasting/ett_{itransformer,dlinear,patchtst}.yaml with
train.threads=2 and a Lightning epoch timer added to the engine's callbacks (as benchmarks/forecast_bench.py).

The peer: neuralforecast's iTransformer, DLinear and PatchTST built from the same recipe values:
* data: ETTh1 rows [0, 14400) (thuml's train [0, 8640), val [8640, 11520), test [11520, 14400)), every variate
  z-scored here with the train rows' mean and population std, as mtp does; long format (unique_id = column,
  ds = timestamp, y); NeuralForecast(freq="h", local_scaler_type=None) and the models' scaler_type="identity",
  so the models see exactly the values ours sees and predict on that scale.
* evaluation: NeuralForecast.cross_validation(df, n_windows=None, val_size=2880, test_size=2880, step_size=1,
  refit=False): one fit on the rows before the last 5760 with validation on the next 2880 (windows whose
  input reaches 96 rows back into train, as thuml's val border 8640-96), then a forecast from every cutoff
  of the last 2880 rows: (2880 - 96) / 1 + 1 = 2785 test windows, thuml's test windows exactly. MSE/MAE are
  the mean over all (window, step, variate) cells of its output, as ours averages over every test window.
* training windows: training_data_availability_threshold=[1.0, 1.0], so only complete windows inside the
  train rows are used (8640 - 192 + 1 = 8449 per series, as thuml); by default neuralforecast would also
  train on windows running into zero padding after the train end.
* epochs -> steps: neuralforecast counts optimiser steps (one Lightning "epoch" of it is one step). Ours
  has floor(8449 / 32) = 264 steps an epoch (drop_last), so max_steps = epochs * 264, val_check_steps = 264
  (one validation per epoch), early_stop_patience_steps = patience (counted in validations, i.e. epochs),
  and the learning rate is halved as thuml's type1 does per epoch (lr0 for epochs 1 and 2, then x0.5 per
  epoch) by a LambdaLR stepped per step: 0.5 ** max(0, step // 264 - 1).
* batch: iTransformer is multivariate in neuralforecast: windows_batch_size=32 windows of all 7 series,
  as ours. DLinear and PatchTST are univariate there (one window = one series): ours is channel-independent
  and sees 32 x 7 = 224 single-series windows a step, so windows_batch_size=224 (59143 / 224 = 264 steps an
  epoch again). Evaluation batches alike: 256 windows (x 7 for the univariate ones).
* loss MSE for training and validation (neuralforecast's default is MAE), Adam, the recipe's lr and seed.

Deviations that remain (also in each JSON line's "notes"):
* neuralforecast draws each step's windows at random (a fresh permutation per step, keeping the first
  windows_batch_size), so within an "epoch" some windows come twice and others not at all; ours takes one
  permutation per epoch. For the univariate models its batches mix series at different times; ours groups
  the 7 variates of one time window.
* after early stopping neuralforecast tests the last weights (it keeps no checkpoint); ours tests the best
  validation epoch's. Ours writes last/best checkpoints every epoch; neuralforecast writes none.
* neuralforecast runs Lightning's sanity validation before training (its one validation batch holds every
  series, so that is a whole validation pass); ours skips it. It counts in fit_s and total_s, not per epoch.
* iTransformer: ours (thuml) adds the 4 hourly time features as extra variate tokens; neuralforecast's has
  no such input (its future-exogenous tokens span look-back + horizon), so it gets the 7 series only.
* DLinear: ours initialises both linear maps to 1/seq_len (Time-Series-Library); neuralforecast uses
  PyTorch's default init.
* PatchTST: ours is Time-Series-Library's variant (LayerNorm in each encoder layer, BatchNorm at the end,
  fixed sinusoidal positions); neuralforecast's is the original authors' backbone (BatchNorm in each layer,
  learnt positions). Set to match where exposed: 1 layer, 2 heads, d_model 512, d_ff 2048, dropout 0.1
  (attention and head dropout too), patch 16 / stride 8, RevIN subtracting the mean without affine (as
  ours normalises each window), res_attention off, gelu.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("itransformer", "dlinear", "patchtst")
IMPLS = ("mtp", "neuralforecast")
THREADS = 2
# thuml's ETTh1 borders (12 / 4 / 4 months of 30 days, hourly).
TRAIN_END, VAL_END, TEST_END = 8640, 11520, 14400

COMMON_NOTES = [
    "neuralforecast samples each step's windows at random (no per-epoch permutation); epochs converted to "
    "max_steps = epochs * floor(train_windows / batch_size)",
    "neuralforecast tests its last weights after early stopping (no checkpoint); mtp tests the best "
    "validation epoch and writes last/best checkpoints each epoch",
    "neuralforecast runs Lightning's sanity validation (a whole validation pass) before training; mtp does not",
]
MODEL_NOTES = {
    "itransformer": ["mtp (thuml) feeds the 4 hourly time features as extra variate tokens; neuralforecast's "
                     "iTransformer gets the 7 series only"],
    "dlinear": ["neuralforecast is univariate per series: 224 = 32 x 7 single-series windows a step",
                "mtp initialises the linear maps to 1/seq_len (Time-Series-Library); neuralforecast uses "
                "PyTorch's default init"],
    "patchtst": ["neuralforecast is univariate per series: 224 = 32 x 7 single-series windows a step",
                 "neuralforecast's PatchTST is the original backbone (BatchNorm in each layer, learnt positions); "
                 "mtp's is Time-Series-Library's (LayerNorm per layer, final BatchNorm, sinusoidal positions)"],
}


def recipe_path(model: str) -> Path:
    return REPO / "recipes" / "forecasting" / f"ett_{model}.yaml"


def recipe_settings(model: str) -> dict:
    """The recipe's values the peer must copy; refuse a recipe this benchmark cannot mirror."""
    from mtp.config import load_recipe

    recipe = load_recipe(recipe_path(model))
    data, train = recipe.data.kwargs, recipe.train
    wanted = {"data.name": (recipe.data.name, "ETTh1"), "data.features": (data.get("features", "M"), "M"),
              "train.optimizer": (train.optimizer, "adam"), "train.scheduler": (train.scheduler, "halve_per_epoch"),
              # The peer gets torch's Adam defaults and no clipping, EMA or mixed precision.
              "train.betas": (list(train.betas), [0.9, 0.999]), "train.weight_decay": (train.weight_decay, 0.0),
              "train.grad_clip": (train.grad_clip, None), "train.ema_decay": (train.ema_decay, None),
              "train.precision": (train.precision, "32-true")}
    for key, (value, expected) in wanted.items():
        if value != expected:
            raise SystemExit(f"forecast_peers: {recipe_path(model).name}: {key} is {value!r}; this benchmark "
                             f"mirrors only {expected!r}")
    return {"backbone": dict(recipe.backbone.kwargs), "seq_len": int(data.get("seq_len", 96)),
            "pred_len": int(data.get("pred_len", 96)), "epochs": int(train.epochs), "batch_size": int(train.batch_size),
            "lr": float(train.lr), "patience": int(train.patience), "seed": int(train.seed),
            "eval_batch_size": int(recipe.eval.batch_size)}


def _summary(values: list[float]):
    return round(statistics.median(values), 3) if values else None


# --------------------------------------------------------------------------------------------------
# Child: ours
# --------------------------------------------------------------------------------------------------

def run_mtp(spec: dict) -> dict:
    import lightning as L

    from mtp import engine
    from mtp.config import load_recipe

    class EpochTimer(L.Callback):
        """Training part of each epoch (up to its validation) and the whole epoch, as forecast_bench.py."""

        def __init__(self):
            self.train, self.with_val, self.val_losses, self.windows = [], [], [], {}
            self._start = self._fit_start = None
            self.fit_s = None

        def on_fit_start(self, trainer, module):
            self._fit_start = time.perf_counter()

        def on_train_start(self, trainer, module):
            self.windows = {"train": len(trainer.train_dataloader.dataset),
                            "val": len(trainer.val_dataloaders.dataset) if trainer.val_dataloaders else 0}
            self.steps_per_epoch = trainer.num_training_batches

        def on_train_epoch_start(self, trainer, module):
            self._start = time.perf_counter()

        def on_validation_epoch_start(self, trainer, module):
            if self._start is not None and len(self.train) == len(self.with_val):
                self.train.append(time.perf_counter() - self._start)

        def on_validation_epoch_end(self, trainer, module):
            if "val_loss" in trainer.callback_metrics:
                self.val_losses.append(round(float(trainer.callback_metrics["val_loss"]), 5))

        def on_train_epoch_end(self, trainer, module):
            if len(self.train) == len(self.with_val):   # no validation this epoch
                self.train.append(time.perf_counter() - self._start)
            self.with_val.append(time.perf_counter() - self._start)

        def on_fit_end(self, trainer, module):
            self.fit_s = time.perf_counter() - self._fit_start

    if not hasattr(engine, "_callbacks"):
        raise RuntimeError("mtp.engine has no _callbacks(): the epoch timer cannot be attached; update this benchmark")
    timer = EpochTimer()
    build_callbacks = engine._callbacks
    engine._callbacks = lambda *args, **kwargs: [*build_callbacks(*args, **kwargs), timer]
    overrides = [f"train.threads={THREADS}", f"output.dir={spec['scratch']}", "output.plots=false",
                 f"train.epochs={spec['epochs']}"]
    result = engine.run(load_recipe(spec["recipe"], overrides), overwrite=True, progress=False)
    return {"train_epochs": timer.train, "epochs_with_val": timer.with_val, "val_losses": timer.val_losses,
            "fit_s": result["fit_seconds"], "eval_s": result["eval_seconds"],
            "test_mse": result["metrics"]["mse"], "test_mae": result["metrics"]["mae"],
            "windows": timer.windows, "steps_per_epoch": timer.steps_per_epoch}


# --------------------------------------------------------------------------------------------------
# Child: neuralforecast
# --------------------------------------------------------------------------------------------------

def _type1_lr(step: int, steps_per_epoch: int) -> float:
    """thuml's type1 (lr0 for epochs 1-2, then halved per epoch) as a per-step LambdaLR factor."""
    return 0.5 ** max(0, step // steps_per_epoch - 1)


def etth1_long():
    """ETTh1 rows [0, 14400) z-scored with the train rows' statistics, in neuralforecast's long format."""
    import numpy as np
    import pandas as pd

    from mtp.datasets.forecasting import resolve_dataset   # only to find the same CSV file as mtp

    frame = pd.read_csv(resolve_dataset("ETTh1", download=False), parse_dates=["date"])
    if len(frame) < TEST_END:
        raise ValueError(f"ETTh1 has {len(frame)} rows; the thuml protocol needs {TEST_END}")
    frame = frame.iloc[:TEST_END]
    columns = [c for c in frame.columns if c != "date"]
    values = frame[columns].to_numpy(np.float64)
    mean, std = values[:TRAIN_END].mean(axis=0), values[:TRAIN_END].std(axis=0)   # population std, as thuml
    scaled = (values - mean) / np.where(std == 0, 1.0, std)
    long = pd.DataFrame({"unique_id": np.repeat(columns, len(frame)),
                         "ds": np.tile(frame["date"].to_numpy(), len(columns)),
                         "y": scaled.T.reshape(-1)})
    return long, columns, mean, std


def run_neuralforecast(spec: dict) -> dict:
    import numpy as np
    import pytorch_lightning as pl
    import torch
    from neuralforecast import NeuralForecast
    from neuralforecast.losses.pytorch import MSE
    from neuralforecast.models import DLinear, PatchTST, iTransformer

    torch.set_num_threads(THREADS)
    s = spec["settings"]
    seq_len, pred_len, batch = s["seq_len"], s["pred_len"], s["batch_size"]
    long, columns, mean, std = etth1_long()
    n_series = len(columns)
    train_windows = TRAIN_END - seq_len - pred_len + 1
    steps_per_epoch = train_windows // batch                      # ours drops the last partial batch
    # Univariate models see one series per window: the same data per step as ours is batch x n_series windows.
    per_step = batch if spec["model"] == "itransformer" else batch * n_series
    eval_windows = s["eval_batch_size"] if spec["model"] == "itransformer" else s["eval_batch_size"] * n_series

    class StepTimer(pl.Callback):
        """neuralforecast validates every `steps_per_epoch` steps: time the steps between validations."""

        def __init__(self):
            self.train, self.with_val, self.val_losses = [], [], []
            self._mark = self._fit_start = self.fit_s = self._predict_start = self.predict_s = None

        def on_fit_start(self, trainer, module):
            self._fit_start = time.perf_counter()

        def on_train_start(self, trainer, module):     # after the sanity validation
            self._mark = time.perf_counter()

        def on_validation_start(self, trainer, module):
            if not trainer.sanity_checking and self._mark is not None:
                self.train.append(time.perf_counter() - self._mark)

        def on_validation_end(self, trainer, module):
            if not trainer.sanity_checking and self._mark is not None:
                now = time.perf_counter()
                self.with_val.append(now - self._mark)
                self._mark = now
                if "ptl/val_loss" in trainer.callback_metrics:
                    self.val_losses.append(round(float(trainer.callback_metrics["ptl/val_loss"]), 5))

        def on_fit_end(self, trainer, module):
            self.fit_s = time.perf_counter() - self._fit_start

        def on_predict_start(self, trainer, module):
            self._predict_start = time.perf_counter()

        def on_predict_end(self, trainer, module):
            self.predict_s = time.perf_counter() - self._predict_start

    timer = StepTimer()
    common = dict(
        h=pred_len, input_size=seq_len, loss=MSE(), valid_loss=MSE(), learning_rate=s["lr"],
        max_steps=spec["epochs"] * steps_per_epoch, val_check_steps=steps_per_epoch,
        early_stop_patience_steps=s["patience"] if s["patience"] else -1,
        batch_size=n_series, valid_batch_size=n_series,             # series per loader batch: all 7
        windows_batch_size=per_step, inference_windows_batch_size=eval_windows,
        training_data_availability_threshold=[1.0, 1.0], scaler_type="identity", random_seed=s["seed"],
        lr_scheduler=torch.optim.lr_scheduler.LambdaLR,
        lr_scheduler_kwargs={"lr_lambda": functools.partial(_type1_lr, steps_per_epoch=steps_per_epoch)},
        accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    kw = s["backbone"]
    if spec["model"] == "itransformer":
        if kw.get("activation", "gelu") != "gelu":
            raise ValueError("neuralforecast's iTransformer always uses gelu")
        model = iTransformer(n_series=n_series, hidden_size=kw["d_model"], n_heads=kw["n_heads"],
                             e_layers=kw["e_layers"], d_ff=kw["d_ff"], dropout=kw["dropout"],
                             use_norm=kw.get("use_norm", True), **common)
    elif spec["model"] == "dlinear":
        if kw.get("individual"):
            raise ValueError("neuralforecast's DLinear has no per-channel (individual) maps")
        model = DLinear(moving_avg_window=kw["moving_avg"], **common)
    else:
        model = PatchTST(encoder_layers=kw["e_layers"], n_heads=kw["n_heads"], hidden_size=kw["d_model"],
                         linear_hidden_size=kw["d_ff"], dropout=kw["dropout"], attn_dropout=kw["dropout"],
                         head_dropout=kw["dropout"], patch_len=kw["patch_len"], stride=kw["stride"],
                         revin=True, revin_affine=False, revin_subtract_last=False,
                         activation=kw.get("activation", "gelu"), res_attention=False, **common)
    nf = NeuralForecast(models=[model], freq="h", local_scaler_type=None)
    cv = nf.cross_validation(df=long, n_windows=None, val_size=VAL_END - TRAIN_END, test_size=TEST_END - VAL_END,
                             step_size=1, refit=False)
    err = cv["y"].to_numpy(np.float64) - cv[str(model)].to_numpy(np.float64)
    fitted = nf.models[0]
    # NeuralForecast trains a deep copy of the model, callbacks included: read the copy's timer.
    timer = next(cb for cb in fitted.trainer_kwargs["callbacks"] if isinstance(cb, StepTimer))
    return {"train_epochs": timer.train, "epochs_with_val": timer.with_val,
            "val_losses": timer.val_losses,
            "fit_s": round(timer.fit_s, 2), "eval_s": round(timer.predict_s, 2),
            "test_mse": float(np.mean(err ** 2)), "test_mae": float(np.mean(np.abs(err))),
            "windows": {"train": train_windows, "val": VAL_END - TRAIN_END - pred_len + 1,
                        "test": int(cv["cutoff"].nunique())},
            "steps_per_epoch": steps_per_epoch, "max_steps": spec["epochs"] * steps_per_epoch,
            "steps_run": int(fitted.train_trajectories[-1][0]) + 1 if fitted.train_trajectories else 0,
            "cells_scored": int(err.size), "scaler": {"mean": mean.tolist(), "std": std.tolist()}}


# --------------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------------

def reference_split(seq_len: int, pred_len: int) -> dict:
    """mtp's own split of ETTh1: window counts and scaler, to check the peer's data against."""
    from mtp.datasets.forecasting import make_splits

    splits = make_splits("ETTh1", seq_len=seq_len, pred_len=pred_len, download=False)
    return {"windows": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
            "mean": splits.scaler.mean_.tolist(), "std": splits.scaler.scale_.tolist()}


def run_case(model: str, impl: str, epochs: int, settings: dict, scratch: Path) -> dict:
    """One case in a fresh interpreter; its wall time and its own peak RSS (wait4 rusage)."""
    case_dir = scratch / f"{model}-{impl}"
    case_dir.mkdir()
    spec = {"model": model, "impl": impl, "epochs": epochs, "recipe": str(recipe_path(model)),
            "settings": settings, "scratch": str(case_dir / "runs")}
    spec_path, out_path, log_path = case_dir / "spec.json", case_dir / "result.json", case_dir / "log.txt"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    load_before = os.getloadavg()
    started = time.perf_counter()
    with open(log_path, "w") as log:
        # cwd in the scratch folder: Lightning's default logger (neuralforecast) writes lightning_logs/ there.
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path),
                                 str(out_path)], env=env, cwd=case_dir, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    load_after = os.getloadavg()
    if proc.returncode != 0 or not out_path.is_file():
        tail = log_path.read_text()[-6000:]
        raise RuntimeError(f"{model}/{impl}: the child failed (exit {proc.returncode}); its output ends:\n{tail}")
    result = json.loads(out_path.read_text())
    result.update(total_s=round(wall, 2), peak_rss_mib=round(usage.ru_maxrss / 1024, 1),   # Linux: KiB
                  cpu_s=round(usage.ru_utime + usage.ru_stime, 1),
                  loadavg_before=[round(x, 2) for x in load_before], loadavg_after=[round(x, 2) for x in load_after])
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--impl", default=",".join(IMPLS), help=f"comma-separated subset of {','.join(IMPLS)}")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipes' epochs (quick runs)")
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(Path(args.worker[0]).read_text())
        result = (run_mtp if spec["impl"] == "mtp" else run_neuralforecast)(spec)
        Path(args.worker[1]).write_text(json.dumps(result))
        return 0

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    impls = [i.strip() for i in args.impl.split(",") if i.strip()]
    for name, chosen, valid in (("--models", models, MODELS), ("--impl", impls, IMPLS)):
        bad = [c for c in chosen if c not in valid]
        if bad or not chosen:
            parser.error(f"{name}: {', '.join(bad) or 'nothing chosen'}; valid: {', '.join(valid)}")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs: expected 1 or more")
    if "MTP_DATA_DIR" not in os.environ and (REPO.parent / "shared" / "data").is_dir():
        os.environ["MTP_DATA_DIR"] = str(REPO.parent / "shared" / "data")
    try:
        import neuralforecast
        import torch
    except ImportError as err:
        print(f"forecast_peers: {err}; run it in its environment: bash scripts/forecast_peer_env.sh python "
              f"benchmarks/forecast_peers.py", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="forecast_peers_") as scratch:
        for model in models:
            settings = recipe_settings(model)
            epochs = args.epochs or settings["epochs"]
            reference = reference_split(settings["seq_len"], settings["pred_len"])
            lines = {}
            for impl in impls:
                r = run_case(model, impl, epochs, settings, Path(scratch))
                # Ours reports what its Trainer saw (train, val); its test split is mtp's, the reference's.
                r["windows"] = {**reference["windows"], **r["windows"]}
                if r["windows"] != reference["windows"]:
                    raise RuntimeError(f"{model}/{impl}: windows {r['windows']} differ from mtp's split "
                                       f"{reference['windows']}")
                scaler = r.pop("scaler", None)
                if scaler and max(abs(a - b) for a, b in zip(scaler["mean"] + scaler["std"],
                                                              reference["mean"] + reference["std"])) > 1e-9:
                    raise RuntimeError(f"{model}/{impl}: its z-score statistics differ from mtp's")
                line = {"bench": "forecast_peers", "model": model, "impl": impl, "dataset": "ETTh1",
                        "seq_len": settings["seq_len"], "pred_len": settings["pred_len"],
                        "epochs": len(r["train_epochs"]), "epochs_max": epochs, "threads": THREADS,
                        "train_epoch_s": _summary(r["train_epochs"]),
                        "epoch_with_val_s": _summary(r["epochs_with_val"]),
                        "train_epochs_s": [round(t, 2) for t in r["train_epochs"]],   # each epoch: shows contention
                        "fit_s": r["fit_s"], "eval_s": r["eval_s"], "total_s": r["total_s"], "cpu_s": r["cpu_s"],
                        "peak_rss_mib": r["peak_rss_mib"],
                        "test_mse": round(r["test_mse"], 4), "test_mae": round(r["test_mae"], 4),
                        "val_losses": r["val_losses"], "windows": r["windows"],
                        "steps_per_epoch": r["steps_per_epoch"],
                        **({"max_steps": r["max_steps"], "steps_run": r["steps_run"]} if "max_steps" in r else {}),
                        "loadavg_before": r["loadavg_before"], "loadavg_after": r["loadavg_after"],
                        "torch": torch.__version__, "neuralforecast": neuralforecast.__version__,
                        "notes": COMMON_NOTES + MODEL_NOTES[model] if impl == "neuralforecast" else []}
                lines[impl] = line
                print(json.dumps(line), flush=True)
            if len(lines) == 2:
                ours, peer = lines["mtp"], lines["neuralforecast"]

                def ratio(key):
                    return round(ours[key] / peer[key], 3) if ours[key] and peer[key] else None

                print(json.dumps({"bench": "forecast_peers", "model": model, "ratio": "mtp / neuralforecast",
                                  "train_epoch": ratio("train_epoch_s"), "epoch_with_val": ratio("epoch_with_val_s"),
                                  "total": ratio("total_s"), "peak_rss": ratio("peak_rss_mib"),
                                  "test_mse": [ours["test_mse"], peer["test_mse"]],
                                  "epochs": [ours["epochs"], peer["epochs"]]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
