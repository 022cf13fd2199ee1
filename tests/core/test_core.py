"""The domain-free core: registries, recipes, weights loading, file plumbing, import weight of `mtp`."""
import json
import subprocess
import sys

import pytest
import torch

from mtp.config import (Recipe, RecipeError, TrainConfig, check_kwargs, from_dict, load_recipe,
                        parse_override)
from mtp.files import DownloadError, atomic_path, fetch, sha256_of
from mtp.registry import BACKBONES, DATASETS, METRICS, TASKS, UnknownNameError
from mtp.weights import WeightsError, extract_state_dict, load_into, load_state_dict_file, read_checkpoint

HEAVY = ["torch", "cv2", "torchaudio", "monai", "open3d", "lightning", "pytorch_forecasting", "triton", "pandas"]


def _loaded_after(code: str) -> list:
    probe = f"import sys; {code}; print(__import__('json').dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_import_mtp_and_listing_registries_stay_light():
    assert _loaded_after("import mtp") == []
    listing = ("from mtp.registry import TASKS, BACKBONES, DATASETS, METRICS; "
               "[r.names() for r in (TASKS, BACKBONES, DATASETS, METRICS)]")
    assert _loaded_after(listing) == []


def test_cli_help_imports_nothing_heavy():
    assert _loaded_after("from mtp.cli import main; main(['--help'], standalone_mode=False)") == []


def test_registries_list_the_first_tasks_and_backbones():
    assert {"super_resolution", "denoising", "jpeg_restoration", "forecasting"} <= set(TASKS.names())
    assert {"hat_s", "hat", "hat_l", "imdn", "itransformer", "dlinear", "patchtst"} <= set(BACKBONES.names())
    assert "imdn" in BACKBONES.names(tasks="super_resolution")
    assert "itransformer" not in BACKBONES.names(tasks="super_resolution")
    assert "ETTh1" in DATASETS.names() and "psnr" in METRICS.names()


def test_unknown_names_list_valid_ones_and_the_closest():
    with pytest.raises(UnknownNameError, match=r"Did you mean 'super_resolution'\?.*forecasting"):
        TASKS.get("super_resolutoin")
    with pytest.raises(UnknownNameError, match="Did you mean 'itransformer'"):
        BACKBONES.get("itransfomer")


def test_unknown_task_option_names_the_closest(tmp_path):
    from mtp import Pipeline

    from mtp.pipeline import OptionError

    with pytest.raises(OptionError, match="unknown key 'bogus_option'"):
        Pipeline("forecasting", backbone="dlinear", bogus_option=3)
    with pytest.raises(OptionError, match="Did you mean 'pred_len'"):
        Pipeline("forecasting", backbone="dlinear", pred_lne=3)


# ---------------------------------------------------------------------------------------------- recipes

def _write(path, text):
    path.write_text(text)
    return path


