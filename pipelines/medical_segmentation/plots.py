"""Overlays of a predicted class map (and the reference, when there is one) on the input: the axial, coronal and
sagittal slices through the tumour's centre (the reference's centre of mass, else the prediction's, else the
volume's centre), shown in RAS orientation (radiological left-right is not flipped: the patient's right is on the
left of each panel, as in the canonical array)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mtp.files import atomic_path

COLOURS = {1: (0.9, 0.2, 0.2), 2: (0.2, 0.8, 0.2), 3: (0.9, 0.9, 0.2), 4: (0.2, 0.5, 1.0)}


def _canonical(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    orientation = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(array, orientation)


def overlay_slices(image: np.ndarray, affine: np.ndarray, prediction: np.ndarray,
                   reference: np.ndarray | None = None) -> dict:
    """The three orthogonal slices (image, prediction, reference) through the tumour's centre, in RAS: small
    enough to keep for every case of an evaluation."""
    image, prediction = _canonical(image, affine), _canonical(prediction, affine)
    reference = _canonical(reference, affine) if reference is not None else None
    focus = reference if reference is not None and reference.any() else prediction
    centre = (np.rint(np.argwhere(focus > 0).mean(0)).astype(int) if focus.any()
              else np.array(image.shape) // 2)
    out = {"centre": centre.tolist()}
    for name, axis in (("sagittal", 0), ("coronal", 1), ("axial", 2)):
        pick = [slice(None)] * 3
        pick[axis] = int(centre[axis])
        out[name] = {"image": image[tuple(pick)].astype(np.float32), "prediction": prediction[tuple(pick)],
                     "reference": reference[tuple(pick)] if reference is not None else None}
    return out


def _coloured(labels: np.ndarray) -> np.ndarray:
    rgba = np.zeros(labels.shape + (4,), np.float32)
    for value, colour in COLOURS.items():
        rgba[labels == value] = (*colour, 0.45)
    rgba[(labels > 0) & ~np.isin(labels, list(COLOURS))] = (1.0, 0.5, 0.0, 0.45)
    return rgba


def write_overlay(slices: dict, path: str | Path, title: str = "", overwrite: bool = False) -> Path:
    """A PNG: one row for the prediction (and one for the reference) over the three slices; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("prediction", "prediction")] + ([("reference", "reference")]
                                             if slices["axial"]["reference"] is not None else [])
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3.2 * len(rows)), squeeze=False)
    for r, (key, label) in enumerate(rows):
        for c, view in enumerate(("axial", "coronal", "sagittal")):
            ax = axes[r][c]
            part = slices[view]
            ax.imshow(part["image"].T, cmap="gray", origin="lower")
            ax.imshow(_coloured(part[key]).transpose(1, 0, 2), origin="lower")
            ax.set_title(f"{label}: {view}", fontsize=9)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return path
