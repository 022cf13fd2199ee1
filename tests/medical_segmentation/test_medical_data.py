"""Medical segmentation data (mtp.datasets.medical_segmentation): case discovery for the BraTS 2015/2021/2023
folder layouts, the Decathlon dataset.json and nnU-Net v2 raw folders (tiny volumes written in each layout), label
regions, the MONAI chains, bad input, and one real BraTS 2015 case through the training chain."""
import json
import pickle
import warnings

import numpy as np
import pytest
import torch

from mtp.datasets import medical_segmentation as ms
from mtp.pipelines.medical_segmentation.inference import restore_original_grid

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (12, 12, 8)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def write(path, array, affine=None):
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))
    return path


def volume(seed, shape=SHAPE):
    return np.random.default_rng(seed).normal(5.0, 2.0, shape).astype(np.float32)


def tumour(shape=SHAPE, values=(1, 2, 3, 4)):
    """A label with each value in a small block, inside a brain mask that leaves a 2-voxel border."""
    label = np.zeros(shape, np.uint8)
    for i, v in enumerate(values):
        label[3 + i, 3:7, 2:5] = v
    return label


def brain(shape=SHAPE):
    mask = np.zeros(shape, np.uint8)
    mask[2:-2, 2:-2, 1:-1] = 1
    return mask


def brats2015_case(folder, seed=0, affine=None):
    write(folder / "Flair_subtrMeanDivStd.nii.gz", volume(seed), affine)
    write(folder / "T1c.nii.gz", volume(seed + 1), affine)
    write(folder / "OTMultiClass.nii.gz", tumour(), affine)
    write(folder / "brainmask.nii.gz", brain(), affine)
    return folder


def counts(label, values):
    return int(np.isin(label, values).sum())


# ---------------------------------------------------------------------------------------------- layouts
def test_modality_folder_layout_train_test_and_channel_order(tmp_path):
    for split, names in (("train", ("a", "b")), ("test", ("c",))):
        for i, name in enumerate(names):
            brats2015_case(tmp_path / split / name, seed=i)
    (tmp_path / "test" / "c" / "OTMultiClass.nii.gz").unlink()
    cases = ms.find_cases(tmp_path, "train")
    assert [c["id"] for c in cases] == ["a", "b"]
    assert cases[0]["modalities"] == ["Flair", "T1c"]                       # discovered, sorted
    assert cases[0]["image"][0].endswith("a/Flair_subtrMeanDivStd.nii.gz")
    assert cases[0]["image"][1].endswith("a/T1c.nii.gz")
    assert cases[0]["label"].endswith("OTMultiClass.nii.gz") and cases[0]["mask"].endswith("brainmask.nii.gz")
    ordered = ms.find_cases(tmp_path, "train", layout="brats2015", modalities=["T1c", "Flair"])
    assert ordered[0]["image"][0].endswith("T1c.nii.gz") and ordered[0]["modalities"] == ["T1c", "Flair"]
    test = ms.find_cases(tmp_path, "test")
    assert [c["id"] for c in test] == ["c"] and test[0]["label"] is None
    assert ms.split_cases(cases, "val", 0.5, 0) != ms.split_cases(cases, "train", 0.5, 0)
    assert len(ms.medical_cases(tmp_path, "val")) == 1 and len(ms.medical_cases(tmp_path, "train")) == 1


@pytest.mark.parametrize("layout,sep,mods,expected_order", [
    ("brats2021", "_", ("t1", "t1ce", "t2", "flair"), ("flair", "t1ce", "t1", "t2")),
    ("brats2023", "-", ("t1n", "t1c", "t2w", "t2f"), ("t2f", "t1c", "t1n", "t2w")),
])
def test_brats2021_and_2023_layouts_are_detected(tmp_path, layout, sep, mods, expected_order):
    for case in ("Case_001", "Case_002"):
        for i, m in enumerate(mods):
            write(tmp_path / case / f"{case}{sep}{m}.nii.gz", volume(i))
        write(tmp_path / case / f"{case}{sep}seg.nii.gz", tumour(values=(1, 2, 3)))
    assert ms.detect_folder_layout(tmp_path / "Case_001") == layout
    cases = ms.find_cases(tmp_path)
    assert [c["id"] for c in cases] == ["Case_001", "Case_002"]
    assert tuple(c.split(sep)[-1].split(".")[0] for c in cases[0]["image"]) == expected_order
    assert cases[1]["label"].endswith(f"Case_002{sep}seg.nii.gz") and "mask" not in cases[0]
    assert ms.find_cases(tmp_path, layout=layout) == cases


