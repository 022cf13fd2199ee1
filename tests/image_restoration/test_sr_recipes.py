"""Super-resolution and restoration recipes: the full-scale HAT recipes carry the official training
hyper-parameters, the DF2K layout and the x2 -> x4 fine-tuning start work, and `mtp run` trains and
evaluates end to end (tiny models, a few steps)."""
import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import save_file

from mtp.cli import main
from mtp.config import load_recipe
from mtp.pipelines.image_restoration import metrics as image_metrics
from mtp.datasets.image_restoration.matlab_resize import imresize
from mtp.registry import BACKBONES, TASKS
from mtp.weights import WeightsError

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "image_restoration"
# A tiny HAT with every part (shifted HAB, OCAB, CAB); its fixed 64-channel upsampler is most of its 0.17M (x2).
TINY_HAT = ("{embed_dim: 12, depths: [2], num_heads: [2], window_size: 8, compress_ratio: 2, squeeze_factor: 3, "
            "mlp_ratio: 1, drop_path_rate: 0.0}")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def data_env(data_dir, monkeypatch):
    monkeypatch.setenv("MTP_DATA_DIR", str(data_dir))
    return data_dir


# ------------------------------------------------------------------------------- official hyper-parameters

# From XPixelGroup/HAT options/train/*.yml (values as read there; `batch` is the total over 8 GPUs,
# batch_size_per_gpu 4; every file has Adam betas [0.9, 0.99], weight decay 0, MultiStepLR gamma 0.5,
# ema_decay 0.999, L1 loss, use_hflip/use_rot, manual_seed 0, val crop_border = scale on Y).
FROM_SCRATCH = dict(lr=2e-4, milestones=[250000, 400000, 450000, 475000], total_iter=500000)
FINETUNE = dict(lr=1e-4, milestones=[125000, 200000, 225000, 240000], total_iter=250000)
FINETUNE_L = dict(FINETUNE, lr=1e-5)
OFFICIAL = {
    # train_HAT_SRx2_from_scratch.yml
    "hat_srx2_df2k.yaml": dict(FROM_SCRATCH, net="hat", scale=2, gt_size=128, val_freq=5000, params=20_624_795),
    # train_HAT_SRx3_from_scratch.yml
    "hat_srx3_df2k.yaml": dict(FROM_SCRATCH, net="hat", scale=3, gt_size=192, val_freq=5000, params=20_809_435),
    # train_HAT_SRx4_finetune_from_SRx2.yml (pretrain_network_g: the x2 run's net_g_latest)
    "hat_srx4_df2k_from_x2.yaml": dict(FINETUNE, net="hat", scale=4, gt_size=256, val_freq=5000, params=20_772_507,
                                       pretrained="runs/hat_srx2_df2k/model.safetensors"),
    # train_HAT-S_SRx2_from_scratch.yml
    "hat_s_srx2_df2k.yaml": dict(FROM_SCRATCH, net="hat_s", scale=2, gt_size=128, val_freq=20000, params=9_473_471),
    # train_HAT-S_SRx3_from_scratch.yml
    "hat_s_srx3_df2k.yaml": dict(FROM_SCRATCH, net="hat_s", scale=3, gt_size=192, val_freq=20000, params=9_658_111),
    # train_HAT-S_SRx4_finetune_from_SRx2.yml
    "hat_s_srx4_df2k_from_x2.yaml": dict(FINETUNE, net="hat_s", scale=4, gt_size=256, val_freq=20000,
                                         params=9_621_183, pretrained="runs/hat_s_srx2_df2k/model.safetensors"),
    # train_HAT-L_SRx{2,3,4}_finetune_from_ImageNet_pretrain.yml (from train_HAT-L_SRx{s}_ImageNet_from_scratch)
    **{f"hat_l_srx{s}_df2k_from_imagenet.yaml": dict(
        FINETUNE_L, net="hat_l", scale=s, gt_size=64 * s, val_freq=5000, params=params,
        pretrained=f"${{MTP_WEIGHTS_DIR}}/hat/HAT-L_SRx{s}_ImageNet_from_scratch.pth")
       for s, params in ((2, 40_698_863), (3, 40_883_503), (4, 40_846_575))},
}


