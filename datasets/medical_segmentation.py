"""3D medical segmentation data: case discovery for the common on-disk layouts, label conventions (BraTS tumour
regions, nnU-Net region labels) and MONAI dictionary-transform chains for training and evaluation.

A *case* is a plain dict::

    {"id": "BraTS2021_00000", "image": [path, ...], "label": path or None, "modalities": ["flair", ...]}

with an optional ``"mask"`` (a brain mask). ``image`` lists one file per modality in the stated channel order, or
one 4D file whose last axis holds the modalities (the Decathlon's layout; ``modalities`` then names its channels).

Layouts (``find_cases(root, layout="auto")`` picks one from what ``root`` holds):
- ``modality_folder`` (BraTS 2015 as DeepMedic ships it): one folder per case holding ``<Name>_*.nii.gz`` or
  ``<Name>.nii.gz`` per modality (``modalities=["Flair", "T1c"]``; default: every modality found in the first
  case, sorted), the label ``OTMultiClass*.nii.gz`` (``label_name``) and an optional brain mask
  ``brainmask*.nii.gz`` (``mask_name``).
- ``brats2021``: ``<case>/<case>_{flair,t1ce,t1,t2,seg}.nii.gz``; channel order flair, t1ce, t1, t2 (the order of
  MONAI's SwinUNETR BraTS 2021 fold list).
- ``brats2023``: ``<case>/<case>-{t2f,t1c,t1n,t2w,seg}.nii.gz``; channel order t2f, t1c, t1n, t2w (the same
  modalities in the same order).
- ``decathlon``: the Medical Segmentation Decathlon's ``dataset.json`` (``training`` list of ``{image, label}``
  4D NIfTI paths relative to the json's folder, ``modality`` and ``labels`` dicts, ``test`` list of paths).
- ``nnunet``: an nnU-Net v2 raw folder ``DatasetNNN_Name/`` with ``imagesTr/<case>_0000<ending>`` (one file per
  channel, ``_0001`` ...), ``labelsTr/<case><ending>``, ``imagesTs/`` (``labelsTs/`` when present) and a
  ``dataset.json`` with ``channel_names``, ``labels`` (a label may be a list: a region), ``file_ending``,
  ``numTraining``. Only NIfTI endings are read.
Folders with ``train/``, ``val/`` and ``test/`` subfolders of cases give those splits; otherwise (and for the
Decathlon and nnU-Net layouts) validation is a seeded part of the training cases (``val_fraction``, ``val_seed``),
or, with ``fold=k``, fold k of nnU-Net's cross-validation: the folds of a ``splits_final.json`` (``splits_file``,
by default the one beside ``dataset.json`` when there is one; nnU-Net writes it to its preprocessed folder) or,
without one, the folds nnU-Net v2 itself generates (5-fold ``KFold``, shuffled with seed 12345, over the sorted
case ids).

Labels: ``regions`` maps region names to the label values they join, e.g. ``BRATS_REGIONS`` (whole tumour
{1,2,3,4}, tumour core {1,3,4}, enhancing {4}); ``labels_to_regions`` turns a class map into one binary channel
per region (channels overlap). With ``regions=None`` the label stays a class map.

Chains (``training_transforms``, ``evaluation_transforms``): LoadImaged (NIfTI via nibabel, channel first) ->
checks (``CheckLoadedd``) -> Orientationd RAS -> Spacingd (``pixdim``; bilinear image, nearest label/mask; None
keeps the file's grid) -> MaskIntensityd by the brain mask when the case has one -> CropForegroundd (on the mask,
else the nonzero voxels of any channel) -> NormalizeIntensityd(nonzero, channel_wise): z-score over the
nonzero (brain) voxels, background stays 0 -> label to region channels. Training then pads to the patch, samples
``num_samples`` patches centred on foreground with probability pos/(pos+neg) (RandCropByPosNegLabeld), flips
each axis with ``flip_prob`` and scales/shifts intensities. The evaluation chain is deterministic and invertible:
``mtp.pipelines.medical_segmentation.inference.restore_original_grid`` maps a prediction on its grid back onto
the original file's grid.

Items are dicts: ``image`` (C, X, Y, Z) float32 MetaTensor (its ``meta`` holds the affine, file name and the
applied transforms), ``label`` (R, X, Y, Z) float32 region channels, or (1, X, Y, Z) int64 class map with
``regions=None``, and ``id``.

Bad input (``MedicalImageError``, a ValueError naming the file and what was expected): a missing modality file
(naming the case folder, the pattern and the files present), a 2D image, modalities or label of different shapes
or affines, a corrupt or truncated file, NaN or infinite intensities, a label with non-integer values, a
dataset.json naming a missing file (FileNotFoundError naming the json and the entry). A modality of constant
intensity warns (``ConstantIntensityWarning``) and normalises to 0; an empty label passes (all-zero region
channels; patch sampling then draws background patches, with MONAI's warning).
"""
from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mtp.files import resolve_data_path

NIFTI_ENDINGS = (".nii.gz", ".nii")
LAYOUTS = ("auto", "modality_folder", "brats2015", "brats2021", "brats2023", "decathlon", "nnunet")

