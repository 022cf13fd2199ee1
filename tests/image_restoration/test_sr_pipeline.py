"""Super-resolution through the Pipeline API and the CLI, with the official IMDN weights on Set5."""
import json
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
import torch

from mtp import Pipeline
from mtp.pipelines.image_restoration.metrics import psnr
from mtp.weights import WeightsError


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def imdn_x2(weights_dir):
    return Pipeline("super_resolution", weights=str(weights_dir / "imdn" / "IMDN_x2.pth"))


@pytest.mark.parametrize("scale, target_psnr, target_ssim", [(4, 32.2114, 0.8948), (2, 37.9966, 0.9605)])
def test_official_imdn_reproduces_published_set5(weights_dir, data_dir, scale, target_psnr, target_ssim):
    pipe = Pipeline("super_resolution", weights=str(weights_dir / "imdn" / f"IMDN_x{scale}.pth"))
    assert pipe.scale == scale and pipe.arch.name == "imdn"
    result = pipe.evaluate(data_dir / "sr" / "Set5" / f"image_SRF_{scale}", protocol="basicsr")
    assert result["images"] == 5 and result["crop_border"] == scale
    assert abs(result["psnr"] - target_psnr) < 0.005 and abs(result["ssim"] - target_ssim) < 0.0005


def test_weights_of_another_architecture_or_scale_are_refused(weights_dir):
    path = str(weights_dir / "imdn" / "IMDN_x4.pth")
    with pytest.raises(WeightsError, match=r"imdn \(x4\) weights, but backbone 'hat'"):
        Pipeline("super_resolution", backbone="hat", weights=path)
    with pytest.raises(WeightsError, match="x4 model, but scale=2"):
        Pipeline("super_resolution", weights=path, scale=2)
    with pytest.raises(WeightsError, match="x4 model; denoising needs scale"):
        Pipeline("denoising", weights=path)


def test_tiled_output_matches_whole_image(imdn_x2, data_dir):
    lr_paths = sorted((data_dir / "sr" / "Set5" / "image_SRF_2").glob("*_LR.png"))
    assert len(lr_paths) == 5
    for path in lr_paths:
        image = imdn_x2.load(path)
        lq = imdn_x2.preprocess(image)["lq"]
        imdn_x2.config["tile"] = None
        whole = imdn_x2.restore(lq)[0].permute(1, 2, 0).numpy()
        # IMDN's contrast channel attention pools over the whole input, so tiles see slightly other
        # statistics; 64-pixel tiles with 32 of overlap keep that under the 50 dB bound.
        imdn_x2.config.update(tile=64, tile_overlap=32)
        tiled = imdn_x2.restore(lq)[0].permute(1, 2, 0).numpy()
        imdn_x2.config.update(tile="auto", tile_overlap=16)
        assert psnr(tiled, whole, protocol="basicsr", test_y_channel=False) > 50, path.name


