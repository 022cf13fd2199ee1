import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mtp.datasets.image_restoration.folders import HROnlyFolder, PairedImageFolder
from mtp.datasets.image_restoration.image_io import read_image, write_image
from mtp.datasets.image_restoration.matlab_resize import imresize


def _uint8(tensor: torch.Tensor) -> np.ndarray:
    """CHW float tensor in [0, 1] back to HWC uint8 (exact for 8-bit sources)."""
    return np.round(tensor.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def _rgb(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


@pytest.fixture(scope="module")
def set5_x4(data_dir):
    return data_dir / "sr" / "Set5" / "image_SRF_4"


@pytest.fixture(scope="module")
def t91(data_dir):
    return data_dir / "sr" / "T91"


def test_paired_srf_layout_whole_images(set5_x4):
    dataset = PairedImageFolder(set5_x4, scale=4)
    assert len(dataset) == 5
    item = dataset[1]
    assert item["name"] == "img_002_SRF_4"
    assert item["lq"].dtype == torch.float32 and item["gt"].dtype == torch.float32
    assert item["lq"].shape == (3, 72, 72) and item["gt"].shape == (3, 288, 288)
    np.testing.assert_array_equal(_uint8(item["lq"]), _rgb(set5_x4 / "img_002_SRF_4_LR.png"))
    np.testing.assert_array_equal(_uint8(item["gt"]), _rgb(set5_x4 / "img_002_SRF_4_HR.png"))


def test_paired_training_crops_are_aligned_and_seeded(set5_x4):
    dataset = PairedImageFolder(set5_x4, scale=4, patch_size=48, augment=True, seed=3)
    seen = set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        item = dataset[0]
        lq, gt = _uint8(item["lq"]), _uint8(item["gt"])
        assert lq.shape == (12, 12, 3) and gt.shape == (48, 48, 3)
        # The official LR is MATLAB bicubic of the HR, so away from the patch border (2 LR pixels
        # of kernel reach) downscaling the HR patch gives the LR patch back. Transposed patches
        # resize their axes in the other order, hence the tolerance of one grey level.
        regenerated = imresize(gt, 1 / 4).astype(int)
        assert np.abs(regenerated[2:-2, 2:-2] - lq[2:-2, 2:-2].astype(int)).max() <= 1
        seen.add(gt.tobytes())
    assert len(seen) > 1, "set_epoch must change the crops"
    again = PairedImageFolder(set5_x4, scale=4, patch_size=48, augment=True, seed=3)
    again.set_epoch(3)
    torch.testing.assert_close(again[0]["gt"], item["gt"], rtol=0, atol=0)
    other_seed = PairedImageFolder(set5_x4, scale=4, patch_size=48, augment=True, seed=4)
    other_seed.set_epoch(3)
    assert not torch.equal(other_seed[0]["gt"], item["gt"])


def test_paired_without_augmentation_is_an_exact_crop(set5_x4):
    item = PairedImageFolder(set5_x4, scale=4, patch_size=32)[4]
    hr, lr = _rgb(set5_x4 / "img_005_SRF_4_HR.png"), _rgb(set5_x4 / "img_005_SRF_4_LR.png")
    lq, gt = _uint8(item["lq"]), _uint8(item["gt"])
    # Locate the LR patch in the LR image, then the HR patch must sit at 4x that position.
    matches = [(top, left) for top in range(lr.shape[0] - 7) for left in range(lr.shape[1] - 7)
               if np.array_equal(lr[top:top + 8, left:left + 8], lq)]
    assert len(matches) == 1
    top, left = matches[0]
    np.testing.assert_array_equal(gt, hr[top * 4: top * 4 + 32, left * 4: left * 4 + 32])


def _make_div2k(root, set5_x4, names=("0001", "0002")):
    """DIV2K_train_HR/0001.png + DIV2K_train_LR_bicubic/X4/0001x4.png written from Set5 pixels."""
    sources = sorted(set5_x4.glob("*_HR.png"))[: len(names)]
    for name, hr_path in zip(names, sources):
        lr_path = hr_path.with_name(hr_path.name.replace("_HR", "_LR"))
        write_image(root / "DIV2K_train_HR" / f"{name}.png", read_image(hr_path).rgb)
        write_image(root / "DIV2K_train_LR_bicubic" / "X4" / f"{name}x4.png", read_image(lr_path).rgb)
    return sources


def test_div2k_layout(tmp_path, set5_x4):
    sources = _make_div2k(tmp_path, set5_x4)
    for lr_dir in (tmp_path / "DIV2K_train_LR_bicubic", tmp_path / "DIV2K_train_LR_bicubic" / "X4"):
        dataset = PairedImageFolder(tmp_path / "DIV2K_train_HR", lr_dir, scale=4)
        assert [dataset[i]["name"] for i in range(len(dataset))] == ["0001", "0002"]
        np.testing.assert_array_equal(_uint8(dataset[1]["gt"]), _rgb(sources[1]))
    batch = next(iter(DataLoader(PairedImageFolder(tmp_path / "DIV2K_train_HR", tmp_path / "DIV2K_train_LR_bicubic",
                                                   scale=4, patch_size=16, augment=True), batch_size=2)))
    assert batch["lq"].shape == (2, 3, 4, 4) and batch["gt"].shape == (2, 3, 16, 16)
    assert batch["name"] == ["0001", "0002"]


def test_paired_errors_name_the_problem(tmp_path, set5_x4):
    _make_div2k(tmp_path, set5_x4)
    write_image(tmp_path / "DIV2K_train_HR" / "0003.png", np.zeros((40, 40, 3), np.float32))
    with pytest.raises(ValueError, match="0003.png"):
        PairedImageFolder(tmp_path / "DIV2K_train_HR", tmp_path / "DIV2K_train_LR_bicubic", scale=4)
    # Same-name folders; an LR that is not HR / scale is caught up front from the headers (and, for formats
    # whose header does not say, when the item is loaded).
    lr = read_image(tmp_path / "DIV2K_train_LR_bicubic" / "X4" / "0001x4.png").rgb
    write_image(tmp_path / "lr_same_names" / "0001.png", lr)
    write_image(tmp_path / "hr_same_names" / "0001.png", read_image(tmp_path / "DIV2K_train_HR" / "0001.png").rgb)
    assert PairedImageFolder(tmp_path / "hr_same_names", tmp_path / "lr_same_names", scale=4)[0]["name"] == "0001"
    with pytest.raises(ValueError, match=r"HR 0001.png is 512x512 and LR 0001.png is 128x128 \(x4\), but the model is x2"):
        PairedImageFolder(tmp_path / "hr_same_names", tmp_path / "lr_same_names", scale=2)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        PairedImageFolder(tmp_path / "nowhere", scale=4)
    with pytest.raises(ValueError, match="patch_size"):
        PairedImageFolder(set5_x4, scale=4, patch_size=30)
    with pytest.raises(ValueError, match="smaller than"):
        PairedImageFolder(set5_x4, scale=4, patch_size=600)[0]


def test_hr_only_bicubic_matches_matlab_downscaling(t91):
    dataset = HROnlyFolder(t91, "bicubic", scale=3)
    assert len(dataset) == 91
    item = dataset[0]
    hr = _rgb(sorted(t91.glob("*.png"))[0])
    hr = hr[: hr.shape[0] // 3 * 3, : hr.shape[1] // 3 * 3]
    np.testing.assert_array_equal(_uint8(item["gt"]), hr)
    np.testing.assert_array_equal(_uint8(item["lq"]), imresize(hr, 1 / 3))
    train = HROnlyFolder(t91, "bicubic", scale=3, patch_size=48, augment=True, seed=1)
    patch = train[5]
    assert patch["lq"].shape == (3, 16, 16) and patch["gt"].shape == (3, 48, 48)
    np.testing.assert_array_equal(_uint8(patch["lq"]), imresize(_uint8(patch["gt"]), 1 / 3))
    torch.testing.assert_close(train[5]["gt"], patch["gt"], rtol=0, atol=0)


def test_hr_only_noise_is_seeded_per_item(t91):
    sigma = 25
    dataset = HROnlyFolder(t91, "noise", sigma=sigma, seed=0)
    first, repeat, second = dataset[0], dataset[0], dataset[1]
    torch.testing.assert_close(first["lq"], repeat["lq"], rtol=0, atol=0)
    noise = (first["lq"] - first["gt"]).numpy()
    assert abs(noise.std() * 255 - sigma) < 0.02 * sigma and abs(noise.mean() * 255) < 0.5
    # Noise is independent across colour channels (not one grey noise image).
    assert abs(np.corrcoef(noise[0].ravel(), noise[1].ravel())[0, 1]) < 0.05
    other = (second["lq"] - second["gt"]).numpy()
    assert not np.allclose(noise[:, :10, :10], other[:, :10, :10])
    reseeded = HROnlyFolder(t91, "noise", sigma=sigma, seed=1)[0]
    assert not torch.equal(reseeded["lq"], first["lq"])


def test_hr_only_jpeg(t91):
    strong = HROnlyFolder(t91, "jpeg", quality=10)[2]
    mild = HROnlyFolder(t91, "jpeg", quality=90)[2]
    hr = _rgb(sorted(t91.glob("*.png"))[2])
    ok, encoded = cv2.imencode(".jpg", hr[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 10])
    np.testing.assert_array_equal(_uint8(strong["lq"]), cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1])
    error_strong = (strong["lq"] - strong["gt"]).abs().mean()
    error_mild = (mild["lq"] - mild["gt"]).abs().mean()
    assert 0 < error_mild < error_strong


def test_hr_only_argument_errors(t91):
    with pytest.raises(ValueError, match="sigma"):
        HROnlyFolder(t91, "noise")
    with pytest.raises(ValueError, match="quality"):
        HROnlyFolder(t91, "jpeg", quality=0)
    with pytest.raises(ValueError, match="scale must be 1"):
        HROnlyFolder(t91, "noise", sigma=15, scale=2)
    with pytest.raises(ValueError, match="degradation"):
        HROnlyFolder(t91, "blur")


def test_hr_only_selects_clean_images_by_name(set5_x4, t91):
    # Set5's image_SRF_4 holds *_HR and *_LR pairs: only the HR images are clean images
    dataset = HROnlyFolder(set5_x4, "noise", sigma=15)
    assert len(dataset) == 5 and all(path.stem.endswith("_HR") for path in dataset.files)
    lr_only = HROnlyFolder(set5_x4, "noise", sigma=15, pattern="*_LR.png")
    assert len(lr_only) == 5 and all(path.stem.endswith("_LR") for path in lr_only.files)
    assert len(HROnlyFolder(t91, "noise", sigma=15)) == len(list(t91.glob("*.png")))  # other folders: every image
    with pytest.raises(ValueError, match=r"no images matching pattern '\*_HR.tif'"):
        HROnlyFolder(set5_x4, "noise", sigma=15, pattern="*_HR.tif")
