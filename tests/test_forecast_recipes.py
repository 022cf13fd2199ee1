"""Every forecasting recipe builds the model its reference script builds, on the real data; DLinear's
recipe trains end to end through `mtp run`'s engine."""
import csv
import functools
import inspect
import json
import math
from pathlib import Path

import pytest
import torch

from mtp.config import TrainConfig, load_recipe
from mtp.pipelines.forecasting.pipeline import ForecastingPipeline

torch.set_num_threads(1)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
FORECASTING = sorted(p for p in RECIPES.glob("*.yaml") if load_recipe(p).task == "forecasting")
HORIZONS = (96, 192, 336, 720)


@pytest.fixture(autouse=True)
def shared_data_dir(data_dir, monkeypatch):
    monkeypatch.setenv("MTP_DATA_DIR", str(data_dir))


@functools.lru_cache(maxsize=None)
def build(name: str) -> ForecastingPipeline:
    """The recipe's pipeline on the real data (built once per recipe: reading the CSV dominates)."""
    return ForecastingPipeline.from_recipe(load_recipe(RECIPES / name))


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_recipe_set_is_complete():
    names = {p.stem for p in FORECASTING}
    for model in ("itransformer", "dlinear", "patchtst"):
        for horizon in HORIZONS:
            assert (f"ett_{model}" if horizon == 96 else f"ett_{model}_{horizon}") in names
    assert {"ett_nhits", "exchange_itransformer"} <= names


@pytest.mark.parametrize("path", FORECASTING, ids=lambda p: p.stem)
def test_recipe_builds_and_forecasts_real_windows(path):
    recipe = load_recipe(path)
    pipe = build(path.name)
    horizon = recipe.data.kwargs["pred_len"]
    assert f"horizon {horizon}" in recipe.description
    windows = [pipe.splits.train[i] for i in (0, len(pipe.splits.train) - 1)]
    batch = {key: torch.stack([w[key] for w in windows]) for key in ("x", "x_mark")}
    with torch.no_grad():
        out = pipe.model.eval()(batch["x"], batch["x_mark"])
    assert out.shape == (2, horizon, pipe.splits.n_channels)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("horizon", HORIZONS)
def test_itransformer_recipes_match_official_manifests(fixtures_dir, horizon):
    manifest = json.loads((fixtures_dir / "itransformer" / f"manifest_ETTh1_96_{horizon}.json").read_text())
    pipe = build("ett_itransformer.yaml" if horizon == 96 else f"ett_itransformer_{horizon}.yaml")
    assert n_params(pipe.model) == manifest["total_parameters"]
    ours = [[key, list(value.shape)] for key, value in pipe.model.state_dict().items()]
    assert ours == [[key, list(shape)] for key, shape, _ in manifest["state_dict"]]
    # Settings that do not show in the shapes (heads, dropout, activation, normalisation) too.
    accepted = inspect.signature(type(pipe.model)).parameters
    for name, official in manifest["configs"].items():
        if name in accepted:
            assert pipe.model_kwargs.get(name, accepted[name].default) == official, name
    assert pipe.splits.n_channels == manifest["configs"]["enc_in"]
    assert pipe.splits.train.n_marks == 4   # timeF with freq h


@pytest.mark.parametrize("horizon", HORIZONS)
def test_dlinear_recipes_follow_time_series_library(horizon):
    pipe = build("ett_dlinear.yaml" if horizon == 96 else f"ett_dlinear_{horizon}.yaml")
    assert pipe.model_kwargs["moving_avg"] == 25 and not pipe.model_kwargs["individual"]
    # One shared seasonal and one shared trend Linear(96 -> horizon).
    assert n_params(pipe.model) == 2 * (96 * horizon + horizon)


@pytest.mark.parametrize("horizon,heads", [(96, 2), (192, 8), (336, 8), (720, 16)])
def test_patchtst_recipes_follow_time_series_library(horizon, heads):
    pipe = build("ett_patchtst.yaml" if horizon == 96 else f"ett_patchtst_{horizon}.yaml")
    kwargs = pipe.model_kwargs
    assert (kwargs["e_layers"], kwargs["n_heads"], kwargs["d_model"], kwargs["d_ff"]) == (1, heads, 512, 2048)
    assert (kwargs["patch_len"], kwargs["stride"], kwargs["dropout"]) == (16, 8, 0.1)
    d_model, d_ff, patches = 512, 2048, (96 - 16) // 8 + 2
    embedding = 16 * d_model                                     # patch -> d_model, no bias
    layer = 4 * (d_model * d_model + d_model) + (d_model * d_ff + d_ff) + (d_ff * d_model + d_model) + 4 * d_model
    final_norm = 2 * d_model                                     # BatchNorm1d weight and bias
    head = d_model * patches * horizon + horizon
    assert n_params(pipe.model) == embedding + layer + final_norm + head


def test_exchange_recipe_uses_the_custom_csv_protocol():
    pipe = build("exchange_itransformer.yaml")
    splits = pipe.splits
    rows = 7588
    train_end, test_rows = int(rows * 0.7), int(rows * 0.2)
    assert splits.borders == {"train": (0, train_end), "val": (train_end - 96, rows - test_rows),
                              "test": (rows - test_rows - 96, rows)}
    assert splits.columns[-1] == "OT" and splits.n_channels == 8
    assert pipe.model_kwargs["d_model"] == 128 and pipe.model_kwargs["d_ff"] == 128


def test_type1_schedule_halves_from_the_third_epoch():
    """thuml lradj type1: epochs 0 and 1 at lr, then half per epoch (what every ETT recipe uses)."""
    from mtp.engine import _optimizer_and_schedule

    params = [torch.nn.Parameter(torch.zeros(2))]
    configured = _optimizer_and_schedule(params, TrainConfig(lr=1e-4, scheduler="halve_per_epoch"), 10)
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([1e-4, 1e-4, 5e-5, 2.5e-5, 1.25e-5])


def test_dlinear_recipe_trains_one_epoch_end_to_end(tmp_path):
    from mtp.engine import run

    recipe = load_recipe(RECIPES / "ett_dlinear.yaml",
                         ["train.epochs=1", "train.threads=1", f"output.dir={tmp_path}", "output.plots=false"])
    untrained = ForecastingPipeline.from_recipe(recipe)
    before = untrained.evaluate_split(untrained.splits.test, recipe)

    result = run(recipe, progress=False)
    run_dir = tmp_path / "ett_dlinear"
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["metrics"] == pytest.approx(result["metrics"])
    metrics = result["metrics"]
    assert metrics["windows"] == 2785                        # every test window: 2880 rows + look-back - 96 - 96 + 1
    assert math.isfinite(metrics["mse"]) and metrics["mse"] < 0.9 * before["mse"]
    assert metrics["mse"] < 0.5 and metrics["mae"] < before["mae"]
    rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").open()))
    assert any(row.get("train_loss") for row in rows) and any(row.get("val_loss") for row in rows)
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()
