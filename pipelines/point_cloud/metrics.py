"""Point-cloud metrics: classification accuracy, semantic segmentation (confusion matrix, IoU), ShapeNetPart part
IoU, and instance segmentation (matched IoU, precision/recall, over- and under-segmentation).

Inputs are numpy arrays or torch tensors (any device; moved to the CPU). A *prediction* is integer labels, or
scores/logits with one more trailing axis of size C (then its argmax is taken).

Conventions:
- Classification (``classification_accuracy``, or ``ConfusionMatrix`` over samples): overall accuracy = correct /
  samples; mean class accuracy = the mean, over the classes present in the reference, of each class's recall
  (a class never in the reference is left out, whatever was predicted for it).
- Semantic segmentation (``ConfusionMatrix``): counts are accumulated over a whole split, and every score is
  computed once from the summed matrix: never a mean of per-batch or per-scene scores (a small scene would
  weigh as much as a large one). Rows are the reference, columns the prediction. Points whose reference is
  ``ignore_index`` are left out entirely (their prediction too). IoU_c = TP / (TP + FP + FN); a class absent
  from both reference and prediction over the split has no IoU (NaN) and is excluded from mIoU, the mean over
  the remaining classes (a class predicted but never in the reference has IoU 0 and counts).
  Overall accuracy = trace / total.
- ShapeNetPart (``ShapeNetPartIoU``): a shape's IoU is the mean over its category's parts
  (``SHAPENETPART_SEG_CLASSES``) of the part IoU on that shape; a part absent from both the reference and the
  prediction of the shape has IoU 1 (the PointNet convention). Instance mIoU = mean over all shapes; class mIoU
  = mean over categories (those with at least one shape) of the mean of their shapes. A point predicted as a
  part of another category counts against the reference part (a miss) and in no other union. Restricting
  predictions to the category's parts is the caller's choice: ``restrict_to_category`` masks logits so the
  argmax can only pick them (what the PointNet++ / Pointcept evaluations do).
- Instance segmentation (``instance_scores``, ``InstanceSegmentationMeter``): instances are integer ids per
  point; reference ids listed in ``ignore_reference`` (e.g. mOSD's 0, the invalid points) and points outside
  ``valid`` are left out of both sides; a negative predicted id means "in no segment". Matching: Hungarian
  (``scipy.optimize.linear_sum_assignment``) one-to-one between reference instances and predicted segments,
  maximising the summed IoU. A matched pair is a true positive when its IoU > ``iou_threshold`` (0.5, strictly
  greater, as panoptic quality: above 0.5 a match is unique, so the count does not depend on the matcher).
  Precision = TP / predicted segments, recall = TP / reference instances; matched instance IoU = mean over
  reference instances of the IoU of its Hungarian partner (0 when it has none).
  Over- and under-segmentation (as in the OSD / mOSD evaluations), with ``overlap`` (0.5, strictly greater):
  a predicted segment S *lies in* reference instance R when |S & R| > overlap * |S|; R is over-segmented when
  two or more segments lie in it. Reference instance R *lies in* segment S when |S & R| > overlap * |R|; S is
  under-segmented when two or more reference instances lie in it. Rates: over-segmented reference instances /
  reference instances, under-segmented segments / predicted segments. A rate or ratio with a zero denominator
  is NaN. The meter sums the counts over a split and divides once (pooled, not a mean of per-scene rates).
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

import numpy as np
import torch

from mtp.datasets.point_cloud.layouts import (MOSD_INVALID_LABEL, SHAPENETPART_CATEGORIES, SHAPENETPART_NUM_PARTS,
                                              SHAPENETPART_SEG_CLASSES)


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _labels(prediction, reference_shape: tuple[int, ...], name: str = "prediction") -> np.ndarray:
    """Integer labels from labels or scores [..., C] (argmax over the last axis)."""
    prediction = _numpy(prediction)
    if prediction.ndim == len(reference_shape) + 1 and prediction.shape[:-1] == tuple(reference_shape):
        return prediction.argmax(axis=-1)
    if prediction.shape != reference_shape:
        raise ValueError(f"{name} shape {prediction.shape} does not match the reference {reference_shape} "
                         f"(or reference + (C,) for scores)")
    if prediction.dtype.kind not in "iub":
        if prediction.size and not (prediction == np.round(prediction)).all():
            raise ValueError(f"{name}: expected integer labels (or scores with a trailing class axis), got "
                             f"non-integral {prediction.dtype} values")
    return prediction.astype(np.int64)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else float("nan")


# ---------------------------------------------------------------------------------------------- confusion matrix
class ConfusionMatrix:
    """C x C counts (rows reference, columns prediction) summed over every ``update``; scores from the total."""

    def __init__(self, num_classes: int, ignore_index: int | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        self.matrix[:] = 0

    def update(self, prediction, reference) -> "ConfusionMatrix":
        reference = _numpy(reference).astype(np.int64)
        prediction = _labels(prediction, reference.shape).reshape(-1)
        reference = reference.reshape(-1)
        if self.ignore_index is not None:
            keep = reference != self.ignore_index
            reference, prediction = reference[keep], prediction[keep]
        c = self.num_classes
        for name, values in (("reference", reference), ("prediction", prediction)):
            bad = (values < 0) | (values >= c)
            if bad.any():
                raise ValueError(f"{name} label {int(values[bad][0])} outside 0..{c - 1}"
                                 + (f" (ignore_index is {self.ignore_index})" if name == "reference" else ""))
        self.matrix += np.bincount(reference * c + prediction, minlength=c * c).reshape(c, c)
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class counts into {self.num_classes}")
        self.matrix += other.matrix
        return self

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    @property
    def overall_accuracy(self) -> float:
        return _ratio(np.trace(self.matrix), self.total)

    @property
    def class_accuracy(self) -> np.ndarray:
        """[C] recall per class; NaN for a class absent from the reference."""
        support = self.matrix.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(support > 0, np.diag(self.matrix) / np.maximum(support, 1), np.nan)

    @property
    def mean_class_accuracy(self) -> float:
        values = self.class_accuracy
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    @property
    def iou(self) -> np.ndarray:
        """[C] TP / (TP + FP + FN); NaN for a class absent from both reference and prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(axis=0) + self.matrix.sum(axis=1) - tp
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    @property
    def miou(self) -> float:
        values = self.iou
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    def summary(self, class_names: Sequence[str] | None = None) -> dict:
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        out = {"miou": self.miou, "overall_accuracy": self.overall_accuracy,
               "mean_class_accuracy": self.mean_class_accuracy, "points": self.total}
        out.update({f"iou/{name}": float(v) for name, v in zip(names, self.iou)})
        return out