# Label conventions: region name -> label values joined in it.
BRATS_REGIONS = {"WT": (1, 2, 3, 4), "TC": (1, 3, 4), "ET": (4,)}       # BraTS 2012-2016 (1 necrosis, 2 oedema,
#                                                                          3 non-enhancing, 4 enhancing)
BRATS2021_REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}         # BraTS 2017-2021 (3 merged into 1)
BRATS2023_REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}         # BraTS 2023 (enhancing relabelled 3)
MSD_BRAIN_TUMOUR_REGIONS = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}  # Decathlon Task01 (1 oedema, 2 non-enh.)
LABEL_CONVENTIONS = {"brats2015": BRATS_REGIONS, "brats2021": BRATS2021_REGIONS, "brats2023": BRATS2023_REGIONS,
                     "msd_brain_tumour": MSD_BRAIN_TUMOUR_REGIONS}

# Named BraTS layouts: channel order, separator between case id and modality, label suffix.
BRATS_FILE_LAYOUTS = {
    "brats2021": {"modalities": ("flair", "t1ce", "t1", "t2"), "sep": "_", "label": "seg"},
    "brats2023": {"modalities": ("t2f", "t1c", "t1n", "t2w"), "sep": "-", "label": "seg"},
}
MODALITY_FOLDER_DEFAULTS = {"label_name": "OTMultiClass", "mask_name": "brainmask"}


class MedicalImageError(ValueError):
    """An image, label or case the loaders cannot use; the message names the file and what was expected."""


class ConstantIntensityWarning(UserWarning):
    """A modality has one intensity everywhere; it normalises to zeros."""


# ---------------------------------------------------------------------------------------------- file names
def _nifti_stem(path: Path) -> Optional[str]:
    for ending in NIFTI_ENDINGS:
        if path.name.endswith(ending):
            return path.name[: -len(ending)]
    return None


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and _nifti_stem(p))


def _match_named(folder: Path, name: str, files: list[Path]) -> list[Path]:
    """Files of `folder` named `<name>.nii[.gz]` or `<name>_*.nii[.gz]`."""
    return [p for p in files if _nifti_stem(p) == name or _nifti_stem(p).startswith(name + "_")]


def _one(folder: Path, name: str, files: list[Path], what: str, required: bool) -> Optional[Path]:
    found = _match_named(folder, name, files)
    if len(found) > 1:
        raise MedicalImageError(f"{folder}: {len(found)} files match the {what} {name!r} "
                                f"({', '.join(p.name for p in found)}); expected one {name}_*.nii.gz or "
                                f"{name}.nii.gz")
    if not found:
        if required:
            raise MedicalImageError(f"{folder}: no file for the {what} {name!r} (expected {name}_*.nii.gz or "
                                    f"{name}.nii.gz); the folder holds {', '.join(p.name for p in files) or 'none'}")
        return None
    return found[0]


# ---------------------------------------------------------------------------------------------- case folders
def _case_folders(root: Path) -> list[Path]:
    if any(_nifti_stem(p) for p in root.iterdir() if p.is_file()):
        return [root]  # the root is itself one case
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and any(_nifti_stem(f) for f in p.iterdir() if f.is_file()))
    if not folders:
        raise FileNotFoundError(f"{root}: no case folders (sub-folders holding .nii.gz files)")
    return folders


def detect_folder_layout(case_folder: str | Path) -> str:
    """'brats2021', 'brats2023' or 'modality_folder', from the file names of one case folder."""
    folder = Path(case_folder)
    for layout, spec in BRATS_FILE_LAYOUTS.items():
        first = spec["modalities"][0]
        if any((folder / f"{folder.name}{spec['sep']}{first}{e}").is_file() for e in NIFTI_ENDINGS):
            return layout
    return "modality_folder"


