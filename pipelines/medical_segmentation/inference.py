"""Volume inference for 3D segmentation: sliding windows under a memory budget, mirroring TTA, predictions put
back on the input's original grid, and NIfTI outputs that carry the input's affine and header.

Sliding windows are MONAI's ``sliding_window_inference``. What mtp adds is the choice of where the stitched
volume lives. Its memory, excluding the model's own activations and the caller's input volume, is at most

    bound = (K + 1) * V * b_buf                      stitched output (K classes) + count map, on the buffer device
          + R * b_buf                                the window weight map (constant or Gaussian)
          + n * R * (b_buf + C * b_in + 2 * K * 4)   a batch of n = sw_batch_size windows: MONAI's one-channel
                                                     stand-in, the input, float32 output and its weighted copy
          + n * R * (C * b_in + K * 4)               mirroring only: the flipped window and the running mean
          + K * S * b_buf                            buffer_steps only: MONAI's slab on the model's device

with V the voxels of the volume (padded up to the window where it is smaller), R the voxels of one window,
C input channels, b_in / b_buf bytes per input / buffer element, and S the voxels of one slab (the volume
cut to ``roi + (buffer_steps - 1) * interval`` along ``buffer_dim``). ``sliding_window_memory`` evaluates it.
The final activation runs in slabs of 8 slices (2 * K * 8 * Y * Z * 4 bytes) once the windows are freed; for
BraTS-sized volumes that is well under the window terms.

With ``memory_budget_mib`` the buffer is full precision (float32) on the model's device when the bound allows;
when it does not, the stitched output is kept on the CPU in float16 (half the bytes; probabilities then carry
about 3 significant digits), and when even that exceeds the budget the call is refused before any forward.
The windows are still read from the float32 input (never from a rounded copy), so only the sums are rounded.

Logits are averaged (over overlapping windows, with the blend weights, and over mirrored copies); the
activation (softmax or sigmoid) is applied once at the end, slab by slab, in place.
"""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtp.files import atomic_path

MiB = 1 << 20
_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2, torch.float64: 8}


@dataclass(frozen=True)
class StitchPlan:
    """Where the stitched output lives, and the memory bound (bytes) that decided it."""

    device: torch.device
    dtype: torch.dtype
    bound_bytes: int
    terms: dict

    @property
    def bound_mib(self) -> float:
        return self.bound_bytes / MiB


def _roi(roi_size, spatial: Sequence[int]) -> tuple[int, ...]:
    roi = (roi_size,) * len(spatial) if isinstance(roi_size, int) else tuple(roi_size)
    if len(roi) != len(spatial):
        raise ValueError(f"roi_size {roi_size} does not match a {len(spatial)}-D volume")
    return tuple(s if r is None or r <= 0 else int(r) for r, s in zip(roi, spatial))


def sliding_window_memory(image_shape: Sequence[int], out_channels: int, roi_size, sw_batch_size: int = 1,
                          buffer_dtype: torch.dtype = torch.float32, input_dtype: torch.dtype = torch.float32,
                          mirror_tta: bool | Sequence[int] = False, overlap: float = 0.5,
                          buffer_steps: int | None = None, buffer_dim: int = -1) -> dict:
    """The module docstring's bound for an input of ``image_shape`` (C, X, Y, Z), in bytes per term and ``total``.

    A benchmark can print it for volumes it does not hold, e.g. ``sliding_window_memory((4, 480, 480, 310), 5,
    128)`` for a BraTS volume twice as large per axis."""
    channels, *spatial = (int(s) for s in image_shape)
    roi = _roi(roi_size, spatial)
    padded = [max(s, r) for s, r in zip(spatial, roi)]
    voxels, window = math.prod(padded), math.prod(roi)
    b_buf, b_in = _BYTES[buffer_dtype], _BYTES[input_dtype]
    k, n = int(out_channels), int(sw_batch_size)
    terms = {"output": k * voxels * b_buf, "count_map": voxels * b_buf, "weight_map": window * b_buf,
             "windows": n * window * (b_buf + channels * b_in + 2 * k * 4),
             "mirror": n * window * (channels * b_in + k * 4) if mirror_tta else 0, "slab": 0}
    if buffer_steps:
        axis = buffer_dim % len(spatial)
        interval = max(1, int(roi[axis] * (1 - overlap)))
        slab = min(padded[axis], roi[axis] + (int(buffer_steps) - 1) * interval)
        terms["slab"] = k * voxels // padded[axis] * slab * b_buf
    terms["total"] = sum(terms.values())
    return terms


