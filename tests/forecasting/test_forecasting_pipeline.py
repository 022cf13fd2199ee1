"""Forecasting through the Pipeline API: a model trained by `mtp run`, exported, then used on real CSVs."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtp import Pipeline
from mtp.config import load_recipe
from mtp.pipeline import InputError

REPO = Path(__file__).resolve().parents[2]
ETT_COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """DLinear trained for one epoch on ETTh1 by the engine; returns the exported weights."""
    from mtp import engine

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("runs")
    recipe = load_recipe(REPO / "recipes" / "forecasting" / "ett_itransformer.yaml",
                         ["backbone.name=dlinear", "backbone.kwargs={}", "train.epochs=1", f"output.dir={out}",
                          f"data.root={data_dir / 'ett'}", "output.plots=false"])
    result = engine.run(recipe, progress=False)
    assert result["metrics"]["mse"] < 0.6  # one epoch of DLinear already forecasts ETTh1 well
    return out / recipe.output.name / "model.safetensors"


def test_export_sidecar_rebuilds_the_model(trained):
    sidecar = json.loads(trained.with_suffix(".json").read_text())
    assert sidecar["backbone"] == "dlinear" and sidecar["kwargs"]["enc_in"] == 7
    assert sidecar["options"]["columns"] == ETT_COLUMNS and len(sidecar["state"]["scaler"]["mean"]) == 7
    pipe = Pipeline("forecasting", weights=str(trained))
    assert pipe.backbone_name == "dlinear" and pipe.config["seq_len"] == 96


def test_forecast_has_future_timestamps_in_original_units(trained, data_dir):
    pipe = Pipeline("forecasting", weights=str(trained))
    csv = data_dir / "ett" / "ETTh1.csv"
    result = pipe(str(csv))
    forecast = result["forecast"]
    last = pd.read_csv(csv, usecols=["date"])["date"].iloc[-1]
    expected = pd.date_range(pd.Timestamp(last), periods=97, freq="h")[1:]
    assert list(forecast.columns) == ETT_COLUMNS and forecast.index.equals(expected)
    history = pd.read_csv(csv).iloc[-96:]
    # Original units: the forecast sits at the level of the recent data, not on the z-scored scale.
    assert abs(forecast["OT"].mean() - history["OT"].mean()) < 3 * history["OT"].std()
    frame = pd.read_csv(csv)
    assert pipe(frame)["forecast"].equals(forecast)


def test_backtest_scores_against_the_held_out_horizon(trained, data_dir):
    pipe = Pipeline("forecasting", weights=str(trained), backtest=True)
    result = pipe(str(data_dir / "ett" / "ETTh1.csv"))
    assert result["truth"].shape == (96, 7) and 0 < result["metrics"]["mae"] < 5


def test_folder_of_csvs_with_broken_ones(trained, data_dir, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "site").mkdir(parents=True)
    frame = pd.read_csv(data_dir / "ett" / "ETTh1.csv")
    frame.iloc[-400:].to_csv(src / "site" / "recent.csv", index=False)
    bad = frame.iloc[-300:].copy()
    bad["OT"] = bad["OT"].astype(object)
    bad.loc[bad.index[10], "OT"] = "12.5 C"
    bad.to_csv(src / "bad_cell.csv", index=False)
    frame.iloc[-50:].to_csv(src / "short.csv", index=False)
    frame.drop(columns=["OT"]).iloc[-300:].to_csv(src / "no_ot.csv", index=False)
    shuffled = frame.iloc[-300:].sample(frac=1.0, random_state=0)
    shuffled.to_csv(src / "unsorted.csv", index=False)

    pipe = Pipeline("forecasting", weights=str(trained))
    report = pipe(str(src), output=str(out))
    assert report.written == [str(out / "site" / "recent_forecast.csv"), str(out / "site" / "recent_forecast.png")]
    errors = {Path(f.input).name: f.error for f in report.failures}
    assert set(errors) == {"bad_cell.csv", "short.csv", "no_ot.csv", "unsorted.csv"}
    assert "column 'OT'" in errors["bad_cell.csv"] and "'12.5 C'" in errors["bad_cell.csv"] and "row 10" in errors["bad_cell.csv"]
    assert "50 rows" in errors["short.csv"] and "OT" in errors["no_ot.csv"]
    written = pd.read_csv(out / "site" / "recent_forecast.csv", index_col=0, parse_dates=True)
    assert written.shape == (96, 7) and np.isfinite(written.to_numpy()).all()
    assert (out / "failures.json").exists()
    assert pipe(str(src), output=str(out)).skipped_existing == [str(src / "site" / "recent.csv")]


def test_array_input_and_clear_errors(trained):
    pipe = Pipeline("forecasting", weights=str(trained))
    values = np.random.default_rng(0).normal(size=(120, 7))
    result = pipe(values)
    assert result["forecast"].shape == (96, 7) and result["forecast"].index[0] == 120
    with pytest.raises(InputError, match="expected a CSV path"):
        pipe(42)
    with pytest.raises(InputError, match=r"\[time, variates\]"):
        pipe(np.zeros(10))


def test_other_frequency_or_fewer_variates_are_refused(trained, data_dir, tmp_path):
    pipe = Pipeline("forecasting", weights=str(trained))
    frame = pd.read_csv(data_dir / "ett" / "ETTh1.csv", parse_dates=["date"]).iloc[-24 * 200:]
    daily = frame.set_index("date").resample("D").mean().reset_index()
    daily.to_csv(tmp_path / "daily.csv", index=False)
    with pytest.raises(InputError, match=r"daily.csv: rows are 'D' apart, the model was trained on 'h' data"):
        pipe(str(tmp_path / "daily.csv"))
    with pytest.raises(InputError, match="6 variates, the model was trained on 7"):
        pipe(np.random.default_rng(0).normal(size=(120, 6)))


def test_cli_backtest_writes_its_scores(trained, data_dir, tmp_path):
    import subprocess
    import sys

    src = tmp_path / "in"
    src.mkdir()
    pd.read_csv(data_dir / "ett" / "ETTh1.csv").iloc[-400:].to_csv(src / "site.csv", index=False)
    proc = subprocess.run([sys.executable, "-m", "mtp.cli", "predict", "forecasting", "-w", str(trained), "-i", str(src),
                           "-o", str(tmp_path / "out"), "-O", "backtest=true", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    scores = json.loads((tmp_path / "out" / "site_forecast_metrics.json").read_text())
    assert scores["input"].endswith("site.csv") and 0 < scores["mae"] < scores["rmse"] < 10
    assert proc.stderr.count("\r") == 0 or "items done" not in proc.stderr  # the summary is on stdout
    assert "items done" in proc.stdout


def test_a_given_data_root_is_honoured(tmp_path):
    from mtp.pipelines.forecasting.pipeline import ForecastingPipeline

    recipe = load_recipe(REPO / "recipes" / "forecasting" / "ett_dlinear.yaml", [f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(FileNotFoundError, match="data.root: .*nowhere does not exist"):
        ForecastingPipeline.from_recipe(recipe)