def folder_cases(root: str | Path, layout: str = "auto", modalities: Optional[Sequence[str]] = None,
                 label_name: Optional[str] = None, mask_name: Optional[str] = None) -> list[dict]:
    """Cases of a folder of case folders (or one case folder): BraTS 2021/2023 file names, or one file per named
    modality (BraTS 2015 as DeepMedic ships it). A case without its label file gets ``label: None``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder of cases")
    folders = _case_folders(root)
    if layout == "auto":
        layout = detect_folder_layout(folders[0])
    if layout == "brats2015":
        layout = "modality_folder"
    if layout in BRATS_FILE_LAYOUTS:
        spec = BRATS_FILE_LAYOUTS[layout]
        names = list(modalities or spec["modalities"])
        return [_brats_case(folder, names, spec["sep"], label_name or spec["label"]) for folder in folders]
    if layout != "modality_folder":
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    label_name = label_name or MODALITY_FOLDER_DEFAULTS["label_name"]
    mask_name = MODALITY_FOLDER_DEFAULTS["mask_name"] if mask_name is None else mask_name
    if not modalities:
        modalities = _discover_modalities(folders[0], label_name, mask_name)
    return [_named_case(folder, list(modalities), label_name, mask_name) for folder in folders]


def _discover_modalities(folder: Path, label_name: str, mask_name: str) -> list[str]:
    names = sorted({_nifti_stem(p).split("_")[0] for p in _nifti_files(folder)} - {label_name, mask_name})
    if not names:
        raise MedicalImageError(f"{folder}: no modality files besides the label {label_name!r} and mask "
                                f"{mask_name!r}")
    return names


def _named_case(folder: Path, modalities: list[str], label_name: str, mask_name: str) -> dict:
    files = _nifti_files(folder)
    case = {"id": folder.name, "image": [str(_one(folder, m, files, "modality", True)) for m in modalities],
            "label": None, "modalities": list(modalities)}
    label = _one(folder, label_name, files, "label", False)
    case["label"] = str(label) if label else None
    mask = _one(folder, mask_name, files, "mask", False) if mask_name else None
    if mask is not None:
        case["mask"] = str(mask)
    return case


def _brats_case(folder: Path, modalities: list[str], sep: str, label_suffix: str) -> dict:
    def find(suffix: str, required: bool, what: str):
        for ending in NIFTI_ENDINGS:
            path = folder / f"{folder.name}{sep}{suffix}{ending}"
            if path.is_file():
                return str(path)
        if required:
            present = ", ".join(p.name for p in _nifti_files(folder)) or "none"
            raise MedicalImageError(f"{folder}: no {what} file {folder.name}{sep}{suffix}.nii.gz; the folder holds "
                                    f"{present}")
        return None

    return {"id": folder.name, "image": [find(m, True, f"modality {m!r}") for m in modalities],
            "label": find(label_suffix, False, "label"), "modalities": list(modalities)}


# ---------------------------------------------------------------------------------------------- dataset.json layouts
def _read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedicalImageError(f"{path}: not valid JSON ({err})") from None


def _json_path(root: str | Path) -> Path:
    root = Path(root)
    return root if root.suffix == ".json" else root / "dataset.json"


def _ordered_names(mapping: dict, where: str, key: str) -> list[str]:
    try:
        return [mapping[k] for k in sorted(mapping, key=int)]
    except (ValueError, TypeError):
        raise MedicalImageError(f"{where}: {key!r} must map channel indices '0', '1', ... to names, got "
                                f"{mapping}") from None


def decathlon_cases(root: str | Path, split: str = "training") -> list[dict]:
    """Cases of a Medical Segmentation Decathlon task from its ``dataset.json`` (``root``: the task folder or the
    json): ``split`` 'training' (labelled) or 'test' (``label: None``). Each image is one 4D file."""
    path = _json_path(root)
    meta = _read_json(path)
    if "training" not in meta or "modality" not in meta:
        raise MedicalImageError(f"{path}: not a Decathlon dataset.json (expected 'training' and 'modality' keys)")
    modalities = _ordered_names(meta["modality"], str(path), "modality")
    if split not in ("training", "test"):
        raise ValueError(f"split {split!r}: expected 'training' or 'test'")
    cases = []
    for index, entry in enumerate(meta.get(split) or []):
        image = entry if isinstance(entry, str) else entry.get("image") if isinstance(entry, dict) else None
        label = entry.get("label") if isinstance(entry, dict) else None
        if image is None or (split == "training" and label is None):
            raise MedicalImageError(f"{path}: {split}[{index}] is {entry!r}; expected "
                                    + ("{'image': ..., 'label': ...}" if split == "training" else "a path"))
        files = {"image": image, "label": label}
        for key, rel in files.items():
            if rel is None:
                continue
            full = (path.parent / rel).resolve()
            if not full.is_file():
                raise FileNotFoundError(f"{path}: {split}[{index}].{key} names {rel}, which does not exist "
                                        f"({full})")
            files[key] = str(full)
        stem = _nifti_stem(Path(files["image"])) or Path(files["image"]).stem
        cases.append({"id": stem, "image": [files["image"]], "label": files["label"], "modalities": modalities})
    if not cases:
        raise MedicalImageError(f"{path}: the {split!r} list is empty")
    return cases


def decathlon_labels(root: str | Path) -> dict[int, str]:
    """The Decathlon ``labels`` dict as {value: name}."""
    path = _json_path(root)
    return {int(k): v for k, v in _read_json(path).get("labels", {}).items()}


def nnunet_cases(root: str | Path, split: str = "train") -> list[dict]:
    """Cases of an nnU-Net v2 raw dataset folder: 'train' from imagesTr + labelsTr, 'test' from imagesTs (labels
    from labelsTs when that folder exists, else None). Every channel file must exist."""
    root = Path(root)
    path = root / "dataset.json"
    meta = _read_json(path)
    if "channel_names" not in meta and "modality" not in meta:
        raise MedicalImageError(f"{path}: not an nnU-Net dataset.json (expected 'channel_names')")
    channels = _ordered_names(meta.get("channel_names") or meta["modality"], str(path), "channel_names")
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in NIFTI_ENDINGS:
        raise MedicalImageError(f"{path}: file_ending {ending!r}; only NIfTI ({', '.join(NIFTI_ENDINGS)}) is read")
    images, labels = (root / "imagesTr", root / "labelsTr") if split == "train" else (root / "imagesTs",
                                                                                         root / "labelsTs")
    if not images.is_dir():
        raise FileNotFoundError(f"{root}: no {images.name}/ folder")
    if split == "train":
        if not labels.is_dir():
            raise FileNotFoundError(f"{root}: no labelsTr/ folder")
        ids = sorted(p.name[: -len(ending)] for p in labels.iterdir() if p.name.endswith(ending)
                     and not p.name.startswith("."))
        expected = meta.get("numTraining")
        if expected is not None and int(expected) != len(ids):
            raise MedicalImageError(f"{path}: numTraining is {expected}, but {labels} holds {len(ids)} label files")
    else:
        ids = sorted(p.name[: -len(ending + "_0000")] for p in images.iterdir()
                     if p.name.endswith("_0000" + ending) and not p.name.startswith("."))
    if not ids:
        raise MedicalImageError(f"{root}: no cases in {images.name}/ (expected <case>_0000{ending})")
    cases = []
    for case_id in ids:
        files = [images / f"{case_id}_{c:04d}{ending}" for c in range(len(channels))]
        for c, file in enumerate(files):
            if not file.is_file():
                raise FileNotFoundError(f"{images}: channel {c} ({channels[c]!r}) of case {case_id} is missing: "
                                        f"expected {file.name} (dataset.json lists {len(channels)} channels)")
        label = labels / f"{case_id}{ending}"
        cases.append({"id": case_id, "image": [str(f) for f in files],
                      "label": str(label) if label.is_file() else None, "modalities": channels})
    return cases


def nnunet_label_convention(root: str | Path) -> tuple[dict[str, int] | None, dict[str, tuple]]:
    """(classes, regions) of an nnU-Net ``dataset.json``: ``classes`` {name: value} when every label is one value
    (a class map; ``regions`` is then {}), or ``None`` and ``regions`` {name: values} when labels are lists
    (nnU-Net's region-based training; background excluded)."""
    path = _json_path(root)
    labels = _read_json(path).get("labels")
    if not isinstance(labels, dict) or not labels:
        raise MedicalImageError(f"{path}: no 'labels' dict")
    if not any(isinstance(v, (list, tuple)) for v in labels.values()):
        return {k: int(v) for k, v in labels.items()}, {}
    regions = {}
    for name, value in labels.items():
        values = tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
        if values != (0,):
            regions[name] = values
    return None, regions


# ---------------------------------------------------------------------------------------------- any layout
def detect_layout(root: str | Path) -> str:
    root = Path(root)
    meta_path = _json_path(root)
    if meta_path.is_file():
        meta = _read_json(meta_path)
        if "channel_names" in meta or (meta_path.parent / "imagesTr").is_dir() and "training" not in meta:
            return "nnunet"
        if "training" in meta:
            return "decathlon"
    return "folders"


def find_cases(root: str | Path, split: str = "train", layout: str = "auto", **kwargs) -> list[dict]:
    """Cases of `split` ('train' = every labelled training case, 'test') in any supported layout. Case folders
    with train/ (val/, test/) sub-folders take the split's folder; kwargs go to :func:`folder_cases`."""
    root = resolve_data_path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: does not exist")
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    kind = detect_layout(root) if layout == "auto" else layout
    if kind in ("decathlon", "nnunet") and kwargs:
        raise ValueError(f"{', '.join(kwargs)}: only for case folders; a {kind} dataset names its channels in "
                         f"dataset.json")
    if kind == "decathlon":
        return decathlon_cases(root, "test" if split == "test" else "training")
    if kind == "nnunet":
        return nnunet_cases(root, "test" if split == "test" else "train")
    folder = _split_folder(root, split)
    if folder is None:
        if split == "test" and _split_folder(root, "train") is not None:
            raise FileNotFoundError(f"{root}: no test/ folder")
        folder = root
    return folder_cases(folder, "auto" if kind == "folders" else kind, **kwargs)


def _split_folder(root: Path, split: str) -> Optional[Path]:
    names = {"train": ("train", "training", "Training"), "val": ("val", "validation", "Validation"),
             "test": ("test", "testing", "Testing")}[split]
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def split_cases(cases: list[dict], split: str, val_fraction: float = 0.2, val_seed: int = 0) -> list[dict]:
    """The train or val part of training cases: a seeded `val_fraction` (at least one case when there are two or
    more, never all of them) is validation."""
    if split not in ("train", "val"):
        raise ValueError(f"split {split!r}: expected train or val")
    order = np.random.default_rng(val_seed).permutation(len(cases))
    take = int(round(val_fraction * len(cases)))
    if val_fraction > 0 and len(cases) >= 2:
        take = min(max(take, 1), len(cases) - 1)
    val = set(order[:take].tolist())
    chosen = [c for i, c in enumerate(cases) if (i in val) == (split == "val")]
    if not chosen:
        raise ValueError(f"the {split} part of {len(cases)} case(s) is empty (val_fraction={val_fraction})")
    return chosen


NNUNET_FOLDS, NNUNET_SPLIT_SEED = 5, 12345


def nnunet_folds(case_ids: Sequence[str]) -> list[dict]:
    """nnU-Net v2's default cross-validation when no splits_final.json exists: sklearn's 5-fold KFold, shuffled
    with seed 12345, over the sorted case ids; [{"train": [...], "val": [...]}] per fold."""
    from sklearn.model_selection import KFold

    ids = np.sort(np.asarray(list(case_ids)))
    if len(ids) < NNUNET_FOLDS:
        raise ValueError(f"{len(ids)} training case(s): nnU-Net's {NNUNET_FOLDS}-fold split needs at least "
                         f"{NNUNET_FOLDS}")
    folds = KFold(n_splits=NNUNET_FOLDS, shuffle=True, random_state=NNUNET_SPLIT_SEED).split(ids)
    return [{"train": ids[train].tolist(), "val": ids[val].tolist()} for train, val in folds]


def fold_cases(cases: list[dict], split: str, fold: int, splits_file: str | Path | None = None) -> list[dict]:
    """The train or val part of fold ``fold``: from ``splits_file`` (nnU-Net's splits_final.json: a list of
    {"train": ids, "val": ids}) when given, else nnU-Net's generated folds. Every id the fold names must be a
    training case, and no case may be on both sides."""
    if split not in ("train", "val"):
        raise ValueError(f"split {split!r}: expected train or val")
    by_id = {c["id"]: c for c in cases}
    if splits_file is None:
        folds, source = nnunet_folds(by_id), f"nnU-Net's generated {NNUNET_FOLDS}-fold split"
    else:
        path = Path(splits_file)
        folds = _read_json(path)
        source = str(path)
        if not isinstance(folds, list) or not all(isinstance(f, dict) and {"train", "val"} <= set(f) for f in folds):
            raise MedicalImageError(f"{path}: expected a list of {{\"train\": [...], \"val\": [...]}} folds "
                                    f"(nnU-Net's splits_final.json)")
    if not 0 <= fold < len(folds):
        raise ValueError(f"fold {fold}: {source} has folds 0..{len(folds) - 1}")
    chosen = folds[fold]
    both = set(chosen["train"]) & set(chosen["val"])
    if both:
        raise MedicalImageError(f"{source}: fold {fold} puts case {sorted(both)[0]} in both train and val")
    unknown = [i for i in chosen[split] if i not in by_id]
    if unknown:
        raise MedicalImageError(f"{source}: fold {fold} names case {unknown[0]!r}, which is not a training case "
                                f"({len(unknown)} unknown)")
    if not chosen[split]:
        raise ValueError(f"{source}: the {split} part of fold {fold} is empty")
    return [by_id[i] for i in chosen[split]]


# ---------------------------------------------------------------------------------------------- checks
def _header(path: str):
    import nibabel as nib

    if not Path(path).is_file():
        raise MedicalImageError(f"{path}: no such file")
    try:
        return nib.load(path)
    except Exception as err:  # nibabel raises ImageFileError, EOFError, gzip errors, OSError
        raise MedicalImageError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})") from None


