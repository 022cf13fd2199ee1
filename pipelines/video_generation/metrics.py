"""Weight-free video metrics: temporal consistency (warping error, flicker, SSIM over time, drift), a Fréchet
distance on given features (FVD-style) and the agreement of per-frame class predictions over time.

Input videos, either layout (told apart by dtype):
- float (torch or numpy, any float dtype): ``[T, C, H, W]`` in [-1, 1], the layout of ``mtp.datasets.
  video_generation``; values outside [-1, 1] by more than 1e-3 are an error (clamp a model's output first);
- uint8 (torch or numpy): ``[T, H, W, C]`` in 0..255, the layout video readers return.
C is 1 (grey) or 3 (RGB). Every metric works on pixel values mapped to [0, 1] ((x + 1) / 2, or x / 255), so
errors are fractions of the full range and SSIM's data range L is 1.

Definitions (t = 0..T-1, frames I_t in [0, 1], averages over pixels and channels unless stated):
- ``warping_error``: for each pair (t, t+1), OpenCV Farneback optical flow (pyr_scale 0.5, 3 levels, window 15,
  3 iterations, poly_n 5, poly_sigma 1.2; on 8-bit grey frames, ITU-R 601 luma for RGB) is computed backward,
  b = flow(I_{t+1} -> I_t), and forward, f = flow(I_t -> I_{t+1}). Frame t is warped onto frame t+1's grid,
  W(x) = I_t(x + b(x)) (``cv2.remap``, bilinear). A pixel x counts when x + b(x) lies inside the frame and the
  flows agree (forward-backward check of Sundaram et al. 2010 as used by Ruder et al. 2016 and Lai et al. 2018):
  |b(x) + f(x + b(x))|^2 <= 0.01 (|b(x)|^2 + |f(x + b(x))|^2) + 0.5 (pixels^2; f sampled bilinearly). The pair's
  error is the mean over counted pixels (and channels) of |I_{t+1} - W| ("absolute", default) or its square
  ("squared"); the metric is the mean over pairs that have a counted pixel (NaN when none has). ``flow_from``
  takes the flow from another video (e.g. the source video, as Lai et al. do) instead of the scored one.
  ``flow_coverage`` is the share of counted pixels: unexplained change can leave the mask rather than raise the
  error (at large frame gaps a shuffled clip can even score lower), so read the two together.
- ``temporal_flicker``: mean |I_{t+1} - I_t| over pixels, channels and the T-1 pairs.
- ``ssim``: Wang et al. (2004) with a Gaussian window of 11 taps, sigma 1.5 (normalised to sum 1, separable), K1
  0.01, K2 0.03, L = 1, local statistics E[x], E[x^2], E[xy] (biased), the SSIM map over the 'valid' region (no
  padding; H, W >= 11, as Wang et al.'s reference code, and scikit-image with gaussian_weights=True,
  use_sample_covariance=False), averaged over the map and the channels.
  (torchmetrics' ``structural_similarity_index_measure`` reflect-pads and averages the whole map instead:
  ``ssim(..., padding="reflect")`` reproduces it.) ``ssim_to_first``: mean over t >= 1 of SSIM(I_t, I_0);
  ``ssim_to_previous``: mean over t >= 1 of SSIM(I_t, I_{t-1}).
- ``drift``: between the first and the last ``window`` frames (which must not overlap): the mean |A - B| of
  their mean frames A and B; given ``features`` (a callable mapping a float [w, C, H, W] window in [-1, 1] to [w, D]
  features), the Euclidean distance between the windows' mean features instead.
- ``frechet_distance``: |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr(sqrtm(S_a S_b)) on [N, D] features (unbiased
  covariances), with ``scipy.linalg.sqrtm``; as in the common FID/FVD code, a non-finite square root is retried
  with eps * I added to both covariances, and an imaginary part is dropped when the diagonal's is below 1e-3 (an
  error otherwise). Round-off can leave a tiny negative value; it is returned as computed.
- ``class_agreement_over_time``: per clip, the share of frames whose predicted class equals the target class
  (given) or the clip's majority class (ties: the smallest class id); the mean over clips.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

RANGE_TOLERANCE = 1e-3
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
CONSISTENCY_ALPHA1 = 0.01   # relative tolerance of the forward-backward check
CONSISTENCY_ALPHA2 = 0.5    # absolute tolerance, pixels^2
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
ERRORS = ("absolute", "squared")
REDUCTIONS = ("mean", "none")
SSIM_PADDINGS = ("valid", "reflect")


# ------------------------------------------------------------------------------------------------ inputs
def as_frames(video, name: str = "video") -> np.ndarray:
    """``video`` in either input layout (module docstring) as float64 [T, H, W, C] in [0, 1]."""
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu()
        array = video.numpy() if video.dtype != torch.bfloat16 else video.float().numpy()
    else:
        array = np.asarray(video)
    if array.ndim != 4:
        raise ValueError(f"{name}: expected 4 dims (float [T, C, H, W] or uint8 [T, H, W, C]), got shape "
                         f"{tuple(array.shape)}")
    if array.dtype == np.uint8:
        if array.shape[-1] not in (1, 3):
            raise ValueError(f"{name}: uint8 video must be [T, H, W, C] with C 1 or 3, got shape {array.shape}"
                             f"{' (channels first? uint8 is read channels last)' if array.shape[1] in (1, 3) else ''}")
        return array.astype(np.float64) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name}: expected a float [T, C, H, W] video in [-1, 1] or a uint8 [T, H, W, C] one, got "
                         f"dtype {array.dtype}")
    if array.shape[1] not in (1, 3):
        raise ValueError(f"{name}: float video must be [T, C, H, W] with C 1 or 3, got shape {array.shape}"
                         f"{' (channels last? float is read channels first)' if array.shape[-1] in (1, 3) else ''}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: non-finite values")
    low, high = float(array.min()), float(array.max())
    if low < -1.0 - RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise ValueError(f"{name}: float video must lie in [-1, 1], got values in [{low:.4g}, {high:.4g}] "
                         f"(clamp it first)")
    return np.clip((array.transpose(0, 2, 3, 1) + 1.0) / 2.0, 0.0, 1.0)


def _need_frames(frames: np.ndarray, count: int, what: str) -> None:
    if frames.shape[0] < count:
        raise ValueError(f"{what} needs at least {count} frames, got {frames.shape[0]}")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _reduce(values: np.ndarray, reduction: str):
    return values if reduction == "none" else float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


# ----------------------------------------------------------------------------------------- warping error
def _grey_u8(frame: np.ndarray) -> np.ndarray:
    import cv2

    u8 = np.rint(frame * 255.0).astype(np.uint8)
    return cv2.cvtColor(u8, cv2.COLOR_RGB2GRAY) if u8.shape[-1] == 3 else u8[..., 0]


def optical_flow(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Farneback flow [H, W, 2] (dx, dy) from ``source`` to ``target`` (8-bit grey [H, W]):
    source(y, x) ~ target(y + dy, x + dx)."""
    import cv2

    return cv2.calcOpticalFlowFarneback(source, target, None, **FARNEBACK)