def decathlon(tmp_path, channels=2, test=True):
    root = tmp_path / "Task01_BrainTumour"
    entries = []
    for i in range(2):
        write(root / "imagesTr" / f"BRATS_00{i}.nii.gz", np.stack([volume(i + c) for c in range(channels)], -1))
        write(root / "labelsTr" / f"BRATS_00{i}.nii.gz", tumour(values=(1, 2, 3)))
        entries.append({"image": f"./imagesTr/BRATS_00{i}.nii.gz", "label": f"./labelsTr/BRATS_00{i}.nii.gz"})
    write(root / "imagesTs" / "BRATS_900.nii.gz", np.stack([volume(9 + c) for c in range(channels)], -1))
    meta = {"name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w"}, "numTraining": 2,
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
            "training": entries, "test": ["./imagesTs/BRATS_900.nii.gz"] if test else []}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_decathlon_dataset_json(tmp_path):
    root = decathlon(tmp_path)
    assert ms.detect_layout(root) == "decathlon"
    cases = ms.find_cases(root)
    assert [c["id"] for c in cases] == ["BRATS_000", "BRATS_001"]
    assert cases[0]["modalities"] == ["FLAIR", "T1w"] and len(cases[0]["image"]) == 1
    test = ms.find_cases(root / "dataset.json", "test")
    assert test[0]["id"] == "BRATS_900" and test[0]["label"] is None
    assert ms.decathlon_labels(root)[3] == "enhancing tumour"
    item = ms.MedicalSegmentationDataset(cases, ms.evaluation_transforms(regions="msd_brain_tumour"))[0]
    assert item["image"].shape[0] == 2 and item["label"].shape[0] == 3            # 4D file -> channels first
    label = tumour(values=(1, 2, 3))
    assert [int(s) for s in item["label"].sum((1, 2, 3))] == [counts(label, v) for v in ((1, 2, 3), (2, 3), (3,))]