def check_case(case: dict) -> None:
    """Check a case from its files' headers (no voxel data read): each image 3D (or one 4D file with one volume
    per modality), label and mask 3D, all of one shape and affine. Raises MedicalImageError naming the file."""
    images = [(p, _header(p)) for p in case["image"]]
    four_d = len(images) == 1 and len(images[0][1].shape) == 4
    ref_path, ref = images[0]
    spatial = tuple(ref.shape[:3])
    if four_d and ref.shape[3] != len(case.get("modalities") or [None] * ref.shape[3]):
        raise MedicalImageError(f"{ref_path}: {ref.shape[3]} volumes on its 4th axis, expected "
                                f"{len(case['modalities'])} (modalities {case['modalities']})")
    others = [("image", p, h) for p, h in images] + [
        (key, case[key], _header(case[key])) for key in ("label", "mask") if case.get(key)]
    for key, path, img in others:
        shape = tuple(img.shape)
        own = shape[:3] if (key == "image" and four_d) else shape
        if len(own) != 3 or min(own) < 2:
            raise MedicalImageError(f"{path}: shape {shape}; expected a 3D volume (X, Y, Z) with every axis > 1"
                                    + (" (a 2D image?)" if len([s for s in own if s > 1]) <= 2 else ""))
        if own != spatial:
            raise MedicalImageError(f"{path}: {key} shape {own} differs from {ref_path} {spatial}")
        if not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise MedicalImageError(f"{path}: {key} affine differs from {ref_path}'s (voxel grid or orientation "
                                    f"do not match):\n{np.round(img.affine, 4)}\nvs\n{np.round(ref.affine, 4)}")


