"""The medical_segmentation pipeline end to end on small BraTS-2015-style cases written with a non-identity
affine: folder runs write class maps on each input's own grid (affine and shape of the input), broken cases are
reported while the rest completes, the recipe flow trains, tests (Dice/HD95 per region, cases.csv) and exports a
model that reloads to the same output."""
import json
import warnings

import numpy as np
import pytest
import torch

from mtp import Pipeline
from mtp.datasets.medical_segmentation import BRATS_REGIONS, labels_to_regions, regions_to_labels
from mtp.pipeline import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (40, 36, 24)
AFFINE = np.array([[-1.2, 0, 0, 30.0], [0, -1.0, 0, 20.0], [0, 0, 1.5, -10.0], [0, 0, 0, 1]])  # LPS, anisotropic


def write(path, array, affine=AFFINE):
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def case(folder, seed):
    """A bright blob in FLAIR (the whole tumour) with an enhancing core brighter in T1c, inside a brain mask."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"))
    centre = np.array([20 + rng.integers(-4, 5), 18 + rng.integers(-4, 5), 12])[:, None, None, None]
    radius = np.sqrt((((grid - centre) * np.array([1.2, 1.0, 1.5])[:, None, None, None]) ** 2).sum(0))
    label = np.where(radius < 8, 2, 0) + np.where(radius < 5, -1, 0) + np.where(radius < 3, 3, 0)  # 2, 1, 4
    mask = np.zeros(SHAPE, np.uint8)
    mask[3:-3, 3:-3, 2:-2] = 1
    flair = rng.normal(0, 0.3, SHAPE) + 2.0 * (label > 0)
    t1c = rng.normal(0, 0.3, SHAPE) + 2.0 * (label == 4)
    write(folder / "Flair_subtrMeanDivStd.nii.gz", (flair * mask).astype(np.float32))
    write(folder / "T1c_subtrMeanDivStd.nii.gz", (t1c * mask).astype(np.float32))
    write(folder / "brainmask.nii.gz", mask)
    write(folder / "OTMultiClass.nii.gz", label.astype(np.uint8))
    return folder


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "brats"
    for split, seeds in (("train", (0, 1)), ("test", (2,))):
        for seed in seeds:
            case(root / split / f"case{seed}", seed)
    return root


def small_pipeline(**options):
    return Pipeline("medical_segmentation", backbone="segresnet", pretrained=False, device="cpu",
                    modalities=["Flair", "T1c"], roi_size=[32, 32, 16], **options)


def test_regions_to_labels_inverts_labels_to_regions():
    label = torch.tensor([0, 1, 2, 3, 4, 2]).view(1, 1, 6).expand(2, 1, 6).clone()
    regions = labels_to_regions(label, BRATS_REGIONS)
    back = regions_to_labels(regions, BRATS_REGIONS)
    # 3 (non-enhancing) is part of TC but not ET: it comes back as TC's own label, 1
    assert back[0, 0].tolist() == [0, 1, 2, 1, 4, 2]
    assert torch.equal(labels_to_regions(back, BRATS_REGIONS), regions)
    with pytest.raises(ValueError, match="one per region"):
        regions_to_labels(regions[:2], BRATS_REGIONS)


def test_folder_run_writes_masks_on_the_input_grid_and_reports_broken_cases(dataset, tmp_path):
    import nibabel as nib

    inputs = tmp_path / "cases"
    for name in ("case0", "case2"):
        src = dataset / ("train" if name == "case0" else "test") / name
        for f in src.iterdir():
            if f.name != "OTMultiClass.nii.gz":
                write(inputs / name / f.name, nib.load(f).get_fdata().astype(np.float32))
    broken = inputs / "broken"
    broken.mkdir()
    (broken / "Flair_subtrMeanDivStd.nii.gz").write_bytes(
        (inputs / "case0" / "Flair_subtrMeanDivStd.nii.gz").read_bytes()[:200])   # truncated
    (broken / "T1c_subtrMeanDivStd.nii.gz").write_bytes((inputs / "case0" / "T1c_subtrMeanDivStd.nii.gz").read_bytes())
    pipe = small_pipeline(probabilities=True, overlay=True)
    out = tmp_path / "masks"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = pipe(inputs, output=out)
    assert not report.ok and [f.input for f in report.failures] == [str(broken)]
    assert "Flair_subtrMeanDivStd" in report.failures[0].error
    for name in ("case0", "case2"):
        seg = nib.load(out / f"{name}_seg.nii.gz")
        assert seg.shape == SHAPE and seg.get_data_dtype() == np.uint8
        np.testing.assert_allclose(seg.affine, AFFINE, atol=1e-5)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}
        assert nib.load(out / f"{name}_prob.nii.gz").shape == SHAPE + (3,)
        assert (out / f"{name}_overlay.png").read_bytes()[:4] == b"\x89PNG"
    first = (out / "case0_seg.nii.gz").read_bytes()
    again = pipe(inputs, output=out)          # done items are skipped, nothing overwritten
    assert (out / "case0_seg.nii.gz").read_bytes() == first and not again.ok


def test_a_one_channel_model_takes_each_file_of_a_folder_as_a_case(dataset, tmp_path):
    import nibabel as nib

    scans = tmp_path / "scans"
    for name in ("a", "b"):
        write(scans / f"{name}.nii.gz", nib.load(dataset / "test" / "case2" / "Flair_subtrMeanDivStd.nii.gz").get_fdata()
              .astype(np.float32))
    pipe = Pipeline("medical_segmentation", backbone="segresnet", pretrained=False, device="cpu",
                    roi_size=[32, 32, 16], backbone_kwargs={"in_channels": 1})
    assert not pipe.is_item_folder(scans) and small_pipeline().is_item_folder(scans)
    report = pipe(scans, output=tmp_path / "masks")
    assert report.ok and sorted(p.name for p in (tmp_path / "masks").glob("*_seg.nii.gz")) == [
        "a_seg.nii.gz", "b_seg.nii.gz"]


def test_wrong_channel_count_is_refused_with_the_case_named(dataset):
    pipe = Pipeline("medical_segmentation", backbone="segresnet", pretrained=False, device="cpu",
                    modalities=["Flair", "T1c"], backbone_kwargs={"in_channels": 3})
    with pytest.raises(InputError, match=r"case2.*2 channel\(s\).*takes 3"):
        pipe(dataset / "test" / "case2")
    with pytest.raises(InputError, match="NIfTI"):
        pipe(dataset / "test" / "case2" / "missing.txt")


def test_recipe_trains_tests_per_region_and_exports_a_model_that_reloads(dataset, tmp_path, monkeypatch):
    from mtp.config import load_recipe
    from mtp.engine import run

    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("segresnet_brats2015", [
        f"data.root={dataset}", "data.kwargs.patch_size=[16,16,16]", "data.kwargs.num_samples=2",
        "data.kwargs.repeats=3", "train.epochs=2", "train.threads=1", "options.roi_size=[32,32,16]",
        "output.name=med_tiny", "train.precision=32-true"])
    result = run(recipe, progress=False)
    metrics = result["metrics"]
    assert metrics["cases"] == 1 and set(BRATS_REGIONS) <= {k[:2] for k in metrics if k.endswith("_dice")}
    assert all(0.0 <= metrics[f"{r}_dice"] <= 1.0 for r in BRATS_REGIONS)
    run_dir = tmp_path / "runs" / "med_tiny"
    rows = (run_dir / "cases.csv").read_text().splitlines()
    assert rows[0].startswith("case,WT_dice,WT_hd95") and rows[1].startswith("case2,") and rows[-1].startswith("mean")
    assert json.loads((run_dir / "metrics.json").read_text())["metrics"] == metrics
    assert (run_dir / "overlays" / "case2.png").read_bytes()[:4] == b"\x89PNG"
    log = (run_dir / "logs" / "metrics.csv").read_text().splitlines()
    assert len(log) >= 3   # a train_loss row per epoch: 3 steps each
    reloaded = Pipeline("medical_segmentation", weights=str(run_dir / "model.safetensors"), device="cpu")
    assert reloaded.config["modalities"] == ["Flair", "T1c"] and reloaded.config["roi_size"] == [32, 32, 16]
    scored = reloaded.evaluate(str(dataset), split="test")
    assert {k: scored[k] for k in metrics if k.endswith("_dice")} == {k: metrics[k] for k in metrics
                                                                       if k.endswith("_dice")}


def test_validation_scores_whole_volumes_by_sliding_window(dataset, tmp_path, monkeypatch):
    from mtp.config import load_recipe
    from mtp.engine import run

    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("segresnet_brats2015", [
        f"data.root={dataset}", "data.kwargs.patch_size=[16,16,16]", "data.kwargs.num_samples=1",
        "data.kwargs.repeats=1", "data.kwargs.val_fraction=0.5", "train.epochs=1", "train.threads=1",
        "options.roi_size=[32,32,16]", "output.name=med_val", "train.precision=32-true"])
    run(recipe, progress=False)
    log = (tmp_path / "runs" / "med_val" / "logs" / "metrics.csv").read_text().splitlines()
    header = log[0].split(",")
    row = next(line.split(",") for line in log[1:] if line.split(",")[header.index("val_dice")])
    assert 0.0 <= float(row[header.index("val_dice")]) <= 1.0 and float(row[header.index("val_loss")]) > 0
    assert (tmp_path / "runs" / "med_val" / "checkpoints" / "best.ckpt").is_file()


def test_dformer_trains_with_deep_supervision_and_segments_through_the_pipeline(dataset):
    from mtp.datasets.medical_segmentation import segmentation_dataset

    pipe = Pipeline("medical_segmentation", backbone="dformer", pretrained=False, device="cpu",
                    modalities=["Flair", "T1c"], roi_size=[32, 32, 32],
                    backbone_kwargs={"embed_dim": 12, "depths": [2, 2, 2, 2], "num_heads": [1, 1, 2, 2],
                                     "patch_size": [2, 2, 2], "group_size": [2, 2, 2]})
    model = pipe.model
    assert model.in_channels == 2 and model.out_channels == 3 and model.do_ds is False
    data = segmentation_dataset(dataset, "train", modalities=["Flair", "T1c"], patch_size=(32, 32, 32),
                                num_samples=1, val_fraction=0.0, seed=0)
    batch = data.collate([data[0]])
    model.train()
    loss = pipe.training_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.do_ds is False
    assert model.final[1][1].weight.grad is not None   # the 1/2-resolution head is supervised
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pipe(dataset / "test" / "case2")
    assert result["labels"].shape == SHAPE
    voxel_ml = 1.2 * 1.0 * 1.5 / 1000
    assert result["volumes_ml"]["WT"] == pytest.approx((result["labels"] > 0).sum() * voxel_ml, abs=1e-3)
    assert result["volumes_ml"]["ET"] == pytest.approx((result["labels"] == 4).sum() * voxel_ml, abs=1e-3)


def test_swinunetr_brats21_recipe_resolves_to_the_official_training():
    """Project-MONAI/research-contributions SwinUNETR/BRATS21 (main.py, data_utils.py, README command)."""
    from mtp.config import load_recipe
    from mtp.registry import BACKBONES

    recipe = load_recipe("swinunetr_brats21")
    backbone = BACKBONES.get(recipe.backbone.name)
    assert backbone.kwargs["feature_size"] == 48 and backbone.kwargs["in_channels"] == 4
    assert backbone.kwargs["patch_merging"] == "legacy"
    train = recipe.train
    assert (train.optimizer, train.lr, train.weight_decay, train.epochs, train.batch_size) == ("adamw", 1e-4, 1e-5,
                                                                                               300, 1)
    assert train.scheduler == "warmup_cosine" and train.scheduler_kwargs == {"warmup_epochs": 50}
    assert recipe.options["roi_size"] == [128, 128, 128] and recipe.options["sw_batch_size"] == 4
    assert recipe.options["overlap"] == 0.5 and recipe.options["loss"] == "dice"
    assert list(recipe.options["regions"]) == ["TC", "WT", "ET"]
    assert recipe.options["modalities"] == ["flair", "t1ce", "t1", "t2"]
    kwargs = recipe.data.kwargs
    assert kwargs["patch_size"] == [128, 128, 128] and kwargs["sampling"] == "random"
    assert kwargs["intensity_channel_wise"] is False



def test_keep_largest_component_clears_the_foreground_away_from_the_largest_lesion(dataset):
    """Region probabilities with a large lesion (WT holding TC and ET) and a small detached WT blob: with
    keep_largest_component only the large lesion, all its regions intact, reaches the mask on the original grid."""
    results = {}
    for keep in (False, True):
        pipe = small_pipeline(keep_largest_component=keep)
        item = pipe.load(dataset / "test" / "case2")
        inputs = pipe.preprocess(item)
        probs = torch.zeros((3,) + tuple(inputs["image"].shape[1:]))
        probs[0, 4:14, 4:14, 4:12] = 1.0          # WT: the lesion
        probs[1, 6:10, 6:10, 6:10] = 1.0          # TC inside it
        probs[2, 7:9, 7:9, 7:9] = 1.0             # ET inside that
        probs[0, -5:-2, -5:-2, -4:-1] = 1.0       # a detached false-positive blob
        results[keep] = pipe.postprocess(probs, item, inputs)["labels"]
    full, kept = (np.asarray(results[k]) for k in (False, True))
    assert set(np.unique(kept)) == {0, 1, 2, 4}
    # the blob is gone and nothing of the lesion is: exactly the blob's voxels differ
    removed = (full > 0) & (kept == 0)
    assert removed.sum() > 0 and ((kept > 0) == ((full > 0) & ~removed)).all()
    assert (full[kept > 0] == kept[kept > 0]).all()
    from scipy import ndimage
    assert ndimage.label(full > 0, structure=np.ones((3, 3, 3)))[1] == 2
    assert ndimage.label(kept > 0, structure=np.ones((3, 3, 3)))[1] == 1


def test_nothing_is_labelled_outside_the_brain_mask(dataset, tmp_path):
    """The chain zeroes inputs outside the brain mask; a prediction there (here every voxel of the processed grid
    at probability 1, a hole cut into the mask) comes back as background on the original grid."""
    import nibabel as nib

    folder = tmp_path / "holed"
    for f in (dataset / "test" / "case2").iterdir():
        write(folder / f.name, np.asarray(nib.load(f).dataobj))
    mask = np.asarray(nib.load(folder / "brainmask.nii.gz").dataobj).copy()
    mask[12:20, 12:20, 6:12] = 0                      # a hole inside the mask's bounding box
    write(folder / "brainmask.nii.gz", mask)
    pipe = small_pipeline()
    item = pipe.load(folder)
    inputs = pipe.preprocess(item)
    labels = np.asarray(pipe.postprocess(torch.ones((3,) + tuple(inputs["image"].shape[1:])), item, inputs)["labels"])
    assert (labels[mask == 0] == 0).all() and (labels[mask > 0] == 4).all()