def nnunet(tmp_path, regions=True, num_training=2):
    root = tmp_path / "Dataset137_BraTS2021"
    for i in range(2):
        for c in range(2):
            write(root / "imagesTr" / f"BraTS_{i:03d}_{c:04d}.nii.gz", volume(i + c))
        write(root / "labelsTr" / f"BraTS_{i:03d}.nii.gz", tumour(values=(1, 2, 3)))
    for c in range(2):
        write(root / "imagesTs" / f"BraTS_900_{c:04d}.nii.gz", volume(c))
    labels = ({"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}
              if regions else {"background": 0, "edema": 1, "non-enhancing": 2, "enhancing": 3})
    meta = {"channel_names": {"0": "T1", "1": "FLAIR"}, "labels": labels, "numTraining": num_training,
            "file_ending": ".nii.gz", **({"regions_class_order": [1, 2, 3]} if regions else {})}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_nnunet_raw_folder_and_region_labels(tmp_path):
    root = nnunet(tmp_path)
    assert ms.detect_layout(root) == "nnunet"
    cases = ms.find_cases(root)
    assert [c["id"] for c in cases] == ["BraTS_000", "BraTS_001"] and cases[0]["modalities"] == ["T1", "FLAIR"]
    assert [p.rsplit("/", 1)[1] for p in cases[1]["image"]] == ["BraTS_001_0000.nii.gz", "BraTS_001_0001.nii.gz"]
    test = ms.find_cases(root, "test")
    assert [c["id"] for c in test] == ["BraTS_900"] and test[0]["label"] is None
    classes, regions = ms.nnunet_label_convention(root)
    assert classes is None and regions == {"whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)}
    classes, regions = ms.nnunet_label_convention(nnunet(tmp_path / "plain", regions=False))
    assert classes == {"background": 0, "edema": 1, "non-enhancing": 2, "enhancing": 3} and regions == {}
    ds = ms.segmentation_dataset(root, "val", regions="nnunet", pixdim=None)
    assert ds[0]["label"].shape[0] == 3


def test_nnunet_errors_name_the_file(tmp_path):
    root = nnunet(tmp_path, num_training=3)
    with pytest.raises(ms.MedicalImageError, match=r"dataset.json: numTraining is 3, but .*labelsTr holds 2"):
        ms.find_cases(root)
    root = nnunet(tmp_path / "b")
    (root / "imagesTr" / "BraTS_001_0001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"channel 1 \('FLAIR'\) of case BraTS_001 is missing: expected "
                                                r"BraTS_001_0001.nii.gz"):
        ms.find_cases(root)


def test_nnunet_generated_folds_partition_the_sorted_cases():
    ids = [f"case_{i:02d}" for i in (7, 3, 11, 0, 5, 9, 1, 2, 8, 4, 6, 10)]
    folds = ms.nnunet_folds(ids)
    assert len(folds) == 5 and folds == ms.nnunet_folds(sorted(ids))            # the input order does not matter
    vals = [i for f in folds for i in f["val"]]
    assert sorted(vals) == sorted(ids) and [len(f["val"]) for f in folds] == [3, 3, 2, 2, 2]
    for f in folds:
        assert sorted(f["train"] + f["val"]) == sorted(ids)
    assert folds[0]["val"] != sorted(ids)[:3]                                    # shuffled (seed 12345), not blocks
    with pytest.raises(ValueError, match="needs at least 5"):
        ms.nnunet_folds(ids[:4])


def test_fold_from_splits_final_json_beside_dataset_json(tmp_path):
    root = nnunet(tmp_path)
    (root / "splits_final.json").write_text(json.dumps([{"train": ["BraTS_000"], "val": ["BraTS_001"]},
                                                        {"train": ["BraTS_001"], "val": ["BraTS_000"]}]))
    assert [c["id"] for c in ms.medical_cases(root, "val", fold=0)] == ["BraTS_001"]
    assert [c["id"] for c in ms.medical_cases(root, "train", fold=1)] == ["BraTS_001"]
    ds = ms.segmentation_dataset(root, "val", regions="nnunet", pixdim=None, val_fraction=0, fold=1)
    assert [c["id"] for c in ds.cases] == ["BraTS_000"]
    with pytest.raises(ValueError, match="fold 2: .*splits_final.json has folds 0..1"):
        ms.medical_cases(root, "train", fold=2)
    other = tmp_path / "splits.json"
    other.write_text(json.dumps([{"train": ["BraTS_000", "BraTS_007"], "val": ["BraTS_001"]}]))
    with pytest.raises(ms.MedicalImageError, match="splits.json: fold 0 names case 'BraTS_007'"):
        ms.medical_cases(root, "train", fold=0, splits_file=other)
    other.write_text(json.dumps({"train": [], "val": []}))
    with pytest.raises(ms.MedicalImageError, match="splits.json: expected a list"):
        ms.medical_cases(root, "train", fold=0, splits_file=other)
    (root / "splits_final.json").unlink()
    with pytest.raises(ValueError, match="2 training case.*needs at least 5"):
        ms.medical_cases(root, "train", fold=0)


# ---------------------------------------------------------------------------------------------- labels
def test_label_regions_conventions():
    label = torch.tensor([0, 1, 2, 3, 4]).reshape(1, 5, 1, 1)
    regions = ms.labels_to_regions(label, ms.BRATS_REGIONS)
    assert regions.dtype == torch.float32 and regions.shape == (3, 5, 1, 1)
    assert regions[:, :, 0, 0].tolist() == [[0, 1, 1, 1, 1], [0, 1, 0, 1, 1], [0, 0, 0, 0, 1]]
    assert ms.labels_to_regions(label[0], ms.BRATS2023_REGIONS)[:, :, 0, 0].tolist() == \
        [[0, 1, 1, 1, 0], [0, 1, 0, 1, 0], [0, 0, 0, 1, 0]]
    assert ms.labels_to_regions(label, ms.BRATS2021_REGIONS)[2, :, 0, 0].tolist() == [0, 0, 0, 0, 1]
    assert ms.labels_to_regions(label, {"tumour": (1, 2)})[:, :, 0, 0].tolist() == [[0, 1, 1, 0, 0]]


# ---------------------------------------------------------------------------------------------- chains
def test_training_chain_patches_regions_and_class_map(tmp_path):
    cases = ms.find_cases(brats2015_case(tmp_path / "a", affine=LPS).parent)
    ds = ms.MedicalSegmentationDataset(cases, ms.training_transforms((8, 8, 8), has_mask=True, num_samples=2),
                                       seed=0)
    items = ds[0]
    assert isinstance(items, list) and len(items) == 2 and items[0]["id"] == "a"
    assert items[0]["image"].shape == (2, 8, 8, 8) and items[0]["image"].dtype == torch.float32
    assert items[0]["label"].shape == (3, 8, 8, 8) and set(items[0]["label"].unique().tolist()) <= {0.0, 1.0}
    wt, tc, et = items[0]["label"]
    assert bool((et <= tc).all() and (tc <= wt).all())                       # nested regions
    batch = ds.collate([items])
    assert batch["image"].shape == (2, 2, 8, 8, 8)
    plain = ms.MedicalSegmentationDataset(cases, ms.training_transforms((8, 8, 8), regions=None), seed=0)[0]
    assert plain["label"].shape == (1, 8, 8, 8) and plain["label"].dtype == torch.int64
    assert pickle.loads(pickle.dumps(ds)).transform is not None          # DataLoader workers can take it


def test_evaluation_chain_normalises_in_the_mask_and_inverts_to_the_file_grid(tmp_path):
    case = brats2015_case(tmp_path / "a", affine=LPS)
    cases = ms.find_cases(case.parent)
    transform = ms.evaluation_transforms(has_mask=True)
    item = ms.MedicalSegmentationDataset(cases, transform)[0]
    inside = brain().astype(bool)
    assert item["image"].shape == (2, 8, 8, 6)                                # cropped to the brain mask
    for c in range(2):
        values = item["image"][c][item["image"][c] != 0]
        assert values.numel() == inside.sum()
        assert abs(float(values.mean())) < 1e-5 and abs(float(values.std(unbiased=False)) - 1) < 1e-4
    label = tumour()
    assert [int(s) for s in item["label"].sum((1, 2, 3))] == [counts(label, v) for v in ms.BRATS_REGIONS.values()]
    back = restore_original_grid(item["label"], item["image"], cases[0]["image"][0], transform=transform)
    assert back.shape == (3, *SHAPE)
    assert np.array_equal(back[0].astype(bool), np.isin(label, (1, 2, 3, 4)))   # LPS->RAS and crop undone


def test_resampling_without_a_mask_and_mixed_masks(tmp_path):
    brats2015_case(tmp_path / "a")
    (brats2015_case(tmp_path / "b", seed=2) / "brainmask.nii.gz").unlink()
    cases = ms.find_cases(tmp_path)
    assert "mask" in cases[0] and "mask" not in cases[1]
    transform = ms.evaluation_transforms(pixdim=(2.0, 2.0, 2.0), has_mask=False, crop_foreground=False)
    ds = ms.MedicalSegmentationDataset(cases, transform)
    items = [ds[0], ds[1]]
    assert all(set(item) == {"image", "label", "id"} for item in items)       # a mask not asked for is dropped
    assert items[0]["image"].shape == (2, 6, 6, 4) and items[1]["label"].shape == (3, 6, 6, 4)
    assert np.allclose(items[0]["image"].affine.diagonal()[:3].numpy(), 2.0)
    assert restore_original_grid(items[1]["label"], items[1]["image"], cases[1]["image"][0],
                                 transform=transform).shape == (3, *SHAPE)


def test_registered_dataset_builds(tmp_path):
    from mtp.registry import DATASETS

    for name in ("a", "b"):
        brats2015_case(tmp_path / "train" / name, seed=len(name))
    entry = DATASETS.get("medical_folders")
    assert "medical_segmentation" in entry.get("tasks")
    train = entry.load()(tmp_path, split="train", patch_size=(8, 8, 8), seed=0, **entry.kwargs)
    val = entry.load()(tmp_path, split="val", **entry.kwargs)
    assert len(train) == 1 and len(val) == 1 and train[0]["image"].shape == (2, 8, 8, 8)
    assert val[0]["label"].shape[0] == 3


# ---------------------------------------------------------------------------------------------- bad input
def one_case(tmp_path, **replace):
    folder = brats2015_case(tmp_path / "a")
    for name, array in replace.items():
        affine = array.pop("affine") if isinstance(array, dict) else None
        write(folder / name, array["data"] if isinstance(array, dict) else array, affine)
    return ms.MedicalSegmentationDataset(ms.find_cases(tmp_path), ms.evaluation_transforms(has_mask=True))


def test_2d_image_is_refused(tmp_path):
    ds = one_case(tmp_path, **{"T1c.nii.gz": volume(0, (12, 12))})
    with pytest.raises(ms.MedicalImageError, match=r"T1c.nii.gz: shape \(12, 12\); expected a 3D volume.*2D"):
        ds[0]


def test_label_of_another_shape_or_affine_is_refused(tmp_path):
    ds = one_case(tmp_path, **{"OTMultiClass.nii.gz": np.zeros((12, 12, 9), np.uint8)})
    with pytest.raises(ms.MedicalImageError, match=r"OTMultiClass.nii.gz: label shape \(12, 12, 9\) differs from "
                                                   r".*Flair_subtrMeanDivStd.nii.gz \(12, 12, 8\)"):
        ds[0]
    shifted = np.eye(4)
    shifted[:3, 3] = 5
    ds = one_case(tmp_path / "b", **{"OTMultiClass.nii.gz": {"data": tumour(), "affine": shifted}})
    with pytest.raises(ms.MedicalImageError, match=r"OTMultiClass.nii.gz: label affine differs from .*Flair"):
        ds[0]


def test_missing_modality_names_the_case_and_pattern(tmp_path):
    brats2015_case(tmp_path / "a")
    (brats2015_case(tmp_path / "b") / "T1c.nii.gz").unlink()
    with pytest.raises(ms.MedicalImageError, match=r"/b: no file for the modality 'T1c' \(expected T1c_\*.nii.gz "
                                                   r"or T1c.nii.gz\); the folder holds .*Flair"):
        ms.find_cases(tmp_path)
    bad = tmp_path / "c" / "x"
    write(bad / "x_flair.nii.gz", volume(0))
    with pytest.raises(ms.MedicalImageError, match=r"/x: no modality 't1ce' file x_t1ce.nii.gz"):
        ms.find_cases(tmp_path / "c")


def test_corrupt_and_truncated_files_are_named(tmp_path):
    ds = one_case(tmp_path)
    flair = tmp_path / "a" / "T1c.nii.gz"
    data = flair.read_bytes()
    flair.write_bytes(data[: int(len(data) * 0.6)])             # header intact, voxel data cut short
    with pytest.raises(ms.MedicalImageError, match=r"T1c.nii.gz: voxel data cannot be read.*truncated or corrupt"):
        ds[0]
    flair.write_bytes(b"not a nifti file at all" * 10)
    with pytest.raises(ms.MedicalImageError, match=r"T1c.nii.gz: not a readable NIfTI file"):
        ds[0]


def test_nan_intensities_are_refused(tmp_path):
    image = volume(3)
    image[4, 4, 4] = np.nan
    ds = one_case(tmp_path, **{"T1c.nii.gz": image})
    with pytest.raises(ms.MedicalImageError, match=r"T1c.nii.gz: 1 voxel\(s\) are NaN or infinite in modality T1c"):
        ds[0]
    ds = one_case(tmp_path / "b", **{"OTMultiClass.nii.gz": tumour().astype(np.float32) * 0.5})
    with pytest.raises(ms.MedicalImageError, match=r"OTMultiClass.nii.gz: label values must be integers"):
        ds[0]


def test_decathlon_json_naming_a_missing_file(tmp_path):
    root = decathlon(tmp_path)
    (root / "labelsTr" / "BRATS_001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"dataset.json: training\[1\].label names "
                                                r"./labelsTr/BRATS_001.nii.gz, which does not exist"):
        ms.find_cases(root)


def test_constant_intensity_warns_and_empty_label_passes(tmp_path):
    ds = one_case(tmp_path, **{"T1c.nii.gz": np.full(SHAPE, 7.0, np.float32),
                               "OTMultiClass.nii.gz": np.zeros(SHAPE, np.uint8)})
    with pytest.warns(ms.ConstantIntensityWarning, match=r"T1c.nii.gz: modality T1c has one intensity \(7.0\)"):
        item = ds[0]
    assert bool(torch.isfinite(item["image"]).all()) and float(item["image"][1].abs().max()) == 0.0
    assert float(item["label"].sum()) == 0.0
    train = ms.MedicalSegmentationDataset(ds.cases, ms.training_transforms((8, 8, 8), has_mask=True), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                      # MONAI warns that no foreground patch can be drawn
        patch = train[0]
    assert patch["label"].shape == (3, 8, 8, 8) and float(patch["label"].sum()) == 0.0


# ---------------------------------------------------------------------------------------------- real data
def test_real_brats2015_case_through_the_training_chain(data_dir):
    import nibabel as nib

    from tests.conftest import need

    root = need(data_dir / "medical" / "brats2015_deepmedic")
    cases = [c for c in ms.find_cases(root, "train") if c["id"] == "brats_2013_pat0005_1"]
    assert cases and cases[0]["modalities"] == ["Flair", "T1c"] and "mask" in cases[0]
    ds = ms.MedicalSegmentationDataset(cases, ms.training_transforms((32, 32, 32), has_mask=True, neg=0.0), cache=True,
                                       seed=0)
    item = ds[0]
    assert item["image"].shape == (2, 32, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"].shape == (3, 32, 32, 32) and float(item["label"][0].sum()) > 0   # neg=0: centred on tumour
    whole = ds.prepared(0)                                   # the cached deterministic part: the whole brain
    mask = np.asarray(nib.load(cases[0]["mask"]).dataobj) > 0
    for c in range(2):
        values = whole["image"][c][whole["image"][c] != 0]
        assert values.numel() == mask.sum()                  # z-scored inside the brain mask, 0 outside
        assert abs(float(values.mean())) < 1e-3 and abs(float(values.std()) - 1) < 1e-3
    label = np.asarray(nib.load(cases[0]["label"]).dataobj)
    assert [int(s) for s in whole["label"].sum((1, 2, 3))] == [counts(label, v) for v in ms.BRATS_REGIONS.values()]


def test_random_patch_sampling_and_whole_volume_intensity_augmentation(tmp_path):
    brats2015_case(tmp_path / "train" / "a", seed=0)
    data = ms.segmentation_dataset(tmp_path, "train", patch_size=(8, 8, 4), num_samples=3, sampling="random",
                                   intensity_channel_wise=False, val_fraction=0.0, seed=0)
    patches = data[0]
    assert len(patches) == 3 and all(p["image"].shape == (2, 8, 8, 4) for p in patches)
    names = [type(t).__name__ for t in data.transform.transforms]
    assert "RandSpatialCropSamplesd" in names and "RandCropByPosNegLabeld" not in names
    with pytest.raises(ValueError, match="sampling"):
        ms.training_transforms(sampling="centre")


def test_affine_and_gamma_augmentation_move_image_and_label_together(tmp_path):
    shape = (24, 24, 16)
    label = np.zeros(shape, np.uint8)
    label[8:16, 8:16, 5:11] = 2                                     # oedema: WT only
    flair = (1.0 + 4.0 * (label > 0) + np.random.default_rng(0).normal(0, 0.05, shape)).astype(np.float32)
    folder = tmp_path / "train" / "a"
    write(folder / "Flair.nii.gz", flair)
    write(folder / "T1c.nii.gz", volume(1, shape))
    write(folder / "OTMultiClass.nii.gz", label)
    cases = ms.find_cases(tmp_path, "train")

    def patch(**kwargs):
        chain = ms.training_transforms((16, 16, 12), flip_prob=0.0, intensity_prob=0.0, neg=0.0, **kwargs)
        return ms.MedicalSegmentationDataset(cases, chain, seed=3)[0]

    plain, moved = patch(), patch(affine_prob=1.0, rotate_degrees=30.0, scale_range=0.2)
    assert moved["image"].shape == (2, 16, 16, 12) and moved["label"].shape == (3, 16, 16, 12)
    assert set(moved["label"].unique().tolist()) <= {0.0, 1.0}     # nearest: the label stays binary
    assert not torch.equal(moved["label"], plain["label"])
    # the rotated image still marks the rotated label: image and label took the same affine
    bright = moved["image"][0] > float(moved["image"][0].max()) / 2
    assert float((bright == (moved["label"][0] > 0)).float().mean()) > 0.95
    contrast = patch(gamma_prob=1.0, gamma_range=(2.0, 2.0))["image"]
    assert not torch.allclose(contrast, plain["image"])
    assert abs(float(contrast.mean() - plain["image"].mean())) < 0.02   # retain_stats (a gamma of 2 alone moves
    assert abs(float(contrast.std() - plain["image"].std())) < 0.02     # the mean by more than 0.5 here)
    with pytest.raises(ValueError, match="affine_prob"):
        ms.training_transforms(affine_prob=1.5)
    with pytest.raises(ValueError, match="gamma_range"):
        ms.training_transforms(gamma_range=(0.0, 1.0))