def diagnose_case(case: dict) -> None:
    """Read every file of a case fully; raise MedicalImageError naming the first that cannot be read."""
    for path in [*case["image"], *(case[k] for k in ("label", "mask") if case.get(k))]:
        img = _header(path)
        try:
            np.asanyarray(img.dataobj)
        except Exception as err:
            raise MedicalImageError(f"{path}: voxel data cannot be read ({type(err).__name__}: {err}); the file is "
                                    f"truncated or corrupt") from None


def _nonzero(x):
    """Foreground for cropping: any channel different from 0 (z-scored brain voxels may be negative)."""
    return x != 0


def labels_to_regions(label, regions: dict) -> torch.Tensor:
    """Class map (1, X, Y, Z) or (X, Y, Z) -> (R, X, Y, Z) float32, channel r = 1 where the label is one of
    ``regions``' r-th values (dict order; channels may overlap). A MetaTensor keeps its metadata."""
    label = torch.as_tensor(label)
    if label.ndim == 4:
        if label.shape[0] != 1:
            raise ValueError(f"label of shape {tuple(label.shape)}: expected one channel (a class map)")
        label = label[0]
    channels = [torch.isin(label, torch.tensor(list(v), dtype=label.dtype, device=label.device))
                for v in regions.values()]
    return torch.stack(channels).to(torch.float32)


def regions_to_labels(masks, regions: dict) -> torch.Tensor:
    """(R, X, Y, Z) region masks -> (X, Y, Z) int64 class map, the inverse of :func:`labels_to_regions` for nested
    regions. Larger regions are painted first, so a voxel takes the label of the smallest region holding it; a
    region's label is the smallest of its values that no region nested in it holds (BraTS 2015: WT - TC -> 2,
    TC - ET -> 1, ET -> 4). Masks that do not nest (a voxel in ET but not in WT) still give a valid map."""
    masks = torch.as_tensor(masks)
    names = list(regions)
    if masks.ndim != 4 or masks.shape[0] != len(names):
        raise ValueError(f"masks of shape {tuple(masks.shape)}: expected ({len(names)}, X, Y, Z), one per region "
                         f"{names}")
    values = {n: {int(v) for v in regions[n]} for n in names}
    out = torch.zeros(masks.shape[1:], dtype=torch.int64)
    for index in sorted(range(len(names)), key=lambda i: -len(values[names[i]])):
        mine = values[names[index]]
        own = mine - set().union(*(values[n] for n in names if values[n] < mine))
        out[masks[index].bool()] = min(own or mine)
    return out