def _make_input_tree(root, sr_dir):
    (root / "sub").mkdir(parents=True)
    good = sorted(sr_dir.glob("*_LR.png"))[:2]
    (root / "a.png").write_bytes(good[0].read_bytes())
    (root / "sub" / "b.png").write_bytes(good[1].read_bytes())
    data = good[0].read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "text.png").write_text("this is not an image\n")
    (root / "empty.jpg").write_bytes(b"")
    cv2.imwrite(str(root / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    # a valid PNG whose header declares 200000 x 200000 pixels: more than any memory, refused before decoding
    huge = bytearray(data)
    huge[16:24] = struct.pack(">II", 200000, 200000)
    huge[29:33] = struct.pack(">I", zlib.crc32(bytes(huge[12:29])))
    (root / "huge.png").write_bytes(bytes(huge))
    (root / "notes.txt").write_text("ignored: not an image type\n")


def test_folder_run_skips_broken_files_reports_them_and_resumes(imdn_x2, data_dir, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _make_input_tree(src, data_dir / "sr" / "Set5" / "image_SRF_2")
    report = imdn_x2(str(src), output=str(out))
    assert not report.ok
    assert sorted(report.written) == [str(out / "a.png"), str(out / "sub" / "b.png")]
    failed = json.loads((out / "failures.json").read_text())["failed"]
    assert sorted(f["input"].rsplit("/", 1)[-1] for f in failed) == ["empty.jpg", "huge.png", "text.png", "tiny.png",
                                                                      "truncated.png"]
    assert all(f["error"] for f in failed)
    huge_error = next(f["error"] for f in failed if f["input"].endswith("huge.png"))
    assert "200000x200000" in huge_error and "GiB of memory available" in huge_error and [i.split(" (")[0] for i in report.ignored] == [str(src / "notes.txt")]
    a = cv2.imread(str(out / "a.png"))
    assert a.shape[:2] == tuple(2 * s for s in cv2.imread(str(src / "a.png")).shape[:2])
    assert not list(out.rglob("*.part*"))  # atomic writes leave no temporaries
    mtime = (out / "a.png").stat().st_mtime_ns
    again = imdn_x2(str(src), output=str(out))
    assert again.written == [] and len(again.skipped_existing) == 2
    assert (out / "a.png").stat().st_mtime_ns == mtime
    forced = imdn_x2(str(src), output=str(out), overwrite=True)
    assert len(forced.written) == 2


def test_cli_predict_exit_status_and_report(weights_dir, data_dir, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _make_input_tree(src, data_dir / "sr" / "Set5" / "image_SRF_2")
    cmd = [sys.executable, "-m", "mtp.cli", "predict", "super_resolution", "--weights",
           str(weights_dir / "imdn" / "IMDN_x2.pth"), "--input", str(src), "--output", str(out), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "2 items done" in proc.stdout and "5 failed" in proc.stdout and str(out / "failures.json") in proc.stdout
    bad = subprocess.run(cmd[:4] + ["--backbone", "imdm"] + cmd[4:], capture_output=True, text=True)
    assert bad.returncode == 2 and "Did you mean 'imdn'" in bad.stderr


def test_rgba_and_16_bit_gray_keep_their_format(imdn_x2, data_dir, tmp_path):
    rgb = cv2.imread(str(sorted((data_dir / "sr" / "Set5" / "image_SRF_2").glob("*_LR.png"))[2]))
    h, w = rgb.shape[:2]
    alpha = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "rgba.png"), np.dstack([rgb, alpha]))
    gray16 = (cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257)
    cv2.imwrite(str(src / "gray16.png"), gray16)
    report = imdn_x2(str(src), output=str(tmp_path / "out"))
    assert report.ok, report.summary()
    out_rgba = cv2.imread(str(tmp_path / "out" / "rgba.png"), cv2.IMREAD_UNCHANGED)
    assert out_rgba.shape == (2 * h, 2 * w, 4) and out_rgba.dtype == np.uint8
    assert abs(int(out_rgba[:, -1, 3].mean()) - 255) <= 2 and out_rgba[:, 0, 3].mean() <= 2
    out_gray = cv2.imread(str(tmp_path / "out" / "gray16.png"), cv2.IMREAD_UNCHANGED)
    assert out_gray.shape == (2 * h, 2 * w) and out_gray.dtype == np.uint16


def test_in_memory_inputs(imdn_x2, data_dir):
    path = sorted((data_dir / "sr" / "Set5" / "image_SRF_2").glob("*_LR.png"))[0]
    from_path = imdn_x2(str(path))
    array = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    from_array = imdn_x2(array)
    assert np.array_equal(from_path["rgb"], from_array["rgb"])
    both = imdn_x2([str(path), array])
    assert len(both) == 2


def test_cli_eval_prints_metrics(weights_dir, data_dir):
    cmd = [sys.executable, "-m", "mtp.cli", "eval", "super_resolution", "--weights",
           str(weights_dir / "imdn" / "IMDN_x2.pth"), "--data", str(data_dir / "sr" / "Set5" / "image_SRF_2"),
           "-M", "limit=2", "-M", "protocol=matlab"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["images"] == 2 and result["protocol"] == "matlab" and 30 < result["psnr"] < 45


def test_bfloat16_inference_stays_close(weights_dir, data_dir):
    path = sorted((data_dir / "sr" / "Set5" / "image_SRF_2").glob("*_LR.png"))[1]
    fp32 = Pipeline("super_resolution", weights=str(weights_dir / "imdn" / "IMDN_x2.pth"))
    bf16 = Pipeline("super_resolution", weights=str(weights_dir / "imdn" / "IMDN_x2.pth"), dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert psnr(bf16(str(path))["rgb"], fp32(str(path))["rgb"], protocol="basicsr") > 35
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        Pipeline("super_resolution", weights=str(weights_dir / "imdn" / "IMDN_x2.pth"), dtype="float16")
