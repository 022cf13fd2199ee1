"""Segmentation metrics per region, the BraTS way (MONAI's implementations):

- A region is a set of labels merged into one binary mask: BraTS's whole tumour, tumour core and enhancing
  tumour are ``{"WT": [1, 2, 3, 4], "TC": [1, 3, 4], "ET": [4]}`` on the 2015 labels (``BRATS_REGIONS``).
- Dice: MONAI's ``DiceMetric`` on the region masks.
- HD95: MONAI's ``compute_hausdorff_distance`` with ``percentile=95``, symmetric (the larger of the two directed
  95th percentiles of the distances between the masks' edge voxels), in millimetres from the voxel spacing.
  Both maps must lie on the same grid; score them on the input's original grid (the reference's own), not on a
  resampled one, so the spacing is the one in the reference file's header.

Empty regions, the policy (BraTS 2021 onwards uses the same):

- reference and prediction both empty: Dice 1, HD95 0 (nothing to find and nothing found).
- exactly one of them empty: Dice 0; HD95 is undefined, and is reported as ``empty_hd95``:
  ``"diagonal"`` (default) the diagonal of the grid in mm, the largest distance two voxels of the volume can
  have. On BraTS's 240x240x155 1 mm grid that is 373.13 mm, the constant BraTS 2021+ scores use
  (``BRATS_WORST_HD95``). ``"nan"`` leaves it missing: the mean skips it and the summary counts it.
  A number uses that number.
Whatever the policy, the summary counts per region how many cases had one side empty (``<region>_one_empty``)
and how many were scored, so a mean over a different subset never passes unnoticed.
"""
from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from mtp.datasets.medical_segmentation import BRATS_REGIONS
from mtp.files import write_text_atomic

BRATS_WORST_HD95 = 373.13  # mm; sqrt(240^2 + 240^2 + 155^2), BraTS 2021+ for a region empty on one side only
EMPTY_POLICIES = ("diagonal", "nan")


def region_masks(class_map, regions: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """A class map (X, Y, Z) of integer labels -> (R, X, Y, Z) boolean masks, one per region, in ``regions`` order."""
    labels = torch.as_tensor(np.asarray(class_map) if not torch.is_tensor(class_map) else class_map)
    if labels.is_floating_point():
        if not torch.equal(labels, labels.round()):
            raise ValueError("region_masks: the class map holds non-integer values; pass labels, not probabilities")
        labels = labels.long()
    masks = []
    for name, values in regions.items():
        if not len(values):
            raise ValueError(f"region {name!r} has no labels")
        masks.append(torch.isin(labels, torch.as_tensor(list(values), dtype=labels.dtype)))
    return torch.stack(masks)


def grid_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The diagonal of a grid's extent in mm, sqrt(sum((n * s)^2)): an upper bound on any distance inside it.

    On BraTS's 240x240x155 1 mm grid it is 373.13 mm, BraTS's constant."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def _empty_hd95(policy, shape, spacing) -> float:
    if isinstance(policy, str):
        if policy == "diagonal":
            return round(grid_diagonal_mm(shape, spacing), 2)
        if policy == "nan":
            return float("nan")
        raise ValueError(f"empty_hd95 must be one of {EMPTY_POLICIES} or a number, got {policy!r}")
    return float(policy)


def region_scores(prediction, reference, regions: Mapping[str, Sequence[int]] = BRATS_REGIONS,
                  spacing: Sequence[float] | None = None, empty_hd95: str | float = "diagonal") -> dict:
    """Dice and HD95 (mm) per region for one case.

    ``prediction`` and ``reference`` are class maps (X, Y, Z) of integer labels on the same grid; ``spacing`` the
    voxel size in mm along each axis (1 mm if None). Returns ``{"<region>_dice": .., "<region>_hd95": ..,
    "<region>_empty": "both" | "prediction" | "reference" | ""}``; see the module docstring for the empty cases.
    """
    from monai.metrics import DiceMetric, compute_hausdorff_distance

    pred, ref = region_masks(prediction, regions), region_masks(reference, regions)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {tuple(pred.shape[1:])} and reference {tuple(ref.shape[1:])} are not on "
                         f"the same grid")
    spacing = [1.0] * (pred.ndim - 1) if spacing is None else [float(s) for s in spacing]
    if len(spacing) != pred.ndim - 1:
        raise ValueError(f"spacing {spacing} does not match a {pred.ndim - 1}-D grid")
    # include_background: every channel is a region; ignore_empty=False: both empty -> 1, one empty -> 0.
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(pred[None], ref[None])[0]
    scores: dict = {}
    for i, name in enumerate(regions):
        p_any, r_any = bool(pred[i].any()), bool(ref[i].any())
        scores[f"{name}_dice"] = float(dice[i])
        if p_any and r_any:
            # MONAI's function crops both masks to their union's bounding box before the distance transform.
            with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal use of a deprecated argument
                warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
                hd = compute_hausdorff_distance(pred[i][None, None], ref[i][None, None], include_background=True,
                                                percentile=95, spacing=spacing)
            scores[f"{name}_hd95"] = float(hd[0, 0])
            scores[f"{name}_empty"] = ""
        elif not p_any and not r_any:
            scores[f"{name}_hd95"] = 0.0
            scores[f"{name}_empty"] = "both"
        else:
            scores[f"{name}_hd95"] = _empty_hd95(empty_hd95, pred.shape[1:], spacing)
            scores[f"{name}_empty"] = "prediction" if not p_any else "reference"
    return scores