def plan_stitching(image_shape: Sequence[int], out_channels: int, roi_size, model_device: torch.device | str,
                   memory_budget_mib: float | None = None, **memory_kwargs) -> StitchPlan:
    """float32 on the model's device when the bound fits ``memory_budget_mib`` (or no budget is set); otherwise
    float16 on the CPU; a ``MemoryError`` naming the bounds when even that does not fit."""
    model_device = torch.device(model_device)
    full = sliding_window_memory(image_shape, out_channels, roi_size, buffer_dtype=torch.float32, **memory_kwargs)
    if memory_budget_mib is None or full["total"] <= memory_budget_mib * MiB:
        return StitchPlan(model_device, torch.float32, full["total"], full)
    half = sliding_window_memory(image_shape, out_channels, roi_size, buffer_dtype=torch.float16, **memory_kwargs)
    if half["total"] > memory_budget_mib * MiB:
        raise MemoryError(f"sliding window over {tuple(image_shape)} with {out_channels} classes needs "
                          f"{full['total'] / MiB:.1f} MiB in float32 and {half['total'] / MiB:.1f} MiB with a float16 "
                          f"output; the budget is {memory_budget_mib} MiB (smaller roi_size or sw_batch_size "
                          f"shrink only the window terms: {half['windows'] / MiB:.1f} MiB)")
    return StitchPlan(torch.device("cpu"), torch.float16, half["total"], half)


def mirror_axes(mirror_tta: bool | Sequence[int], spatial_dims: int = 3) -> list[tuple[int, ...]]:
    """The flips averaged by mirroring TTA, as tuples of spatial axes (identity first): ``True`` is every
    subset of the axes (1 + 7 in 3-D), a sequence of axes every subset of those, ``False`` the identity only."""
    if mirror_tta is False or mirror_tta is None:
        return [()]
    axes = tuple(range(spatial_dims)) if mirror_tta is True else tuple(sorted({int(a) % spatial_dims
                                                                                 for a in mirror_tta}))
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def _model_device(model, fallback: torch.device) -> tuple[torch.device, torch.dtype | None]:
    try:
        param = next(model.parameters())
    except (AttributeError, StopIteration):
        return fallback, None
    return param.device, param.dtype


