"""`mtp run`: the run folder, reproducibility, resume after a kill, and the CLI's handling of bad recipes."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "forecasting" / "ett_itransformer.yaml"
# A small iTransformer (with dropout, so the RNG matters) on ETTh1 with a short horizon.
TINY = ["backbone.kwargs.d_model=16", "backbone.kwargs.d_ff=16", "backbone.kwargs.n_heads=2",
        "data.kwargs.pred_len=24", "train.batch_size=64", "train.threads=1", "eval.batch_size=512"]


def _mtp(args, tmp_path, data_dir, **kwargs):
    env = {**os.environ, "MTP_DATA_DIR": str(data_dir)}
    cmd = [sys.executable, "-m", "mtp.cli", *args]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def _run(args, tmp_path, data_dir):
    proc = _mtp(args, tmp_path, data_dir)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def _metrics(tmp_path, name):
    return json.loads((tmp_path / "runs" / name / "metrics.json").read_text())["metrics"]


def test_run_folder_and_same_seed_same_numbers(tmp_path, data_dir):
    for name in ("a", "b"):
        code, out, err = _run(["run", str(RECIPE), *TINY, "train.epochs=2", f"output.name={name}", "--quiet"],
                              tmp_path, data_dir)
        assert code == 0, err
    run = tmp_path / "runs" / "a"
    for part in ("config.yaml", "metrics.json", "run.log", "model.safetensors", "model.json",
                 "forecast_test0.png", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "logs/metrics.csv"):
        assert (run / part).exists(), part
    assert "d_model: 16" in (run / "config.yaml").read_text()
    a, b = _metrics(tmp_path, "a"), _metrics(tmp_path, "b")
    assert a == b and a["samples"] == 2785 + 96 - 24  # every test window, none dropped
    assert 0 < a["mse"] < 1.5
    # `mtp eval` on the exported model goes through the same evaluation loop and gives the same figures.
    code, out, err = _run(["eval", "forecasting", "-w", str(run / "model.safetensors"), "-d", "ETTh1"],
                          tmp_path, data_dir)
    assert code == 0, err
    evaluated = json.loads(out)  # its own batch size: sums in another order
    assert evaluated == {k: pytest.approx(v, rel=1e-8) if isinstance(v, float) else v for k, v in a.items()}


def test_bf16_autocast_with_gradient_clipping_trains(tmp_path, data_dir):
    # a fused Adam cannot be clipped under Lightning's mixed precision: the engine must not fuse it then
    code, out, err = _run(["run", str(RECIPE), *TINY, "train.epochs=1", "train.precision=bf16-mixed",
                           "train.grad_clip=1.0", "output.name=bf16", "--quiet"], tmp_path, data_dir)
    assert code == 0, err[-3000:]
    assert 0 < _metrics(tmp_path, "bf16")["mse"] < 2.0


def test_validation_loss_is_the_mean_over_every_window(tmp_path, data_dir):
    # Early stopping compares these losses; with 2881 validation windows in batches of 512 the last batch
    # holds 321, and a mean of batch means would weigh it like the others.
    code, _, err = _run(["run", str(RECIPE), *TINY, "train.epochs=1", "eval.split=val", "output.plots=false",
                         "output.name=v", "--quiet"], tmp_path, data_dir)
    assert code == 0, err
    metrics = _metrics(tmp_path, "v")
    assert metrics["samples"] == 11520 - (8640 - 96) - 96 - 24 + 1
    with open(tmp_path / "runs" / "v" / "logs" / "metrics.csv", newline="") as f:
        logged = [float(row["val_loss"]) for row in csv.DictReader(f) if row["val_loss"]]
    assert len(logged) == 1
    assert abs(logged[0] - metrics["mse"]) < 2e-6 * metrics["mse"]


def test_resume_after_kill_gives_the_same_metrics(tmp_path, data_dir):
    args = ["run", str(RECIPE), *TINY, "train.epochs=4", "train.patience=null", "--quiet"]
    code, _, err = _run([*args, "output.name=straight"], tmp_path, data_dir)
    assert code == 0, err

    proc = _mtp([*args, "output.name=killed"], tmp_path, data_dir, start_new_session=True)
    last = tmp_path / "runs" / "killed" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # let the checkpoint file be complete
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists() and not (tmp_path / "runs" / "killed" / "metrics.json").exists()

    code, _, err = _run([*args, "output.name=killed", "--resume"], tmp_path, data_dir)
    assert code == 0, err
    assert _metrics(tmp_path, "killed") == _metrics(tmp_path, "straight")


def test_average_best_exports_the_mean_of_the_best_epochs(tmp_path, data_dir):
    import torch
    from safetensors.torch import load_file

    from mtp.weights import read_checkpoint

    code, _, err = _run(["run", str(RECIPE), *TINY, "train.epochs=3", "train.patience=null", "train.average_best=2",
                         "output.plots=false", "output.name=avg", "--quiet"], tmp_path, data_dir)
    assert code == 0, err
    run = tmp_path / "runs" / "avg"
    with open(run / "logs" / "metrics.csv", newline="") as f:
        losses = {int(row["epoch"]): float(row["val_loss"]) for row in csv.DictReader(f) if row["val_loss"]}
    best_two = sorted(sorted(losses, key=losses.get)[:2])
    tops = sorted((run / "checkpoints").glob("top-*.ckpt"))
    assert [p.name for p in tops] == [f"top-{epoch:03d}.ckpt" for epoch in best_two]
    states = [read_checkpoint(p)["state_dict"] for p in tops]
    exported = load_file(run / "model.safetensors")
    for key, value in exported.items():
        a, b = states[0]["model." + key], states[1]["model." + key]
        assert torch.allclose(value.double(), (a.double() + b.double()) / 2, atol=1e-7), key
    assert any(not torch.equal(value, states[0]["model." + key]) for key, value in exported.items())
    assert "evaluating the mean weights of 2 checkpoints" in (run / "run.log").read_text()
    recorded = json.loads((run / "metrics.json").read_text())
    assert recorded["averaged_checkpoints"] == [p.name for p in tops]
    validated = recorded["val_metrics_of_average"]
    assert 0 < validated["mse"] < 1.5 and validated["mse"] <= min(losses.values()) * 1.5

    code, _, err = _run(["run", str(RECIPE), *TINY, "train.epochs=1", "train.average_best=2", "train.ema_decay=0.9",
                         "output.name=both", "--quiet"], tmp_path, data_dir)
    assert code == 2 and "choose one way of averaging" in err
    assert not (tmp_path / "runs" / "both").exists()  # refused before anything is written


def test_cli_reports_recipe_errors_without_traceback(tmp_path, data_dir):
    code, _, err = _run(["run", str(RECIPE), "train.lerning_rate=0.1"], tmp_path, data_dir)
    assert code == 2 and "unknown key 'train.lerning_rate'" in err and "Traceback" not in err
    code, _, err = _run(["run", str(RECIPE), "backbone.kwargs.dmodel=4"], tmp_path, data_dir)
    assert code == 2 and "Did you mean 'backbone.kwargs.d_model'" in err
    (tmp_path / "runs" / "ett_itransformer").mkdir(parents=True)
    (tmp_path / "runs" / "ett_itransformer" / "config.yaml").write_text("x")
    code, _, err = _run(["run", str(RECIPE)], tmp_path, data_dir)
    assert code == 2 and "--resume" in err


def test_list_and_info(tmp_path, data_dir, weights_dir):
    code, out, _ = _run(["list", "tasks"], tmp_path, data_dir)
    assert code == 0 and "super_resolution" in out and "forecasting" in out
    code, out, _ = _run(["list", "recipes"], tmp_path, data_dir)
    assert code == 0 and "ett_itransformer.yaml" in out
    code, out, err = _run(["info", str(weights_dir / "imdn" / "IMDN_x4.pth")], tmp_path, data_dir)
    info = json.loads(out)
    assert code == 0, err
    assert info["architecture"]["name"] == "imdn" and info["architecture"]["scale"] == 4
    assert info["task"] == "super_resolution" and info["numel"] == 715176


def test_warmup_cosine_schedule_is_linear_then_cosine_per_epoch():
    import math

    import torch

    from mtp.config import TrainConfig
    from mtp.engine import _optimizer_and_schedule

    params = [torch.nn.Parameter(torch.zeros(1))]
    config = _optimizer_and_schedule(params, TrainConfig(epochs=10, lr=1.0, optimizer="adamw", scheduler="warmup_cosine",
                                                         scheduler_kwargs={"warmup_epochs": 3}), steps_per_epoch=5)
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "epoch"
    lrs = []
    for _ in range(10):
        lrs.append(round(optimizer.param_groups[0]["lr"], 4))
        optimizer.step()
        schedule.step()
    assert lrs[:4] == [0.0, 0.5, 1.0, 1.0] and lrs[5] == round(0.5 * (1 + math.cos(math.pi * 2 / 7)), 4)
    assert lrs[-1] < 0.06
    with pytest.raises(ValueError, match="warmup_epochs"):
        _optimizer_and_schedule(params, TrainConfig(epochs=10, scheduler="warmup_cosine",
                                                    scheduler_kwargs={"warmup_epochs": 10}), steps_per_epoch=5)
