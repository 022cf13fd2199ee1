"""Sliding-window inference (against a whole-volume forward), the memory plan and its bound, mirroring TTA, the
round trip back to the original grid of a non-RAS anisotropic NIfTI, the NIfTI writer, and one real BraTS case
end to end through a tiny random model."""
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch

from mtp.pipelines.medical_segmentation.inference import MiB, mirror_axes, plan_stitching, restore_original_grid, \
    sliding_window_memory, sliding_window_predict, write_nifti

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*labels.*:FutureWarning")]  # MONAI's Orientation default notice


def conv(cin=2, cout=3, kernel=3, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Conv3d(cin, cout, kernel, padding=kernel // 2).eval()


def whole(model, x):
    with torch.no_grad():
        return model(x[None])[0]


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("roi,overlap,batch", [((8, 8, 8), 0.5, 1), ((8, 6, 5), 0.25, 3), (16, 0.0, 2)])
def test_pointwise_model_tiled_equals_whole(mode, roi, overlap, batch):
    # a 1x1x1 model has no context, so any tiling and any blend gives the whole-volume output
    model, x = conv(kernel=1), torch.randn(2, 20, 17, 9)
    out = sliding_window_predict(model, x, roi, overlap=overlap, mode=mode, sw_batch_size=batch, activation=None)
    assert out.shape == (3, 20, 17, 9) and out.dtype == torch.float32
    torch.testing.assert_close(out, whole(model, x), rtol=1e-5, atol=1e-5)


def test_window_covering_the_volume_equals_whole_and_softmax():
    # a 3x3x3 model with one window larger than the volume: MONAI's zero padding is the convolution's own
    model, x = conv(kernel=3), torch.randn(2, 10, 7, 5)
    out = sliding_window_predict(model, x, (12, 12, 12), mode="constant", activation=None)
    torch.testing.assert_close(out, whole(model, x), rtol=1e-5, atol=1e-5)
    probs = sliding_window_predict(model, x, (12, 12, 12), mode="constant")
    torch.testing.assert_close(probs, torch.softmax(whole(model, x), 0), rtol=1e-5, atol=1e-6)
    sig = sliding_window_predict(model, x, (12, 12, 12), mode="constant", activation="sigmoid")
    torch.testing.assert_close(sig, torch.sigmoid(whole(model, x)), rtol=1e-5, atol=1e-6)


def test_constant_mode_with_overlap_averages_windows_where_they_are_exact():
    # 3x3x3 model, windows of 8 along x only (y, z whole), overlap 0.5: stride 4, windows at x = 0, 4, 8, 12.
    # Voxels at least one voxel inside every window covering them are exact (and those at the volume's ends,
    # where the window border is the volume's); the others see a window's zero padding.
    model, x = conv(kernel=3), torch.randn(2, 20, 6, 5)
    out = sliding_window_predict(model, x, (8, 6, 5), overlap=0.5, mode="constant", activation=None)
    ref = whole(model, x)
    exact = [i for i in range(20) if all(0 < i - s < 7 for s in (0, 4, 8, 12) if s <= i < s + 8)]
    assert exact == [1, 2, 3, 5, 6, 9, 10, 13, 14, 16, 17, 18]
    exact += [0, 19]
    torch.testing.assert_close(out[:, exact], ref[:, exact], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[:, 4], ref[:, 4], atol=1e-4)  # border voxels are not, as expected


@pytest.mark.parametrize("buffer_dim", [0, -1])
def test_buffered_stitching_matches_unbuffered(buffer_dim):
    # MONAI's buffer_steps (rows of windows summed on the model's device first) changes where sums happen only
    model, x = conv(kernel=3), torch.randn(2, 20, 17, 9)
    plain = sliding_window_predict(model, x, (8, 8, 6), overlap=0.5, activation=None)
    for steps in (1, 2):
        buffered = sliding_window_predict(model, x, (8, 8, 6), overlap=0.5, activation=None, buffer_steps=steps,
                                          buffer_dim=buffer_dim, sw_batch_size=3)
        torch.testing.assert_close(buffered, plain, rtol=1e-5, atol=1e-5)


def test_out_channels_from_the_model_or_one_forward():
    class Tagged(torch.nn.Conv3d):
        out_channels = 3

    x = torch.randn(2, 12, 10, 9)
    probed = sliding_window_predict(conv(kernel=1), x, 8, activation=None)
    torch.manual_seed(0)
    tagged = Tagged(2, 3, 1).eval()
    torch.testing.assert_close(sliding_window_predict(tagged, x, 8, activation=None), probed)
    with pytest.raises(ValueError, match="expected 4"):
        sliding_window_predict(conv(kernel=1), x, 8, out_channels=4)


def test_memory_bound_formula_and_plan():
    terms = sliding_window_memory((4, 240, 240, 155), 5, 128, sw_batch_size=2)
    voxels, window = 240 * 240 * 155, 128 ** 3
    assert terms["output"] == 5 * voxels * 4 and terms["count_map"] == voxels * 4
    assert terms["windows"] == 2 * window * (4 + 4 * 4 + 2 * 5 * 4) and terms["weight_map"] == window * 4
    assert terms["total"] == sum(v for k, v in terms.items() if k != "total")
    twice = sliding_window_memory((4, 480, 480, 310), 5, 128, sw_batch_size=2)
    assert twice["output"] == 8 * terms["output"] and twice["windows"] == terms["windows"]
    half = sliding_window_memory((4, 240, 240, 155), 5, 128, sw_batch_size=2, buffer_dtype=torch.float16)
    assert half["output"] * 2 == terms["output"] and half["windows"] == terms["windows"] - 2 * window * 2
    assert sliding_window_memory((1, 8, 8, 8), 2, 16)["count_map"] == 16 ** 3 * 4  # padded up to the window
    assert sliding_window_memory((4, 240, 240, 155), 5, 128, mirror_tta=True)["mirror"] == window * (4 * 4 + 5 * 4)
    slab = sliding_window_memory((4, 240, 240, 155), 5, 128, buffer_steps=1, buffer_dim=-1)["slab"]
    assert slab == 5 * 240 * 240 * 128 * 4

    full_mib = terms["total"] / MiB
    kw = {"sw_batch_size": 2}
    plan = plan_stitching((4, 240, 240, 155), 5, 128, "cpu", None, **kw)
    assert (plan.dtype, plan.bound_bytes) == (torch.float32, terms["total"])
    assert plan_stitching((4, 240, 240, 155), 5, 128, "cpu", full_mib + 1, **kw).dtype == torch.float32
    small = plan_stitching((4, 240, 240, 155), 5, 128, "cpu", full_mib - 1, **kw)
    assert (small.device, small.dtype, small.bound_bytes) == (torch.device("cpu"), torch.float16, half["total"])
    with pytest.raises(MemoryError, match="budget is 10 MiB"):
        plan_stitching((4, 240, 240, 155), 5, 128, "cpu", 10, **kw)


def test_budget_switches_the_buffer_to_float16_on_cpu():
    model, x = conv(kernel=1), torch.randn(2, 20, 17, 9)
    ref = torch.softmax(whole(model, x), 0)
    full = sliding_window_memory(x.shape, 3, 8, sw_batch_size=1)["total"] / MiB
    out, plan = sliding_window_predict(model, x, 8, mode="gaussian", memory_budget_mib=full * 0.9, return_plan=True)
    assert (plan.device, plan.dtype) == (torch.device("cpu"), torch.float16)
    assert out.dtype == torch.float16 and out.device.type == "cpu"
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=2e-3)  # float16 sums: ~3 significant digits
    out, plan = sliding_window_predict(model, x, 8, memory_budget_mib=full * 1.1, return_plan=True)
    assert out.dtype == plan.dtype == torch.float32
    with pytest.raises(MemoryError):
        sliding_window_predict(model, x, 8, memory_budget_mib=full * 0.1)


def test_mirror_tta():
    assert mirror_axes(False) == [()] and len(mirror_axes(True)) == 8 and mirror_axes([2]) == [(), (2,)]
    assert mirror_axes([0, 2]) == [(), (0,), (2,), (0, 2)]
    # a kernel symmetric along each axis makes the model flip-equivariant: TTA changes nothing
    model = conv(kernel=3)
    with torch.no_grad():
        w = model.weight
        w.copy_((w + w.flip(2)) / 2)
        w.copy_((w + w.flip(3)) / 2)
        w.copy_((w + w.flip(4)) / 2)
    x = torch.randn(2, 16, 12, 10)
    plain = sliding_window_predict(model, x, (8, 8, 8), overlap=0.5, activation=None)
    for axes in (True, [1]):
        tta = sliding_window_predict(model, x, (8, 8, 8), overlap=0.5, activation=None, mirror_tta=axes)
        torch.testing.assert_close(tta, plain, rtol=1e-5, atol=1e-5)
    # an asymmetric kernel is not equivariant: TTA averages f and flip(f(flip(x)))
    model = conv(kernel=3, seed=1)
    tta = sliding_window_predict(model, x, (16, 12, 10), mode="constant", activation=None, mirror_tta=[0])
    expected = (whole(model, x) + whole(model, x.flip(1)).flip(1)) / 2
    torch.testing.assert_close(tta, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def lps_nifti(tmp_path_factory):
    """A label map on a P-L-S oriented 1.5 mm grid with an offset origin (a non-identity, non-RAS affine)."""
    labels = np.zeros((21, 18, 14), np.uint8)
    labels[3:12, 4:9, 2:10] = 1
    labels[8:15, 6:16, 5:12] = 2
    labels[10:13, 2:5, 9:13] = 4
    affine = np.array([[0, -1.5, 0, 20.0], [-1.5, 0, 0, 30.0], [0, 0, 1.5, -10.0], [0, 0, 0, 1]])
    image = nib.Nifti1Image(labels, affine)
    image.header.set_qform(affine, code=1)
    image.header["descrip"] = b"synthetic"
    path = tmp_path_factory.mktemp("nifti") / "labels.nii.gz"
    nib.save(image, path)
    assert nib.aff2axcodes(affine) == ("P", "L", "S")
    return path, labels, affine


def _transforms(dictionary: bool = False):
    from monai.transforms import Compose, CropForeground, CropForegroundd, LoadImage, LoadImaged, Orientation, \
        Orientationd, Spacing, Spacingd

    if dictionary:
        return Compose([LoadImaged("image", image_only=True, ensure_channel_first=True), Orientationd("image", "RAS"),
                        Spacingd("image", (1.0, 1.0, 1.0), mode="bilinear"), CropForegroundd("image", "image",
                                                                                               margin=2)])
    return Compose([LoadImage(image_only=True, ensure_channel_first=True), Orientation("RAS"),
                    Spacing((1.0, 1.0, 1.0), mode="nearest"), CropForeground(margin=2)])


def test_round_trip_to_the_original_grid(lps_nifti):
    path, labels, affine = lps_nifti
    transform = _transforms()
    processed = transform(str(path))  # RAS, 1 mm, cropped: a different grid
    assert processed.shape[1:] != labels.shape and np.allclose(np.diag(processed.affine)[:3], 1.0)
    prediction = processed.as_tensor()  # a "prediction" on the processed grid: the labels themselves
    by_inverse = restore_original_grid(prediction, processed, path, transform=transform)
    by_affine = restore_original_grid(prediction, processed, path)
    assert by_inverse.shape == labels.shape
    np.testing.assert_array_equal(by_inverse, labels)
    np.testing.assert_array_equal(by_affine, labels)
    # (K, ...) probabilities come back as (K, ...), bilinear
    onehot = torch.cat([(prediction == c).float() for c in (0, 1, 2, 4)])
    probs = restore_original_grid(onehot, processed, path, transform=transform, labels=False)
    assert probs.shape == (4, *labels.shape)
    np.testing.assert_array_equal(np.array([0, 1, 2, 4])[probs.argmax(0)], labels)
    # dictionary transforms: the image under its key; the label map inverted with nearest, not the bilinear used
    dtransform = _transforms(dictionary=True)
    data = dtransform({"image": str(path)})
    restored = restore_original_grid(torch.round(data["image"].as_tensor()), data["image"], path, transform=dtransform)
    assert restored.shape == labels.shape and set(np.unique(restored)) <= {0, 1, 2, 4}
    # the wrong file is caught
    other = nib.Nifti1Image(labels, np.diag([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="were these the transforms"):
        restore_original_grid(prediction, processed, other, transform=transform)


def test_write_nifti(lps_nifti, tmp_path):
    path, labels, affine = lps_nifti
    out = write_nifti(labels.astype(np.int64), tmp_path / "seg.nii.gz", path)
    written = nib.load(out)
    assert written.get_data_dtype() == np.uint8 and np.allclose(written.affine, affine)
    assert written.header["descrip"] == b"synthetic" and written.header["qform_code"] == 1
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels)
    with pytest.raises(FileExistsError, match="seg.nii.gz"):
        write_nifti(labels, tmp_path / "seg.nii.gz", path)
    write_nifti(np.zeros_like(labels), tmp_path / "seg.nii.gz", path, overwrite=True)
    assert not np.asarray(nib.load(out).dataobj).any()
    probs = np.random.default_rng(0).random((3, *labels.shape)).astype(np.float32)
    written = nib.load(write_nifti(probs, tmp_path / "probs.nii", path, labels=False))
    assert written.shape == (*labels.shape, 3) and written.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.moveaxis(np.asarray(written.dataobj), -1, 0), probs)
    with pytest.raises(ValueError, match="original grid"):
        write_nifti(labels[:-1], tmp_path / "short.nii.gz", path)
    with pytest.raises(ValueError, match="0-255"):
        write_nifti(labels.astype(np.int64) + 300, tmp_path / "big.nii.gz", path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probs.nii", "seg.nii.gz"]  # no temporary files left


def test_real_brats_case_end_to_end(data_dir, tmp_path):
    """A real BraTS 2015 test case (240x240x155, Flair + T1c) through a tiny random model with 64^3 windows, the
    uint8 NIfTI written on the input's grid, scored against its reference."""
    from mtp.pipelines.medical_segmentation.metrics import BRATS_REGIONS, RegionMetrics

    case = data_dir / "medical" / "brats2015_deepmedic" / "test" / "brats_2013_pat0001_1"
    if not case.is_dir():
        pytest.skip(f"missing {case}")
    flair = nib.load(case / "Flair_subtrMeanDivStd.nii.gz")
    image = torch.from_numpy(np.stack([np.asarray(nib.load(case / f"{m}_subtrMeanDivStd.nii.gz").dataobj,
                                                  dtype=np.float32) for m in ("Flair", "T1c")]))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv3d(4, 5, 1)).eval()
    probs = sliding_window_predict(model, image, 64, overlap=0.25, sw_batch_size=2, mode="gaussian")
    assert probs.shape == (5, 240, 240, 155)
    torch.testing.assert_close(probs.sum(0), torch.ones(240, 240, 155))
    labels = probs.argmax(0).numpy()
    labels[np.asarray(nib.load(case / "brainmask.nii.gz").dataobj) == 0] = 0  # keeps HD95's bounding box small
    out = write_nifti(labels, tmp_path / "seg.nii.gz", flair)
    written = nib.load(out)
    assert written.get_data_dtype() == np.uint8 and np.allclose(written.affine, flair.affine)
    reference = nib.load(case / "OTMultiClass.nii.gz")
    metrics = RegionMetrics(BRATS_REGIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = metrics.update(np.asarray(written.dataobj), np.asarray(reference.dataobj),
                             spacing=reference.header.get_zooms()[:3], case=case.name)
    assert set(row) == {"case", *(f"{r}_{k}" for r in BRATS_REGIONS for k in ("dice", "hd95", "empty"))}
    assert all(0.0 <= row[f"{r}_dice"] <= 1.0 for r in BRATS_REGIONS)