def _mapped_transform_classes():
    """MONAI-based MapTransforms, defined on first use so that importing this module does not import MONAI."""
    global CheckLoadedd, LabelToRegionsd
    if "CheckLoadedd" in globals():
        return
    from monai.transforms import MapTransform

    class _CheckLoadedd(MapTransform):
        """After loading: finite intensities (NaN/inf is an error naming the file), constant modalities warn,
        integer label values. The case's file names travel in d['_files'], which this removes."""

        def __init__(self, keys=("image",), label_key: str = "label"):
            super().__init__(keys, allow_missing_keys=True)
            self.label_key = label_key

        def __call__(self, data):
            d = dict(data)
            files = d.pop("_files", {})
            image = d["image"]
            paths = files.get("image") or [getattr(image, "meta", {}).get("filename_or_obj", "image")]
            names = files.get("modalities") or [str(c) for c in range(image.shape[0])]
            for c in range(image.shape[0]):
                where = paths[c] if len(paths) == image.shape[0] else f"{paths[0]} (volume {c})"
                channel = image[c]
                finite = torch.isfinite(channel)
                if not bool(finite.all()):
                    bad = int((~finite).sum())
                    raise MedicalImageError(f"{where}: {bad} voxel(s) are NaN or infinite in modality "
                                            f"{names[c] if c < len(names) else c}; expected finite intensities")
                if bool((channel == channel.reshape(-1)[0]).all()):
                    warnings.warn(f"{where}: modality {names[c] if c < len(names) else c} has one intensity "
                                  f"({float(channel.reshape(-1)[0])}) everywhere; it normalises to 0",
                                  ConstantIntensityWarning, stacklevel=2)
            if self.label_key in d:
                label = d[self.label_key]
                if not bool(torch.isfinite(label).all()) or bool((label != torch.round(label)).any()):
                    raise MedicalImageError(f"{files.get('label', 'label')}: label values must be integers (a class "
                                            f"map); found non-integer or NaN values")
            return d

    class _LabelToRegionsd(MapTransform):
        """Class map -> one binary channel per region (see :func:`labels_to_regions`)."""

        def __init__(self, keys, regions: dict, allow_missing_keys: bool = True):
            super().__init__(keys, allow_missing_keys)
            self.regions = {k: tuple(v) for k, v in regions.items()}

        def __call__(self, data):
            d = dict(data)
            for key in self.key_iterator(d):
                d[key] = labels_to_regions(d[key], self.regions)
            return d

    _CheckLoadedd.__name__ = _CheckLoadedd.__qualname__ = "CheckLoadedd"
    _LabelToRegionsd.__name__ = _LabelToRegionsd.__qualname__ = "LabelToRegionsd"
    CheckLoadedd, LabelToRegionsd = _CheckLoadedd, _LabelToRegionsd


def __getattr__(name: str):
    """CheckLoadedd and LabelToRegionsd are made on first use (MONAI is imported then); this makes them importable
    and unpicklable (DataLoader workers) by name."""
    if name in ("CheckLoadedd", "LabelToRegionsd"):
        _mapped_transform_classes()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------- transform chains
def _common_transforms(pixdim, regions, has_mask: bool, crop_foreground: bool) -> list:
    import monai.transforms as mt

    _mapped_transform_classes()
    keys = ["image", "label", "mask"] if has_mask else ["image", "label"]
    chain = [
        mt.LoadImaged(keys, reader="NibabelReader", image_only=True, ensure_channel_first=True,
                      allow_missing_keys=True),
        CheckLoadedd(),
        mt.Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")), allow_missing_keys=True),
    ]
    if pixdim is not None:
        chain.append(mt.Spacingd(keys, pixdim=pixdim, mode=("bilinear",) + ("nearest",) * (len(keys) - 1),
                                 allow_missing_keys=True))
    if has_mask:
        chain.append(mt.MaskIntensityd("image", mask_key="mask"))
    if crop_foreground:
        source = "mask" if has_mask else "image"
        chain.append(mt.CropForegroundd(keys, source_key=source, select_fn=_nonzero, allow_smaller=True,
                                        start_coord_key=None, end_coord_key=None, allow_missing_keys=True))
    chain.append(mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True))
    chain.append(mt.DeleteItemsd("mask"))  # loaded only with has_mask; otherwise its path is dropped here
    if regions:
        chain.append(LabelToRegionsd("label", regions))
    else:
        chain.append(mt.EnsureTyped("label", dtype=torch.int64, allow_missing_keys=True))
    return chain


def _as_regions(regions):
    if isinstance(regions, str):
        if regions not in LABEL_CONVENTIONS:
            raise ValueError(f"regions {regions!r}: expected one of {', '.join(LABEL_CONVENTIONS)} or a dict")
        return LABEL_CONVENTIONS[regions]
    return regions


def evaluation_transforms(pixdim: Optional[Sequence[float]] = (1.0, 1.0, 1.0), regions=BRATS_REGIONS,
                          has_mask: bool = False, crop_foreground: bool = True):
    """Deterministic chain: load, check, RAS, spacing, brain mask, foreground crop, z-score, label -> regions.
    Every spatial step records itself on the MetaTensor, so the chain's inverse can undo them."""
    from monai.transforms import Compose

    return Compose(_common_transforms(pixdim, _as_regions(regions), has_mask, crop_foreground))