def test_every_full_scale_hat_recipe_is_checked():
    assert sorted(p.name for p in RECIPES.glob("hat_*.yaml")) == sorted(OFFICIAL)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_full_scale_recipe_has_official_hyper_parameters(name):
    want = OFFICIAL[name]
    recipe = load_recipe(RECIPES / name)
    scale = want["scale"]
    assert recipe.task == "super_resolution" and recipe.options["scale"] == scale
    assert recipe.backbone.name == want["net"] and recipe.backbone.kwargs == {}
    assert recipe.backbone.weights == want.get("pretrained")

    train = recipe.data.for_split("train")
    assert (train.name, train.root) == ("paired_folder", "DF2K/DF2K_HR_sub")
    assert train.kwargs == {"lr_dir": f"DF2K/DF2K_bicx{scale}_sub", "patch_size": want["gt_size"],
                            "augment": True, "seed": 0}
    val = recipe.data.for_split("val")
    assert (val.name, val.root) == ("paired_folder", f"sr/Set5/image_SRF_{scale}")
    assert recipe.data.for_split("test").root == f"sr/Set14/image_SRF_{scale}"

    t = recipe.train
    assert t.batch_size * t.devices * t.num_nodes == 32 and t.batch_size == 4 and t.num_workers == 6
    assert (t.optimizer, t.lr, t.betas, t.weight_decay) == ("adam", want["lr"], [0.9, 0.99], 0.0)
    assert (t.scheduler, t.milestones, t.gamma) == ("multistep", want["milestones"], 0.5)
    assert t.max_steps == want["total_iter"] and t.ema_decay == 0.999 and t.seed == 0
    assert t.val_every_steps == want["val_freq"] and t.checkpoint_every_steps == want["val_freq"]
    assert t.precision == "32-true"
    assert recipe.eval.options == {"protocol": "basicsr"}  # Y channel, border = scale

    with torch.device("meta"):
        model = BACKBONES.get(recipe.backbone.name).build(upscale=scale, **recipe.backbone.kwargs)
    assert sum(p.numel() for p in model.parameters()) == want["params"]


# ------------------------------------------------------------------------------- DF2K layout, fine-tuning