def test_recipe_typo_names_dotted_path_and_nearest_key(tmp_path):
    recipe = _write(tmp_path / "r.yaml", "task: forecasting\ntrain:\n  epocs: 3\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    message = str(err.value)
    assert "train.epocs" in message and "Did you mean 'train.epochs'" in message and str(recipe) in message


def test_recipe_wrong_type_names_path_and_expected_type(tmp_path):
    recipe = _write(tmp_path / "r.yaml", "task: forecasting\ntrain:\n  batch_size: many\n")
    with pytest.raises(RecipeError, match=r"train\.batch_size: expected int, found str 'many'"):
        load_recipe(recipe)
    with pytest.raises(RecipeError, match="missing required key"):
        from_dict(Recipe, {"train": {}})


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    assert parse_override("train.lr=3e-4") == ("train.lr", "3e-4")  # YAML 1.1; the float field converts it
    assert parse_override("train.milestones=[10, 20]") == ("train.milestones", [10, 20])
    assert parse_override("backbone.weights=null") == ("backbone.weights", None)
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_override("train.lr")
    recipe = _write(tmp_path / "r.yaml", "task: forecasting\ntrain: {epochs: 2}\n")
    loaded = load_recipe(recipe, ["train.lr=3e-4", "train.epochs=5", "backbone.kwargs.d_model=64", "eval.batch_size=7"])
    assert loaded.train.lr == pytest.approx(3e-4) and loaded.train.epochs == 5
    assert loaded.backbone.kwargs == {"d_model": 64} and loaded.eval.batch_size == 7
    assert loaded.output.name == "r"
    with pytest.raises(RecipeError, match="train.lrr"):
        load_recipe(recipe, ["train.lrr=1"])
    with pytest.raises(RecipeError, match="is a int, not a section"):
        load_recipe(recipe, ["train.epochs.x=1"])


def test_recipe_base_is_extended(tmp_path):
    _write(tmp_path / "base.yaml", "task: forecasting\ntrain: {epochs: 2, lr: 0.001}\ndata: {name: ETTh1, kwargs: {seq_len: 96}}\n")
    child = _write(tmp_path / "child.yaml", "base: base.yaml\ndata: {kwargs: {pred_len: 192}}\ntrain: {epochs: 4}\n")
    recipe = load_recipe(child)
    assert recipe.train.epochs == 4 and recipe.train.lr == 0.001
    assert recipe.data.kwargs == {"seq_len": 96, "pred_len": 192}


def test_check_kwargs_points_at_the_recipe_key():
    def build(seq_len, pred_len, d_model=512):
        return None

    check_kwargs(build, {"d_model": 8}, "backbone.kwargs")
    with pytest.raises(RecipeError, match=r"backbone\.kwargs\.dmodel.*Did you mean 'backbone\.kwargs\.d_model'"):
        check_kwargs(build, {"dmodel": 8}, "backbone.kwargs")


def test_every_shipped_recipe_validates():
    from pathlib import Path

    recipes = sorted((Path(__file__).parents[2] / "recipes").rglob("*.yaml"))
    assert recipes
    for path in recipes:
        recipe = load_recipe(path)
        assert recipe.task in TASKS
        assert recipe.train is None or isinstance(recipe.train, TrainConfig)


# ---------------------------------------------------------------------------------------------- weights

def test_official_layouts_unwrap(fixtures_dir, weights_dir):
    hat = load_state_dict_file(fixtures_dir / "hat" / "hat_tiny_x4_official_format.pth")
    assert next(iter(hat)) == "relative_position_index_SA"  # params_ema unwrapped, order kept
    imdn = load_state_dict_file(weights_dir / "imdn" / "IMDN_x4.pth")
    assert not any(k.startswith("module.") for k in imdn) and "fea_conv.weight" in imdn
    safetensors = load_state_dict_file(fixtures_dir / "hat" / "hat_tiny_x4_state_dict.safetensors")
    assert set(safetensors) == set(hat)  # safetensors stores keys sorted
    with pytest.raises(WeightsError, match="no key 'params'"):
        extract_state_dict(read_checkpoint(fixtures_dir / "hat" / "hat_tiny_x4_official_format.pth"), key="params")


def test_bad_weight_files_are_named(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_state_dict_file(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth: not a readable PyTorch checkpoint"):
        load_state_dict_file(junk)


def test_strict_load_reports_missing_unexpected_and_shapes():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    state = {"0.weight": torch.zeros(3, 4), "0.bias": torch.zeros(5), "2.weight": torch.zeros(1)}
    with pytest.raises(WeightsError) as err:
        load_into(model, state, source="ckpt.pth")
    text = str(err.value)
    assert "ckpt.pth" in text and "1.weight" in text and "2.weight" in text and "0.bias: checkpoint [5] vs model [3]" in text
    report = load_into(model, state, strict=False)
    assert torch.equal(model[0].weight, torch.zeros(3, 4)) and not report.ok


# ---------------------------------------------------------------------------------------------- files

def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"
    with pytest.raises(FileExistsError, match="out.txt exists"):
        with atomic_path(target):
            pass


def test_fetch_verifies_sha256_and_caches(tmp_path, monkeypatch, weights_dir):
    monkeypatch.setenv("MTP_CACHE_DIR", str(tmp_path / "cache"))
    source = weights_dir / "imdn" / "IMDN_x2.pth"
    digest = sha256_of(source)
    got = fetch(source.as_uri(), "weights", sha256=digest)
    assert got == tmp_path / "cache" / "weights" / "IMDN_x2.pth" and sha256_of(got) == digest
    got.unlink()
    with pytest.raises(DownloadError, match="sha256"):
        fetch(source.as_uri(), "weights", sha256="0" * 64)
    assert not got.exists()
    with pytest.raises(DownloadError, match="put it at one of"):
        fetch((tmp_path / "nowhere.pth").as_uri(), "weights")


def test_multi_part_suffixes_keep_the_full_stem():
    from mtp.pipeline import split_suffix

    suffixes = (".nii", ".nii.gz", ".tar.gz", ".png")
    assert split_suffix("scan.nii.gz", suffixes) == ("scan", ".nii.gz")
    assert split_suffix("BraTS_001.T1c.NII.GZ", suffixes) == ("BraTS_001.T1c", ".NII.GZ")
    assert split_suffix("scan.nii", suffixes) == ("scan", ".nii")
    assert split_suffix("photo.v2.png", suffixes) == ("photo.v2", ".png")
    assert split_suffix("archive.tar.gz", suffixes) == ("archive", ".tar.gz")