def classification_accuracy(predictions, references, num_classes: int | None = None) -> dict:
    """Overall accuracy and mean class accuracy over a whole split (labels [S], or logits [S, C])."""
    references = _numpy(references).astype(np.int64).reshape(-1)
    predictions = _labels(predictions, references.shape)
    if num_classes is None:
        num_classes = int(max(references.max(initial=-1), predictions.max(initial=-1))) + 1
    matrix = ConfusionMatrix(max(num_classes, 1)).update(predictions, references)
    return {"overall_accuracy": matrix.overall_accuracy, "mean_class_accuracy": matrix.mean_class_accuracy,
            "samples": matrix.total}


# ---------------------------------------------------------------------------------------------- ShapeNetPart
def _category_index(category) -> int:
    if isinstance(category, str):
        if category not in SHAPENETPART_SEG_CLASSES:
            raise ValueError(f"unknown ShapeNetPart category {category!r}")
        return SHAPENETPART_CATEGORIES.index(category)
    index = int(category)
    if not 0 <= index < len(SHAPENETPART_CATEGORIES):
        raise ValueError(f"ShapeNetPart category index {index} outside 0..{len(SHAPENETPART_CATEGORIES) - 1}")
    return index


def category_part_mask(categories) -> torch.Tensor:
    """bool [..., 50]: True at the parts of each category (an index, a name, or a tensor/list of indices)."""
    table = torch.zeros(len(SHAPENETPART_CATEGORIES), SHAPENETPART_NUM_PARTS, dtype=torch.bool)
    for i, name in enumerate(SHAPENETPART_CATEGORIES):
        table[i, list(SHAPENETPART_SEG_CLASSES[name])] = True
    if isinstance(categories, (str, int, np.integer)):
        return table[_category_index(categories)]
    index = torch.as_tensor(_numpy(categories) if not isinstance(categories, torch.Tensor) else categories).long()
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(SHAPENETPART_CATEGORIES)):
        raise ValueError(f"ShapeNetPart category indices must be in 0..{len(SHAPENETPART_CATEGORIES) - 1}")
    return table[index.cpu()]


