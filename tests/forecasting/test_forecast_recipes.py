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

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "forecasting"
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


def test_patchtst_recipe_computes_what_time_series_library_computes():
    """The 96 recipe's model against thuml's forecast written out with torch primitives on real windows:
    instance norm (population variance + 1e-5), nn.ReplicationPad1d((0, stride)) then unfold, patch
    embedding + sine table, encoder, Transpose/BatchNorm1d/Transpose with its running statistics, the
    [B, N, d_model, patches] flatten and the head, and the de-normalisation. A zero-padded end, a
    patch-major flatten or an unbiased variance each moves the output far beyond the tolerance."""
    import torch.nn.functional as F

    pipe = build("ett_patchtst.yaml")
    model = pipe.model.eval()
    norm = model.encoder.norm[1]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():   # running statistics away from (0, 1), so a skipped BatchNorm shows
        norm.running_mean.copy_(torch.randn(norm.num_features, generator=generator))
        norm.running_var.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
    train = pipe.splits.train
    x = torch.stack([train[i]["x"] for i in (0, 1234, len(train) - 1)])
    batch, seq_len, n_vars = x.shape
    with torch.no_grad():
        means = x.mean(1, keepdim=True)
        stdev = torch.sqrt(((x - means) ** 2).mean(1, keepdim=True) + 1e-5)
        series = ((x - means) / stdev).permute(0, 2, 1)
        padded = torch.nn.ReplicationPad1d((0, 8))(series)
        patches = padded.unfold(-1, 16, 8).reshape(batch * n_vars, -1, 16)
        assert patches.shape[1] == (seq_len - 16) // 8 + 2
        tokens = model.patch_embedding.value_embedding(patches) + model.patch_embedding.position_embedding.pe[:, :patches.shape[1]]
        for layer in model.encoder.attn_layers:
            tokens, _ = layer(tokens)
        tokens = F.batch_norm(tokens.transpose(1, 2), norm.running_mean, norm.running_var, norm.weight, norm.bias,
                              eps=norm.eps).transpose(1, 2)
        features = tokens.reshape(batch, n_vars, -1, tokens.shape[-1]).permute(0, 1, 3, 2).flatten(start_dim=-2)
        expected = model.head.linear(features).permute(0, 2, 1) * stdev + means
        out = model(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


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
    before = untrained.evaluate(untrained.splits.test)

    result = run(recipe, progress=False)
    run_dir = tmp_path / "ett_dlinear"
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["metrics"] == pytest.approx(result["metrics"])
    metrics = result["metrics"]
    assert metrics["samples"] == 2785                        # every test window: 2880 rows + look-back - 96 - 96 + 1
    assert math.isfinite(metrics["mse"]) and metrics["mse"] < 0.9 * before["mse"]
    assert metrics["mse"] < 0.5 and metrics["mae"] < before["mae"]
    rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").open()))
    assert any(row.get("train_loss") for row in rows) and any(row.get("val_loss") for row in rows)
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()


def test_a_split_with_its_own_csv_is_windowed_with_the_training_statistics(tmp_path, data_dir):
    import pandas as pd

    frame = pd.read_csv(data_dir / "ett" / "ETTh1.csv")
    frame.iloc[14400:14400 + 400].to_csv(tmp_path / "later.csv", index=False)   # rows after thuml's test border
    recipe = load_recipe(RECIPES / "ett_dlinear.yaml", [f"data.splits.test.root={tmp_path / 'later.csv'}"])
    pipe = ForecastingPipeline.from_recipe(recipe)
    splits = pipe.datasets(recipe)
    assert len(splits["test"]) == 400 - 96 - 96 + 1 and len(splits["train"]) == len(pipe.splits.train)
    expected = pipe.splits.scaler.transform(frame.iloc[14400:14400 + 96][pipe.splits.columns].to_numpy())
    torch.testing.assert_close(splits["test"][0]["x"], torch.tensor(expected, dtype=torch.float32))
