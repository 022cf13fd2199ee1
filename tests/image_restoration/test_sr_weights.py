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