def restrict_to_category(logits: torch.Tensor, categories, fill: float = float("-inf")) -> torch.Tensor:
    """Logits [N, 50] of one shape (``categories`` one index/name) or [B, N, 50] of a batch (``categories`` [B]),
    with every part outside the shape's category set to ``fill``, so argmax picks one of the category's parts."""
    logits = torch.as_tensor(logits)
    if logits.shape[-1] != SHAPENETPART_NUM_PARTS:
        raise ValueError(f"logits must end in the {SHAPENETPART_NUM_PARTS} part scores, got {tuple(logits.shape)}")
    mask = category_part_mask(categories).to(logits.device)
    if mask.dim() == 1:
        mask = mask.expand(logits.shape)
    else:
        if logits.dim() != 3 or mask.shape[0] != logits.shape[0]:
            raise ValueError(f"batched logits must be [B, N, 50] with B = {mask.shape[0]} categories, got "
                             f"{tuple(logits.shape)}")
        mask = mask[:, None, :].expand(logits.shape)
    return logits.masked_fill(~mask, fill)


def shape_part_iou(prediction, reference, category) -> float:
    """Mean part IoU of one shape over its category's parts; a part absent from both sides scores 1.
    Points whose reference is negative (padding) are left out."""
    reference = _numpy(reference).astype(np.int64).reshape(-1)
    prediction = _labels(prediction, reference.shape)
    keep = reference >= 0
    reference, prediction = reference[keep], prediction[keep]
    ious = []
    for part in SHAPENETPART_SEG_CLASSES[SHAPENETPART_CATEGORIES[_category_index(category)]]:
        ref, pred = reference == part, prediction == part
        union = np.count_nonzero(ref | pred)
        ious.append(1.0 if union == 0 else np.count_nonzero(ref & pred) / union)
    return float(np.mean(ious))


class ShapeNetPartIoU:
    """Per-shape part IoUs over a split; ``instance_miou`` (mean over shapes), ``class_miou`` (mean over
    categories of their shapes' mean)."""

    def __init__(self):
        self.shapes: list[tuple[int, float]] = []     # (category index, shape IoU)

    def reset(self) -> None:
        self.shapes.clear()

    def update(self, prediction, reference, categories, lengths=None) -> "ShapeNetPartIoU":
        """One shape (``reference`` [N], ``categories`` an index or name) or a batch (``reference`` [B, N],
        ``categories`` [B]; ``lengths`` [B] or a negative reference marks padding)."""
        reference = _numpy(reference).astype(np.int64)
        prediction = _labels(prediction, reference.shape)
        if reference.ndim == 1:
            self.shapes.append((_category_index(categories), shape_part_iou(prediction, reference, categories)))
            return self
        if reference.ndim != 2:
            raise ValueError(f"reference must be [N] or [B, N], got shape {reference.shape}")
        categories = _numpy(categories).reshape(-1)
        if len(categories) != len(reference):
            raise ValueError(f"{len(categories)} categories for {len(reference)} shapes")
        lengths = _numpy(lengths).reshape(-1) if lengths is not None else [reference.shape[1]] * len(reference)
        for pred, ref, category, n in zip(prediction, reference, categories, lengths):
            self.shapes.append((_category_index(category), shape_part_iou(pred[:int(n)], ref[:int(n)], category)))
        return self

    @property
    def instance_miou(self) -> float:
        return float(np.mean([iou for _, iou in self.shapes])) if self.shapes else float("nan")

    @property
    def category_miou(self) -> dict[str, float]:
        """Mean shape IoU per category that has shapes."""
        found: dict[int, list[float]] = {}
        for category, iou in self.shapes:
            found.setdefault(category, []).append(iou)
        return {SHAPENETPART_CATEGORIES[c]: float(np.mean(v)) for c, v in sorted(found.items())}

    @property
    def class_miou(self) -> float:
        values = list(self.category_miou.values())
        return float(np.mean(values)) if values else float("nan")

    def summary(self) -> dict:
        out = {"instance_miou": self.instance_miou, "class_miou": self.class_miou, "shapes": len(self.shapes)}
        out.update({f"miou/{name}": value for name, value in self.category_miou.items()})
        return out


# ---------------------------------------------------------------------------------------------- instances
INSTANCE_COUNTS = ("reference", "predicted", "true_positives", "over_segmented", "under_segmented")