def _df2k_like(root: Path, data_dir: Path, scale: int, count: int = 3) -> tuple[Path, Path]:
    """A DF2K_HR_sub / DF2K_bicx{s}_sub pair of folders (same file names) made from T91 images large enough
    for the official x4 patch (256 pixels; DF2K sub-images are 480)."""
    hr_dir, lr_dir = root / "DF2K_HR_sub", root / f"DF2K_bicx{scale}_sub"
    hr_dir.mkdir(parents=True, exist_ok=True)
    lr_dir.mkdir(parents=True, exist_ok=True)
    images = (cv2.imread(str(path), cv2.IMREAD_COLOR) for path in sorted((data_dir / "sr" / "T91").glob("tt*.png")))
    large = [image for image in images if min(image.shape[:2]) >= 256]
    for index, hr in enumerate(large[:count]):
        hr = hr[: hr.shape[0] // 12 * 12, : hr.shape[1] // 12 * 12]  # one HR folder for x2/x3/x4, as 480x480
        name = f"{index + 1:04d}_s001.png"
        cv2.imwrite(str(hr_dir / name), hr)
        cv2.imwrite(str(lr_dir / name), imresize(hr, 1.0 / scale))
    return hr_dir, lr_dir


def _tiny_hat(scale: int):
    return BACKBONES.get("hat").build(upscale=scale, **yaml.safe_load(TINY_HAT))


def test_finetune_recipe_reads_df2k_layout_and_starts_from_x2_weights(data_env, tmp_path):
    hr_dir, lr_dir = _df2k_like(tmp_path / "DF2K", data_env, scale=4)
    torch.manual_seed(0)
    x2 = _tiny_hat(2)
    save_file(x2.state_dict(), str(tmp_path / "x2.safetensors"))
    overrides = [f"backbone.kwargs={TINY_HAT}", f"backbone.weights={tmp_path / 'x2.safetensors'}",
                 f"data.splits.train.root={hr_dir}", f"data.splits.train.kwargs.lr_dir={lr_dir}",
                 "data.splits.test.root=sr/Set5/image_SRF_4", "train.accelerator=cpu"]  # no Set14 here
    recipe = load_recipe(RECIPES / "hat_srx4_df2k_from_x2.yaml", overrides)
    pipe = TASKS.get("super_resolution").load().from_recipe(recipe)
    assert pipe.scale == 4
    loaded, started = x2.state_dict(), pipe.model.state_dict()
    for key, value in loaded.items():
        torch.testing.assert_close(started[key], value, rtol=0, atol=0, msg=key)
    assert "upsample.2.weight" in started and "upsample.2.weight" not in loaded

    splits = pipe.datasets(recipe)
    train = splits["train"]
    assert len(train) == 3
    item = train[0]
    assert item["lq"].shape == (3, 64, 64) and item["gt"].shape == (3, 256, 256)
    # the LR crop is the MATLAB-bicubic reduction of the HR crop (away from the crop's own border)
    reduced = imresize(item["gt"].permute(1, 2, 0).numpy(), 0.25)
    assert np.abs(reduced[4:-4, 4:-4] - item["lq"].permute(1, 2, 0).numpy()[4:-4, 4:-4]).max() < 2 / 255
    assert len(splits["val"]) == 5 and splits["val"][0]["gt"].shape[-1] == 4 * splits["val"][0]["lq"].shape[-1]


def test_finetune_weights_of_another_body_are_refused(data_env, tmp_path):
    other = BACKBONES.get("hat").build(upscale=2, **{**yaml.safe_load(TINY_HAT), "embed_dim": 16})
    save_file(other.state_dict(), str(tmp_path / "other.safetensors"))
    recipe = load_recipe(RECIPES / "hat_srx4_df2k_from_x2.yaml",
                         [f"backbone.kwargs={TINY_HAT}", f"backbone.weights={tmp_path / 'other.safetensors'}",
                          "train.accelerator=cpu"])
    refusal = r"(?s)backbone.weights: .*other.safetensors does not fit .*conv_first.weight: checkpoint \[16"
    with pytest.raises(WeightsError, match=refusal):
        TASKS.get("super_resolution").load().from_recipe(recipe)


# ------------------------------------------------------------------------------- mtp run, end to end

def test_training_crops_change_every_epoch(data_dir):
    """T91 has 91 images: with the same crop every epoch a 800-step run would see only 91 patches."""
    from mtp.datasets.image_restoration.folders import HROnlyFolder
    from mtp.engine import make_loader

    # ten small images (Set5 x4 HR and LR files) keep it fast; the recipe's T91 folder behaves the same
    dataset = HROnlyFolder(data_dir / "sr" / "Set5" / "image_SRF_4", "bicubic", scale=2, patch_size=32,
                           augment=True, seed=0)
    loader = make_loader(dataset, batch_size=len(dataset), shuffle=True, seed=0)
    crops = []
    for epoch in (0, 1, 0):
        loader.sampler.set_epoch(epoch)  # what Lightning calls at each epoch start
        batch = next(iter(loader))
        order = sorted(range(len(dataset)), key=lambda i: batch["name"][i])
        crops.append(batch["gt"][order])
    assert not torch.equal(crops[0], crops[1]) and torch.equal(crops[0], crops[2])


def _mtp_run(*args):
    result = CliRunner().invoke(main, ["run", *map(str, args), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _check_run_folder(run_dir: Path) -> dict:
    for name in ("config.yaml", "run.log", "checkpoints/last.ckpt", "metrics.json"):
        assert (run_dir / name).is_file(), name
    return json.loads((run_dir / "metrics.json").read_text())


def test_mtp_run_trains_tiny_hat_on_t91_and_evaluates_set5(data_env, tmp_path):
    _mtp_run(RECIPES / "sr_hat_small_t91_x2.yaml", f"backbone.kwargs={TINY_HAT}", "train.max_steps=3",
             "train.batch_size=2", "data.splits.train.kwargs.patch_size=32", "train.threads=1",
             "train.checkpoint_every_steps=null", f"output.dir={tmp_path}", "output.name=tiny")
    result = _check_run_folder(tmp_path / "tiny")
    metrics = result["metrics"]
    assert metrics["images"] == 5 and metrics["crop_border"] == 2 and metrics["protocol"] == "basicsr"
    assert math.isfinite(metrics["psnr"]) and 5 < metrics["psnr"] < 40 and 0 < metrics["ssim"] <= 1
    assert result["fit_seconds"] > 0
    saved = yaml.safe_load((tmp_path / "tiny" / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 3 and saved["backbone"]["kwargs"]["embed_dim"] == 12
    state = torch.load(tmp_path / "tiny" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 3


def test_mtp_run_df2k_x2_then_x4_from_its_export(data_env, tmp_path, caplog):
    """The official chain: x2 from scratch, then x4 initialised from the x2 run's exported EMA weights."""
    root = tmp_path / "DF2K"
    for scale in (2, 4):
        _df2k_like(root, data_env, scale)
    common = [f"backbone.kwargs={TINY_HAT}", "train.accelerator=cpu", "train.devices=1", "train.strategy=auto",
              "train.num_workers=0", "train.batch_size=2", "train.max_steps=2", "train.val_every_steps=2",
              "train.checkpoint_every_steps=null", "train.threads=1", "eval.options.limit=1",
              f"output.dir={tmp_path / 'runs'}",
              f"data.splits.train.root={root / 'DF2K_HR_sub'}"]
    _mtp_run(RECIPES / "hat_srx2_df2k.yaml", *common, "data.splits.train.kwargs.patch_size=32",
             f"data.splits.train.kwargs.lr_dir={root / 'DF2K_bicx2_sub'}", "data.splits.test.root=sr/Set5/image_SRF_2")
    x2 = _check_run_folder(tmp_path / "runs" / "hat_srx2_df2k")
    assert (tmp_path / "runs" / "hat_srx2_df2k" / "checkpoints" / "best.ckpt").is_file()  # Set5 validation ran
    assert math.isfinite(x2["metrics"]["psnr"])

    caplog.set_level(logging.INFO, logger="mtp.image_restoration")
    _mtp_run(RECIPES / "hat_srx4_df2k_from_x2.yaml", *common, "data.splits.train.kwargs.patch_size=64",
             f"data.splits.train.kwargs.lr_dir={root / 'DF2K_bicx4_sub'}", "data.splits.test.root=sr/Set5/image_SRF_4",
             f"backbone.weights={tmp_path / 'runs' / 'hat_srx2_df2k' / 'model.safetensors'}")
    x4 = _check_run_folder(tmp_path / "runs" / "hat_srx4_df2k_from_x2")
    assert x4["metrics"]["crop_border"] == 4 and x4["metrics"]["images"] == 1 and math.isfinite(x4["metrics"]["psnr"])
    assert "not loaded into the x4 model: upsample.2.weight, upsample.2.bias" in caplog.text


# ------------------------------------------------------------------------------- denoising / JPEG recipes

def _as_8bit(image: torch.Tensor) -> np.ndarray:
    return np.round(np.clip(image.permute(1, 2, 0).numpy(), 0, 1) * 255).astype(np.uint8)


# RGB PSNR of the degraded Set5 inputs themselves (as saved 8-bit images): what training must improve on.
@pytest.mark.parametrize("name, task, input_psnr", [("denoise_hat_small_t91_sigma25.yaml", "denoising", 20.818),
                                                    ("jpeg_hat_small_t91_q10.yaml", "jpeg_restoration", 26.579)])
def test_restoration_recipe_tests_on_seeded_degraded_set5(data_env, name, task, input_psnr):
    recipe = load_recipe(RECIPES / name, [f"backbone.kwargs={TINY_HAT}", "train.accelerator=cpu"])
    assert recipe.task == task and recipe.options["scale"] == 1
    pipe = TASKS.get(task).load().from_recipe(recipe)
    assert pipe.scale == 1
    test = pipe.datasets(recipe)["test"]
    assert len(test) == 5  # the Set5 HR images only, not their LR partners
    again = pipe.datasets(recipe)["test"]
    for index in range(5):
        item = test[index]
        assert item["name"].endswith("_HR") and item["lq"].shape == item["gt"].shape
        assert torch.equal(item["lq"], again[index]["lq"])  # the same degraded input every time
        error = (item["lq"] - item["gt"]).numpy()
        if task == "denoising":
            assert abs(error.std() * 255 - recipe.options["sigma"]) < 0.5 and abs(error.mean()) < 1e-3
        else:
            assert 2 / 255 < np.sqrt((error ** 2).mean()) < 20 / 255  # visible but bounded JPEG damage
    options = recipe.eval.options
    assert options == {"protocol": "basicsr", "crop_border": 0, "test_y_channel": False}
    scores = [image_metrics.psnr(_as_8bit(test[i]["lq"]), _as_8bit(test[i]["gt"]), **options) for i in range(5)]
    assert abs(np.mean(scores) - input_psnr) < 0.005
