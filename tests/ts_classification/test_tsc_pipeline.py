"""The ts_classification pipeline end to end on the real archive files: recipes train (by gradients or in closed
form), export, reload and predict; official MPTSNet weights load with their config read from the shapes; bad
input is refused with the file, series and expectation named, and a folder run goes on past it."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtp import Pipeline
from mtp.config import load_recipe
from mtp.pipeline import InputError, OptionError

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "ts_classification"
pytestmark = pytest.mark.usefixtures("one_thread")


def run_recipe(name, tmp_path, data_dir, *overrides):
    from mtp.engine import run

    folder = "univariate" if "gunpoint" in name else "multivariate"
    recipe = load_recipe(RECIPES / name, [f"data.root={data_dir / 'tsc' / folder}", f"output.dir={tmp_path}",
                                          "train.threads=1", *overrides])
    return run(recipe, progress=False), tmp_path / recipe.output.name


def test_inception_time_trains_exports_reloads_and_predicts_folders(tmp_path, data_dir):
    result, run_dir = run_recipe("inception_time_basicmotions.yaml", tmp_path, data_dir, "train.epochs=12",
                                 "train.batch_size=16", "options.normalize=channel")
    metrics = result["metrics"]
    assert metrics["samples"] == 40 and metrics["classes"] == ["standing", "running", "walking", "badminton"]
    assert metrics["accuracy"] >= 0.7, metrics  # 12 epochs; the full recipe reaches 1.000
    assert np.asarray(metrics["confusion_matrix"]).sum() == 40
    assert {"val_split.json", "confusion_test.png", "model.safetensors", "model.json"} <= {p.name for p in run_dir.iterdir()}
    split = json.loads((run_dir / "val_split.json").read_text())
    assert len(split["val_rows"]) == 8 and not set(split["val_rows"]) & set(split["train_rows"])

    test_file = data_dir / "tsc" / "multivariate" / "BasicMotions_TEST.ts"
    pipe = Pipeline("ts_classification", weights=str(run_dir / "model.safetensors"), device="cpu")
    assert pipe.config["normalize"] == "channel" and pipe.config["seq_length"] is None  # any length
    assert pipe.evaluate(str(test_file))["accuracy"] == metrics["accuracy"]
    frame = pipe(str(test_file))
    assert list(frame.columns[:3]) == ["series", "predicted", "label"] and len(frame) == 40
    probs = frame[[c for c in frame.columns if c.startswith("p_")]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (frame.predicted == frame.label).mean() == metrics["accuracy"]

    # a folder: a .ts file, a CSV series, a broken file (reported, the rest written)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "motions.ts").write_bytes(test_file.read_bytes())
    one = pipe.load(str(test_file)).series[3]
    pd.DataFrame(one.T, columns=[f"c{i}" for i in range(6)]).to_csv(inputs / "walk.csv", index=False)
    (inputs / "broken.ts").write_text("@problemName x\n@dimensions 6\n@data\n1,2:3\n")
    report = pipe(str(inputs), output=str(tmp_path / "out"))
    assert report.items_written == 2 and [Path(f.input).name for f in report.failures] == ["broken.ts"]
    assert "broken.ts" in report.failures[0].error and "channels" in report.failures[0].error
    single = pd.read_csv(tmp_path / "out" / "walk_predictions.csv")
    assert single.predicted[0] == frame.predicted[3] and "label" not in single.columns
    again = pipe(str(inputs), output=str(tmp_path / "out"))
    assert again.items_written == 0 and len(again.skipped_existing) == 2


def test_minirocket_fits_in_closed_form_and_round_trips(tmp_path, data_dir):
    result, run_dir = run_recipe("minirocket_gunpoint.yaml", tmp_path, data_dir)
    assert result["metrics"]["accuracy"] >= 0.95, result["metrics"]
    assert not (run_dir / "checkpoints").exists()  # no gradient training happened
    pipe = Pipeline("ts_classification", weights=str(run_dir / "model.safetensors"), device="cpu")
    assert pipe.config["seq_length"] == 150 and pipe.config["classes"] == ["1", "2"]
    test_file = data_dir / "tsc" / "univariate" / "GunPoint_TEST.ts"
    assert pipe.evaluate(str(test_file))["accuracy"] == result["metrics"]["accuracy"]
    series = pipe.load(str(test_file)).series
    short = pipe(np.stack([s for s in series[:4]]))  # arrays: (series, channels, length)
    assert list(short.predicted) == list(pipe(str(test_file)).predicted[:4])


def test_mptsnet_recipes_take_the_official_periods_and_train(tmp_path, data_dir, fixtures_dir):
    from mtp.pipelines.ts_classification.pipeline import TSClassificationPipeline

    for name, dataset in (("mptsnet_basicmotions.yaml", "BasicMotions"), ("mptsnet_japanesevowels.yaml", "JapaneseVowels")):
        manifest = json.loads((fixtures_dir / "mptsnet" / f"manifest_{dataset}.json").read_text())
        recipe = load_recipe(RECIPES / name, [f"data.root={data_dir / 'tsc' / 'multivariate'}"])
        pipe = TSClassificationPipeline.from_recipe(recipe)
        config = pipe.model.init_config
        for key, value in manifest["constructor_kwargs"].items():
            assert config[key] == value, (dataset, key)
        assert pipe.config["classes"] == [c.lower() for c in manifest["class_label_order"]]
    result, run_dir = run_recipe("mptsnet_basicmotions.yaml", tmp_path, data_dir, "train.max_steps=3")
    assert result["metrics"]["samples"] == 40
    reloaded = Pipeline("ts_classification", weights=str(run_dir / "model.safetensors"), device="cpu")
    assert reloaded.model.init_config["periods"] == [8, 10, 12, 11, 17]


def test_official_mptsnet_weights_load_with_config_from_shapes(fixtures_dir):
    from safetensors.torch import load_file

    folder = fixtures_dir / "mptsnet"
    io = load_file(str(folder / "mptsnet_tiny_io.safetensors"))
    sidecar = json.loads((folder / "mptsnet_tiny.json").read_text())
    with pytest.warns(UserWarning, match="no class names"):
        pipe = Pipeline("ts_classification", backbone="mptsnet", device="cpu",
                        weights=str(folder / "mptsnet_tiny_state_dict.safetensors"))
    for key in ("periods", "num_channels", "seq_length", "num_classes", "embed_dim", "embed_dim_t"):
        assert pipe.model.init_config[key] == sidecar["constructor_kwargs"][key], key
    x = io["input"].numpy()
    frame = pipe(x)
    expected = torch.softmax(io["output"], dim=1).numpy()
    np.testing.assert_allclose(frame[[f"p_{i}" for i in range(5)]].to_numpy(), expected, atol=1e-5)


def test_bad_input_is_named(tmp_path, data_dir):
    pipe = Pipeline("ts_classification", backbone="tst", pretrained=False, device="cpu", num_channels=6,
                    seq_length=50, classes=["standing", "running", "walking", "badminton"])
    test_file = str(data_dir / "tsc" / "multivariate" / "BasicMotions_TEST.ts")
    with pytest.raises(InputError, match=r"BasicMotions_TEST.ts, series 0: 100 steps, the model takes at most 50"):
        pipe(test_file)
    assert len(pipe(test_file, too_long="truncate")) == 40
    with pytest.raises(InputError, match="12 channels, the model takes 6"):
        pipe(str(data_dir / "tsc" / "multivariate" / "JapaneseVowels_TEST.ts"))
    with pytest.raises(InputError, match=r"class 'standing' \(series 0\) is not one of the model's classes"):
        Pipeline("ts_classification", backbone="tst", pretrained=False, device="cpu", num_channels=6,
                 seq_length=100, classes=["a", "b"]).evaluate(test_file)
    with pytest.raises(InputError, match=r"expected \(channels, length\)"):
        pipe(np.zeros(10))
    with pytest.raises(OptionError, match="normalize='bogus'"):
        Pipeline("ts_classification", pretrained=False, device="cpu", normalize="bogus")
    nan_series = np.zeros((1, 6, 40))
    nan_series[0, 2] = np.nan
    with pytest.raises(InputError, match=r"<array>, series 0: channel 2 has no values"):
        pipe(nan_series)


def test_official_checkpoint_file_as_train_py_saves_it(tmp_path, fixtures_dir):
    """train.py saves a bare state_dict with torch.save to results/.../best_model (no extension)."""
    from safetensors.torch import load_file

    folder = fixtures_dir / "mptsnet"
    path = tmp_path / "results" / "MPTSNet" / "Toy" / "best_model"
    path.parent.mkdir(parents=True)
    torch.save(load_file(str(folder / "mptsnet_tiny_flag_state_dict.safetensors")), path)
    io = load_file(str(folder / "mptsnet_tiny_flag_io.safetensors"))
    pipe = Pipeline("ts_classification", backbone="mptsnet", weights=str(path), device="cpu", classes=["a", "b", "c"])
    assert pipe.model.init_config["flag"] is True and pipe.model.init_config["periods"] == [4, 7]
    frame = pipe(io["input"].numpy())
    np.testing.assert_allclose(frame[["p_a", "p_b", "p_c"]].to_numpy(), torch.softmax(io["output"], 1).numpy(),
                               atol=1e-5)


def test_too_short_training_series_fail_or_pad_by_model(tmp_path, data_dir):
    from mtp.pipelines.ts_classification.pipeline import TSClassificationPipeline

    head = "@problemName toy\n@univariate true\n@equalLength true\n@classLabel true a b\n@data\n"
    lines = "".join(f"{i},{i + 1},{i},{i + 2},{i}:{'ab'[i % 2]}\n" for i in range(6))
    (tmp_path / "Toy_TRAIN.ts").write_text(head + lines)
    (tmp_path / "Toy_TEST.ts").write_text(head + lines)
    overrides = [f"data.root={tmp_path}", "data.kwargs.name=Toy", "data.kwargs.val_fraction=0.34"]
    recipe = load_recipe(RECIPES / "mptsnet_basicmotions.yaml", overrides)
    with pytest.raises(InputError, match=r"Toy_TRAIN.ts.*mptsnet cannot be configured.*no period in series of 5 steps"):
        TSClassificationPipeline.from_recipe(recipe)
    pipe = TSClassificationPipeline.from_recipe(load_recipe(RECIPES / "minirocket_gunpoint.yaml", overrides))
    assert pipe.config["seq_length"] == 9  # aeon's MiniRocket minimum; the 5-step series are zero-padded