def _instance_overlaps(prediction, reference, valid, ignore_reference):
    reference = _numpy(reference).astype(np.int64).reshape(-1)
    prediction = _numpy(prediction).reshape(-1)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction has {prediction.size} points, the reference {reference.size}")
    prediction = prediction.astype(np.int64)
    keep = np.ones(reference.shape, dtype=bool)
    if valid is not None:
        valid = _numpy(valid).astype(bool).reshape(-1)
        if valid.shape != reference.shape:
            raise ValueError(f"valid has {valid.size} points, the reference {reference.size}")
        keep &= valid
    ignore = list(ignore_reference) if ignore_reference is not None else []
    if ignore:
        keep &= ~np.isin(reference, ignore)
    reference, prediction = reference[keep], prediction[keep]
    ref_ids, ref_index = np.unique(reference, return_inverse=True)
    assigned = prediction >= 0
    pred_ids, pred_index = np.unique(prediction[assigned], return_inverse=True)
    r, p = len(ref_ids), len(pred_ids)
    ref_sizes = np.bincount(ref_index, minlength=r)
    pred_sizes = np.bincount(pred_index, minlength=p)
    intersection = np.bincount(ref_index[assigned] * p + pred_index, minlength=r * p).reshape(r, p)
    return ref_ids, pred_ids, ref_sizes, pred_sizes, intersection