def training_transforms(patch_size: Sequence[int] = (96, 96, 96), pixdim: Optional[Sequence[float]] = (1.0, 1.0, 1.0),
                        regions=BRATS_REGIONS, has_mask: bool = False, pos: float = 1.0, neg: float = 1.0,
                        num_samples: int = 1, flip_prob: float = 0.5, intensity_scale: float = 0.1,
                        intensity_shift: float = 0.1, intensity_prob: float = 1.0, sampling: str = "posneg",
                        intensity_channel_wise: bool = True, affine_prob: float = 0.0, rotate_degrees: float = 15.0,
                        scale_range: float = 0.15, gamma_prob: float = 0.0, gamma_range: Sequence[float] = (0.7, 1.5)):
    """The evaluation chain, then: pad to `patch_size`, sample `num_samples` patches (``sampling="posneg"``:
    centred on foreground with probability pos / (pos + neg); ``"random"``: anywhere, as SwinUNETR's BraTS 2021
    training does), flip each axis with `flip_prob`, scale intensities by (1 + U(-s, s)) and shift by U(-t, t)
    (each with `intensity_prob`; per channel unless ``intensity_channel_wise=False``).

    Off by default, nnU-Net's spatial and contrast augmentation for few training cases: with `affine_prob`, a
    patch is rotated by U(-r, r) degrees about each axis and scaled by 1 + U(-s, s) (``rotate_degrees``,
    ``scale_range``; bilinear image, nearest label, zeros padding the corners); with `gamma_prob`, the patch's
    intensities get a gamma from `gamma_range` over their min-max range, mean and std kept (MONAI's
    RandAdjustContrast with retain_stats, as nnU-Net's gamma transform)."""
    import monai.transforms as mt

    if sampling not in ("posneg", "random"):
        raise ValueError(f"sampling={sampling!r}: expected 'posneg' or 'random'")
    for name, value in (("affine_prob", affine_prob), ("gamma_prob", gamma_prob)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value}: expected a probability in [0, 1]")
    if len(gamma_range) != 2 or not 0 < gamma_range[0] <= gamma_range[1]:
        raise ValueError(f"gamma_range={gamma_range}: expected (low, high) with 0 < low <= high")
    patch = [int(s) for s in patch_size]
    chain = _common_transforms(pixdim, _as_regions(regions), has_mask, True)
    chain += [
        mt.SpatialPadd(["image", "label"], spatial_size=patch, allow_missing_keys=True),
        mt.RandCropByPosNegLabeld(["image", "label"], label_key="label", spatial_size=patch, pos=pos, neg=neg,
                                  num_samples=num_samples) if sampling == "posneg" else
        mt.RandSpatialCropSamplesd(["image", "label"], roi_size=patch, num_samples=num_samples, random_size=False),
        *[mt.RandFlipd(["image", "label"], prob=flip_prob, spatial_axis=axis) for axis in range(3)],
    ]
    if affine_prob > 0:
        radians = math.radians(rotate_degrees)
        chain.append(mt.RandAffined(["image", "label"], prob=affine_prob, rotate_range=(radians,) * 3,
                                    scale_range=(scale_range,) * 3, mode=("bilinear", "nearest"),
                                    padding_mode="zeros", spatial_size=patch))
    if gamma_prob > 0:
        chain.append(mt.RandAdjustContrastd("image", prob=gamma_prob, gamma=tuple(gamma_range), retain_stats=True))
    chain += [
        mt.RandScaleIntensityd("image", factors=intensity_scale, prob=intensity_prob,
                               channel_wise=intensity_channel_wise),
        mt.RandShiftIntensityd("image", offsets=intensity_shift, prob=intensity_prob,
                               channel_wise=intensity_channel_wise),
    ]
    return mt.Compose(chain)


# ---------------------------------------------------------------------------------------------- dataset
class MedicalSegmentationDataset(Dataset):
    """Cases through a MONAI dictionary chain. Each item: {'image', 'label' (when the case has one), 'id'}; a chain
    sampling several patches (num_samples > 1) gives a list of such dicts (use ``collate``).

    Headers are checked (:func:`check_case`) before any voxel is read; a file that fails to load is found and
    named. ``cache=True`` keeps each case's output of the deterministic prefix of the chain (everything before
    the first random transform) in memory, as MONAI's CacheDataset does. Random transforms own their random
    state: ``seed`` seeds it; DataLoader workers need ``monai.data.utils.worker_init_fn``."""

    def __init__(self, cases: list[dict], transform=None, source: str = "", cache: bool = False,
                 seed: Optional[int] = None, repeats: int = 1):
        if not cases:
            raise ValueError(f"{source or 'dataset'}: no cases")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.cases, self.source, self.cache, self.repeats = list(cases), source, cache, int(repeats)
        if transform is None:
            transform = evaluation_transforms(has_mask=all("mask" in c for c in self.cases))
        self.transform = transform
        if seed is not None:
            transform.set_random_state(seed=seed)
        self._cached: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.cases) * self.repeats

    def _split(self):
        from monai.transforms import Compose, Randomizable

        steps = list(self.transform.transforms)
        first = next((i for i, t in enumerate(steps) if isinstance(t, Randomizable)), len(steps))
        return Compose(steps[:first]), Compose(steps[first:]) if first < len(steps) else None

    def prepared(self, index: int) -> dict:
        """A case through the deterministic prefix of the chain (cached when ``cache``)."""
        if index in self._cached:
            return self._cached[index]
        case = self.cases[index]
        check_case(case)
        data = {"image": list(case["image"]),
                "_files": {"image": list(case["image"]), "label": case.get("label"),
                           "modalities": list(case.get("modalities") or [])}}
        for key in ("label", "mask"):
            if case.get(key):
                data[key] = case[key]
        head, _ = self._split()
        try:
            out = head(data)
        except MedicalImageError:
            raise
        except Exception as err:
            cause = err
            while cause.__cause__ is not None and not isinstance(cause, MedicalImageError):
                cause = cause.__cause__
            if isinstance(cause, MedicalImageError):
                raise cause from None
            diagnose_case(case)
            raise MedicalImageError(f"case {case['id']} ({Path(case['image'][0]).parent}): the chain failed: "
                                    f"{type(err).__name__}: {err}") from err
        out.pop("_files", None)
        if self.cache:
            self._cached[index] = out
        return out

    def __getitem__(self, index: int):
        import copy

        index %= len(self.cases)   # `repeats` passes over the cases make one epoch (fresh random patches each)
        data = self.prepared(index)
        _, tail = self._split()
        if tail is not None:
            data = tail(copy.deepcopy(data) if self.cache else data)
        items = data if isinstance(data, list) else [data]
        for item in items:
            item["id"] = self.cases[index]["id"]
        return items[0] if len(items) == 1 else items

    @staticmethod
    def collate(batch: list):
        """MONAI's list_data_collate: lists of patches are flattened into the batch; MetaTensors keep meta."""
        from monai.data import list_data_collate

        return list_data_collate(batch)


