"""3D medical segmentation: a case folder of modality files (BraTS 2015/2021/2023 names) or one NIfTI file (3D, or
4D with the modalities on the last axis) in; a uint8 NIfTI class map out, on the input's own grid with its affine
and header, so it overlays the input in any viewer (`<case>_seg.nii.gz`; `<case>_prob.nii.gz` with the region
probabilities on request).

The model predicts one sigmoid channel per region (`regions`, e.g. BraTS WT/TC/ET, which overlap) on the
processed grid (RAS, `pixdim` spacing, brain-mask crop, z-score inside the brain: the evaluation chain of
`mtp.datasets.medical_segmentation`). The chain's inverse puts the probabilities back on the original grid
(linear interpolation), where regions above `threshold` are painted into a class map (largest region first).
Inference runs in sliding windows (`roi_size`, `overlap`, `blend`, `sw_batch_size`) whose stitching buffer
follows `memory_budget_mib` (see `inference.sliding_window_predict`); `mirror_tta` averages mirrored windows.
A case with a brain mask gets no label outside it (the chain zeroes the inputs there). `keep_largest_component`
keeps the largest connected component of the whole foreground and clears the rest (a lesion is one body;
scattered false positives far from it cost Dice and dominate HD95).

Evaluation scores the class maps against the reference on the original grid: Dice and HD95 (mm) per region,
with the empty-region policy of `metrics.region_scores`; `mtp run` writes the per-case rows to `cases.csv`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from mtp.pipeline import InputError, OptionError, TaskPipeline

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class MedicalSegmentationOptions:
    regions: Any = "brats2015"          # a label convention (mtp.datasets.medical_segmentation) or {name: [labels]}
    modalities: Optional[list] = None   # channel order of a case folder (default: its modality files, sorted)
    layout: str = "auto"                # case-folder file names: auto | modality_folder | brats2021 | brats2023
    pixdim: Optional[list] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # processed grid spacing (None: keep)
    roi_size: list = field(default_factory=lambda: [96, 96, 96])             # sliding window
    overlap: float = 0.5
    blend: str = "gaussian"             # gaussian | constant
    sw_batch_size: int = 1              # windows per forward
    memory_budget_mib: Optional[float] = None  # stitching buffer: float32 beside the model if it fits, else
    #                                            float16 on the CPU, else refused before any forward
    mirror_tta: bool = False            # average the 8 mirrored copies of each window
    threshold: float = 0.5              # region probability -> mask
    keep_largest_component: bool = False  # keep only the largest connected component of the foreground (all
    #                                       regions together; 26-connectivity), as nnU-Net's post-processing can
    probabilities: bool = False         # also write the region probabilities (float32, X x Y x Z x regions)
    overlay: bool = False               # also write <case>_overlay.png (axial/coronal/sagittal through the tumour)
    empty_hd95: Any = "diagonal"        # HD95 when one side of a region is empty: diagonal | nan | a value in mm
    loss: str = "dice_bce"              # training: dice (SwinUNETR's BraTS recipe) | dice_bce

    def validate(self):
        if not isinstance(self.regions, (str, dict)):
            raise ValueError(f"regions={self.regions!r}: expected a convention name or {{name: [labels]}}")
        if self.blend not in ("gaussian", "constant"):
            raise ValueError(f"blend={self.blend!r}: expected gaussian or constant")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap={self.overlap}: expected 0 <= overlap < 1")
        if len(self.roi_size) != 3 or min(self.roi_size) < 1:
            raise ValueError(f"roi_size={self.roi_size}: expected three positive sizes")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold={self.threshold}: expected a probability in (0, 1)")
        if self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size={self.sw_batch_size}: expected >= 1")
        if self.loss not in ("dice", "dice_bce"):
            raise ValueError(f"loss={self.loss!r}: expected dice or dice_bce")


class _Cases(torch.utils.data.Dataset):
    """Cases (dicts of paths) for evaluation: each is segmented and scored on its original grid."""

    def __init__(self, cases: list[dict]):
        self.cases = cases

    def __len__(self):
        return len(self.cases)

    def __getitem__(self, index):
        return self.cases[index]

    @staticmethod
    def collate(batch):
        return batch


class MedicalSegmentationPipeline(TaskPipeline):
    task = "medical_segmentation"
    default_backbone = "swinunetr_brats21"
    input_suffixes = NIFTI_SUFFIXES
    Options = MedicalSegmentationOptions
    metrics = ("region_overlap",)
    monitor = ("val_dice", "max")
    max_batch_items = 1   # a whole volume per item; windows are batched inside

    # ------------------------------------------------------------------ model
    @property
    def regions(self) -> dict:
        from mtp.datasets.medical_segmentation import LABEL_CONVENTIONS

        regions = self.config["regions"]
        if isinstance(regions, str):
            if regions not in LABEL_CONVENTIONS:
                raise OptionError(f"regions={regions!r}: expected one of {', '.join(LABEL_CONVENTIONS)} or a dict")
            return dict(LABEL_CONVENTIONS[regions])
        return {str(k): tuple(int(v) for v in values) for k, values in regions.items()}

    def build_model(self, backbone, weights, **kwargs):
        from mtp.weights import load_into, load_state_dict_file

        entry = self.backbone_entry(backbone)
        self.backbone_name = entry.name
        # MONAI's networks name their channels in_channels/out_channels; D-Former's reference code in_chan and
        # num_classes (with head_channels=None so that its heads follow num_classes rather than its fixed 14).
        names = inspect.signature(entry.load()).parameters
        in_name, out_name = ("in_chan", "num_classes") if "in_chan" in names else ("in_channels", "out_channels")
        built = {**entry.kwargs, **kwargs}
        if in_name not in kwargs and self.config["modalities"]:
            built[in_name] = len(self.config["modalities"])
        if out_name not in kwargs:
            built[out_name] = len(self.regions)
            if "head_channels" in names:
                built["head_channels"] = None
        if built.get(out_name) != len(self.regions):
            raise OptionError(f"{entry.name}: {out_name}={built.get(out_name)} but regions has "
                              f"{len(self.regions)} ({', '.join(self.regions)})")
        model = entry.build(**built)
        if hasattr(model, "do_ds"):
            model.do_ds = False   # deep supervision only inside training_loss; inference takes the full output
        self.model_kwargs = built
        if weights:
            load_into(model, load_state_dict_file(weights, key=entry.weights_key), source=str(weights))
        return model

    @property
    def in_channels(self) -> int:
        return int(self.model_kwargs.get("in_channels", self.model_kwargs.get("in_chan", 1)))

    # ------------------------------------------------------------------ inference hooks
    def is_item_folder(self, folder: Path) -> bool:
        """A folder of NIfTI files is one case when the model takes several channels (one file per modality) or
        the files carry BraTS 2021/2023 case names; for a one-channel model each file is a case of its own."""
        from mtp.datasets.medical_segmentation import BRATS_FILE_LAYOUTS, detect_folder_layout

        if not any(p.is_file() and p.name.endswith(NIFTI_SUFFIXES) for p in folder.iterdir()):
            return False
        return self.in_channels > 1 or detect_folder_layout(folder) in BRATS_FILE_LAYOUTS

    def case_from_path(self, source: Path) -> dict:
        """A case dict for a case folder or one NIfTI file (its label, if any, is left out: inference only)."""
        from mtp.datasets.medical_segmentation import MedicalImageError, folder_cases

        source = Path(source)
        if source.is_dir():
            try:
                case = folder_cases(source, self.config["layout"], modalities=self.config["modalities"])[0]
            except (MedicalImageError, FileNotFoundError, ValueError) as err:
                raise InputError(str(err)) from None
        elif source.is_file() and source.name.endswith(NIFTI_SUFFIXES):
            stem = source.name[:-len(".nii.gz")] if source.name.endswith(".nii.gz") else source.stem
            case = {"id": stem, "image": [str(source)], "label": None, "modalities": self.config["modalities"]}
        else:
            raise InputError(f"{source}: expected a NIfTI file (.nii.gz, .nii) or a case folder of them")
        return case

    def load(self, source):
        if isinstance(source, dict):   # a case dict of paths, as the dataset layouts give
            case = dict(source)
        else:
            case = self.case_from_path(source)
        case.pop("label", None)
        return {"name": str(source if not isinstance(source, dict) else case["id"]), "case": case}

    def preprocess(self, item) -> dict:
        from mtp.datasets.medical_segmentation import (MedicalImageError, MedicalSegmentationDataset,
                                                       evaluation_transforms)

        case = item["case"]
        transform = evaluation_transforms(self.config["pixdim"], regions=None, has_mask="mask" in case)
        try:
            data = MedicalSegmentationDataset([case], transform).prepared(0)
        except (MedicalImageError, FileNotFoundError) as err:
            raise InputError(str(err)) from None
        image = data["image"]
        if image.shape[0] != self.in_channels:
            raise InputError(f"{item['name']}: {image.shape[0]} channel(s) ({', '.join(case.get('modalities') or [])})"
                             f" but the model takes {self.in_channels}; give modalities=[...] in the model's order")
        return {"image": image, "transform": transform, "reference": case["image"][0], "id": case["id"]}

    def predict_probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """(C, X, Y, Z) processed volume -> (R, X, Y, Z) region probabilities by sliding windows."""
        from mtp.pipelines.medical_segmentation.inference import sliding_window_predict

        return sliding_window_predict(self.model, image, self.config["roi_size"], overlap=self.config["overlap"],
                                      mode=self.config["blend"], sw_batch_size=self.config["sw_batch_size"],
                                      memory_budget_mib=self.config["memory_budget_mib"],
                                      mirror_tta=self.config["mirror_tta"], activation="sigmoid",
                                      out_channels=len(self.regions))

    def forward(self, inputs: list[dict]) -> list:
        return [self.predict_probabilities(one["image"]) for one in inputs]

    def postprocess(self, output, item, inputs: dict) -> dict:
        import nibabel as nib

        from mtp.datasets.medical_segmentation import regions_to_labels
        from mtp.pipelines.medical_segmentation.inference import restore_original_grid

        # Probabilities go back to the original grid (linear interpolation) and are thresholded there, as nnU-Net
        # resamples its softmax: thresholding first and resampling labels (nearest) would leave blocky edges
        # whenever `pixdim` differs from the input's spacing. Costs one float32 copy per region on that grid.
        probabilities = restore_original_grid(output.float(), inputs["image"], inputs["reference"],
                                              transform=inputs["transform"], labels=False)
        labels = regions_to_labels(torch.from_numpy(probabilities > self.config["threshold"]), self.regions)
        if item["case"].get("mask"):
            # the chain zeroes the inputs outside the brain mask and crops to it: there is no tissue to label there,
            # and interpolating coarse probabilities back to the grid must not spill across the mask's edge
            brain = np.asarray(nib.load(item["case"]["mask"]).dataobj) > 0
            if brain.shape != tuple(labels.shape):
                raise InputError(f"{item['case']['mask']}: brain mask of shape {brain.shape}, but the image is "
                                 f"{tuple(labels.shape)}")
            labels[torch.from_numpy(~brain)] = 0
        if self.config["keep_largest_component"] and labels.any():
            from scipy import ndimage  # MONAI's KeepLargestConnectedComponent needs scikit-image for the same

            components, _ = ndimage.label(labels.numpy() > 0, structure=np.ones((3, 3, 3), bool))
            largest = np.bincount(components.ravel())[1:].argmax() + 1
            labels[torch.from_numpy(components != largest)] = 0
        restored = labels.numpy()
        voxel_ml = float(np.prod(nib.load(inputs["reference"]).header.get_zooms()[:3])) / 1000.0
        counts = [int(np.isin(restored, values).sum()) for values in self.regions.values()]
        result = {"name": item["name"], "id": inputs["id"], "labels": restored, "reference": inputs["reference"],
                  "volumes_ml": {name: round(c * voxel_ml, 3) for name, c in zip(self.regions, counts)}}
        if self.config["probabilities"]:
            result["probabilities"] = probabilities.astype(np.float32, copy=False)
        return result

    def output_paths(self, relative: Path) -> list[Path]:
        stem = self.stem(relative)
        paths = [relative.with_name(f"{stem}_seg.nii.gz")]
        if self.config["probabilities"]:
            paths.append(relative.with_name(f"{stem}_prob.nii.gz"))
        if self.config["overlay"]:
            paths.append(relative.with_name(f"{stem}_overlay.png"))
        return paths

    def save(self, result, paths: list[Path], overwrite: bool) -> list[Path]:
        from mtp.pipelines.medical_segmentation.inference import write_nifti
        from mtp.pipelines.medical_segmentation.plots import write_overlay

        written = [write_nifti(result["labels"], paths[0], result["reference"], overwrite=overwrite, labels=True)]
        for path in paths[1:]:
            if path.name.endswith("_prob.nii.gz"):
                written.append(write_nifti(result["probabilities"], path, result["reference"], overwrite=overwrite,
                                           labels=False))
            else:
                written.append(write_overlay(self._slices(result["reference"], result["labels"]), path,
                                             title=result["id"], overwrite=overwrite))
        return written

    @staticmethod
    def _slices(image_path: str, prediction: np.ndarray, reference: np.ndarray | None = None) -> dict:
        import nibabel as nib

        from mtp.pipelines.medical_segmentation.plots import overlay_slices

        image = nib.load(image_path)
        values = np.asarray(image.dataobj, dtype=np.float32)
        return overlay_slices(values if values.ndim == 3 else values[..., 0], image.affine, prediction, reference)

    # ------------------------------------------------------------------ evaluation
    def evaluation_dataset(self, data, split: str = "test"):
        from mtp.datasets.medical_segmentation import MedicalSegmentationDataset, find_cases

        if isinstance(data, MedicalSegmentationDataset):
            cases = data.cases
        elif isinstance(data, (list, tuple)):
            cases = list(data)
        else:
            folder = {"modalities": self.config["modalities"]} if self.config["modalities"] else {}
            cases = find_cases(data, split, self.config["layout"], **folder)
        missing = [c["id"] for c in cases if not c.get("label")]
        if missing:
            raise InputError(f"{data}: case(s) without a reference label cannot be scored: {', '.join(missing)}")
        return _Cases(cases)

    def evaluation_step(self, batch) -> tuple:
        """Cases -> (class maps on the original grid, [{label, spacing, case}]) for RegionOverlapMetrics."""
        import nibabel as nib

        predictions, references = [], []
        for case in batch:
            item = self.load(case)
            inputs = self.preprocess(item)
            predictions.append(self.postprocess(self.forward([inputs])[0], item, inputs)["labels"])
            reference = nib.load(case["label"])
            values = np.asarray(reference.dataobj)
            if values.shape != predictions[-1].shape:
                raise InputError(f"{case['label']}: label grid {values.shape} differs from the image's "
                                 f"{predictions[-1].shape}")
            references.append({"label": np.rint(values).astype(np.int64), "case": case["id"],
                                "spacing": tuple(float(z) for z in reference.header.get_zooms()[:3])})
            self.__dict__.setdefault("case_slices", {})[case["id"]] = self._slices(case["image"][0], predictions[-1], references[-1]["label"])
        return predictions, references

    def metric_kwargs(self, name: str, options: dict) -> dict:
        self.case_rows: list[dict] = []   # filled by the metric, written by write_artifacts
        self.case_slices: dict[str, dict] = {}   # overlay slices per case, drawn by write_artifacts
        return {"regions": self.regions, "empty_hd95": self.config["empty_hd95"], "rows": self.case_rows}

    # ------------------------------------------------------------------ training
    def dataset_kwargs(self, split: str) -> dict:
        kwargs = {"regions": self.config["regions"], "pixdim": self.config["pixdim"]}
        if self.config["modalities"]:
            kwargs["modalities"] = self.config["modalities"]
        return kwargs

    def _loss_fn(self):
        if getattr(self, "_loss", None) is None:
            from monai.losses import DiceCELoss, DiceLoss

            self._loss = (DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5) if self.config["loss"] == "dice"
                          else DiceCELoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5))
        return self._loss

    def _batch(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = batch["image"], batch["label"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        label = label.as_tensor() if hasattr(label, "as_tensor") else label
        device = next(self.model.parameters()).device
        return image.to(device), label.to(device)

    def training_loss(self, batch):
        """The loss on the patches; a deep-supervised model (D-Former) adds its coarser outputs against the
        label resampled to each (nearest), with weights halving per level and normalised to sum to 1."""
        image, label = self._batch(batch)
        if not hasattr(self.model, "do_ds"):
            return self._loss_fn()(self.model(image).float(), label)  # the loss in float32 under bf16 autocast
        self.model.do_ds = True
        try:
            outputs = self.model(image)
        finally:
            self.model.do_ds = False
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        weights = [0.5 ** level for level in range(len(outputs))]
        total = 0.0
        for weight, out in zip(weights, outputs):
            target = label if out.shape[2:] == label.shape[2:] else \
                torch.nn.functional.interpolate(label, size=out.shape[2:], mode="nearest")
            total = total + weight * self._loss_fn()(out.float(), target)
        return total / sum(weights)

    def validation_metrics(self, batch) -> dict:
        """Whole validation volumes by sliding windows: mean Dice over regions (the monitor) and the loss."""
        image, label = self._batch(batch)
        dice, losses = [], []
        for one, target in zip(image, label):
            probs = self.predict_probabilities(one).to(target.device, torch.float32)  # bf16 autocast: 1 - 1e-6 -> 1
            pred = probs > self.config["threshold"]
            truth = target > 0.5
            for r in range(pred.shape[0]):
                both = pred[r].sum() + truth[r].sum()
                dice.append(1.0 if both == 0 else float(2 * (pred[r] & truth[r]).sum() / both))
            logits = torch.logit(probs.clamp(1e-6, 1 - 1e-6))
            losses.append(self._loss_fn()(logits[None], target[None].float()))
        return {"val_loss": torch.stack(losses).mean(), "val_dice": torch.tensor(float(np.mean(dice)))}

    def write_artifacts(self, run_dir: Path, splits: dict, recipe) -> list[Path]:
        from mtp.pipelines.medical_segmentation.metrics import RegionMetrics

        rows = getattr(self, "case_rows", None)
        if not rows:
            return []
        from mtp.pipelines.medical_segmentation.plots import write_overlay

        table = RegionMetrics(self.regions, self.config["empty_hd95"])
        table.rows = list(rows)
        written = [table.write_csv(run_dir / "cases.csv")]
        scores = {row["case"]: row for row in rows}
        for case_id, slices in getattr(self, "case_slices", {}).items():
            dice = ", ".join(f"{r} Dice {scores[case_id][f'{r}_dice']:.3f}" for r in self.regions)
            written.append(write_overlay(slices, run_dir / "overlays" / f"{case_id}.png", title=f"{case_id}: {dice}",
                                         overwrite=True))
        return written