def sliding_window_predict(model, image: torch.Tensor, roi_size, overlap: float = 0.5, mode: str = "gaussian",
                           sw_batch_size: int = 1, memory_budget_mib: float | None = None,
                           mirror_tta: bool | Sequence[int] = False, activation: str | None = "softmax",
                           out_channels: int | None = None, buffer_steps: int | None = None,
                           buffer_dim: int = -1, progress: bool = False, return_plan: bool = False):
    """Segment a volume ``image`` (C, X, Y, Z) window by window; returns (K, X, Y, Z) probabilities
    (``activation="softmax"`` or ``"sigmoid"``) or logits (``activation=None``).

    ``model`` maps (n, C, *roi) to (n, K, *roi) and runs where its parameters are (the windows are moved there);
    put it in eval mode first. ``mode`` blends overlapping windows ("gaussian" or "constant", MONAI's).
    ``memory_budget_mib`` picks the stitching buffer (see the module docstring: float32 on the model's device, else
    float16 on the CPU, else refused). ``mirror_tta`` averages the logits of mirrored copies of each window
    (``True``: all 7 flips of the 3 axes plus the identity; or a sequence of axes). ``out_channels`` (K) is read
    from ``model.out_channels`` when it has one, else from one forward of a window. ``buffer_steps`` /
    ``buffer_dim`` are MONAI's: accumulate that many window rows on the model's device before copying to a buffer
    kept elsewhere. With ``return_plan`` the result is ``(output, StitchPlan)``.
    """
    from monai.inferers import sliding_window_inference

    if hasattr(image, "as_tensor"):  # a MetaTensor: the meta stays with the caller
        image = image.as_tensor()
    if image.ndim != 4:
        raise ValueError(f"sliding_window_predict: image must be (C, X, Y, Z), got {tuple(image.shape)}")
    if activation not in ("softmax", "sigmoid", None):
        raise ValueError(f"activation must be 'softmax', 'sigmoid' or None, got {activation!r}")
    spatial = tuple(image.shape[1:])
    roi = _roi(roi_size, spatial)
    device, param_dtype = _model_device(model, image.device)
    flips = mirror_axes(mirror_tta, len(spatial))

    # Pad a volume smaller than the window ourselves (as MONAI would: constant 0, split evenly), so that MONAI
    # never copies the input and the windows can be cut from the caller's own tensor.
    diffs = [max(r - s, 0) for r, s in zip(roi, spatial)]
    if any(diffs):
        pads = [p for d in reversed(diffs) for p in (d // 2, d - d // 2)]
        image = torch.nn.functional.pad(image, pads)
    volume = image[None]

    def forward(windows: torch.Tensor) -> torch.Tensor:
        windows = windows.to(device=device, dtype=param_dtype or windows.dtype)
        total = None
        for axes in flips:
            dims = [a + 2 for a in axes]
            out = model(windows.flip(dims) if dims else windows)
            out = (out.flip(dims) if dims else out).float()
            total = out if total is None else total.add_(out)
        return total.div_(len(flips)) if len(flips) > 1 else total

    def predictor(_proxy_windows, coords):
        # MONAI hands over the window positions (with_coord=True); the windows are cut from the float32 volume.
        return forward(torch.cat([volume[(c[0], slice(None), *c[2:])] for c in coords]))

    with torch.inference_mode():
        k = out_channels or getattr(model, "out_channels", None)
        if not k:
            k = forward(volume[(slice(None), slice(None), *(slice(0, r) for r in roi))]).shape[1]
        plan = plan_stitching(image.shape, k, roi, device, memory_budget_mib, sw_batch_size=sw_batch_size,
                              input_dtype=image.dtype if image.dtype in _BYTES else torch.float32,
                              mirror_tta=mirror_tta, overlap=overlap, buffer_steps=buffer_steps,
                              buffer_dim=buffer_dim)
        # A stand-in input of the buffer's dtype, one zero broadcast to the volume's shape (no memory): MONAI sizes
        # and types its output buffer and weights from its input.
        proxy = torch.zeros((), dtype=plan.dtype, device=plan.device).expand(1, 1, *volume.shape[2:])
        out = sliding_window_inference(proxy, roi, sw_batch_size, predictor, overlap=overlap, mode=mode,
                                       sw_device=device, device=plan.device, progress=progress,
                                       buffer_steps=buffer_steps, buffer_dim=buffer_dim, with_coord=True)[0]
        if out.shape[0] != k:
            raise ValueError(f"the model gave {out.shape[0]} channels, expected {k} (out_channels)")
        if any(diffs):
            out = out[(slice(None), *(slice(d // 2, d // 2 + s) for d, s in zip(diffs, spatial)))]
        if activation is not None:
            _activate_(out, activation)
    return (out, plan) if return_plan else out


def _activate_(out: torch.Tensor, activation: str, slab: int = 8) -> None:
    """Softmax over channels or sigmoid, in place, a few slices at a time (in float32 for each slab)."""
    for start in range(0, out.shape[1], slab):
        part = out[:, start:start + slab]
        values = part.float()
        part.copy_(torch.softmax(values, dim=0) if activation == "softmax" else torch.sigmoid(values))


# --- back to the original grid ---------------------------------------------------------------------------------

def load_reference(original):
    """A nibabel image from a path (or the image itself)."""
    import nibabel as nib

    return original if hasattr(original, "affine") and hasattr(original, "header") else nib.load(str(original))


def restore_original_grid(prediction, processed, original, transform=None, labels: bool = True,
                          key: str = "image", atol: float = 1e-3) -> np.ndarray:
    """Put a prediction made on the processed grid back on the input's original grid.

    ``prediction``: (K, ...) probabilities or (...) / (1, ...) class labels on the processed grid.
    ``processed``: the MONAI MetaTensor the transforms produced from the input (its ``applied_operations`` and
    affine), or a 4x4 affine of the processed grid. ``original``: the input's NIfTI path (or nibabel image):
    the target shape and affine. ``transform``: the MONAI transform (a ``Compose`` of array transforms, or of
    dictionary transforms with the image under ``key``) that made ``processed``; when given its inverse is run
    (crops undone by padding, spacing and orientation by resampling), with nearest-neighbour interpolation for
    labels. Without it, the prediction is resampled from the processed affine to the original one (MONAI's
    ``SpatialResample``), which covers orientation, spacing and crops alike.

    Returns a numpy array on the original grid: (X, Y, Z) for labels (given without or with one channel), else
    (K, X, Y, Z). The result's grid is checked against ``original``'s shape and affine (``atol`` mm).
    """
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample
    from monai.transforms.utils import convert_applied_interp_mode

    ref = load_reference(original)
    shape, affine = tuple(ref.shape[:3]), np.asarray(ref.affine, dtype=np.float64)
    pred = torch.as_tensor(np.asarray(prediction)) if not torch.is_tensor(prediction) else prediction.detach().cpu()
    if hasattr(pred, "as_tensor"):
        pred = pred.as_tensor()
    squeeze = pred.ndim == 3
    if squeeze:
        pred = pred[None]
    # labels travel as float for the resampler (exact for small integers) and come back rounded
    pred = pred.float()
    if transform is not None:
        if not isinstance(processed, MetaTensor):
            raise TypeError("restore_original_grid: inverting `transform` needs `processed` as the MetaTensor it "
                            "produced (its applied_operations)")
        ops = copy.deepcopy(processed.applied_operations)  # inverses pop entries from nested records
        if labels:
            ops = convert_applied_interp_mode(ops, mode="nearest", align_corners=None)
        meta = {k: v for k, v in processed.meta.items() if k != "affine"}  # the affine is passed on its own
        item = MetaTensor(pred, affine=processed.affine, meta=meta, applied_operations=list(ops))
        restored = _invert(transform, item, key)
        out_affine = np.asarray(restored.affine, dtype=np.float64)
        out = restored.as_tensor()
    else:
        src_affine = processed.affine if hasattr(processed, "affine") else processed
        item = MetaTensor(pred, affine=torch.as_tensor(np.asarray(src_affine), dtype=torch.float64))
        restored = SpatialResample(mode="nearest" if labels else "bilinear", padding_mode="zeros",
                                   dtype=torch.float64)(item, dst_affine=torch.as_tensor(affine), spatial_size=shape)
        out_affine = np.asarray(restored.affine, dtype=np.float64)
        out = restored.as_tensor()
    if tuple(out.shape[1:]) != shape or not np.allclose(out_affine, affine, atol=atol):
        raise ValueError(f"restored prediction is {tuple(out.shape[1:])} with affine\n{out_affine}\nbut the "
                         f"original {getattr(original, 'name', original)} is {shape} with affine\n{affine}; "
                         f"were these the transforms applied to this file?")
    out = out.numpy()
    if labels:
        out = np.rint(out).astype(np.int64)
        if out.shape[0] == 1:
            return out[0]
    return out[0] if squeeze else out


def _invert(transform, item, key: str):
    from monai.transforms import MapTransform

    flat = transform.flatten().transforms if hasattr(transform, "flatten") else (transform,)
    if any(isinstance(t, MapTransform) for t in flat):
        return transform.inverse({key: item})[key]
    return transform.inverse(item)


# --- writing ---------------------------------------------------------------------------------------------------

def write_nifti(array, path: str | Path, reference, overwrite: bool = False, labels: bool = True) -> Path:
    """Write a prediction on the original grid as NIfTI with ``reference``'s affine and header (path or nibabel
    image), atomically (a temporary file beside ``path``, renamed when complete).

    ``labels``: ``array`` (X, Y, Z) of integer classes 0-255, stored as uint8. Otherwise float probabilities
    (K, X, Y, Z), stored float32 as (X, Y, Z, K) (NIfTI's 4th axis). An existing ``path`` is refused unless
    ``overwrite``; ``.nii.gz`` is gzip-compressed (level 1, nibabel's default), ``.nii`` not.
    """
    import gzip

    import nibabel as nib

    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: expected a .nii or .nii.gz name")
    if path.exists() and not overwrite:  # before any work; atomic_path checks again
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    ref = load_reference(reference)
    data = array.detach().cpu().numpy() if torch.is_tensor(array) else np.asarray(array)
    if labels:
        if data.ndim == 4 and data.shape[0] == 1:
            data = data[0]
        if data.dtype.kind == "f" and not np.array_equal(data, np.rint(data)):
            raise ValueError(f"{path}: labels=True but the array holds non-integer values")
        if data.size and (data.min() < 0 or data.max() > 255):
            raise ValueError(f"{path}: labels must lie in 0-255 for uint8, got {data.min()}..{data.max()}")
        data, dtype = data.astype(np.uint8), np.uint8
    else:
        data, dtype = np.moveaxis(data.astype(np.float32), 0, -1) if data.ndim == 4 else data.astype(np.float32), \
            np.float32
    if tuple(data.shape[:3]) != tuple(ref.shape[:3]):
        raise ValueError(f"{path}: array grid {tuple(data.shape[:3])} differs from the reference's "
                         f"{tuple(ref.shape[:3])}; restore it to the original grid first")
    header = ref.header.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(1.0, 0.0)
    kind = type(ref) if isinstance(ref, (nib.Nifti1Image, nib.Nifti2Image)) else nib.Nifti1Image
    image = kind(data, ref.affine, header=header if isinstance(header, kind.header_class) else None)
    with atomic_path(path, overwrite=overwrite) as tmp:
        opener = gzip.open(tmp, "wb", compresslevel=1) if path.name.endswith(".gz") else open(tmp, "wb")
        with opener as f:
            image.to_file_map({"image": nib.FileHolder(fileobj=f)})
    return path


__all__ = ["StitchPlan", "sliding_window_memory", "plan_stitching", "mirror_axes", "sliding_window_predict",
           "restore_original_grid", "write_nifti", "load_reference"]
