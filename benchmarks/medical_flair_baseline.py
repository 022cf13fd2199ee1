"""The trivial baseline a BraTS 2015 model must beat: whole tumour = FLAIR above a threshold inside the brain mask.

The threshold is chosen on the training cases (the one maximising their mean WT Dice over a grid of thresholds on
the z-scored FLAIR), then applied to the test cases and scored as the recipes are: Dice and HD95 (mm) on the
original grid (`mtp.pipelines.medical_segmentation.metrics.region_scores`, WT only, since a FLAIR threshold says
nothing of the core). For information it also prints the best threshold picked on the test cases themselves,
which is not a valid result (model selection on test data).

  MTP_DATA_DIR=../shared/data python benchmarks/medical_flair_baseline.py

One JSON line per case, then a summary line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def load_case(case: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    import nibabel as nib

    flair_path = next(p for p, m in zip(case["image"], case["modalities"]) if m.lower().startswith("flair"))
    flair = nib.load(flair_path)
    mask = np.asarray(nib.load(case["mask"]).dataobj) > 0
    label = np.rint(np.asarray(nib.load(case["label"]).dataobj)).astype(np.int64)
    values = np.asarray(flair.dataobj, dtype=np.float32)
    brain = values[mask]
    z = np.where(mask, (values - brain.mean()) / brain.std(), -np.inf)   # z-score inside the brain
    return z, mask, label, tuple(float(s) for s in flair.header.get_zooms()[:3])


def wt_dice(z: np.ndarray, label: np.ndarray, threshold: float) -> float:
    pred, truth = z > threshold, label > 0
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (pred & truth).sum() / total)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="medical/brats2015_deepmedic", help="under $MTP_DATA_DIR")
    parser.add_argument("--thresholds", type=float, nargs=3, default=[0.0, 4.0, 0.05], metavar=("LOW", "HIGH", "STEP"))
    args = parser.parse_args(argv)

    from mtp.datasets.medical_segmentation import find_cases
    from mtp.pipelines.medical_segmentation.metrics import region_scores

    grid = np.arange(args.thresholds[0], args.thresholds[1] + 1e-9, args.thresholds[2])
    splits = {split: [(c["id"], *load_case(c)) for c in find_cases(args.root, split)] for split in ("train", "test")}
    train_dice = np.array([[wt_dice(z, label, t) for t in grid] for _, z, _, label, _ in splits["train"]]).mean(0)
    chosen = float(grid[int(train_dice.argmax())])
    test_scores = []
    for case_id, z, _, label, spacing in splits["test"]:
        scores = region_scores((z > chosen).astype(np.int64), (label > 0).astype(np.int64), {"WT": (1,)}, spacing)
        test_scores.append(scores)
        print(json.dumps({"case": case_id, "threshold": round(chosen, 3), "WT_dice": round(scores["WT_dice"], 4),
                          "WT_hd95": round(scores["WT_hd95"], 2)}), flush=True)
    test_dice = np.array([[wt_dice(z, label, t) for t in grid] for _, z, _, label, _ in splits["test"]]).mean(0)
    print(json.dumps({"case": "summary", "threshold_from_train": round(chosen, 3),
                      "train_WT_dice": round(float(train_dice.max()), 4),
                      "test_WT_dice": round(float(np.mean([s["WT_dice"] for s in test_scores])), 4),
                      "test_WT_hd95": round(float(np.mean([s["WT_hd95"] for s in test_scores])), 2),
                      "not_valid_threshold_picked_on_test": round(float(grid[int(test_dice.argmax())]), 3),
                      "not_valid_test_WT_dice_at_it": round(float(test_dice.max()), 4)}), flush=True)


if __name__ == "__main__":
    main()