def _remap(image: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, border: int) -> np.ndarray:
    import cv2

    image = np.ascontiguousarray(image, dtype=np.float32)
    out = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=border, borderValue=0)
    return out.reshape(image.shape)   # remap drops a trailing channel of 1


def warp_pair(prev: np.ndarray, nxt: np.ndarray, flow_prev: np.ndarray | None = None,
              flow_next: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(``prev`` warped onto ``nxt``'s grid [H, W, C], mask [H, W] of the pixels that count), frames [H, W, C] in
    [0, 1]; the flow comes from ``flow_prev``/``flow_next`` (the same frames of another video) when given."""
    import cv2

    grey_prev = _grey_u8(prev if flow_prev is None else flow_prev)
    grey_next = _grey_u8(nxt if flow_next is None else flow_next)
    backward = optical_flow(grey_next, grey_prev)           # t+1 -> t
    forward = optical_flow(grey_prev, grey_next)            # t -> t+1
    h, w = grey_prev.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x, map_y = xx + backward[..., 0], yy + backward[..., 1]
    warped = _remap(prev, map_x, map_y, cv2.BORDER_CONSTANT)
    forward_at = _remap(forward, map_x, map_y, cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    loop = ((backward + forward_at) ** 2).sum(-1)
    scale = (backward ** 2).sum(-1) + (forward_at ** 2).sum(-1)
    consistent = loop <= CONSISTENCY_ALPHA1 * scale + CONSISTENCY_ALPHA2
    return warped.astype(np.float64), inside & consistent


def _pair_errors(video, error: str, flow_from, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(per-pair warping errors, NaN where no pixel counts; per-pair share of counted pixels)."""
    _check_choice(f"{what}: error", error, ERRORS)
    frames = as_frames(video)
    _need_frames(frames, 2, what)
    flows = None
    if flow_from is not None:
        flows = as_frames(flow_from, "flow_from")
        if flows.shape[:3] != frames.shape[:3]:
            raise ValueError(f"{what}: flow_from must have the video's frames and size (T, H, W) "
                             f"{frames.shape[:3]}, got {flows.shape[:3]}")
    errors, shares = np.full(frames.shape[0] - 1, np.nan), np.zeros(frames.shape[0] - 1)
    for t in range(frames.shape[0] - 1):
        warped, mask = warp_pair(frames[t], frames[t + 1], None if flows is None else flows[t],
                                 None if flows is None else flows[t + 1])
        shares[t] = mask.mean()
        if mask.any():
            diff = frames[t + 1][mask] - warped[mask]
            errors[t] = float(np.abs(diff).mean() if error == "absolute" else (diff ** 2).mean())
    return errors, shares


def warping_error(video, error: str = "absolute", flow_from=None, reduction: str = "mean"):
    """Flow-warping error (module docstring): a float, or with ``reduction="none"`` the T-1 per-pair errors (NaN
    for a pair with no consistent pixel). Only consistent pixels count, so report ``flow_coverage`` beside it:
    content that no flow explains (a cut, a shuffled frame) partly leaves the mask instead of raising the error."""
    _check_choice("warping_error: reduction", reduction, REDUCTIONS)
    return _reduce(_pair_errors(video, error, flow_from, "warping_error")[0], reduction)


def flow_coverage(video, flow_from=None, reduction: str = "mean"):
    """Share of pixels that count in ``warping_error`` (inside the frame and passing the forward-backward check),
    averaged over the T-1 pairs; per pair with ``reduction="none"``."""
    _check_choice("flow_coverage: reduction", reduction, REDUCTIONS)
    return _reduce(_pair_errors(video, "absolute", flow_from, "flow_coverage")[1], reduction)


# --------------------------------------------------------------------------------------------- flicker
def temporal_flicker(video, reduction: str = "mean"):
    """Mean absolute difference of consecutive frames (module docstring); per pair with ``reduction="none"``."""
    _check_choice("temporal_flicker: reduction", reduction, REDUCTIONS)
    frames = as_frames(video)
    _need_frames(frames, 2, "temporal_flicker")
    per_pair = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    return _reduce(per_pair, reduction)


# ------------------------------------------------------------------------------------------------ SSIM
def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """The normalised 1-D Gaussian taps (float64) of the separable SSIM window."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    taps = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return taps / taps.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, padding: str = "valid") -> torch.Tensor:
    """SSIM of image pairs [N, C, H, W] (or one pair [C, H, W]), values on a scale of width ``data_range``: [N]
    (module docstring for the window and constants), computed in float64. ``padding``: "valid" (the map where the
    window fits, as Wang et al.'s code and pytorch-msssim) or "reflect" (inputs reflect-padded by 5
    and the whole map averaged, as torchmetrics does; it weights the border more)."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    if x.shape != y.shape:
        raise ValueError(f"ssim: images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() == 3:
        x, y = x[None], y[None]
    if x.dim() != 4:
        raise ValueError(f"ssim: expected [N, C, H, W] or [C, H, W], got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim: frames must be at least {SSIM_WINDOW}x{SSIM_WINDOW} (the Gaussian window), got "
                         f"{x.shape[-2]}x{x.shape[-1]}")
    if data_range <= 0:
        raise ValueError(f"ssim: data_range must be > 0, got {data_range}")
    _check_choice("ssim: padding", padding, SSIM_PADDINGS)
    if padding == "reflect":
        pad = SSIM_WINDOW // 2
        x, y = F.pad(x, (pad,) * 4, mode="reflect"), F.pad(y, (pad,) * 4, mode="reflect")
    channels = x.shape[1]
    taps = gaussian_window()
    rows = taps.view(1, 1, -1, 1).expand(channels * 5, 1, -1, 1)
    cols = taps.view(1, 1, 1, -1).expand(channels * 5, 1, 1, -1)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)                  # [N, 5C, H, W]
    moments = F.conv2d(F.conv2d(stack, rows, groups=channels * 5), cols, groups=channels * 5)
    mu_x, mu_y, e_xx, e_yy, e_xy = moments.split(channels, dim=1)
    var_x, var_y, cov = e_xx - mu_x ** 2, e_yy - mu_y ** 2, e_xy - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def _video_tensor(video) -> torch.Tensor:
    return torch.from_numpy(as_frames(video)).permute(0, 3, 1, 2)           # [T, C, H, W] in [0, 1]


def ssim_to_first(video, reduction: str = "mean"):
    """Mean SSIM of frames 1..T-1 to frame 0; the T-1 values with ``reduction="none"``."""
    _check_choice("ssim_to_first: reduction", reduction, REDUCTIONS)
    frames = _video_tensor(video)
    _need_frames(frames, 2, "ssim_to_first")
    values = ssim(frames[1:], frames[:1].expand_as(frames[1:])).numpy()
    return _reduce(values, reduction)


def ssim_to_previous(video, reduction: str = "mean"):
    """Mean SSIM of frame t to frame t-1 over t = 1..T-1; the T-1 values with ``reduction="none"``."""
    _check_choice("ssim_to_previous: reduction", reduction, REDUCTIONS)
    frames = _video_tensor(video)
    _need_frames(frames, 2, "ssim_to_previous")
    values = ssim(frames[1:], frames[:-1]).numpy()
    return _reduce(values, reduction)


# ----------------------------------------------------------------------------------------------- drift
def drift(video, window: int = 4, features: Callable | None = None) -> float:
    """Drift between the first and the last ``window`` frames (module docstring); they must not overlap
    (T >= 2 * window)."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"drift: window must be an int >= 1, got {window!r}")
    frames = as_frames(video)
    if frames.shape[0] < 2 * window:
        raise ValueError(f"drift: the first and last {window} frames overlap in a {frames.shape[0]}-frame video "
                         f"(needs T >= 2 * window = {2 * window})")
    first, last = frames[:window], frames[-window:]
    if features is None:
        return float(np.abs(first.mean(0) - last.mean(0)).mean())

    def embed(part: np.ndarray) -> np.ndarray:
        clip = torch.from_numpy(part * 2.0 - 1.0).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            out = features(clip)
        out = np.asarray(out.detach().cpu().double() if isinstance(out, torch.Tensor) else out, dtype=np.float64)
        if out.ndim != 2 or out.shape[0] != window:
            raise ValueError(f"drift: features must map a [{window}, C, H, W] window to [{window}, D], returned shape "
                             f"{out.shape}")
        return out.mean(0)

    return float(np.linalg.norm(embed(first) - embed(last)))


# ---------------------------------------------------------------------------------------- Fréchet distance
def _features(feats, name: str) -> np.ndarray:
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().cpu().double().numpy()
    array = np.asarray(feats, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"frechet_distance: {name} must be [N, D] features with N >= 2, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"frechet_distance: {name} has non-finite values")
    return array


def frechet_distance(feats_a, feats_b, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] and [M, D] (module docstring)."""
    from scipy import linalg

    a, b = _features(feats_a, "feats_a"), _features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: feature sizes differ: feats_a has D={a.shape[1]}, feats_b D={b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma_a.shape[0]) * eps
        covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(covmean):
        imaginary = np.abs(np.diagonal(covmean).imag).max()
        if imaginary > 1e-3:
            raise ValueError(f"frechet_distance: sqrtm(S_a S_b) has an imaginary component {imaginary:.3g} on its "
                             f"diagonal (ill-conditioned covariances: more samples or fewer feature dims)")
        covmean = covmean.real
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean))


