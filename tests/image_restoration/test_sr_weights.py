"""Weights by release name, loud untrained models, and what `mtp info` says a checkpoint is for."""
import json
import subprocess
import sys
import warnings

import pytest
import torch

from mtp import Pipeline
from mtp.files import DownloadError
from mtp.pipeline import OptionError, UntrainedModelWarning


@pytest.fixture
def official_dir(weights_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("MTP_WEIGHTS_DIR", str(weights_dir))
    monkeypatch.setenv("MTP_CACHE_DIR", str(tmp_path / "cache"))
    return weights_dir


def test_official_weights_load_by_name_and_are_checked(official_dir):
    pipe = Pipeline("super_resolution", backbone="imdn", weights="official", scale=4, device="cpu")
    assert pipe.scale == 4 and pipe.weights == str(official_dir / "imdn" / "IMDN_x4.pth") and not pipe.untrained
    assert Pipeline("super_resolution", backbone="imdn", weights="x2", device="cpu").scale == 2
    with pytest.raises(OptionError, match="release 'x2' is for scale=2, but scale=4"):
        Pipeline("super_resolution", backbone="imdn", weights="x2", scale=4)


def test_a_corrupt_official_file_is_refused(tmp_path, monkeypatch, weights_dir):
    (tmp_path / "imdn").mkdir()
    (tmp_path / "imdn" / "IMDN_x4.pth").write_bytes((weights_dir / "imdn" / "IMDN_x2.pth").read_bytes())
    monkeypatch.setenv("MTP_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(DownloadError, match="sha256 is .*expected e660c382"):
        Pipeline("super_resolution", backbone="imdn", weights="official", scale=4)


def test_weights_without_a_direct_url_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MTP_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("MTP_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DownloadError, match=r"HAT-S_SRx4\.pth has no direct download; get it from .*XPixelGroup/HAT"
                                            r".* put it at one of: .*hat/HAT-S_SRx4\.pth"):
        Pipeline("super_resolution", backbone="hat_s", weights="official", scale=4)


def test_a_model_without_weights_warns_loudly():
    with pytest.warns(UntrainedModelWarning, match="super_resolution: the imdn model has no trained weights"):
        Pipeline("super_resolution", backbone="imdn", scale=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Pipeline("super_resolution", backbone="imdn", scale=2, pretrained=False)


def test_info_says_what_an_x1_checkpoint_is_for(tmp_path):
    from mtp.backbones.imdn import IMDN

    torch.save(IMDN(upscale=1).state_dict(), tmp_path / "imdn_x1.pth")
    torch.save(IMDN(upscale=4).state_dict(), tmp_path / "imdn_x4.pth")
    info = [json.loads(subprocess.run([sys.executable, "-m", "mtp.cli", "info", str(tmp_path / name)],
                                      capture_output=True, text=True, check=True).stdout)
            for name in ("imdn_x1.pth", "imdn_x4.pth")]
    assert info[0]["tasks"] == ["denoising", "jpeg_restoration"] and info[0]["task"] is None
    assert info[1]["tasks"] == ["super_resolution"] and info[1]["task"] == "super_resolution"
    assert info[1]["architecture"]["scale"] == 4 and info[1]["backbone"] == "imdn"


def test_eval_with_weights_of_another_scale_fails_up_front(weights_dir, data_dir):
    proc = subprocess.run([sys.executable, "-m", "mtp.cli", "eval", "super_resolution", "-w",
                           str(weights_dir / "imdn" / "IMDN_x2.pth"), "-d", str(data_dir / "sr" / "Set5" / "image_SRF_4")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "(x4), but the model is x2" in proc.stderr


@pytest.mark.parametrize("option, message", [("tile=abc", "tile='abc'"), ("sigma=2", "unknown key 'sigma'"),
                                             ("tile_overlap=-3", "tile_overlap=-3")])
def test_bad_options_fail_in_one_line_before_any_file(tmp_path, option, message):
    (tmp_path / "in").mkdir()
    proc = subprocess.run([sys.executable, "-m", "mtp.cli", "predict", "super_resolution", "-b", "imdn", "-i",
                           str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-O", option],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [(["--device", "cuda"], "no CUDA device"),
                                            (["--dtype", "float16", "--device", "cpu"], "float16 needs a CUDA device")])
def test_devices_and_dtypes_are_checked_up_front(tmp_path, flags, message):
    (tmp_path / "in").mkdir()
    proc = subprocess.run([sys.executable, "-m", "mtp.cli", "predict", "super_resolution", "-b", "imdn", "-i",
                           str(tmp_path / "in"), "-o", str(tmp_path / "out"), *flags], capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