# ---------------------------------------------------------------------------------------------- registry entry points
def medical_cases(root: str | Path | None = None, split: str = "train", layout: str = "auto",
                  val_fraction: float = 0.2, val_seed: int = 0, fold: Optional[int] = None,
                  splits_file: str | Path | None = None, **kwargs) -> list[dict]:
    """The cases of one split: test from the layout's test part; train/val from fold ``fold`` when given (see
    :func:`fold_cases`), else from a val/ folder when there is one, else a seeded part of the training cases."""
    if root is None:
        raise ValueError("medical segmentation: no root given (data.root)")
    if split == "test":
        return find_cases(root, "test", layout, **kwargs)
    path = resolve_data_path(root)
    if fold is not None:
        if splits_file is None and (_json_path(path).parent / "splits_final.json").is_file():
            splits_file = _json_path(path).parent / "splits_final.json"
        elif splits_file is not None:
            splits_file = resolve_data_path(splits_file)
        return fold_cases(find_cases(root, "train", layout, **kwargs), split, fold, splits_file)
    if path.is_dir() and _split_folder(path, "val") is not None and detect_layout(path) == "folders":
        return find_cases(root, split, layout, **kwargs)
    return split_cases(find_cases(root, "train", layout, **kwargs), split, val_fraction, val_seed)


def segmentation_dataset(root: str | Path | None = None, split: str = "train", layout: str = "auto",
                         modalities: Optional[Sequence[str]] = None, label_name: Optional[str] = None,
                         mask_name: Optional[str] = None, regions="brats2015", patch_size=(96, 96, 96),
                         pixdim=(1.0, 1.0, 1.0), num_samples: int = 1, pos: float = 1.0, neg: float = 1.0,
                         val_fraction: float = 0.2, val_seed: int = 0, fold: Optional[int] = None,
                         splits_file: Optional[str] = None, cache: bool = False,
                         seed: Optional[int] = None, repeats: int = 1, sampling: str = "posneg",
                         intensity_channel_wise: bool = True, affine_prob: float = 0.0, rotate_degrees: float = 15.0,
                         scale_range: float = 0.15, gamma_prob: float = 0.0,
                         gamma_range: Sequence[float] = (0.7, 1.5)) -> Optional[MedicalSegmentationDataset]:
    """A registered dataset: the split's cases through the training chain (train) or the evaluation chain (val,
    test). ``regions``: a convention name, a dict, None (class map) or 'nnunet' (from the dataset.json).
    ``repeats``: passes over the training cases per epoch. ``fold``: nnU-Net's cross-validation fold (module
    docstring). Augmentation arguments: :func:`training_transforms`. ``val_fraction=0`` without a val/ folder or
    fold: every training case trains and the val split is None (no validation)."""
    if split == "val" and val_fraction == 0 and fold is None:
        path = resolve_data_path(root) if root is not None else None
        if path is None or not (path.is_dir() and _split_folder(path, "val") is not None):
            return None
    folder_kwargs = {k: v for k, v in dict(modalities=modalities, label_name=label_name, mask_name=mask_name).items()
                     if v is not None}
    cases = medical_cases(root, split, layout, val_fraction, val_seed, fold, splits_file, **folder_kwargs)
    if regions == "nnunet":
        _, regions = nnunet_label_convention(resolve_data_path(root))
        regions = regions or None
    has_mask = all("mask" in c for c in cases)
    if split == "train":
        missing = [c["id"] for c in cases if not c.get("label")]
        if missing:
            raise MedicalImageError(f"{root}: training case {missing[0]} has no label file")
        transform = training_transforms(patch_size, pixdim, regions, has_mask, pos, neg, num_samples,
                                        sampling=sampling, intensity_channel_wise=intensity_channel_wise,
                                        affine_prob=affine_prob, rotate_degrees=rotate_degrees,
                                        scale_range=scale_range, gamma_prob=gamma_prob, gamma_range=gamma_range)
    else:
        transform = evaluation_transforms(pixdim, regions, has_mask)
    return MedicalSegmentationDataset(cases, transform, source=f"{root} ({split})", cache=cache, seed=seed,
                                      repeats=repeats if split == "train" else 1)