class RegionMetrics:
    """Streaming Dice and HD95 per region over cases; per-case rows kept for a CSV.

    ``update(prediction, reference, spacing=..., case=...)`` scores one case (class maps, see ``region_scores``);
    ``compute()`` gives the means per region, NaN-aware, with the counts they rest on; ``write_csv(path)``
    writes one row per case, atomically.
    """

    def __init__(self, regions: Mapping[str, Sequence[int]] = BRATS_REGIONS, empty_hd95: str | float = "diagonal"):
        self.regions = {name: tuple(int(v) for v in values) for name, values in regions.items()}
        _empty_hd95(empty_hd95, (1,), (1.0,))  # validate the policy now, not at the first case
        self.empty_hd95 = empty_hd95
        self.rows: list[dict] = []

    def update(self, prediction, reference, spacing: Sequence[float] | None = None, case: str | None = None) -> dict:
        """Score one case (class maps (X, Y, Z) on the same grid, ``spacing`` in mm); returns its row."""
        scores = region_scores(prediction, reference, self.regions, spacing, self.empty_hd95)
        row = {"case": case if case is not None else str(len(self.rows)), **scores}
        self.rows.append(row)
        return row

    def compute(self) -> dict:
        """Means over cases per region: ``<region>_dice``, ``<region>_hd95`` (NaNs skipped), and the counts:
        ``cases``, ``<region>_hd95_n`` (cases in the HD95 mean), ``<region>_one_empty`` (cases where exactly one
        side was empty, whose HD95 is the policy's value or missing)."""
        out: dict = {"cases": len(self.rows)}
        for name in self.regions:
            dice = np.array([row[f"{name}_dice"] for row in self.rows], dtype=np.float64)
            hd = np.array([row[f"{name}_hd95"] for row in self.rows], dtype=np.float64)
            finite = ~np.isnan(hd)
            out[f"{name}_dice"] = round(float(dice.mean()), 4) if len(dice) else float("nan")
            out[f"{name}_hd95"] = round(float(hd[finite].mean()), 4) if finite.any() else float("nan")
            out[f"{name}_hd95_n"] = int(finite.sum())
            out[f"{name}_one_empty"] = sum(row[f"{name}_empty"] in ("prediction", "reference") for row in self.rows)
        return out

    def write_csv(self, path: str | Path, overwrite: bool = True) -> Path:
        """One row per case (case, then <region>_dice, <region>_hd95, <region>_empty per region), then a ``mean``
        row (NaN-aware, as ``compute``); missing HD95 values are empty cells. Written atomically."""
        columns = ["case"] + [f"{name}_{key}" for name in self.regions for key in ("dice", "hd95", "empty")]
        summary = self.compute()
        mean_row = {"case": "mean", **{f"{n}_{k}": summary[f"{n}_{k}"] for n in self.regions for k in ("dice", "hd95")},
                    **{f"{n}_empty": f"one_empty={summary[f'{n}_one_empty']}" for n in self.regions}}
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in [*self.rows, mean_row]:
            writer.writerow({key: _cell(row.get(key)) for key in columns})
        return write_text_atomic(path, buffer.getvalue(), overwrite=overwrite)


def _cell(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


class RegionOverlapMetrics(RegionMetrics):
    """RegionMetrics in the form `TaskPipeline.evaluate` streams: ``update(predictions, references)`` with lists of
    class maps and of {"label", "spacing", "case"} (what the pipeline's evaluation_step gives). ``rows``: a list
    to fill with the per-case rows (the pipeline writes them to cases.csv)."""

    def __init__(self, regions: Mapping[str, Sequence[int]] = BRATS_REGIONS, empty_hd95: str | float = "diagonal",
                 rows: list | None = None):
        super().__init__(regions, empty_hd95)
        if rows is not None:
            self.rows = rows

    def update(self, predictions, references) -> None:
        for prediction, reference in zip(predictions, references):
            super().update(prediction, reference["label"], reference["spacing"], reference["case"])