# ------------------------------------------------------------------------------------ class agreement
def class_agreement_over_time(per_frame_predictions, target=None, reduction: str = "mean"):
    """Share of frames predicted as the clip's class (module docstring).

    ``per_frame_predictions``: class ids (integer) [T] or [N, T], or scores (float, argmax taken) [T, K] or
    [N, T, K]. ``target``: None (each clip's majority class), an int, or N ints. A float, or the N per-clip
    shares with ``reduction="none"``.
    """
    _check_choice("class_agreement_over_time: reduction", reduction, REDUCTIONS)
    if isinstance(per_frame_predictions, torch.Tensor):
        per_frame_predictions = per_frame_predictions.detach().cpu().numpy()
    preds = np.asarray(per_frame_predictions)
    if preds.dtype == bool or not (np.issubdtype(preds.dtype, np.integer) or np.issubdtype(preds.dtype, np.floating)):
        raise ValueError(f"class_agreement_over_time: predictions must be integer class ids or float scores, got "
                         f"dtype {preds.dtype}")
    if np.issubdtype(preds.dtype, np.floating):
        if preds.ndim not in (2, 3):
            raise ValueError(f"class_agreement_over_time: float scores must be [T, K] or [N, T, K], got shape "
                             f"{preds.shape}")
        preds = preds.argmax(-1)
    if preds.ndim == 1:
        preds = preds[None]
    if preds.ndim != 2 or preds.shape[1] < 1:
        raise ValueError(f"class_agreement_over_time: class ids must be [T] or [N, T] with T >= 1, got shape "
                         f"{preds.shape}")
    if (preds < 0).any():
        raise ValueError(f"class_agreement_over_time: class ids must be >= 0, got {int(preds.min())}")
    if target is None:
        targets = np.array([np.bincount(row).argmax() for row in preds])
    else:
        if isinstance(target, torch.Tensor):
            target = target.detach().cpu().numpy()
        targets = np.atleast_1d(np.asarray(target))
        if not np.issubdtype(targets.dtype, np.integer) or targets.ndim != 1:
            raise ValueError(f"class_agreement_over_time: target must be an int or N ints, got {target!r}")
        if targets.shape[0] == 1:
            targets = np.repeat(targets, preds.shape[0])
        if targets.shape[0] != preds.shape[0]:
            raise ValueError(f"class_agreement_over_time: {targets.shape[0]} targets for {preds.shape[0]} clips")
    shares = (preds == targets[:, None]).mean(axis=1)
    return shares if reduction == "none" else float(shares.mean())