def instance_scores(prediction, reference, *, valid=None, ignore_reference: Iterable[int] | None = None,
                    iou_threshold: float = 0.5, overlap: float = 0.5) -> dict:
    """Instance scores of one scene (see the module docstring): counts (``reference``, ``predicted``,
    ``true_positives``, ``over_segmented``, ``under_segmented``, ``matched_iou_sum``), the rates from them, the
    IoU matrix ``iou`` [R, P] with ``reference_ids``/``predicted_ids``, and ``matches`` (reference id, predicted
    id, IoU) of the Hungarian assignment."""
    from scipy.optimize import linear_sum_assignment

    ref_ids, pred_ids, ref_sizes, pred_sizes, inter = _instance_overlaps(prediction, reference, valid,
                                                                         ignore_reference)
    union = ref_sizes[:, None] + pred_sizes[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    matches, matched_sum, tp = [], 0.0, 0
    if iou.size:
        rows, cols = linear_sum_assignment(iou, maximize=True)
        for i, j in zip(rows.tolist(), cols.tolist()):
            if iou[i, j] > 0:
                matches.append((int(ref_ids[i]), int(pred_ids[j]), float(iou[i, j])))
                matched_sum += float(iou[i, j])
                tp += int(iou[i, j] > iou_threshold)
    segments_in_reference = (inter > overlap * pred_sizes[None, :]).sum(axis=1)   # per reference instance
    references_in_segment = (inter > overlap * ref_sizes[:, None]).sum(axis=0)    # per predicted segment
    counts = {"reference": len(ref_ids), "predicted": len(pred_ids), "true_positives": tp,
              "over_segmented": int((segments_in_reference >= 2).sum()),
              "under_segmented": int((references_in_segment >= 2).sum()), "matched_iou_sum": matched_sum}
    out = _instance_rates(counts)
    out.update(counts, iou=iou, reference_ids=ref_ids, predicted_ids=pred_ids, matches=matches)
    return out


def _instance_rates(counts: dict) -> dict:
    precision = _ratio(counts["true_positives"], counts["predicted"])
    recall = _ratio(counts["true_positives"], counts["reference"])
    f1 = _ratio(2 * counts["true_positives"], counts["predicted"] + counts["reference"])
    return {"matched_iou": _ratio(counts["matched_iou_sum"], counts["reference"]), "precision": precision,
            "recall": recall, "f1": f1,
            "over_segmentation_rate": _ratio(counts["over_segmented"], counts["reference"]),
            "under_segmentation_rate": _ratio(counts["under_segmented"], counts["predicted"])}


class InstanceSegmentationMeter:
    """``instance_scores`` counts summed over scenes; ``summary()`` divides the totals once (pooled)."""

    def __init__(self, *, ignore_reference: Iterable[int] | None = None, iou_threshold: float = 0.5,
                 overlap: float = 0.5):
        self.ignore_reference = list(ignore_reference) if ignore_reference is not None else None
        self.iou_threshold, self.overlap = iou_threshold, overlap
        self.reset()

    def reset(self) -> None:
        self.counts = {key: 0 for key in INSTANCE_COUNTS}
        self.counts["matched_iou_sum"] = 0.0
        self.scenes = 0

    def update(self, prediction, reference, valid=None) -> dict:
        """Add one scene; returns its own scores."""
        scores = instance_scores(prediction, reference, valid=valid, ignore_reference=self.ignore_reference,
                                 iou_threshold=self.iou_threshold, overlap=self.overlap)
        for key in self.counts:
            self.counts[key] += scores[key]
        self.scenes += 1
        return scores

    def summary(self) -> dict:
        out = _instance_rates(self.counts)
        out.update({key: value for key, value in self.counts.items() if key != "matched_iou_sum"},
                   scenes=self.scenes)
        return out


# ---------------------------------------------------------------------------------------------- mOSD objects
# The mOSD object-segmentation protocol (benchmarks/mosd_geometric_baseline.py's docstring defines every figure):
# the baseline benchmark, benchmarks/mosd_instances.py and the point_cloud_segmentation recipe all score with it.
MOSD_GROUPS = {
    "test": [(0, 15, "boxes"), (16, 23, "stacked"), (24, 30, "occluded"), (31, 42, "cylindric"), (43, 54, "mixed"),
             (55, 65, "complex")],
    "learn": [(0, 16, "boxes"), (17, 24, "stacked"), (25, 32, "occluded"), (33, 44, "cylindric")],
}
MOSD_TABLE_IDS = list(range(1, 10))     # mOSD README: 1-9 (parts of) the table
MOSD_FIRST_OBJECT_ID = 20


def mosd_group_of(split: str, scan_id: str) -> str:
    """The README group of a scan ("test0" -> "boxes"); "other" for a number (or a name) outside them."""
    digits = re.sub(r"\D", "", str(scan_id))
    number = int(digits) if digits else -1
    for low, high, name in MOSD_GROUPS.get(split, []):
        if low <= number <= high:
            return name
    return "other"


def _num(x):
    return None if isinstance(x, float) and math.isnan(x) else x


def score_mosd_scan(pred_semantic, pred_instance, labels, raw_instance, valid, meter, matrix) -> dict:
    """One mOSD scan's scores; ``meter`` (an ``InstanceSegmentationMeter`` with ignore_reference 0-9) and ``matrix``
    (a 2-class ``ConfusionMatrix`` ignoring -1) accumulate it. Semantic 0 table / 1 object, instance -1 none."""
    raw = np.where(valid, raw_instance, 0)
    table_merged = np.where(np.isin(raw, MOSD_TABLE_IDS), 1, raw)
    strict = instance_scores(pred_instance, table_merged, valid=valid, ignore_reference=[0])
    objects = [int(r) for r in strict["reference_ids"] if r >= MOSD_FIRST_OBJECT_ID]
    partner = {ref: iou for ref, _, iou in strict["matches"]}
    matched = float(np.mean([partner.get(r, 0.0) for r in objects])) if objects else float("nan")
    loose = meter.update(pred_instance, raw, valid=valid)
    scan_matrix = ConfusionMatrix(2, ignore_index=MOSD_INVALID_LABEL).update(
        np.maximum(pred_semantic, 0), np.where(valid, labels, MOSD_INVALID_LABEL))
    matrix.merge(scan_matrix)
    iou = scan_matrix.iou
    return {"matched_iou": _num(matched), "matched_iou_objects_only": _num(loose["matched_iou"]),
            "reference_objects": loose["reference"], "predicted_objects": loose["predicted"],
            "true_positives": loose["true_positives"], "over_segmented": loose["over_segmented"],
            "under_segmented": loose["under_segmented"], "iou_table": _num(float(iou[0])),
            "iou_object": _num(float(iou[1])), "miou": _num(scan_matrix.miou)}


def summarise_mosd_scans(rows: list[dict], meter, matrix) -> dict:
    """A group's summary of ``score_scan`` rows (each with its ``seconds``) and the accumulators they fed."""
    def mean(key):
        values = [r[key] for r in rows if r[key] is not None]
        return float(np.mean(values)) if values else None

    pooled = meter.summary()
    iou = matrix.iou
    return {"scans": len(rows), "matched_iou": mean("matched_iou"),
            "matched_iou_objects_only": mean("matched_iou_objects_only"),
            **{key: sum(r[key] for r in rows) for key in ("reference_objects", "predicted_objects", "true_positives",
                                                          "over_segmented", "under_segmented")},
            "iou_table": _num(float(iou[0])), "iou_object": _num(float(iou[1])), "miou": _num(matrix.miou),
            "pooled": {k: _num(pooled[k]) for k in ("matched_iou", "precision", "recall", "over_segmentation_rate",
                                                    "under_segmentation_rate")},
            "seconds": sum(r["seconds"] for r in rows)}
